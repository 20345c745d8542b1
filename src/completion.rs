//! Hands the writer's results back to asyncio futures, one event-loop wake-up per batch.
//!
//! Each append carries a plain asyncio future and its loop's [`Wakeup`]. A writer batch
//! queues all of its results at once and wakes each loop once, without taking the GIL on
//! the I/O thread (see `wakeup.rs`): the loop sets the results on its own thread.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::wakeup::{Done, Finish, Inner};

/// An asyncio future waiting for one event ID, with the wake-up of the loop that owns it.
pub struct Waiter {
    pub wakeup: Arc<Inner>,
    pub future: Py<PyAny>,
}

/// Resolves every waiter with its event ID. Waiters are grouped by loop; normally there
/// is one loop, so this is one wake-up for the whole batch.
pub fn resolve_all(done: Vec<(Waiter, String)>) {
    let mut groups: Vec<(Arc<Inner>, Vec<Done>)> = Vec::new();
    for (waiter, id) in done {
        let finish: Finish = Box::new(move |py| Ok(PyString::new(py, &id).into_any().unbind()));
        match groups.iter_mut().find(|(inner, _)| Arc::ptr_eq(inner, &waiter.wakeup)) {
            Some((_, items)) => items.push((waiter.future, finish)),
            None => groups.push((waiter.wakeup, vec![(waiter.future, finish)])),
        }
    }
    for (inner, items) in groups {
        inner.push_all(items);
    }
}
