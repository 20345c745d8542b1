//! Ownership: which node holds a session's live state, and for how long it may believe so.
//!
//! ```text
//! {prefix}:n:<node>        STRING  node heartbeat (JSON: pid, host, beat, lease), PX lease
//! {prefix}:s:{<session>}   HASH    ... owner <node> epoch <n> ...   (the session record)
//! ```
//!
//! A node's lease on *all* its sessions is its heartbeat key: renewing one key per node,
//! not one per session, keeps the heartbeat O(1) however many sessions a node holds. A
//! session is owned by the node named in its record while that node's heartbeat lives.
//!
//! Takeover is a compare-and-set on `(owner, epoch)` in the record: a node that found the
//! owner's heartbeat gone claims the session only if the record still names the owner and
//! epoch it saw, and the epoch goes up by one. The epoch is the fencing token: record
//! writes and event appends of a node carry the epoch it owns, and Redis refuses them once
//! the epoch has moved on, so a node that was paused past its lease cannot write over its
//! successor (see the fenced append in `writer.rs`).

use std::sync::Arc;

use pyo3::prelude::*;

use crate::connection::Connector;
use crate::error::{Error, Result};
use crate::keys::node_key;
use crate::keys::record_key;
use crate::sessions::{now_ms, reply_int as int, reply_text as text};


/// KEYS[1] record; ARGV node expected_owner expected_epoch ttl_ms now_ms.
/// Returns {claimed (0/1), owner, epoch, why}.
///
/// `allow-oom`: a takeover must work while Redis is at `maxmemory` with `noeviction` (it
/// overwrites three fields of a record that exists; it never makes a record). The control
/// keys stay writable; events are what Redis refuses first (see docs/redis.md).
const CLAIM: &str = r#"#!lua flags=allow-oom
local r = redis.call('HMGET', KEYS[1], 'state', 'owner', 'epoch')
if not r[1] then return {0, '', 0, 'missing'} end
local owner, epoch = r[2] or '', tonumber(r[3]) or 0
if r[1] == 'CLOSED' then return {0, owner, epoch, 'closed'} end
if owner == ARGV[1] then return {1, owner, epoch, 'held'} end
if owner ~= ARGV[2] or epoch ~= tonumber(ARGV[3]) then return {0, owner, epoch, 'moved'} end
epoch = epoch + 1
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'epoch', epoch, 'updated', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {1, ARGV[1], epoch, 'claimed'}
"#;

/// KEYS[1] node heartbeat; ARGV info lease_ms. Renews the lease; returns the previous
/// heartbeat (nil if it had lapsed). A script, not a plain `SET ... PX`, only for
/// `allow-oom`: Redis refuses `SET` at `maxmemory`, and a node whose lease could not be
/// renewed would look dead to every other node while it serves its sessions. The key is
/// one small string per node, overwritten in place.
const HEARTBEAT: &str = r#"#!lua flags=allow-oom
return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'GET')
"#;

/// KEYS[1] record; ARGV epoch ttl_ms. Slides the idle TTL of a session its owner used:
/// 1 done, 0 the record is gone (expired), -1 closed, -2 another node owns it now.
/// Only PEXPIRE writes, which Redis allows at `maxmemory`, so it needs no flags.
const TOUCH: &str = r#"
local r = redis.call('HMGET', KEYS[1], 'state', 'epoch')
if not r[1] then return 0 end
if r[1] == 'CLOSED' then return -1 end
if r[2] ~= ARGV[1] then return -2 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;

pub struct Claim {
    pub claimed: bool,
    pub owner: String,
    pub epoch: i64,
    pub why: String,
}

pub struct Owner {
    prefix: String,
    node: String,
    heartbeat_key: String,
    lease_ms: u64,
    connector: Arc<Connector>,
    claim: redis::Script,
    heartbeat: redis::Script,
}

impl Owner {
    pub fn new(prefix: &str, node: &str, lease_ms: u64, connector: Arc<Connector>) -> Owner {
        Owner {
            prefix: prefix.to_owned(),
            node: node.to_owned(),
            heartbeat_key: node_key(prefix, node),
            lease_ms,
            connector,
            claim: redis::Script::new(CLAIM),
            heartbeat: redis::Script::new(HEARTBEAT),
        }
    }

    /// Renews this node's lease; `false` if the heartbeat had lapsed (or never existed), so
    /// the caller knows another node may have taken its sessions meanwhile.
    pub async fn beat(&self, info: &str) -> Result<bool> {
        let mut call = self.heartbeat.key(&self.heartbeat_key);
        call.arg(info).arg(self.lease_ms);
        let reply: redis::Value = self.connector.invoke(&call).await?;
        Ok(matches!(reply, redis::Value::BulkString(_)))
    }

    /// Gives up this node's lease at once (graceful shutdown): others take over without
    /// waiting for it to expire.
    pub async fn release(&self) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(&self.heartbeat_key);
        self.connector.query(&pipe).await?;
        Ok(())
    }

    /// Whether `node`'s heartbeat lives.
    pub async fn alive(&self, node: &str) -> Result<bool> {
        let mut pipe = redis::pipe();
        pipe.cmd("EXISTS").arg(node_key(&self.prefix, node));
        let reply = self.connector.query(&pipe).await?;
        Ok(int(reply.first()) == 1)
    }

    /// Takes `session` over from `expected_owner` at `expected_epoch` (see the module doc).
    pub async fn claim(&self, session: &str, expected_owner: &str, expected_epoch: i64, ttl_ms: u64) -> Result<Claim> {
        let key = record_key(&self.prefix, session);
        let mut call = self.claim.key(&key);
        call.arg(&self.node).arg(expected_owner).arg(expected_epoch).arg(ttl_ms).arg(now_ms());
        let reply: Vec<redis::Value> = self.connector.invoke(&call).await?;
        Ok(Claim {
            claimed: int(reply.first()) == 1,
            owner: text(reply.get(1)),
            epoch: int(reply.get(2)),
            why: text(reply.get(3)),
        })
    }

    /// Slides the TTL of sessions this node owns and used: one status per session (see
    /// `TOUCH`). One pipeline, whatever the count.
    pub async fn touch(&self, sessions: &[(String, i64)], ttl_ms: u64) -> Result<Vec<i64>> {
        if sessions.is_empty() {
            return Ok(Vec::new());
        }
        // EVAL, not EVALSHA: a pipeline cannot reload a script Redis forgot in a restart.
        let mut pipe = redis::pipe();
        for (session, epoch) in sessions {
            pipe.cmd("EVAL")
                .arg(TOUCH)
                .arg(1)
                .arg(record_key(&self.prefix, session))
                .arg(epoch)
                .arg(ttl_ms);
        }
        let reply = self.connector.query(&pipe).await?;
        Ok(reply.iter().map(|v| int(Some(v))).collect())
    }
}

/// This node's lease and its takeovers (`RedisEvents.ownership(node, lease_ms)`).
#[pyclass(frozen, module = "mcp_db._core")]
pub struct Ownership {
    owner: Arc<Owner>,
}

impl Ownership {
    pub fn new(owner: Owner) -> Ownership {
        Ownership { owner: Arc::new(owner) }
    }
}

#[pymethods]
impl Ownership {
    #[getter]
    fn node(&self) -> &str {
        &self.owner.node
    }

    #[getter]
    fn lease_ms(&self) -> u64 {
        self.owner.lease_ms
    }

    /// Renews the lease; `False` if it had lapsed.
    fn beat<'py>(&self, py: Python<'py>, info: String) -> PyResult<Bound<'py, PyAny>> {
        let owner = self.owner.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move { Ok(owner.beat(&info).await?) })
    }

    fn release<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let owner = self.owner.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move { Ok(owner.release().await?) })
    }

    fn alive<'py>(&self, py: Python<'py>, node: String) -> PyResult<Bound<'py, PyAny>> {
        let owner = self.owner.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move { Ok(owner.alive(&node).await?) })
    }

    /// Takes `session` over from `expected_owner` at `expected_epoch` (`results::ClaimResult`).
    fn claim<'py>(
        &self,
        py: Python<'py>,
        session: String,
        expected_owner: String,
        expected_epoch: i64,
        ttl_ms: u64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let owner = self.owner.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let c = owner.claim(&session, &expected_owner, expected_epoch, ttl_ms).await?;
            Ok(crate::results::ClaimResult::from(c))
        })
    }

    fn touch<'py>(&self, py: Python<'py>, sessions: Vec<(String, i64)>, ttl_ms: u64) -> PyResult<Bound<'py, PyAny>> {
        let owner = self.owner.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let statuses = owner.touch(&sessions, ttl_ms).await?;
            Ok(statuses.into_iter().map(crate::results::Touched::from_status).collect::<Vec<_>>())
        })
    }
}

pub fn check_lease(lease_ms: u64) -> Result<u64> {
    if lease_ms < 100 {
        return Err(Error::Config(format!("lease must be at least 0.1 s, got {lease_ms} ms")));
    }
    Ok(lease_ms)
}
