//! Fail-open protection around a backend: a timeout on every operation and a circuit breaker.
//!
//! After [`FAILURES_TO_OPEN`] consecutive failures the breaker opens and operations are skipped at no
//! cost for [`COOL_DOWN`]; then a single trial operation is let through, and its success closes the
//! breaker again. A dead Redis therefore costs a call at most one timeout, and nothing while the
//! breaker is open; a Redis that comes back is used again within about a second.

use std::{
    future::Future,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::Duration,
};

use crate::{
    codec::{Codec, Storage},
    seal::{Sealing, Secret},
    BackendError,
};

/// Milliseconds on a monotonic clock (a wall-clock step must not hold a breaker open).
fn now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
        + 1
}

/// Consecutive failures that open the breaker.
pub const FAILURES_TO_OPEN: u32 = 3;
/// How long an open breaker skips the backend before a trial.
pub const COOL_DOWN: Duration = Duration::from_secs(1);
pub use crate::config::DEFAULT_TIMEOUT;

/// The longest timeout a [`Protection`] takes (longer ones are this).
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// How a registered backend is protected: the timeout of each operation, the breaker's
/// thresholds, and the secret that seals its stored entries. The default reads
/// `CACHE_BACKEND_TIMEOUT_MS` (else [`DEFAULT_TIMEOUT`]), opens after [`FAILURES_TO_OPEN`]
/// consecutive failures, cools down for [`COOL_DOWN`], and seals entries as `CACHE_SECRET`,
/// `CACHE_SECRET_PREVIOUS` and `CACHE_ENCRYPT` say (plain entries when they are unset).
///
/// ```
/// use std::time::Duration;
/// use cache_runtime::{MemoryBackend, Protection};
///
/// cache_runtime::register_with(
///     "sessions",
///     MemoryBackend::default(),
///     Protection::default()
///         .timeout(Duration::from_millis(100))
///         .breaker(5, Duration::from_secs(2)),
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protection {
    timeout: Duration,
    failures_to_open: u32,
    cool_down: Duration,
    sealing: Sealing,
    /// How values are stored (codec, compression): see [`Protection::codec`].
    storage: Storage,
}

impl Default for Protection {
    fn default() -> Self {
        Self {
            timeout: crate::config::backend_timeout(),
            failures_to_open: FAILURES_TO_OPEN,
            cool_down: COOL_DOWN,
            sealing: Sealing::from_env(),
            storage: Storage::default(),
        }
    }
}

impl Protection {
    /// Every operation on the backend gives up after `timeout` (the call then runs as a miss).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.clamp(Duration::from_millis(1), MAX_TIMEOUT);
        self
    }

    /// The breaker opens after `failures` consecutive failures (at least 1) and then lets one
    /// trial through every `cool_down`.
    pub fn breaker(mut self, failures: u32, cool_down: Duration) -> Self {
        self.failures_to_open = failures.max(1);
        self.cool_down = cool_down;
        self
    }

    /// Seals the entries this backend stores with `secret` (see [`Secret`]), whatever the
    /// environment says: entries that are not sealed with one of its keys, under their own key,
    /// are misses. No effect on in-process memory backends, which serialize nothing.
    pub fn secret(mut self, secret: Secret) -> Self {
        self.sealing = Sealing::On(secret);
        self
    }

    /// How entries are sealed (taken by the registry).
    pub(crate) fn sealing(&self) -> &Sealing {
        &self.sealing
    }
}

/// Storage settings of serialized backends (in-process backends store typed values and ignore
/// them).
///
/// ```
/// use cache_runtime::{Codec, Protection, RedisBackend};
///
/// # fn main() -> Result<(), cache_runtime::BackendError> {
/// cache_runtime::register_with(
///     "shared",
///     RedisBackend::open("redis://127.0.0.1:6379")?,
///     Protection::default()
///         .codec(Codec::MessagePack)
///         .compress_above(16 * 1024),
/// );
/// # Ok(()) }
/// ```
impl Protection {
    /// Values of this backend's functions are stored with `codec`, unless a function chose its
    /// own (`#[cached(codec = ..)]`); this is above `CACHE_CODEC`.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.storage.codec = Some(codec);
        self
    }

    /// Encoded values larger than `bytes` are LZ4-compressed (when that makes them smaller);
    /// `u64::MAX` never compresses. Above `CACHE_COMPRESS_ABOVE`, whose default is
    /// [`DEFAULT_COMPRESS_ABOVE`](crate::DEFAULT_COMPRESS_ABOVE).
    pub fn compress_above(mut self, bytes: u64) -> Self {
        self.storage.compress_above = Some(bytes);
        self
    }

    /// The storage settings given.
    pub(crate) fn storage(&self) -> Storage {
        self.storage
    }
}

/// Timeout plus breaker for one named backend.
pub(crate) struct Guard {
    name: String,
    timeout: Duration,
    failures_to_open: u32,
    cool_down_ms: u64,
    failures: AtomicU32,
    open_until_ms: AtomicU64,
    /// Run when an operation times out, where it ran, with the instant it started (see
    /// [`on_timeout`](Self::on_timeout)).
    on_timeout: Option<Box<dyn Fn(std::time::Instant) + Send + Sync>>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

impl Guard {
    pub(crate) fn new(name: &str, protection: Protection) -> Self {
        Self {
            name: name.to_owned(),
            timeout: protection.timeout,
            failures_to_open: protection.failures_to_open,
            cool_down_ms: u64::try_from(protection.cool_down.as_millis()).unwrap_or(u64::MAX),
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            on_timeout: None,
        }
    }

    /// Runs `hook` whenever an operation times out, on the task that ran it, with the instant the
    /// operation started: the built-in Redis backends forget that runtime's connection if it was
    /// made before, so that one gone silently dead (no reply, no error) is replaced by the next
    /// operation, whatever this guard's timeout is.
    pub(crate) fn on_timeout(
        mut self,
        hook: impl Fn(std::time::Instant) + Send + Sync + 'static,
    ) -> Self {
        self.on_timeout = Some(Box::new(hook));
        self
    }

    /// The timeout of one operation.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `operation` unless the breaker is open, within the timeout, and records the outcome.
    pub(crate) async fn run<T>(
        &self,
        operation: &'static str,
        future: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        if !self.admit() {
            return Err(BackendError::Unavailable);
        }
        self.run_always(operation, future).await
    }

    /// Runs `operation` whatever the breaker says (invalidations are never skipped), within the
    /// timeout, and records the outcome.
    pub(crate) async fn run_always<T>(
        &self,
        operation: &'static str,
        future: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        let started = self.on_timeout.is_some().then(std::time::Instant::now);
        let result = match tokio::time::timeout(self.timeout, future).await {
            Ok(result) => result,
            Err(_) => {
                if let (Some(hook), Some(started)) = (&self.on_timeout, started) {
                    hook(started);
                }
                Err(BackendError::Timeout(self.timeout))
            }
        };
        match &result {
            Ok(_) => self.succeeded(),
            Err(error) => self.failed(operation, error),
        }
        result
    }

    /// Whether an operation may run now. While open, lets exactly one trial through per cool-down.
    fn admit(&self) -> bool {
        if self.failures.load(Ordering::Relaxed) < self.failures_to_open {
            return true;
        }
        let now = now_ms();
        let open_until = self.open_until_ms.load(Ordering::Relaxed);
        now >= open_until
            && self
                .open_until_ms
                .compare_exchange(
                    open_until,
                    now.saturating_add(self.cool_down_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    fn succeeded(&self) {
        if self.failures.swap(0, Ordering::Relaxed) >= self.failures_to_open {
            tracing::info!(backend = %self.name, "cache backend recovered; breaker closed");
        }
    }

    fn failed(&self, operation: &'static str, error: &BackendError) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < self.failures_to_open {
            tracing::warn!(backend = %self.name, operation, %error, "cache backend operation failed");
        } else if failures == self.failures_to_open {
            self.open_until_ms.store(
                now_ms().saturating_add(self.cool_down_ms),
                Ordering::Relaxed,
            );
            tracing::warn!(
                backend = %self.name, operation, %error,
                "cache backend failing; breaker open, skipping it for {} ms at a time",
                self.cool_down_ms
            );
        } else {
            tracing::debug!(backend = %self.name, operation, %error, "cache backend still failing");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail() -> Result<(), BackendError> {
        Err(BackendError::Io(std::io::Error::other("down")))
    }

    #[tokio::test]
    async fn opens_after_repeated_failures_and_recovers_after_cool_down() {
        let guard = Guard::new(
            "t",
            Protection::default().timeout(Duration::from_millis(50)),
        );
        for _ in 0..FAILURES_TO_OPEN {
            assert!(guard.run("get", async { fail() }).await.is_err());
        }
        let skipped = guard.run("get", async { Ok(()) }).await;
        assert!(matches!(skipped, Err(BackendError::Unavailable)));
        tokio::time::sleep(COOL_DOWN + Duration::from_millis(20)).await;
        assert!(guard.run("get", async { Ok(()) }).await.is_ok());
        assert!(guard.run("get", async { Ok(()) }).await.is_ok());
    }

    #[tokio::test]
    async fn thresholds_come_from_the_protection() {
        let protection = Protection::default().breaker(1, Duration::from_millis(100));
        let guard = Guard::new("t", protection);
        assert!(guard.run("get", async { fail() }).await.is_err());
        let skipped = guard.run("get", async { Ok(()) }).await;
        assert!(
            matches!(skipped, Err(BackendError::Unavailable)),
            "open after one failure"
        );
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(
            guard.run("get", async { Ok(()) }).await.is_ok(),
            "tried after 100 ms"
        );
    }

    #[tokio::test]
    async fn slow_operations_time_out() {
        let guard = Guard::new(
            "t",
            Protection::default().timeout(Duration::from_millis(20)),
        );
        let started = std::time::Instant::now();
        let result = guard
            .run("get", async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            })
            .await;
        assert!(matches!(result, Err(BackendError::Timeout(_))));
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
