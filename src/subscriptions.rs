//! `SubscriptionBus`: the subscription bus of one prefix, as seen from Python (see
//! `mcp_db_core::subscriptions`), and what it hands up: a `Delivery` of an `EventKind`.
//! Deliveries reach the event loop through the bridge, one hand-off each.

use mcp_db_core::subscriptions::{self, Delivery as CoreDelivery, Event};
use pyo3::prelude::*;

use crate::bridge;
use crate::error::to_py;

/// The subscription bus of one prefix (`Deployment.subscriptions()`).
#[pyclass(frozen, module = "mcp_db._core")]
pub struct SubscriptionBus {
    bus: subscriptions::Bus,
}

impl SubscriptionBus {
    pub fn new(bus: subscriptions::Bus) -> SubscriptionBus {
        SubscriptionBus { bus }
    }
}

#[pymethods]
impl SubscriptionBus {
    /// Sends an event to every other process's bus; how many subscriptions Redis handed it
    /// to. `uri` is for `RESOURCE_UPDATED` only. Raises if Redis failed (counted).
    #[pyo3(signature = (kind, uri=None))]
    fn publish<'py>(
        &self,
        py: Python<'py>,
        kind: PyRef<'_, EventKind>,
        uri: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let event = match (*kind, uri) {
            (EventKind::ToolsListChanged, None) => Event::ToolsListChanged,
            (EventKind::PromptsListChanged, None) => Event::PromptsListChanged,
            (EventKind::ResourcesListChanged, None) => Event::ResourcesListChanged,
            (EventKind::ResourceUpdated, Some(uri)) => Event::ResourceUpdated { uri },
            (kind, _) => {
                return Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "{kind:?} cannot be published here (a uri goes with RESOURCE_UPDATED only)"
                )))
            }
        };
        let publish = self.bus.publish(event);
        bridge::future(py, async move { publish.await.map_err(to_py) })
    }

    /// The next deliveries from other processes, at most `limit` (waits for the first,
    /// then takes those already waiting: a burst costs one hand-off to the event loop);
    /// `None` once the bus is gone for good. The first call subscribes.
    #[pyo3(signature = (limit=256))]
    fn next<'py>(&self, py: Python<'py>, limit: usize) -> PyResult<Bound<'py, PyAny>> {
        let next = self.bus.next_batch(limit.max(1));
        bridge::spawn(py, async move { Ok(next.await) }, |py, batch: Option<Vec<CoreDelivery>>| {
            Ok(match batch {
                None => py.None(),
                Some(batch) => {
                    let deliveries = batch.into_iter().map(|d| Py::new(py, Delivery::from(d)));
                    pyo3::types::PyList::new(py, deliveries.collect::<PyResult<Vec<_>>>()?)?.into_any().unbind()
                }
            })
        })
    }

    /// published, publish_failed, received, dropped_backlog (the reader fell too far
    /// behind), malformed, redis_errors.
    fn stats(&self) -> std::collections::HashMap<&'static str, u64> {
        self.bus.stats().snapshot().into_iter().collect()
    }
}

/// What a delivery is.
#[pyclass(frozen, eq, hash, module = "mcp_db._core")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    #[pyo3(name = "TOOLS_LIST_CHANGED")]
    ToolsListChanged,
    #[pyo3(name = "PROMPTS_LIST_CHANGED")]
    PromptsListChanged,
    #[pyo3(name = "RESOURCES_LIST_CHANGED")]
    ResourcesListChanged,
    #[pyo3(name = "RESOURCE_UPDATED")]
    ResourceUpdated,
    /// The subscription came back after an outage: events published meanwhile are lost.
    #[pyo3(name = "RESUBSCRIBED")]
    Resubscribed,
}

/// One delivery: its `kind`, and the `uri` of a `RESOURCE_UPDATED`.
#[pyclass(frozen, get_all, module = "mcp_db._core")]
pub struct Delivery {
    kind: EventKind,
    uri: Option<String>,
}

impl From<CoreDelivery> for Delivery {
    fn from(delivery: CoreDelivery) -> Self {
        let kind = |kind| Delivery { kind, uri: None };
        match delivery {
            CoreDelivery::Resubscribed => kind(EventKind::Resubscribed),
            CoreDelivery::Event(Event::ToolsListChanged) => kind(EventKind::ToolsListChanged),
            CoreDelivery::Event(Event::PromptsListChanged) => kind(EventKind::PromptsListChanged),
            CoreDelivery::Event(Event::ResourcesListChanged) => kind(EventKind::ResourcesListChanged),
            CoreDelivery::Event(Event::ResourceUpdated { uri }) => {
                Delivery { kind: EventKind::ResourceUpdated, uri: Some(uri) }
            }
        }
    }
}
