//! `Bus`: the bus of one prefix, as seen from Python (see `mcp_db_core::sessions::bus`).
//! Python pulls news with `next()` on its own event loop, so no Python code runs on tokio's
//! threads.

use mcp_db_core::sessions::bus::{self, News as CoreNews};
use pyo3::prelude::*;

use crate::bridge;

use crate::error::to_py;

/// The bus of one prefix: news for every node.
#[pyclass(frozen, module = "mcp_db._core")]
pub struct Bus {
    bus: bus::Bus,
}

impl Bus {
    pub fn new(bus: bus::Bus) -> Bus {
        Bus { bus }
    }

    fn publish<'py>(&self, py: Python<'py>, news: &CoreNews) -> PyResult<Bound<'py, PyAny>> {
        let publish = self.bus.publish(news);
        bridge::future(py, async move { publish.await.map_err(to_py) })
    }
}

#[pymethods]
impl Bus {
    /// The next news (waits for it); `None` once the subscription is gone for good. The
    /// first call subscribes.
    fn next<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let next = self.bus.next();
        bridge::future(py, async move { Ok(next.await.map(News::from)) })
    }

    /// Tells every node that `session` was closed; how many nodes heard it.
    fn closed<'py>(&self, py: Python<'py>, session: String) -> PyResult<Bound<'py, PyAny>> {
        self.publish(py, &CoreNews::Closed { session })
    }

    /// Tells every node that `node` took `session` over at `epoch`; how many heard it.
    fn taken_over<'py>(
        &self,
        py: Python<'py>,
        session: String,
        node: String,
        epoch: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.publish(py, &CoreNews::TakenOver { session, node, epoch })
    }
}

/// One piece of news from the bus: a session `closed`, or taken over by `node` at `epoch`
/// (`node` and `epoch` are set for a takeover only).
#[pyclass(frozen, get_all, module = "mcp_db._core")]
pub struct News {
    closed: bool,
    session: String,
    node: Option<String>,
    epoch: Option<i64>,
}

impl From<CoreNews> for News {
    fn from(news: CoreNews) -> Self {
        match news {
            CoreNews::Closed { session } => News { closed: true, session, node: None, epoch: None },
            CoreNews::TakenOver { session, node, epoch } => {
                News { closed: false, session, node: Some(node), epoch: Some(epoch) }
            }
        }
    }
}

#[pymethods]
impl News {
    fn __repr__(&self) -> String {
        match (&self.node, self.epoch) {
            (Some(node), Some(epoch)) => format!("News(taken over: {} by {node} at {epoch})", self.session),
            _ => format!("News(closed: {})", self.session),
        }
    }
}
