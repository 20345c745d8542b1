//! The relay's publisher: every frame this node sends goes through one task, in order, one
//! pipeline per batch, so frames to a peer arrive in the order they were queued.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::frame::{Frame, ReqId};
use super::Shared;
use crate::now_ms;

/// What the publisher should do if nobody heard a frame.
#[derive(Clone, Copy)]
pub(super) enum Unheard {
    Ignore,
    /// The relaying node of a served request is gone: stop serving it.
    Served(ReqId),
    /// The owner of a forwarded request is gone.
    Forwarded(ReqId),
}

impl Shared {
    /// Encodes a frame for `channel`, sealed when the nodes share a secret.
    pub(super) fn encode(&self, channel: &str, frame: &Frame) -> Vec<u8> {
        match &self.seal {
            Some(seal) => seal.seal(channel, &frame.encode(), now_ms()),
            None => frame.encode(),
        }
    }

    /// Queues a frame; the publisher task encodes (and seals) it, off the caller's thread.
    pub(super) fn publish(&self, channel: String, frame: Frame, unheard: Unheard) {
        let _ = self.out.send((channel, frame, unheard));
    }
}

/// Sends every queued frame, in order, one pipeline per batch, until the relay closes; what
/// was queued by then goes out last.
pub(super) async fn publish(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<(String, Frame, Unheard)>) {
    let mut batch = Vec::with_capacity(256);
    loop {
        tokio::select! {
            biased;
            received = rx.recv_many(&mut batch, 256) => if received == 0 { return },
            // Closed: the channel takes no more frames, and ends once those queued are out.
            () = shared.closed() => {
                rx.close();
                continue;
            }
        }
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
