//! `Relay` and `Forward`: this node's end of the relay between nodes, as seen from Python
//! (see `mcp_db_core::relay`). Results that Python awaits are completed through the bridge
//! (`bridge::spawn`): built on the event loop's thread, one hand-off each.

use std::collections::HashMap;

use mcp_db_core::relay::{self, Claimed, Forwarded, Headers, Incoming, Part};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyList};

use crate::bridge;
use crate::error::to_py;

/// This node's end of the relay (`RedisEvents.relay(node, ...)`).
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
        pyo3_async_runtimes::tokio::future_into_py(py, async move { Ok(ready.await) })
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

    /// Forwards a request to `owner`: `("accepted", Forward)`, `("unreachable", None)` (it
    /// never runs), `("timeout", None)` (it never runs), `("lost", reason)` (the owner took
    /// it on and was then found gone: it may have run) or `("refused", reason)`. An error
    /// means Redis failed with the request maybe heard: do not send it again.
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
            Ok(match outcome {
                Forwarded::Accepted(f) => {
                    ("accepted", Py::new(py, Forward { forward: f })?).into_pyobject(py)?.into_any().unbind()
                }
                Forwarded::Unreachable => ("unreachable", py.None()).into_pyobject(py)?.into_any().unbind(),
                Forwarded::Timeout => ("timeout", py.None()).into_pyobject(py)?.into_any().unbind(),
                Forwarded::Refused(why) => ("refused", why).into_pyobject(py)?.into_any().unbind(),
                Forwarded::Lost(why) => ("lost", why).into_pyobject(py)?.into_any().unbind(),
            })
        })
    }

    // -- the owning side --------------------------------------------------------------------

    /// The next request relayed to this node: `(id, from_node, session, head, body)`, or
    /// `None` once the relay is closed. Its claim is under way meanwhile: run nothing of
    /// it before `claimed(id)` says it is this node's.
    fn next_request<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let next = self.relay.next_request();
        let work = async move { Ok(next.await) };
        bridge::spawn(py, work, |py, incoming: Option<Incoming>| {
            let Some(incoming) = incoming else { return Ok(py.None()) };
            let id = PyBytes::new(py, &incoming.id);
            let body = PyBytes::new(py, &incoming.body);
            Ok((id, incoming.from, incoming.session, incoming.head, body).into_pyobject(py)?.into_any().unbind())
        })
    }

    /// Whether this node won the claim of a request from `next_request`: a bool if that is
    /// decided, else an awaitable of it. `False`: the relaying node gave up; drop it.
    fn claimed<'py>(&self, py: Python<'py>, id: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        let wait = match self.relay.claimed(id).map_err(to_py)? {
            Claimed::Decided(won) => return Ok(PyBool::new(py, won).to_owned().into_any()),
            Claimed::Pending(wait) => wait,
        };
        let work = async move { Ok(wait.wait().await) };
        bridge::spawn(py, work, |py, won: bool| Ok(PyBool::new(py, won).to_owned().into_any().unbind()))
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
        Ok(Some(pyo3_async_runtimes::tokio::future_into_py(py, async move { Ok(wait.wait().await) })?))
    }

    /// Ends the response (`ok=False`: it broke off) and forgets the request.
    fn end(&self, id: &[u8], ok: bool) -> PyResult<()> {
        self.relay.end(id, ok).map_err(to_py)
    }

    /// Resolves once the relaying side went away (its client disconnected, or the node died).
    fn disconnected<'py>(&self, py: Python<'py>, id: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        let gone = self.relay.disconnected(id).map_err(to_py)?;
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            gone.await;
            Ok(())
        })
    }
}

/// A forwarded request whose response is coming: `next()` / `try_next()` yield
/// `("whole", status, headers, body)` alone, or `("start", status, headers)`, then
/// `("data", bytes)` and `("end", ok)`; or `("lost", reason)` at any point.
#[pyclass(frozen, module = "mcp_db._core")]
pub struct Forward {
    forward: relay::Forward,
}

/// A part of the response as Python sees it.
fn part_to_py(py: Python<'_>, part: Part) -> PyResult<Py<PyAny>> {
    Ok(match part {
        Part::Whole { status, headers, payload, body } => {
            let list = header_list(py, headers)?;
            ("whole", status, list, PyBytes::new(py, &payload[body])).into_pyobject(py)?.into_any().unbind()
        }
        Part::Start { status, headers } => {
            let list = header_list(py, headers)?;
            ("start", status, list).into_pyobject(py)?.into_any().unbind()
        }
        Part::Data(bytes) => ("data", PyBytes::new(py, &bytes)).into_pyobject(py)?.into_any().unbind(),
        Part::End { ok } => ("end", ok).into_pyobject(py)?.into_any().unbind(),
        Part::Lost(why) => ("lost", why).into_pyobject(py)?.into_any().unbind(),
    })
}

fn header_list(py: Python<'_>, headers: Headers) -> PyResult<Bound<'_, PyList>> {
    let list = PyList::empty(py);
    for (name, value) in headers {
        list.append((PyBytes::new(py, &name), PyBytes::new(py, &value)))?;
    }
    Ok(list)
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
            None => Ok(("lost", "relay closed").into_pyobject(py)?.into_any().unbind()),
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
