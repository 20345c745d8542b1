//! Hands results back to asyncio futures, one event-loop wake-up per batch.
//!
//! `future_into_py` wakes the event loop once per future. On the append path that is one
//! `call_soon_threadsafe` per event, which costs more Python CPU than the write itself at
//! high concurrency, so appends carry a plain asyncio future and a writer batch resolves
//! all of its futures with a single call into the loop.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyList;

/// An asyncio future waiting for one result, with the loop that owns it.
pub struct Waiter {
    pub event_loop: Py<PyAny>,
    pub future: Py<PyAny>,
}

static RESOLVE_BATCH: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn resolve_batch(py: Python<'_>) -> PyResult<&Py<PyAny>> {
    RESOLVE_BATCH.get_or_try_init(py, || {
        Ok(py.import("mcp_db._resolve")?.getattr("resolve_batch")?.unbind())
    })
}

/// Resolves every waiter with its event ID. Waiters are grouped by loop; normally there
/// is one loop, so this is one `call_soon_threadsafe` for the whole batch.
pub fn resolve_all(done: Vec<(Waiter, String)>) {
    if done.is_empty() {
        return;
    }
    // `try_attach`: during interpreter shutdown there is nobody left to tell.
    let _ = Python::try_attach(|py| {
        let Ok(resolve) = resolve_batch(py) else { return };
        let mut groups: Vec<(Py<PyAny>, Bound<'_, PyList>, Bound<'_, PyList>)> = Vec::new();
        for (waiter, result) in done {
            let index = groups.iter().position(|(lp, _, _)| lp.is(&waiter.event_loop));
            let index = index.unwrap_or_else(|| {
                groups.push((waiter.event_loop.clone_ref(py), PyList::empty(py), PyList::empty(py)));
                groups.len() - 1
            });
            let (_, futures, results) = &groups[index];
            let _ = futures.append(waiter.future);
            let _ = results.append(result);
        }
        for (event_loop, futures, results) in groups {
            // A closed loop raises RuntimeError: its coroutines are gone, nothing to resolve.
            let _ = event_loop.call_method1(py, "call_soon_threadsafe", (resolve, futures, results));
        }
    });
}
