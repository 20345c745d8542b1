//! The relay: a request that needs another node's in-memory session state is forwarded to
//! that node through Redis, and the response streams back frame by frame.
//!
//! Every node subscribes to two pub/sub channels of its own:
//!
//! ```text
//! {prefix}:r:<node>:q   requests for sessions this node owns     (Q)
//! {prefix}:r:<node>     everything else addressed to this node   (A S D E R C X)
//! ```
//!
//! A request travels as one `Q` frame. The owner takes it on only when its event loop asks
//! for work, and then by one script that sets a claim key with NX and publishes `A`
//! (accepted). A relaying node that hears nothing within its bound sets the same key
//! itself: whichever SET wins decides, so a request reaches a handler at most once, and
//! the loser knows (the owner drops it; the relayer answers 503).
//!
//! The response is `S` (status and headers), `D` frames (body chunks, in order as the SDK
//! sends them) and `E`. Frames from one node travel over one connection, so they arrive in
//! order; each carries a sequence number, and a gap (the subscriber reconnected and missed
//! frames) ends the relayed response rather than corrupting it. Flow control is a window:
//! the owner may have `window` data frames and `window_bytes` bytes unacknowledged (at
//! least one frame, however large), and the relayer returns credit (`C`) as its client
//! consumes them. `X` tells the owner the client went away.
//!
//! With a secret shared by all nodes, every frame is sealed (`seal.rs`): encrypted, bound to
//! its sender, channel and time, and accepted once. Frames that do not open are dropped,
//! counted and logged, and nothing of them runs.
//!
//! A node whose subscriber or heartbeat is gone is found by a sweep (`PUBSUB NUMSUB` and
//! `EXISTS` for every peer with a request in flight), which ends those requests on both
//! sides, so nothing waits forever on a dead peer.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use pyo3::prelude::*;
use pyo3::types::PyBool;
use tokio::sync::{mpsc, Notify};

use crate::connection::Connector;
use crate::error::{Error, Result};
use crate::keys::{claim_key, inbox_channel, node_key, reply_channel};
use crate::seal::{Rejected, Seal, SEALED};
use crate::sessions::now_ms;
use crate::results;
use crate::wakeup;

pub type ReqId = [u8; 16];

pub(crate) const HEADER: usize = 1 + 16 + 4;
const INBOX_BACKLOG: usize = 1024;
/// How long `forward` waits, once the owner took a request on, for the response's first
/// part to hand over with the acceptance.
const FIRST_PART_GRACE: Duration = Duration::from_millis(5);
/// How often a relay on a Redis Cluster checks that its pub/sub hub has not moved.
const HUB_CHECK: Duration = Duration::from_secs(1);
/// How long a claim key outlives the decision it records.
const CLAIM_TTL_MS: u64 = 60_000;
/// Bytes of a response's body the owner may have unacknowledged, by default.
pub const WINDOW_BYTES: u64 = 1 << 20;
/// How old a sealed frame may be, by default; also how far the nodes' clocks may disagree.
pub const MAX_AGE_MS: u64 = 30_000;
/// Shortest relay secret accepted.
const MIN_SECRET: usize = 16;
/// At most one warning per cause of rejected frames in this long.
const REJECTION_LOG_EVERY: Duration = Duration::from_secs(10);

mod kind {
    pub const REQUEST: u8 = b'Q';
    pub const ACCEPTED: u8 = b'A';
    pub const START: u8 = b'S';
    pub const DATA: u8 = b'D';
    pub const END: u8 = b'E';
    /// A whole response in one frame: status, body and headers (a JSON reply, a 202, a 404).
    pub const WHOLE: u8 = b'W';
    pub const REFUSED: u8 = b'R';
    pub const CREDIT: u8 = b'C';
    pub const CANCEL: u8 = b'X';
    /// Never sent: what a relaying node tells itself when the owner is found gone.
    pub const LOST: u8 = b'L';
}

/// KEYS[1] claim key; ARGV node px channel frame. Claims a relayed request and tells the
/// relaying node, in one round trip. With no channel it only claims: on a Redis Cluster a
/// script's PUBLISH reaches the hub by the cluster bus, and the response's first frame,
/// published on the hub directly, could overtake it; there the owner sends ACCEPTED itself,
/// ahead of the response on its one ordered publisher. `allow-oom`: relaying must go on
/// while Redis is at `maxmemory` (a claim is a small key that lives 60 s).
const CLAIM_AND_ACCEPT: &str = r#"#!lua flags=allow-oom
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
  return 1
end
return 0
"#;


/// A request ID unique across nodes: a random per-process half and a counter.
fn new_id() -> ReqId {
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        h.finish()
    });
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&seed.to_be_bytes());
    id[8..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    id
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub id: ReqId,
    pub seq: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.payload.len());
        out.push(self.kind);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Frame> {
        if bytes.len() < HEADER {
            return None;
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&bytes[1..17]);
        let seq = u32::from_be_bytes(bytes[17..21].try_into().ok()?);
        Some(Frame { kind: bytes[0], id, seq, payload: bytes[HEADER..].to_vec() })
    }
}

/// Length-prefixed fields, for the few structured payloads (request, response start).
#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn put(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        self.0.extend_from_slice(bytes);
        self
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_be_bytes(self.0.get(..4)?.try_into().ok()?) as usize;
        let out = self.0.get(4..4 + len)?;
        self.0 = &self.0[4 + len..];
        Some(out)
    }

    fn text(&mut self) -> Option<String> {
        String::from_utf8(self.take()?.to_vec()).ok()
    }
}

/// A request as the owner receives it.
pub struct Incoming {
    pub id: ReqId,
    pub from: String,
    pub session: String,
    pub head: String,
    pub body: Vec<u8>,
}

fn encode_request(from: &str, session: &str, head: &str, body: &[u8]) -> Vec<u8> {
    let mut w = Writer::default();
    w.put(from.as_bytes()).put(session.as_bytes()).put(head.as_bytes()).put(body);
    w.0
}

fn decode_request(id: ReqId, payload: &[u8]) -> Option<Incoming> {
    let mut r = Reader(payload);
    Some(Incoming { id, from: r.text()?, session: r.text()?, head: r.text()?, body: r.take()?.to_vec() })
}

fn encode_start(status: u16, headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut w = Writer::default();
    w.put(&status.to_be_bytes());
    for (name, value) in headers {
        w.put(name).put(value);
    }
    w.0
}

type Headers = Vec<(Vec<u8>, Vec<u8>)>;

fn encode_whole(status: u16, headers: &[(Vec<u8>, Vec<u8>)], body: &[u8]) -> Vec<u8> {
    let mut w = Writer::default();
    w.put(body);
    w.0.extend_from_slice(&encode_start(status, headers));
    w.0
}

fn decode_whole(payload: &[u8]) -> Option<(u16, Headers, &[u8])> {
    let mut r = Reader(payload);
    let body = r.take()?;
    let (status, headers) = decode_start(r.0)?;
    Some((status, headers, body))
}

fn decode_start(payload: &[u8]) -> Option<(u16, Headers)> {
    let mut r = Reader(payload);
    let status = u16::from_be_bytes(r.take()?.try_into().ok()?);
    let mut headers = Vec::new();
    while !r.0.is_empty() {
        headers.push((r.take()?.to_vec(), r.take()?.to_vec()));
    }
    Some((status, headers))
}

/// What a relaying node waits on for one forwarded request.
struct Pending {
    owner: String,
    tx: mpsc::UnboundedSender<Frame>,
    state: Arc<ForwardState>,
}

/// What an owner keeps for one request it serves for another node.
struct Served {
    from: String,
    next_seq: AtomicU32,
    sent: AtomicU32,
    credit: AtomicU32,
    sent_bytes: AtomicU64,
    credit_bytes: AtomicU64,
    /// The relaying node credits chunks only (an older version): no byte window then.
    chunks_only: AtomicBool,
    cancelled: AtomicBool,
    /// The claim's outcome: `CLAIM_PENDING`, `CLAIM_WON` or `CLAIM_LOST`.
    claim: AtomicU8,
    wake: Notify,
}

const CLAIM_PENDING: u8 = 0;
const CLAIM_WON: u8 = 1;
const CLAIM_LOST: u8 = 2;

impl Served {
    /// Every waiter creates its `Notified` before checking the state it waits on, so
    /// `notify_waiters` reaches all of them: a `send` awaiting credit and `disconnected`
    /// wait on the same `Notify`, and a stored single permit would wake only one.
    fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    /// Whether another data frame may go: both windows have room.
    fn has_room(&self, window: u32, window_bytes: u64) -> bool {
        self.sent.load(Ordering::SeqCst).saturating_sub(self.credit.load(Ordering::SeqCst)) < window
            && (self.chunks_only.load(Ordering::SeqCst)
                || self.sent_bytes.load(Ordering::SeqCst).saturating_sub(self.credit_bytes.load(Ordering::SeqCst))
                    < window_bytes)
    }
}

/// What the publisher should do if nobody heard a frame.
#[derive(Clone, Copy)]
enum Unheard {
    Ignore,
    /// The relaying node of a served request is gone: stop serving it.
    Served(ReqId),
    /// The owner of a forwarded request is gone.
    Forwarded(ReqId),
}

struct Shared {
    prefix: String,
    node: String,
    inbox: String,
    replies: String,
    window: u32,
    window_bytes: u64,
    /// Set when the nodes share a relay secret: every frame is sealed and must open.
    seal: Option<Seal>,
    connector: Arc<Connector>,
    pending: Mutex<HashMap<ReqId, Pending>>,
    served: Mutex<HashMap<ReqId, Arc<Served>>>,
    requests: tokio::sync::Mutex<mpsc::Receiver<Incoming>>,
    out: mpsc::UnboundedSender<(String, Frame, Unheard)>,
    claim: redis::Script,
    draining: AtomicBool,
    closed: AtomicBool,
    subscribed: AtomicBool,
    ready: Notify,
    unsubscribe: Notify,
    stats: RelayStats,
    rejections: Rejections,
}

#[derive(Default)]
struct RelayStats {
    forwarded: AtomicU64,
    served: AtomicU64,
    timeouts: AtomicU64,
    lost: AtomicU64,
    dropped_requests: AtomicU64,
}

/// Frames dropped because they did not open, by cause, and when each cause was last logged.
#[derive(Default)]
struct Rejections {
    counts: [AtomicU64; Rejected::ALL.len()],
    logged: Mutex<[Option<(Instant, u64)>; Rejected::ALL.len()]>,
}

impl Rejections {
    /// Counts a dropped frame, and warns at most once per cause every
    /// `REJECTION_LOG_EVERY`, naming the likely cause.
    fn note(&self, why: Rejected, channel: &str, sender: Option<&str>) {
        let i = Rejected::ALL.iter().position(|r| *r == why).expect("every cause is listed");
        let total = self.counts[i].fetch_add(1, Ordering::Relaxed) + 1;
        let mut logged = self.logged.lock().unwrap();
        let since = match logged[i] {
            Some((at, _)) if at.elapsed() < REJECTION_LOG_EVERY => return,
            Some((_, count)) => total - count,
            None => total,
        };
        logged[i] = Some((Instant::now(), total));
        drop(logged);
        let from = sender.map_or_else(String::new, |s| format!(", said to be from node {s:?}"));
        tracing::warn!(
            "relay: dropped {since} {} frame(s) on {channel}{from}; nothing of them runs. Likely cause: {}",
            why.name(),
            why.likely_cause()
        );
    }
}

impl Shared {
    fn lost(&self, id: &ReqId, why: &str) {
        if let Some(p) = self.pending.lock().unwrap().remove(id) {
            self.stats.lost.fetch_add(1, Ordering::Relaxed);
            let _ = p.tx.send(Frame { kind: kind::LOST, id: *id, seq: 0, payload: why.as_bytes().to_vec() });
        }
    }

    fn cancel_served(&self, id: &ReqId) {
        if let Some(s) = self.served.lock().unwrap().get(id) {
            s.cancel();
        }
    }

    /// A gap in the subscription: frames may have been missed both ways.
    fn forget_everything(&self) {
        let ids: Vec<ReqId> = self.pending.lock().unwrap().keys().copied().collect();
        for id in ids {
            self.lost(&id, "the relay subscription was interrupted");
        }
        for served in self.served.lock().unwrap().values() {
            served.cancel();
        }
    }

    /// Encodes a frame for `channel`, sealed when the nodes share a secret.
    fn encode(&self, channel: &str, frame: &Frame) -> Vec<u8> {
        match &self.seal {
            Some(seal) => seal.seal(channel, &frame.encode(), now_ms()),
            None => frame.encode(),
        }
    }

    /// Opens a frame heard on `channel`: `None` (counted and logged) if it must be dropped.
    /// With a secret, also the node that sealed it.
    fn open(&self, channel: &str, bytes: &[u8]) -> Option<(Frame, Option<String>)> {
        let (plain, sender) = match &self.seal {
            Some(seal) => match seal.open(channel, bytes, now_ms()) {
                Ok(opened) => (std::borrow::Cow::Owned(opened.frame), Some(opened.sender)),
                Err(why) => {
                    let sender = match why {
                        Rejected::Unsealed => Frame::decode(bytes)
                            .filter(|f| f.kind == kind::REQUEST)
                            .and_then(|f| decode_request(f.id, &f.payload))
                            .map(|r| r.from),
                        _ => crate::seal::claimed_sender(bytes),
                    };
                    self.rejections.note(why, channel, sender.as_deref());
                    return None;
                }
            },
            None if bytes.first() == Some(&SEALED) => {
                self.rejections.note(Rejected::Sealed, channel, crate::seal::claimed_sender(bytes).as_deref());
                return None;
            }
            None => (std::borrow::Cow::Borrowed(bytes), None),
        };
        match Frame::decode(&plain) {
            Some(frame) => Some((frame, sender)),
            None => {
                tracing::warn!("relay: ignoring a malformed frame of {} bytes", bytes.len());
                None
            }
        }
    }

    fn dispatch(&self, channel: &str, bytes: &[u8], inbox: &mpsc::Sender<Incoming>) {
        let Some((frame, sender)) = self.open(channel, bytes) else { return };
        // A sealed frame names its sender: it must be the peer of the request it is about.
        let from = |peer: &str| sender.as_deref().is_none_or(|s| s == peer);
        match frame.kind {
            kind::REQUEST => match decode_request(frame.id, &frame.payload) {
                Some(incoming) if !from(&incoming.from) => {
                    self.rejections.note(Rejected::Forged, channel, sender.as_deref());
                }
                Some(incoming) => {
                    if inbox.try_send(incoming).is_err() {
                        // The claim was never made: the relaying node times out and answers 503.
                        self.stats.dropped_requests.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("relay: inbox full ({INBOX_BACKLOG} requests waiting); dropping one");
                    }
                }
                None => tracing::warn!("relay: ignoring a malformed request frame"),
            },
            kind::CREDIT => {
                if let Some(s) = self.served.lock().unwrap().get(&frame.id).filter(|s| from(&s.from)) {
                    s.credit.fetch_max(frame.seq, Ordering::SeqCst);
                    match frame.payload.get(..8) {
                        Some(bytes) => {
                            let consumed = u64::from_be_bytes(bytes.try_into().expect("8 bytes"));
                            s.credit_bytes.fetch_max(consumed, Ordering::SeqCst);
                        }
                        None => s.chunks_only.store(true, Ordering::SeqCst),
                    }
                    s.wake.notify_waiters();
                }
            }
            kind::CANCEL => {
                if let Some(s) = self.served.lock().unwrap().get(&frame.id).filter(|s| from(&s.from)) {
                    s.cancel();
                }
            }
            _ => {
                if let Some(p) = self.pending.lock().unwrap().get(&frame.id).filter(|p| from(&p.owner)) {
                    if matches!(frame.kind, kind::DATA | kind::WHOLE) {
                        p.state.buffered.fetch_add(frame.payload.len() as u64, Ordering::SeqCst);
                    }
                    let _ = p.tx.send(frame);
                }
            }
        }
    }

    /// Queues a frame; the publisher task encodes (and seals) it, off the caller's thread.
    fn publish(&self, channel: String, frame: Frame, unheard: Unheard) {
        let _ = self.out.send((channel, frame, unheard));
    }
}

async fn listen(shared: Arc<Shared>, inbox: mpsc::Sender<Incoming>) {
    let mut backoff = Duration::from_millis(50);
    let mut connected_before = false;
    loop {
        match shared.connector.pubsub().await {
            Ok((pubsub, hub)) => {
                let (mut sink, mut stream) = pubsub.split();
                let mut hub_check = tokio::time::interval(HUB_CHECK);
                hub_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                hub_check.reset();
                let mut channels = vec![shared.replies.clone()];
                if !shared.draining.load(Ordering::SeqCst) {
                    channels.push(shared.inbox.clone());
                }
                match sink.subscribe(&channels).await {
                    Ok(()) => {
                        if connected_before {
                            shared.forget_everything();
                        }
                        connected_before = true;
                        backoff = Duration::from_millis(50);
                        shared.subscribed.store(true, Ordering::SeqCst);
                        shared.ready.notify_waiters();
                        loop {
                            tokio::select! {
                                message = stream.next() => match message {
                                    Some(m) => shared.dispatch(m.get_channel_name(), m.get_payload_bytes(), &inbox),
                                    None => break,
                                },
                                _ = hub_check.tick(), if hub.is_some() => {
                                    // Counts of who heard a frame only see the hub's own
                                    // subscribers: follow the hub wherever the cluster puts it.
                                    if let Ok(now) = shared.connector.hub_now().await {
                                        if now != hub {
                                            let to = now.map_or_else(String::new, |(h, p)| format!("{h}:{p}"));
                                            tracing::warn!("relay: the cluster's pub/sub hub moved to {to}; following it");
                                            break;
                                        }
                                    }
                                }
                                _ = shared.unsubscribe.notified() => {
                                    if shared.closed.load(Ordering::SeqCst) {
                                        return;
                                    }
                                    if let Err(e) = sink.unsubscribe(&shared.inbox).await {
                                        tracing::warn!("relay: cannot leave the inbox: {e}");
                                    }
                                }
                            }
                        }
                        shared.subscribed.store(false, Ordering::SeqCst);
                        tracing::warn!("relay subscription to {} ended; resubscribing", shared.connector.server());
                    }
                    Err(e) => tracing::warn!("relay: cannot subscribe: {}", Error::from_redis(&e, shared.connector.server())),
                }
            }
            Err(e) => tracing::debug!("relay: {e}"),
        }
        if shared.closed.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Sends every queued frame, in order, one pipeline per batch.
async fn publish(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<(String, Frame, Unheard)>) {
    let mut batch = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 256).await > 0 {
        let mut pipe = redis::pipe();
        for (channel, frame, _) in &batch {
            pipe.cmd("PUBLISH").arg(channel).arg(shared.encode(channel, frame));
        }
        match shared.connector.query(&pipe).await {
            Ok(counts) => {
                for ((_, _, unheard), count) in batch.iter().zip(counts) {
                    if matches!(count, redis::Value::Int(0)) {
                        match unheard {
                            Unheard::Served(id) => shared.cancel_served(id),
                            Unheard::Forwarded(id) => shared.lost(id, "the owner stopped listening"),
                            Unheard::Ignore => {}
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!("relay: cannot publish {} frames: {e}", batch.len());
                for (_, _, unheard) in &batch {
                    match unheard {
                        Unheard::Served(id) => shared.cancel_served(id),
                        Unheard::Forwarded(id) => shared.lost(id, "Redis is unreachable"),
                        Unheard::Ignore => {}
                    }
                }
            }
        }
        batch.clear();
    }
}

/// Ends requests whose peer node is gone: its subscriber left or its heartbeat lapsed.
async fn sweep(shared: Arc<Shared>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        if shared.closed.load(Ordering::SeqCst) {
            return;
        }
        let mut peers: HashSet<String> = HashSet::new();
        peers.extend(shared.pending.lock().unwrap().values().map(|p| p.owner.clone()));
        peers.extend(shared.served.lock().unwrap().values().map(|s| s.from.clone()));
        peers.remove(&shared.node);
        if peers.is_empty() {
            continue;
        }
        let peers: Vec<String> = peers.into_iter().collect();
        let mut pipe = redis::pipe();
        pipe.cmd("PUBSUB").arg("NUMSUB");
        for peer in &peers {
            pipe.arg(reply_channel(&shared.prefix, peer));
        }
        for peer in &peers {
            pipe.cmd("EXISTS").arg(node_key(&shared.prefix, peer));
        }
        let Ok(reply) = shared.connector.query(&pipe).await else { continue };
        let mut gone: HashSet<&str> = HashSet::new();
        if let Some(redis::Value::Array(numsub)) = reply.first() {
            for (peer, pair) in peers.iter().zip(numsub.chunks(2)) {
                if matches!(pair.get(1), Some(redis::Value::Int(0))) {
                    gone.insert(peer);
                }
            }
        }
        for (peer, exists) in peers.iter().zip(reply.iter().skip(1)) {
            if matches!(exists, redis::Value::Int(0)) {
                gone.insert(peer);
            }
        }
        if gone.is_empty() {
            continue;
        }
        let lost: Vec<ReqId> =
            shared.pending.lock().unwrap().iter().filter(|(_, p)| gone.contains(p.owner.as_str())).map(|(id, _)| *id).collect();
        for id in lost {
            shared.lost(&id, "the owner is gone");
        }
        for served in shared.served.lock().unwrap().values() {
            if gone.contains(served.from.as_str()) {
                served.cancel();
            }
        }
    }
}

/// This node's end of the relay (`RedisEvents.relay(node, ...)`).
#[pyclass(frozen, module = "mcp_db._core")]
pub struct Relay {
    shared: Arc<Shared>,
}

impl Relay {
    /// `secret`: shared by all nodes, it seals every frame (at least 16 bytes); frames older
    /// than `max_age_ms` are refused then.
    pub fn spawn(connector: Arc<Connector>, prefix: &str, node: &str, options: RelayOptions) -> Result<Relay> {
        let RelayOptions { window, window_bytes, sweep_ms, secret, max_age_ms } = options;
        if let Some(secret) = &secret {
            if secret.len() < MIN_SECRET {
                return Err(Error::Config(format!(
                    "the relay secret has {} bytes; use at least {MIN_SECRET} random bytes, the same on every \
                     node (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')",
                    secret.len()
                )));
            }
        }
        let (inbox_tx, inbox_rx) = mpsc::channel(INBOX_BACKLOG);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            prefix: prefix.to_owned(),
            node: node.to_owned(),
            inbox: inbox_channel(prefix, node),
            replies: reply_channel(prefix, node),
            window: window.max(2),
            window_bytes: window_bytes.max(2),
            seal: secret.map(|s| Seal::new(&s, node, max_age_ms.max(1))),
            connector,
            pending: Mutex::new(HashMap::new()),
            served: Mutex::new(HashMap::new()),
            requests: tokio::sync::Mutex::new(inbox_rx),
            out: out_tx,
            claim: redis::Script::new(CLAIM_AND_ACCEPT),
            draining: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            ready: Notify::new(),
            unsubscribe: Notify::new(),
            stats: RelayStats::default(),
            rejections: Rejections::default(),
        });
        let runtime = pyo3_async_runtimes::tokio::get_runtime();
        runtime.spawn(listen(shared.clone(), inbox_tx));
        runtime.spawn(publish(shared.clone(), out_rx));
        runtime.spawn(sweep(shared.clone(), Duration::from_millis(sweep_ms.max(10))));
        Ok(Relay { shared })
    }
}

/// How a relay is set up (`RedisEvents.relay`).
pub struct RelayOptions {
    pub window: u32,
    pub window_bytes: u64,
    pub sweep_ms: u64,
    pub secret: Option<Vec<u8>>,
    pub max_age_ms: u64,
}

fn id_of(id: &[u8]) -> PyResult<ReqId> {
    id.try_into().map_err(|_| Error::Config("a relay request ID is 16 bytes".into()).into())
}

/// Outcome of `forward`.
enum Forwarded {
    Accepted(Forward),
    /// Nobody listens on the owner's inbox, or the owner was found gone before it took the
    /// request on: either way the request never runs.
    Unreachable,
    /// The owner was found gone after it took the request on: it may have run.
    Lost(String),
    /// The owner did not take the request on within the bound; it never will.
    Timeout,
    Refused(String),
}

#[pymethods]
impl Relay {
    #[getter]
    fn node(&self) -> &str {
        &self.shared.node
    }

    /// Waits until this node listens on its channels (at most `timeout_ms`); whether it does.
    fn ready<'py>(&self, py: Python<'py>, timeout_ms: u64) -> PyResult<Bound<'py, PyAny>> {
        let shared = self.shared.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
            while !shared.subscribed.load(Ordering::SeqCst) {
                let notified = shared.ready.notified();
                if shared.subscribed.load(Ordering::SeqCst) {
                    break;
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    break;
                }
            }
            Ok(shared.subscribed.load(Ordering::SeqCst))
        })
    }

    /// Stops taking requests (graceful shutdown); requests in flight go on.
    fn drain(&self) {
        self.shared.draining.store(true, Ordering::SeqCst);
        self.shared.unsubscribe.notify_one();
    }

    /// Leaves both channels and stops the background tasks; requests in flight end.
    fn close(&self) {
        self.shared.draining.store(true, Ordering::SeqCst);
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.unsubscribe.notify_one();
        self.shared.forget_everything();
    }

    fn stats(&self) -> HashMap<String, u64> {
        let s = &self.shared.stats;
        let rejected = &self.shared.rejections.counts;
        let buffered: u64 =
            self.shared.pending.lock().unwrap().values().map(|p| p.state.buffered.load(Ordering::SeqCst)).sum();
        let mut out: HashMap<String, u64> = Rejected::ALL
            .iter()
            .zip(rejected)
            .map(|(why, n)| (format!("rejected_{}", why.name()), n.load(Ordering::Relaxed)))
            .collect();
        out.insert("rejected".into(), rejected.iter().map(|n| n.load(Ordering::Relaxed)).sum());
        out.insert("buffered_bytes".into(), buffered);
        out.extend([
            ("forwarded", s.forwarded.load(Ordering::Relaxed)),
            ("served", s.served.load(Ordering::Relaxed)),
            ("timeouts", s.timeouts.load(Ordering::Relaxed)),
            ("lost", s.lost.load(Ordering::Relaxed)),
            ("dropped_requests", s.dropped_requests.load(Ordering::Relaxed)),
            ("in_flight_forwarded", self.shared.pending.lock().unwrap().len() as u64),
            ("in_flight_served", self.shared.served.lock().unwrap().len() as u64),
        ].map(|(k, v)| (k.to_owned(), v)));
        out
    }

    // -- the relaying side ------------------------------------------------------------------

    /// Forwards a request to `owner`; what came of it is a `results::Forwarded`. An error
    /// means Redis failed with the request maybe heard: do not send it again.
    fn forward<'py>(
        &self,
        py: Python<'py>,
        owner: String,
        session: String,
        head: String,
        body: Vec<u8>,
        accept_timeout_ms: u64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let shared = self.shared.clone();
        let work = async move { Ok(forward(shared, owner, session, head, body, accept_timeout_ms).await?) };
        wakeup::spawn(py, work, |py, outcome| {
            use results::RelayOutcome as O;
            let forwarded = match outcome {
                Forwarded::Accepted(f) => results::Forwarded::new(O::Accepted, Some(Py::new(py, f)?.into_any()), None),
                Forwarded::Unreachable => results::Forwarded::new(O::Unreachable, None, None),
                Forwarded::Timeout => results::Forwarded::new(O::Timeout, None, None),
                Forwarded::Refused(why) => results::Forwarded::new(O::Refused, None, Some(why)),
                Forwarded::Lost(why) => results::Forwarded::new(O::OwnerLost, None, Some(why)),
            };
            Ok(Py::new(py, forwarded)?.into_any())
        })
    }

    // -- the owning side --------------------------------------------------------------------

    /// The next request relayed to this node (a `results::RelayedRequest`), or `None` once
    /// the relay is closed. Its claim is under way meanwhile: run nothing of
    /// it before `claimed(id)` says it is this node's.
    fn next_request<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let shared = self.shared.clone();
        let work = async move {
            loop {
                let incoming = shared.requests.lock().await.recv().await;
                let Some(incoming) = incoming else { return Ok(None) };
                if shared.draining.load(Ordering::SeqCst) {
                    let refusal = Frame { kind: kind::REFUSED, id: incoming.id, seq: 0, payload: b"draining".to_vec() };
                    shared.publish(reply_channel(&shared.prefix, &incoming.from), refusal, Unheard::Ignore);
                    continue;
                }
                // The claim's round trip to Redis overlaps with waking Python up.
                let served = register(&shared, &incoming);
                tokio::spawn(claim(shared.clone(), served, incoming.id, incoming.session.clone()));
                return Ok(Some(incoming));
            }
        };
        wakeup::spawn(py, work, |py, incoming: Option<Incoming>| {
            let Some(incoming) = incoming else { return Ok(py.None()) };
            Ok(Py::new(py, results::RelayedRequest::new(py, incoming))?.into_any())
        })
    }

    /// Whether this node won the claim of a request from `next_request`: a bool if that is
    /// decided, else an awaitable of it. `False`: the relaying node gave up; drop it.
    fn claimed<'py>(&self, py: Python<'py>, id: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        let served = self.shared.served.lock().unwrap().get(&id_of(id)?).cloned();
        let Some(served) = served else { return Ok(PyBool::new(py, false).to_owned().into_any()) };
        match served.claim.load(Ordering::SeqCst) {
            CLAIM_PENDING => {}
            decided => return Ok(PyBool::new(py, decided == CLAIM_WON).to_owned().into_any()),
        }
        let work = async move {
            loop {
                let notified = served.wake.notified();
                match served.claim.load(Ordering::SeqCst) {
                    CLAIM_PENDING => notified.await,
                    decided => return Ok(decided == CLAIM_WON),
                }
            }
        };
        wakeup::spawn(py, work, |py, won: bool| Ok(PyBool::new(py, won).to_owned().into_any().unbind()))
    }

    /// Sends the response's status and headers.
    fn start(&self, id: &[u8], status: u16, headers: Vec<(Vec<u8>, Vec<u8>)>) -> PyResult<()> {
        self.send_frame(id, kind::START, encode_start(status, &headers))
    }

    /// Sends a whole response in one frame and forgets the request.
    fn respond(&self, id: &[u8], status: u16, headers: Vec<(Vec<u8>, Vec<u8>)>, body: Vec<u8>) -> PyResult<()> {
        self.send_frame(id, kind::WHOLE, encode_whole(status, &headers, &body))?;
        self.shared.served.lock().unwrap().remove(&id_of(id)?);
        Ok(())
    }

    /// Sends a body chunk. `None` if the window has room, else an awaitable that resolves
    /// to whether the relaying side still wants the response (`False`: it went away).
    fn send<'py>(&self, py: Python<'py>, id: &[u8], chunk: Vec<u8>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let rid = id_of(id)?;
        let Some(served) = self.shared.served.lock().unwrap().get(&rid).cloned() else { return Ok(None) };
        let len = chunk.len() as u64;
        self.send_frame(id, kind::DATA, chunk)?;
        served.sent.fetch_add(1, Ordering::SeqCst);
        served.sent_bytes.fetch_add(len, Ordering::SeqCst);
        let (window, window_bytes) = (self.shared.window, self.shared.window_bytes);
        if served.has_room(window, window_bytes) {
            return Ok(None);
        }
        Ok(Some(pyo3_async_runtimes::tokio::future_into_py(py, async move {
            loop {
                let notified = served.wake.notified();
                if served.cancelled.load(Ordering::SeqCst) {
                    return Ok(false);
                }
                if served.has_room(window, window_bytes) {
                    return Ok(true);
                }
                notified.await;
            }
        })?))
    }

    /// Ends the response (`ok=False`: it broke off) and forgets the request.
    fn end(&self, id: &[u8], ok: bool) -> PyResult<()> {
        self.send_frame(id, kind::END, vec![u8::from(ok)])?;
        self.shared.served.lock().unwrap().remove(&id_of(id)?);
        Ok(())
    }

    /// Resolves once the relaying side went away (its client disconnected, or the node died).
    fn disconnected<'py>(&self, py: Python<'py>, id: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        let served = self.shared.served.lock().unwrap().get(&id_of(id)?).cloned();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let Some(served) = served else { return Ok(()) };
            loop {
                let notified = served.wake.notified();
                if served.cancelled.load(Ordering::SeqCst) {
                    return Ok(());
                }
                notified.await;
            }
        })
    }
}

impl Relay {
    fn send_frame(&self, id: &[u8], kind: u8, payload: Vec<u8>) -> PyResult<()> {
        let rid = id_of(id)?;
        let served = self.shared.served.lock().unwrap().get(&rid).cloned();
        let Some(served) = served else { return Ok(()) }; // ended or never ours: nothing to do
        let seq = served.next_seq.fetch_add(1, Ordering::SeqCst);
        let channel = reply_channel(&self.shared.prefix, &served.from);
        self.shared.publish(channel, Frame { kind, id: rid, seq, payload }, Unheard::Served(rid));
        Ok(())
    }
}

/// Registers a request this node is about to claim: the sender may answer the acceptance
/// at once (credit, cancel).
fn register(shared: &Shared, incoming: &Incoming) -> Arc<Served> {
    let served = Arc::new(Served {
        from: incoming.from.clone(),
        next_seq: AtomicU32::new(1),
        sent: AtomicU32::new(0),
        credit: AtomicU32::new(0),
        sent_bytes: AtomicU64::new(0),
        credit_bytes: AtomicU64::new(0),
        chunks_only: AtomicBool::new(false),
        cancelled: AtomicBool::new(false),
        claim: AtomicU8::new(CLAIM_PENDING),
        wake: Notify::new(),
    });
    shared.served.lock().unwrap().insert(incoming.id, served.clone());
    served
}

/// Claims a request and tells its sender, in one script. Lost if the sender gave up first
/// (or Redis cannot be reached: then the sender times out and answers 503).
async fn claim(shared: Arc<Shared>, served: Arc<Served>, id: ReqId, session: String) {
    let accepted = Frame { kind: kind::ACCEPTED, id, seq: 0, payload: Vec::new() };
    let key = claim_key(&shared.prefix, &session, &id);
    let replies = reply_channel(&shared.prefix, &served.from);
    let in_script = !shared.connector.is_cluster().await.unwrap_or(false);
    let mut call = shared.claim.key(&key);
    call.arg(&shared.node).arg(CLAIM_TTL_MS);
    if in_script {
        call.arg(&replies).arg(shared.encode(&replies, &accepted));
    } else {
        call.arg("").arg("");
    }
    let won = match shared.connector.invoke::<i64>(&call).await {
        Ok(n) => n == 1,
        Err(e) => {
            tracing::warn!("relay: cannot claim a relayed request: {e}");
            false
        }
    };
    if won && !in_script {
        shared.publish(replies, accepted, Unheard::Ignore);
    }
    if won {
        shared.stats.served.fetch_add(1, Ordering::Relaxed);
    } else {
        shared.served.lock().unwrap().remove(&id);
    }
    served.claim.store(if won { CLAIM_WON } else { CLAIM_LOST }, Ordering::SeqCst);
    served.wake.notify_waiters();
}

/// Takes a forwarded request's claim for this node: if that succeeds, the owner never runs
/// the request (its own claim fails).
async fn give_up(shared: &Shared, session: &str, id: &ReqId) -> Result<bool> {
    // The claim script with no channel, as EVAL in one command: a plain SET would be refused
    // at `maxmemory`, and EVALSHA could meet NOSCRIPT and need a second round trip, no
    // longer queued right behind the request's PUBLISH.
    let mut pipe = redis::pipe();
    pipe.cmd("EVAL").arg(CLAIM_AND_ACCEPT).arg(1).arg(claim_key(&shared.prefix, session, id));
    pipe.arg("gave-up").arg(CLAIM_TTL_MS).arg("").arg("");
    Ok(matches!(shared.connector.query(&pipe).await?.first(), Some(redis::Value::Int(1))))
}

async fn forward(
    shared: Arc<Shared>,
    owner: String,
    session: String,
    head: String,
    body: Vec<u8>,
    accept_timeout_ms: u64,
) -> Result<Forwarded> {
    let id = new_id();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let state = Arc::new(ForwardState::default());
    shared.pending.lock().unwrap().insert(id, Pending { owner: owner.clone(), tx, state: state.clone() });
    let forget = |shared: &Shared| {
        shared.pending.lock().unwrap().remove(&id);
    };
    let request = Frame { kind: kind::REQUEST, id, seq: 0, payload: encode_request(&shared.node, &session, &head, &body) };
    let inbox = inbox_channel(&shared.prefix, &owner);
    let mut pipe = redis::pipe();
    pipe.cmd("PUBLISH").arg(&inbox).arg(shared.encode(&inbox, &request));
    let began = tokio::time::Instant::now();
    let heard = match shared.connector.query(&pipe).await {
        Ok(reply) => matches!(reply.first(), Some(redis::Value::Int(n)) if *n > 0),
        // Only the answer may be lost: the owner may have heard the request. The claim
        // settles it: taken here, the request never runs; taken by the owner, its answer
        // is on the way. If that fails too, nobody can know: the caller must not send the
        // request again. Publishing and settling share one timeout, so the client hears
        // within it; the claim, once sent, stays queued right behind the PUBLISH on the
        // same connection, so it still comes first should a stalled Redis run both later.
        Err(e) => {
            let left = shared.connector.timeout().saturating_sub(began.elapsed());
            match tokio::time::timeout(left, give_up(&shared, &session, &id)).await {
                Ok(Ok(won)) => !won,
                Ok(Err(_)) | Err(_) => {
                    forget(&shared);
                    return Err(e);
                }
            }
        }
    };
    if !heard {
        forget(&shared);
        return Ok(Forwarded::Unreachable);
    }
    shared.stats.forwarded.fetch_add(1, Ordering::Relaxed);
    let bound = Duration::from_millis(accept_timeout_ms);
    let first = match tokio::time::timeout(bound, rx.recv()).await {
        Ok(frame) => frame,
        Err(_) => {
            if give_up(&shared, &session, &id).await.unwrap_or(false) {
                forget(&shared);
                shared.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                return Ok(Forwarded::Timeout);
            }
            // The owner claimed it just now: its acceptance is on the way.
            match tokio::time::timeout(bound, rx.recv()).await.ok().flatten() {
                Some(frame) => Some(frame),
                None => {
                    forget(&shared);
                    shared.stats.lost.fetch_add(1, Ordering::Relaxed);
                    return Ok(Forwarded::Lost("the owner took the request on, then fell silent".into()));
                }
            }
        }
    };
    match first {
        Some(Frame { kind: kind::ACCEPTED, .. }) => {
            // Most answers follow within a millisecond or two: hand the first part over
            // with the acceptance, saving Python a wake-up. Waiting here delays nothing; a
            // slower answer is taken with `next()` as usual.
            let first = tokio::time::timeout(FIRST_PART_GRACE, rx.recv()).await.ok().flatten();
            let rx = tokio::sync::Mutex::new(rx).into();
            Ok(Forwarded::Accepted(Forward { shared, id, owner, rx, first: Mutex::new(first), state }))
        }
        Some(Frame { kind: kind::REFUSED, payload, .. }) => {
            forget(&shared);
            Ok(Forwarded::Refused(String::from_utf8_lossy(&payload).into_owned()))
        }
        // The sweep found the owner gone before it answered. It heard the request, though:
        // unless this node takes the claim, the owner may yet run it.
        Some(Frame { kind: kind::LOST, payload, .. }) => Ok(if give_up(&shared, &session, &id).await.unwrap_or(false) {
            Forwarded::Unreachable
        } else {
            Forwarded::Lost(String::from_utf8_lossy(&payload).into_owned())
        }),
        // The relay closed, or a response began without its acceptance: the owner may have
        // run it.
        _ => {
            forget(&shared);
            shared.stats.lost.fetch_add(1, Ordering::Relaxed);
            Ok(Forwarded::Lost("the relay closed before the owner answered".into()))
        }
    }
}

#[derive(Default)]
struct ForwardState {
    next_seq: AtomicU32,
    consumed: AtomicU32,
    consumed_bytes: AtomicU64,
    /// What the last credit returned to the owner said.
    credited: AtomicU32,
    credited_bytes: AtomicU64,
    /// Body bytes received and not yet taken by Python.
    buffered: AtomicU64,
    finished: AtomicBool,
}

/// A forwarded request whose response is coming: `next()` / `try_next()` yield its parts
/// (`results::Whole`, or `Head`, `Chunk`s and `End`; a `Cut` at any point).
#[pyclass(frozen, module = "mcp_db._core")]
pub struct Forward {
    shared: Arc<Shared>,
    id: ReqId,
    owner: String,
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Frame>>>,
    /// The response's first part, if it came with the acceptance.
    first: Mutex<Option<Frame>>,
    state: Arc<ForwardState>,
}

/// Turns a received frame into what Python sees, checking order and returning credit.
fn accept_frame(
    py: Python<'_>,
    shared: &Shared,
    state: &ForwardState,
    owner: &str,
    frame: Frame,
) -> PyResult<Py<PyAny>> {
    let expected = state.next_seq.load(Ordering::SeqCst) + 1;
    if frame.kind != kind::LOST && frame.seq != expected {
        finish(shared, state, &frame.id);
        let why = format!("relay frames missed (got {}, expected {expected})", frame.seq);
        return results::cut(py, why);
    }
    state.next_seq.store(frame.seq, Ordering::SeqCst);
    Ok(match frame.kind {
        kind::START => match decode_start(&frame.payload) {
            Some((status, headers)) => results::head(py, status, headers)?,
            None => {
                finish(shared, state, &frame.id);
                results::cut(py, "malformed response start")?
            }
        },
        kind::WHOLE => {
            state.buffered.fetch_sub(frame.payload.len() as u64, Ordering::SeqCst);
            finish(shared, state, &frame.id);
            match decode_whole(&frame.payload) {
                Some((status, headers, body)) => results::whole(py, status, headers, body)?,
                None => results::cut(py, "malformed response")?,
            }
        }
        kind::DATA => {
            let len = frame.payload.len() as u64;
            state.buffered.fetch_sub(len, Ordering::SeqCst);
            let consumed = state.consumed.fetch_add(1, Ordering::SeqCst) + 1;
            let consumed_bytes = state.consumed_bytes.fetch_add(len, Ordering::SeqCst) + len;
            // Credit every half window, in chunks or in bytes, whichever comes first; the
            // chunk count stays in `seq`, where nodes that count chunks only read it.
            if consumed - state.credited.load(Ordering::SeqCst) >= (shared.window / 2).max(1)
                || consumed_bytes - state.credited_bytes.load(Ordering::SeqCst) >= (shared.window_bytes / 2).max(1)
            {
                state.credited.store(consumed, Ordering::SeqCst);
                state.credited_bytes.store(consumed_bytes, Ordering::SeqCst);
                let payload = consumed_bytes.to_be_bytes().to_vec();
                let credit = Frame { kind: kind::CREDIT, id: frame.id, seq: consumed, payload };
                shared.publish(reply_channel(&shared.prefix, owner), credit, Unheard::Forwarded(frame.id));
            }
            results::chunk(py, &frame.payload)?
        }
        kind::END => {
            finish(shared, state, &frame.id);
            results::end(py, frame.payload.first() == Some(&1))?
        }
        _ => {
            finish(shared, state, &frame.id);
            results::cut(py, String::from_utf8_lossy(&frame.payload))?
        }
    })
}

fn finish(shared: &Shared, state: &ForwardState, id: &ReqId) {
    state.finished.store(true, Ordering::SeqCst);
    shared.pending.lock().unwrap().remove(id);
}

#[pymethods]
impl Forward {
    /// The next part of the response, waiting for it.
    fn next<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (shared, state, rx, owner) = (self.shared.clone(), self.state.clone(), self.rx.clone(), self.owner.clone());
        let first = self.first.lock().unwrap().take();
        let work = async move {
            Ok(match first {
                Some(frame) => Some(frame),
                None => rx.lock().await.recv().await,
            })
        };
        wakeup::spawn(py, work, move |py, frame| match frame {
            Some(frame) => accept_frame(py, &shared, &state, &owner, frame),
            None => results::cut(py, "relay closed"),
        })
    }

    /// The next part if it has arrived, else `None` (no waiting, no thread hop).
    fn try_next(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        if let Some(frame) = self.first.lock().unwrap().take() {
            return Ok(Some(accept_frame(py, &self.shared, &self.state, &self.owner, frame)?));
        }
        let Ok(mut rx) = self.rx.try_lock() else { return Ok(None) };
        match rx.try_recv() {
            Ok(frame) => Ok(Some(accept_frame(py, &self.shared, &self.state, &self.owner, frame)?)),
            Err(_) => Ok(None),
        }
    }

    /// Tells the owner the client went away; the response ends there.
    fn cancel(&self) {
        if !self.state.finished.swap(true, Ordering::SeqCst) {
            self.shared.pending.lock().unwrap().remove(&self.id);
            let frame = Frame { kind: kind::CANCEL, id: self.id, seq: 0, payload: Vec::new() };
            self.shared.publish(reply_channel(&self.shared.prefix, &self.owner), frame, Unheard::Ignore);
        }
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frame = Frame { kind: kind::DATA, id: new_id(), seq: 7, payload: b"data: x\n\n".to_vec() };
        assert_eq!(Frame::decode(&frame.encode()), Some(frame));
        assert_eq!(Frame::decode(b"short"), None);
    }

    #[test]
    fn requests_and_starts_round_trip() {
        let id = new_id();
        let bytes = encode_request("node-1", "sess", "{\"method\":\"POST\"}", b"{}");
        let r = decode_request(id, &bytes).unwrap();
        assert_eq!((r.from.as_str(), r.session.as_str(), r.head.as_str(), r.body.as_slice()), ("node-1", "sess", "{\"method\":\"POST\"}", &b"{}"[..]));
        assert!(decode_request(id, &bytes[..bytes.len() - 1]).is_none(), "a truncated request is refused");
        let headers = vec![(b"content-type".to_vec(), b"text/event-stream".to_vec())];
        assert_eq!(decode_start(&encode_start(200, &headers)), Some((200, headers.clone())));
        let whole = encode_whole(404, &headers, b"{\"error\":1}");
        assert_eq!(decode_whole(&whole), Some((404, headers.clone(), &b"{\"error\":1}"[..])));
        assert_eq!(decode_whole(&encode_whole(202, &[], b"")), Some((202, vec![], &b""[..])));
        assert!(decode_whole(&whole[..3]).is_none(), "a truncated response is refused");
    }

    #[test]
    fn ids_are_unique() {
        assert_ne!(new_id(), new_id());
    }
}
