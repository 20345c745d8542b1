//! The bus: one Redis pub/sub channel per prefix, for news every node must hear at once
//! (a session was closed, or taken over, so whoever holds its transport lets it go).
//! [`News`] is its one message type, built and parsed here only.
//!
//! A background task keeps one subscription open and reconnects after a fault; Python
//! pulls messages with `next()` on its own event loop, so no Python code runs on tokio's
//! threads. Messages sent while a node was cut off are missed; the per-request record
//! lookup still answers correctly, the bus only makes nodes let go of memory sooner. On a
//! Redis Cluster a PUBLISH reaches every node's subscribers, so the bus, which never counts
//! who heard it, need not follow the relay's hub.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use crate::connection::Connector;
use crate::error::{Error, Result};

const BACKLOG: usize = 4096;

/// What the bus carries. On the wire, `closed <session>` or `owner <session> <node>
/// <epoch>`: text, so nodes of every mcp-db version on one prefix read each other's news.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum News {
    /// The session was closed (DELETE, or `mcp-db sessions close`).
    Closed { session: String },
    /// `node` took the session over at `epoch`.
    TakenOver { session: String, node: String, epoch: i64 },
}

impl News {
    #[must_use]
    pub fn encode(&self) -> String {
        match self {
            News::Closed { session } => format!("closed {session}"),
            News::TakenOver { session, node, epoch } => format!("owner {session} {node} {epoch}"),
        }
    }

    /// `None` for anything else (a newer version's news, or noise on the channel).
    #[must_use]
    pub fn decode(message: &str) -> Option<News> {
        let (kind, rest) = message.split_once(' ')?;
        match kind {
            "closed" if !rest.is_empty() && !rest.contains(' ') => Some(News::Closed { session: rest.to_owned() }),
            "owner" => {
                let (session, rest) = rest.split_once(' ')?;
                // A node ID may hold spaces; the epoch is the last word.
                let (node, epoch) = rest.rsplit_once(' ')?;
                let epoch = epoch.parse().ok()?;
                (!session.is_empty() && !node.is_empty()).then(|| News::TakenOver {
                    session: session.to_owned(),
                    node: node.to_owned(),
                    epoch,
                })
            }
            _ => None,
        }
    }
}

async fn listen(connector: Arc<Connector>, channel: String, tx: mpsc::Sender<News>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match connector.pubsub().await {
            Ok((mut pubsub, _)) => match pubsub.subscribe(&channel).await {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        let Ok(payload) = message.get_payload::<String>() else { continue };
                        let Some(news) = News::decode(&payload) else { continue };
                        // A full backlog means Python is not reading: drop rather than grow.
                        if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(news) {
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

type Subscription = Arc<tokio::sync::Mutex<mpsc::Receiver<News>>>;

/// The bus of one prefix: publishes news, and subscribes (a dedicated connection, in a
/// background task that reconnects after a fault) the first time it is asked for news, so
/// a one-shot publisher such as the CLI never subscribes.
pub struct Bus {
    connector: Arc<Connector>,
    channel: String,
    runtime: Handle,
    rx: OnceLock<Subscription>,
}

impl Bus {
    pub fn new(connector: Arc<Connector>, prefix: &str, runtime: &Handle) -> Bus {
        let channel = crate::keys::bus_channel(prefix);
        Bus { connector, channel, runtime: runtime.clone(), rx: OnceLock::new() }
    }

    fn subscription(&self) -> Subscription {
        self.rx
            .get_or_init(|| {
                let (tx, rx) = mpsc::channel(BACKLOG);
                self.runtime.spawn(listen(self.connector.clone(), self.channel.clone(), tx));
                Arc::new(tokio::sync::Mutex::new(rx))
            })
            .clone()
    }

    /// The next news (waits for it); `None` once the subscription is gone for good.
    pub fn next(&self) -> impl Future<Output = Option<News>> + Send + 'static {
        let rx = self.subscription();
        async move { rx.lock().await.recv().await }
    }

    /// Sends `news` to every subscribed node; resolves to how many received it. On a
    /// cluster the connector publishes through the hub (see `cluster.rs`).
    pub fn publish(&self, news: &News) -> impl Future<Output = Result<i64>> + Send + 'static {
        let connector = self.connector.clone();
        let channel = self.channel.clone();
        let message = news.encode();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn news_round_trips() {
        for news in [
            News::Closed { session: "abc".into() },
            News::TakenOver { session: "abc".into(), node: "host:12".into(), epoch: 7 },
            News::TakenOver { session: "abc".into(), node: "a node with spaces".into(), epoch: 1 },
        ] {
            assert_eq!(News::decode(&news.encode()), Some(news));
        }
    }

    #[test]
    fn the_wire_format_is_what_older_nodes_send() {
        assert_eq!(News::decode("closed s1"), Some(News::Closed { session: "s1".into() }));
        assert_eq!(
            News::decode("owner s1 host:9 3"),
            Some(News::TakenOver { session: "s1".into(), node: "host:9".into(), epoch: 3 })
        );
    }

    #[test]
    fn anything_else_is_ignored() {
        for noise in
            ["", "closed", "closed ", "closed a b", "owner s1 node", "owner s1 node x", "owner  n 1", "hello s1"]
        {
            assert_eq!(News::decode(noise), None, "{noise:?}");
        }
    }
}
