//! `MemoryEvents`: the in-process backend, as seen from Python (see
//! `mcp_db_core::events::memory`).

use mcp_db_core::events::memory;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::error::to_py;
use crate::events::Replay;

/// In-process backend with the same semantics as `RedisEvents`.
#[pyclass(frozen, module = "mcp_db._core")]
pub struct MemoryEvents {
    events: memory::MemoryEvents,
}

#[pymethods]
impl MemoryEvents {
    #[new]
    #[pyo3(signature = (*, max_events_per_stream, max_streams))]
    fn new(max_events_per_stream: usize, max_streams: usize) -> PyResult<Self> {
        let events = memory::MemoryEvents::new(max_events_per_stream, max_streams).map_err(to_py)?;
        Ok(MemoryEvents { events })
    }

    /// Stores one event and returns its ID.
    fn append(&self, session: String, stream: String, tag: &str, data: Option<&[u8]>) -> PyResult<String> {
        self.events.append(session, stream, tag, data).map_err(to_py)
    }

    /// `None` for an unknown, garbled, trimmed or foreign ID; else a `Replay` of all of it
    /// in one page (`rest` is `None`), shaped like `RedisEvents.replay`'s.
    #[pyo3(signature = (last_event_id, session))]
    fn replay(&self, py: Python<'_>, last_event_id: &str, session: Option<&str>) -> PyResult<Option<Replay>> {
        let Some((stream, page)) = self.events.replay(last_event_id, session) else { return Ok(None) };
        Ok(Some(Replay::new(py, stream, &page, None)?))
    }

    /// Counters: stored, replayed, streams, evicted_streams.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (name, value) in self.events.stats() {
            dict.set_item(name, value)?;
        }
        Ok(dict)
    }
}
