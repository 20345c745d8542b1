//! A throwaway `redis-server` for tests: its own free port and directory, no persistence,
//! killed when dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::connection::Connector;

/// A TCP port nothing listens on (as far as anyone can tell).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// A redis-server started for one test.
pub struct RedisServer {
    child: Child,
    dir: PathBuf,
    pub port: u16,
}

impl RedisServer {
    /// Starts `redis-server` (`/usr/bin/redis-server`, or `$REDIS_SERVER`) and waits until
    /// it answers.
    pub fn start() -> RedisServer {
        RedisServer::start_on(free_port())
    }

    /// Starts one on `port` (say, where a client already tries to connect).
    pub fn start_on(port: u16) -> RedisServer {
        let binary = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "/usr/bin/redis-server".to_owned());
        let dir = std::env::temp_dir().join(format!("mcp-db-core-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let child = Command::new(&binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let server = RedisServer { child, dir, port };
        let began = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(began.elapsed() < Duration::from_secs(10), "redis-server did not come up on port {port}");
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// A connection to this server with a short timeout.
    pub fn connector(&self) -> Arc<Connector> {
        Arc::new(Connector::new(&self.url(), Duration::from_secs(2)).expect("a valid URL"))
    }

    /// Runs one command on a fresh connection of its own.
    pub async fn query(&self, pipe: &redis::Pipeline) -> Vec<redis::Value> {
        self.connector().query(pipe).await.expect("redis answers")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
