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
//! successor (see the fenced append in `events/writer/send.rs`).

use std::sync::Arc;

use crate::connection::Connector;
use crate::error::{Error, Result};
use crate::keys::node_key;
use crate::keys::record_key;
use crate::now_ms;
use crate::sessions::records::{reply_int as int, reply_text as text};

/// KEYS[1] record; ARGV node expected_owner expected_epoch ttl_ms now_ms: makes `node` the
/// owner (a takeover, or a hand-off when the owner runs it for another node).
/// Returns {claimed (0/1), owner, epoch, why}.
///
/// `allow-oom`: a takeover must work while Redis is at `maxmemory` with `noeviction` (it
/// overwrites three fields of a record that exists; it never makes a record). The control
/// keys stay writable; events are what Redis refuses first (see docs/redis.md).
const CLAIM: &str = r"#!lua flags=allow-oom
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
";

/// KEYS[1] node heartbeat; ARGV info lease_ms. Renews the lease; returns the previous
/// heartbeat (nil if it had lapsed). A script, not a plain `SET ... PX`, only for
/// `allow-oom`: Redis refuses `SET` at `maxmemory`, and a node whose lease could not be
/// renewed would look dead to every other node while it serves its sessions. The key is
/// one small string per node, overwritten in place.
const HEARTBEAT: &str = r"#!lua flags=allow-oom
return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'GET')
";

/// KEYS[1] record; ARGV epoch ttl_ms. Slides the idle TTL of a session its owner used:
/// 1 done, 0 the record is gone (expired), -1 closed, -2 another node owns it now.
/// Only PEXPIRE writes, which Redis allows at `maxmemory`, so it needs no flags.
const TOUCH: &str = r"
local r = redis.call('HMGET', KEYS[1], 'state', 'epoch')
if not r[1] then return 0 end
if r[1] == 'CLOSED' then return -1 end
if r[2] ~= ARGV[1] then return -2 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

/// What a claim of a session came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// This node took the session over (epoch + 1).
    Claimed,
    /// This node held it already (a concurrent request here claimed it first).
    Held,
    /// Another node owns it now.
    Moved,
    Closed,
    /// No record: never created, or expired.
    Missing,
}

impl ClaimOutcome {
    /// From the claim script's answer: whether it claimed, and why.
    fn read(claimed: bool, why: &str) -> ClaimOutcome {
        match (claimed, why) {
            (true, "held") => ClaimOutcome::Held,
            (true, _) => ClaimOutcome::Claimed,
            (false, "closed") => ClaimOutcome::Closed,
            (false, "missing") => ClaimOutcome::Missing,
            (false, _) => ClaimOutcome::Moved,
        }
    }
}

/// A claim's outcome, and the owner and epoch the record names now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub outcome: ClaimOutcome,
    pub owner: String,
    pub epoch: i64,
}

/// What a heartbeat's touch found of one owned session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touched {
    /// Still this node's: its TTL slid forward.
    Kept,
    Expired,
    Closed,
    /// Another node owns it now.
    Moved,
}

impl Touched {
    /// From the touch script's status: 1 kept, 0 expired, -1 closed, -2 moved.
    fn read(status: i64) -> Touched {
        match status {
            1 => Touched::Kept,
            -1 => Touched::Closed,
            -2 => Touched::Moved,
            _ => Touched::Expired,
        }
    }
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

    /// The node this lease is of.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// How long the lease lasts unless renewed.
    pub fn lease_ms(&self) -> u64 {
        self.lease_ms
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
        self.set_owner(session, &self.node, expected_owner, expected_epoch, ttl_ms).await
    }

    /// Hands `session`, which this node owns at `epoch`, to node `to`: the same
    /// compare-and-set as a claim, made by the owner for another node (epoch + 1). `Claimed`:
    /// `to` owns it now; `Held`: `to` owned it already; otherwise it was no longer this
    /// node's to give.
    pub async fn hand_off(&self, session: &str, to: &str, epoch: i64, ttl_ms: u64) -> Result<Claim> {
        self.set_owner(session, to, &self.node, epoch, ttl_ms).await
    }

    async fn set_owner(
        &self,
        session: &str,
        owner: &str,
        expected_owner: &str,
        expected_epoch: i64,
        ttl_ms: u64,
    ) -> Result<Claim> {
        let key = record_key(&self.prefix, session);
        let mut call = self.claim.key(&key);
        call.arg(owner).arg(expected_owner).arg(expected_epoch).arg(ttl_ms).arg(now_ms());
        let reply: Vec<redis::Value> = self.connector.invoke(&call).await?;
        Ok(Claim {
            outcome: ClaimOutcome::read(int(reply.first()) == 1, &text(reply.get(3))),
            owner: text(reply.get(1)),
            epoch: int(reply.get(2)),
        })
    }

    /// Slides the TTL of sessions this node owns and used: one status per session (see
    /// `TOUCH`). One pipeline, whatever the count.
    pub async fn touch(&self, sessions: &[(String, i64)], ttl_ms: u64) -> Result<Vec<Touched>> {
        if sessions.is_empty() {
            return Ok(Vec::new());
        }
        // EVAL, not EVALSHA: a pipeline cannot reload a script Redis forgot in a restart.
        let mut pipe = redis::pipe();
        for (session, epoch) in sessions {
            pipe.cmd("EVAL").arg(TOUCH).arg(1).arg(record_key(&self.prefix, session)).arg(epoch).arg(ttl_ms);
        }
        let reply = self.connector.query(&pipe).await?;
        Ok(reply.iter().map(|v| Touched::read(int(Some(v)))).collect())
    }
}

/// Refuses a lease too short to be renewed in time.
pub fn check_lease(lease_ms: u64) -> Result<u64> {
    if lease_ms < 100 {
        return Err(Error::Config(format!("lease must be at least 0.1 s, got {lease_ms} ms")));
    }
    Ok(lease_ms)
}

#[cfg(test)]
mod tests {
    use super::{ClaimOutcome, Touched};

    #[test]
    fn claims_and_touches_read_their_scripts_answers() {
        assert_eq!(ClaimOutcome::read(true, "claimed"), ClaimOutcome::Claimed);
        assert_eq!(ClaimOutcome::read(true, "held"), ClaimOutcome::Held);
        assert_eq!(ClaimOutcome::read(false, "closed"), ClaimOutcome::Closed);
        assert_eq!(ClaimOutcome::read(false, "missing"), ClaimOutcome::Missing);
        assert_eq!(ClaimOutcome::read(false, "moved"), ClaimOutcome::Moved);
        let statuses: Vec<Touched> = [1, 0, -1, -2].into_iter().map(Touched::read).collect();
        assert_eq!(statuses, [Touched::Kept, Touched::Expired, Touched::Closed, Touched::Moved]);
    }
}
