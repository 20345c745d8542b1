//! Paged replay: the page after an event ID, and the rest of a replay read ahead by a
//! background task while the caller sends each page.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::id::{EventId, Position};
use super::page::{Page, PageBuilder};
use super::writer::Stats;
use crate::connection::Connector;
use crate::error::{Error, Result};
use crate::keys::events_key;

/// How many pages a replay reads ahead of the one being sent.
const READ_AHEAD: usize = 4;

/// What reading pages takes: the store's connection, prefix and page size.
pub(crate) struct Reader {
    pub(crate) prefix: String,
    pub(crate) page_size: usize,
    pub(crate) connector: Arc<Connector>,
    pub(crate) stats: Arc<Stats>,
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

impl Reader {
    /// Reads the page after `after`; when `must_exist`, first checks that `after` itself is
    /// still stored (an unknown, trimmed or expired ID replays nothing).
    pub(crate) async fn page(&self, id: &EventId, must_exist: bool) -> Result<Option<Page>> {
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

/// What [`ReplayPages::try_next`] found.
pub enum Next {
    Ready(Result<Page>),
    /// The replay is over.
    End,
    /// The next page is still being read.
    NotYet,
}

/// The rest of a replay, read ahead by a background task. Dropping it stops the reading.
pub struct ReplayPages {
    rx: tokio::sync::Mutex<mpsc::Receiver<Result<Page>>>,
}

impl ReplayPages {
    /// Starts reading after `cursor` on the current runtime.
    pub(crate) fn spawn(reader: Arc<Reader>, cursor: String) -> ReplayPages {
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        tokio::spawn(async move {
            let mut cursor = cursor;
            loop {
                let page = match EventId::decode(&cursor) {
                    Some(id) => reader.page(&id, false).await.map(Option::unwrap_or_default),
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

    /// The next page if it is already there (no waiting).
    pub fn try_next(&self) -> Next {
        let Ok(mut rx) = self.rx.try_lock() else { return Next::NotYet };
        match rx.try_recv() {
            Ok(page) => Next::Ready(page),
            Err(mpsc::error::TryRecvError::Disconnected) => Next::End,
            Err(mpsc::error::TryRecvError::Empty) => Next::NotYet,
        }
    }

    /// Waits for the next page; `None` at the end.
    pub async fn next(&self) -> Option<Result<Page>> {
        self.rx.lock().await.recv().await
    }
}
