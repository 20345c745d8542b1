//! Replay pages, shaped for the cheapest possible hand-over to Python.
//!
//! Replay cost is dominated by Python: validating messages one by one and building a
//! tuple per row. A page therefore carries the event IDs as one list and the messages as
//! runs of one kind, each run a single JSON array (`[m1,m2,…]`) that pydantic validates in
//! one call. Everything here is built on a tokio thread, without the GIL.

use crate::event_id::{escape_into, Position};

pub const PRIMING: u8 = b'p';

/// Consecutive messages of one kind, as one JSON array.
pub struct Run {
    pub tag: u8,
    pub count: usize,
    pub json: Vec<u8>,
    /// Where each message ends in `json`, so one bad message can be skipped alone.
    pub ends: Vec<u32>,
}

#[derive(Default)]
pub struct Page {
    pub ids: Vec<String>,
    pub runs: Vec<Run>,
    /// Where the next page starts, if this one was full.
    pub cursor: Option<String>,
}

/// Collects rows of one (session, stream) into a [`Page`].
pub struct PageBuilder {
    id_prefix: String,
    page: Page,
    last: Option<Position>,
}

impl PageBuilder {
    pub fn new(session: &str, stream: &str) -> PageBuilder {
        let mut id_prefix = String::with_capacity(session.len() + stream.len() + 2);
        escape_into(&mut id_prefix, session);
        id_prefix.push(':');
        escape_into(&mut id_prefix, stream);
        id_prefix.push(':');
        PageBuilder { id_prefix, page: Page::default(), last: None }
    }

    fn event_id(&self, position: Position) -> String {
        let mut id = String::with_capacity(self.id_prefix.len() + 24);
        id.push_str(&self.id_prefix);
        id.push_str(&position.to_string());
        id
    }

    /// Adds one stored row; priming rows only move the cursor.
    pub fn push(&mut self, position: Position, tag: u8, data: Option<&[u8]>) {
        self.last = Some(position);
        let Some(data) = data.filter(|_| tag != PRIMING) else { return };
        if data.is_empty() {
            return; // not one of ours: an empty message is not JSON
        }
        self.page.ids.push(self.event_id(position));
        match self.page.runs.last_mut() {
            Some(run) if run.tag == tag => {
                run.count += 1;
                run.json.push(b',');
                run.json.extend_from_slice(data);
                run.ends.push(run.json.len() as u32);
            }
            _ => {
                let mut json = Vec::with_capacity(data.len() * 16 + 2);
                json.push(b'[');
                json.extend_from_slice(data);
                let ends = vec![json.len() as u32];
                self.page.runs.push(Run { tag, count: 1, json, ends });
            }
        }
    }

    /// Finishes the page; `full` says whether more rows may follow the last one read.
    pub fn finish(mut self, full: bool) -> Page {
        for run in &mut self.page.runs {
            run.json.push(b']');
        }
        if full {
            self.page.cursor = self.last.map(|p| self.event_id(p));
        }
        self.page
    }
}

impl Page {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(seq: u64) -> Position {
        Position { ms: 1, seq }
    }

    #[test]
    fn groups_runs_and_skips_priming() {
        let mut b = PageBuilder::new("s", "r:1");
        b.push(pos(1), PRIMING, None);
        b.push(pos(2), b'n', Some(b"{\"a\":1}"));
        b.push(pos(3), b'n', Some(b"{\"a\":2}"));
        b.push(pos(4), PRIMING, None);
        b.push(pos(5), b'r', Some(b"{}"));
        let page = b.finish(true);
        assert_eq!(page.ids, vec!["s:r%3A1:1-2", "s:r%3A1:1-3", "s:r%3A1:1-5"]);
        assert_eq!(page.runs.len(), 2);
        assert_eq!(page.runs[0].json, b"[{\"a\":1},{\"a\":2}]");
        assert_eq!(page.runs[1].json, b"[{}]");
        assert_eq!((page.runs[0].count, page.runs[1].count), (2, 1));
        assert_eq!(page.runs[0].ends, vec![8, 16]);
        assert_eq!(&page.runs[0].json[9..16], b"{\"a\":2}");
        assert_eq!(page.cursor.as_deref(), Some("s:r%3A1:1-5"));
    }

    #[test]
    fn cursor_follows_priming_rows_and_only_when_full() {
        let mut b = PageBuilder::new("s", "1");
        b.push(pos(1), b'n', Some(b"1"));
        b.push(pos(2), PRIMING, None);
        assert_eq!(b.finish(true).cursor.as_deref(), Some("s:1:1-2"));
        let mut b = PageBuilder::new("s", "1");
        b.push(pos(1), b'n', Some(b"1"));
        assert_eq!(b.finish(false).cursor, None);
    }
}
