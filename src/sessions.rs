//! `SessionRecords`: session records in Redis, as seen from Python (see
//! `mcp_db_core::sessions`), and the values they hand back: `SessionRecord`, `Transition`
//! and `Refusal`.

use std::sync::Arc;

use mcp_db_core::sessions::records::{self, Records};
use mcp_db_core::sessions::state::State;
use mcp_db_core::Error;
use pyo3::prelude::*;

use crate::bridge;

use crate::error::to_py;

/// Session records in Redis (`Deployment.sessions()`).
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
        bridge::future(
            py,
            async move { records.create(&session, &node, &principal, &init, ttl_ms).await.map_err(to_py) },
        )
    }

    /// Moves the record to `state`; refused as `FENCED` when `epoch` is given and another
    /// node owns the session now.
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
        bridge::future(py, async move {
            let outcome =
                records.transition(&session, to, ttl_ms, expected_version, epoch, &fields).await.map_err(to_py)?;
            Ok(Transition::from(outcome))
        })
    }

    /// Deletes the record of a session whose creation this node gave up on, if Redis wrote
    /// it after all and it is still this node's and unused; `True` if one was deleted.
    fn forget_unlearned<'py>(&self, py: Python<'py>, session: String, node: String) -> PyResult<Bound<'py, PyAny>> {
        let records = self.records.clone();
        bridge::future(py, async move { records.forget_unlearned(&session, &node).await.map_err(to_py) })
    }

    /// Records that the session's client subscribed to resource `uri` (`on=True`) or
    /// unsubscribed, as the owner at `epoch` when given (a `Subscribed`).
    #[pyo3(signature = (session, uri, on, epoch=None))]
    fn subscribe<'py>(
        &self,
        py: Python<'py>,
        session: String,
        uri: String,
        on: bool,
        epoch: Option<i64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let records = self.records.clone();
        bridge::future(py, async move {
            let outcome = records.subscribe(&session, &uri, on, epoch).await.map_err(to_py)?;
            Ok(Subscribed::from(outcome))
        })
    }

    /// The record (its idle TTL slid forward), or `None`.
    fn lookup<'py>(&self, py: Python<'py>, session: String, ttl_ms: u64) -> PyResult<Bound<'py, PyAny>> {
        let records = self.records.clone();
        bridge::future(py, async move { Ok(records.lookup(&session, ttl_ms).await.map_err(to_py)?.map(SessionRecord)) })
    }
}

/// A session record, as read (`SessionRecords.lookup`).
#[pyclass(frozen, eq, module = "mcp_db._core")]
#[derive(PartialEq, Eq)]
pub struct SessionRecord(records::Record);

#[pymethods]
impl SessionRecord {
    #[new]
    #[pyo3(signature = (
        *, state, owner, epoch, version = 1, principal = "", node = None, init = "null", protocol = None,
        subscriptions = Vec::new()
    ))]
    #[allow(clippy::too_many_arguments)] // the keyword arguments Python sees
    fn new(
        state: String,
        owner: String,
        epoch: i64,
        version: i64,
        principal: &str,
        node: Option<String>,
        init: &str,
        protocol: Option<String>,
        subscriptions: Vec<String>,
    ) -> Self {
        let node = node.unwrap_or_else(|| owner.clone());
        let (principal, init) = (principal.to_owned(), init.to_owned());
        SessionRecord(records::Record { state, version, principal, node, owner, epoch, init, protocol, subscriptions })
    }

    #[getter]
    fn state(&self) -> &str {
        &self.0.state
    }

    #[getter]
    fn version(&self) -> i64 {
        self.0.version
    }

    #[getter]
    fn principal(&self) -> &str {
        &self.0.principal
    }

    #[getter]
    fn node(&self) -> &str {
        &self.0.node
    }

    #[getter]
    fn owner(&self) -> &str {
        &self.0.owner
    }

    #[getter]
    fn epoch(&self) -> i64 {
        self.0.epoch
    }

    #[getter]
    fn init(&self) -> &str {
        &self.0.init
    }

    #[getter]
    fn protocol(&self) -> Option<&str> {
        self.0.protocol.as_deref()
    }

    /// The resources the client subscribed to (`resources/subscribe`), sorted.
    #[getter]
    fn subscriptions(&self) -> Vec<String> {
        self.0.subscriptions.clone()
    }

    fn __repr__(&self) -> String {
        let r = &self.0;
        format!("SessionRecord(state={:?}, owner={:?}, epoch={}, version={})", r.state, r.owner, r.epoch, r.version)
    }
}

/// What recording a resource subscription came to (`SessionRecords.subscribe`).
#[pyclass(frozen, eq, hash, module = "mcp_db._core")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subscribed {
    /// Recorded.
    #[pyo3(name = "DONE")]
    Done,
    /// It was so already.
    #[pyo3(name = "UNCHANGED")]
    Unchanged,
    /// No open session: never created, expired or closed.
    #[pyo3(name = "MISSING")]
    Missing,
    /// Another node owns the session at a later epoch.
    #[pyo3(name = "FENCED")]
    Fenced,
    /// The session's subscribed URIs would pass their byte bound.
    #[pyo3(name = "FULL")]
    Full,
}

impl From<records::Subscribed> for Subscribed {
    fn from(outcome: records::Subscribed) -> Self {
        match outcome {
            records::Subscribed::Done => Subscribed::Done,
            records::Subscribed::Unchanged => Subscribed::Unchanged,
            records::Subscribed::Missing => Subscribed::Missing,
            records::Subscribed::Fenced => Subscribed::Fenced,
            records::Subscribed::Full => Subscribed::Full,
        }
    }
}

/// Why a transition was refused.
#[pyclass(frozen, eq, hash, module = "mcp_db._core")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// No record: never created, or expired.
    #[pyo3(name = "MISSING")]
    Missing,
    /// The record's version is not the expected one.
    #[pyo3(name = "CONFLICT")]
    Conflict,
    /// The state machine does not allow the move.
    #[pyo3(name = "REFUSED")]
    Refused,
    /// Another node owns the session at a later epoch.
    #[pyo3(name = "FENCED")]
    Fenced,
}

/// What a transition came to: `done`, or the `refusal` and the record's `version` and
/// `state` as they are (no `state` when `MISSING`).
#[pyclass(frozen, get_all, module = "mcp_db._core")]
#[derive(Debug)]
pub struct Transition {
    done: bool,
    version: i64,
    refusal: Option<Refusal>,
    state: Option<String>,
}

#[pymethods]
impl Transition {
    fn __repr__(&self) -> String {
        format!("{self:?}")
    }
}

impl From<records::Transition> for Transition {
    fn from(outcome: records::Transition) -> Self {
        use records::Transition as T;
        let refused =
            |refusal, version, state| Transition { done: false, version, refusal: Some(refusal), state: Some(state) };
        match outcome {
            T::Done { version } => Transition { done: true, version, refusal: None, state: None },
            T::Missing => Transition { done: false, version: 0, refusal: Some(Refusal::Missing), state: None },
            T::Conflict { version, state } => refused(Refusal::Conflict, version, state),
            T::Refused { version, state } => refused(Refusal::Refused, version, state),
            T::Fenced { version, state } => refused(Refusal::Fenced, version, state),
        }
    }
}
