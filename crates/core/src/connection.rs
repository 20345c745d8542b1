//! One lazily opened, auto-reconnecting Redis connection per store.
//!
//! Against a single server, `ConnectionManager` multiplexes every concurrent command over
//! one socket, which is what pipelines concurrent appends together, and reconnects by itself
//! after a fault. Against a Redis Cluster (found out on first connect, from `INFO cluster`,
//! so any node's URL will do) a `ClusterConnection` does the same per node, and
//! [`crate::cluster`] fits pipelines and pub/sub to the cluster's rules.
//!
//! The first connection is opened on first use so that constructing a store never blocks,
//! and a failure to open it names the server so a wrong URL is obvious.
//!
//! `rediss://` takes the TLS options of redis-py's URLs, so one URL serves the servers and
//! the `mcp-db` command: `ssl_ca_certs` (a PEM file of the CAs to trust instead of the
//! system's), `ssl_certfile` and `ssl_keyfile` (a client certificate), and
//! `ssl_cert_reqs=none` (no certificate check; for tests only).

use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::join_all;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::SingleNodeRoutingInfo;
use redis::{ConnectionAddr, IntoConnectionInfo, Value};
use tokio::sync::OnceCell;

use crate::cluster;
use crate::error::{Error, Result};

/// The live connection: to one server, or to a cluster.
#[derive(Clone)]
enum Link {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

pub struct Connector {
    client: redis::Client,
    tls: Option<redis::TlsCertificates>,
    config: ConnectionManagerConfig,
    /// `redis://host:port/db` with no credentials: safe to put in logs and errors.
    server: String,
    timeout: Duration,
    cell: OnceCell<Link>,
    /// The cluster's pub/sub hub, once looked up (see `cluster.rs`).
    hub: Mutex<Option<(String, u16)>>,
}

/// Splits redis-py's TLS options off `url`: what redis-rs should parse, and the files.
fn tls_options(url: &str) -> Result<(String, Option<redis::TlsCertificates>)> {
    let Some((base, query)) = url.split_once('?') else { return Ok((url.to_owned(), None)) };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let read = |name: &str, path: &str| {
        std::fs::read(path).map_err(|e| Error::Config(format!("cannot read {name} file {path:?}: {e}")))
    };
    let (mut kept, mut root, mut cert, mut key, mut insecure) = (Vec::new(), None, None, None, false);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "ssl_ca_certs" => root = Some(read(name, value)?),
            "ssl_certfile" => cert = Some(read(name, value)?),
            "ssl_keyfile" => key = Some(read(name, value)?),
            "ssl_cert_reqs" => insecure = matches!(value.to_ascii_lowercase().as_str(), "none" | "cert_none"),
            _ => kept.push(pair),
        }
    }
    let mut out = base.to_owned();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    if insecure || fragment.is_some() {
        out.push('#');
        out.push_str(if insecure { "insecure" } else { fragment.unwrap_or_default() });
    }
    let client_tls = match (cert, key) {
        (Some(client_cert), Some(client_key)) => Some(redis::ClientTlsConfig { client_cert, client_key }),
        (None, None) => None,
        _ => return Err(Error::Config("ssl_certfile and ssl_keyfile go together".to_owned())),
    };
    let tls =
        (root.is_some() || client_tls.is_some()).then_some(redis::TlsCertificates { client_tls, root_cert: root });
    Ok((out, tls))
}

impl Connector {
    /// Parses `url` (`redis://`, `rediss://`, `unix://`) without connecting.
    pub fn new(url: &str, timeout: Duration) -> Result<Connector> {
        let invalid = |e: &dyn std::fmt::Display| Error::Config(format!("invalid Redis URL {:?}: {e}", redact(url)));
        let (parsed, tls) = tls_options(url)?;
        let client = match &tls {
            Some(certs) => redis::Client::build_with_tls(parsed.as_str(), certs.clone()),
            None => redis::Client::open(parsed.as_str()),
        }
        .map_err(|e| invalid(&e))?;
        let info = client.get_connection_info();
        let scheme = url.split("://").next().unwrap_or("redis");
        let server = format!("{scheme}://{}/{}", info.addr(), info.redis_settings().db());
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        Ok(Connector { client, tls, config, server, timeout, cell: OnceCell::new(), hub: Mutex::new(None) })
    }

    /// The same server and options, not connected yet. For a process forked from this one:
    /// this connector's connection is driven by a task on the parent's threads, which the
    /// child does not have, so the child must open its own.
    #[must_use]
    pub fn reopen(&self) -> Connector {
        Connector {
            client: self.client.clone(),
            tls: self.tls.clone(),
            config: self.config.clone(),
            server: self.server.clone(),
            timeout: self.timeout,
            cell: OnceCell::new(),
            hub: Mutex::new(None),
        }
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    fn timed_out(&self) -> Error {
        Error::Timeout(format!("Redis at {} did not answer within {:?}", self.server, self.timeout))
    }

    /// How long one operation may take before it counts as a fault.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `work` with the store's timeout, classifying failures.
    async fn timed<T>(&self, work: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T> {
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(Error::from_redis(&e, &self.server)),
            Err(_) => Err(self.timed_out()),
        }
    }

    /// The shared connection, opening it on first use.
    async fn link(&self) -> Result<Link> {
        let link = self
            .cell
            .get_or_try_init(|| async {
                match tokio::time::timeout(self.timeout, self.open()).await {
                    Ok(result) => result.map_err(|e| Error::from_redis(&e, &self.server)),
                    Err(_) => Err(Error::Unavailable(format!(
                        "cannot reach Redis at {}: no connection within {:?}; check that redis-server is running and the URL is right",
                        self.server, self.timeout
                    ))),
                }
            })
            .await?;
        Ok(link.clone())
    }

    async fn open(&self) -> redis::RedisResult<Link> {
        let mut single = ConnectionManager::new_with_config(self.client.clone(), self.config.clone()).await?;
        let info: String = redis::cmd("INFO").arg("cluster").query_async(&mut single).await?;
        if !info.lines().any(|l| l.trim() == "cluster_enabled:1") {
            return Ok(Link::Single(single));
        }
        let mut builder = redis::cluster::ClusterClient::builder(vec![self.client.get_connection_info().clone()])
            .connection_timeout(self.timeout)
            .response_timeout(self.timeout)
            .retries(2);
        if let Some(certs) = &self.tls {
            builder = builder.certs(certs.clone());
        }
        Ok(Link::Cluster(builder.build()?.get_async_connection().await?))
    }

    /// Whether the server is a Redis Cluster (connecting if need be).
    pub async fn is_cluster(&self) -> Result<bool> {
        Ok(matches!(self.link().await?, Link::Cluster(_)))
    }

    /// Runs a pipeline with the store's timeout, classifying failures; a command Redis
    /// refuses fails the whole call. On a cluster it runs as one pipeline per slot, side by
    /// side (see `cluster.rs`).
    pub async fn query(&self, pipe: &redis::Pipeline) -> Result<Vec<Value>> {
        match self.link().await? {
            Link::Single(mut conn) => self.timed(pipe.query_async::<Vec<Value>>(&mut conn)).await,
            Link::Cluster(conn) => {
                // The pieces keep refusals in place (see `cluster::split`); fail as redis-rs
                // does on one server.
                let values = self.query_cluster(conn, pipe).await?;
                match values.iter().find_map(|v| if let Value::ServerError(e) = v { Some(e) } else { None }) {
                    Some(e) if e.code() == "OOM" => Err(Error::out_of_memory(&self.server, e)),
                    Some(e) => Err(Error::Redis(format!("Redis at {} answered with an error: {e}", self.server))),
                    None => Ok(values),
                }
            }
        }
    }

    /// Like [`Connector::query`], but a refused command comes back in its place as a
    /// `Value::ServerError` (for a pipeline built with `ignore_errors()`).
    pub async fn query_inline(&self, pipe: &redis::Pipeline) -> Result<Vec<Value>> {
        match self.link().await? {
            Link::Single(mut conn) => self.timed(pipe.query_async::<Vec<Value>>(&mut conn)).await,
            Link::Cluster(conn) => self.query_cluster(conn, pipe).await,
        }
    }

    async fn query_cluster(&self, conn: ClusterConnection, pipe: &redis::Pipeline) -> Result<Vec<Value>> {
        let groups = cluster::split(pipe);
        let runs = groups.iter().map(|group| self.run_group(conn.clone(), group));
        let replies = join_all(runs).await.into_iter().collect::<Result<Vec<_>>>()?;
        Ok(cluster::merge(pipe.len(), &groups, replies))
    }

    async fn run_group(&self, mut conn: ClusterConnection, group: &cluster::Group) -> Result<Vec<Value>> {
        match &group.target {
            cluster::Target::Hub => {
                let mut sent = self.on_hub(&mut conn, group).await;
                if matches!(&sent, Ok(Err(e)) if e.kind() == redis::ErrorKind::ClusterConnectionNotFound) {
                    // The hub failed and the cluster client let its connection go: nothing
                    // was sent, so send it once more, to the hub the cluster names now.
                    *self.hub.lock().unwrap() = None;
                    sent = self.on_hub(&mut conn, group).await;
                }
                let result = sent.and_then(|reply| reply.map_err(|e| Error::from_redis(&e, &self.server)));
                if result.is_err() {
                    *self.hub.lock().unwrap() = None; // a failover may have moved it
                }
                result
            }
            cluster::Target::Anywhere => {
                let cmd = group.pipeline.cmd_iter().next().expect("a group has a command");
                Ok(vec![self.timed(cmd.query_async::<Value>(&mut conn)).await?])
            }
            cluster::Target::Slot(_) => self.timed(group.pipeline.query_async::<Vec<Value>>(&mut conn)).await,
        }
    }

    /// Runs `group` on the hub with the store's timeout; Redis's own error is left
    /// unclassified, for the caller to tell "never sent" from the rest.
    async fn on_hub(
        &self,
        conn: &mut ClusterConnection,
        group: &cluster::Group,
    ) -> Result<redis::RedisResult<Vec<Value>>> {
        let (host, port) = self.hub(conn).await?;
        let run = conn.route_pipeline(
            group.pipeline.clone(),
            0,
            group.indices.len(),
            SingleNodeRoutingInfo::ByAddress { host, port },
        );
        tokio::time::timeout(self.timeout, run).await.map_err(|_| self.timed_out())
    }

    /// The cluster's pub/sub hub, looked up once and again after a failure.
    async fn hub(&self, conn: &mut ClusterConnection) -> Result<(String, u16)> {
        if let Some(hub) = self.hub.lock().unwrap().clone() {
            return Ok(hub);
        }
        let slots: Value = self.timed(redis::cmd("CLUSTER").arg("SLOTS").query_async(conn)).await?;
        let hub = cluster::hub_of(&slots).ok_or_else(|| {
            Error::Unavailable(format!("Redis Cluster at {} serves no slot 0; is the cluster up?", self.server))
        })?;
        *self.hub.lock().unwrap() = Some(hub.clone());
        Ok(hub)
    }

    /// On a cluster, the pub/sub hub as the cluster names it now (publishes follow it from
    /// here on); `None` on one server. A subscriber compares it with the hub it listens on:
    /// after a failover that left the old hub running (as a replica), nothing breaks its
    /// connection, yet nodes that look the hub up afresh go to the new one.
    pub async fn hub_now(&self) -> Result<Option<(String, u16)>> {
        match self.link().await? {
            Link::Single(_) => Ok(None),
            Link::Cluster(mut conn) => {
                *self.hub.lock().unwrap() = None;
                Ok(Some(self.hub(&mut conn).await?))
            }
        }
    }

    /// A new dedicated connection for SUBSCRIBE (pub/sub cannot share the multiplexed one),
    /// with the hub it is on (`None` on one server).
    pub async fn pubsub(&self) -> Result<(redis::aio::PubSub, Option<(String, u16)>)> {
        let hub = self.hub_now().await?;
        let client = match hub.clone() {
            None => self.client.clone(),
            Some((host, port)) => {
                let info = self.client.get_connection_info().clone();
                let addr = match info.addr().clone() {
                    ConnectionAddr::TcpTls { insecure, tls_params, .. } => {
                        ConnectionAddr::TcpTls { host, port, insecure, tls_params }
                    }
                    _ => ConnectionAddr::Tcp(host, port),
                };
                let info =
                    info.set_addr(addr).into_connection_info().map_err(|e| Error::from_redis(&e, &self.server))?;
                match &self.tls {
                    Some(certs) => redis::Client::build_with_tls(info, certs.clone()),
                    None => redis::Client::open(info),
                }
                .map_err(|e| Error::from_redis(&e, &self.server))?
            }
        };
        Ok((self.timed(client.get_async_pubsub()).await?, hub))
    }

    /// Runs a Lua script (EVALSHA, loading it on first use) with the store's timeout.
    pub async fn invoke<T: redis::FromRedisValue>(&self, call: &redis::ScriptInvocation<'_>) -> Result<T> {
        match self.link().await? {
            Link::Single(mut conn) => self.timed(call.invoke_async::<T>(&mut conn)).await,
            Link::Cluster(mut conn) => self.timed(call.invoke_async::<T>(&mut conn)).await,
        }
    }
}

/// `url` with its password hidden, in the user part (`user:***@`) and in any query parameter
/// whose name contains `pass`, for every message that names a server (the core's errors and
/// the `mcp-db` command's output alike).
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (authority, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) if user.contains(':') => {
            format!("{}:***@{host}", user.split(':').next().unwrap_or(""))
        }
        _ => authority.to_owned(),
    };
    let Some((path, query)) = tail.split_once('?') else { return format!("{scheme}://{authority}{tail}") };
    let (query, fragment) = query.split_once('#').map_or((query, None), |(q, f)| (q, Some(f)));
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if name.to_ascii_lowercase().contains("pass") => format!("{name}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    let fragment = fragment.map_or_else(String::new, |f| format!("#{f}"));
    format!("{scheme}://{authority}{path}?{}{fragment}", query.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("rediss://:secret@h/0"), "rediss://:***@h/0");
        assert_eq!(redact("redis://h:6379/0"), "redis://h:6379/0");
        assert_eq!(redact("redis://user@h/0"), "redis://user@h/0", "a user alone is no secret");
        assert_eq!(
            redact("rediss://u:p@h/0?ssl_ca_certs=/ca.pem&password=pw#insecure"),
            "rediss://u:***@h/0?ssl_ca_certs=/ca.pem&password=***#insecure"
        );
        assert_eq!(redact("redis://h?Passwd=x&db=1"), "redis://h?Passwd=***&db=1");
    }

    #[test]
    fn bad_urls_are_config_errors() {
        for url in ["", "http://x", "redis://:99999999/0", "not a url"] {
            match Connector::new(url, Duration::from_secs(1)) {
                Err(Error::Config(msg)) => assert!(msg.contains("invalid Redis URL"), "{msg}"),
                Err(other) => panic!("{url:?}: wrong error {other:?}"),
                Ok(_) => panic!("{url:?} accepted"),
            }
        }
    }

    #[test]
    fn tls_options_come_off_the_url() {
        let (url, tls) = tls_options("rediss://u:p@h:1/0?ssl_cert_reqs=none&protocol=resp3").unwrap();
        assert_eq!(url, "rediss://u:p@h:1/0?protocol=resp3#insecure");
        assert!(tls.is_none());
        match tls_options("rediss://h/0?ssl_ca_certs=/nonexistent/ca.pem") {
            Err(Error::Config(msg)) => assert!(msg.contains("ssl_ca_certs"), "{msg}"),
            other => panic!("{:?}", other.map(|(u, _)| u)),
        }
        assert!(matches!(tls_options("rediss://h/0?ssl_certfile=/etc/hostname"), Err(Error::Config(_))));
        assert_eq!(tls_options("redis://h:1/0").unwrap().0, "redis://h:1/0");
    }

    #[test]
    fn names_the_server_without_credentials() {
        let c = Connector::new("redis://u:pw@127.0.0.1:6390/3", Duration::from_secs(1)).unwrap();
        assert_eq!(c.server(), "redis://127.0.0.1:6390/3");
    }
}
