//! One lazily opened, auto-reconnecting Redis connection per store.
//!
//! `ConnectionManager` multiplexes every concurrent command over one socket, which is
//! what pipelines concurrent appends together, and reconnects by itself after a fault.
//! The first connection is opened on first use so that constructing a store never blocks,
//! and a failure to open it names the server so a wrong URL is obvious.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use crate::error::{Error, Result};

pub struct Connector {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// `redis://host:port/db` with no credentials: safe to put in logs and errors.
    server: String,
    timeout: Duration,
    cell: OnceCell<ConnectionManager>,
}

impl Connector {
    /// Parses `url` (`redis://`, `rediss://`, `unix://`) without connecting.
    pub fn new(url: &str, timeout: Duration) -> Result<Connector> {
        let client = redis::Client::open(url)
            .map_err(|e| Error::Config(format!("invalid Redis URL {:?}: {e}", redact(url))))?;
        let info = client.get_connection_info();
        let scheme = url.split("://").next().unwrap_or("redis");
        let server = format!("{scheme}://{}/{}", info.addr(), info.redis_settings().db());
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        Ok(Connector { client, config, server, timeout, cell: OnceCell::new() })
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    /// The shared connection, opening it on first use.
    pub async fn get(&self) -> Result<ConnectionManager> {
        let manager = self
            .cell
            .get_or_try_init(|| async {
                let connect = ConnectionManager::new_with_config(self.client.clone(), self.config.clone());
                match tokio::time::timeout(self.timeout, connect).await {
                    Ok(Ok(manager)) => Ok(manager),
                    Ok(Err(e)) => Err(Error::from_redis(&e, &self.server)),
                    Err(_) => Err(Error::Unavailable(format!(
                        "cannot reach Redis at {}: no connection within {:?}; check that redis-server is running and the URL is right",
                        self.server, self.timeout
                    ))),
                }
            })
            .await?;
        Ok(manager.clone())
    }

    /// Runs a pipeline with the store's timeout, classifying failures.
    pub async fn query(&self, pipe: &redis::Pipeline) -> Result<Vec<redis::Value>> {
        let mut conn = self.get().await?;
        match tokio::time::timeout(self.timeout, pipe.query_async::<Vec<redis::Value>>(&mut conn)).await {
            Ok(Ok(values)) => Ok(values),
            Ok(Err(e)) => Err(Error::from_redis(&e, &self.server)),
            Err(_) => Err(Error::Timeout(format!(
                "Redis at {} did not answer within {:?}",
                self.server, self.timeout
            ))),
        }
    }
}

impl Connector {
    /// A new dedicated connection for SUBSCRIBE (pub/sub cannot share the multiplexed one).
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub> {
        match tokio::time::timeout(self.timeout, self.client.get_async_pubsub()).await {
            Ok(Ok(pubsub)) => Ok(pubsub),
            Ok(Err(e)) => Err(Error::from_redis(&e, &self.server)),
            Err(_) => Err(Error::Timeout(format!("Redis at {} did not answer within {:?}", self.server, self.timeout))),
        }
    }

    /// Runs a Lua script (EVALSHA, loading it on first use) with the store's timeout.
    pub async fn invoke<T: redis::FromRedisValue>(&self, call: &redis::ScriptInvocation<'_>) -> Result<T> {
        let mut conn = self.get().await?;
        match tokio::time::timeout(self.timeout, call.invoke_async::<T>(&mut conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(Error::from_redis(&e, &self.server)),
            Err(_) => Err(Error::Timeout(format!("Redis at {} did not answer within {:?}", self.server, self.timeout))),
        }
    }
}

/// Hides the password in a URL before it is shown to anyone.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{}", &rest[at + 1..])
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("rediss://:secret@h/0"), "rediss://:***@h/0");
        assert_eq!(redact("redis://h:6379/0"), "redis://h:6379/0");
    }

    #[test]
    fn bad_urls_are_config_errors() {
        for url in ["", "http://x", "redis://:99999999/0", "not a url"] {
            match Connector::new(url, Duration::from_secs(1)) {
                Err(Error::Config(msg)) => assert!(msg.contains("invalid Redis URL"), "{msg}"),
                Err(other) => panic!("{url:?}: wrong error {other:?}"),
                Ok(_) => panic!("{url:?} accepted"),
            }
        }
    }

    #[test]
    fn names_the_server_without_credentials() {
        let c = Connector::new("redis://u:pw@127.0.0.1:6390/3", Duration::from_secs(1)).unwrap();
        assert_eq!(c.server(), "redis://127.0.0.1:6390/3");
    }
}
