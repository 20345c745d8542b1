//! `RedisEvents`: the Redis backend of the event store, as seen from Python.
//!
//! Events of one (session, stream) pair live in one Redis stream. Each entry has a tag
//! `t` (`q` request, `n` notification, `r` response, `e` error, `p` priming) and, except
//! for priming entries, the message JSON exactly as the SDK serialized it in `d`. The tag
//! lets Python rebuild the concrete message class without trying every union member.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use tokio::sync::{mpsc, oneshot};

use crate::completion::Waiter;
use crate::connection::Connector;
use crate::error::{Error, Result};
use crate::event_id::{EventId, Position};
use crate::keys::{events_key, validate_prefix};
use crate::writer::{Append, Command, Limits, Stats, Writer};

pub const PRIMING: u8 = b'p';

/// Checks a one-byte message tag coming from Python.
pub fn parse_tag(tag: &str) -> PyResult<u8> {
    match tag.as_bytes() {
        [t @ (b'q' | b'n' | b'r' | b'e' | b'p')] => Ok(*t),
        _ => Err(Error::Config(format!("unknown message tag {tag:?}")).into()),
    }
}

/// One replayable row: `(event_id, tag, json)`. Priming rows never leave Rust.
pub struct Row {
    pub event_id: String,
    pub tag: u8,
    pub data: Vec<u8>,
}

/// Builds the Python list of `(event_id, tag, bytes)` tuples.
pub fn rows_to_py<'py>(py: Python<'py>, rows: &[Row]) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for row in rows {
        let tag = [row.tag];
        let tag = std::str::from_utf8(&tag).unwrap_or("?");
        list.append(PyTuple::new(py, [
            row.event_id.as_str().into_pyobject(py)?.into_any(),
            tag.into_pyobject(py)?.into_any(),
            PyBytes::new(py, &row.data).into_any(),
        ])?)?;
    }
    Ok(list)
}

struct Inner {
    prefix: String,
    page_size: usize,
    connector: Arc<Connector>,
    stats: Arc<Stats>,
    tx: mpsc::UnboundedSender<Command>,
}

/// Redis backend: batched durable appends and paged replay.
#[pyclass(frozen, module = "mcp_db._core")]
pub struct RedisEvents {
    inner: Arc<Inner>,
}

/// Parses one XRANGE reply into positions and rows (priming rows kept, for cursors).
fn parse_entries(value: &redis::Value, session: &str, stream: &str) -> Vec<(Position, Option<Row>)> {
    let redis::Value::Array(entries) = value else { return Vec::new() };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let redis::Value::Array(parts) = entry else { continue };
        let (Some(redis::Value::BulkString(id)), Some(redis::Value::Array(fields))) = (parts.first(), parts.get(1)) else {
            continue;
        };
        let Some(position) = std::str::from_utf8(id).ok().and_then(Position::parse) else { continue };
        let (mut tag, mut data) = (None, None);
        for pair in fields.chunks(2) {
            if let [redis::Value::BulkString(name), redis::Value::BulkString(value)] = pair {
                match name.as_slice() {
                    b"t" => tag = value.first().copied(),
                    b"d" => data = Some(value.clone()),
                    _ => {}
                }
            }
        }
        let row = match (tag, data) {
            (Some(tag), Some(data)) if tag != PRIMING => {
                Some(Row { event_id: EventId::encode(session, stream, position), tag, data })
            }
            _ => None,
        };
        out.push((position, row));
    }
    out
}

impl Inner {
    /// Reads the page after `after`; when `must_exist`, first checks that `after` itself is
    /// still stored (an unknown, trimmed or expired ID replays nothing).
    async fn page(&self, id: &EventId, must_exist: bool) -> Result<Option<(Vec<Row>, Option<String>)>> {
        let key = events_key(&self.prefix, &id.session, &id.stream);
        let at = id.position.to_string();
        let mut pipe = redis::pipe();
        if must_exist {
            pipe.cmd("XRANGE").arg(&key).arg(&at).arg(&at);
        }
        pipe.cmd("XRANGE").arg(&key).arg(format!("({at}")).arg("+").arg("COUNT").arg(self.page_size);
        let values = self.connector.query(&pipe).await?;
        if let Some(redis::Value::ServerError(e)) = values.iter().find(|v| matches!(v, redis::Value::ServerError(_))) {
            return Err(Error::Redis(format!("replay of {key} failed: {e}")));
        }
        if must_exist && !matches!(values.first(), Some(redis::Value::Array(found)) if !found.is_empty()) {
            return Ok(None);
        }
        let entries = parse_entries(values.last().unwrap_or(&redis::Value::Nil), &id.session, &id.stream);
        let cursor = match entries.last() {
            Some((last, _)) if entries.len() >= self.page_size => {
                Some(EventId::encode(&id.session, &id.stream, *last))
            }
            _ => None,
        };
        let rows: Vec<Row> = entries.into_iter().filter_map(|(_, row)| row).collect();
        self.stats.replayed.fetch_add(rows.len() as u64, Ordering::Relaxed);
        Ok(Some((rows, cursor)))
    }
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
        validate_prefix(prefix).map_err(Error::Config)?;
        let ttl_ms = positive_ms("ttl_seconds", ttl_seconds)?;
        let timeout = Duration::from_millis(positive_ms("timeout_seconds", timeout_seconds)?);
        if max_events_per_stream == 0 || page_size == 0 {
            return Err(Error::Config("max_events_per_stream and page_size must be at least 1".into()).into());
        }
        let connector = Arc::new(Connector::new(url, timeout)?);
        let stats = Arc::new(Stats::default());
        let limits = Limits { max_events_per_stream, ttl_ms, buffer_max: buffer_max_events, batch_max: 1024 };
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Writer::new(connector.clone(), stats.clone(), limits);
        pyo3_async_runtimes::tokio::get_runtime().spawn(writer.run(rx));
        let inner = Inner { prefix: prefix.to_owned(), page_size, connector, stats, tx };
        Ok(RedisEvents { inner: Arc::new(inner) })
    }

    /// The server this store talks to, without credentials.
    #[getter]
    fn server(&self) -> &str {
        self.inner.connector.server()
    }

    /// Opens the connection now; raises `ConnectionError` naming the server if it cannot.
    fn connect<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let mut conn = inner.connector.get().await?;
            let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
            pong.map_err(|e| Error::from_redis(&e, inner.connector.server()))?;
            Ok(())
        })
    }

    /// Queues one event; `future` (of `event_loop`) gets its event ID once Redis has it,
    /// or at once, buffered, while Redis is unreachable.
    fn append(
        &self,
        event_loop: Py<PyAny>,
        future: Py<PyAny>,
        session: String,
        stream: String,
        tag: &str,
        data: Option<&[u8]>,
    ) -> PyResult<()> {
        let tag = parse_tag(tag)?;
        let key = events_key(&self.inner.prefix, &session, &stream);
        let append = Append {
            key,
            session,
            stream,
            tag,
            data: data.map(<[u8]>::to_vec),
            waiter: Waiter { event_loop, future },
        };
        self.inner.tx.send(Command::Append(append)).map_err(|_| Error::Closed.into())
    }

    /// First page of a replay: `None` for an unknown, garbled, expired or (when `session`
    /// is given) foreign ID; else `(stream, rows, cursor)`, `cursor` for `replay_after`.
    #[pyo3(signature = (last_event_id, session))]
    fn replay<'py>(&self, py: Python<'py>, last_event_id: &str, session: Option<String>) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        let decoded = EventId::decode(last_event_id).filter(|id| session.as_ref().is_none_or(|s| *s == id.session));
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let Some(id) = decoded else { return Ok(None) };
            let Some((rows, cursor)) = inner.page(&id, true).await? else { return Ok(None) };
            Python::attach(|py| -> PyResult<Option<Py<PyAny>>> {
                let out = (id.stream.as_str(), rows_to_py(py, &rows)?, cursor);
                Ok(Some(out.into_pyobject(py)?.into_any().unbind()))
            })
        })
    }

    /// The page after a cursor from `replay`: `(rows, cursor)`.
    fn replay_after<'py>(&self, py: Python<'py>, cursor: &str) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        let id = EventId::decode(cursor).ok_or_else(|| Error::Config(format!("bad replay cursor {cursor:?}")))?;
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let (rows, cursor) = inner.page(&id, false).await?.unwrap_or_default();
            Python::attach(|py| -> PyResult<Py<PyAny>> {
                Ok((rows_to_py(py, &rows)?, cursor).into_pyobject(py)?.into_any().unbind())
            })
        })
    }

    /// Writes what is queued, tries once more to write buffered events, then stops.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let tx = self.inner.tx.clone();
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let (reply, done) = oneshot::channel();
            if tx.send(Command::Close(reply)).is_ok() {
                let _ = done.await;
            }
            Ok(())
        })
    }

    /// Counters: stored, buffered, flushed, dropped, redis_errors, replayed.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = &self.inner.stats;
        let dict = PyDict::new(py);
        for (name, counter) in [
            ("stored", &s.stored),
            ("buffered", &s.buffered),
            ("flushed", &s.flushed),
            ("dropped", &s.dropped),
            ("redis_errors", &s.redis_errors),
            ("replayed", &s.replayed),
        ] {
            dict.set_item(name, counter.load(Ordering::Relaxed))?;
        }
        Ok(dict)
    }
}

pub fn positive_ms(name: &str, seconds: f64) -> Result<u64> {
    if !(seconds.is_finite() && seconds > 0.0 && seconds < 1e9) {
        return Err(Error::Config(format!("{name} must be a positive number of seconds, got {seconds}")));
    }
    Ok(((seconds * 1000.0).ceil() as u64).max(1))
}
