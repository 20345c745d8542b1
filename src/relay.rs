//! `Relay` and `Forward`: this node's end of the relay between nodes, as seen from Python
//! (see `mcp_db_core::relay`), and what they hand back: `Forwarded` and its
//! `RelayOutcome`, a `RelayedRequest`, and the parts of a response. Results that Python
//! awaits are completed through the bridge (`bridge::spawn`): built on the event loop's
//! thread, one hand-off each.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use mcp_db_core::relay::{self, Headers, Incoming, Part};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::bridge;
use crate::error::to_py;

/// This node's end of the relay (`Deployment.relay(node, ...)`).
#[pyclass(frozen, module = "mcp_db._core")]
pub struct Relay {
    relay: relay::Relay,
}

impl Relay {
    pub fn new(relay: relay::Relay) -> Relay {
        Relay { relay }
    }
}

#[pymethods]
impl Relay {
    #[getter]
    fn node(&self) -> &str {
        self.relay.node()
    }

    /// Waits until this node listens on its channels (at most `timeout_ms`); whether it does.
    fn ready<'py>(&self, py: Python<'py>, timeout_ms: u64) -> PyResult<Bound<'py, PyAny>> {
        let ready = self.relay.ready(timeout_ms);
        bridge::future(py, async move { Ok(ready.await) })
    }

    /// Stops taking requests (graceful shutdown); requests in flight go on.
    fn drain(&self) {
        self.relay.drain();
    }

    /// Leaves both channels and stops the background tasks; requests in flight end.
    fn close(&self) {
        self.relay.close();
    }

    fn stats(&self) -> HashMap<String, u64> {
        self.relay.stats()
    }

    // -- the relaying side ------------------------------------------------------------------

    /// Forwards a request to `owner` (see `Forwarded`). An error means Redis failed with
    /// the request maybe heard: do not send it again.
    fn forward<'py>(
        &self,
        py: Python<'py>,
        owner: String,
        session: String,
        head: String,
        body: Vec<u8>,
        accept_timeout_ms: u64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let forward = self.relay.forward(owner, session, head, body, accept_timeout_ms);
        let work = async move { forward.await.map_err(to_py) };
        bridge::spawn(py, work, |py, outcome| {
            use relay::Forwarded as F;
            let forwarded = match outcome {
                F::Accepted(forward) => Forwarded {
                    outcome: RelayOutcome::Accepted,
                    response: Some(Py::new(py, Forward { forward })?),
                    reason: None,
                },
                F::Unreachable => Forwarded::not_accepted(RelayOutcome::Unreachable, None),
                F::Timeout => Forwarded::not_accepted(RelayOutcome::Timeout, None),
                F::Refused(why) => Forwarded::not_accepted(RelayOutcome::Refused, Some(why)),
                F::OwnerLost(why) => Forwarded::not_accepted(RelayOutcome::OwnerLost, Some(why)),
            };
            Ok(Py::new(py, forwarded)?.into_any())
        })
    }

    // -- the owning side --------------------------------------------------------------------

    /// The next requests relayed to this node, as a list (at most `max`: all that have come,
    /// once one has), or `None` once the relay is closed. Each is claimed by this node
    /// already: run it. A request is claimed only when this is awaited, and asking wakes
    /// no other thread unless requests are waiting already.
    #[pyo3(signature = (max = 64))]
    fn next_requests<'py>(&self, py: Python<'py>, max: usize) -> PyResult<Bound<'py, PyAny>> {
        let (future, promise) = bridge::promise(py)?;
        let stopped = bridge::on_cancel(&future)?;
        let relay = self.relay.clone();
        let deliver = Box::new(move |taken: relay::Delivery| {
            promise.keep(Box::new(move |py, wanted| match taken {
                None => wanted.then(|| Ok(py.None())),
                Some(taken) if wanted => Some(requests_to_py(py, taken)),
                Some(taken) => {
                    for incoming in taken {
                        relay.give_back(incoming);
                    }
                    None
                }
            }));
        });
        self.relay.ask(max, Box::new(move || !stopped.load(Ordering::SeqCst)), deliver);
        Ok(future)
    }

    /// Sends the response's status and headers.
    fn start(&self, id: &[u8], status: u16, headers: Vec<(Vec<u8>, Vec<u8>)>) -> PyResult<()> {
        self.relay.start(id, status, &headers).map_err(to_py)
    }

    /// Sends a whole response in one frame and forgets the request.
    fn respond(&self, id: &[u8], status: u16, headers: Vec<(Vec<u8>, Vec<u8>)>, body: Vec<u8>) -> PyResult<()> {
        self.relay.respond(id, status, &headers, &body).map_err(to_py)
    }

    /// Sends a body chunk. `None` if the window has room, else an awaitable that resolves
    /// to whether the relaying side still wants the response (`False`: it went away).
    fn send<'py>(&self, py: Python<'py>, id: &[u8], chunk: Vec<u8>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Some(wait) = self.relay.send(id, chunk).map_err(to_py)? else { return Ok(None) };
        Ok(Some(bridge::future(py, async move { Ok(wait.wait().await) })?))
    }

    /// Ends the response (`ok=False`: it broke off) and forgets the request.
    fn end(&self, id: &[u8], ok: bool) -> PyResult<()> {
        self.relay.end(id, ok).map_err(to_py)
    }

    /// Resolves once the relaying side went away (its client disconnected, or the node
    /// died). Nothing runs on the I/O thread for it until then: most responses end first.
    fn disconnected<'py>(&self, py: Python<'py>, id: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        let (future, promise) = bridge::promise(py)?;
        let gone = Box::new(move || promise.keep(Box::new(|py, wanted| wanted.then(|| Ok(py.None())))));
        self.relay.on_disconnect(id, gone).map_err(to_py)?;
        Ok(future)
    }
}

/// A forwarded request whose response is coming: `next()` / `try_next()` yield its parts,
/// a `Whole` alone, or a `Head`, `Chunk`s and an `End`; a `Cut` at any point ends it early.
#[pyclass(frozen, module = "mcp_db._core")]
pub struct Forward {
    forward: relay::Forward,
}

/// Requests taken on, as Python's `RelayedRequest`s.
fn requests_to_py(py: Python<'_>, taken: Vec<Incoming>) -> PyResult<Py<PyAny>> {
    let requests = taken
        .into_iter()
        .map(|incoming| {
            let request = RelayedRequest {
                id: PyBytes::new(py, &incoming.id).unbind(),
                sender: incoming.from,
                session: incoming.session,
                head: incoming.head,
                body: PyBytes::new(py, &incoming.body).unbind(),
            };
            Py::new(py, request)
        })
        .collect::<PyResult<Vec<_>>>()?;
    Ok(PyList::new(py, requests)?.into_any().unbind())
}

/// A part of the response as Python sees it.
fn part_to_py(py: Python<'_>, part: Part) -> PyResult<Py<PyAny>> {
    Ok(match part {
        Part::Whole { status, headers, payload, body } => {
            let whole =
                Whole { status, headers: header_list(py, headers)?, body: PyBytes::new(py, &payload[body]).unbind() };
            Py::new(py, whole)?.into_any()
        }
        Part::Start { status, headers } => Py::new(py, Head { status, headers: header_list(py, headers)? })?.into_any(),
        Part::Data(bytes) => Py::new(py, Chunk { data: PyBytes::new(py, &bytes).unbind() })?.into_any(),
        Part::End { ok } => Py::new(py, End { ok })?.into_any(),
        Part::Cut(reason) => cut(py, reason)?,
    })
}

fn cut(py: Python<'_>, reason: impl Into<String>) -> PyResult<Py<PyAny>> {
    Ok(Py::new(py, Cut { reason: reason.into() })?.into_any())
}

fn header_list(py: Python<'_>, headers: Headers) -> PyResult<Py<PyList>> {
    let list = PyList::empty(py);
    for (name, value) in headers {
        list.append((PyBytes::new(py, &name), PyBytes::new(py, &value)))?;
    }
    Ok(list.unbind())
}

#[pymethods]
impl Forward {
    /// The next part of the response, waiting for it.
    fn next<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let reader = self.forward.reader();
        let frame = self.forward.next_frame();
        let work = async move { Ok(frame.await) };
        bridge::spawn(py, work, move |py, frame| match frame {
            Some(frame) => part_to_py(py, reader.accept(frame)),
            None => cut(py, "relay closed"),
        })
    }

    /// The next part if it has arrived, else `None` (no waiting, no thread hop).
    fn try_next(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.forward.try_next().map(|part| part_to_py(py, part)).transpose()
    }

    /// Tells the owner the client went away; the response ends there.
    fn cancel(&self) {
        self.forward.cancel();
    }
}

/// What relaying a request came to. One vocabulary in every layer: the *owner* is the node
/// that serves the session, the *client* whoever sent the request.
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
    /// The owner refused it (it is shutting down): it never runs.
    #[pyo3(name = "REFUSED")]
    Refused,
}

/// `Relay.forward`'s answer: the `outcome`; the `response` when `ACCEPTED`; the `reason`
/// for `OWNER_LOST` and `REFUSED`.
#[pyclass(frozen, get_all, module = "mcp_db._core")]
pub struct Forwarded {
    outcome: RelayOutcome,
    response: Option<Py<Forward>>,
    reason: Option<String>,
}

impl Forwarded {
    fn not_accepted(outcome: RelayOutcome, reason: Option<String>) -> Forwarded {
        Forwarded { outcome, response: None, reason }
    }
}

/// A request another node relayed here, claimed by this node (`Relay.next_requests`): `id`
/// names it in `start`, `send`, `respond` and `end`; `sender` is the node that relayed it.
#[pyclass(frozen, get_all, module = "mcp_db._core")]
pub struct RelayedRequest {
    id: Py<PyBytes>,
    sender: String,
    session: String,
    head: String,
    body: Py<PyBytes>,
}

/// A whole response, in one part.
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

/// The response broke off here (the owner was lost, or a frame was): `reason` says why.
#[pyclass(frozen, get_all, module = "mcp_db._core")]
pub struct Cut {
    reason: String,
}
