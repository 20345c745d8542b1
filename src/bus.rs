//! `Bus`: the bus of one prefix, as seen from Python (see `mcp_db_core::sessions::bus`).
//! Python pulls messages with `next()` on its own event loop, so no Python code runs on
//! tokio's threads.

use mcp_db_core::sessions::bus;
use pyo3::prelude::*;

use crate::error::to_py;

/// A subscription to the bus of one prefix, and the means to publish on it.
#[pyclass(frozen, module = "mcp_db._core")]
pub struct Bus {
    bus: bus::Bus,
}

impl Bus {
    pub fn new(bus: bus::Bus) -> Bus {
        Bus { bus }
    }
}

#[pymethods]
impl Bus {
    /// The next message (waits for one).
    fn next<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let next = self.bus.next();
        pyo3_async_runtimes::tokio::future_into_py(py, async move { Ok(next.await) })
    }

    /// Publishes `message` to every subscribed node; returns how many received it.
    fn publish<'py>(&self, py: Python<'py>, message: String) -> PyResult<Bound<'py, PyAny>> {
        let publish = self.bus.publish(message);
        pyo3_async_runtimes::tokio::future_into_py(py, async move { publish.await.map_err(to_py) })
    }
}
