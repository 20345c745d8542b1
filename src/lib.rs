//! mcp-db's Python binding, `mcp_db._core`: adapters from `mcp_db_core` (which knows
//! nothing of Python) to Python classes. This file registers the module; each class family,
//! and the runtime, lives in its own file.

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
pub mod runtime;
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

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
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
    m.add_function(wrap_pyfunction!(runtime::_quiesce, m)?)?;
    m.py().import("atexit")?.call_method1("register", (m.getattr("_quiesce")?,))?;
    m.add_function(wrap_pyfunction!(runtime::_after_fork, m)?)?;
    let after_fork = pyo3::types::PyDict::new(m.py());
    after_fork.set_item("after_in_child", m.getattr("_after_fork")?)?;
    m.py().import("os")?.call_method("register_at_fork", (), Some(&after_fork))?;
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
