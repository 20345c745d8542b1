//! The Redis backend of the event store.
//!
//! Events of one (session, stream) pair live in one Redis stream. Each entry has a single
//! field: its name is the message kind (`q` request, `n` notification, `r` response, `e`
//! error, `p` priming) and its value the message JSON exactly as the SDK serialized it
//! (empty for priming). The kind lets Python rebuild the concrete message class without
//! trying every union member; one field rather than two keeps replies small, and parsing
//! them is most of the replay's cost on the Rust side.

mod clock;
pub mod id;
pub mod memory;
pub mod page;
pub mod replay;
mod stats;
pub mod writer;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::connection::Connector;
use crate::error::{Error, Result};
use crate::keys::{events_key, record_key};
use id::EventId;
use page::Page;
use replay::{Reader, ReplayPages};
use writer::{Append, Command, Limits, Writer};
pub use writer::{Completion, Stats};

/// Checks a one-byte message tag coming from Python.
pub fn parse_tag(tag: &str) -> Result<u8> {
    match tag.as_bytes() {
        [t @ (b'q' | b'n' | b'r' | b'e' | b'p')] => Ok(*t),
        _ => Err(Error::Config(format!("unknown message tag {tag:?}"))),
    }
}

/// How a store is set up (`Deployment::events`).
pub struct Options {
    pub ttl_seconds: f64,
    pub max_events_per_stream: u64,
    pub buffer_max_events: usize,
    pub page_size: usize,
}

/// Epoch at which this node owns each session it owns (see `sessions/ownership.rs`): the
/// deployment sets them, its event store checks each append against them.
pub type Fences = Arc<Mutex<HashMap<String, i64>>>;

/// The first page of a replay, and the rest of it if there is more.
pub struct Replay {
    pub stream: String,
    pub page: Page,
    pub rest: Option<ReplayPages>,
}

struct Inner<W> {
    fences: Fences,
    reader: Arc<Reader>,
    tx: mpsc::UnboundedSender<Command<W>>,
}

/// Redis backend: batched durable appends and paged replay. `W` is how an append's caller
/// is told its event ID.
pub struct Store<W> {
    inner: Arc<Inner<W>>,
}

impl<W: Completion> Inner<W> {
    /// Events still waiting in the writer's buffer (Redis was unreachable) would be
    /// missing from a replay, and the SDK would then mint the resumed stream's priming
    /// event after them: every later resume would skip them for good. So a replay first
    /// has the buffer written, and fails like Redis being down if it cannot be.
    async fn settle_buffer(&self) -> Result<()> {
        if self.reader.stats.buffered.load(Ordering::SeqCst) == 0 {
            return Ok(());
        }
        let (reply, written) = oneshot::channel();
        self.tx.send(Command::Flush(reply)).map_err(|_| Error::Closed)?;
        match written.await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::Unavailable(format!(
                "Redis at {} has not yet taken the events buffered while it was unreachable",
                self.reader.connector.server()
            ))),
            Err(_) => Err(Error::Closed),
        }
    }
}

impl<W: Completion> Store<W> {
    /// Starts the writer on `runtime` (see `Deployment::events`).
    pub(crate) fn start(
        connector: Arc<Connector>,
        prefix: &str,
        fences: Fences,
        options: &Options,
        runtime: &Handle,
    ) -> Result<Self> {
        let ttl_ms = positive_ms("ttl_seconds", options.ttl_seconds)?;
        if options.max_events_per_stream == 0 || options.page_size == 0 {
            return Err(Error::Config("max_events_per_stream and page_size must be at least 1".into()));
        }
        let stats = Arc::new(Stats::default());
        let limits = Limits {
            max_events_per_stream: options.max_events_per_stream,
            ttl_ms,
            buffer_max: options.buffer_max_events,
            batch_max: 1024,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Writer::new(connector.clone(), stats.clone(), limits);
        runtime.spawn(writer.run(rx));
        let reader = Arc::new(Reader { prefix: prefix.to_owned(), page_size: options.page_size, connector, stats });
        let inner = Inner { fences, reader, tx };
        Ok(Store { inner: Arc::new(inner) })
    }

    /// Queues one event; `waiter` gets its event ID once Redis has it, or at once,
    /// buffered, while Redis is unreachable.
    pub fn append(&self, session: String, stream: String, tag: &str, data: Option<&[u8]>, waiter: W) -> Result<()> {
        let tag = parse_tag(tag)?;
        let prefix = &self.inner.reader.prefix;
        let key = events_key(prefix, &session, &stream);
        let epoch = self.inner.fences.lock().ok().and_then(|f| f.get(&session).copied());
        let fence = epoch.map(|e| (record_key(prefix, &session), e));
        let append = Append { key, session, stream, tag, data: data.map(<[u8]>::to_vec), fence, waiter };
        self.inner.tx.send(Command::Append(append)).map_err(|_| Error::Closed)
    }

    /// First page of a replay: `None` for an unknown, garbled, expired or (when `session`
    /// is given) foreign ID; the rest of the pages are read ahead in the background.
    pub fn replay(
        &self,
        last_event_id: &str,
        session: Option<&str>,
    ) -> impl Future<Output = Result<Option<Replay>>> + Send + 'static {
        let inner = self.inner.clone();
        let decoded = EventId::decode(last_event_id).filter(|id| session.is_none_or(|s| s == id.session));
        async move {
            let Some(id) = decoded else { return Ok(None) };
            inner.settle_buffer().await?;
            let Some(page) = inner.reader.page(&id, true).await? else { return Ok(None) };
            let rest = page.cursor.clone().map(|cursor| ReplayPages::spawn(inner.reader.clone(), cursor));
            Ok(Some(Replay { stream: id.stream, page, rest }))
        }
    }

    /// Writes what is queued, tries once more to write buffered events, then stops.
    pub fn close(&self) -> impl Future<Output = ()> + Send + 'static {
        let tx = self.inner.tx.clone();
        async move {
            let (reply, done) = oneshot::channel();
            if tx.send(Command::Close(reply)).is_ok() {
                let _ = done.await;
            }
        }
    }

    /// The counters, by name (see [`Stats`]).
    pub fn stats(&self) -> [(&'static str, u64); 10] {
        self.inner.reader.stats.snapshot()
    }
}

/// `seconds` as a whole number of milliseconds, at least 1; refuses what is not a
/// positive, finite, plausible number of seconds.
pub fn positive_ms(name: &str, seconds: f64) -> Result<u64> {
    if !(seconds.is_finite() && seconds > 0.0 && seconds < 1e9) {
        return Err(Error::Config(format!("{name} must be a positive number of seconds, got {seconds}")));
    }
    // Checked above: a positive whole number of milliseconds below 10^12 fits a u64.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let ms = (seconds * 1000.0).ceil() as u64;
    Ok(ms.max(1))
}
