//! The owning side: requests relayed to this node, claimed before they run, and their
//! responses sent frame by frame within the relaying node's window.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::frame::{encode_start, encode_whole, kind, Frame, Incoming, ReqId};
use super::outbox::Unheard;
use super::{id_of, Relay, Shared, CLAIM_TTL_MS};
use crate::error::{Error, Result};
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

/// The longest lazy acceptance an owner grants, whatever a request frame offers (relaying
/// nodes offer at most 200 ms): an odd frame cannot hold an entry in `accept_late` longer
/// than half of this.
const MAX_LAZY_MS: u32 = 10_000;

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
    /// An acceptance is owed (a lazy one: no frame has gone yet). Held while a frame is
    /// queued, so a late acceptance never follows the response's first frame.
    unaccepted: Mutex<bool>,
    /// What to call once the relaying side went away (`Relay::on_disconnect`).
    on_cancel: Mutex<Vec<Box<dyn FnOnce() + Send>>>,
}

impl Served {
    /// Every waiter creates its `Notified` before checking the state it waits on, so
    /// `notify_waiters` reaches all of them: a `send` awaiting credit and `disconnected`
    /// wait on the same `Notify`, and a stored single permit would wake only one.
    pub(super) fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.wake.notify_waiters();
        let callbacks = std::mem::take(&mut *self.on_cancel.lock().unwrap());
        for callback in callbacks {
            callback();
        }
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
        unaccepted: Mutex::new(incoming.accept_within_ms > 0),
        on_cancel: Mutex::new(Vec::new()),
    });
    shared.served.lock().unwrap().insert(incoming.id, served);
}

/// Claims a request (and tells its sender, if it wants that at once): whether this node won. Lost if
/// the sender gave up first (or Redis cannot be reached: then the sender times out and
/// answers 503); a lost request is forgotten here. A sender that offered a lazy acceptance
/// is told by the response's first frame instead, or by [`accept_late`] if that is slow.
async fn claim(shared: &Shared, incoming: &Incoming) -> bool {
    let accepted = Frame { kind: kind::ACCEPTED, id: incoming.id, seq: 0, payload: Vec::new() };
    let key = claim_key(&shared.prefix, &incoming.session, &incoming.id);
    let replies = reply_channel(&shared.prefix, &incoming.from);
    let lazy = incoming.accept_within_ms > 0;
    let in_script = !lazy && !shared.connector.is_cluster().await.unwrap_or(false);
    let claimed = match if lazy { Some(set_claim(shared, &key).await) } else { None } {
        // The script: to publish the acceptance with the claim, or where Redis is full.
        None | Some(Err(Error::OutOfMemory(_))) => {
            let mut call = shared.claim.key(&key);
            call.arg(&shared.node).arg(CLAIM_TTL_MS);
            if in_script {
                call.arg(&replies).arg(shared.encode(&replies, &accepted));
            } else {
                call.arg("").arg("");
            }
            shared.connector.invoke::<i64>(&call).await.map(|n| n == 1)
        }
        Some(set) => set,
    };
    let won = claimed.unwrap_or_else(|e| {
        tracing::warn!("relay: cannot claim a relayed request: {e}");
        false
    });
    if won && lazy {
        let within = incoming.accept_within_ms.min(MAX_LAZY_MS);
        let (now, bound) = (Instant::now(), Duration::from_millis(u64::from(within)));
        let _ = shared.late.send(Late { due: now + bound / 2, early: now + bound / 4, id: incoming.id });
    } else if won && !in_script {
        shared.publish(replies, accepted, Unheard::Ignore);
    }
    if won {
        shared.stats.served.fetch_add(1, Ordering::Relaxed);
    } else {
        shared.served.lock().unwrap().remove(&incoming.id);
    }
    won
}

/// Claims with a plain `SET NX PX`: about 6 µs of Redis's time in the cluster bench,
/// where the script with its `PUBLISH` took about 37. Refused once Redis is at `maxmemory`
/// (the script, flagged `allow-oom`, is not).
async fn set_claim(shared: &Shared, key: &str) -> Result<bool> {
    let mut set = redis::pipe();
    set.cmd("SET").arg(key).arg(&shared.node).arg("NX").arg("PX").arg(CLAIM_TTL_MS);
    let reply = shared.connector.query(&set).await?;
    Ok(matches!(reply.first(), Some(redis::Value::Okay)))
}

/// Registers and claims `taken` side by side (their scripts pipelined on one connection):
/// those this node won.
pub(super) async fn claim_all(shared: &Shared, taken: Vec<Incoming>) -> Vec<Incoming> {
    for incoming in &taken {
        register(shared, incoming);
    }
    let won = join_all(taken.iter().map(|incoming| claim(shared, incoming))).await;
    taken.into_iter().zip(won).filter_map(|(incoming, won)| won.then_some(incoming)).collect()
}

/// A lazy acceptance owed: sent between a quarter (`early`) and half (`due`) of the
/// sender's bound after the claim. Ordered by `due` first.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Late {
    due: Instant,
    early: Instant,
    id: ReqId,
}

/// Sends the acceptances owed for responses slower than their sender's lazy bound. It
/// wakes when the first is due and sends every one past its `early` point, so under load
/// it wakes about once a quarter bound, not once per request; most are settled by then
/// (their response went) and cost nothing more.
pub(super) async fn accept_late(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Late>) {
    let mut owed: BinaryHeap<Reverse<Late>> = BinaryHeap::new();
    loop {
        let next = owed.peek().map(|Reverse(late)| late.due);
        tokio::select! {
            late = rx.recv() => match late {
                Some(late) => owed.push(Reverse(late)),
                None => return,
            },
            () = shared.closed() => return,
            () = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                let now = Instant::now();
                while let Some(Reverse(late)) = owed.peek().filter(|Reverse(late)| late.early <= now) {
                    accept(&shared, &late.id);
                    owed.pop();
                }
            }
        }
    }
}

/// Sends a lazy acceptance if it is still owed (no frame of the response has gone yet).
fn accept(shared: &Shared, id: &ReqId) {
    let served = shared.served.lock().unwrap().get(id).cloned();
    let Some(served) = served else { return };
    let mut unaccepted = served.unaccepted.lock().unwrap();
    if std::mem::take(&mut *unaccepted) {
        let frame = Frame { kind: kind::ACCEPTED, id: *id, seq: 0, payload: Vec::new() };
        shared.publish(reply_channel(&shared.prefix, &served.from), frame, Unheard::Ignore);
    }
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

    /// Calls `callback` once the relaying side went away (its client disconnected, or the
    /// node died): at once if it has, or if the request is over or was never this node's.
    /// Not called if the response ends first.
    pub fn on_disconnect(&self, id: &[u8], callback: Box<dyn FnOnce() + Send>) -> Result<()> {
        let served = self.shared.served.lock().unwrap().get(&id_of(id)?).cloned();
        if let Some(served) = served {
            let mut waiting = served.on_cancel.lock().unwrap();
            // `cancel` sets the flag before it takes the callbacks: one pushed after that
            // point sees the flag.
            if !served.cancelled.load(Ordering::SeqCst) {
                waiting.push(callback);
                return Ok(());
            }
        }
        callback();
        Ok(())
    }

    fn send_frame(&self, id: &[u8], kind: u8, payload: Vec<u8>) -> Result<()> {
        let rid = id_of(id)?;
        let served = self.shared.served.lock().unwrap().get(&rid).cloned();
        let Some(served) = served else { return Ok(()) }; // ended or never ours: nothing to do
        let mut unaccepted = served.unaccepted.lock().unwrap();
        *unaccepted = false; // this frame is the acceptance, if one is owed
        let seq = served.next_seq.fetch_add(1, Ordering::SeqCst);
        let channel = reply_channel(&self.shared.prefix, &served.from);
        self.shared.publish(channel, Frame { kind, id: rid, seq, payload }, Unheard::Served(rid));
        Ok(())
    }
}
