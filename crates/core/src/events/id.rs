//! Event IDs: `<session>:<stream>:<ms>-<seq>`.
//!
//! The SDK hands one store to every session and names streams by JSON-RPC request id, so
//! stream names collide across sessions. An event ID therefore carries the session and the
//! stream as well as the position, which lets a store refuse a `Last-Event-ID` that belongs
//! to another session without a lookup. Components are percent-encoded over a small
//! unreserved alphabet, so the separator never appears inside them and the whole ID is
//! visible ASCII, as the `Last-Event-ID` header requires.

use std::fmt::Write;

/// Longest `Last-Event-ID` we will try to parse. Anything longer is garbage or an attack.
pub const MAX_EVENT_ID_LEN: usize = 1024;

/// Position of an event inside one stream: a Redis stream entry ID (`ms-seq`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub ms: u64,
    pub seq: u64,
}

impl Position {
    pub const ZERO: Position = Position { ms: 0, seq: 0 };
    /// The largest ID Redis accepts: nothing can follow it.
    pub const MAX: Position = Position { ms: u64::MAX, seq: u64::MAX };

    /// Parses a Redis stream entry ID such as `1700000000000-3`.
    pub fn parse(text: &str) -> Option<Position> {
        let (ms, seq) = text.split_once('-')?;
        Some(Position { ms: parse_u64(ms)?, seq: parse_u64(seq)? })
    }

    /// The position right after this one in Redis' ordering; `None` after [`Position::MAX`].
    pub fn next(self) -> Option<Position> {
        match self.seq.checked_add(1) {
            Some(seq) => Some(Position { ms: self.ms, seq }),
            None => Some(Position { ms: self.ms.checked_add(1)?, seq: 0 }),
        }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// A decoded event ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventId {
    pub session: String,
    pub stream: String,
    pub position: Position,
}

impl EventId {
    pub fn encode(session: &str, stream: &str, position: Position) -> String {
        let mut out = String::with_capacity(session.len() + stream.len() + 32);
        escape_into(&mut out, session);
        out.push(':');
        escape_into(&mut out, stream);
        let _ = write!(out, ":{position}");
        out
    }

    /// Parses an event ID; `None` for anything this codec did not produce.
    pub fn decode(text: &str) -> Option<EventId> {
        if text.is_empty() || text.len() > MAX_EVENT_ID_LEN {
            return None;
        }
        let mut parts = text.split(':');
        let session = unescape(parts.next()?)?;
        let stream = unescape(parts.next()?)?;
        let position = Position::parse(parts.next()?)?;
        if parts.next().is_some() || stream.is_empty() {
            return None;
        }
        Some(EventId { session, stream, position })
    }
}

fn parse_u64(text: &str) -> Option<u64> {
    // `u64::from_str` accepts a leading '+', which would give one event two spellings.
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~')
}

/// Percent-encodes every byte outside `[A-Za-z0-9-_.~]`.
pub fn escape_into(out: &mut String, text: &str) {
    for &byte in text.as_bytes() {
        if is_unreserved(byte) {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
}

/// Inverse of [`escape_into`]; refuses anything it would not have produced, so every
/// (session, stream) pair has exactly one spelling.
pub fn unescape(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if byte == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            if hex.bytes().any(|b| b.is_ascii_lowercase()) {
                return None;
            }
            let decoded = u8::from_str_radix(hex, 16).ok()?;
            if is_unreserved(decoded) {
                return None;
            }
            out.push(decoded);
            i += 3;
        } else if is_unreserved(byte) {
            out.push(byte);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(ms: u64, seq: u64) -> Position {
        Position { ms, seq }
    }

    #[test]
    fn round_trips_plain_and_awkward_names() {
        for (session, stream) in [
            ("0f1e2d3c4b5a69788796a5b4c3d2e1f0", "_GET_stream"),
            ("", "1"),
            ("sess:with:colons", "id with spaces/and%percent"),
            ("ünïcödé", "请求-7"),
            ("a{b}c", "\n\r\t"),
        ] {
            let id = EventId::encode(session, stream, pos(1_700_000_000_000, 42));
            assert!(id.bytes().all(|b| (0x21..=0x7e).contains(&b)), "not visible ASCII: {id:?}");
            let back = EventId::decode(&id).expect("decodes");
            assert_eq!(back.session, session);
            assert_eq!(back.stream, stream);
            assert_eq!(back.position, pos(1_700_000_000_000, 42));
        }
    }

    #[test]
    fn refuses_garbage() {
        for bad in [
            "",
            "abc",
            "a:b",
            "a:b:c",
            "a:b:1",
            "a:b:1-",
            "a:b:-1",
            "a:b:+1-0",
            "a:b:1-0:extra",
            "a::1-0",
            "a b:c:1-0",
            "a:%zz:1-0",
            "a:%41:1-0", // 'A' must not be escaped: two spellings of one ID
            "a:%2f:1-0", // lower-case hex likewise
            "a:%FF:1-0", // not UTF-8
            "a:b:99999999999999999999999-0",
        ] {
            assert_eq!(EventId::decode(bad), None, "accepted {bad:?}");
        }
        let huge = format!("a:{}:1-0", "b".repeat(MAX_EVENT_ID_LEN));
        assert_eq!(EventId::decode(&huge), None);
    }

    #[test]
    fn positions_order_like_redis() {
        assert!(pos(1, 9) < pos(2, 0));
        assert_eq!(pos(5, u64::MAX).next(), Some(pos(6, 0)));
        assert_eq!(Position::MAX.next(), None);
        assert_eq!(Position::parse("17-3"), Some(pos(17, 3)));
        assert_eq!(pos(17, 3).to_string(), "17-3");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn any_position() -> impl Strategy<Value = Position> {
            let edge = prop_oneof![Just(0u64), Just(1u64), Just(u64::MAX - 1), Just(u64::MAX), any::<u64>()];
            (edge.clone(), edge).prop_map(|(ms, seq)| Position { ms, seq })
        }

        proptest! {
            /// Whatever a client sends as `Last-Event-ID`, decoding never panics, and what
            /// decodes names the same event once encoded again.
            #[test]
            fn decode_never_panics_and_round_trips(text in "\\PC{0,80}|[a-c0-9%:~._-]{0,40}") {
                if let Some(id) = EventId::decode(&text) {
                    let again = EventId::encode(&id.session, &id.stream, id.position);
                    prop_assert_eq!(EventId::decode(&again), Some(id));
                }
            }

            #[test]
            fn every_encoded_id_decodes_to_itself(session in "\\PC{0,40}", stream in "\\PC{1,20}", position in any_position()) {
                let text = EventId::encode(&session, &stream, position);
                prop_assert!(text.bytes().all(|b| (0x21..=0x7e).contains(&b)));
                if text.len() <= MAX_EVENT_ID_LEN {
                    let id = EventId::decode(&text).expect("decodes");
                    prop_assert_eq!((id.session, id.stream, id.position), (session, stream, position));
                }
            }

            /// `next` is the successor in Redis' order, and only the largest ID has none.
            #[test]
            fn next_is_the_successor(position in any_position()) {
                match position.next() {
                    Some(next) => {
                        prop_assert!(next > position);
                        prop_assert_eq!(Position::parse(&next.to_string()), Some(next));
                    }
                    None => prop_assert_eq!(position, Position::MAX),
                }
            }
        }
    }
}
