//! The sweep: requests whose peer node is gone end on both sides, so nothing waits forever
//! on a dead peer.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::frame::ReqId;
use super::Shared;
use crate::keys::{node_key, reply_channel};

/// Ends requests whose peer node is gone: its subscriber left or its heartbeat lapsed.
pub(super) async fn sweep(shared: Arc<Shared>, every: Duration) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shared.closed() => return,
        }
        let mut peers: HashSet<String> = HashSet::new();
        peers.extend(shared.pending.lock().unwrap().values().map(|p| p.owner.clone()));
        peers.extend(shared.served.lock().unwrap().values().map(|s| s.from.clone()));
        peers.remove(&shared.node);
        if peers.is_empty() {
            continue;
        }
        let peers: Vec<String> = peers.into_iter().collect();
        let mut pipe = redis::pipe();
        pipe.cmd("PUBSUB").arg("NUMSUB");
        for peer in &peers {
            pipe.arg(reply_channel(&shared.prefix, peer));
        }
        for peer in &peers {
            pipe.cmd("EXISTS").arg(node_key(&shared.prefix, peer));
        }
        let Ok(reply) = shared.connector.query(&pipe).await else { continue };
        let mut gone: HashSet<&str> = HashSet::new();
        if let Some(redis::Value::Array(numsub)) = reply.first() {
            for (peer, pair) in peers.iter().zip(numsub.chunks(2)) {
                if matches!(pair.get(1), Some(redis::Value::Int(0))) {
                    gone.insert(peer);
                }
            }
        }
        for (peer, exists) in peers.iter().zip(reply.iter().skip(1)) {
            if matches!(exists, redis::Value::Int(0)) {
                gone.insert(peer);
            }
        }
        if gone.is_empty() {
            continue;
        }
        let lost: Vec<ReqId> = shared
            .pending
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, p)| gone.contains(p.owner.as_str()))
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            shared.lost(&id, "the owner is gone");
        }
        for served in shared.served.lock().unwrap().values() {
            if gone.contains(served.from.as_str()) {
                served.cancel();
            }
        }
    }
}
