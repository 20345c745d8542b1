//! `Deployment`: one Redis prefix that a set of nodes shares, and one connection to it.
//!
//! Everything a node needs from Redis is built from here: the event store, session
//! records, this node's ownership lease, the relay and the bus. They share the connection
//! (the relay and the bus open a dedicated one for their subscriptions), so Python holds
//! one object per deployment and reaches into none of them. A one-shot command (`mcp-db
//! sessions close`) builds a `Deployment` and the one part it needs, nothing else.

use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;

use crate::connection::Connector;
use crate::error::Error;
use crate::events::{positive_ms, EventOptions, Fences, RedisEvents};
use crate::keys::validate_prefix;

/// One prefix on one Redis (or Redis Cluster), shared by every node of a deployment.
#[pyclass(frozen, module = "mcp_db._core")]
pub struct Deployment {
    connector: Arc<Connector>,
    prefix: String,
    fences: Fences,
}

#[pymethods]
impl Deployment {
    /// Parses the URL and options (`ConfigError` if bad); does not connect.
    #[new]
    #[pyo3(signature = (url, *, prefix, timeout_seconds = 5.0))]
    fn new(url: &str, prefix: &str, timeout_seconds: f64) -> PyResult<Self> {
        validate_prefix(prefix).map_err(Error::Config)?;
        let timeout = Duration::from_millis(positive_ms("timeout_seconds", timeout_seconds)?);
        let connector = Arc::new(Connector::new(url, timeout)?);
        Ok(Deployment { connector, prefix: prefix.to_owned(), fences: Fences::default() })
    }

    /// `scheme://host:port/db`, without credentials.
    #[getter]
    fn server(&self) -> &str {
        self.connector.server()
    }

    #[getter]
    fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Opens the connection now; `RedisUnavailableError` naming the server if it cannot.
    fn connect<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let connector = self.connector.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let mut ping = redis::pipe();
            ping.cmd("PING");
            connector.query(&ping).await?;
            Ok(())
        })
    }

    /// The event store of this deployment; its writer starts now.
    #[pyo3(signature = (*, ttl_seconds, max_events_per_stream, buffer_max_events, page_size))]
    fn events(
        &self,
        ttl_seconds: f64,
        max_events_per_stream: u64,
        buffer_max_events: usize,
        page_size: usize,
    ) -> PyResult<RedisEvents> {
        let ttl_ms = positive_ms("ttl_seconds", ttl_seconds)?;
        let options = EventOptions { ttl_ms, max_events_per_stream, buffer_max_events, page_size };
        Ok(RedisEvents::start(self.connector.clone(), &self.prefix, self.fences.clone(), options)?)
    }

    /// Session records.
    fn sessions(&self) -> crate::sessions::SessionRecords {
        let records = crate::sessions::Records::new(&self.prefix, self.connector.clone());
        crate::sessions::SessionRecords { records: Arc::new(records) }
    }

    /// From now on, this deployment's event store writes to `session` only while its record
    /// names `epoch` (`None`: unconditionally again).
    #[pyo3(signature = (session, epoch))]
    fn fence(&self, session: String, epoch: Option<i64>) {
        if let Ok(mut fences) = self.fences.lock() {
            match epoch {
                Some(e) => fences.insert(session, e),
                None => fences.remove(&session),
            };
        }
    }

    /// The lease of node `node` on the sessions it owns.
    fn ownership(&self, node: &str, lease_ms: u64) -> PyResult<crate::ownership::Ownership> {
        let lease_ms = crate::ownership::check_lease(lease_ms)?;
        let owner = crate::ownership::Owner::new(&self.prefix, node, lease_ms, self.connector.clone());
        Ok(crate::ownership::Ownership::new(owner))
    }

    /// Node `node`'s end of the relay between nodes (its own pub/sub connection). With
    /// `secret` (shared by every node) every frame is sealed; see `seal.rs`.
    #[pyo3(signature = (node, *, window=64, window_bytes=crate::relay::WINDOW_BYTES, sweep_ms=1000, secret=None, max_age_ms=crate::relay::MAX_AGE_MS))]
    fn relay(
        &self,
        node: &str,
        window: u32,
        window_bytes: u64,
        sweep_ms: u64,
        secret: Option<Vec<u8>>,
        max_age_ms: u64,
    ) -> PyResult<crate::relay::Relay> {
        let options = crate::relay::RelayOptions { window, window_bytes, sweep_ms, secret, max_age_ms };
        Ok(crate::relay::Relay::spawn(self.connector.clone(), &self.prefix, node, options)?)
    }

    /// The bus: news for every node. It subscribes only once asked for news.
    fn bus(&self) -> crate::bus::Bus {
        crate::bus::Bus::new(self.connector.clone(), &self.prefix)
    }

    fn __repr__(&self) -> String {
        format!("<Deployment {} prefix={:?}>", self.connector.server(), self.prefix)
    }
}
