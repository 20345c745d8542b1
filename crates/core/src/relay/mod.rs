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
//! for work (`take.rs`), and then by setting a claim key with `SET NX` (a script where Redis
//! is full, or to publish an eager acceptance with it). A relaying
//! node that hears nothing within its bound sets the same key itself: whichever SET wins
//! decides, so a request reaches a handler at most once, and the loser knows (the owner
//! drops it; the relayer answers 503).
//!
//! The owner says it won with `A` (accepted), or with the response's first frame: the `Q`
//! frame's sequence number offers a lazy acceptance, in milliseconds. Then only a response
//! slower than a quarter of that gets an `A` of its own, from `serve::accept_late`. A `Q`
//! with sequence 0 (from a node before lazy acceptance) gets its `A` from the claim script
//! itself; a relaying node takes either `A` or a response frame as the acceptance.
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

mod forward;
mod frame;
mod inbox;
mod outbox;
pub mod seal;
mod serve;
mod sweep;
mod take;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{mpsc, Notify};

use crate::connection::Connector;
use crate::error::{Error, Result};
use crate::keys::{inbox_channel, reply_channel};
use forward::Pending;
pub use forward::{Forward, Forwarded, Part, Reader};
use frame::kind;
pub use frame::{Frame, Headers, Incoming, ReqId};
use inbox::Rejections;
use outbox::Unheard;
use seal::{Rejected, Seal};
pub use serve::RoomWait;
use serve::{Late, Served, CLAIM_AND_ACCEPT};
use take::Askers;
pub use take::Delivery;

const INBOX_BACKLOG: usize = 1024;
/// How long a claim key outlives the decision it records.
const CLAIM_TTL_MS: u64 = 60_000;
/// Bytes of a response's body the owner may have unacknowledged, by default.
pub const WINDOW_BYTES: u64 = 1 << 20;
/// How old a sealed frame may be, by default; also how far the nodes' clocks may disagree.
pub const MAX_AGE_MS: u64 = 30_000;
/// Shortest relay secret accepted.
const MIN_SECRET: usize = 16;

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
    /// Callers waiting for relayed requests, and requests given back for them (`take.rs`).
    askers: Mutex<Askers>,
    /// Told when a caller asks.
    asked: Notify,
    /// Requests heard and not yet taken on or refused.
    unclaimed: AtomicU64,
    out: mpsc::UnboundedSender<(String, Frame, Unheard)>,
    /// Lazy acceptances owed, for `serve::accept_late`.
    late: mpsc::UnboundedSender<Late>,
    claim: redis::Script,
    draining: AtomicBool,
    closed: AtomicBool,
    /// Told once `closed` is set: the tasks that would otherwise wait forever end then (each
    /// holds this state, and the state holds the senders they wait on).
    stopped: Notify,
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

impl Shared {
    /// Resolves once the relay is closed (`Relay::close`).
    async fn closed(&self) {
        loop {
            // Made before the flag is read: `notify_waiters` wakes it even if not yet polled.
            let stopped = self.stopped.notified();
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            stopped.await;
        }
    }

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
}

/// This node's end of the relay (`RedisEvents.relay(node, ...)`). Cheap to clone.
#[derive(Clone)]
pub struct Relay {
    shared: Arc<Shared>,
}

/// How a relay is set up (`RedisEvents.relay`).
pub struct RelayOptions {
    pub window: u32,
    pub window_bytes: u64,
    pub sweep_ms: u64,
    pub secret: Option<Vec<u8>>,
    pub max_age_ms: u64,
}

fn id_of(id: &[u8]) -> Result<ReqId> {
    id.try_into().map_err(|_| Error::Config("a relay request ID is 16 bytes".into()))
}

impl Relay {
    /// `secret`: shared by all nodes, it seals every frame (at least 16 bytes); frames older
    /// than `max_age_ms` are refused then.
    pub fn spawn(
        connector: Arc<Connector>,
        prefix: &str,
        node: &str,
        options: RelayOptions,
        runtime: &Handle,
    ) -> Result<Relay> {
        let RelayOptions { window, window_bytes, sweep_ms, secret, max_age_ms } = options;
        if let Some(secret) = &secret {
            if secret.len() < MIN_SECRET {
                return Err(Error::Config(format!(
                    "the relay secret has {} bytes; use at least {MIN_SECRET} random bytes, the same on every \
                     node (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')",
                    secret.len()
                )));
            }
            // A sealed frame carries its sender's name after a 16-bit length.
            if u16::try_from(node.len()).is_err() {
                return Err(Error::Config(format!(
                    "the node name has {} bytes; sealed frames allow 65535",
                    node.len()
                )));
            }
        }
        let (inbox_tx, inbox_rx) = mpsc::channel(INBOX_BACKLOG);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (late_tx, late_rx) = mpsc::unbounded_channel();
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
            askers: Mutex::new(Askers::default()),
            asked: Notify::new(),
            unclaimed: AtomicU64::new(0),
            out: out_tx,
            late: late_tx,
            claim: redis::Script::new(CLAIM_AND_ACCEPT),
            draining: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            stopped: Notify::new(),
            subscribed: AtomicBool::new(false),
            ready: Notify::new(),
            unsubscribe: Notify::new(),
            stats: RelayStats::default(),
            rejections: Rejections::default(),
        });
        runtime.spawn(inbox::listen(shared.clone(), inbox_tx));
        runtime.spawn(outbox::publish(shared.clone(), out_rx));
        runtime.spawn(serve::accept_late(shared.clone(), late_rx));
        runtime.spawn(take::take(shared.clone(), inbox_rx));
        runtime.spawn(sweep::sweep(shared.clone(), Duration::from_millis(sweep_ms.max(10))));
        Ok(Relay { shared })
    }

    /// The node this relay is of.
    pub fn node(&self) -> &str {
        &self.shared.node
    }

    /// Waits until this node listens on its channels (at most `timeout_ms`); whether it does.
    pub fn ready(&self, timeout_ms: u64) -> impl Future<Output = bool> + Send + 'static {
        let shared = self.shared.clone();
        async move {
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
            shared.subscribed.load(Ordering::SeqCst)
        }
    }

    /// Stops taking requests (graceful shutdown); requests in flight go on.
    pub fn drain(&self) {
        self.shared.draining.store(true, Ordering::SeqCst);
        self.shared.unsubscribe.notify_one();
    }

    /// Leaves both channels and stops the background tasks; requests in flight end. The
    /// frames already queued still go out (a cancel, an end).
    pub fn close(&self) {
        self.shared.draining.store(true, Ordering::SeqCst);
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.unsubscribe.notify_one();
        self.shared.stopped.notify_waiters();
        self.shared.forget_everything();
    }

    /// The relay's counters, by name.
    pub fn stats(&self) -> HashMap<String, u64> {
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
        out.extend(
            [
                ("forwarded", s.forwarded.load(Ordering::Relaxed)),
                ("served", s.served.load(Ordering::Relaxed)),
                ("timeouts", s.timeouts.load(Ordering::Relaxed)),
                ("lost", s.lost.load(Ordering::Relaxed)),
                ("dropped_requests", s.dropped_requests.load(Ordering::Relaxed)),
                ("unclaimed", self.shared.unclaimed.load(Ordering::Relaxed)),
                ("in_flight_forwarded", self.shared.pending.lock().unwrap().len() as u64),
                ("in_flight_served", self.shared.served.lock().unwrap().len() as u64),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
        out
    }

    /// Forwards a request to `owner`. An error means Redis failed with the request maybe
    /// heard: do not send it again.
    pub fn forward(
        &self,
        owner: String,
        session: String,
        head: String,
        body: Vec<u8>,
        accept_timeout_ms: u64,
    ) -> impl Future<Output = Result<Forwarded>> + Send + 'static {
        forward::forward(self.shared.clone(), owner, session, head, body, accept_timeout_ms)
    }
}

#[cfg(test)]
mod tests;
