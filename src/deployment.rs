//! `Deployment`: one prefix on one Redis, shared by every node, as seen from Python (see
//! `mcp_db_core::deployment`). The event store, session records, ownership, the relay and
//! the bus are built from it, so Python holds one object per deployment and reaches into
//! none of them.

use mcp_db_core::deployment;
use mcp_db_core::events::Options;
use mcp_db_core::relay::{RelayOptions, MAX_AGE_MS, WINDOW_BYTES};
use pyo3::prelude::*;

use crate::bridge;

use crate::error::to_py;
use crate::runtime::runtime;

/// One prefix on one Redis (or Redis Cluster), and the connection to it.
#[pyclass(frozen, module = "mcp_db._core")]
pub struct Deployment {
    deployment: deployment::Deployment,
}

#[pymethods]
impl Deployment {
    /// Parses the URL and options (`ConfigError` if bad); does not connect.
    #[new]
    #[pyo3(signature = (url, *, prefix, timeout_seconds = 5.0))]
    fn new(url: &str, prefix: &str, timeout_seconds: f64) -> PyResult<Self> {
        let deployment =
            deployment::Deployment::new(url, prefix, timeout_seconds, runtime()?.handle()).map_err(to_py)?;
        Ok(Deployment { deployment })
    }

    /// The same deployment, with connections of its own (not opened yet) and no fences: for
    /// a process forked from the one that built this, whose connections and tasks stayed
    /// with the parent (see `mcp_db._fork`).
    fn reopen(&self) -> PyResult<Self> {
        Ok(Deployment { deployment: self.deployment.reopen(runtime()?.handle()) })
    }

    /// `scheme://host:port/db`, without credentials.
    #[getter]
    fn server(&self) -> &str {
        self.deployment.server()
    }

    #[getter]
    fn prefix(&self) -> &str {
        self.deployment.prefix()
    }

    /// Opens the connection now; `RedisUnavailableError` naming the server if it cannot.
    fn connect<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let connect = self.deployment.connect();
        bridge::future(py, async move { connect.await.map_err(to_py) })
    }

    /// The event store; its writer starts now.
    #[pyo3(signature = (*, ttl_seconds, max_events_per_stream, buffer_max_events, page_size))]
    fn events(
        &self,
        ttl_seconds: f64,
        max_events_per_stream: u64,
        buffer_max_events: usize,
        page_size: usize,
    ) -> PyResult<crate::events::RedisEvents> {
        let options = Options { ttl_seconds, max_events_per_stream, buffer_max_events, page_size };
        Ok(crate::events::RedisEvents::new(self.deployment.events(&options).map_err(to_py)?))
    }

    /// Session records.
    fn sessions(&self) -> crate::sessions::SessionRecords {
        crate::sessions::SessionRecords::new(self.deployment.records())
    }

    /// From now on, the event store writes to `session` only while its record names `epoch`
    /// (`None`: unconditionally again).
    #[pyo3(signature = (session, epoch))]
    fn fence(&self, session: String, epoch: Option<i64>) {
        self.deployment.fence(session, epoch);
    }

    /// The lease of `node` on the sessions it owns.
    fn ownership(&self, node: &str, lease_ms: u64) -> PyResult<crate::ownership::Ownership> {
        Ok(crate::ownership::Ownership::new(self.deployment.owner(node, lease_ms).map_err(to_py)?))
    }

    /// `node`'s end of the relay between nodes (its own pub/sub connection). With `secret`
    /// (shared by every node) every frame is sealed.
    #[pyo3(signature = (node, *, window=64, window_bytes=WINDOW_BYTES, sweep_ms=1000, secret=None, max_age_ms=MAX_AGE_MS))]
    fn relay(
        &self,
        node: &str,
        window: u32,
        window_bytes: u64,
        sweep_ms: u64,
        secret: Option<Vec<u8>>,
        max_age_ms: u64,
    ) -> PyResult<crate::relay::Relay> {
        let options = RelayOptions { window, window_bytes, sweep_ms, secret, max_age_ms };
        Ok(crate::relay::Relay::new(self.deployment.relay(node, options).map_err(to_py)?))
    }

    /// The bus; it subscribes (a dedicated connection) once asked for news.
    fn bus(&self) -> crate::bus::Bus {
        crate::bus::Bus::new(self.deployment.bus())
    }

    /// The subscription bus: events for the server's subscribers, on every node. It
    /// subscribes (a dedicated connection) once asked for a delivery.
    fn subscriptions(&self) -> PyResult<crate::subscriptions::SubscriptionBus> {
        Ok(crate::subscriptions::SubscriptionBus::new(self.deployment.subscriptions().map_err(to_py)?))
    }

    fn __repr__(&self) -> String {
        format!("<Deployment {} prefix={:?}>", self.deployment.server(), self.deployment.prefix())
    }
}
