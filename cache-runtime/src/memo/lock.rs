//! The cross-process computation lock (`lock = ..`): one process computes a missing value while the
//! others wait for it.

use std::time::{Duration, Instant};

use serde::{de::DeserializeOwned, Serialize};

use crate::registry::Registered;

use super::{lookup::probe, Lead, Probe};

/// How often a caller waiting for another process's computation looks for its result.
const LOCK_POLL: Duration = Duration::from_millis(20);

pub(super) async fn release_lock(backend: &Registered, key: &str, token: u64) {
    let _ = backend
        .guard
        .run("unlock", backend.backend.unlock(key, token))
        .await;
}

/// Releases a cross-process lock that its leader did not release itself (it was dropped or
/// panicked), from a task of its own.
pub(super) struct LockRelease {
    pub(super) backend: &'static Registered,
    pub(super) key: String,
    pub(super) token: Option<u64>,
}

impl LockRelease {
    /// A guard of the lock `token` holds on `key` in `backend`, taken just now.
    pub(super) fn held(backend: &'static Registered, key: &str, token: u64) -> Self {
        Self {
            backend,
            key: key.to_owned(),
            token: Some(token),
        }
    }

    /// Releases the lock now (and not again when dropped).
    pub(super) async fn release(mut self) {
        if let Some(token) = self.token.take() {
            release_lock(self.backend, &self.key, token).await;
        }
    }
}

impl Drop for LockRelease {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else {
            return;
        };
        let backend = self.backend;
        let key = std::mem::take(&mut self.key);
        // On the library's runtime: the caller's may be shutting down.
        crate::io::spawn(async move { release_lock(backend, &key, token).await });
    }
}

pub(super) enum Wait<T> {
    /// Another process stored the value while this one waited.
    Found(T),
    /// This process holds the lock: compute, then release it (dropping the guard releases it too).
    Locked(LockRelease),
    /// No lock (backend failed, or the holder took too long): compute anyway.
    Proceed,
}

/// Takes the cross-process lock of the key, or waits (at most the lock's TTL) for the process that
/// holds it to store the value.
pub(super) async fn wait_for_other_process<T>(lead: &Lead<T>) -> Wait<T>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let backend = &lead.backend;
    let lock_ttl = Duration::from_millis(lead.site.policy.lock_ms);
    let token = fastrand::u64(1..);
    let deadline = Instant::now() + lock_ttl;
    let look = || {
        probe::<T>(
            lead.site,
            backend,
            &lead.key,
            lead.call.as_deref(),
            &lead.groups,
        )
    };
    loop {
        let locked = backend
            .guard
            .run("lock", backend.backend.try_lock(&lead.key, token, lock_ttl))
            .await;
        match locked {
            Ok(true) => {
                // Guarded from here: a caller dropped during the look below releases it.
                let held = LockRelease::held(lead.backend, &lead.key, token);
                // The previous holder may have stored the value just before releasing the lock.
                if let Probe::Hit(value) = look().await {
                    held.release().await;
                    return Wait::Found(value);
                }
                return Wait::Locked(held);
            }
            Ok(false) => {}
            Err(_) => return Wait::Proceed,
        }
        if Instant::now() >= deadline {
            return Wait::Proceed;
        }
        tokio::time::sleep(LOCK_POLL).await;
        if let Probe::Hit(value) = look().await {
            return Wait::Found(value);
        }
    }
}
