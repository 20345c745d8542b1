//! The bus: one Redis pub/sub channel per prefix, for news every node must hear at once
//! (a session was closed, so whoever holds its transport lets it go).
//!
//! A background task keeps one subscription open and reconnects after a fault; Python
//! pulls messages with `next()` on its own event loop, so no Python code runs on tokio's
//! threads. Messages sent while a node was cut off are missed; the per-request record
//! lookup still answers correctly, the bus only makes nodes let go of memory sooner. On a
//! Redis Cluster a PUBLISH reaches every node's subscribers, so the bus, which never counts
//! who heard it, need not follow the relay's hub.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use crate::connection::Connector;
use crate::error::{Error, Result};

const BACKLOG: usize = 4096;

async fn listen(connector: Arc<Connector>, channel: String, tx: mpsc::Sender<String>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match connector.pubsub().await {
            Ok((mut pubsub, _)) => match pubsub.subscribe(&channel).await {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        let Ok(payload) = message.get_payload::<String>() else { continue };
                        // A full backlog means Python is not reading: drop rather than grow.
                        if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(payload) {
                            return;
                        }
                    }
                    tracing::warn!("bus subscription to {} ended; resubscribing", connector.server());
                }
                Err(e) => tracing::warn!("cannot subscribe to the bus: {}", Error::from_redis(&e, connector.server())),
            },
            Err(e) => tracing::debug!("bus: {e}"),
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// A subscription to the bus of one prefix, and the means to publish on it.
pub struct Bus {
    connector: Arc<Connector>,
    channel: String,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<String>>>,
}

impl Bus {
    /// Subscribes in a background task on `runtime`, which reconnects after a fault.
    pub fn start(connector: Arc<Connector>, prefix: &str, runtime: &Handle) -> Bus {
        let channel = crate::keys::bus_channel(prefix);
        let (tx, rx) = mpsc::channel(BACKLOG);
        runtime.spawn(listen(connector.clone(), channel.clone(), tx));
        Bus { connector, channel, rx: Arc::new(tokio::sync::Mutex::new(rx)) }
    }

    /// The next message (waits for one); `None` once the subscription is gone for good.
    pub fn next(&self) -> impl Future<Output = Option<String>> + Send + 'static {
        let rx = self.rx.clone();
        async move { rx.lock().await.recv().await }
    }

    /// Publishes `message` to every subscribed node; resolves to how many received it.
    pub fn publish(&self, message: String) -> impl Future<Output = Result<i64>> + Send + 'static {
        let connector = self.connector.clone();
        let channel = self.channel.clone();
        async move {
            let mut pipe = redis::pipe();
            pipe.cmd("PUBLISH").arg(&channel).arg(&message);
            let reply = connector.query(&pipe).await?;
            Ok(match reply.first() {
                Some(redis::Value::Int(n)) => *n,
                _ => 0,
            })
        }
    }
}
