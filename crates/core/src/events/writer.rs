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

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::clock::Clock;
use super::id::{EventId, Position};
pub use super::stats::Stats;
use crate::connection::Connector;
use crate::error::Error;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// At most one "Redis is out of memory" line per this long, however often it flips.
const FULL_LOG_EVERY: Duration = Duration::from_secs(60);

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

/// An event that has its position but is not in Redis yet.
struct Pending {
    key: String,
    tag: u8,
    data: Option<Vec<u8>>,
    fence: Option<(String, i64)>,
    position: Position,
}

/// KEYS[1] session record, KEYS[2] stream; ARGV epoch maxlen position tag data. An XADD
/// that only happens while the record names the writer's epoch.
const FENCED_XADD: &str = r"
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then
  return redis.error_reply('FENCED another node owns this session now')
end
return redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], ARGV[3], ARGV[4], ARGV[5])
";

fn is_noscript(err: &redis::Value) -> bool {
    matches!(err, redis::Value::ServerError(e) if e.code() == "NOSCRIPT")
}

fn is_oom(err: &redis::Value) -> bool {
    matches!(err, redis::Value::ServerError(e) if e.code() == "OOM")
}

fn is_fenced(err: &redis::Value) -> bool {
    matches!(err, redis::Value::ServerError(e) if e.code() == "FENCED")
}

/// Whether an XRANGE reply holds exactly `event` (same kind, same message).
fn is_this_entry(reply: Option<&redis::Value>, event: &Pending) -> bool {
    let Some(redis::Value::Array(rows)) = reply else { return false };
    let Some(redis::Value::Array(parts)) = rows.first() else { return false };
    let Some(redis::Value::Array(fields)) = parts.get(1) else { return false };
    match fields.as_slice() {
        [redis::Value::BulkString(tag), redis::Value::BulkString(data)] => {
            tag.as_slice() == [event.tag] && data.as_slice() == event.data.as_deref().unwrap_or_default()
        }
        _ => false,
    }
}

fn is_behind_top(err: &redis::Value) -> bool {
    matches!(err, redis::Value::ServerError(e) if e.details().is_some_and(|d| d.contains("equal or smaller")))
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

    /// Writes `pending` in one pipeline. `Err` only for a fault that may heal (nothing
    /// known to be written); refused commands are logged and counted here. An event that
    /// Redis had to place itself gets its new position.
    async fn send(&mut self, pending: &mut [Pending]) -> Result<(), Error> {
        let pipe = self.pipeline(pending);
        let mut values = self.connector.query_inline(&pipe).await?;
        if values.iter().take(pending.len()).any(is_noscript) {
            // Redis restarted or flushed its scripts: load the fence again and resend. The
            // refused appends wrote nothing, and the rest are recognised as already stored.
            let mut load = redis::pipe();
            load.cmd("SCRIPT").arg("LOAD").arg(FENCED_XADD);
            self.connector.query(&load).await?;
            values = self.connector.query_inline(&pipe).await?;
        }
        let mut behind_top = Vec::new();
        for (index, value) in values.iter().take(pending.len()).enumerate() {
            match value {
                redis::Value::ServerError(_) if is_behind_top(value) => behind_top.push(index),
                redis::Value::ServerError(_) if is_fenced(value) => self.fenced(&pending[index]),
                redis::Value::ServerError(_) if is_oom(value) => self.full(),
                redis::Value::ServerError(e) => self.refused(&pending[index], &e.to_string()),
                _ => {
                    self.stats.stored.fetch_add(1, Ordering::Relaxed);
                    if self.dropped_while_full > 0 {
                        self.room_again();
                    }
                }
            }
        }
        for index in behind_top {
            self.place(&mut pending[index]).await;
        }
        Ok(())
    }

    /// An event refused as behind its stream's top: either an earlier attempt of this very
    /// entry landed before a timeout (then it is stored), or another writer got there with
    /// a clock ahead of ours (then let Redis pick the position).
    async fn place(&mut self, event: &mut Pending) {
        let at = event.position.to_string();
        let mut pipe = redis::pipe();
        pipe.cmd("XRANGE").arg(&event.key).arg(&at).arg(&at);
        match self.connector.query(&pipe).await {
            Ok(v) if is_this_entry(v.first(), event) => {
                self.stats.stored.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(_) => {}
            Err(e) => return self.refused(event, &e.to_string()),
        }
        let mut pipe = redis::pipe();
        self.xadd(&mut pipe, event, None);
        match self.connector.query(&pipe).await {
            Ok(v) => match v.first() {
                Some(redis::Value::BulkString(id)) => {
                    if let Some(position) = std::str::from_utf8(id).ok().and_then(Position::parse) {
                        event.position = position;
                        self.clock.observe(position);
                    }
                    self.stats.stored.fetch_add(1, Ordering::Relaxed);
                }
                other => self.refused(event, &format!("{other:?}")),
            },
            Err(e) => self.refused(event, &e.to_string()),
        }
    }

    fn refused(&self, event: &Pending, why: &str) {
        self.stats.redis_errors.fetch_add(1, Ordering::Relaxed);
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            "Redis refused event {} of {}: {why}; the event is not replayable",
            event.position,
            crate::keys::for_log(&event.key)
        );
    }

    /// Redis is at `maxmemory` and refused an event. Events are what a full Redis gives up
    /// first (the control keys stay writable: see `ownership.rs`): delivered live, counted
    /// as dropped, logged once for the whole episode.
    fn full(&mut self) {
        self.stats.redis_errors.fetch_add(1, Ordering::Relaxed);
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        self.stats.dropped_full.fetch_add(1, Ordering::Relaxed);
        self.dropped_while_full += 1;
        if self.dropped_while_full == 1 && self.full_logged.is_none_or(|at| at.elapsed() >= FULL_LOG_EVERY) {
            self.full_logged = Some(Instant::now());
            self.full_announced = true;
            tracing::error!(
                "Redis at {} is out of memory (maxmemory): it refuses new events, which are delivered live but cannot be replayed; sessions go on (logged once until Redis takes events again)",
                self.connector.server()
            );
        }
    }

    fn room_again(&mut self) {
        if std::mem::take(&mut self.full_announced) {
            tracing::warn!(
                "Redis at {} takes events again: {} events were refused while it was out of memory",
                self.connector.server(),
                self.dropped_while_full
            );
        }
        self.dropped_while_full = 0;
    }

    fn fenced(&self, event: &Pending) {
        self.stats.fenced.fetch_add(1, Ordering::Relaxed);
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "event {} of {} not stored: another node took the session over (this node's epoch is stale)",
            event.position,
            crate::keys::for_log(&event.key)
        );
    }

    fn xadd(&self, pipe: &mut redis::Pipeline, event: &Pending, position: Option<Position>) {
        if let (Some((record, epoch)), Some(p)) = (&event.fence, position) {
            pipe.cmd("EVALSHA")
                .arg(&self.fenced_sha)
                .arg(2)
                .arg(record)
                .arg(&event.key)
                .arg(epoch)
                .arg(self.limits.max_events_per_stream)
                .arg(p.to_string())
                .arg(&[event.tag][..])
                .arg(event.data.as_deref().unwrap_or_default());
            return;
        }
        pipe.cmd("XADD").arg(&event.key).arg("MAXLEN").arg("~").arg(self.limits.max_events_per_stream);
        match position {
            Some(p) => pipe.arg(p.to_string()),
            None => pipe.arg("*"),
        };
        pipe.arg(&[event.tag][..]).arg(event.data.as_deref().unwrap_or_default());
    }

    /// XADD for every event, then one PEXPIRE per distinct stream (the sliding TTL).
    fn pipeline(&self, pending: &[Pending]) -> redis::Pipeline {
        let mut pipe = redis::Pipeline::with_capacity(pending.len() * 2);
        pipe.ignore_errors();
        for event in pending {
            self.xadd(&mut pipe, event, Some(event.position));
        }
        let mut seen = HashSet::with_capacity(pending.len());
        for event in pending.iter().rev() {
            if seen.insert(event.key.as_str()) {
                pipe.cmd("PEXPIRE").arg(&event.key).arg(self.limits.ttl_ms).ignore();
            }
        }
        pipe
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
#[path = "writer_tests.rs"]
mod tests;
