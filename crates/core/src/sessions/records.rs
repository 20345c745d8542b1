//! Session records: one Redis hash per MCP session, changed only by server-side scripts.
//!
//! ```text
//! {prefix}:s:{<session>}   HASH  state version init principal node owner epoch created updated
//!                                 [sub:<uri> ...] [subs_bytes]
//! ```
//!
//! `node` is the node that created the session; `owner` and `epoch` say which node holds
//! its live state now (see `ownership.rs`). `sub:<uri>` fields are the resources a
//! handshake-era client subscribed to (`resources/subscribe`), kept with the record so
//! they survive a takeover and go with a DELETE or the record's expiry; `subs_bytes` is
//! their URIs' total length, bounded by [`MAX_SUBSCRIPTION_BYTES`].
//!
//! A record walks INITIALIZING → INITIALIZED → ACTIVE → CLOSED. Every change runs as one
//! Lua script that checks the current state (and, when asked, the version) before writing,
//! so a transition that is not allowed, or that lost a race with another node, is refused
//! atomically instead of overwriting a newer state. CLOSED records stay as tombstones for
//! their TTL, so every node keeps answering 404 for a deleted session.

use std::sync::Arc;

use super::state::{lua_rules, State};
use crate::connection::Connector;
use crate::error::{Error, Result};
use crate::keys::record_key;
use crate::now_ms;
use crate::subscriptions::MAX_URI;

/// KEYS[1] record; ARGV ttl_ms now_ms node principal init.
///
/// No `allow-oom`, on purpose: at `maxmemory` Redis refuses the HSET, so no new session is
/// admitted while Redis is full. Each record is small, but new sessions have no bound, and
/// letting them in would grow memory past `maxmemory` for good; the sessions that exist
/// go on (their control writes below are allowed).
const CREATE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'state', 'INITIALIZING', 'version', 1, 'node', ARGV[3],
  'owner', ARGV[3], 'epoch', 1, 'principal', ARGV[4], 'init', ARGV[5], 'created', ARGV[2], 'updated', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
";

/// KEYS[1] record; ARGV to ttl_ms now_ms expected_version ('' for any) epoch ('' for any:
/// the fencing token of the owner writing), then field/value pairs to set. Returns
/// {1, new_version} or {0, reason, version, state}.
///
/// `allow-oom`: a session that exists must still move (INITIALIZED, ACTIVE) and close
/// while Redis is at `maxmemory`; each transition overwrites fields of a record that exists.
const TRANSITION: &str = r"#!lua flags=allow-oom
local rules = RULES
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {0, 'missing', 0, ''} end
local version = tonumber(redis.call('HGET', KEYS[1], 'version'))
if ARGV[5] ~= '' and redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[5] then return {0, 'fenced', version, state} end
if ARGV[4] ~= '' and tonumber(ARGV[4]) ~= version then return {0, 'conflict', version, state} end
if not (rules[state] and rules[state][ARGV[1]]) then return {0, 'refused', version, state} end
version = version + 1
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'version', version, 'updated', ARGV[3])
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, version}
";

/// KEYS[1] record; ARGV ttl_ms. The record, its idle TTL slid forward unless it is CLOSED
/// (a tombstone keeps the TTL it was closed with).
/// Only PEXPIRE writes, which Redis allows at `maxmemory`: no flags needed (a `#!lua` line
/// without `allow-oom` would make Redis refuse it at `maxmemory`).
const LOOKUP: &str = r"
local record = redis.call('HGETALL', KEYS[1])
if #record == 0 then return record end
if redis.call('HGET', KEYS[1], 'state') ~= 'CLOSED' then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return record
";

/// KEYS[1] record; ARGV node. Deletes a record whose creation this node gave up on (Redis
/// did not answer in time, so the client got 503 and never learned the session ID), if it
/// was written after all: only while it is still this node's first epoch and unused.
/// 1 deleted, 0 absent, -1 left alone (used, or another node's).
const FORGET_UNLEARNED: &str = r"
local r = redis.call('HMGET', KEYS[1], 'state', 'owner', 'epoch')
if not r[1] then return 0 end
if r[2] ~= ARGV[1] or r[3] ~= '1' or (r[1] ~= 'INITIALIZING' and r[1] ~= 'INITIALIZED') then return -1 end
redis.call('DEL', KEYS[1])
return 1
";

/// KEYS[1] record; ARGV uri on ('1' subscribe, '0' unsubscribe) epoch (the owner's fencing
/// token, '' for any) max_bytes. Returns 1 done, 0 nothing to do (already so), -1 no
/// open record, -2 fenced, -3 the session's subscriptions would pass `max_bytes`.
///
/// `allow-oom` for unsubscribing only would be nice, but one script has one set of flags:
/// at `maxmemory` Redis refuses both, and the client's request fails (not half-done).
const SUBSCRIBE: &str = r"
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'CLOSED' then return -1 end
if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[3] then return -2 end
local field = 'sub:' .. ARGV[1]
if ARGV[2] == '0' then
  if redis.call('HDEL', KEYS[1], field) == 0 then return 0 end
  redis.call('HINCRBY', KEYS[1], 'subs_bytes', -#ARGV[1])
  return 1
end
if redis.call('HEXISTS', KEYS[1], field) == 1 then return 0 end
local used = tonumber(redis.call('HGET', KEYS[1], 'subs_bytes') or '0')
if used + #ARGV[1] > tonumber(ARGV[4]) then return -3 end
redis.call('HSET', KEYS[1], field, '1')
redis.call('HINCRBY', KEYS[1], 'subs_bytes', #ARGV[1])
return 1
";

/// The most bytes of resource URIs one session may be subscribed to: a client cannot grow
/// its record (read on every takeover) without bound.
pub const MAX_SUBSCRIPTION_BYTES: usize = 64 * 1024;

/// A script reply's text field ("" if absent or not text).
pub(crate) fn reply_text(v: Option<&redis::Value>) -> String {
    match v {
        Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(redis::Value::SimpleString(s)) => s.clone(),
        _ => String::new(),
    }
}

/// A script reply's integer field (0 if absent or not an integer).
pub(crate) fn reply_int(v: Option<&redis::Value>) -> i64 {
    match v {
        Some(redis::Value::Int(i)) => *i,
        _ => 0,
    }
}

/// Outcome of recording a resource subscription (or its end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscribed {
    /// Recorded.
    Done,
    /// It was so already (subscribed twice, or unsubscribed from what it never had).
    Unchanged,
    /// No open session: never created, expired or closed.
    Missing,
    /// Another node owns the session at a later epoch.
    Fenced,
    /// The session's subscriptions would pass [`MAX_SUBSCRIPTION_BYTES`].
    Full,
}

/// Outcome of a transition.
pub enum Transition {
    Done { version: i64 },
    Missing,
    Conflict { version: i64, state: String },
    Refused { version: i64, state: String },
    Fenced { version: i64, state: String },
}

pub struct Records {
    prefix: String,
    connector: Arc<Connector>,
    create: redis::Script,
    transition: redis::Script,
    lookup: redis::Script,
    forget_unlearned: redis::Script,
    subscribe: redis::Script,
}

impl Records {
    pub fn new(prefix: &str, connector: Arc<Connector>) -> Records {
        Records {
            prefix: prefix.to_owned(),
            connector,
            create: redis::Script::new(CREATE),
            transition: redis::Script::new(&TRANSITION.replace("RULES", &lua_rules())),
            lookup: redis::Script::new(LOOKUP),
            forget_unlearned: redis::Script::new(FORGET_UNLEARNED),
            subscribe: redis::Script::new(SUBSCRIBE),
        }
    }

    pub async fn create(&self, session: &str, node: &str, principal: &str, init: &str, ttl_ms: u64) -> Result<bool> {
        let key = record_key(&self.prefix, session);
        let mut call = self.create.key(&key);
        call.arg(ttl_ms).arg(now_ms()).arg(node).arg(principal).arg(init);
        let created: i64 = self.connector.invoke(&call).await?;
        Ok(created == 1)
    }

    pub async fn transition(
        &self,
        session: &str,
        to: State,
        ttl_ms: u64,
        expected_version: Option<i64>,
        epoch: Option<i64>,
        fields: &[(String, String)],
    ) -> Result<Transition> {
        let key = record_key(&self.prefix, session);
        let mut call = self.transition.key(&key);
        call.arg(to.name()).arg(ttl_ms).arg(now_ms()).arg(expected_version.map(|v| v.to_string()).unwrap_or_default());
        call.arg(epoch.map(|e| e.to_string()).unwrap_or_default());
        for (name, value) in fields {
            let managed = matches!(name.as_str(), "state" | "version" | "updated" | "created" | "owner" | "epoch");
            if managed || name == "subs_bytes" || name.starts_with(SUBSCRIPTION) {
                return Err(Error::Config(format!("field {name:?} is managed by the state machine")));
            }
            call.arg(name).arg(value);
        }
        let reply: Vec<redis::Value> = self.connector.invoke(&call).await?;
        let (text, int) = (reply_text, reply_int);
        Ok(match (int(reply.first()), text(reply.get(1)).as_str()) {
            (1, _) => Transition::Done { version: int(reply.get(1)) },
            (_, "missing") => Transition::Missing,
            (_, "conflict") => Transition::Conflict { version: int(reply.get(2)), state: text(reply.get(3)) },
            (_, "refused") => Transition::Refused { version: int(reply.get(2)), state: text(reply.get(3)) },
            (_, "fenced") => Transition::Fenced { version: int(reply.get(2)), state: text(reply.get(3)) },
            _ => return Err(Error::Redis(format!("unexpected reply from the transition script: {reply:?}"))),
        })
    }

    /// See [`FORGET_UNLEARNED`]: `true` if a record was deleted.
    pub async fn forget_unlearned(&self, session: &str, node: &str) -> Result<bool> {
        let key = record_key(&self.prefix, session);
        let mut call = self.forget_unlearned.key(&key);
        call.arg(node);
        let deleted: i64 = self.connector.invoke(&call).await?;
        Ok(deleted == 1)
    }

    /// Records that the session's client subscribed to `uri` (`on`), or unsubscribed; as
    /// the owner at `epoch` when given. A URI is at most [`MAX_URI`] bytes.
    pub async fn subscribe(&self, session: &str, uri: &str, on: bool, epoch: Option<i64>) -> Result<Subscribed> {
        if uri.len() > MAX_URI {
            return Err(Error::Config(format!("a resource URI has at most {MAX_URI} bytes, this one {}", uri.len())));
        }
        let key = record_key(&self.prefix, session);
        let mut call = self.subscribe.key(&key);
        call.arg(uri).arg(if on { "1" } else { "0" });
        call.arg(epoch.map(|e| e.to_string()).unwrap_or_default()).arg(MAX_SUBSCRIPTION_BYTES);
        let outcome: i64 = self.connector.invoke(&call).await?;
        Ok(match outcome {
            1 => Subscribed::Done,
            0 => Subscribed::Unchanged,
            -1 => Subscribed::Missing,
            -2 => Subscribed::Fenced,
            -3 => Subscribed::Full,
            _ => return Err(Error::Redis(format!("unexpected reply from the subscribe script: {outcome}"))),
        })
    }

    /// The record, or `None` if there is none (unknown or expired).
    pub async fn lookup(&self, session: &str, ttl_ms: u64) -> Result<Option<Record>> {
        let key = record_key(&self.prefix, session);
        let mut call = self.lookup.key(&key);
        call.arg(ttl_ms);
        let fields: Vec<(String, String)> = self.connector.invoke(&call).await?;
        Ok(if fields.is_empty() { None } else { Some(Record::from_fields(fields)) })
    }
}

/// A session record, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub state: String,
    /// Bumped by every transition.
    pub version: i64,
    pub principal: String,
    /// The node that created the session.
    pub node: String,
    /// The node that holds its live state now.
    pub owner: String,
    pub epoch: i64,
    /// The client's `initialize` params, as JSON.
    pub init: String,
    pub protocol: Option<String>,
    /// The resources the client subscribed to (`resources/subscribe`), sorted.
    pub subscriptions: Vec<String>,
}

/// The prefix of a record's resource-subscription fields.
const SUBSCRIPTION: &str = "sub:";

impl Record {
    /// From the hash's fields. A record written before ownership existed names its
    /// creator (`node`) and no `owner`: the creator owns it.
    #[must_use]
    pub fn from_fields(fields: Vec<(String, String)>) -> Record {
        let mut record = Record {
            state: String::new(),
            version: 0,
            principal: String::new(),
            node: String::new(),
            owner: String::new(),
            epoch: 0,
            init: "null".to_owned(),
            protocol: None,
            subscriptions: Vec::new(),
        };
        for (name, value) in fields {
            if let Some(uri) = name.strip_prefix(SUBSCRIPTION) {
                record.subscriptions.push(uri.to_owned());
                continue;
            }
            match name.as_str() {
                "state" => record.state = value,
                "version" => record.version = value.parse().unwrap_or(0),
                "principal" => record.principal = value,
                "node" => record.node = value,
                "owner" => record.owner = value,
                "epoch" => record.epoch = value.parse().unwrap_or(0),
                "init" => record.init = value,
                "protocol" => record.protocol = Some(value),
                _ => {}
            }
        }
        if record.owner.is_empty() {
            record.owner.clone_from(&record.node);
        }
        record.subscriptions.sort_unstable();
        record
    }
}

#[cfg(test)]
mod tests {
    use super::{Record, Records, Subscribed, MAX_SUBSCRIPTION_BYTES};
    use crate::sessions::state::State;
    use crate::testing::RedisServer;

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn a_record_is_read_from_its_fields() {
        let mut found = fields(&[
            ("state", "ACTIVE"),
            ("version", "3"),
            ("node", "n1"),
            ("epoch", "7"),
            ("init", "{}"),
            ("principal", "alice"),
        ]);
        let expected = Record {
            state: "ACTIVE".into(),
            version: 3,
            principal: "alice".into(),
            node: "n1".into(),
            owner: "n1".into(),
            epoch: 7,
            init: "{}".into(),
            protocol: None,
            subscriptions: Vec::new(),
        };
        assert_eq!(Record::from_fields(found.clone()), expected, "the creator owns a record without an owner");
        found.push(("owner".into(), "n2".into()));
        assert_eq!(Record::from_fields(found).owner, "n2", "owner, once set, wins over the creator");
    }

    #[test]
    fn subscriptions_are_read_from_their_fields_sorted() {
        let found = [("state", "ACTIVE"), ("sub:b://2", "1"), ("subs_bytes", "14"), ("sub:a://1", "1")];
        let record = Record::from_fields(found.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect());
        assert_eq!(record.subscriptions, ["a://1", "b://2"]);
    }

    #[tokio::test]
    async fn a_subscription_is_recorded_once_bounded_in_bytes_and_fenced() {
        let redis = RedisServer::start();
        let records = Records::new("t", redis.connector());
        assert_eq!(records.subscribe("s", "a://1", true, None).await.unwrap(), Subscribed::Missing, "no record");
        assert!(records.create("s", "n1", "", "{}", 60_000).await.unwrap());
        assert_eq!(records.subscribe("s", "a://1", true, Some(1)).await.unwrap(), Subscribed::Done);
        assert_eq!(records.subscribe("s", "a://1", true, Some(1)).await.unwrap(), Subscribed::Unchanged);
        assert_eq!(records.subscribe("s", "b://2", true, Some(2)).await.unwrap(), Subscribed::Fenced, "a stale owner");
        let subscribed = records.lookup("s", 60_000).await.unwrap().unwrap().subscriptions;
        assert_eq!(subscribed, ["a://1"]);

        // Up to the byte bound and no further; an unsubscribe makes room again.
        let big = "u".repeat(8 * 1024);
        let mut taken = "a://1".len();
        for i in 0.. {
            let uri = format!("{i:04}{big}")[..8 * 1024].to_owned();
            let outcome = records.subscribe("s", &uri, true, None).await.unwrap();
            if taken + uri.len() > MAX_SUBSCRIPTION_BYTES {
                assert_eq!(outcome, Subscribed::Full, "past {MAX_SUBSCRIPTION_BYTES} bytes");
                break;
            }
            assert_eq!(outcome, Subscribed::Done);
            taken += uri.len();
        }
        assert_eq!(records.subscribe("s", "a://1", false, None).await.unwrap(), Subscribed::Done);
        assert_eq!(records.subscribe("s", "a://1", false, None).await.unwrap(), Subscribed::Unchanged);
        assert_eq!(records.subscribe("s", "c://3", true, None).await.unwrap(), Subscribed::Done, "room again");
        assert!(records.subscribe("s", &"u".repeat(8 * 1024 + 1), true, None).await.is_err(), "a URI too long");

        // A closed session takes no more subscriptions.
        records.transition("s", State::Closed, 60_000, None, None, &[]).await.unwrap();
        assert_eq!(records.subscribe("s", "d://4", true, None).await.unwrap(), Subscribed::Missing);
    }
}
