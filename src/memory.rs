//! `MemoryEvents`: the in-process backend, with the Redis backend's semantics: the same
//! event IDs, priming rows stored and never replayed, per-stream length bound, and
//! `None` for an ID that is unknown, trimmed or from another session. Memory is bounded
//! by `max_events_per_stream × max_streams`; the least recently written stream goes first.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::error::Error;
use crate::event_id::{EventId, Position};
use crate::events::parse_tag;
use crate::page::{Page, PageBuilder};

struct Entry {
    seq: u64,
    tag: u8,
    data: Option<Vec<u8>>,
}

struct Log {
    next_seq: u64,
    entries: VecDeque<Entry>,
    touched: u64,
}

type StreamKey = (String, String);

#[derive(Default)]
struct State {
    streams: HashMap<StreamKey, Log>,
    /// Last write tick → stream, oldest first, for eviction.
    recency: BTreeMap<u64, StreamKey>,
    tick: u64,
    stored: u64,
    evicted_streams: u64,
    replayed: u64,
}

impl State {
    fn append(&mut self, key: StreamKey, tag: u8, data: Option<Vec<u8>>, max_events: usize, max_streams: usize) -> u64 {
        self.tick += 1;
        let tick = self.tick;
        if !self.streams.contains_key(&key) && self.streams.len() >= max_streams {
            if let Some((_, oldest)) = self.recency.pop_first() {
                self.streams.remove(&oldest);
                self.evicted_streams += 1;
            }
        }
        let log = self.streams.entry(key.clone()).or_insert(Log { next_seq: 1, entries: VecDeque::new(), touched: 0 });
        self.recency.remove(&log.touched);
        log.touched = tick;
        self.recency.insert(tick, key);
        let seq = log.next_seq;
        log.next_seq += 1;
        log.entries.push_back(Entry { seq, tag, data });
        while log.entries.len() > max_events {
            log.entries.pop_front();
        }
        self.stored += 1;
        seq
    }

    /// The events after `id`, or `None` when `id` is not (or no longer) stored.
    fn after(&mut self, id: &EventId) -> Option<Page> {
        let log = self.streams.get(&(id.session.clone(), id.stream.clone()))?;
        let first = log.entries.front()?.seq;
        if id.position.ms != 0 || id.position.seq < first || id.position.seq >= log.next_seq {
            return None;
        }
        let start = (id.position.seq - first + 1) as usize;
        let mut builder = PageBuilder::new(&id.session, &id.stream);
        for e in log.entries.range(start..) {
            builder.push(Position { ms: 0, seq: e.seq }, e.tag, e.data.as_deref());
        }
        let page = builder.finish(false);
        self.replayed += page.len() as u64;
        Some(page)
    }
}

/// In-process backend with the same semantics as `RedisEvents`.
#[pyclass(frozen, module = "mcp_db._core")]
pub struct MemoryEvents {
    max_events: usize,
    max_streams: usize,
    state: Mutex<State>,
}

impl MemoryEvents {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than losing the store, so keep serving.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[pymethods]
impl MemoryEvents {
    #[new]
    #[pyo3(signature = (*, max_events_per_stream, max_streams))]
    fn new(max_events_per_stream: usize, max_streams: usize) -> PyResult<Self> {
        if max_events_per_stream == 0 || max_streams == 0 {
            return Err(Error::Config("max_events_per_stream and max_streams must be at least 1".into()).into());
        }
        Ok(MemoryEvents { max_events: max_events_per_stream, max_streams, state: Mutex::default() })
    }

    /// Stores one event and returns its ID.
    fn append(&self, session: String, stream: String, tag: &str, data: Option<&[u8]>) -> PyResult<String> {
        let tag = parse_tag(tag)?;
        let seq = {
            let key = (session.clone(), stream.clone());
            self.state().append(key, tag, data.map(<[u8]>::to_vec), self.max_events, self.max_streams)
        };
        Ok(EventId::encode(&session, &stream, Position { ms: 0, seq }))
    }

    /// `None` for an unknown, garbled, trimmed or foreign ID; else
    /// A `Replay` of all of it in one page, shaped like `RedisEvents.replay`'s.
    #[pyo3(signature = (last_event_id, session))]
    fn replay<'py>(&self, py: Python<'py>, last_event_id: &str, session: Option<&str>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Some(id) = EventId::decode(last_event_id) else { return Ok(None) };
        if session.is_some_and(|s| s != id.session) {
            return Ok(None);
        }
        let Some(page) = self.state().after(&id) else { return Ok(None) };
        Ok(Some(Py::new(py, crate::results::Replay::new(py, id.stream, &page, None)?)?.into_bound(py).into_any()))
    }

    /// Counters: stored, replayed, streams, evicted_streams.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let state = self.state();
        let dict = PyDict::new(py);
        dict.set_item("stored", state.stored)?;
        dict.set_item("replayed", state.replayed)?;
        dict.set_item("streams", state.streams.len())?;
        dict.set_item("evicted_streams", state.evicted_streams)?;
        Ok(dict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(session: &str, stream: &str, seq: u64) -> EventId {
        EventId { session: session.into(), stream: stream.into(), position: Position { ms: 0, seq } }
    }

    fn key(s: &str, t: &str) -> StreamKey {
        (s.to_owned(), t.to_owned())
    }

    #[test]
    fn replays_after_position_skipping_priming() {
        let mut st = State::default();
        let p = st.append(key("a", "1"), crate::page::PRIMING, None, 100, 10);
        st.append(key("a", "1"), b'n', Some(b"{}".to_vec()), 100, 10);
        st.append(key("a", "1"), b'r', Some(b"{}".to_vec()), 100, 10);
        let page = st.after(&id("a", "1", p)).unwrap();
        assert_eq!(page.runs.iter().map(|r| r.tag).collect::<Vec<_>>(), vec![b'n', b'r']);
        assert!(st.after(&id("a", "1", 3)).unwrap().is_empty());
        assert!(st.after(&id("a", "1", 4)).is_none(), "future position is unknown");
        assert!(st.after(&id("b", "1", 1)).is_none(), "other session");
    }

    #[test]
    fn trims_and_evicts() {
        let mut st = State::default();
        for _ in 0..5 {
            st.append(key("a", "1"), b'n', Some(b"{}".to_vec()), 3, 2);
        }
        assert!(st.after(&id("a", "1", 1)).is_none(), "trimmed");
        assert_eq!(st.after(&id("a", "1", 3)).unwrap().len(), 2);
        st.append(key("b", "1"), b'n', Some(b"{}".to_vec()), 3, 2);
        st.append(key("a", "1"), b'n', Some(b"{}".to_vec()), 3, 2);
        st.append(key("c", "1"), b'n', Some(b"{}".to_vec()), 3, 2);
        assert!(st.streams.contains_key(&key("a", "1")), "recently written stream kept");
        assert!(!st.streams.contains_key(&key("b", "1")), "least recent stream evicted");
        assert_eq!(st.streams.len(), 2);
        assert_eq!(st.recency.len(), 2);
    }
}
