//! The relay protocol between two nodes on a throwaway redis-server: a lost acceptance, a
//! sequence gap, and credit.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::timeout;

use super::*;
use crate::keys::{claim_key, inbox_channel, reply_channel};
use crate::testing::RedisServer;

const PREFIX: &str = "t";
const LONG: Duration = Duration::from_secs(5);

fn options(window: u32, window_bytes: u64) -> RelayOptions {
    RelayOptions { window, window_bytes, sweep_ms: 60_000, secret: None, max_age_ms: MAX_AGE_MS }
}

async fn node(redis: &RedisServer, name: &str, window: u32, window_bytes: u64) -> Relay {
    let relay = Relay::spawn(redis.connector(), PREFIX, name, options(window, window_bytes), &Handle::current())
        .expect("a relay");
    assert!(relay.ready(5_000).await, "node {name} subscribed");
    relay
}

/// Two nodes, `a` and `b`, with a window of 64 chunks.
async fn pair(redis: &RedisServer) -> (Relay, Relay) {
    (node(redis, "a", 64, WINDOW_BYTES).await, node(redis, "b", 64, WINDOW_BYTES).await)
}

/// Node `a` forwards a request of session `s` with `body` to node `b`, in a task of its own.
fn send(a: &Relay, body: &[u8], accept_timeout_ms: u64) -> tokio::task::JoinHandle<Result<Forwarded>> {
    tokio::spawn(a.forward("b".into(), "s".into(), "{}".into(), body.to_vec(), accept_timeout_ms))
}

/// Node `a` forwards a request to node `b`, which takes it on: `a`'s end of the response
/// and the request's ID.
async fn accepted(a: &Relay, b: &Relay) -> (Forward, ReqId) {
    let forwarded = send(a, b"{}", 5_000);
    let incoming = take_one(b).await;
    (accepted_now(forwarded).await, incoming.id)
}

/// The next request relayed to `b`, claimed by `b` (as `next_requests` gives them).
async fn take_one(b: &Relay) -> Incoming {
    let mut taken = timeout(LONG, b.next_requests(1)).await.expect("in time").expect("a request");
    assert_eq!(taken.len(), 1, "at most the one asked for");
    taken.remove(0)
}

async fn next_part(forward: &Forward) -> Part {
    let frame = timeout(LONG, forward.next_frame()).await.expect("in time").expect("a frame");
    forward.reader().accept(frame)
}

/// A bare subscriber on node `b`'s inbox, standing in for an owner that misbehaves: `a`'s
/// forwarded request, once it arrives there, and its ID.
async fn forward_to_a_bare_inbox(
    redis: &RedisServer,
    a: &Relay,
    accept_timeout_ms: u64,
) -> (tokio::task::JoinHandle<Result<Forwarded>>, ReqId) {
    let (mut inbox, _) = redis.connector().pubsub().await.expect("a pub/sub connection");
    inbox.subscribe(inbox_channel(PREFIX, "b")).await.expect("subscribed");
    let forwarded = send(a, b"", accept_timeout_ms);
    let message = timeout(LONG, inbox.on_message().next()).await.expect("in time").expect("the request");
    let request = Frame::decode(message.get_payload_bytes()).expect("a frame");
    assert_eq!(request.kind, kind::REQUEST);
    tokio::spawn(async move {
        let _keep_listening = inbox;
        tokio::time::sleep(LONG).await;
    });
    (forwarded, request.id)
}

#[tokio::test]
async fn a_lost_acceptance_is_not_taken_for_a_timeout() {
    let redis = RedisServer::start();
    let a = node(&redis, "a", 64, WINDOW_BYTES).await;
    let (forwarded, id) = forward_to_a_bare_inbox(&redis, &a, 300).await;
    // The owner claims the request; its acceptance frame never reaches `a`.
    let mut claim = redis::pipe();
    claim.cmd("SET").arg(claim_key(PREFIX, "s", &id)).arg("b").arg("NX").arg("PX").arg(60_000);
    redis.query(&claim).await;
    match forwarded.await.expect("no panic").expect("no Redis error") {
        Forwarded::OwnerLost(why) => assert_eq!(why, "the owner took the request on, then fell silent"),
        _ => panic!("the owner has the request and may run it: that is no timeout"),
    }
    assert_eq!(a.stats()["timeouts"], 0);
    assert_eq!(a.stats()["lost"], 1);
}

#[tokio::test]
async fn an_unclaimed_request_times_out_and_can_never_run() {
    let redis = RedisServer::start();
    let a = node(&redis, "a", 64, WINDOW_BYTES).await;
    let (forwarded, id) = forward_to_a_bare_inbox(&redis, &a, 300).await;
    assert!(matches!(forwarded.await.expect("no panic").expect("no Redis error"), Forwarded::Timeout));
    // `a` holds the claim now, so the owner's own claim fails: the request never runs.
    let mut get = redis::pipe();
    get.cmd("GET").arg(claim_key(PREFIX, "s", &id));
    assert_eq!(redis.query(&get).await, vec![redis::Value::BulkString(b"gave-up".to_vec())]);
    assert_eq!(a.stats()["timeouts"], 1);
}

#[tokio::test]
async fn a_sequence_gap_ends_the_response() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis).await;
    let (forward, id) = accepted(&a, &b).await;
    b.start(&id, 200, &[(b"content-type".to_vec(), b"text/event-stream".to_vec())]).unwrap();
    // A frame sent while `a`'s subscriber was away (reconnecting): it never arrives.
    b.shared.served.lock().unwrap()[&id].next_seq.fetch_add(1, Ordering::SeqCst);
    assert!(b.send(&id, b"data: 1\n\n".to_vec()).unwrap().is_none());
    assert!(matches!(next_part(&forward).await, Part::Start { status: 200, .. }));
    match next_part(&forward).await {
        Part::Cut(why) => assert_eq!(why, "relay frames missed (got 3, expected 2)"),
        other => panic!("a gap must end the response, not yield {other:?}"),
    }
    assert!(a.shared.pending.lock().unwrap().is_empty(), "and forget the request");
}

#[tokio::test]
async fn the_owner_waits_for_credit_once_the_window_is_full() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis, "a", 4, WINDOW_BYTES).await, node(&redis, "b", 4, WINDOW_BYTES).await);
    let (forward, id) = accepted(&a, &b).await;
    b.start(&id, 200, &[]).unwrap();
    for n in 1..=3 {
        assert!(b.send(&id, b"data: x\n\n".to_vec()).unwrap().is_none(), "chunk {n} of 4 fits the window");
    }
    let room = b.send(&id, b"data: x\n\n".to_vec()).unwrap().expect("the fourth chunk fills the window");
    let mut room = tokio::spawn(room.wait());
    assert!(timeout(Duration::from_millis(300), &mut room).await.is_err(), "no credit before anything is read");
    assert!(matches!(next_part(&forward).await, Part::Start { .. }));
    assert!(matches!(next_part(&forward).await, Part::Data(_)));
    assert!(timeout(Duration::from_millis(300), &mut room).await.is_err(), "credit comes every half window");
    assert!(matches!(next_part(&forward).await, Part::Data(_)));
    // Two of four read: the credit goes back and the owner may send again.
    assert!(timeout(LONG, room).await.expect("credit in time").expect("no panic"), "the client still wants it");
}

#[tokio::test]
async fn the_owner_waits_for_credit_once_the_byte_window_is_full() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis, "a", 64, 100).await, node(&redis, "b", 64, 100).await);
    let (forward, id) = accepted(&a, &b).await;
    b.start(&id, 200, &[]).unwrap();
    assert!(b.send(&id, vec![b'x'; 60]).unwrap().is_none(), "60 of 100 bytes fit");
    let room = b.send(&id, vec![b'x'; 60]).unwrap().expect("120 bytes do not");
    let mut room = tokio::spawn(room.wait());
    assert!(timeout(Duration::from_millis(300), &mut room).await.is_err(), "no credit before anything is read");
    assert!(matches!(next_part(&forward).await, Part::Start { .. }));
    assert!(matches!(next_part(&forward).await, Part::Data(bytes) if bytes.len() == 60));
    // 60 bytes read, over half the byte window: credit, and 60 unacknowledged is room.
    assert!(timeout(LONG, room).await.expect("credit in time").expect("no panic"));
}

#[tokio::test]
async fn a_request_given_back_is_the_next_one_taken_and_still_served_once() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis).await;
    let first = send(&a, b"first", 5_000);
    let taken = take_one(&b).await;
    let second = send(&a, b"second", 5_000);
    // The caller `taken` was meant for stopped waiting: the next caller gets it, before
    // anything that came after it, and its claim is not made a second time.
    b.give_back(taken);
    let again = take_one(&b).await;
    assert_eq!(again.body, b"first");
    let then = take_one(&b).await;
    assert_eq!(then.body, b"second");
    for (incoming, forwarded) in [(again, first), (then, second)] {
        accepted_now(forwarded).await;
        b.respond(&incoming.id, 200, &[], b"{}").unwrap();
    }
    assert_eq!(b.stats()["served"], 2);
}

#[tokio::test]
async fn requests_that_came_meanwhile_are_taken_and_claimed_together() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis).await;
    let forwarded: Vec<_> = (0..3u8).map(|n| send(&a, &[n], 5_000)).collect();
    // Nobody asks `b` for work until all three are in its inbox: one call takes them all.
    let deadline = tokio::time::Instant::now() + LONG;
    while b.stats()["unclaimed"] < 3 {
        assert!(tokio::time::Instant::now() < deadline, "three requests reach b's inbox");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let taken = timeout(LONG, b.next_requests(8)).await.expect("in time").expect("requests");
    assert_eq!(taken.iter().map(|i| i.body.clone()).collect::<Vec<_>>(), vec![vec![0], vec![1], vec![2]]);
    for (incoming, forwarded) in taken.iter().zip(forwarded) {
        accepted_now(forwarded).await;
        b.respond(&incoming.id, 200, &[], b"{}").unwrap();
    }
    assert_eq!(b.stats()["served"], 3);
}

#[tokio::test]
async fn a_request_its_sender_gave_up_on_never_comes_out() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis).await;
    // `a` gives up on its first request before `b` asks for work: `a` holds the claim.
    let first = a.forward("b".into(), "s".into(), "{}".into(), b"first".to_vec(), 100);
    assert!(matches!(first.await.expect("no Redis error"), Forwarded::Timeout));
    let second = send(&a, b"second", 5_000);
    assert_eq!(take_one(&b).await.body, b"second", "the first is dropped, not run");
    accepted_now(second).await;
    assert_eq!(b.stats()["served"], 1);
}

/// The kinds of the frames heard on node `name`'s reply channel, by a bare subscriber,
/// until `quiet` passes with nothing more.
async fn kinds_heard(mut replies: redis::aio::PubSub, quiet: Duration) -> Vec<char> {
    let mut kinds = Vec::new();
    let mut messages = replies.on_message();
    while let Ok(Some(message)) = timeout(quiet, messages.next()).await {
        kinds.push(char::from(Frame::decode(message.get_payload_bytes()).expect("a frame").kind));
    }
    kinds
}

/// A request frame to node `b`'s inbox, as a node "a" with no relay of its own sends it,
/// offering a lazy acceptance of `lazy_ms` (0: it wants its acceptance at once).
async fn request_from_a(redis: &RedisServer, lazy_ms: u32) {
    let payload = frame::encode_request("a", "s", "{}", b"");
    let request = Frame { kind: kind::REQUEST, id: frame::new_id(), seq: lazy_ms, payload };
    let mut pipe = redis::pipe();
    pipe.cmd("PUBLISH").arg(inbox_channel(PREFIX, "b")).arg(request.encode());
    redis.query(&pipe).await;
}

/// A forwarded request's outcome, which must be that the owner took it on.
async fn accepted_now(forwarded: tokio::task::JoinHandle<Result<Forwarded>>) -> Forward {
    match forwarded.await.expect("no panic").expect("no Redis error") {
        Forwarded::Accepted(forward) => forward,
        _ => panic!("the owner took the request on"),
    }
}

async fn subscribed(redis: &RedisServer, channel: String) -> redis::aio::PubSub {
    let (mut pubsub, _) = redis.connector().pubsub().await.expect("a pub/sub connection");
    pubsub.subscribe(channel).await.expect("subscribed");
    pubsub
}

#[tokio::test]
async fn a_quick_response_is_its_own_acceptance() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis).await;
    let heard = tokio::spawn(kinds_heard(subscribed(&redis, reply_channel(PREFIX, "a")).await, LONG / 4));
    let forwarded = send(&a, b"{}", 5_000);
    let incoming = take_one(&b).await;
    assert_eq!(incoming.accept_within_ms, 200, "the request offers a lazy acceptance");
    b.respond(&incoming.id, 200, &[], b"{\"ok\":1}").unwrap();
    let forward = accepted_now(forwarded).await;
    assert!(matches!(forward.try_next(), Some(Part::Whole { status: 200, .. })), "and comes with it");
    assert_eq!(heard.await.expect("no panic"), vec!['W'], "one frame, no acceptance of its own");
}

#[tokio::test]
async fn a_slow_response_is_accepted_within_the_lazy_bound() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis).await;
    // A bound of 400 ms offers 100 ms: the acceptance goes 25 to 50 ms after the claim.
    let forwarded = send(&a, b"{}", 400);
    let incoming = take_one(&b).await;
    assert_eq!(incoming.accept_within_ms, 100);
    let Forwarded::Accepted(forward) = timeout(Duration::from_millis(300), forwarded)
        .await
        .expect("accepted well within the bound")
        .expect("no panic")
        .expect("no Redis error")
    else {
        panic!("the owner took the request on");
    };
    assert!(forward.try_next().is_none(), "nothing of the response yet");
    b.start(&incoming.id, 200, &[]).unwrap();
    b.end(&incoming.id, true).unwrap();
    assert!(matches!(next_part(&forward).await, Part::Start { status: 200, .. }), "sequence 1 follows the acceptance");
    assert!(matches!(next_part(&forward).await, Part::End { ok: true }));
    assert_eq!(a.stats()["timeouts"] + a.stats()["lost"], 0);
}

#[tokio::test]
async fn an_owner_that_accepts_at_once_is_still_understood() {
    // An owner from before lazy acceptance: it claims, publishes ACCEPTED, then responds.
    let redis = RedisServer::start();
    let a = node(&redis, "a", 64, WINDOW_BYTES).await;
    let (forwarded, id) = forward_to_a_bare_inbox(&redis, &a, 5_000).await;
    let replies = reply_channel(PREFIX, "a");
    let mut pipe = redis::pipe();
    pipe.cmd("SET").arg(claim_key(PREFIX, "s", &id)).arg("b").arg("NX").arg("PX").arg(60_000);
    pipe.cmd("PUBLISH").arg(&replies).arg(Frame { kind: kind::ACCEPTED, id, seq: 0, payload: vec![] }.encode());
    let whole = frame::encode_whole(202, &[], b"");
    pipe.cmd("PUBLISH").arg(&replies).arg(Frame { kind: kind::WHOLE, id, seq: 1, payload: whole }.encode());
    redis.query(&pipe).await;
    let forward = accepted_now(forwarded).await;
    assert!(matches!(next_part(&forward).await, Part::Whole { status: 202, .. }));
}

#[tokio::test]
async fn a_sender_that_wants_its_acceptance_at_once_gets_it() {
    // A relaying node from before lazy acceptance: its request frame's sequence is 0.
    let redis = RedisServer::start();
    let b = node(&redis, "b", 64, WINDOW_BYTES).await;
    let heard = tokio::spawn(kinds_heard(subscribed(&redis, reply_channel(PREFIX, "a")).await, LONG / 4));
    request_from_a(&redis, 0).await;
    let incoming = take_one(&b).await;
    assert_eq!(incoming.accept_within_ms, 0);
    b.respond(&incoming.id, 200, &[], b"{}").unwrap();
    assert_eq!(heard.await.expect("no panic"), vec!['A', 'W'], "the acceptance, then the response");
}

#[tokio::test]
async fn a_disconnect_is_told_once_the_relaying_side_goes_away() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis).await;
    let forwarded = send(&a, b"{}", 5_000);
    let incoming = take_one(&b).await;
    let (told, mut gone) = tokio::sync::oneshot::channel();
    b.on_disconnect(&incoming.id, Box::new(move || told.send(()).expect("waited for"))).unwrap();
    b.start(&incoming.id, 200, &[]).unwrap();
    let forward = accepted_now(forwarded).await;
    assert!(timeout(Duration::from_millis(200), &mut gone).await.is_err(), "not while the client is there");
    drop(forward); // the client went away
    timeout(LONG, gone).await.expect("told in time").expect("told");
    // Asked after that, or for a request that is over, it is told at once.
    let (told, gone) = tokio::sync::oneshot::channel();
    b.on_disconnect(&incoming.id, Box::new(move || told.send(()).expect("waited for"))).unwrap();
    timeout(Duration::from_millis(10), gone).await.expect("at once").expect("told");
}

#[tokio::test]
async fn nothing_is_claimed_for_a_caller_that_stopped_waiting() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis).await;
    assert!(timeout(Duration::from_millis(50), b.next_requests(1)).await.is_err(), "nothing came");
    let forwarded = send(&a, b"late", 5_000);
    let deadline = tokio::time::Instant::now() + LONG;
    while b.stats()["unclaimed"] < 1 {
        assert!(tokio::time::Instant::now() < deadline, "the request reaches b");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(b.stats()["served"], 0, "heard, but not claimed while nobody asks");
    let incoming = take_one(&b).await;
    assert_eq!((incoming.body.as_slice(), b.stats()["unclaimed"]), (&b"late"[..], 0));
    b.respond(&incoming.id, 200, &[], b"{}").unwrap();
    accepted_now(forwarded).await;
}

#[tokio::test]
async fn the_owner_claims_while_redis_is_full() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis).await;
    let mut full = redis::pipe();
    full.cmd("CONFIG").arg("SET").arg("maxmemory-policy").arg("noeviction");
    full.cmd("CONFIG").arg("SET").arg("maxmemory").arg(1);
    redis.query(&full).await;
    // A plain SET is refused now; the claim falls back to the script, which Redis allows.
    let forwarded = send(&a, b"{}", 5_000);
    let incoming = take_one(&b).await;
    b.respond(&incoming.id, 200, &[], b"{}").unwrap();
    let forward = accepted_now(forwarded).await;
    assert!(matches!(next_part(&forward).await, Part::Whole { status: 200, .. }));
}

#[tokio::test]
async fn an_odd_lazy_offer_is_capped() {
    // A request frame offering u32::MAX ms: the owner owes its acceptance within 5 s (half
    // of its 10 s cap) all the same, so nothing waits on it for weeks.
    let redis = RedisServer::start();
    let b = node(&redis, "b", 64, WINDOW_BYTES).await;
    let heard = tokio::spawn(kinds_heard(subscribed(&redis, reply_channel(PREFIX, "a")).await, Duration::from_secs(6)));
    request_from_a(&redis, u32::MAX).await;
    let incoming = take_one(&b).await;
    assert_eq!(incoming.accept_within_ms, u32::MAX);
    assert_eq!(heard.await.expect("no panic"), vec!['A'], "accepted, late, with no response yet");
}

#[tokio::test]
async fn a_closed_relay_lets_go_of_everything() {
    let redis = RedisServer::start();
    let (a, b) = pair(&redis).await;
    // Every task has had work: a request relayed, taken, accepted late, answered.
    let (forward, id) = accepted(&a, &b).await;
    b.respond(&id, 200, &[], b"ok").expect("responded");
    assert!(matches!(next_part(&forward).await, Part::Whole { status: 200, .. }));
    drop(forward);
    let (weak_a, weak_b) = (Arc::downgrade(&a.shared), Arc::downgrade(&b.shared));
    for relay in [a, b] {
        relay.close();
    }
    // Its tasks end, and with them the last hold on its state and its Redis connection (the
    // sweep's period here is a minute: it must not wait for its next round either).
    let gone = async {
        while weak_a.upgrade().is_some() || weak_b.upgrade().is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    timeout(Duration::from_secs(2), gone).await.expect("every task of a closed relay ended");
}
