//! `Ownership`: this node's lease and its takeovers, as seen from Python (see
//! `mcp_db_core::sessions::ownership`), and what they hand back: `Claim`, `ClaimOutcome`
//! and `Touched`.

use std::sync::Arc;

use mcp_db_core::sessions::ownership::{self, Owner};
use pyo3::prelude::*;

use crate::bridge;

use crate::error::to_py;

/// This node's lease and its takeovers (`Deployment.ownership(node, lease_ms)`).
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
        bridge::future(py, async move { owner.beat(&info).await.map_err(to_py) })
    }

    fn release<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let owner = self.owner.clone();
        bridge::future(py, async move { owner.release().await.map_err(to_py) })
    }

    fn alive<'py>(&self, py: Python<'py>, node: String) -> PyResult<Bound<'py, PyAny>> {
        let owner = self.owner.clone();
        bridge::future(py, async move { owner.alive(&node).await.map_err(to_py) })
    }

    /// Takes `session` over from `expected_owner` at `expected_epoch`.
    fn claim<'py>(
        &self,
        py: Python<'py>,
        session: String,
        expected_owner: String,
        expected_epoch: i64,
        ttl_ms: u64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let owner = self.owner.clone();
        bridge::future(py, async move {
            let claim = owner.claim(&session, &expected_owner, expected_epoch, ttl_ms).await.map_err(to_py)?;
            Ok(Claim { outcome: claim.outcome.into(), owner: claim.owner, epoch: claim.epoch })
        })
    }

    /// Hands `session`, owned here at `epoch`, to node `to` (`CLAIMED`: `to` owns it now).
    fn hand_off<'py>(
        &self,
        py: Python<'py>,
        session: String,
        to: String,
        epoch: i64,
        ttl_ms: u64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let owner = self.owner.clone();
        bridge::future(py, async move {
            let claim = owner.hand_off(&session, &to, epoch, ttl_ms).await.map_err(to_py)?;
            Ok(Claim { outcome: claim.outcome.into(), owner: claim.owner, epoch: claim.epoch })
        })
    }

    /// Slides the TTL of the `(session, epoch)` pairs this node owns and used.
    fn touch<'py>(&self, py: Python<'py>, sessions: Vec<(String, i64)>, ttl_ms: u64) -> PyResult<Bound<'py, PyAny>> {
        let owner = self.owner.clone();
        bridge::future(py, async move {
            let found = owner.touch(&sessions, ttl_ms).await.map_err(to_py)?;
            Ok(found.into_iter().map(Touched::from).collect::<Vec<_>>())
        })
    }
}

/// What a claim of a session came to.
#[pyclass(frozen, eq, hash, module = "mcp_db._core")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClaimOutcome {
    /// This node took the session over (epoch + 1).
    #[pyo3(name = "CLAIMED")]
    Claimed,
    /// This node held it already (a concurrent request here claimed it first).
    #[pyo3(name = "HELD")]
    Held,
    /// Another node owns it now.
    #[pyo3(name = "MOVED")]
    Moved,
    #[pyo3(name = "CLOSED")]
    Closed,
    /// No record: never created, or expired.
    #[pyo3(name = "MISSING")]
    Missing,
}

impl From<ownership::ClaimOutcome> for ClaimOutcome {
    fn from(outcome: ownership::ClaimOutcome) -> Self {
        use ownership::ClaimOutcome as O;
        match outcome {
            O::Claimed => ClaimOutcome::Claimed,
            O::Held => ClaimOutcome::Held,
            O::Moved => ClaimOutcome::Moved,
            O::Closed => ClaimOutcome::Closed,
            O::Missing => ClaimOutcome::Missing,
        }
    }
}

/// A claim's `outcome`, and the `owner` and `epoch` the record names now.
#[pyclass(frozen, get_all, module = "mcp_db._core")]
#[derive(Debug)]
pub struct Claim {
    outcome: ClaimOutcome,
    owner: String,
    epoch: i64,
}

#[pymethods]
impl Claim {
    /// Whether this node owns the session now (`CLAIMED` or `HELD`).
    #[getter]
    fn claimed(&self) -> bool {
        matches!(self.outcome, ClaimOutcome::Claimed | ClaimOutcome::Held)
    }

    fn __repr__(&self) -> String {
        format!("{self:?}")
    }
}

/// What a heartbeat's touch found of one owned session.
#[pyclass(frozen, eq, hash, module = "mcp_db._core")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Touched {
    /// Still this node's: its TTL slid forward.
    #[pyo3(name = "KEPT")]
    Kept,
    #[pyo3(name = "EXPIRED")]
    Expired,
    #[pyo3(name = "CLOSED")]
    Closed,
    /// Another node owns it now.
    #[pyo3(name = "MOVED")]
    Moved,
}

impl From<ownership::Touched> for Touched {
    fn from(found: ownership::Touched) -> Self {
        use ownership::Touched as T;
        match found {
            T::Kept => Touched::Kept,
            T::Expired => Touched::Expired,
            T::Closed => Touched::Closed,
            T::Moved => Touched::Moved,
        }
    }
}
