//! The subscription bus between two processes' buses on a throwaway redis-server: each
//! event once, in order, none echoed to its publisher; the nudge after an outage; the
//! backlog's bound.

use std::time::{Duration, Instant};

use tokio::time::timeout;

use super::*;
use crate::testing::RedisServer;

const PREFIX: &str = "t";
const LONG: Duration = Duration::from_secs(5);

fn bus(redis: &RedisServer) -> Bus {
    Bus::new(redis.connector(), PREFIX, &Handle::current()).expect("a bus")
}

/// Waits until `n` subscriptions listen on the bus's channel.
async fn subscribed(redis: &RedisServer, n: i64) {
    let began = Instant::now();
    loop {
        let mut pipe = redis::pipe();
        pipe.cmd("PUBSUB").arg("NUMSUB").arg(crate::keys::subscriptions_channel(PREFIX));
        let reply = redis.query(&pipe).await;
        if let Some(redis::Value::Array(pair)) = reply.first() {
            if pair.get(1) == Some(&redis::Value::Int(n)) {
                return;
            }
        }
        assert!(began.elapsed() < LONG, "{n} subscriptions in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Starts a bus's subscription: the first `next()` subscribes.
fn listening(bus: &Bus) -> tokio::task::JoinHandle<Option<Delivery>> {
    tokio::spawn(bus.next())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_the_other_bus_once_in_order_and_never_its_publisher() {
    let redis = RedisServer::start();
    let (a, b) = (bus(&redis), bus(&redis));
    let a_first = listening(&a);
    let b_first = listening(&b);
    subscribed(&redis, 2).await;
    let sent = [
        Event::ToolsListChanged,
        Event::ResourceUpdated { uri: "file:///1".into() },
        Event::PromptsListChanged,
        Event::ResourceUpdated { uri: "file:///2".into() },
        Event::ResourcesListChanged,
    ];
    for event in &sent {
        assert_eq!(a.publish(event.clone()).await.expect("published"), 2, "both subscriptions heard it");
    }
    let mut got = vec![timeout(LONG, b_first).await.expect("in time").expect("no panic")];
    for _ in 1..sent.len() {
        got.push(timeout(LONG, b.next()).await.expect("in time"));
    }
    let expected: Vec<Option<Delivery>> = sent.iter().cloned().map(|e| Some(Delivery::Event(e))).collect();
    assert_eq!(got, expected);
    assert!(timeout(Duration::from_millis(300), a_first).await.is_err(), "the publisher's own events are not echoed");
    assert_eq!(a.stats().published.load(Ordering::SeqCst), 5);
    assert_eq!(b.stats().received.load(Ordering::SeqCst), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_the_subscription_comes_back_and_says_so() {
    let redis = RedisServer::start();
    let port = redis.port;
    let (a, b) = (bus(&redis), bus(&redis));
    let b_first = listening(&b);
    subscribed(&redis, 1).await;
    drop(redis);
    assert!(a.publish(Event::ToolsListChanged).await.is_err(), "nobody can hear it");
    assert_eq!(a.stats().publish_failed.load(Ordering::SeqCst), 1);
    let redis = RedisServer::start_on(port);
    let nudge = timeout(Duration::from_secs(10), b_first).await.expect("in time").expect("no panic");
    assert_eq!(nudge, Some(Delivery::Resubscribed));
    subscribed(&redis, 1).await;
    a.publish(Event::PromptsListChanged).await.expect("published");
    assert_eq!(timeout(LONG, b.next()).await.expect("in time"), Some(Delivery::Event(Event::PromptsListChanged)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_falls_behind_costs_a_bounded_backlog() {
    let redis = RedisServer::start();
    let (a, b) = (bus(&redis), bus(&redis));
    let b_first = listening(&b);
    subscribed(&redis, 1).await;
    // The first delivery goes to the waiting task; then nothing reads until the end.
    a.publish(Event::ToolsListChanged).await.expect("published");
    assert!(timeout(LONG, b_first).await.is_ok());
    let uri = "u".repeat(MAX_URI);
    let events = 2 * BACKLOG_BYTES / MAX_URI;
    for _ in 0..events {
        a.publish(Event::ResourceUpdated { uri: uri.clone() }).await.expect("published");
    }
    let began = Instant::now();
    while b.stats().received.load(Ordering::SeqCst) < 1 + events as u64 {
        assert!(began.elapsed() < LONG, "every event arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dropped = b.stats().dropped_backlog.load(Ordering::SeqCst);
    assert!(dropped > 0, "past the bound, events are dropped");
    let (_, queued) = b.reader();
    assert!(queued.load(Ordering::SeqCst) <= BACKLOG_BYTES, "the backlog stays within its bytes");
    assert!(a.publish(Event::ResourceUpdated { uri: "u".repeat(MAX_URI + 1) }).await.is_err(), "a URI too long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_taken_in_batches_in_order() {
    let redis = RedisServer::start();
    let (a, b) = (bus(&redis), bus(&redis));
    let b_first = listening(&b);
    subscribed(&redis, 1).await;
    let sent: Vec<Event> = (0..5).map(|i| Event::ResourceUpdated { uri: format!("file:///{i}") }).collect();
    for event in &sent {
        a.publish(event.clone()).await.expect("published");
    }
    let began = Instant::now();
    while b.stats().received.load(Ordering::SeqCst) < 5 {
        assert!(began.elapsed() < LONG, "every event arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut got = vec![timeout(LONG, b_first).await.expect("in time").expect("no panic").expect("a delivery")];
    got.extend(timeout(LONG, b.next_batch(2)).await.expect("in time").expect("deliveries"));
    assert_eq!(got.len(), 3, "no more than the limit");
    got.extend(timeout(LONG, b.next_batch(100)).await.expect("in time").expect("deliveries"));
    let expected: Vec<Delivery> = sent.into_iter().map(Delivery::Event).collect();
    assert_eq!(got, expected, "all of them, in order, once");
    let (_, queued) = b.reader();
    assert_eq!(queued.load(Ordering::SeqCst), 0, "what was taken left the backlog's count");
}
