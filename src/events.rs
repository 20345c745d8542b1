//! `RedisEvents` and `ReplayPages`: the Redis backend of the event store, as seen from
//! Python (see `mcp_db_core::events`).

use mcp_db_core::events::page::Page;
use mcp_db_core::events::replay::{self, Next};
use mcp_db_core::events::{Options, Store};
use mcp_db_core::relay::{RelayOptions, MAX_AGE_MS, WINDOW_BYTES};
use mcp_db_core::Result;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::bridge::{Waiter, Wakeup};
use crate::error::to_py;
use crate::runtime;

/// Redis backend: batched durable appends and paged replay.
#[pyclass(frozen, module = "mcp_db._core")]
pub struct RedisEvents {
    store: Store<Waiter>,
}

/// A page as `(ids, [(tag, count, json_array, ends), …])`, `ends` as native `u32`s.
pub fn page_to_py<'py>(py: Python<'py>, page: &Page) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
    let ids = PyList::new(py, &page.ids)?;
    let runs = PyList::empty(py);
    for run in &page.runs {
        let tag = [run.tag];
        let tag = std::str::from_utf8(&tag).unwrap_or("?");
        let ends: Vec<u8> = run.ends.iter().flat_map(|e| e.to_ne_bytes()).collect();
        runs.append((tag, run.count, PyBytes::new(py, &run.json), PyBytes::new(py, &ends)))?;
    }
    Ok((ids, runs))
}

#[pymethods]
impl RedisEvents {
    #[new]
    #[pyo3(signature = (url, *, prefix, ttl_seconds, max_events_per_stream, buffer_max_events, timeout_seconds, page_size))]
    fn new(
        url: &str,
        prefix: &str,
        ttl_seconds: f64,
        max_events_per_stream: u64,
        buffer_max_events: usize,
        timeout_seconds: f64,
        page_size: usize,
    ) -> PyResult<Self> {
        let options =
            Options { prefix, ttl_seconds, max_events_per_stream, buffer_max_events, timeout_seconds, page_size };
        let store = Store::new(url, &options, runtime().handle()).map_err(to_py)?;
        Ok(RedisEvents { store })
    }

    /// The server this store talks to, without credentials.
    #[getter]
    fn server(&self) -> &str {
        self.store.server()
    }

    /// Session records under this store's prefix, on this store's connection.
    fn sessions(&self) -> crate::sessions::SessionRecords {
        crate::sessions::SessionRecords::new(self.store.records())
    }

    /// From now on, appends to `session` are written only while its record names `epoch`
    /// (`None`: unconditionally again).
    #[pyo3(signature = (session, epoch))]
    fn fence(&self, session: String, epoch: Option<i64>) {
        self.store.fence(session, epoch);
    }

    /// This node's lease on the sessions it owns, named `node`.
    fn ownership(&self, node: &str, lease_ms: u64) -> PyResult<crate::ownership::Ownership> {
        Ok(crate::ownership::Ownership::new(self.store.owner(node, lease_ms).map_err(to_py)?))
    }

    /// This node's end of the relay between nodes (its own pub/sub connection).
    /// With `secret` (shared by every node) every frame is sealed; see `seal.rs`.
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
        Ok(crate::relay::Relay::new(self.store.relay(node, options).map_err(to_py)?))
    }

    /// Subscribes to the bus of this store's prefix (a dedicated connection).
    fn bus(&self) -> crate::bus::Bus {
        crate::bus::Bus::new(self.store.bus())
    }

    /// Opens the connection now; raises `ConnectionError` naming the server if it cannot.
    fn connect<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let connect = self.store.connect();
        pyo3_async_runtimes::tokio::future_into_py(py, async move { connect.await.map_err(to_py) })
    }

    /// Queues one event; `future` (of the loop `wakeup` serves) gets its event ID once Redis
    /// has it, or at once, buffered, while Redis is unreachable.
    fn append(
        &self,
        wakeup: PyRef<'_, Wakeup>,
        future: Py<PyAny>,
        session: String,
        stream: String,
        tag: &str,
        data: Option<&[u8]>,
    ) -> PyResult<()> {
        let waiter = Waiter { wakeup: wakeup.handle(), future };
        self.store.append(session, stream, tag, data, waiter).map_err(to_py)
    }

    /// First page of a replay: `None` for an unknown, garbled, expired or (when `session`
    /// is given) foreign ID; else `(stream, ids, runs, pages)`, where `pages` (or `None` if
    /// this page is all there is) yields the rest, fetched ahead in the background.
    #[pyo3(signature = (last_event_id, session))]
    fn replay<'py>(
        &self,
        py: Python<'py>,
        last_event_id: &str,
        session: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let replay = self.store.replay(last_event_id, session.as_deref());
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let Some(replay) = replay.await.map_err(to_py)? else { return Ok(None) };
            Python::attach(|py| {
                let (ids, runs) = page_to_py(py, &replay.page)?;
                let pages = replay.rest.map(|rest| Py::new(py, ReplayPages { rest })).transpose()?;
                Ok(Some((replay.stream.as_str(), ids, runs, pages).into_pyobject(py)?.into_any().unbind()))
            })
        })
    }

    /// Writes what is queued, tries once more to write buffered events, then stops.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let close = self.store.close();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            close.await;
            Ok(())
        })
    }

    /// Counters: stored, buffered, flushed, dropped, redis_errors, replayed, fenced,
    /// dropped_full, write_batches, write_micros.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (name, value) in self.store.stats() {
            dict.set_item(name, value)?;
        }
        Ok(dict)
    }
}

/// The rest of a replay, read ahead by a background task while Python sends each page.
///
/// Pages are taken with `try_next()` on the event loop's thread, so a page that is already
/// there costs no thread hop and no extra wake-up; `next()` waits for one that is not.
/// Dropping this object stops the reading.
#[pyclass(frozen, module = "mcp_db._core")]
pub struct ReplayPages {
    rest: replay::ReplayPages,
}

fn page_or_end(py: Python<'_>, page: Option<Result<Page>>) -> PyResult<Option<Py<PyAny>>> {
    match page {
        None => Ok(None),
        Some(Err(e)) => Err(to_py(e)),
        Some(Ok(page)) => Ok(Some(page_to_py(py, &page)?.into_pyobject(py)?.into_any().unbind())),
    }
}

#[pymethods]
impl ReplayPages {
    /// The next page `(ids, runs)` if it is ready, `None` at the end, `False` if not yet.
    fn try_next(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match self.rest.try_next() {
            Next::Ready(page) => Ok(page_or_end(py, Some(page))?.unwrap_or_else(|| py.None())),
            Next::End => Ok(py.None()),
            Next::NotYet => Ok(false.into_pyobject(py)?.to_owned().into_any().unbind()),
        }
    }

    /// Waits for the next page `(ids, runs)`; `None` at the end.
    fn next(slf: Py<Self>, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let page = slf.get().rest.next().await;
            Python::attach(|py| page_or_end(py, page))
        })
    }
}
