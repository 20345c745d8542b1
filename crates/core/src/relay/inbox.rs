//! The relay's subscriber: one pub/sub connection on this node's two channels, resubscribed
//! after a fault, and what happens to each frame heard there.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::frame::{decode_request, kind, Frame, Incoming};
use super::seal::{claimed_sender, Rejected, SEALED};
use super::{Shared, INBOX_BACKLOG};
use crate::error::Error;
use crate::now_ms;

/// How often a relay on a Redis Cluster checks that its pub/sub hub has not moved.
const HUB_CHECK: Duration = Duration::from_secs(1);
/// At most one warning per cause of rejected frames in this long.
const REJECTION_LOG_EVERY: Duration = Duration::from_secs(10);

/// Frames dropped because they did not open, by cause, and when each cause was last logged.
#[derive(Default)]
pub(super) struct Rejections {
    pub(super) counts: [AtomicU64; Rejected::ALL.len()],
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
                            .and_then(|f| decode_request(&f))
                            .map(|r| r.from),
                        _ => claimed_sender(bytes),
                    };
                    self.rejections.note(why, channel, sender.as_deref());
                    return None;
                }
            },
            None if bytes.first() == Some(&SEALED) => {
                self.rejections.note(Rejected::Sealed, channel, claimed_sender(bytes).as_deref());
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
            kind::REQUEST => match decode_request(&frame) {
                Some(incoming) if !from(&incoming.from) => {
                    self.rejections.note(Rejected::Forged, channel, sender.as_deref());
                }
                Some(incoming) => {
                    // Counted first: the taker may take it before `try_send` returns.
                    self.unclaimed.fetch_add(1, Ordering::Relaxed);
                    if inbox.try_send(incoming).is_err() {
                        self.unclaimed.fetch_sub(1, Ordering::Relaxed);
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
}

pub(super) async fn listen(shared: Arc<Shared>, inbox: mpsc::Sender<Incoming>) {
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
                                () = shared.unsubscribe.notified() => {
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
                    Err(e) => {
                        tracing::warn!("relay: cannot subscribe: {}", Error::from_redis(&e, shared.connector.server()));
                    }
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
