//! The [`Backend`] trait and the built-in stores.
//!
//! A backend stores opaque envelopes (bytes) under keys, with a TTL, and keeps one *generation* per
//! group. The runtime records the generations it saw before computing a value inside that value's
//! envelope; a stored value whose recorded generations differ from the current ones is stale. Group
//! invalidation is therefore a single change of one generation, whatever the size of the group.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use async_trait::async_trait;

use crate::BackendError;

pub mod file;
pub mod memory;
pub mod redis;
pub mod tiered;

pub use file::FileBackend;
pub use memory::MemoryBackend;
pub use redis::RedisBackend;
pub use tiered::TieredBackend;

/// The longest TTL a backend is given: 2^31 s (about 68 years). RFC 9111 §1.2.2 tells caches to
/// read any larger delta-seconds (or one that overflows) as 2^31; every store can represent it
/// (Redis `PX` tops out near 2^63 ms, expiry stamps in ms since the epoch stay far below
/// `u64::MAX`), so nothing downstream overflows, truncates or is refused.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(1 << 31);

/// `ttl`, but at most [`MAX_TTL`]. Every backend passes the TTL it is given through this.
pub(crate) fn clamp_ttl(ttl: Duration) -> Duration {
    ttl.min(MAX_TTL)
}

/// [`clamp_ttl`] in whole milliseconds (never overflows: 2^31 s is about 2^41 ms).
pub(crate) fn clamp_ttl_ms(ttl: Duration) -> u64 {
    clamp_ttl(ttl).as_millis() as u64
}

/// Lets one caller through at most once per interval: the sweeps that writes start.
#[derive(Debug)]
pub(crate) struct Periodic {
    every_ms: u64,
    last_ms: AtomicU64,
}

impl Periodic {
    /// The first caller gets through one interval from now.
    pub(crate) fn new(every: Duration) -> Self {
        Self {
            every_ms: u64::try_from(every.as_millis()).unwrap_or(u64::MAX),
            last_ms: AtomicU64::new(crate::envelope::now_ms()),
        }
    }

    /// Whether the interval has passed since the last caller got through (then this one does,
    /// and no concurrent caller).
    pub(crate) fn due(&self) -> bool {
        let now = crate::envelope::now_ms();
        let last = self.last_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= self.every_ms
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// What [`Backend::get`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lookup {
    /// The stored bytes, if the key holds a live entry.
    pub value: Option<Vec<u8>>,
    /// The current generation of each requested group, in the order asked. A group never
    /// invalidated has generation 0.
    pub generations: Vec<u64>,
}

/// A store for cache entries. Implement it to plug any store into `#[cached(backend = "name")]`
/// through [`register`](crate::register).
///
/// The trait is object safe; the runtime holds backends as `Arc<dyn Backend>` and wraps every call in
/// a timeout and a circuit breaker, so implementations need neither.
///
/// Rules an implementation must keep:
/// - `get` returns the entry's bytes exactly as `set` received them, or `None` once the TTL passed;
/// - `invalidate_group` changes the group's generation to a value the group never had before
///   (a counter that only grows is enough), in O(1);
/// - a generation that is lost (evicted, expired) must not come back at a value an entry may have
///   recorded: start missing generations at a random value (the Redis backend does, with `SET NX`),
///   or keep them where nothing evicts them;
/// - the built-in shared backends (Redis, files, tiered) also receive each call's key *tombstone*
///   group (named `"\0t:"` followed by the key), which a key invalidation moves before deleting the
///   entry; user-defined backends do not, unless they opt in;
/// - `get` reads the entry and the generations in one step where the store allows it (one round trip).
///
/// ```
/// use std::{collections::HashMap, sync::Mutex, time::Duration};
/// use cache_runtime::{async_trait, Backend, BackendError, Lookup};
///
/// #[derive(Default)]
/// struct MapStore {
///     entries: Mutex<HashMap<String, Vec<u8>>>,
///     generations: Mutex<HashMap<String, u64>>,
/// }
///
/// #[async_trait]
/// impl Backend for MapStore {
///     async fn get(&self, key: &str, groups: &[String]) -> Result<Lookup, BackendError> {
///         let gens = self.generations.lock().unwrap();
///         Ok(Lookup {
///             value: self.entries.lock().unwrap().get(key).cloned(),
///             generations: groups.iter().map(|g| gens.get(g).copied().unwrap_or(0)).collect(),
///         })
///     }
///     async fn set(&self, key: &str, value: Vec<u8>, _ttl: Duration, _groups: &[String]) -> Result<(), BackendError> {
///         self.entries.lock().unwrap().insert(key.to_owned(), value);
///         Ok(())
///     }
///     async fn delete(&self, key: &str) -> Result<(), BackendError> {
///         self.entries.lock().unwrap().remove(key);
///         Ok(())
///     }
///     async fn invalidate_group(&self, group: &str) -> Result<(), BackendError> {
///         *self.generations.lock().unwrap().entry(group.to_owned()).or_default() += 1;
///         Ok(())
///     }
///     async fn clear(&self) -> Result<(), BackendError> {
///         self.entries.lock().unwrap().clear();
///         Ok(())
///     }
/// }
///
/// cache_runtime::register("map", MapStore::default());
/// ```
#[async_trait]
pub trait Backend: std::any::Any + Send + Sync {
    /// Reads the entry under `key` and the current generation of each of `groups`.
    async fn get(&self, key: &str, groups: &[String]) -> Result<Lookup, BackendError>;

    /// Stores `value` under `key` for `ttl`. `groups` are the entry's groups (informational: the
    /// generations that make an entry stale travel inside `value`).
    async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
        groups: &[String],
    ) -> Result<(), BackendError>;

    /// Removes the entry under `key`, if any.
    async fn delete(&self, key: &str) -> Result<(), BackendError>;

    /// Makes every entry of `group` stale by moving the group to a new generation.
    async fn invalidate_group(&self, group: &str) -> Result<(), BackendError>;

    /// Removes every entry of this backend.
    async fn clear(&self) -> Result<(), BackendError>;

    /// Takes the cross-process computation lock of `key` for `ttl`, tagged with `token`: `true` when
    /// this caller got it. Used by `#[cached(lock = ..)]` so that one process computes a missing
    /// value while the others wait for it. Backends without locks keep the default, which always
    /// grants it.
    async fn try_lock(&self, key: &str, token: u64, ttl: Duration) -> Result<bool, BackendError> {
        let _ = (key, token, ttl);
        Ok(true)
    }

    /// Releases the lock of `key` if it is still held with `token` (compare-and-delete).
    async fn unlock(&self, key: &str, token: u64) -> Result<(), BackendError> {
        let _ = (key, token);
        Ok(())
    }

    /// Whether memoized calls on this backend name their key's tombstone group (see the rules
    /// above). The built-in shared backends do; others keep the default, and then a value computed
    /// before another process's key invalidation and stored after it can survive until its TTL.
    #[doc(hidden)]
    fn tombstones(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_are_clamped_to_two_to_the_31_seconds() {
        let max = Duration::from_secs(2_147_483_648);
        assert_eq!(clamp_ttl(Duration::MAX), max);
        assert_eq!(clamp_ttl(Duration::from_secs(u64::MAX)), max);
        assert_eq!(clamp_ttl(Duration::from_millis(u64::MAX)), max);
        assert_eq!(clamp_ttl(max + Duration::from_nanos(1)), max);
        assert_eq!(clamp_ttl(max), max);
        assert_eq!(clamp_ttl(Duration::from_secs(60)), Duration::from_secs(60));
        assert_eq!(clamp_ttl(Duration::ZERO), Duration::ZERO);
        assert_eq!(clamp_ttl_ms(Duration::MAX), 2_147_483_648_000);
        assert_eq!(clamp_ttl_ms(Duration::from_millis(1500)), 1500);
    }
}
