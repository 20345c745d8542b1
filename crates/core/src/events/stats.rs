//! The store's counters, shared by the writer, the replay and `RedisEvents.stats()`.

use std::sync::atomic::{AtomicU64, Ordering};

/// The store's counters (`RedisEvents.stats()`).
#[derive(Default)]
pub struct Stats {
    pub stored: AtomicU64,
    pub buffered: AtomicU64,
    pub flushed: AtomicU64,
    pub dropped: AtomicU64,
    pub redis_errors: AtomicU64,
    pub replayed: AtomicU64,
    pub fenced: AtomicU64,
    /// The part of `dropped` that Redis refused because it was at `maxmemory` (`OOM`).
    pub dropped_full: AtomicU64,
    /// Pipelines of appends Redis answered, and the time they took in total (µs): the
    /// mean write latency is one over the other.
    pub write_batches: AtomicU64,
    pub write_micros: AtomicU64,
}

impl Stats {
    /// Every counter, by the name Python sees.
    pub fn snapshot(&self) -> [(&'static str, u64); 10] {
        [
            ("stored", &self.stored),
            ("buffered", &self.buffered),
            ("flushed", &self.flushed),
            ("dropped", &self.dropped),
            ("redis_errors", &self.redis_errors),
            ("replayed", &self.replayed),
            ("fenced", &self.fenced),
            ("dropped_full", &self.dropped_full),
            ("write_batches", &self.write_batches),
            ("write_micros", &self.write_micros),
        ]
        .map(|(name, counter)| (name, counter.load(Ordering::Relaxed)))
    }
}
