//! Redis Cluster: how a pipeline built for one server runs on many, and where pub/sub goes.
//!
//! The core builds pipelines that mix keys of many sessions (the writer batches appends of
//! every session that has events waiting). A cluster only takes a pipeline whose keys share
//! a slot, so [`split`] cuts it into one pipeline per hash tag, keeping each one's commands
//! in order (a stream's appends must land in order), and the pieces run side by side.
//!
//! Pub/sub needs one more rule. A cluster forwards a classic PUBLISH to every node, but the
//! count PUBLISH returns, and `PUBSUB NUMSUB`, only see the node they ran on, and the relay
//! relies on that count to know that an owner heard its request. So every node of a
//! deployment subscribes on, and publishes through, one node: the primary serving slot 0,
//! the *hub*. Publishes from scripts (the relay's claim) reach the hub's subscribers through
//! the cluster's own forwarding. When the hub fails, its subscribers lose their connection,
//! look the hub up again and resubscribe there once the cluster has promoted a replica. A
//! failover that leaves the old hub running (`CLUSTER FAILOVER`) breaks no connection, so
//! each relay also asks every second where the hub is and follows it (`relay::listen`).

use std::collections::HashMap;

use redis::{Cmd, Pipeline, Value};

/// Where one group of a pipeline's commands runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// The slot of this hash tag (or whole key, when it has no tag).
    Slot(Vec<u8>),
    /// Commands without keys that the cluster client routes itself (PING, SCRIPT LOAD).
    Anywhere,
    /// PUBLISH and PUBSUB: the hub.
    Hub,
}

/// A pipeline's commands grouped by target, with each command's index in the original.
pub struct Group {
    pub target: Target,
    pub indices: Vec<usize>,
    pub pipeline: Pipeline,
}

fn arg(cmd: &Cmd, index: usize) -> Option<&[u8]> {
    match cmd.args_iter().nth(index)? {
        redis::Arg::Simple(bytes) => Some(bytes),
        _ => None,
    }
}

/// The part of a key that decides its slot: the first non-empty `{…}`, else the whole key.
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// Where `cmd` has to run.
pub fn target(cmd: &Cmd) -> Target {
    let name = arg(cmd, 0).map(<[u8]>::to_ascii_uppercase).unwrap_or_default();
    let key = match name.as_slice() {
        b"PUBLISH" | b"PUBSUB" => return Target::Hub,
        // EVAL/EVALSHA script numkeys key…: keyless scripts may run anywhere.
        b"EVAL" | b"EVALSHA" => match arg(cmd, 2) {
            Some(b"0") | None => None,
            Some(_) => arg(cmd, 3),
        },
        b"PING" | b"SCRIPT" | b"INFO" | b"TIME" => None,
        _ => arg(cmd, 1),
    };
    match key {
        Some(key) => Target::Slot(hash_tag(key).to_vec()),
        None => Target::Anywhere,
    }
}

/// Cuts `pipe` into groups that a cluster accepts, in order of first appearance.
pub fn split(pipe: &Pipeline) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    let mut at: HashMap<Target, usize> = HashMap::new();
    for (index, cmd) in pipe.cmd_iter().enumerate() {
        let target = target(cmd);
        // A keyless command goes alone: the cluster client fans SCRIPT LOAD out to every
        // primary and aggregates the replies only for a single command.
        let slot = match target {
            Target::Anywhere => None,
            ref t => at.get(t).copied(),
        };
        let slot = slot.unwrap_or_else(|| {
            // Refusals come back in place, as on one server with `ignore_errors()`; the
            // connector turns them into errors for callers that did not ask for that.
            let mut pipeline = redis::pipe();
            pipeline.ignore_errors();
            groups.push(Group { target: target.clone(), indices: Vec::new(), pipeline });
            if target != Target::Anywhere {
                at.insert(target, groups.len() - 1);
            }
            groups.len() - 1
        });
        groups[slot].indices.push(index);
        groups[slot].pipeline.add_command(cmd.clone());
    }
    groups
}

/// Puts the replies of each group back in the order of the original pipeline.
pub fn merge(len: usize, groups: &[Group], replies: Vec<Vec<Value>>) -> Vec<Value> {
    let mut out = vec![Value::Nil; len];
    for (group, values) in groups.iter().zip(replies) {
        for (index, value) in group.indices.iter().zip(values) {
            out[*index] = value;
        }
    }
    out
}

/// The primary serving slot 0, from a `CLUSTER SLOTS` reply: `(host, port)`.
pub fn hub_of(slots: &Value) -> Option<(String, u16)> {
    let Value::Array(ranges) = slots else { return None };
    ranges.iter().find_map(|range| {
        let Value::Array(fields) = range else { return None };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(primary))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            return None;
        };
        if *start > 0 || *end < 0 {
            return None;
        }
        let host = match primary.first()? {
            Value::BulkString(b) => String::from_utf8(b.clone()).ok()?,
            Value::SimpleString(s) => s.clone(),
            _ => return None,
        };
        let Value::Int(port) = primary.get(1)? else { return None };
        Some((host, u16::try_from(*port).ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe_of(cmds: &[&[&str]]) -> Pipeline {
        let mut pipe = redis::pipe();
        for args in cmds {
            let cmd = pipe.cmd(args[0]);
            for a in &args[1..] {
                cmd.arg(*a);
            }
        }
        pipe
    }

    #[test]
    fn hash_tags_follow_the_cluster_rule() {
        assert_eq!(hash_tag(b"p:e:{abc}:s"), b"abc");
        assert_eq!(hash_tag(b"p:n:host"), b"p:n:host");
        assert_eq!(hash_tag(b"a{}b{c}"), b"a{}b{c}");
        assert_eq!(hash_tag(b"a{b"), b"a{b");
    }

    #[test]
    fn a_pipeline_splits_by_session_and_keeps_each_ones_order() {
        let pipe = pipe_of(&[
            &["XADD", "p:e:{a}:1", "1-1", "d", "x"],
            &["XADD", "p:e:{b}:1", "1-1", "d", "x"],
            &["EVALSHA", "sha", "2", "p:s:{a}", "p:e:{a}:2", "1"],
            &["PUBLISH", "p:bus", "m"],
            &["XADD", "p:e:{a}:1", "1-2", "d", "y"],
            &["SCRIPT", "LOAD", "return 1"],
            &["PUBSUB", "NUMSUB", "p:r:n"],
        ]);
        let groups = split(&pipe);
        let shape: Vec<(Target, Vec<usize>)> = groups.iter().map(|g| (g.target.clone(), g.indices.clone())).collect();
        assert_eq!(
            shape,
            vec![
                (Target::Slot(b"a".to_vec()), vec![0, 2, 4]),
                (Target::Slot(b"b".to_vec()), vec![1]),
                (Target::Hub, vec![3, 6]),
                (Target::Anywhere, vec![5]),
            ]
        );
        let replies =
            groups.iter().map(|g| g.indices.iter().map(|i| Value::Int(i64::try_from(*i).unwrap())).collect()).collect();
        assert_eq!(merge(7, &groups, replies), (0..7).map(Value::Int).collect::<Vec<_>>());
    }

    #[test]
    fn the_hub_is_the_primary_of_slot_zero() {
        let node = |host: &str, port: i64| Value::Array(vec![Value::BulkString(host.into()), Value::Int(port)]);
        let slots = Value::Array(vec![
            Value::Array(vec![Value::Int(5461), Value::Int(10922), node("10.0.0.2", 7001)]),
            Value::Array(vec![Value::Int(0), Value::Int(5460), node("10.0.0.1", 7000), node("10.0.0.9", 7009)]),
        ]);
        assert_eq!(hub_of(&slots), Some(("10.0.0.1".to_owned(), 7000)));
        assert_eq!(hub_of(&Value::Array(vec![])), None);
    }
}
