//! Error types: [`BackendError`] for what a store reports, [`CacheError`] for admin calls.
//!
//! Every message says which backend failed (the registry name, in [`CacheError`]) and what to check,
//! for example:
//!
//! ```text
//! cache backend `redis` failed: redis: Connection refused (os error 111) (is Redis running and reachable? check REDIS_URL / REDIS_CLUSTER_NODES, or the URL given to RedisBackend)
//! ```

use std::time::Duration;

/// What a [`Backend`](crate::Backend) operation can fail with.
///
/// A memoized call never returns these: it logs them, counts them and runs the body.
/// Admin calls ([`invalidate_key`](crate::invalidate_key), [`invalidate_group`](crate::invalidate_group))
/// return them inside [`CacheError`]. Each message ends with what to check.
///
/// ```
/// use cache_runtime::BackendError;
///
/// let error = BackendError::Timeout(std::time::Duration::from_millis(250));
/// assert!(error.to_string().contains("CACHE_BACKEND_TIMEOUT_MS"));
///
/// // A user-defined backend wraps its own errors:
/// let error = BackendError::other(std::io::Error::other("quota exceeded"));
/// assert!(error.to_string().starts_with("quota exceeded"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The Redis client reported an error (connection refused, reset, protocol error...).
    #[error("redis: {0} ({hint})", hint = redis_hint(.0))]
    Redis(#[from] redis::RedisError),
    /// A filesystem operation failed.
    #[error(
        "filesystem: {0} (check that the cache folder, CACHE_DIR or the one given to \
         FileBackend::new, can be created and written, and that the disk is not full)"
    )]
    Io(#[from] std::io::Error),
    /// The operation did not finish within the backend's timeout.
    #[error(
        "no answer within {0:?} (is the backend reachable and not overloaded? the limit is \
         CACHE_BACKEND_TIMEOUT_MS)"
    )]
    Timeout(Duration),
    /// The backend failed repeatedly and is skipped until its cool-down ends.
    #[error(
        "skipped: circuit breaker open after repeated failures (the earlier warnings in the log \
         say why; a call is tried again after 1 s)"
    )]
    Unavailable,
    /// Any other failure, from a user-defined backend for example.
    #[error("{0} (reported by the backend's own code)")]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

/// What to check for a Redis error, by its kind.
fn redis_hint(error: &redis::RedisError) -> &'static str {
    use redis::{ErrorKind, ServerErrorKind};
    const REACH: &str = "is Redis running and reachable? check REDIS_URL / REDIS_CLUSTER_NODES, \
                         or the URL given to RedisBackend";
    if error.is_timeout() {
        return "is Redis reachable and not overloaded? check REDIS_URL / REDIS_CLUSTER_NODES";
    }
    if error.is_connection_refusal() || error.is_io_error() || error.is_connection_dropped() {
        return REACH;
    }
    match error.kind() {
        ErrorKind::AuthenticationFailed | ErrorKind::Server(ServerErrorKind::NoPerm) => {
            "check the user and password in the Redis URL (redis://user:password@host:port)"
        }
        ErrorKind::InvalidClientConfig => {
            "check the Redis URL: redis://[user:password@]host:port[/db]"
        }
        ErrorKind::Server(ServerErrorKind::ReadOnly) => {
            "the server is a read-only replica: point the URL at the primary"
        }
        ErrorKind::Server(ServerErrorKind::BusyLoading) => {
            "Redis is loading its data set: it answers again once loaded"
        }
        ErrorKind::Server(
            ServerErrorKind::ClusterDown | ServerErrorKind::MasterDown | ServerErrorKind::TryAgain,
        )
        | ErrorKind::ClusterConnectionNotFound => {
            "the cluster does not serve every slot: check CLUSTER INFO on its nodes"
        }
        _ => "see the Redis server's log",
    }
}

impl BackendError {
    /// Wraps any error type, for user-defined backends.
    pub fn other(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Other(Box::new(error))
    }
}

/// The error of an admin call such as [`invalidate_key`](crate::invalidate_key).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// match cache_runtime::invalidate_group("users").await {
///     Ok(()) => {}
///     // The invalidation stays pending for that backend and is retried in the background.
///     Err(cache_runtime::CacheError::Backend { backend, source }) => {
///         eprintln!("backend {backend} missed the invalidation: {source}")
///     }
///     Err(other) => eprintln!("{other}"),
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// One backend failed; the others were still tried.
    #[error("cache backend `{backend}` failed: {source}")]
    Backend {
        /// The registry name of the backend.
        backend: String,
        /// What it reported.
        #[source]
        source: BackendError,
    },
    /// No backend is registered under that name and it is not a built-in one.
    #[error(
        "no cache backend named `{0}` is registered (the built-in ones are memory, redis, file \
         and tiered; register others with cache_runtime::register before they are used)"
    )]
    UnknownBackend(String),
    /// The key to invalidate could not be built: a value in it (an argument, or a field named by
    /// the template) failed to serialize, so there is no key to remove.
    #[error(
        "cannot invalidate {target}: a value in it failed to serialize, so the key cannot be built \
         (check the Serialize impls of the values it names; maps need string keys)"
    )]
    Unkeyable {
        /// What could not be built, e.g. ``key `user:{id}` of `load_user` ``.
        target: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(name: &str, source: BackendError) -> String {
        CacheError::Backend {
            backend: name.to_owned(),
            source,
        }
        .to_string()
    }

    #[test]
    fn messages_name_the_backend_and_what_to_check() {
        let refused =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let text = backend("redis", refused.into());
        assert!(
            text.starts_with("cache backend `redis` failed: redis: "),
            "{text}"
        );
        assert!(
            text.contains("is Redis running and reachable? check REDIS_URL"),
            "{text}"
        );

        let auth = redis::RedisError::from((redis::ErrorKind::AuthenticationFailed, "WRONGPASS"));
        assert!(backend("sessions", auth.into()).contains("user and password"));

        let io = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let text = backend("file", io.into());
        assert!(
            text.starts_with("cache backend `file` failed: filesystem: "),
            "{text}"
        );
        assert!(text.contains("CACHE_DIR"), "{text}");

        let text = backend("redis", BackendError::Timeout(Duration::from_millis(250)));
        assert!(text.contains("no answer within 250ms"), "{text}");
        assert!(text.contains("CACHE_BACKEND_TIMEOUT_MS"), "{text}");

        assert!(backend("redis", BackendError::Unavailable).contains("circuit breaker open"));

        let text = CacheError::UnknownBackend("sesions".into()).to_string();
        assert!(
            text.contains("`sesions`") && text.contains("cache_runtime::register"),
            "{text}"
        );
    }
}
