//! The append path: one task per store batches every pending append into one pipeline.
//!
//! Event positions are chosen here, from a per-process monotonic clock, rather than by
//! Redis (`*`). Knowing the position before the write is what makes a retry idempotent:
//! after a timeout the same entry is re-sent with the same ID, and Redis refusing it as
//! "equal or smaller than the top item" proves it already landed, so nothing is stored
//! twice. It also lets the store hand the SDK an event ID while Redis is down.
//!
//! A Redis fault never reaches the SDK. Appends that cannot be written go to a bounded
//! buffer, in order, and are written when Redis is back; while the buffer holds anything,
//! new appends queue behind it so each stream stays in order. Past the bound, events are
//! counted as dropped and logged.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::clock::Clock;
use super::id::EventId;
pub use super::stats::Stats;
use crate::connection::Connector;
use send::{Pending, FENCED_XADD};

mod send;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How the caller of an append learns its event ID.
///
/// The writer hands a whole batch's IDs over in one call, so an implementation can wake
/// whoever waits once per batch rather than once per event.
pub trait Completion: Send + 'static {
    fn complete_all(done: Vec<(Self, String)>)
    where
        Self: Sized;
}

/// One event to store.
pub struct Append<W> {
    pub key: String,
    pub session: String,
    pub stream: String,
    pub tag: u8,
    /// `None` for a priming event (stored, never replayed).
    pub data: Option<Vec<u8>>,
    /// The session record's key and the epoch this node owns it at, when the session has
    /// an owner: the append is refused once another node took the session over.
    pub fence: Option<(String, i64)>,
    pub waiter: W,
}

pub enum Command<W> {
    Append(Append<W>),
    /// Write the buffer now, whatever the backoff says, and answer whether it is empty:
    /// a replay must not read a stream while some of its events still wait here.
    Flush(oneshot::Sender<bool>),
    Close(oneshot::Sender<()>),
}

#[derive(Clone, Copy)]
pub struct Limits {
    pub max_events_per_stream: u64,
    pub ttl_ms: u64,
    pub buffer_max: usize,
    pub batch_max: usize,
}

pub struct Writer<W> {
    connector: Arc<Connector>,
    /// SHA1 of `FENCED_XADD`, sent with EVALSHA (loaded again if Redis forgot it).
    fenced_sha: String,
    stats: Arc<Stats>,
    limits: Limits,
    clock: Clock,
    buffer: VecDeque<Pending>,
    backoff: Duration,
    next_flush: Instant,
    /// Events written from the buffer since the outage began, for the recovery log line.
    recovered: u64,
    dropped_this_outage: u64,
    /// Events Redis refused as out of memory since it last took one: the episode is logged
    /// when it begins and when it ends, not once per event.
    dropped_while_full: u64,
    /// When the last episode's beginning was logged: a Redis that hovers at its limit
    /// (some events taken, some refused) is logged at most once a minute.
    full_logged: Option<Instant>,
    full_announced: bool,
    waiters: std::marker::PhantomData<fn(W)>,
}

impl<W: Completion> Writer<W> {
    pub fn new(connector: Arc<Connector>, stats: Arc<Stats>, limits: Limits) -> Self {
        Writer {
            connector,
            fenced_sha: redis::Script::new(FENCED_XADD).get_hash().to_owned(),
            stats,
            limits,
            clock: Clock::default(),
            buffer: VecDeque::new(),
            backoff: MIN_BACKOFF,
            next_flush: Instant::now(),
            recovered: 0,
            dropped_this_outage: 0,
            dropped_while_full: 0,
            full_logged: None,
            full_announced: false,
            waiters: std::marker::PhantomData,
        }
    }

    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command<W>>) {
        let mut batch: Vec<Append<W>> = Vec::with_capacity(self.limits.batch_max);
        loop {
            let first = if self.buffer.is_empty() {
                rx.recv().await
            } else {
                tokio::select! {
                    cmd = rx.recv() => cmd,
                    () = tokio::time::sleep_until(self.next_flush) => {
                        self.flush().await;
                        continue;
                    }
                }
            };
            let mut closing = None;
            let mut flushes = Vec::new();
            match first {
                Some(command) => Self::take(command, &mut batch, &mut flushes, &mut closing),
                None => break,
            }
            while closing.is_none() && flushes.is_empty() && batch.len() < self.limits.batch_max {
                match rx.try_recv() {
                    Ok(command) => Self::take(command, &mut batch, &mut flushes, &mut closing),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                self.write(std::mem::take(&mut batch)).await;
            }
            if !self.buffer.is_empty() && (!flushes.is_empty() || Instant::now() >= self.next_flush) {
                self.flush().await;
            }
            for reply in flushes {
                let _ = reply.send(self.buffer.is_empty());
            }
            if let Some(reply) = closing {
                self.shutdown().await;
                let _ = reply.send(());
                return;
            }
        }
        self.shutdown().await;
    }

    fn take(
        command: Command<W>,
        batch: &mut Vec<Append<W>>,
        flushes: &mut Vec<oneshot::Sender<bool>>,
        closing: &mut Option<oneshot::Sender<()>>,
    ) {
        match command {
            Command::Append(a) => batch.push(a),
            Command::Flush(reply) => flushes.push(reply),
            Command::Close(reply) => *closing = Some(reply),
        }
    }

    async fn write(&mut self, batch: Vec<Append<W>>) {
        let mut waiters = Vec::with_capacity(batch.len());
        let mut pending = Vec::with_capacity(batch.len());
        for append in batch {
            let position = self.clock.next();
            waiters.push((append.waiter, append.session, append.stream));
            pending.push(Pending {
                key: append.key,
                tag: append.tag,
                data: append.data,
                fence: append.fence,
                position,
            });
        }
        let sent = if self.buffer.is_empty() {
            let began = Instant::now();
            let sent = self.send(&mut pending).await;
            if sent.is_ok() {
                self.stats.write_batches.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .write_micros
                    .fetch_add(u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
            }
            Some(sent)
        } else {
            None
        };
        // The SDK gets its IDs whether or not Redis has the events yet: delivery goes on.
        let done = waiters
            .into_iter()
            .zip(pending.iter())
            .map(|((waiter, session, stream), event)| (waiter, EventId::encode(&session, &stream, event.position)))
            .collect();
        match sent {
            Some(Ok(())) => {}
            Some(Err(err)) => {
                tracing::error!(
                    "cannot store events: {err}; live delivery continues and up to {} events are kept in memory until Redis is back",
                    self.limits.buffer_max
                );
                self.stats.redis_errors.fetch_add(1, Ordering::Relaxed);
                self.backoff = MIN_BACKOFF;
                self.next_flush = Instant::now() + self.backoff;
                self.recovered = 0;
                self.dropped_this_outage = 0;
                self.spill(pending);
            }
            None => self.spill(pending),
        }
        W::complete_all(done);
    }

    fn spill(&mut self, pending: Vec<Pending>) {
        for event in pending {
            if self.buffer.len() < self.limits.buffer_max {
                self.buffer.push_back(event);
            } else {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                self.dropped_this_outage += 1;
                if self.dropped_this_outage == 1 || self.dropped_this_outage % 1000 == 0 {
                    tracing::error!(
                        "event buffer full ({} events) while Redis is unreachable: {} events dropped so far; they are delivered live but cannot be replayed",
                        self.limits.buffer_max,
                        self.dropped_this_outage
                    );
                }
            }
        }
        self.stats.buffered.store(self.buffer.len() as u64, Ordering::Relaxed);
    }

    /// Writes the buffer's head; on success keeps going, on a fault backs off.
    async fn flush(&mut self) {
        while !self.buffer.is_empty() {
            let n = self.buffer.len().min(self.limits.batch_max);
            let mut chunk: Vec<Pending> = self.buffer.drain(..n).collect();
            match self.send(&mut chunk).await {
                Ok(()) => {
                    self.recovered += n as u64;
                    self.stats.flushed.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(err) => {
                    for event in chunk.into_iter().rev() {
                        self.buffer.push_front(event);
                    }
                    self.stats.buffered.store(self.buffer.len() as u64, Ordering::Relaxed);
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    self.next_flush = Instant::now() + self.backoff;
                    tracing::debug!("Redis still unavailable ({err}); {} events buffered", self.buffer.len());
                    return;
                }
            }
        }
        self.stats.buffered.store(0, Ordering::Relaxed);
        tracing::warn!(
            "Redis at {} is back: wrote {} events buffered during the outage ({} dropped)",
            self.connector.server(),
            self.recovered,
            self.dropped_this_outage
        );
        self.backoff = MIN_BACKOFF;
    }

    async fn shutdown(&mut self) {
        if !self.buffer.is_empty() {
            self.flush().await;
        }
        if !self.buffer.is_empty() {
            tracing::error!(
                "store closed while Redis at {} is unreachable: {} buffered events are lost",
                self.connector.server(),
                self.buffer.len()
            );
        }
    }
}

#[cfg(test)]
mod tests;
