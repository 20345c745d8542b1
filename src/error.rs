//! The core's errors as Python exceptions, in one place.
//!
//! The exception classes live in `mcp_db/errors.py` so they can inherit from both
//! `McpDbError` and the matching builtin (`ValueError`, `ConnectionError`, `TimeoutError`).

use mcp_db_core::Error;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;

static ERRORS_MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// The Python exception for a core error (`.map_err(to_py)`).
pub fn to_py(err: Error) -> PyErr {
    Python::attach(|py| {
        let class = match &err {
            Error::Config(_) => "ConfigError",
            Error::Unavailable(_) => "RedisUnavailableError",
            Error::Timeout(_) => "StoreTimeoutError",
            Error::OutOfMemory(_) => "RedisOutOfMemoryError",
            Error::Redis(_) | Error::Closed => "McpDbError",
        };
        let module =
            ERRORS_MODULE.get_or_try_init(py, || PyModule::import(py, "mcp_db.errors").map(pyo3::Bound::unbind));
        match module.and_then(|m| m.bind(py).getattr(class)) {
            Ok(cls) => match cls.call1((err.message(),)) {
                Ok(instance) => PyErr::from_value(instance),
                Err(e) => e,
            },
            Err(_) => PyRuntimeError::new_err(err.message()),
        }
    })
}
