//! mcp-db's Python binding, `mcp_db._core`: adapters from `mcp_db_core` (which knows
//! nothing of Python) to Python classes. This file registers the module and sets up the
//! runtime; each class family lives in its own file.

use mcp_db_core::events::id;
use pyo3::prelude::*;

pub mod bridge;
pub mod bus;
pub mod construct;
pub mod deployment;
pub mod error;
pub mod events;
pub mod keys;
pub mod logging;
pub mod memory;
pub mod ownership;
pub mod relay;
pub mod sessions;
pub mod subscriptions;

/// Splits an event ID into `(session, stream)`, or `None` if it is not one of ours.
#[pyfunction]
fn parse_event_id(event_id: &str) -> Option<(String, String)> {
    id::EventId::decode(event_id).map(|id| (id.session, id.stream))
}

/// The event ID (`Last-Event-ID`) of the entry at `position` (`<ms>-<seq>`) of a session's
/// stream, or `None` if `position` is not an entry ID.
#[pyfunction(name = "event_id")]
fn encode_event_id(session: &str, stream: &str, position: &str) -> Option<String> {
    id::Position::parse(position).map(|p| id::EventId::encode(session, stream, p))
}

/// The runtime all of the core's I/O runs on. Its work is small and bursty (a frame, a
/// pipeline reply) and every result goes back to one Python thread, so one worker thread by
/// default: a second one mostly adds cross-thread wake-ups. `MCP_DB_TOKIO_THREADS` sets it.
fn init_runtime() {
    let threads = std::env::var("MCP_DB_TOKIO_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1);
    IO_THREADS.store(threads, std::sync::atomic::Ordering::SeqCst);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(threads).enable_all().thread_name("mcp-db-io");
    pyo3_async_runtimes::tokio::init(builder);
}

static IO_THREADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

/// The runtime the core's tasks run on (set up when the module is imported).
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    pyo3_async_runtimes::tokio::get_runtime()
}

/// Stops the I/O threads for good at interpreter exit (registered with `atexit`).
///
/// Once the interpreter finalizes, a thread that attaches to it (to complete an asyncio
/// future, or to log) is terminated where it stands, which aborts the process: a server
/// shutting down, or the `mcp-db` command, would exit with SIGABRT now and then. So before
/// that, every I/O thread is parked inside a task of its own, and nothing of the core runs
/// again. Waits at most a second for them.
#[pyfunction]
fn _quiesce(py: Python<'_>) {
    let threads = IO_THREADS.load(std::sync::atomic::Ordering::SeqCst);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(threads));
    let (parked, all_parked) = std::sync::mpsc::channel();
    for _ in 0..threads {
        let (barrier, parked) = (barrier.clone(), parked.clone());
        runtime().spawn(async move {
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
        let _ = all_parked.recv_timeout(std::time::Duration::from_secs(1));
    });
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    init_runtime();
    // rediss:// needs a process-wide crypto provider; another extension may have set one.
    mcp_db_core::install_crypto_provider();
    logging::install();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("MAX_EVENT_ID_LEN", id::MAX_EVENT_ID_LEN)?;
    m.add_class::<deployment::Deployment>()?;
    m.add_class::<events::RedisEvents>()?;
    m.add_class::<events::ReplayPages>()?;
    m.add_class::<events::Replay>()?;
    m.add_class::<events::Page>()?;
    m.add_class::<events::Run>()?;
    m.add_class::<memory::MemoryEvents>()?;
    m.add_function(wrap_pyfunction!(parse_event_id, m)?)?;
    m.add_function(wrap_pyfunction!(encode_event_id, m)?)?;
    m.add_function(wrap_pyfunction!(_quiesce, m)?)?;
    m.py().import("atexit")?.call_method1("register", (m.getattr("_quiesce")?,))?;
    m.add_function(wrap_pyfunction!(construct::construct_models, m)?)?;
    m.add_function(wrap_pyfunction!(keys::key_layout, m)?)?;
    m.add_function(wrap_pyfunction!(keys::key_of, m)?)?;
    m.add_function(wrap_pyfunction!(keys::parse_key, m)?)?;
    m.add_function(wrap_pyfunction!(keys::redact, m)?)?;
    m.add_class::<sessions::SessionRecords>()?;
    m.add_class::<sessions::SessionRecord>()?;
    m.add_class::<sessions::Transition>()?;
    m.add_class::<sessions::Refusal>()?;
    m.add_class::<sessions::Subscribed>()?;
    m.add_class::<bus::Bus>()?;
    m.add_class::<bus::News>()?;
    m.add_class::<ownership::Ownership>()?;
    m.add_class::<ownership::Claim>()?;
    m.add_class::<ownership::ClaimOutcome>()?;
    m.add_class::<ownership::Touched>()?;
    m.add_class::<relay::Relay>()?;
    m.add_class::<relay::Forward>()?;
    m.add_class::<relay::Forwarded>()?;
    m.add_class::<relay::RelayOutcome>()?;
    m.add_class::<relay::RelayedRequest>()?;
    m.add_class::<relay::Whole>()?;
    m.add_class::<relay::Head>()?;
    m.add_class::<relay::Chunk>()?;
    m.add_class::<relay::End>()?;
    m.add_class::<relay::Cut>()?;
    m.add_class::<subscriptions::SubscriptionBus>()?;
    m.add_class::<subscriptions::EventKind>()?;
    m.add_class::<subscriptions::Delivery>()?;
    m.add_class::<bridge::Wakeup>()?;
    Ok(())
}
