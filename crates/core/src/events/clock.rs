//! The position clock: the writer picks each event's position (`<ms>-<seq>`) itself, so a
//! retry re-sends the same ID (see `writer/`).

use std::time::{SystemTime, UNIX_EPOCH};

use super::id::Position;

/// Monotonic `ms-seq` positions: never behind the wall clock, never repeating.
#[derive(Default)]
pub(crate) struct Clock {
    pub(crate) last: Position,
}

impl Clock {
    /// Never hand out a position at or below one Redis assigned.
    pub(crate) fn observe(&mut self, position: Position) {
        self.last = self.last.max(position);
    }

    pub(crate) fn next(&mut self) -> Position {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        // At `Position::MAX` (only an entry Redis placed at its largest ID leads there, see
        // `observe`) stay there rather than overflow.
        self.last =
            if now > self.last.ms { Position { ms: now, seq: 0 } } else { self.last.next().unwrap_or(Position::MAX) };
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::now_ms;

    #[test]
    fn positions_only_go_up_and_keep_up_with_the_wall_clock() {
        let mut clock = Clock::default();
        let before = now_ms();
        let mut last = clock.next();
        assert!(last.ms >= before, "{last} is behind the wall clock ({before})");
        // Many in one millisecond: the sequence number tells them apart.
        for _ in 0..10_000 {
            let next = clock.next();
            assert!(next > last, "{next} after {last}");
            last = next;
        }
        assert!(last.ms <= now_ms());
    }

    #[test]
    fn after_a_position_redis_chose_the_clock_goes_on_from_there() {
        let mut clock = Clock::default();
        let ahead = Position { ms: now_ms() + 3_600_000, seq: 7 };
        clock.observe(ahead);
        assert_eq!(clock.next(), Position { ms: ahead.ms, seq: 8 });
        clock.observe(Position::ZERO);
        assert_eq!(clock.next(), Position { ms: ahead.ms, seq: 9 }, "an older position moves nothing");
        clock.observe(Position::MAX);
        assert_eq!(clock.next(), Position::MAX, "at the largest ID it stays there rather than overflow");
    }
}
