//! The subscription bus: what a server publishes for its subscribers (its tools, prompts or
//! resources changed; a resource was updated), delivered on every node.
//!
//! One Redis pub/sub channel per prefix (`{prefix}:sub`). Each bus keeps one subscription,
//! whatever the number of listeners above it, on a dedicated connection that a background
//! task reopens after a fault. A publisher delivers its own events to its own listeners
//! itself, at once, and skips them when Redis echoes them back (each event names its
//! origin): every listener gets each event once. Events of one publisher keep their order,
//! since they leave on one connection and Redis keeps the order of a connection's PUBLISHes.
//!
//! Pub/sub keeps nothing: an event published while a node was cut off is lost to it. So
//! once the subscription comes back after a fault, the bus hands up [`Delivery::Resubscribed`],
//! and the node tells its listeners that every list may have changed (clients refetch).
//! On a Redis Cluster the bus publishes and subscribes through the relay's hub (see
//! `cluster.rs`). It need not follow the hub as the relay does: a classic PUBLISH reaches
//! the subscribers of every node, so a subscription left on a demoted hub still hears all.
//!
//! Memory is bounded in bytes: what the reader has not taken yet is at most
//! [`BACKLOG_BYTES`]; past that, events are dropped and counted.

pub mod event;

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, Mutex};

use crate::connection::Connector;
use crate::error::{Error, Result};
pub use event::{Envelope, Event, ORIGIN};

/// How many bytes of events may wait for the reader (a slow event loop) before new ones
/// are dropped.
pub const BACKLOG_BYTES: usize = 1 << 20;
/// The longest resource URI an event may carry.
pub const MAX_URI: usize = 8 * 1024;

/// What the subscription hands up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// An event another process published.
    Event(Event),
    /// The subscription came back after a fault: events published meanwhile are lost.
    Resubscribed,
}

/// The bus's counters.
#[derive(Default)]
pub struct Stats {
    pub published: AtomicU64,
    /// Publishes that failed (Redis unreachable): nobody else heard them.
    pub publish_failed: AtomicU64,
    /// Events from other processes handed to the reader.
    pub received: AtomicU64,
    /// Events dropped because the reader fell [`BACKLOG_BYTES`] behind.
    pub dropped_backlog: AtomicU64,
    /// Messages on the channel that are not events of this version.
    pub malformed: AtomicU64,
    pub redis_errors: AtomicU64,
}

impl Stats {
    #[must_use]
    pub fn snapshot(&self) -> [(&'static str, u64); 6] {
        [
            ("published", self.published.load(Ordering::Relaxed)),
            ("publish_failed", self.publish_failed.load(Ordering::Relaxed)),
            ("received", self.received.load(Ordering::Relaxed)),
            ("dropped_backlog", self.dropped_backlog.load(Ordering::Relaxed)),
            ("malformed", self.malformed.load(Ordering::Relaxed)),
            ("redis_errors", self.redis_errors.load(Ordering::Relaxed)),
        ]
    }
}

struct Backlog {
    tx: mpsc::UnboundedSender<(Delivery, usize)>,
    bytes: Arc<AtomicUsize>,
}

impl Backlog {
    /// Hands `delivery` to the reader unless it is too far behind; `false` once the reader
    /// is gone for good.
    fn push(&self, delivery: Delivery, size: usize, stats: &Stats) -> bool {
        if self.bytes.load(Ordering::SeqCst) + size > BACKLOG_BYTES {
            stats.dropped_backlog.fetch_add(1, Ordering::Relaxed);
            return !self.tx.is_closed();
        }
        self.bytes.fetch_add(size, Ordering::SeqCst);
        self.tx.send((delivery, size)).is_ok()
    }
}

type Reader = Arc<Mutex<mpsc::UnboundedReceiver<(Delivery, usize)>>>;

/// The subscription bus of one prefix.
pub struct Bus {
    connector: Arc<Connector>,
    channel: String,
    origin: [u8; ORIGIN],
    seq: AtomicU64,
    runtime: Handle,
    stats: Arc<Stats>,
    reader: OnceLock<(Reader, Arc<AtomicUsize>)>,
}

impl Bus {
    /// A bus on `prefix`; it subscribes the first time it is asked for a delivery.
    pub fn new(connector: Arc<Connector>, prefix: &str, runtime: &Handle) -> Result<Bus> {
        let mut origin = [0; ORIGIN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut origin)
            .map_err(|_| Error::Config("no randomness for the subscription bus's origin".into()))?;
        Ok(Bus {
            connector,
            channel: crate::keys::subscriptions_channel(prefix),
            origin,
            seq: AtomicU64::new(0),
            runtime: runtime.clone(),
            stats: Arc::new(Stats::default()),
            reader: OnceLock::new(),
        })
    }

    #[must_use]
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Sends `event` to the other processes' subscriptions; resolves to how many
    /// subscriptions (this one's included) Redis handed it to. A failure is counted.
    pub fn publish(&self, event: Event) -> impl Future<Output = Result<i64>> + Send + 'static {
        let too_long = matches!(&event, Event::ResourceUpdated { uri } if uri.len() > MAX_URI);
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let message = Envelope { origin: self.origin, seq, event }.encode();
        let (connector, channel, stats) = (self.connector.clone(), self.channel.clone(), self.stats.clone());
        async move {
            if too_long {
                stats.publish_failed.fetch_add(1, Ordering::Relaxed);
                return Err(Error::Config(format!("a resource URI is at most {MAX_URI} bytes")));
            }
            let mut pipe = redis::pipe();
            pipe.cmd("PUBLISH").arg(&channel).arg(message);
            // The first command on a connection that broke fails, and the connection is
            // opened again: once more then, or the first event after an outage is lost.
            let sent = match connector.query(&pipe).await {
                Err(Error::Unavailable(_)) => connector.query(&pipe).await,
                sent => sent,
            };
            match sent {
                Ok(reply) => {
                    stats.published.fetch_add(1, Ordering::Relaxed);
                    Ok(match reply.first() {
                        Some(redis::Value::Int(n)) => *n,
                        _ => 0,
                    })
                }
                Err(e) => {
                    stats.publish_failed.fetch_add(1, Ordering::Relaxed);
                    Err(e)
                }
            }
        }
    }

    fn reader(&self) -> (Reader, Arc<AtomicUsize>) {
        self.reader
            .get_or_init(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                let bytes = Arc::new(AtomicUsize::new(0));
                let backlog = Backlog { tx, bytes: bytes.clone() };
                let listen =
                    listen(self.connector.clone(), self.channel.clone(), self.origin, backlog, self.stats.clone());
                self.runtime.spawn(listen);
                (Arc::new(Mutex::new(rx)), bytes)
            })
            .clone()
    }

    /// The next delivery (waits for it); `None` once the subscription is gone for good.
    /// The first call subscribes.
    pub fn next(&self) -> impl Future<Output = Option<Delivery>> + Send + 'static {
        let batch = self.next_batch(1);
        async move { batch.await?.pop() }
    }

    /// The next deliveries, at most `limit` (at least one): waits for the first, then
    /// takes those already waiting behind it, so a burst reaches the event loop in one
    /// hand-off rather than one per event. `None` once the subscription is gone for good.
    pub fn next_batch(&self, limit: usize) -> impl Future<Output = Option<Vec<Delivery>>> + Send + 'static {
        let (reader, bytes) = self.reader();
        async move {
            let mut reader = reader.lock().await;
            let (first, mut size) = reader.recv().await?;
            let mut batch = vec![first];
            while batch.len() < limit {
                let Ok((delivery, more)) = reader.try_recv() else { break };
                batch.push(delivery);
                size += more;
            }
            bytes.fetch_sub(size, Ordering::SeqCst);
            Some(batch)
        }
    }
}

async fn listen(connector: Arc<Connector>, channel: String, origin: [u8; ORIGIN], backlog: Backlog, stats: Arc<Stats>) {
    let mut backoff = Duration::from_millis(100);
    let mut subscribed_before = false;
    loop {
        match connector.pubsub().await {
            Ok((mut pubsub, _)) => match pubsub.subscribe(&channel).await {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    if subscribed_before && !backlog.push(Delivery::Resubscribed, 1, &stats) {
                        return;
                    }
                    subscribed_before = true;
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        let payload = message.get_payload_bytes();
                        let Some(envelope) = Envelope::decode(payload) else {
                            stats.malformed.fetch_add(1, Ordering::Relaxed);
                            continue;
                        };
                        if envelope.origin == origin {
                            continue; // delivered locally when it was published
                        }
                        stats.received.fetch_add(1, Ordering::Relaxed);
                        if !backlog.push(Delivery::Event(envelope.event), payload.len(), &stats) {
                            return;
                        }
                    }
                    stats.redis_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("subscription bus: the subscription to {} ended; resubscribing", connector.server());
                }
                Err(e) => {
                    stats.redis_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("subscription bus: cannot subscribe: {}", Error::from_redis(&e, connector.server()));
                }
            },
            Err(e) => {
                stats.redis_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("subscription bus: {e}");
            }
        }
        if backlog.tx.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests;
