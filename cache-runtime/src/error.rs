//! Error types: [`BackendError`] for what a store reports, [`CacheError`] for admin calls.

use std::time::Duration;

/// What a [`Backend`](crate::Backend) operation can fail with.
///
/// A memoized call never returns these: it logs them, counts them and runs the body.
/// Admin calls ([`invalidate_key`](crate::invalidate_key), [`invalidate_group`](crate::invalidate_group))
/// return them inside [`CacheError`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The Redis client reported an error (connection refused, reset, protocol error...).
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A filesystem operation failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The operation did not finish within the backend's timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The backend failed repeatedly and is skipped until its cool-down ends.
    #[error("skipped: circuit breaker open after repeated failures")]
    Unavailable,
    /// Any other failure, from a user-defined backend for example.
    #[error("{0}")]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl BackendError {
    /// Wraps any error type, for user-defined backends.
    pub fn other(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Other(Box::new(error))
    }
}

/// The error of an admin call such as [`invalidate_key`](crate::invalidate_key).
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
    #[error("no cache backend named `{0}` is registered")]
    UnknownBackend(String),
    /// The key to invalidate could not be built: a value in it (an argument, or a field named by
    /// the template) failed to serialize, so there is no key to remove.
    #[error(
        "cannot invalidate {target}: a value in it failed to serialize, so the key cannot be built"
    )]
    Unkeyable {
        /// What could not be built, e.g. ``key `user:{id}` of `load_user` ``.
        target: String,
    },
}
