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

use crate::BackendError;

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
/// Default timeout of one backend operation; `CACHE_BACKEND_TIMEOUT_MS` overrides it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);

/// The timeout from `CACHE_BACKEND_TIMEOUT_MS`, or [`DEFAULT_TIMEOUT`].
pub(crate) fn timeout_from_env() -> Duration {
    std::env::var("CACHE_BACKEND_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map_or(DEFAULT_TIMEOUT, Duration::from_millis)
}

/// Timeout plus breaker for one named backend.
#[derive(Debug)]
pub(crate) struct Guard {
    name: String,
    timeout: Duration,
    failures: AtomicU32,
    open_until_ms: AtomicU64,
}

impl Guard {
    pub(crate) fn new(name: &str, timeout: Duration) -> Self {
        Self {
            name: name.to_owned(),
            timeout,
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
        }
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
        let result = match tokio::time::timeout(self.timeout, future).await {
            Ok(result) => result,
            Err(_) => Err(BackendError::Timeout(self.timeout)),
        };
        match &result {
            Ok(_) => self.succeeded(),
            Err(error) => self.failed(operation, error),
        }
        result
    }

    /// Whether an operation may run now. While open, lets exactly one trial through per cool-down.
    fn admit(&self) -> bool {
        if self.failures.load(Ordering::Relaxed) < FAILURES_TO_OPEN {
            return true;
        }
        let now = now_ms();
        let open_until = self.open_until_ms.load(Ordering::Relaxed);
        now >= open_until
            && self
                .open_until_ms
                .compare_exchange(
                    open_until,
                    now + COOL_DOWN.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    fn succeeded(&self) {
        if self.failures.swap(0, Ordering::Relaxed) >= FAILURES_TO_OPEN {
            tracing::info!(backend = %self.name, "cache backend recovered; breaker closed");
        }
    }

    fn failed(&self, operation: &'static str, error: &BackendError) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < FAILURES_TO_OPEN {
            tracing::warn!(backend = %self.name, operation, %error, "cache backend operation failed");
        } else if failures == FAILURES_TO_OPEN {
            self.open_until_ms
                .store(now_ms() + COOL_DOWN.as_millis() as u64, Ordering::Relaxed);
            tracing::warn!(
                backend = %self.name, operation, %error,
                "cache backend failing; breaker open, skipping it for {COOL_DOWN:?} at a time"
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
        let guard = Guard::new("t", Duration::from_millis(50));
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
    async fn slow_operations_time_out() {
        let guard = Guard::new("t", Duration::from_millis(20));
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
