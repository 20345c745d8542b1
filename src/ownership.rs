//! `Ownership`: this node's lease and its takeovers, as seen from Python (see
//! `mcp_db_core::sessions::ownership`).

use std::sync::Arc;

use mcp_db_core::sessions::ownership::Owner;
use pyo3::prelude::*;

use crate::error::to_py;

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
        self.owner.node()
    }

    #[getter]
    fn lease_ms(&self) -> u64 {
        self.owner.lease_ms()
    }

    /// Renews the lease; `False` if it had lapsed.
    fn beat<'py>(&self, py: Python<'py>, info: String) -> PyResult<Bound<'py, PyAny>> {
        let owner = self.owner.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move { owner.beat(&info).await.map_err(to_py) })
    }

    fn release<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let owner = self.owner.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move { owner.release().await.map_err(to_py) })
    }

    fn alive<'py>(&self, py: Python<'py>, node: String) -> PyResult<Bound<'py, PyAny>> {
        let owner = self.owner.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move { owner.alive(&node).await.map_err(to_py) })
    }

    /// `(claimed, owner, epoch, why)`; why is `claimed`, `held`, `moved`, `closed` or
    /// `missing`.
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
            let c = owner.claim(&session, &expected_owner, expected_epoch, ttl_ms).await.map_err(to_py)?;
            Ok((c.claimed, c.owner, c.epoch, c.why))
        })
    }

    fn touch<'py>(&self, py: Python<'py>, sessions: Vec<(String, i64)>, ttl_ms: u64) -> PyResult<Bound<'py, PyAny>> {
        let owner = self.owner.clone();
        pyo3_async_runtimes::tokio::future_into_py(
            py,
            async move { owner.touch(&sessions, ttl_ms).await.map_err(to_py) },
        )
    }
}
