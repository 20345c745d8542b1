//! mcp-db's core, without Python: a deployment (one prefix on one Redis, from which the
//! rest is built), the Redis key layout and connection, the event store
//! (IDs, replay pages, the batching writer, the in-memory backend), session records and
//! ownership, the bus, and the relay between nodes.
//!
//! Nothing here owns a runtime: whatever spawns background tasks takes a
//! [`tokio::runtime::Handle`]. The Python binding (`mcp_db._core`) is adapters over this.

pub mod cluster;
pub mod connection;
pub mod deployment;
pub mod error;
pub mod events;
pub mod keys;
pub mod relay;
pub mod sessions;
pub mod subscriptions;

#[cfg(test)]
pub(crate) mod testing;

pub use error::{Error, Result};

/// Installs ring as the process-wide TLS crypto provider `rediss://` needs, unless another
/// library installed one already.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
