//! Redis key layout. Every key of a session carries the session in one hash tag, so a
//! Redis Cluster keeps all of a session's keys on one slot and multi-key scripts work.
//!
//! ```text
//! {prefix}:e:{<session>}:<stream>   STREAM  events of one stream of one session
//! ```
//!
//! Session and stream are escaped with [`crate::event_id::escape`], so neither can end the
//! hash tag early or forge the separator.

use crate::event_id::escape_into;

/// Checks a key prefix: visible ASCII, no braces (they would hijack the hash tag).
pub fn validate_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > 128 {
        return Err(format!("prefix must be 1 to 128 characters, got {}", prefix.len()));
    }
    if let Some(bad) = prefix.chars().find(|c| !c.is_ascii_graphic() || matches!(c, '{' | '}')) {
        return Err(format!("prefix {prefix:?} contains {bad:?}; use visible ASCII without braces"));
    }
    Ok(())
}

/// Key of the Redis stream holding one stream of one session.
pub fn events_key(prefix: &str, session: &str, stream: &str) -> String {
    let mut key = String::with_capacity(prefix.len() + session.len() + stream.len() + 8);
    key.push_str(prefix);
    key.push_str(":e:{");
    escape_into(&mut key, session);
    key.push_str("}:");
    escape_into(&mut key, stream);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_stable() {
        assert_eq!(events_key("mcp", "abc", "_GET_stream"), "mcp:e:{abc}:_GET_stream");
        assert_eq!(events_key("mcp", "a}b", "x:y"), "mcp:e:{a%7Db}:x%3Ay");
    }

    #[test]
    fn distinct_pairs_never_share_a_key() {
        assert_ne!(events_key("p", "a", "b:c"), events_key("p", "a:b", "c"));
        assert_ne!(events_key("p", "a}", "b"), events_key("p", "a", "}b"));
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(validate_prefix("mcp").is_ok());
        assert!(validate_prefix("team-a:mcp").is_ok());
        for bad in ["", "a b", "a{b", "x}", "é"] {
            assert!(validate_prefix(bad).is_err(), "accepted {bad:?}");
        }
    }
}
