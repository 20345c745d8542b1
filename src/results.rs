//! What the core hands Python: frozen classes and enums, one per result, so no caller
//! reads a positional tuple or compares a string. Each is built here from the core's own
//! Rust value, in one place.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::ownership::Claim as CoreClaim;
use crate::page::Page as CorePage;
use crate::relay::Incoming;
use crate::sessions::Transition as CoreTransition;

// -- session records --------------------------------------------------------------------

/// The fields of a session record the middleware reads (`SessionRecords.lookup`).
#[pyclass(frozen, eq, get_all, module = "mcp_db._core")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    state: String,
    /// Bumped by every transition.
    version: i64,
    principal: String,
    /// The node that created the session.
    node: String,
    owner: String,
    epoch: i64,
    /// The client's `initialize` params, as JSON.
    init: String,
    protocol: Option<String>,
}

#[pymethods]
impl SessionRecord {
    #[new]
    #[pyo3(signature = (*, state, owner, epoch, version = 1, principal = "", node = None, init = "null", protocol = None))]
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
    ) -> Self {
        let node = node.unwrap_or_else(|| owner.clone());
        let (principal, init) = (principal.to_owned(), init.to_owned());
        SessionRecord { state, version, principal, node, owner, epoch, init, protocol }
    }

    fn __repr__(&self) -> String {
        format!(
            "SessionRecord(state={:?}, owner={:?}, epoch={}, principal={:?})",
            self.state, self.owner, self.epoch, self.principal
        )
    }
}

impl SessionRecord {
    /// From the record's hash fields. Records written before ownership existed name their
    /// creator (`node`) and no `owner`.
    pub fn from_fields(fields: Vec<(String, String)>) -> Self {
        let mut record = SessionRecord {
            state: String::new(),
            version: 0,
            principal: String::new(),
            node: String::new(),
            owner: String::new(),
            epoch: 0,
            init: "null".to_owned(),
            protocol: None,
        };
        for (name, value) in fields {
            match name.as_str() {
                "state" => record.state = value,
                "principal" => record.principal = value,
                "owner" => record.owner = value,
                "node" => record.node = value,
                "version" => record.version = value.parse().unwrap_or(0),
                "epoch" => record.epoch = value.parse().unwrap_or(0),
                "init" => record.init = value,
                "protocol" => record.protocol = Some(value),
                _ => {}
            }
        }
        if record.owner.is_empty() {
            record.owner.clone_from(&record.node);
        }
        record
    }
}

/// Why a transition was refused.
#[pyclass(frozen, eq, hash, module = "mcp_db._core")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// No record (never created, or expired).
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

/// What `SessionRecords.transition` came to: `done`, or the `refusal` and the record's
/// `version` and `state` as they are.
#[pyclass(frozen, get_all, name = "Transition", module = "mcp_db._core")]
#[derive(Debug)]
pub struct TransitionResult {
    done: bool,
    version: i64,
    refusal: Option<Refusal>,
    state: Option<String>,
}

#[pymethods]
impl TransitionResult {
    fn __repr__(&self) -> String {
        format!("{self:?}")
    }
}

impl From<CoreTransition> for TransitionResult {
    fn from(outcome: CoreTransition) -> Self {
        let refused = |refusal, version, state| TransitionResult { done: false, version, refusal: Some(refusal), state: Some(state) };
        match outcome {
            CoreTransition::Done { version } => TransitionResult { done: true, version, refusal: None, state: None },
            CoreTransition::Missing => TransitionResult { done: false, version: 0, refusal: Some(Refusal::Missing), state: None },
            CoreTransition::Conflict { version, state } => refused(Refusal::Conflict, version, state),
            CoreTransition::Refused { version, state } => refused(Refusal::Refused, version, state),
            CoreTransition::Fenced { version, state } => refused(Refusal::Fenced, version, state),
        }
    }
}

// -- ownership ----------------------------------------------------------------------------

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

/// `Ownership.claim`'s answer: the `outcome`, and the `owner` and `epoch` the record
/// names now.
#[pyclass(frozen, get_all, name = "Claim", module = "mcp_db._core")]
#[derive(Debug)]
pub struct ClaimResult {
    outcome: ClaimOutcome,
    owner: String,
    epoch: i64,
}

#[pymethods]
impl ClaimResult {
    /// Whether this node owns the session now (`CLAIMED` or `HELD`).
    #[getter]
    fn claimed(&self) -> bool {
        matches!(self.outcome, ClaimOutcome::Claimed | ClaimOutcome::Held)
    }

    fn __repr__(&self) -> String {
        format!("{self:?}")
    }
}

impl From<CoreClaim> for ClaimResult {
    fn from(claim: CoreClaim) -> Self {
        let outcome = match (claim.claimed, claim.why.as_str()) {
            (true, "held") => ClaimOutcome::Held,
            (true, _) => ClaimOutcome::Claimed,
            (false, "closed") => ClaimOutcome::Closed,
            (false, "missing") => ClaimOutcome::Missing,
            (false, _) => ClaimOutcome::Moved,
        };
        ClaimResult { outcome, owner: claim.owner, epoch: claim.epoch }
    }
}

/// What `Ownership.touch` found of one owned session.
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

impl Touched {
    /// From the touch script's status: 1 kept, 0 expired, -1 closed, -2 moved.
    pub fn from_status(status: i64) -> Touched {
        match status {
            1 => Touched::Kept,
            -1 => Touched::Closed,
            -2 => Touched::Moved,
            _ => Touched::Expired,
        }
    }
}

// -- replay -------------------------------------------------------------------------------

/// `count` consecutive stored messages of one kind: `json` a JSON array of them exactly
/// as the SDK serialized each, `ends` the offset in `json` where each ends (native `u32`s).
/// `tag` is `q` (request), `n` (notification), `r` (response) or `e` (error).
#[pyclass(frozen, get_all, module = "mcp_db._core")]
pub struct Run {
    tag: &'static str,
    count: usize,
    json: Py<PyBytes>,
    ends: Py<PyBytes>,
}

/// One page of a replay: the event IDs, and the messages in runs.
#[pyclass(frozen, get_all, module = "mcp_db._core")]
pub struct Page {
    ids: Py<PyList>,
    runs: Py<PyList>,
}

fn tag_name(tag: u8) -> &'static str {
    match tag {
        b'q' => "q",
        b'n' => "n",
        b'r' => "r",
        b'e' => "e",
        _ => "?",
    }
}

impl Page {
    pub fn from_core(py: Python<'_>, page: &CorePage) -> PyResult<Page> {
        let runs = PyList::empty(py);
        for run in &page.runs {
            let ends: Vec<u8> = run.ends.iter().flat_map(|e| e.to_ne_bytes()).collect();
            let run = Run {
                tag: tag_name(run.tag),
                count: run.count,
                json: PyBytes::new(py, &run.json).unbind(),
                ends: PyBytes::new(py, &ends).unbind(),
            };
            runs.append(Py::new(py, run)?)?;
        }
        Ok(Page { ids: PyList::new(py, &page.ids)?.unbind(), runs: runs.unbind() })
    }
}

/// The start of a replay: the `stream` it resumes, its first `page`, and the `rest`
/// (`None` when the first page is all there is).
#[pyclass(frozen, get_all, module = "mcp_db._core")]
pub struct Replay {
    stream: String,
    page: Py<Page>,
    rest: Option<Py<PyAny>>,
}

impl Replay {
    pub fn new(py: Python<'_>, stream: String, page: &CorePage, rest: Option<Py<PyAny>>) -> PyResult<Replay> {
        Ok(Replay { stream, page: Py::new(py, Page::from_core(py, page)?)?, rest })
    }
}

// -- the relay ----------------------------------------------------------------------------

/// What relaying a request came to. One vocabulary for every layer: the *owner* is the node
/// that serves the session; the *client* is whoever sent the request.
#[pyclass(frozen, eq, hash, module = "mcp_db._core")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelayOutcome {
    /// The owner took the request on; its response follows.
    #[pyo3(name = "ACCEPTED")]
    Accepted,
    /// Nobody listens on the owner's inbox, or the owner was found gone before it took the
    /// request on: the request never runs.
    #[pyo3(name = "UNREACHABLE")]
    Unreachable,
    /// The owner did not take the request on in time; it never will.
    #[pyo3(name = "TIMEOUT")]
    Timeout,
    /// The owner was found gone after it took the request on: it may have run.
    #[pyo3(name = "OWNER_LOST")]
    OwnerLost,
    /// The owner refused it (it is shutting down).
    #[pyo3(name = "REFUSED")]
    Refused,
}

/// `Relay.forward`'s answer: the `outcome`; the `response` when `ACCEPTED`; the `reason`
/// for `OWNER_LOST` and `REFUSED`.
#[pyclass(frozen, get_all, module = "mcp_db._core")]
pub struct Forwarded {
    outcome: RelayOutcome,
    response: Option<Py<PyAny>>,
    reason: Option<String>,
}

impl Forwarded {
    pub fn new(outcome: RelayOutcome, response: Option<Py<PyAny>>, reason: Option<String>) -> Forwarded {
        Forwarded { outcome, response, reason }
    }
}

/// A request another node relayed here (`Relay.next_request`): `id` names it in
/// `claimed`, `start`, `send`, `end`; `sender` is the node that relayed it.
#[pyclass(frozen, get_all, module = "mcp_db._core")]
pub struct RelayedRequest {
    id: Py<PyBytes>,
    sender: String,
    session: String,
    head: String,
    body: Py<PyBytes>,
}

impl RelayedRequest {
    pub fn new(py: Python<'_>, incoming: Incoming) -> RelayedRequest {
        RelayedRequest {
            id: PyBytes::new(py, &incoming.id).unbind(),
            sender: incoming.from,
            session: incoming.session,
            head: incoming.head,
            body: PyBytes::new(py, &incoming.body).unbind(),
        }
    }
}

/// The parts of a relayed response, in order: a `Whole` alone, or a `Head`, `Chunk`s and
/// an `End`; a `Cut` at any point ends it early (the owner was lost, or a frame was).
#[pyclass(frozen, get_all, module = "mcp_db._core")]
pub struct Whole {
    status: u16,
    headers: Py<PyList>,
    body: Py<PyBytes>,
}

/// The status and headers of a streamed response.
#[pyclass(frozen, get_all, module = "mcp_db._core")]
pub struct Head {
    status: u16,
    headers: Py<PyList>,
}

/// A piece of a streamed response's body.
#[pyclass(frozen, get_all, module = "mcp_db._core")]
pub struct Chunk {
    data: Py<PyBytes>,
}

/// The end of a streamed response; `ok` is false if it broke off at the owner.
#[pyclass(frozen, get_all, module = "mcp_db._core")]
pub struct End {
    ok: bool,
}

/// The response broke off here: `reason` says why.
#[pyclass(frozen, get_all, module = "mcp_db._core")]
pub struct Cut {
    reason: String,
}

fn header_list(py: Python<'_>, headers: Vec<(Vec<u8>, Vec<u8>)>) -> PyResult<Py<PyList>> {
    let list = PyList::empty(py);
    for (name, value) in headers {
        list.append((PyBytes::new(py, &name), PyBytes::new(py, &value)))?;
    }
    Ok(list.unbind())
}

pub fn whole(py: Python<'_>, status: u16, headers: Vec<(Vec<u8>, Vec<u8>)>, body: &[u8]) -> PyResult<Py<PyAny>> {
    let whole = Whole { status, headers: header_list(py, headers)?, body: PyBytes::new(py, body).unbind() };
    Ok(Py::new(py, whole)?.into_any())
}

pub fn head(py: Python<'_>, status: u16, headers: Vec<(Vec<u8>, Vec<u8>)>) -> PyResult<Py<PyAny>> {
    Ok(Py::new(py, Head { status, headers: header_list(py, headers)? })?.into_any())
}

pub fn chunk(py: Python<'_>, data: &[u8]) -> PyResult<Py<PyAny>> {
    Ok(Py::new(py, Chunk { data: PyBytes::new(py, data).unbind() })?.into_any())
}

pub fn end(py: Python<'_>, ok: bool) -> PyResult<Py<PyAny>> {
    Ok(Py::new(py, End { ok })?.into_any())
}

pub fn cut(py: Python<'_>, reason: impl Into<String>) -> PyResult<Py<PyAny>> {
    Ok(Py::new(py, Cut { reason: reason.into() })?.into_any())
}

/// Adds every class of this file to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<SessionRecord>()?;
    m.add_class::<Refusal>()?;
    m.add_class::<TransitionResult>()?;
    m.add_class::<ClaimOutcome>()?;
    m.add_class::<ClaimResult>()?;
    m.add_class::<Touched>()?;
    m.add_class::<Run>()?;
    m.add_class::<Page>()?;
    m.add_class::<Replay>()?;
    m.add_class::<RelayOutcome>()?;
    m.add_class::<Forwarded>()?;
    m.add_class::<RelayedRequest>()?;
    m.add_class::<Whole>()?;
    m.add_class::<Head>()?;
    m.add_class::<Chunk>()?;
    m.add_class::<End>()?;
    m.add_class::<Cut>()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn a_record_is_read_from_its_fields() {
        let mut found =
            fields(&[("state", "ACTIVE"), ("version", "3"), ("node", "n1"), ("epoch", "7"), ("init", "{}"), ("principal", "alice")]);
        let expected = SessionRecord {
            state: "ACTIVE".into(),
            version: 3,
            principal: "alice".into(),
            node: "n1".into(),
            owner: "n1".into(),
            epoch: 7,
            init: "{}".into(),
            protocol: None,
        };
        assert_eq!(SessionRecord::from_fields(found.clone()), expected);
        found.push(("owner".into(), "n2".into()));
        assert_eq!(SessionRecord::from_fields(found).owner, "n2", "owner, once set, wins over the creator");
    }

    #[test]
    fn claims_and_touches_read_their_scripts_answers() {
        let claim = |claimed, why: &str| ClaimResult::from(CoreClaim { claimed, owner: "n".into(), epoch: 2, why: why.into() });
        assert_eq!(claim(true, "claimed").outcome, ClaimOutcome::Claimed);
        assert_eq!(claim(true, "held").outcome, ClaimOutcome::Held);
        assert_eq!(claim(false, "closed").outcome, ClaimOutcome::Closed);
        assert_eq!(claim(false, "missing").outcome, ClaimOutcome::Missing);
        assert_eq!(claim(false, "moved").outcome, ClaimOutcome::Moved);
        let statuses: Vec<Touched> = [1, 0, -1, -2].into_iter().map(Touched::from_status).collect();
        assert_eq!(statuses, [Touched::Kept, Touched::Expired, Touched::Closed, Touched::Moved]);
    }
}
