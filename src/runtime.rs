//! The tokio runtime all of the core's I/O runs on: one per process, built on first use.
//!
//! A fork copies a process's memory but only the thread that forked, so in a child the
//! parent's runtime is a husk: a task spawned on it never runs, and whoever waits for it
//! waits forever. That is `gunicorn --preload`, or `multiprocessing` with the fork start
//! method, once the parent has built a store. So the runtime belongs to the process that
//! built it: a child (told by `os.fork`'s hook, [`_after_fork`], or by its own process ID
//! when something else forked) builds its own on first use. The parent's is leaked, never
//! dropped: dropping it would wait for worker threads the child does not have.
//!
//! Its work is small and bursty (a frame, a pipeline reply) and every result goes back to
//! one Python thread, so one worker thread by default: a second one mostly adds
//! cross-thread wake-ups. `MCP_DB_TOKIO_THREADS` sets it.
//!
//! On Linux that thread is scheduled as a batch thread (`SCHED_BATCH`): when it wakes (a
//! reply, a frame, a write from the event loop) it runs on an idle core if there is one, and
//! otherwise waits for the running thread to sleep or for the next tick, instead of
//! preempting it. The work it wakes for is a few microseconds; a preemption costs the
//! preempted event loop tens of microseconds in switches and cold caches, and while it waits
//! more work queues up for it to do in one go. Behind round robin, where every relayed
//! request wakes it about seven times on two nodes, this cut server CPU per request by 5 to
//! 15% (README, Performance), with the same latency at light load. Its priority is
//! unchanged: it gets its fair share of the CPU. `MCP_DB_IO_SCHED=normal` keeps the
//! system's default policy.

use std::sync::{Arc, Barrier, Mutex, PoisonError};
use std::time::Duration;

use pyo3::prelude::*;
use tokio::runtime::Runtime;

/// This process's runtime.
#[derive(Clone, Copy)]
struct Current {
    pid: u32,
    runtime: &'static Runtime,
    threads: usize,
}

/// Taken only by threads that hold the GIL, and `os.fork` holds it too: never held by
/// another thread at a fork, so a child can always take it.
static CURRENT: Mutex<Option<Current>> = Mutex::new(None);

fn threads() -> usize {
    std::env::var("MCP_DB_TOKIO_THREADS").ok().and_then(|v| v.parse::<usize>().ok()).filter(|n| *n > 0).unwrap_or(1)
}

/// Whether the I/O threads run as batch threads: `MCP_DB_IO_SCHED`, `batch` (the default)
/// or `normal`. `ValueError` for anything else.
fn batch_scheduled() -> PyResult<bool> {
    match std::env::var("MCP_DB_IO_SCHED").as_deref() {
        Err(_) | Ok("batch") => Ok(true),
        Ok("normal") => Ok(false),
        Ok(other) => Err(pyo3::exceptions::PyValueError::new_err(format!(
            "MCP_DB_IO_SCHED must be 'batch' or 'normal', not {other:?}"
        ))),
    }
}

/// Makes the calling thread a batch thread (see the module's doc). Best effort: where the
/// system refuses (a seccomp profile, say), the thread keeps its policy and works as well.
#[cfg(target_os = "linux")]
fn schedule_as_batch() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid `sched_param` for the call's duration; pid 0 is the calling
    // thread, and the call changes nothing else.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &raw const param) };
}

#[cfg(not(target_os = "linux"))]
fn schedule_as_batch() {}

/// The runtime of this process if it has built one, without building it.
fn current() -> Option<Current> {
    let current = *CURRENT.lock().unwrap_or_else(PoisonError::into_inner);
    current.filter(|c| c.pid == std::process::id())
}

/// The runtime the core's tasks run on: this process's own, built now if need be.
/// `OSError` if its thread cannot be started.
pub(crate) fn runtime() -> PyResult<&'static Runtime> {
    let pid = std::process::id();
    let mut current = CURRENT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(c) = current.as_ref().filter(|c| c.pid == pid) {
        return Ok(c.runtime);
    }
    let threads = threads();
    let batch = batch_scheduled()?;
    let built = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .thread_name("mcp-db-io")
        .on_thread_start(move || {
            if batch {
                schedule_as_batch();
            }
        })
        .build()?;
    // Leaked: it lives as long as the process, and the parent's, if any, is never dropped.
    let runtime: &'static Runtime = Box::leak(Box::new(built));
    *current = Some(Current { pid, runtime, threads });
    Ok(runtime)
}

/// Forgets the parent's runtime in a forked child (registered with
/// `os.register_at_fork(after_in_child=...)`); the child builds its own on first use.
///
/// The process ID alone would tell the child from its parent, but not from a grandparent
/// long gone whose ID the system gave out again.
#[pyfunction]
pub(crate) fn _after_fork() {
    *CURRENT.lock().unwrap_or_else(PoisonError::into_inner) = None;
}

/// Stops the I/O threads for good at interpreter exit (registered with `atexit`).
///
/// Once the interpreter finalizes, a thread that attaches to it (to complete an asyncio
/// future, or to log) is terminated where it stands, which aborts the process: a server
/// shutting down, or the `mcp-db` command, would exit with SIGABRT now and then. So before
/// that, every I/O thread is parked inside a task of its own, and nothing of the core runs
/// again. Waits at most a second for them. A process that never built its runtime (a child
/// that did not use the core) has nothing to stop.
#[pyfunction]
pub(crate) fn _quiesce(py: Python<'_>) {
    let Some(Current { runtime, threads, .. }) = current() else { return };
    let barrier = Arc::new(Barrier::new(threads));
    let (parked, all_parked) = std::sync::mpsc::channel();
    for _ in 0..threads {
        let (barrier, parked) = (barrier.clone(), parked.clone());
        runtime.spawn(async move {
            // All workers must be held at once, or one would steal the others' tasks.
            if barrier.wait().is_leader() {
                let _ = parked.send(());
            }
            loop {
                std::thread::park();
            }
        });
    }
    py.detach(move || {
        let _ = all_parked.recv_timeout(Duration::from_secs(1));
    });
}
