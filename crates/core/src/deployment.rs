//! A deployment: one key prefix on one Redis (or Redis Cluster), shared by every node, and
//! one connection to it.
//!
//! Everything a node needs from Redis is built from here: the event store, session records,
//! the node's ownership lease, the relay and the bus. They share the connection (the relay
//! and the bus open a dedicated one for their subscriptions). A one-shot command (`mcp-db
//! sessions close`) builds a deployment and the one part it needs, nothing else.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;

use crate::connection::Connector;
use crate::error::{Error, Result};
use crate::events::{positive_ms, Completion, Fences, Options, Store};
use crate::keys::validate_prefix;
use crate::relay::{Relay, RelayOptions};
use crate::sessions::bus::Bus;
use crate::sessions::ownership::{check_lease, Owner};
use crate::sessions::records::Records;
use crate::subscriptions;

/// One prefix on one Redis, and the connection to it. Cheap to share behind an `Arc`.
pub struct Deployment {
    connector: Arc<Connector>,
    prefix: String,
    fences: Fences,
    runtime: Handle,
}

impl Deployment {
    /// Parses `url`; connects on first use. Background tasks (the writer, the relay's and
    /// the bus's subscriptions) run on `runtime`.
    pub fn new(url: &str, prefix: &str, timeout_seconds: f64, runtime: &Handle) -> Result<Self> {
        validate_prefix(prefix).map_err(Error::Config)?;
        let timeout = Duration::from_millis(positive_ms("timeout_seconds", timeout_seconds)?);
        let connector = Arc::new(Connector::new(url, timeout)?);
        Ok(Deployment { connector, prefix: prefix.to_owned(), fences: Fences::default(), runtime: runtime.clone() })
    }

    /// The same deployment for a process forked from this one: its own connection, not
    /// opened yet, no fences (the child owns no session yet), and background tasks on
    /// `runtime`, the child's. This one's connection and tasks live on the parent's threads,
    /// which a fork does not copy: used in the child they would never answer.
    #[must_use]
    pub fn reopen(&self, runtime: &Handle) -> Deployment {
        Deployment {
            connector: Arc::new(self.connector.reopen()),
            prefix: self.prefix.clone(),
            fences: Fences::default(),
            runtime: runtime.clone(),
        }
    }

    /// The server, without credentials.
    #[must_use]
    pub fn server(&self) -> &str {
        self.connector.server()
    }

    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Opens the connection; fails naming the server if it cannot.
    pub fn connect(&self) -> impl Future<Output = Result<()>> + Send + 'static {
        let connector = self.connector.clone();
        async move {
            let mut ping = redis::pipe();
            ping.cmd("PING");
            connector.query(&ping).await?;
            Ok(())
        }
    }

    /// The event store; its writer starts now. `W` is how an append's caller is told its
    /// event ID.
    pub fn events<W: Completion>(&self, options: &Options) -> Result<Store<W>> {
        Store::start(self.connector.clone(), &self.prefix, self.fences.clone(), options, &self.runtime)
    }

    /// Session records.
    #[must_use]
    pub fn records(&self) -> Records {
        Records::new(&self.prefix, self.connector.clone())
    }

    /// From now on, the event store writes to `session` only while its record names `epoch`
    /// (`None`: unconditionally again).
    pub fn fence(&self, session: String, epoch: Option<i64>) {
        if let Ok(mut fences) = self.fences.lock() {
            match epoch {
                Some(e) => fences.insert(session, e),
                None => fences.remove(&session),
            };
        }
    }

    /// The lease of `node` on the sessions it owns.
    pub fn owner(&self, node: &str, lease_ms: u64) -> Result<Owner> {
        let lease_ms = check_lease(lease_ms)?;
        Ok(Owner::new(&self.prefix, node, lease_ms, self.connector.clone()))
    }

    /// `node`'s end of the relay between nodes (its own pub/sub connection).
    pub fn relay(&self, node: &str, options: RelayOptions) -> Result<Relay> {
        Relay::spawn(self.connector.clone(), &self.prefix, node, options, &self.runtime)
    }

    /// The bus; it subscribes (a dedicated connection) once asked for news.
    #[must_use]
    pub fn bus(&self) -> Bus {
        Bus::new(self.connector.clone(), &self.prefix, &self.runtime)
    }

    /// The subscription bus (events for the server's subscribers, on every node); it
    /// subscribes (a dedicated connection) once asked for a delivery.
    pub fn subscriptions(&self) -> Result<subscriptions::Bus> {
        subscriptions::Bus::new(self.connector.clone(), &self.prefix, &self.runtime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::RedisServer;

    /// What a forked child sees: the runtime the deployment was built on is gone (its
    /// threads stayed with the parent). The reopened deployment works on the child's own.
    #[test]
    fn a_reopened_deployment_works_once_the_first_runtime_is_gone() {
        let redis = RedisServer::start();
        let first = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let deployment = Deployment::new(&redis.url(), "t-reopen", 2.0, first.handle()).unwrap();
        first.block_on(deployment.connect()).expect("connected on the first runtime");
        first.shutdown_background();

        let second = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let reopened = deployment.reopen(second.handle());
        assert_eq!((reopened.server(), reopened.prefix()), (deployment.server(), "t-reopen"));
        second.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), reopened.connect())
                .await
                .expect("the reopened deployment answers")
                .expect("and reaches Redis");
        });
    }
}
