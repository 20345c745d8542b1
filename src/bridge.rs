//! The bridge to asyncio: completes asyncio futures from the I/O thread without taking
//! the GIL there.
//!
//! `future_into_py` completes a future by attaching to the interpreter on the I/O thread
//! and calling `loop.call_soon_threadsafe`. The I/O thread waits for the GIL whenever the
//! event loop is busy, and the loop, woken by that call, then waits for the I/O thread to
//! let the GIL go: two hand-offs per result. Here the I/O thread only queues the result and
//! writes a byte to a socket the loop watches (`loop.add_reader`, one per loop, see
//! `mcp_db._wake`); the loop turns the results into Python objects itself, on its own
//! thread, already holding the GIL. Used by the relay and by the writer ([`Waiter`]: the
//! core's writer completes appends through [`Completion`], one wake-up per batch).

use std::future::Future;
use std::io::{Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use mcp_db_core::events::Completion;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyString;
use pyo3::IntoPyObjectExt;

/// Builds a finished piece of work's result (or error) as a Python object, on the loop;
/// or, when its future is already done (its caller was cancelled: `wanted` is false),
/// disposes of the result and returns `None`.
pub type Finish = Box<dyn FnOnce(Python<'_>, bool) -> Option<PyResult<Py<PyAny>>> + Send>;

/// A future of the loop, and how to build its result.
pub type Done = (Py<PyAny>, Finish);

/// What the I/O thread holds of a loop's [`Wakeup`].
pub struct Inner {
    reader: UnixStream,
    writer: UnixStream,
    done: Mutex<Vec<Done>>,
    /// A byte is on its way to the loop, or the loop has yet to drain: no need for another.
    signalled: AtomicBool,
}

impl Inner {
    fn push(&self, future: Py<PyAny>, finish: Finish) {
        self.push_all(vec![(future, finish)]);
    }

    /// Queues results for the loop and wakes it (once, however many).
    pub fn push_all(&self, items: Vec<Done>) {
        self.done.lock().unwrap().extend(items);
        if !self.signalled.swap(true, Ordering::SeqCst) {
            // Full socket buffer: a wake-up is pending anyway.
            let _ = (&self.writer).write(&[1]);
        }
    }
}

/// One event loop's end: the socket it watches and the results waiting for it.
#[pyclass(frozen, module = "mcp_db._core")]
pub struct Wakeup {
    inner: Arc<Inner>,
}

impl Wakeup {
    /// What the I/O thread needs to complete this loop's futures.
    pub fn handle(&self) -> Arc<Inner> {
        self.inner.clone()
    }
}

#[pymethods]
impl Wakeup {
    #[new]
    fn new() -> PyResult<Self> {
        let (reader, writer) = UnixStream::pair()?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        let inner = Inner { reader, writer, done: Mutex::new(Vec::new()), signalled: AtomicBool::new(false) };
        Ok(Wakeup { inner: Arc::new(inner) })
    }

    /// The file descriptor the loop watches for readability.
    fn fileno(&self) -> i32 {
        self.inner.reader.as_raw_fd()
    }

    /// Completes every future whose result has come (the loop's reader callback). A
    /// future already done (its caller was cancelled) is not completed; its result is
    /// disposed of as its work says (dropped, or handed back).
    fn drain(&self, py: Python<'_>) {
        let mut buf = [0u8; 64];
        while matches!((&self.inner.reader).read(&mut buf), Ok(n) if n > 0) {}
        // Cleared before taking the queue: a result queued after this point signals again.
        self.inner.signalled.store(false, Ordering::SeqCst);
        let done = std::mem::take(&mut *self.inner.done.lock().unwrap());
        for (future, finish) in done {
            let future = future.bind(py);
            let wanted = !future.call_method0("done").and_then(|d| d.is_truthy()).unwrap_or(true);
            let outcome = match finish(py, wanted) {
                None => continue,
                Some(Ok(value)) => future.call_method1("set_result", (value,)),
                Some(Err(e)) => future.call_method1("set_exception", (e.into_value(py),)),
            };
            if let Err(e) = outcome {
                tracing::warn!("cannot complete an asyncio future: {e}");
            }
        }
    }
}

/// An asyncio future waiting for one event ID, with the wake-up of the loop that owns it.
pub struct Waiter {
    pub wakeup: Arc<Inner>,
    pub future: Py<PyAny>,
}

impl Completion for Waiter {
    /// Resolves every waiter with its event ID. Waiters are grouped by loop; normally
    /// there is one loop, so this is one wake-up for the whole batch.
    fn complete_all(done: Vec<(Waiter, String)>) {
        let mut groups: Vec<(Arc<Inner>, Vec<Done>)> = Vec::new();
        for (waiter, id) in done {
            let finish: Finish =
                Box::new(move |py, wanted| wanted.then(|| Ok(PyString::new(py, &id).into_any().unbind())));
            match groups.iter_mut().find(|(inner, _)| Arc::ptr_eq(inner, &waiter.wakeup)) {
                Some((_, items)) => items.push((waiter.future, finish)),
                None => groups.push((waiter.wakeup, vec![(waiter.future, finish)])),
            }
        }
        for (inner, items) in groups {
            inner.push_all(items);
        }
    }
}

static START: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Runs `work` on the I/O thread and returns an asyncio future of the running loop that
/// completes with `finish(result)`, built on the loop's thread. A result that comes after
/// its caller was cancelled is dropped; cancelling the future aborts the work (once the
/// loop runs the done callbacks).
pub fn spawn<T, W, F>(py: Python<'_>, work: W, finish: F) -> PyResult<Bound<'_, PyAny>>
where
    T: Send + 'static,
    W: Future<Output = PyResult<T>> + Send + 'static,
    F: FnOnce(Python<'_>, T) -> PyResult<Py<PyAny>> + Send + 'static,
{
    let (future, promise) = promise(py)?;
    let task = crate::runtime::runtime()?.spawn(async move {
        let result = work.await;
        promise.keep(Box::new(move |py, wanted| match result {
            Ok(value) => wanted.then(|| finish(py, value)),
            Err(e) => wanted.then_some(Err(e)),
        }));
    });
    // A caller that is cancelled stops the work too (as with `future_into_py`).
    let abort = task.abort_handle();
    when_cancelled(&future, move || abort.abort())?;
    Ok(future)
}

/// Runs `work` on the I/O thread and returns an asyncio future of its result, converted to
/// Python on the loop's thread: what `pyo3_async_runtimes::tokio::future_into_py` does,
/// without attaching to the interpreter from another thread. That matters at exit too:
/// `future_into_py` completes on a blocking-pool thread that takes the GIL, and one still
/// doing so when the interpreter finalizes is ended where it stands, which aborts the
/// process (SIGABRT).
pub fn future<T, W>(py: Python<'_>, work: W) -> PyResult<Bound<'_, PyAny>>
where
    T: for<'py> IntoPyObject<'py> + Send + 'static,
    W: Future<Output = PyResult<T>> + Send + 'static,
{
    spawn(py, work, |py, value: T| value.into_py_any(py))
}

/// A future of the running loop, and what completes it from any thread.
pub fn promise(py: Python<'_>) -> PyResult<(Bound<'_, PyAny>, Promise)> {
    let start = START.get_or_try_init(py, || Ok::<_, PyErr>(py.import("mcp_db._wake")?.getattr("start")?.unbind()))?;
    let (wakeup, future): (Bound<'_, Wakeup>, Bound<'_, PyAny>) = start.bind(py).call0()?.extract()?;
    let promise = Promise { inner: wakeup.get().handle(), future: future.clone().unbind() };
    Ok((future, promise))
}

/// Completes one asyncio future from any thread, through its loop's [`Wakeup`]. Dropped
/// unkept, it leaves the future pending (its caller cancels it).
pub struct Promise {
    inner: Arc<Inner>,
    future: Py<PyAny>,
}

impl Promise {
    /// Queues the future's result, built by `finish` on the loop's thread.
    pub fn keep(self, finish: Finish) {
        self.inner.push(self.future, finish);
    }
}

/// A flag set once `future` is cancelled (by a done callback; nothing else runs for it).
pub fn on_cancel(future: &Bound<'_, PyAny>) -> PyResult<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    when_cancelled(future, move || set.store(true, Ordering::SeqCst))?;
    Ok(flag)
}

/// Runs `then` once `future` is cancelled.
fn when_cancelled(future: &Bound<'_, PyAny>, then: impl Fn() + Send + Sync + 'static) -> PyResult<()> {
    future.call_method1("add_done_callback", (OnCancel(Box::new(then)),))?;
    Ok(())
}

/// Runs its action once its future is cancelled (a done callback).
#[pyclass(frozen, module = "mcp_db._core")]
struct OnCancel(Box<dyn Fn() + Send + Sync>);

#[pymethods]
impl OnCancel {
    fn __call__(&self, future: &Bound<'_, PyAny>) -> PyResult<()> {
        if future.call_method0("cancelled")?.is_truthy()? {
            (self.0)();
        }
        Ok(())
    }
}
