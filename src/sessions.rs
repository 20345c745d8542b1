//! Session records: one Redis hash per MCP session, changed only by server-side scripts.
//!
//! ```text
//! {prefix}:s:{<session>}   HASH  state version init principal node owner epoch created updated
//! ```
//!
//! `node` is the node that created the session; `owner` and `epoch` say which node holds
//! its live state now (see `ownership.rs`).
//!
//! A record walks INITIALIZING → INITIALIZED → ACTIVE → CLOSED. Every change runs as one
//! Lua script that checks the current state (and, when asked, the version) before writing,
//! so a transition that is not allowed, or that lost a race with another node, is refused
//! atomically instead of overwriting a newer state. CLOSED records stay as tombstones for
//! their TTL, so every node keeps answering 404 for a deleted session.

use std::sync::Arc;

use pyo3::prelude::*;

use crate::connection::Connector;
use crate::error::{Error, Result};
use crate::keys::record_key;

/// The states of a session record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Initializing,
    Initialized,
    Active,
    Closed,
}

impl State {
    pub const ALL: [State; 4] = [State::Initializing, State::Initialized, State::Active, State::Closed];

    pub fn name(self) -> &'static str {
        match self {
            State::Initializing => "INITIALIZING",
            State::Initialized => "INITIALIZED",
            State::Active => "ACTIVE",
            State::Closed => "CLOSED",
        }
    }

    pub fn parse(name: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether a record in `self` may move to `to`. Staying ACTIVE is allowed (it records
    /// activity); nothing leaves CLOSED.
    pub fn may_become(self, to: State) -> bool {
        use State::*;
        matches!(
            (self, to),
            (Initializing, Initialized)
                | (Initialized, Active)
                | (Active, Active)
                | (Initializing | Initialized | Active, Closed)
        )
    }
}


/// `allowed[from]` as a Lua table literal, generated from [`State::may_become`] so the
/// scripts and the Rust rules cannot drift apart.
fn lua_rules() -> String {
    let mut out = String::from("{");
    for from in State::ALL {
        out.push_str(&format!("{}={{", from.name()));
        for to in State::ALL.into_iter().filter(|to| from.may_become(*to)) {
            out.push_str(&format!("{}=true,", to.name()));
        }
        out.push_str("},");
    }
    out.push('}');
    out
}

/// KEYS[1] record; ARGV ttl_ms now_ms node principal init.
///
/// No `allow-oom`, on purpose: at `maxmemory` Redis refuses the HSET, so no new session is
/// admitted while Redis is full. Each record is small, but new sessions have no bound, and
/// letting them in would grow memory past `maxmemory` for good; the sessions that exist
/// go on (their control writes below are allowed).
const CREATE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'state', 'INITIALIZING', 'version', 1, 'node', ARGV[3],
  'owner', ARGV[3], 'epoch', 1, 'principal', ARGV[4], 'init', ARGV[5], 'created', ARGV[2], 'updated', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"#;

/// KEYS[1] record; ARGV to ttl_ms now_ms expected_version ('' for any) epoch ('' for any:
/// the fencing token of the owner writing), then field/value pairs to set. Returns
/// {1, new_version} or {0, reason, version, state}.
///
/// `allow-oom`: a session that exists must still move (INITIALIZED, ACTIVE) and close
/// while Redis is at `maxmemory`; each transition overwrites fields of a record that exists.
const TRANSITION: &str = r#"#!lua flags=allow-oom
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
"#;

/// KEYS[1] record; ARGV ttl_ms. The record, its idle TTL slid forward unless it is CLOSED
/// (a tombstone keeps the TTL it was closed with).
/// Only PEXPIRE writes, which Redis allows at `maxmemory`: no flags needed (a `#!lua` line
/// without `allow-oom` would make Redis refuse it at `maxmemory`).
const LOOKUP: &str = r#"
local record = redis.call('HGETALL', KEYS[1])
if #record == 0 then return record end
if redis.call('HGET', KEYS[1], 'state') ~= 'CLOSED' then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return record
"#;

/// KEYS[1] record; ARGV node. Deletes a record whose creation this node gave up on (Redis
/// did not answer in time, so the client got 503 and never learned the session ID), if it
/// was written after all: only while it is still this node's first epoch and unused.
/// 1 deleted, 0 absent, -1 left alone (used, or another node's).
const FORGET_UNLEARNED: &str = r#"
local r = redis.call('HMGET', KEYS[1], 'state', 'owner', 'epoch')
if not r[1] then return 0 end
if r[2] ~= ARGV[1] or r[3] ~= '1' or (r[1] ~= 'INITIALIZING' and r[1] ~= 'INITIALIZED') then return -1 end
redis.call('DEL', KEYS[1])
return 1
"#;

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

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

/// Outcome of a transition, for Python.
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
            if matches!(name.as_str(), "state" | "version" | "updated" | "created" | "owner" | "epoch") {
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

    /// The record's fields, or `None` if there is no record (unknown or expired).
    pub async fn lookup(&self, session: &str, ttl_ms: u64) -> Result<Option<Vec<(String, String)>>> {
        let key = record_key(&self.prefix, session);
        let mut call = self.lookup.key(&key);
        call.arg(ttl_ms);
        let fields: Vec<(String, String)> = self.connector.invoke(&call).await?;
        Ok(if fields.is_empty() { None } else { Some(fields) })
    }
}

/// Session records in Redis, sharing a store's connection (`RedisEvents.sessions()`).
#[pyclass(frozen, module = "mcp_db._core")]
pub struct SessionRecords {
    pub(crate) records: Arc<Records>,
}

fn parse_state(name: &str) -> PyResult<State> {
    State::parse(name).ok_or_else(|| {
        Error::Config(format!("unknown session state {name:?}; expected one of INITIALIZING, INITIALIZED, ACTIVE, CLOSED")).into()
    })
}

#[pymethods]
impl SessionRecords {
    /// Creates an INITIALIZING record; `False` if one exists already.
    fn create<'py>(
        &self,
        py: Python<'py>,
        session: String,
        node: String,
        principal: String,
        init: String,
        ttl_ms: u64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let records = self.records.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            Ok(records.create(&session, &node, &principal, &init, ttl_ms).await?)
        })
    }

    /// Moves the record to `state` (see `results::TransitionResult`): refused as `FENCED`
    /// when `epoch` is given and another node owns the session now.
    #[pyo3(signature = (session, state, ttl_ms, expected_version=None, fields=Vec::new(), epoch=None))]
    #[allow(clippy::too_many_arguments)] // mirrors the keyword arguments Python sees
    fn transition<'py>(
        &self,
        py: Python<'py>,
        session: String,
        state: &str,
        ttl_ms: u64,
        expected_version: Option<i64>,
        fields: Vec<(String, String)>,
        epoch: Option<i64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let to = parse_state(state)?;
        let records = self.records.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let outcome = records.transition(&session, to, ttl_ms, expected_version, epoch, &fields).await?;
            Ok(crate::results::TransitionResult::from(outcome))
        })
    }

    /// Deletes the record of a session whose creation this node gave up on, if Redis wrote
    /// it after all and it is still this node's and unused; `True` if one was deleted.
    fn forget_unlearned<'py>(&self, py: Python<'py>, session: String, node: String) -> PyResult<Bound<'py, PyAny>> {
        let records = self.records.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move { Ok(records.forget_unlearned(&session, &node).await?) })
    }

    /// The record (its idle TTL slid forward), or `None`.
    fn lookup<'py>(&self, py: Python<'py>, session: String, ttl_ms: u64) -> PyResult<Bound<'py, PyAny>> {
        let records = self.records.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            Ok(records.lookup(&session, ttl_ms).await?.map(crate::results::SessionRecord::from_fields))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_follow_the_state_machine() {
        use State::*;
        assert!(Initializing.may_become(Initialized));
        assert!(Initialized.may_become(Active));
        assert!(Active.may_become(Active));
        for from in [Initializing, Initialized, Active] {
            assert!(from.may_become(Closed));
        }
        for to in State::ALL {
            assert!(!Closed.may_become(to), "nothing leaves CLOSED ({to:?})");
        }
        assert!(!Initializing.may_become(Active), "no skipping INITIALIZED");
        assert!(!Active.may_become(Initialized), "no going back");
    }

    #[test]
    fn lua_rules_mirror_the_rust_rules() {
        let rules = lua_rules();
        assert!(rules.contains("INITIALIZING={INITIALIZED=true,CLOSED=true,}"));
        assert!(rules.contains("CLOSED={}"));
        assert!(rules.contains("ACTIVE={ACTIVE=true,CLOSED=true,}"));
    }

    #[test]
    fn states_round_trip() {
        for s in State::ALL {
            assert_eq!(State::parse(s.name()), Some(s));
        }
        assert_eq!(State::parse("closed"), None);
    }
}
