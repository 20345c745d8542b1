//! The core's one error type. The binding turns each variant into its Python exception
//! (`mcp_db.ConfigError`, `RedisUnavailableError`, ...) in one place.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A bad URL or option: `ValueError`.
    Config(String),
    /// Redis could not be reached: `ConnectionError`.
    Unavailable(String),
    /// Redis did not answer in time: `TimeoutError`.
    Timeout(String),
    /// Redis answered with an error: `McpDbError`.
    Redis(String),
    /// Redis refused a write because it is at `maxmemory` (the `OOM` error):
    /// `RedisOutOfMemoryError`. Not transient: it lasts until Redis has room again.
    OutOfMemory(String),
    /// The store was closed: `McpDbError`.
    Closed,
}

pub type Result<T> = std::result::Result<T, Error>;

/// Whether Redis refused with `OOM` (at `maxmemory`, nothing it may evict), alone or as
/// one of a pipeline's failures.
fn is_oom(err: &redis::RedisError) -> bool {
    err.code() == Some("OOM")
        || err.clone().into_server_errors().is_some_and(|errors| errors.iter().any(|(_, e)| e.code() == "OOM"))
}

impl Error {
    /// Classifies a redis-rs error, naming the server (without credentials) for the user.
    pub fn from_redis(err: &redis::RedisError, server: &str) -> Error {
        if err.kind() == redis::ErrorKind::AuthenticationFailed {
            Error::Unavailable(format!(
                "Redis at {server} refused to log in: {err}; check the user and password in the URL"
            ))
        } else if err.is_timeout() {
            Error::Timeout(format!("Redis at {server} did not answer in time: {err}"))
        } else if err.is_io_error() || err.is_connection_refusal() || err.is_connection_dropped() {
            Error::Unavailable(format!(
                "cannot reach Redis at {server}: {err}; check that redis-server is running and the URL is right"
            ))
        } else if is_oom(err) {
            Error::out_of_memory(server, err)
        } else {
            Error::Redis(format!("Redis at {server} answered with an error: {err}"))
        }
    }

    /// Redis at `server` refused a write with `OOM`: it is at `maxmemory` and may not evict.
    pub fn out_of_memory(server: &str, err: impl std::fmt::Display) -> Error {
        Error::OutOfMemory(format!(
            "Redis at {server} is out of memory (maxmemory) and refused a write: {err}; \
             give it more memory or shorter TTLs (see docs/redis.md)"
        ))
    }

    /// What went wrong and what to do, for the user.
    pub fn message(&self) -> String {
        match self {
            Error::Config(m) | Error::Unavailable(m) | Error::Timeout(m) | Error::Redis(m) | Error::OutOfMemory(m) => {
                m.clone()
            }
            Error::Closed => "the event store is closed".to_owned(),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(reply: &[u8]) -> redis::RedisError {
        redis::parse_redis_value(reply).unwrap().extract_error().unwrap_err()
    }

    #[test]
    fn oom_is_its_own_error_naming_the_server() {
        let err = Error::from_redis(
            &server_error(b"-OOM command not allowed when used memory > 'maxmemory'.\r\n"),
            "redis://r:6379/0",
        );
        let Error::OutOfMemory(message) = &err else { panic!("not OutOfMemory: {err:?}") };
        assert!(message.contains("Redis at redis://r:6379/0 is out of memory"), "{message}");
        assert!(!matches!(err, Error::Unavailable(_) | Error::Timeout(_)), "not transient");
    }

    #[test]
    fn other_refusals_stay_plain_redis_errors() {
        let err = Error::from_redis(&server_error(b"-ERR wrong number of arguments\r\n"), "r");
        assert!(matches!(err, Error::Redis(_)), "{err:?}");
    }
}
