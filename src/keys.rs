//! The key layout for Python (the `mcp-db` command): patterns, keys and their parsing.

use mcp_db_core::keys::{self, events_key, node_key, parse, record_key, validate_prefix, Key};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

fn checked(prefix: &str) -> PyResult<()> {
    validate_prefix(prefix).map_err(PyValueError::new_err)
}

/// The layout of `prefix`: each key kind with its SCAN pattern, and the bus channel.
#[pyfunction]
pub fn key_layout(prefix: &str) -> PyResult<Vec<(&'static str, String)>> {
    checked(prefix)?;
    Ok(keys::layout(prefix))
}

/// The key of a session's record, of one of its event streams, or of a node's heartbeat.
#[pyfunction]
#[pyo3(signature = (prefix, kind, name, stream=None))]
pub fn key_of(prefix: &str, kind: &str, name: &str, stream: Option<&str>) -> PyResult<String> {
    checked(prefix)?;
    match (kind, stream) {
        ("session", None) => Ok(record_key(prefix, name)),
        ("events", Some(stream)) => Ok(events_key(prefix, name, stream)),
        ("node", None) => Ok(node_key(prefix, name)),
        _ => Err(PyValueError::new_err(format!(
            "no key of kind {kind:?}{}; kinds: session, events (with a stream), node",
            if stream.is_some() { " with a stream" } else { "" }
        ))),
    }
}

/// `(kind, session or node, stream or request or None)` for a key of `prefix`'s layout,
/// `None` for any other key.
#[pyfunction]
pub fn parse_key(prefix: &str, key: &str) -> Option<(&'static str, String, Option<String>)> {
    Some(match parse(prefix, key)? {
        Key::Events { session, stream } => ("events", session, Some(stream)),
        Key::Record { session } => ("session", session, None),
        Key::Claim { session, request } => ("claim", session, Some(request)),
        Key::Node { node } => ("node", node, None),
    })
}

/// `url` with its password hidden, in the user part (`user:***@`) and in any query parameter
/// whose name contains `pass`, for every message that names a server (the core's errors and
/// the `mcp-db` command's output alike).
#[pyfunction]
pub fn redact(url: &str) -> String {
    mcp_db_core::connection::redact(url)
}
