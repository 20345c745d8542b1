//! The relaying side: a request forwarded to the node that owns its session, and the
//! response as it comes back, checked for order, with credit returned as it is consumed.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::frame::{decode_start, decode_whole, encode_request, is_response, kind, new_id, Frame, Headers, ReqId};
use super::outbox::Unheard;
use super::serve::CLAIM_AND_ACCEPT;
use super::{Shared, CLAIM_TTL_MS};
use crate::error::Result;
use crate::keys::{claim_key, inbox_channel, reply_channel};

/// How long `forward` waits, once the owner took a request on, for the response's first
/// part to hand over with the acceptance (from an owner that accepts at once).
const FIRST_PART_GRACE: Duration = Duration::from_millis(5);
/// How soon, at most, an owner must say it took a request on when its response is slower
/// (a lazy acceptance; a quarter of the caller's bound if that is less). A quick response
/// is its own acceptance: no frame, and no wake-up here, for the acceptance alone.
const LAZY_ACCEPT_MS: u64 = 200;

/// What a relaying node waits on for one forwarded request.
pub(super) struct Pending {
    pub(super) owner: String,
    pub(super) tx: mpsc::UnboundedSender<Frame>,
    pub(super) state: Arc<ForwardState>,
}

/// Outcome of `forward`.
pub enum Forwarded {
    Accepted(Forward),
    /// Nobody listens on the owner's inbox, or the owner was found gone before it took the
    /// request on: either way the request never runs.
    Unreachable,
    /// The owner was found gone after it took the request on: it may have run.
    OwnerLost(String),
    /// The owner did not take the request on within the bound; it never will.
    Timeout,
    /// The owner refused it (it is shutting down): it never runs.
    Refused(String),
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

pub(super) async fn forward(
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
    // The request frame's sequence number offers the owner a lazy acceptance (0: none).
    // Owners from before it ignore the offer and accept at once, which is handled below too.
    let lazy = u32::try_from((accept_timeout_ms / 4).min(LAZY_ACCEPT_MS)).unwrap_or(0);
    let payload = encode_request(&shared.node, &session, &head, &body);
    let request = Frame { kind: kind::REQUEST, id, seq: lazy, payload };
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
                    return Ok(Forwarded::OwnerLost("the owner took the request on, then fell silent".into()));
                }
            }
        }
    };
    let first = match first {
        // The response's first frame: the owner took the request on (a lazy acceptance).
        Some(frame) if lazy > 0 && is_response(frame.kind) => Some(frame),
        // Most answers follow within a millisecond or two: hand the first part over with
        // the acceptance, saving Python a wake-up. Waiting here delays nothing; a slower
        // answer is taken with `next()` as usual.
        Some(Frame { kind: kind::ACCEPTED, .. }) => {
            tokio::time::timeout(FIRST_PART_GRACE, rx.recv()).await.ok().flatten()
        }
        Some(Frame { kind: kind::REFUSED, payload, .. }) => {
            forget(&shared);
            return Ok(Forwarded::Refused(String::from_utf8_lossy(&payload).into_owned()));
        }
        // The sweep found the owner gone before it answered. It heard the request, though:
        // unless this node takes the claim, the owner may yet run it.
        Some(Frame { kind: kind::LOST, payload, .. }) => {
            return Ok(if give_up(&shared, &session, &id).await.unwrap_or(false) {
                Forwarded::Unreachable
            } else {
                Forwarded::OwnerLost(String::from_utf8_lossy(&payload).into_owned())
            });
        }
        // The relay closed, or a response began without its acceptance (only a lazy offer
        // allows that): the owner may have run it.
        _ => {
            forget(&shared);
            shared.stats.lost.fetch_add(1, Ordering::Relaxed);
            return Ok(Forwarded::OwnerLost("the relay closed before the owner answered".into()));
        }
    };
    let rx = tokio::sync::Mutex::new(rx).into();
    let reader = Reader { shared, state, owner };
    Ok(Forwarded::Accepted(Forward { reader, id, rx, first: Mutex::new(first) }))
}

#[derive(Default)]
pub(super) struct ForwardState {
    next_seq: AtomicU32,
    consumed: AtomicU32,
    consumed_bytes: AtomicU64,
    /// What the last credit returned to the owner said.
    credited: AtomicU32,
    credited_bytes: AtomicU64,
    /// Body bytes received and not yet taken by Python.
    pub(super) buffered: AtomicU64,
    finished: AtomicBool,
}

/// A part of a forwarded request's response, as the caller sees it.
#[derive(Debug)]
pub enum Part {
    /// The whole response at once: the frame's payload holds the body at `body`.
    Whole {
        status: u16,
        headers: Headers,
        payload: Vec<u8>,
        body: std::ops::Range<usize>,
    },
    Start {
        status: u16,
        headers: Headers,
    },
    Data(Vec<u8>),
    End {
        ok: bool,
    },
    /// The response broke off: frames were missed, or the owner went away.
    Cut(String),
}

/// A forwarded request whose response is coming: `Whole` alone, or `Start`, then `Data`
/// and `End`; or `Cut` at any point. Dropping it tells the owner to stop.
pub struct Forward {
    reader: Reader,
    id: ReqId,
    rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Frame>>>,
    /// The response's first part, if it came with the acceptance.
    first: Mutex<Option<Frame>>,
}

/// What turning frames into parts takes: it checks their order and returns credit.
#[derive(Clone)]
pub struct Reader {
    shared: Arc<Shared>,
    state: Arc<ForwardState>,
    owner: String,
}

impl Reader {
    /// Turns a received frame into a part, checking order and returning credit.
    pub fn accept(&self, frame: Frame) -> Part {
        let (shared, state) = (&*self.shared, &*self.state);
        let expected = state.next_seq.load(Ordering::SeqCst) + 1;
        if frame.kind != kind::LOST && frame.seq != expected {
            finish(shared, state, &frame.id);
            return Part::Cut(format!("relay frames missed (got {}, expected {expected})", frame.seq));
        }
        state.next_seq.store(frame.seq, Ordering::SeqCst);
        match frame.kind {
            kind::START => match decode_start(&frame.payload) {
                Some((status, headers)) => Part::Start { status, headers },
                None => {
                    finish(shared, state, &frame.id);
                    Part::Cut("malformed response start".into())
                }
            },
            kind::WHOLE => {
                state.buffered.fetch_sub(frame.payload.len() as u64, Ordering::SeqCst);
                finish(shared, state, &frame.id);
                match decode_whole(&frame.payload) {
                    Some((status, headers, body)) => {
                        // The body is the payload's first field, right after its length.
                        let body = 4..4 + body.len();
                        Part::Whole { status, headers, payload: frame.payload, body }
                    }
                    None => Part::Cut("malformed response".into()),
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
                    shared.publish(reply_channel(&shared.prefix, &self.owner), credit, Unheard::Forwarded(frame.id));
                }
                Part::Data(frame.payload)
            }
            kind::END => {
                finish(shared, state, &frame.id);
                Part::End { ok: frame.payload.first() == Some(&1) }
            }
            _ => {
                finish(shared, state, &frame.id);
                Part::Cut(String::from_utf8_lossy(&frame.payload).into_owned())
            }
        }
    }
}

fn finish(shared: &Shared, state: &ForwardState, id: &ReqId) {
    state.finished.store(true, Ordering::SeqCst);
    shared.pending.lock().unwrap().remove(id);
}

impl Forward {
    /// What turns this response's frames into parts (cheap to clone).
    pub fn reader(&self) -> Reader {
        self.reader.clone()
    }

    /// Waits for the next frame; `None` once the relay closed.
    pub fn next_frame(&self) -> impl Future<Output = Option<Frame>> + Send + 'static {
        let first = self.first.lock().unwrap().take();
        let rx = self.rx.clone();
        async move {
            match first {
                Some(frame) => Some(frame),
                None => rx.lock().await.recv().await,
            }
        }
    }

    /// The next part if it has arrived, else `None` (no waiting).
    pub fn try_next(&self) -> Option<Part> {
        if let Some(frame) = self.first.lock().unwrap().take() {
            return Some(self.reader.accept(frame));
        }
        let Ok(mut rx) = self.rx.try_lock() else { return None };
        rx.try_recv().ok().map(|frame| self.reader.accept(frame))
    }

    /// Tells the owner the client went away; the response ends there.
    pub fn cancel(&self) {
        let shared = &self.reader.shared;
        if !self.reader.state.finished.swap(true, Ordering::SeqCst) {
            shared.pending.lock().unwrap().remove(&self.id);
            let frame = Frame { kind: kind::CANCEL, id: self.id, seq: 0, payload: Vec::new() };
            shared.publish(reply_channel(&shared.prefix, &self.reader.owner), frame, Unheard::Ignore);
        }
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.cancel();
    }
}
