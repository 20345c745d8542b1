//! The Redis key and channel layout, in one place.
//!
//! ```text
//! {prefix}:e:{<session>}:<stream>   STREAM   events of one stream of one session
//! {prefix}:s:{<session>}            HASH     the session's record (sessions/records.rs)
//! {prefix}:c:{<session>}:<request>  STRING   who claimed a relayed request (relay/serve.rs)
//! {prefix}:n:<node>                 STRING   a node's heartbeat, with a TTL (sessions/ownership.rs)
//! {prefix}:r:<node>                 CHANNEL  frames for a node: replies, credit, cancels
//! {prefix}:r:<node>:q               CHANNEL  a node's inbox of relayed requests
//! {prefix}:bus                      CHANNEL  "owner …" and "closed …" announcements
//! {prefix}:sub                      CHANNEL  events for subscribers (subscriptions/)
//! ```
//!
//! Every key of a session carries the session in one hash tag, so a Redis Cluster keeps all
//! of a session's keys on one slot and the session scripts, which touch several of them,
//! work there. Session, stream and node are escaped with [`crate::events::id::escape_into`], so none
//! can end the hash tag early or forge a separator, and each key parses back to one owner.

use crate::events::id::{escape_into, unescape};

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

/// `{prefix}:{kind}:{<session>}`, the start of every per-session key.
fn tagged(prefix: &str, kind: &str, session: &str, extra: usize) -> String {
    let mut key = String::with_capacity(prefix.len() + session.len() + extra + 8);
    key.push_str(prefix);
    key.push(':');
    key.push_str(kind);
    key.push_str(":{");
    escape_into(&mut key, session);
    key.push('}');
    key
}

/// `{prefix}:{kind}:<name>`, for keys and channels of a node.
fn plain(prefix: &str, kind: &str, name: &str) -> String {
    let mut key = String::with_capacity(prefix.len() + name.len() + 4);
    key.push_str(prefix);
    key.push(':');
    key.push_str(kind);
    key.push(':');
    escape_into(&mut key, name);
    key
}

/// Key of the Redis stream holding one stream of one session.
pub fn events_key(prefix: &str, session: &str, stream: &str) -> String {
    let mut key = tagged(prefix, "e", session, stream.len() + 1);
    key.push(':');
    escape_into(&mut key, stream);
    key
}

/// Key of a session's record; the hash tag keeps it on the slot of the session's events.
pub fn record_key(prefix: &str, session: &str) -> String {
    tagged(prefix, "s", session, 0)
}

/// Key recording which node claimed a relayed request (`request` in lowercase hex).
pub fn claim_key(prefix: &str, session: &str, request: &[u8]) -> String {
    let mut key = tagged(prefix, "c", session, 1 + 2 * request.len());
    key.push(':');
    for b in request {
        key.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        key.push(char::from_digit(u32::from(b & 15), 16).unwrap_or('0'));
    }
    key
}

/// Key of a node's heartbeat.
pub fn node_key(prefix: &str, node: &str) -> String {
    plain(prefix, "n", node)
}

/// Channel carrying frames to a node: responses it waits for, credit, cancels.
pub fn reply_channel(prefix: &str, node: &str) -> String {
    plain(prefix, "r", node)
}

/// Channel carrying relayed requests to a node.
pub fn inbox_channel(prefix: &str, node: &str) -> String {
    let mut out = reply_channel(prefix, node);
    out.push_str(":q");
    out
}

/// The channel every node listens on for ownership changes and closed sessions.
pub fn bus_channel(prefix: &str) -> String {
    format!("{prefix}:bus")
}

/// The channel of the subscription bus (`subscriptions/`).
pub fn subscriptions_channel(prefix: &str) -> String {
    format!("{prefix}:sub")
}

/// `key` for a log line: the session inside its hash tag cut to 8 characters, as the
/// Python side logs session IDs (a session ID is a bearer credential of sorts).
pub fn for_log(key: &str) -> String {
    let Some(open) = key.find('{') else { return key.to_owned() };
    let Some(len) = key[open + 1..].find('}') else { return key.to_owned() };
    let session = &key[open + 1..open + 1 + len];
    match session.char_indices().nth(8) {
        Some((cut, _)) => format!("{}{}…{}", &key[..=open], &session[..cut], &key[open + 1 + len..]),
        None => key.to_owned(),
    }
}

/// What a key of the layout is, as [`parse`] finds it.
#[derive(Debug, PartialEq, Eq)]
pub enum Key {
    Events { session: String, stream: String },
    Record { session: String },
    Claim { session: String, request: String },
    Node { node: String },
}

/// Reads a key of `prefix`'s layout back; `None` for anything the layout would not write.
pub fn parse(prefix: &str, key: &str) -> Option<Key> {
    let rest = key.strip_prefix(prefix)?.strip_prefix(':')?;
    let (kind, rest) = rest.split_once(':')?;
    if kind == "n" {
        return Some(Key::Node { node: unescape(rest)? });
    }
    let (session, tail) = rest.strip_prefix('{')?.split_once('}')?;
    let session = unescape(session)?;
    match (kind, tail) {
        ("s", "") => Some(Key::Record { session }),
        ("e", tail) => Some(Key::Events { session, stream: unescape(tail.strip_prefix(':')?)? }),
        ("c", tail) => {
            let request = tail.strip_prefix(':')?;
            let hex = request.len() == 32 && request.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            hex.then(|| Key::Claim { session, request: request.to_owned() })
        }
        _ => None,
    }
}

/// The layout of `prefix`: each key kind with its SCAN pattern, and the bus channel.
pub fn layout(prefix: &str) -> Vec<(&'static str, String)> {
    vec![
        ("events", format!("{prefix}:e:{{*")),
        ("session", format!("{prefix}:s:{{*")),
        ("claim", format!("{prefix}:c:{{*")),
        ("node", format!("{prefix}:n:*")),
        ("bus", bus_channel(prefix)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_stable() {
        assert_eq!(events_key("mcp", "abc", "_GET_stream"), "mcp:e:{abc}:_GET_stream");
        assert_eq!(events_key("mcp", "a}b", "x:y"), "mcp:e:{a%7Db}:x%3Ay");
        assert_eq!(record_key("mcp", "a}b"), "mcp:s:{a%7Db}");
        assert_eq!(node_key("mcp", "host:1"), "mcp:n:host%3A1");
        assert_eq!(reply_channel("mcp", "h:1"), "mcp:r:h%3A1");
        assert_eq!(inbox_channel("mcp", "h:1"), "mcp:r:h%3A1:q");
        assert_eq!(bus_channel("mcp"), "mcp:bus");
        assert_eq!(claim_key("mcp", "s}", &[0xab; 16]), format!("mcp:c:{{s%7D}}:{}", "ab".repeat(16)));
    }

    #[test]
    fn a_sessions_keys_share_one_hash_tag() {
        let tag = |key: &str| key[key.find('{').unwrap()..=key.find('}').unwrap()].to_owned();
        let record = record_key("p", "a}b{c");
        assert_eq!(tag(&record), tag(&events_key("p", "a}b{c", "s")));
        assert_eq!(tag(&record), tag(&claim_key("p", "a}b{c", &[1; 16])));
    }

    #[test]
    fn distinct_pairs_never_share_a_key() {
        assert_ne!(events_key("p", "a", "b:c"), events_key("p", "a:b", "c"));
        assert_ne!(events_key("p", "a}", "b"), events_key("p", "a", "}b"));
    }

    #[test]
    fn every_key_parses_back() {
        let (s, st) = ("sé}ss:{1", "str:eam/2");
        assert_eq!(parse("p", &events_key("p", s, st)), Some(Key::Events { session: s.into(), stream: st.into() }));
        assert_eq!(parse("p", &record_key("p", s)), Some(Key::Record { session: s.into() }));
        assert_eq!(parse("p", &node_key("p", "h:1")), Some(Key::Node { node: "h:1".into() }));
        let claim = claim_key("p", s, &[7; 16]);
        assert_eq!(parse("p", &claim), Some(Key::Claim { session: s.into(), request: "07".repeat(16) }));
    }

    #[test]
    fn logs_show_a_truncated_session() {
        assert_eq!(for_log("p:e:{0123456789abcdef}:_GET"), "p:e:{01234567…}:_GET");
        assert_eq!(for_log("p:s:{short}"), "p:s:{short}");
        assert_eq!(for_log("p:n:node"), "p:n:node");
    }

    #[test]
    fn foreign_keys_do_not_parse() {
        for key in
            ["q:s:{a}", "p:s:{a}x", "p:s:a", "p:x:{a}", "p:e:{a}", "p:e:{a%zz}:s", "p:c:{a}:xyz", "p", "p:", "pp:s:{a}"]
        {
            assert_eq!(parse("p", key), None, "{key}");
        }
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
