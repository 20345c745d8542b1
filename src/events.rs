//! `RedisEvents`: the Redis backend of the event store, as seen from Python.
//!
//! Events of one (session, stream) pair live in one Redis stream. Each entry has a single
//! field: its name is the message kind (`q` request, `n` notification, `r` response, `e`
//! error, `p` priming) and its value the message JSON exactly as the SDK serialized it
//! (empty for priming). The kind lets Python rebuild the concrete message class without
//! trying every union member; one field rather than two keeps replies small, and parsing
//! them is most of the replay's cost on the Rust side.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyDict;
use tokio::sync::{mpsc, oneshot};

use crate::completion::Waiter;
use crate::connection::Connector;
use crate::error::{Error, Result};
use crate::event_id::{EventId, Position};
use crate::keys::events_key;
use crate::page::{Page, PageBuilder};
use crate::wakeup::Wakeup;
use crate::writer::{Append, Command, Limits, Stats, Writer};

/// Checks a one-byte message tag coming from Python.
pub fn parse_tag(tag: &str) -> PyResult<u8> {
    match tag.as_bytes() {
        [t @ (b'q' | b'n' | b'r' | b'e' | b'p')] => Ok(*t),
        _ => Err(Error::Config(format!("unknown message tag {tag:?}")).into()),
    }
}

/// Epoch at which this node owns each session it owns (see `ownership.rs`), shared by a
/// `Deployment` and its event store.
pub type Fences = Arc<std::sync::Mutex<std::collections::HashMap<String, i64>>>;

struct Inner {
    fences: Fences,
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

/// Turns one XRANGE reply into a page, consuming it so no message is copied twice.
fn build_page(reply: redis::Value, session: &str, stream: &str, page_size: usize) -> Page {
    let mut builder = PageBuilder::new(session, stream);
    let redis::Value::Array(entries) = reply else { return builder.finish(false) };
    let full = entries.len() >= page_size;
    for entry in entries {
        let redis::Value::Array(parts) = entry else { continue };
        let mut parts = parts.into_iter();
        let (Some(redis::Value::BulkString(id)), Some(redis::Value::Array(fields))) = (parts.next(), parts.next())
        else {
            continue;
        };
        let Some(position) = std::str::from_utf8(&id).ok().and_then(Position::parse) else { continue };
        // One field per entry: its name is the message kind, its value the JSON.
        if let [redis::Value::BulkString(tag), redis::Value::BulkString(data), ..] = fields.as_slice() {
            if let [tag] = tag.as_slice() {
                builder.push(position, *tag, Some(data.as_slice()));
            }
        }
    }
    builder.finish(full)
}

/// The options of an event store (`Deployment.events`).
pub struct EventOptions {
    pub ttl_ms: u64,
    pub max_events_per_stream: u64,
    pub buffer_max_events: usize,
    pub page_size: usize,
}

impl RedisEvents {
    /// An event store on `connector`, whose writer starts now (see `Deployment.events`).
    pub fn start(connector: Arc<Connector>, prefix: &str, fences: Fences, options: EventOptions) -> Result<Self> {
        let EventOptions { ttl_ms, max_events_per_stream, buffer_max_events, page_size } = options;
        if max_events_per_stream == 0 || page_size == 0 {
            return Err(Error::Config("max_events_per_stream and page_size must be at least 1".into()));
        }
        let stats = Arc::new(Stats::default());
        let limits = Limits { max_events_per_stream, ttl_ms, buffer_max: buffer_max_events, batch_max: 1024 };
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Writer::new(connector.clone(), stats.clone(), limits);
        pyo3_async_runtimes::tokio::get_runtime().spawn(writer.run(rx));
        let inner = Inner { fences, prefix: prefix.to_owned(), page_size, connector, stats, tx };
        Ok(RedisEvents { inner: Arc::new(inner) })
    }
}

impl Inner {
    /// Events still waiting in the writer's buffer (Redis was unreachable) would be
    /// missing from a replay, and the SDK would then mint the resumed stream's priming
    /// event after them: every later resume would skip them for good. So a replay first
    /// has the buffer written, and fails like Redis being down if it cannot be.
    async fn settle_buffer(&self) -> Result<()> {
        if self.stats.buffered.load(Ordering::SeqCst) == 0 {
            return Ok(());
        }
        let (reply, written) = oneshot::channel();
        self.tx.send(Command::Flush(reply)).map_err(|_| Error::Closed)?;
        match written.await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::Unavailable(format!(
                "Redis at {} has not yet taken the events buffered while it was unreachable",
                self.connector.server()
            ))),
            Err(_) => Err(Error::Closed),
        }
    }

    /// Reads the page after `after`; when `must_exist`, first checks that `after` itself is
    /// still stored (an unknown, trimmed or expired ID replays nothing).
    async fn page(&self, id: &EventId, must_exist: bool) -> Result<Option<Page>> {
        let key = events_key(&self.prefix, &id.session, &id.stream);
        let at = id.position.to_string();
        let mut pipe = redis::pipe();
        if must_exist {
            pipe.cmd("XRANGE").arg(&key).arg(&at).arg(&at);
        }
        // Nothing can follow the largest ID (and Redis refuses an exclusive start there).
        let first = id.position.next();
        if let Some(first) = first {
            pipe.cmd("XRANGE").arg(&key).arg(first.to_string()).arg("+").arg("COUNT").arg(self.page_size);
        }
        let mut values = self.connector.query(&pipe).await?;
        if let Some(redis::Value::ServerError(e)) = values.iter().find(|v| matches!(v, redis::Value::ServerError(_))) {
            return Err(Error::Redis(format!("replay of {key} failed: {e}")));
        }
        if must_exist && !matches!(values.first(), Some(redis::Value::Array(found)) if !found.is_empty()) {
            return Ok(None);
        }
        let after = if first.is_some() { values.pop().unwrap_or_default() } else { redis::Value::Nil };
        let page = build_page(after, &id.session, &id.stream, self.page_size);
        self.stats.replayed.fetch_add(page.len() as u64, Ordering::Relaxed);
        Ok(Some(page))
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
        let tag = parse_tag(tag)?;
        let key = events_key(&self.inner.prefix, &session, &stream);
        let epoch = self.inner.fences.lock().ok().and_then(|f| f.get(&session).copied());
        let fence = epoch.map(|e| (crate::keys::record_key(&self.inner.prefix, &session), e));
        let append = Append {
            key,
            session,
            stream,
            tag,
            data: data.map(<[u8]>::to_vec),
            fence,
            waiter: Waiter { wakeup: wakeup.handle(), future },
        };
        self.inner.tx.send(Command::Append(append)).map_err(|_| Error::Closed.into())
    }

    /// First page of a replay: `None` for an unknown, garbled, expired or (when `session`
    /// is given) foreign ID; else a `Replay`, whose `rest` (or `None` if this page is all
    /// there is) yields the other pages, fetched ahead in the background.
    #[pyo3(signature = (last_event_id, session))]
    fn replay<'py>(&self, py: Python<'py>, last_event_id: &str, session: Option<String>) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        let decoded = EventId::decode(last_event_id).filter(|id| session.as_ref().is_none_or(|s| *s == id.session));
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let Some(id) = decoded else { return Ok(None) };
            inner.settle_buffer().await?;
            let Some(page) = inner.page(&id, true).await? else { return Ok(None) };
            let pages = page.cursor.clone().map(|cursor| ReplayPages::spawn(inner, cursor));
            Python::attach(|py| {
                let rest = pages.map(|p| Py::new(py, p).map(Py::into_any)).transpose()?;
                Ok(Some(crate::results::Replay::new(py, id.stream, &page, rest)?))
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

    /// Counters: stored, buffered, flushed, dropped, redis_errors, replayed, fenced,
    /// dropped_full, write_batches, write_micros.
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
            ("fenced", &s.fenced),
            ("dropped_full", &s.dropped_full),
            ("write_batches", &s.write_batches),
            ("write_micros", &s.write_micros),
        ] {
            dict.set_item(name, counter.load(Ordering::Relaxed))?;
        }
        Ok(dict)
    }
}

/// How many pages a replay reads ahead of the one being sent.
const READ_AHEAD: usize = 4;

/// The rest of a replay, read ahead by a background task while Python sends each page.
///
/// Pages are taken with `try_next()` on the event loop's thread, so a page that is already
/// there costs no thread hop and no extra wake-up; `next()` waits for one that is not.
/// Dropping this object stops the reading.
#[pyclass(frozen, module = "mcp_db._core")]
pub struct ReplayPages {
    rx: tokio::sync::Mutex<mpsc::Receiver<Result<Page>>>,
}

impl ReplayPages {
    fn spawn(inner: Arc<Inner>, cursor: String) -> ReplayPages {
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        pyo3_async_runtimes::tokio::get_runtime().spawn(async move {
            let mut cursor = cursor;
            loop {
                let page = match EventId::decode(&cursor) {
                    Some(id) => inner.page(&id, false).await.map(Option::unwrap_or_default),
                    None => Err(Error::Redis(format!("bad replay cursor {cursor:?}"))),
                };
                let next = page.as_ref().ok().and_then(|p| p.cursor.clone());
                if tx.send(page).await.is_err() {
                    return; // the replay was abandoned
                }
                match next {
                    Some(c) => cursor = c,
                    None => return,
                }
            }
        });
        ReplayPages { rx: tokio::sync::Mutex::new(rx) }
    }
}

fn page_to_py(py: Python<'_>, page: Option<Result<Page>>) -> PyResult<Option<Py<PyAny>>> {
    match page {
        None => Ok(None),
        Some(Err(e)) => Err(e.into()),
        Some(Ok(page)) => Ok(Some(Py::new(py, crate::results::Page::from_core(py, &page)?)?.into_any())),
    }
}

#[pymethods]
impl ReplayPages {
    /// The next `Page` if it is ready, `None` at the end, `False` if not yet.
    fn try_next(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let Ok(mut rx) = self.rx.try_lock() else { return Ok(false.into_pyobject(py)?.to_owned().into_any().unbind()) };
        match rx.try_recv() {
            Ok(page) => Ok(page_to_py(py, Some(page))?.unwrap_or_else(|| py.None())),
            Err(mpsc::error::TryRecvError::Disconnected) => Ok(py.None()),
            Err(mpsc::error::TryRecvError::Empty) => Ok(false.into_pyobject(py)?.to_owned().into_any().unbind()),
        }
    }

    /// Waits for the next `Page`; `None` at the end.
    fn next<'py>(slf: Py<Self>, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let page = slf.get().rx.lock().await.recv().await;
            Python::attach(|py| page_to_py(py, page))
        })
    }
}

pub fn positive_ms(name: &str, seconds: f64) -> Result<u64> {
    if !(seconds.is_finite() && seconds > 0.0 && seconds < 1e9) {
        return Err(Error::Config(format!("{name} must be a positive number of seconds, got {seconds}")));
    }
    Ok(((seconds * 1000.0).ceil() as u64).max(1))
}
