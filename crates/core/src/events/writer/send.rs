//! One batch to Redis: a pipeline of XADDs at the positions the writer chose (through a
//! script that checks the owner's epoch when the session has an owner), a PEXPIRE per
//! stream, and what each reply means: stored; already stored by an earlier attempt;
//! behind another writer's clock; fenced; Redis out of memory; refused.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::{Completion, Writer};
use crate::error::Error;
use crate::events::id::Position;

/// At most one "Redis is out of memory" line per this long, however often it flips.
const FULL_LOG_EVERY: Duration = Duration::from_secs(60);

/// An event that has its position but is not in Redis yet.
pub(super) struct Pending {
    pub(super) key: String,
    pub(super) tag: u8,
    pub(super) data: Option<Vec<u8>>,
    pub(super) fence: Option<(String, i64)>,
    pub(super) position: Position,
}

/// KEYS[1] session record, KEYS[2] stream; ARGV epoch maxlen position tag data. An XADD
/// that only happens while the record names the writer's epoch.
pub(super) const FENCED_XADD: &str = r"
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

impl<W: Completion> Writer<W> {
    /// Writes `pending` in one pipeline. `Err` only for a fault that may heal (nothing
    /// known to be written); refused commands are logged and counted here. An event that
    /// Redis had to place itself gets its new position.
    pub(super) async fn send(&mut self, pending: &mut [Pending]) -> Result<(), Error> {
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
    /// first (the control keys stay writable: see `sessions/ownership.rs`): delivered live, counted
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
}
