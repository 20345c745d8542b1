//! `SessionRecords`: session records in Redis, as seen from Python (see
//! `mcp_db_core::sessions`).

use std::sync::Arc;

use mcp_db_core::sessions::records::{Records, Transition};
use mcp_db_core::sessions::state::State;
use mcp_db_core::Error;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::error::to_py;

/// Session records in Redis, sharing a store's connection (`RedisEvents.sessions()`).
#[pyclass(frozen, module = "mcp_db._core")]
pub struct SessionRecords {
    records: Arc<Records>,
}

impl SessionRecords {
    pub fn new(records: Records) -> SessionRecords {
        SessionRecords { records: Arc::new(records) }
    }
}

fn parse_state(name: &str) -> PyResult<State> {
    State::parse(name).ok_or_else(|| {
        to_py(Error::Config(format!(
            "unknown session state {name:?}; expected one of INITIALIZING, INITIALIZED, ACTIVE, CLOSED"
        )))
    })
}

#[pymethods]
impl SessionRecords {
    /// Creates an INITIALIZING record; `False` if one exists already.
    fn create<'py>(
        &self,
        py: Python<'py>,
        session: String,
        node: String,
        principal: String,
        init: String,
        ttl_ms: u64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let records = self.records.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            records.create(&session, &node, &principal, &init, ttl_ms).await.map_err(to_py)
        })
    }

    /// Moves the record to `state`: `(True, version)` or `(False, reason, version, state)`,
    /// reason being `missing`, `conflict` (version mismatch), `refused` (not allowed) or
    /// `fenced` (`epoch` given and another node owns the session now).
    #[pyo3(signature = (session, state, ttl_ms, expected_version=None, fields=Vec::new(), epoch=None))]
    #[allow(clippy::too_many_arguments)] // mirrors the keyword arguments Python sees
    fn transition<'py>(
        &self,
        py: Python<'py>,
        session: String,
        state: &str,
        ttl_ms: u64,
        expected_version: Option<i64>,
        fields: Vec<(String, String)>,
        epoch: Option<i64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let to = parse_state(state)?;
        let records = self.records.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let outcome =
                records.transition(&session, to, ttl_ms, expected_version, epoch, &fields).await.map_err(to_py)?;
            Python::attach(|py| -> PyResult<Py<PyAny>> {
                let tuple = match outcome {
                    Transition::Done { version } => (true, version).into_pyobject(py)?.into_any(),
                    Transition::Missing => (false, "missing", 0, "").into_pyobject(py)?.into_any(),
                    Transition::Conflict { version, state } => {
                        (false, "conflict", version, state).into_pyobject(py)?.into_any()
                    }
                    Transition::Refused { version, state } => {
                        (false, "refused", version, state).into_pyobject(py)?.into_any()
                    }
                    Transition::Fenced { version, state } => {
                        (false, "fenced", version, state).into_pyobject(py)?.into_any()
                    }
                };
                Ok(tuple.unbind())
            })
        })
    }

    /// Deletes the record of a session whose creation this node gave up on, if Redis wrote
    /// it after all and it is still this node's and unused; `True` if one was deleted.
    fn forget_unlearned<'py>(&self, py: Python<'py>, session: String, node: String) -> PyResult<Bound<'py, PyAny>> {
        let records = self.records.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            records.forget_unlearned(&session, &node).await.map_err(to_py)
        })
    }

    /// The record as a dict (and its idle TTL slid forward), or `None`.
    fn lookup<'py>(&self, py: Python<'py>, session: String, ttl_ms: u64) -> PyResult<Bound<'py, PyAny>> {
        let records = self.records.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let Some(fields) = records.lookup(&session, ttl_ms).await.map_err(to_py)? else { return Ok(None) };
            Python::attach(|py| -> PyResult<Option<Py<PyAny>>> {
                let dict = PyDict::new(py);
                for (name, value) in fields {
                    dict.set_item(name, value)?;
                }
                Ok(Some(dict.into_any().unbind()))
            })
        })
    }
}
