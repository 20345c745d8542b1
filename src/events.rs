//! `RedisEvents` and `ReplayPages`: the Redis backend of the event store, as seen from
//! Python (see `mcp_db_core::events`), and what a replay hands back: `Replay`, `Page` and
//! `Run`.

use mcp_db_core::events::page;
use mcp_db_core::events::replay::{self, Next};
use mcp_db_core::events::Store;
use mcp_db_core::Result;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::bridge::{self, Waiter, Wakeup};
use crate::error::to_py;

/// Redis backend: batched durable appends and paged replay (`Deployment.events`).
#[pyclass(frozen, module = "mcp_db._core")]
pub struct RedisEvents {
    store: Store<Waiter>,
}

impl RedisEvents {
    pub fn new(store: Store<Waiter>) -> RedisEvents {
        RedisEvents { store }
    }
}

#[pymethods]
impl RedisEvents {
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
    /// is given) foreign ID; else a `Replay`, whose `rest` (or `None` if this page is all
    /// there is) yields the other pages, fetched ahead in the background.
    #[pyo3(signature = (last_event_id, session))]
    fn replay<'py>(
        &self,
        py: Python<'py>,
        last_event_id: &str,
        session: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let replay = self.store.replay(last_event_id, session.as_deref());
        bridge::future(py, async move {
            let Some(replay) = replay.await.map_err(to_py)? else { return Ok(None) };
            Python::attach(|py| {
                let rest = replay.rest.map(|rest| Py::new(py, ReplayPages { rest })).transpose()?;
                Ok(Some(Replay::new(py, replay.stream, &replay.page, rest)?))
            })
        })
    }

    /// Writes what is queued, tries once more to write buffered events, then stops.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let close = self.store.close();
        bridge::future(py, async move {
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

fn page_or_end(py: Python<'_>, page: Option<Result<page::Page>>) -> PyResult<Option<Py<PyAny>>> {
    match page {
        None => Ok(None),
        Some(Err(e)) => Err(to_py(e)),
        Some(Ok(page)) => Ok(Some(Py::new(py, Page::new(py, &page)?)?.into_any())),
    }
}

#[pymethods]
impl ReplayPages {
    /// The next `Page` if it is ready, `None` at the end, `False` if not yet.
    fn try_next(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match self.rest.try_next() {
            Next::Ready(page) => Ok(page_or_end(py, Some(page))?.unwrap_or_else(|| py.None())),
            Next::End => Ok(py.None()),
            Next::NotYet => Ok(false.into_pyobject(py)?.to_owned().into_any().unbind()),
        }
    }

    /// Waits for the next `Page`; `None` at the end.
    fn next(slf: Py<Self>, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        bridge::future(py, async move {
            let page = slf.get().rest.next().await;
            Python::attach(|py| page_or_end(py, page))
        })
    }
}

/// `count` consecutive stored messages of one kind: `json` a JSON array of them exactly as
/// the SDK serialized each, `ends` the offset in `json` where each ends (native `u32`s).
/// `tag` is `q` (request), `n` (notification), `r` (response) or `e` (error).
#[pyclass(frozen, get_all, module = "mcp_db._core")]
pub struct Run {
    tag: &'static str,
    count: usize,
    json: Py<PyBytes>,
    ends: Py<PyBytes>,
}

/// One page of a replay: an event ID per message, and the messages in runs.
#[pyclass(frozen, get_all, module = "mcp_db._core")]
pub struct Page {
    ids: Py<PyList>,
    runs: Py<PyList>,
}

impl Page {
    pub fn new(py: Python<'_>, page: &page::Page) -> PyResult<Page> {
        let runs = PyList::empty(py);
        for run in &page.runs {
            let tag = match run.tag {
                b'q' => "q",
                b'n' => "n",
                b'r' => "r",
                b'e' => "e",
                _ => "?",
            };
            let ends: Vec<u8> = run.ends.iter().flat_map(|e| e.to_ne_bytes()).collect();
            let json = PyBytes::new(py, &run.json).unbind();
            runs.append(Py::new(py, Run { tag, count: run.count, json, ends: PyBytes::new(py, &ends).unbind() })?)?;
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
    rest: Option<Py<ReplayPages>>,
}

impl Replay {
    pub fn new(py: Python<'_>, stream: String, page: &page::Page, rest: Option<Py<ReplayPages>>) -> PyResult<Replay> {
        Ok(Replay { stream, page: Py::new(py, Page::new(py, page)?)?, rest })
    }
}
