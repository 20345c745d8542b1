//! Forwards Rust `tracing` events to Python's `logging`, under the `mcp_db` logger.
//!
//! Only warnings and errors happen on paths that run often (a Redis fault), and those are
//! rate-limited where they are raised, so taking the GIL per event here is cheap enough.

use std::fmt::Write;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

struct PythonLogging;

fn python_level(level: Level) -> u8 {
    match level {
        Level::ERROR => 40,
        Level::WARN => 30,
        Level::INFO => 20,
        Level::DEBUG => 10,
        Level::TRACE => 5,
    }
}

impl<S: Subscriber> Layer<S> for PythonLogging {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = python_level(*event.metadata().level());
        let mut message = Message(String::new());
        event.record(&mut message);
        let _ = Python::try_attach(|py| -> PyResult<()> {
            let logger = LOGGER.get_or_try_init(py, || {
                Ok::<_, PyErr>(py.import("logging")?.call_method1("getLogger", ("mcp_db",))?.unbind())
            })?;
            let logger = logger.bind(py);
            if logger.call_method1("isEnabledFor", (level,))?.is_truthy()? {
                logger.call_method1("log", (level, message.0))?;
            }
            Ok(())
        });
    }
}

/// Installs the bridge as the process-wide subscriber, unless one is installed already
/// (an embedding Rust program keeps its own).
pub fn install() {
    let _ = tracing_subscriber::registry().with(PythonLogging).try_init();
}
