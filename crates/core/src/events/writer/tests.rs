//! The writer against a throwaway redis-server: idempotent retries, the position clock
//! meeting another writer's, and the buffer kept while Redis is down.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::*;
use crate::events::id::Position;
use crate::keys::events_key;
use crate::now_ms;
use crate::testing::{free_port, RedisServer};

impl Completion for oneshot::Sender<String> {
    fn complete_all(done: Vec<(Self, String)>) {
        for (waiter, id) in done {
            let _ = waiter.send(id);
        }
    }
}

type TestWriter = Writer<oneshot::Sender<String>>;

fn key() -> String {
    events_key("t", "s", "1")
}

fn writer(connector: Arc<Connector>) -> TestWriter {
    let limits = Limits { max_events_per_stream: 1000, ttl_ms: 60_000, buffer_max: 100, batch_max: 1024 };
    Writer::new(connector, Arc::new(Stats::default()), limits)
}

/// An append of `data` to stream `1` of session `s`, and where its event ID will come.
fn append(data: &str) -> (Append<oneshot::Sender<String>>, oneshot::Receiver<String>) {
    let (waiter, id) = oneshot::channel();
    let append = Append {
        key: key(),
        session: "s".into(),
        stream: "1".into(),
        tag: b'n',
        data: Some(data.as_bytes().to_vec()),
        fence: None,
        waiter,
    };
    (append, id)
}

async fn position_of(id: oneshot::Receiver<String>) -> Position {
    let id = id.await.expect("an event ID");
    EventId::decode(&id).expect("one of ours").position
}

/// Every entry of the stream: its position and its message.
async fn entries(redis: &RedisServer) -> Vec<(Position, String)> {
    let mut pipe = redis::pipe();
    pipe.cmd("XRANGE").arg(key()).arg("-").arg("+");
    let reply = redis.query(&pipe).await;
    let Some(redis::Value::Array(rows)) = reply.into_iter().next() else { panic!("no XRANGE reply") };
    rows.into_iter()
        .map(|row| {
            let (id, fields): (String, Vec<Vec<u8>>) = redis::from_redis_value(row).expect("an entry");
            (Position::parse(&id).expect("an entry ID"), String::from_utf8(fields[1].clone()).expect("text"))
        })
        .collect()
}

async fn xadd(redis: &RedisServer, at: Position, data: &str) {
    let mut pipe = redis::pipe();
    pipe.cmd("XADD").arg(key()).arg(at.to_string()).arg("n").arg(data);
    redis.query(&pipe).await;
}

#[tokio::test]
async fn a_retry_of_an_entry_that_landed_is_not_stored_twice() {
    let redis = RedisServer::start();
    let mut writer = writer(redis.connector());
    // The clock stands where the earlier attempt left it, an hour ahead; that attempt's
    // entry reached Redis but its reply was lost (a timeout), so it is sent again.
    let ahead = Position { ms: now_ms() + 3_600_000, seq: 0 };
    writer.clock.last = ahead;
    let at = ahead.next().unwrap();
    xadd(&redis, at, "{\"a\":1}").await;
    let (first, id) = append("{\"a\":1}");
    writer.write(vec![first]).await;
    assert_eq!(position_of(id).await, at, "the ID of the entry already there");
    assert_eq!(entries(&redis).await, vec![(at, "{\"a\":1}".to_owned())], "stored once");
    assert_eq!(writer.stats.stored.load(Ordering::Relaxed), 1);
    assert_eq!(writer.stats.dropped.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_writer_whose_clock_is_behind_lets_redis_place_the_event() {
    let redis = RedisServer::start();
    // Another node, its clock an hour ahead, wrote to this stream.
    let top = Position { ms: now_ms() + 3_600_000, seq: 5 };
    xadd(&redis, top, "{\"theirs\":1}").await;
    let mut writer = writer(redis.connector());
    let (first, id) = append("{\"ours\":1}");
    writer.write(vec![first]).await;
    let placed = position_of(id).await;
    assert!(placed > top, "placed at {placed}, not after {top}");
    let (second, id) = append("{\"ours\":2}");
    writer.write(vec![second]).await;
    let next = position_of(id).await;
    assert!(next > placed, "the clock went on from {placed}: got {next}");
    let expected = vec![
        (top, "{\"theirs\":1}".to_owned()),
        (placed, "{\"ours\":1}".to_owned()),
        (next, "{\"ours\":2}".to_owned()),
    ];
    assert_eq!(entries(&redis).await, expected, "each ID handed out is where its event is");
    assert_eq!(writer.stats.stored.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn events_buffered_while_redis_is_down_are_written_in_order_once_it_is_back() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let mut writer = writer(Arc::new(Connector::new(&url, Duration::from_millis(500)).unwrap()));
    let (a, a_id) = append("\"a\"");
    let (b, b_id) = append("\"b\"");
    writer.write(vec![a, b]).await;
    // Redis is down: the IDs come at once, the events wait in the buffer.
    let (a_at, b_at) = (position_of(a_id).await, position_of(b_id).await);
    assert_eq!(writer.buffer.len(), 2);
    assert_eq!(writer.stats.buffered.load(Ordering::Relaxed), 2);
    let redis = RedisServer::start_on(port);
    // Redis is back, but the buffer is not written yet: a new event queues behind it.
    let (c, c_id) = append("\"c\"");
    writer.write(vec![c]).await;
    let c_at = position_of(c_id).await;
    assert_eq!(writer.buffer.len(), 3, "a new event waits behind the buffered ones");
    writer.flush().await;
    assert!(writer.buffer.is_empty());
    let expected = vec![(a_at, "\"a\"".to_owned()), (b_at, "\"b\"".to_owned()), (c_at, "\"c\"".to_owned())];
    assert_eq!(entries(&redis).await, expected, "in the order they were appended, at the IDs handed out");
    assert_eq!(writer.stats.flushed.load(Ordering::Relaxed), 3);
    assert_eq!(writer.stats.buffered.load(Ordering::Relaxed), 0);
}
