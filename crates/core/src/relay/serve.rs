//! The owning side: requests relayed to this node, claimed before they run, and their
//! responses sent frame by frame within the relaying node's window.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::future::join_all;
use tokio::sync::Notify;

use super::frame::{encode_start, encode_whole, kind, Frame, Incoming};
use super::outbox::Unheard;
use super::{id_of, Relay, Shared, Waiting, CLAIM_TTL_MS};
use crate::error::Result;
use crate::keys::{claim_key, reply_channel};

/// KEYS[1] claim key; ARGV node px channel frame. Claims a relayed request and tells the
/// relaying node, in one round trip. With no channel it only claims: on a Redis Cluster a
/// script's PUBLISH reaches the hub by the cluster bus, and the response's first frame,
/// published on the hub directly, could overtake it; there the owner sends ACCEPTED itself,
/// ahead of the response on its one ordered publisher. `allow-oom`: relaying must go on
/// while Redis is at `maxmemory` (a claim is a small key that lives 60 s).
pub(super) const CLAIM_AND_ACCEPT: &str = r"#!lua flags=allow-oom
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
  return 1
end
return 0
";

/// What an owner keeps for one request it serves for another node.
pub(super) struct Served {
    pub(super) from: String,
    pub(super) next_seq: AtomicU32,
    pub(super) sent: AtomicU32,
    pub(super) credit: AtomicU32,
    pub(super) sent_bytes: AtomicU64,
    pub(super) credit_bytes: AtomicU64,
    /// The relaying node credits chunks only (an older version): no byte window then.
    pub(super) chunks_only: AtomicBool,
    pub(super) cancelled: AtomicBool,
    pub(super) wake: Notify,
}

impl Served {
    /// Every waiter creates its `Notified` before checking the state it waits on, so
    /// `notify_waiters` reaches all of them: a `send` awaiting credit and `disconnected`
    /// wait on the same `Notify`, and a stored single permit would wake only one.
    pub(super) fn cancel(&self) {
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

/// Registers a request this node is about to claim: the sender may answer the acceptance
/// at once (credit, cancel).
fn register(shared: &Shared, incoming: &Incoming) {
    let served = Arc::new(Served {
        from: incoming.from.clone(),
        next_seq: AtomicU32::new(1),
        sent: AtomicU32::new(0),
        credit: AtomicU32::new(0),
        sent_bytes: AtomicU64::new(0),
        credit_bytes: AtomicU64::new(0),
        chunks_only: AtomicBool::new(false),
        cancelled: AtomicBool::new(false),
        wake: Notify::new(),
    });
    shared.served.lock().unwrap().insert(incoming.id, served);
}

/// Claims a request and tells its sender, in one script: whether this node won. Lost if
/// the sender gave up first (or Redis cannot be reached: then the sender times out and
/// answers 503); a lost request is forgotten here.
async fn claim(shared: &Shared, incoming: &Incoming) -> bool {
    let accepted = Frame { kind: kind::ACCEPTED, id: incoming.id, seq: 0, payload: Vec::new() };
    let key = claim_key(&shared.prefix, &incoming.session, &incoming.id);
    let replies = reply_channel(&shared.prefix, &incoming.from);
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
        shared.served.lock().unwrap().remove(&incoming.id);
    }
    won
}

/// Claims `taken` side by side (their scripts pipelined on one connection), in a task of
/// its own: the caller's wait may be aborted (its Python future cancelled), and a request
/// claimed meanwhile must then go to the next caller, not to nobody.
async fn claim_all(shared: &Arc<Shared>, taken: Vec<Incoming>) -> Vec<Incoming> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task_shared = shared.clone();
    tokio::spawn(async move {
        let won = join_all(taken.iter().map(|incoming| claim(&task_shared, incoming))).await;
        let claimed: Vec<Incoming> = taken.into_iter().zip(won).filter_map(|(i, won)| won.then_some(i)).collect();
        if let Err(claimed) = tx.send(claimed) {
            for incoming in claimed {
                let _ = task_shared.returned.send(incoming);
            }
        }
    });
    rx.await.unwrap_or_default()
}

/// A response whose window is full (`Relay::send`).
pub struct RoomWait {
    served: Arc<Served>,
    window: u32,
    window_bytes: u64,
}

impl RoomWait {
    /// Whether the relaying side still wants the response once the window has room again
    /// (`false`: it went away).
    pub async fn wait(self) -> bool {
        let served = self.served;
        loop {
            let notified = served.wake.notified();
            if served.cancelled.load(Ordering::SeqCst) {
                return false;
            }
            if served.has_room(self.window, self.window_bytes) {
                return true;
            }
            notified.await;
        }
    }
}

impl Relay {
    /// The next requests relayed to this node, each claimed by this node already (at most
    /// `max`: all that have come, once one has), or `None` once the relay is closed. A
    /// request is claimed only when this is called, so a node whose event loop does not ask
    /// for work (frozen, overloaded) takes nothing on, and its relaying nodes time out; a
    /// request whose claim is lost (its sender gave up first) never comes out of here.
    pub fn next_requests(&self, max: usize) -> impl Future<Output = Option<Vec<Incoming>>> + Send + 'static {
        let shared = self.shared.clone();
        let max = max.max(1);
        async move {
            loop {
                let mut fresh = Vec::with_capacity(max);
                {
                    let mut guard = shared.requests.lock().await;
                    let Waiting { fresh: inbox, returned } = &mut *guard;
                    tokio::select! {
                        biased;
                        Some(first) = returned.recv() => {
                            // Claimed already, for a caller who stopped waiting.
                            let mut again = vec![first];
                            while again.len() < max {
                                let Ok(more) = returned.try_recv() else { break };
                                again.push(more);
                            }
                            return Some(again);
                        }
                        n = inbox.recv_many(&mut fresh, max) => if n == 0 { return None },
                    }
                }
                let mut taken = Vec::with_capacity(fresh.len());
                for incoming in fresh {
                    if shared.draining.load(Ordering::SeqCst) {
                        let refusal =
                            Frame { kind: kind::REFUSED, id: incoming.id, seq: 0, payload: b"draining".to_vec() };
                        shared.publish(reply_channel(&shared.prefix, &incoming.from), refusal, Unheard::Ignore);
                        continue;
                    }
                    register(&shared, &incoming);
                    taken.push(incoming);
                }
                if taken.is_empty() {
                    continue;
                }
                let claimed = claim_all(&shared, taken).await;
                if !claimed.is_empty() {
                    return Some(claimed);
                }
            }
        }
    }

    /// Hands requests from `next_requests` back when the caller they were taken for stopped
    /// waiting before they were delivered: the next `next_requests` returns them first, as
    /// they are (registered and claimed).
    pub fn give_back(&self, incoming: Incoming) {
        // Fails only once the relay is gone; then the request ends with it.
        let _ = self.shared.returned.send(incoming);
    }

    /// Sends the response's status and headers.
    pub fn start(&self, id: &[u8], status: u16, headers: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
        self.send_frame(id, kind::START, encode_start(status, headers))
    }

    /// Sends a whole response in one frame and forgets the request.
    pub fn respond(&self, id: &[u8], status: u16, headers: &[(Vec<u8>, Vec<u8>)], body: &[u8]) -> Result<()> {
        self.send_frame(id, kind::WHOLE, encode_whole(status, headers, body))?;
        self.shared.served.lock().unwrap().remove(&id_of(id)?);
        Ok(())
    }

    /// Sends a body chunk. `None` if the window has room, else what waits for room.
    pub fn send(&self, id: &[u8], chunk: Vec<u8>) -> Result<Option<RoomWait>> {
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
        Ok(Some(RoomWait { served, window, window_bytes }))
    }

    /// Ends the response (`ok=false`: it broke off) and forgets the request.
    pub fn end(&self, id: &[u8], ok: bool) -> Result<()> {
        self.send_frame(id, kind::END, vec![u8::from(ok)])?;
        self.shared.served.lock().unwrap().remove(&id_of(id)?);
        Ok(())
    }

    /// Resolves once the relaying side went away (its client disconnected, or the node died).
    pub fn disconnected(&self, id: &[u8]) -> Result<impl Future<Output = ()> + Send + 'static> {
        let served = self.shared.served.lock().unwrap().get(&id_of(id)?).cloned();
        Ok(async move {
            let Some(served) = served else { return };
            loop {
                let notified = served.wake.notified();
                if served.cancelled.load(Ordering::SeqCst) {
                    return;
                }
                notified.await;
            }
        })
    }

    fn send_frame(&self, id: &[u8], kind: u8, payload: Vec<u8>) -> Result<()> {
        let rid = id_of(id)?;
        let served = self.shared.served.lock().unwrap().get(&rid).cloned();
        let Some(served) = served else { return Ok(()) }; // ended or never ours: nothing to do
        let seq = served.next_seq.fetch_add(1, Ordering::SeqCst);
        let channel = reply_channel(&self.shared.prefix, &served.from);
        self.shared.publish(channel, Frame { kind, id: rid, seq, payload }, Unheard::Served(rid));
        Ok(())
    }
}
