//! mcp-db's Rust core, exposed to Python as `mcp_db._core`. This file only registers the
//! module; each concept lives in its own file.

use pyo3::prelude::*;

pub mod bus;
pub mod completion;
pub mod connection;
pub mod construct;
pub mod error;
pub mod event_id;
pub mod events;
pub mod keys;
pub mod logging;
pub mod memory;
pub mod ownership;
pub mod page;
pub mod relay;
pub mod sessions;
pub mod writer;

/// Splits an event ID into `(session, stream)`, or `None` if it is not one of ours.
#[pyfunction]
fn parse_event_id(event_id: &str) -> Option<(String, String)> {
    event_id::EventId::decode(event_id).map(|id| (id.session, id.stream))
}

/// The runtime all of the core's I/O runs on. Its work is small and bursty (a frame, a
/// pipeline reply) and every result goes back to one Python thread, so one worker thread by
/// default: a second one mostly adds cross-thread wake-ups. `MCP_DB_TOKIO_THREADS` sets it.
fn init_runtime() {
    let threads = std::env::var("MCP_DB_TOKIO_THREADS").ok().and_then(|v| v.parse::<usize>().ok()).filter(|n| *n > 0).unwrap_or(1);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(threads).enable_all().thread_name("mcp-db-io");
    pyo3_async_runtimes::tokio::init(builder);
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    init_runtime();
    logging::install();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("MAX_EVENT_ID_LEN", event_id::MAX_EVENT_ID_LEN)?;
    m.add_class::<events::RedisEvents>()?;
    m.add_class::<memory::MemoryEvents>()?;
    m.add_function(wrap_pyfunction!(parse_event_id, m)?)?;
    m.add_function(wrap_pyfunction!(construct::construct_models, m)?)?;
    m.add_class::<events::ReplayPages>()?;
    m.add_class::<sessions::SessionRecords>()?;
    m.add_class::<bus::Bus>()?;
    m.add_class::<ownership::Ownership>()?;
    m.add_class::<relay::Relay>()?;
    m.add_class::<relay::Forward>()?;
    Ok(())
}
