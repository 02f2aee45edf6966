//! [`Cache`]: the function API, for code that cannot use the attribute (keys computed at run time,
//! values built in closures, caches passed around as values).

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    marker::PhantomData,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{de::DeserializeOwned, Serialize};

use crate::{
    backend::clamp_ttl_ms,
    control,
    key::KeyBuf,
    memo::{self, Body, Errors},
    stats::{Policy, Site},
    CacheError, Codec,
};

/// A typed cache of `T` values under string keys, with a TTL, groups and a backend: the same
/// single-flight, stale serving, stats and invalidation as `#[cached]`.
///
/// ```
/// use std::time::Duration;
/// use cache_runtime::Cache;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cache_runtime::CacheError> {
/// let prices: Cache<u64> = Cache::new("prices", Duration::from_secs(60)).group("prices");
/// let price = prices
///     .get_or_insert_with("price:42", || async { 1999 /* a slow query */ })
///     .await;
/// assert_eq!(price, 1999);
/// assert_eq!(prices.get("price:42").await, Some(1999));
/// prices.insert("price:42", 1899).await?; // write-through after an update
/// assert_eq!(prices.get("price:42").await, Some(1899));
/// prices.invalidate("price:42").await?; // or cache_runtime::invalidate_group("prices")
/// assert_eq!(prices.get("price:42").await, None);
/// # Ok(()) }
/// ```
///
/// Keys are used as given (long ones are hashed, as every key), so `invalidate_key` with the same
/// string reaches the entry from anywhere. Two `Cache` values with the same name, backend and
/// policy share one stats site; create a `Cache` once (in a `static`, a `OnceLock` or app state)
/// and clone it freely.
pub struct Cache<T> {
    site: &'static Site,
    name: &'static str,
    backend: &'static str,
    policy: Policy,
    groups: Arc<Vec<String>>,
    ttl_from: Option<fn(&T) -> Duration>,
    _values: PhantomData<fn() -> T>,
}

impl<T> Clone for Cache<T> {
    fn clone(&self) -> Self {
        Self {
            site: self.site,
            name: self.name,
            backend: self.backend,
            policy: self.policy,
            groups: Arc::clone(&self.groups),
            ttl_from: self.ttl_from,
            _values: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Cache<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("name", &self.name)
            .field("backend", &self.backend)
            .field("policy", &self.policy)
            .field("groups", &self.groups)
            .finish()
    }
}

impl<T> Cache<T>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// A cache named `name` (its label in stats and metrics) on the `"memory"` backend whose
    /// entries live for `ttl`. A zero TTL stores nothing: every call computes.
    pub fn new(name: &str, ttl: Duration) -> Self {
        let policy = Policy::ttl(clamp_ttl_ms(ttl));
        let (name, backend) = (intern(name), intern("memory"));
        Self {
            site: site_for(name, backend, policy),
            name,
            backend,
            policy,
            groups: Arc::default(),
            ttl_from: None,
            _values: PhantomData,
        }
    }

    /// Stores in the backend registered under `name` (`"redis"`, `"file"`, `"tiered"`, yours).
    pub fn backend(mut self, name: &str) -> Self {
        self.backend = intern(name);
        self.resited()
    }

    /// Puts every entry in `group` (repeatable), for [`invalidate_group`](crate::invalidate_group).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.groups).push(group.into());
        self
    }

    /// After its TTL, an entry is served for up to this long while one call refreshes it (as
    /// `#[cached(stale = ..)]`): the call that finds it stale computes the new value (its closure
    /// runs in place, so it may borrow), concurrent callers get the stale value at once.
    pub fn stale(mut self, window: Duration) -> Self {
        self.policy.stale_ms = clamp_ttl_ms(window);
        self.resited()
    }

    /// After its TTL, an entry stands in for up to this long when computing a new value fails
    /// ([`try_get_or_insert_with`](Self::try_get_or_insert_with) returned `Err`).
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.policy.stale_if_error_ms = clamp_ttl_ms(window);
        self.resited()
    }

    /// Each value's own TTL, from the value (a token that expires in 90 s, an upstream
    /// `max-age`), at most the cache's TTL; a zero TTL stores nothing (the value is still
    /// returned).
    ///
    /// ```
    /// use std::time::Duration;
    /// # #[derive(Clone, serde::Serialize, serde::Deserialize)]
    /// # struct Token { secret: String, expires_in: u64 }
    /// let tokens: cache_runtime::Cache<Token> = cache_runtime::Cache::new("tokens", Duration::from_secs(3600))
    ///     .ttl_from(|token| Duration::from_secs(token.expires_in.saturating_sub(10)));
    /// ```
    pub fn ttl_from(mut self, ttl_of: fn(&T) -> Duration) -> Self {
        self.ttl_from = Some(ttl_of);
        self
    }

    /// Stores values with `codec` in serialized backends (Redis, files), above the backend's
    /// registration and `CACHE_CODEC` (as `#[cached(codec = ..)]`). Entries written with another
    /// codec are misses, recomputed and overwritten.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.policy.codec = Some(codec);
        self.resited()
    }

    /// The schema version of the values (as `#[cached(version = N)]`): bump it when `T` changes
    /// shape. Entries written under another version are misses, recomputed and overwritten; keys
    /// stay the same.
    pub fn version(mut self, version: u32) -> Self {
        self.policy.version = version;
        self.resited()
    }

    fn resited(mut self) -> Self {
        self.site = site_for(self.name, self.backend, self.policy);
        self
    }

    /// The cached value under `key`, or the one `make` computes, stored for the TTL. Concurrent
    /// calls for one key share one computation.
    pub async fn get_or_insert_with<F, Fut>(&self, key: &str, make: F) -> T
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let computed = self
            .try_get_or_insert_with(key, || async { Ok::<T, Infallible>(make().await) })
            .await;
        match computed {
            Ok(value) => value,
            Err(never) => match never {},
        }
    }

    /// As [`get_or_insert_with`](Self::get_or_insert_with) for a computation that can fail: only
    /// `Ok` values are stored; an `Err` is returned to this caller (concurrent callers of the same
    /// key compute again themselves).
    pub async fn try_get_or_insert_with<E, F, Fut>(&self, key: &str, make: F) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        if self.policy.ttl_ms == 0 {
            return make().await;
        }
        let buffer = key_buf(key);
        if let Some(value) = memo::fresh_hit::<T>(self.site, &buffer) {
            return Ok(value);
        }
        let body = Body::Local(make());
        let groups = self.groups.as_ref().clone();
        let errors = Errors::new(None);
        memo::memoize_with(
            self.site,
            key.to_owned(),
            groups,
            body,
            errors,
            self.ttl_from,
        )
        .await
    }

    /// The cached value under `key`, if there is a fresh one; computes nothing.
    pub async fn get(&self, key: &str) -> Option<T> {
        if self.policy.ttl_ms == 0 {
            return None;
        }
        if let Some(value) = memo::fresh_hit::<T>(self.site, &key_buf(key)) {
            return Some(value);
        }
        let groups = self.groups.as_ref().clone();
        control::peek(self.site, key_buf(key), groups).await
    }

    /// Stores `value` under `key` for the TTL (write-through after an update). The old entry is
    /// invalidated first, in every process sharing the backend, so a computation that started
    /// before (anywhere) does not overwrite the value afterwards; an invalidation of the key or of
    /// one of the groups that runs meanwhile wins, and the value is then not kept. `Err` when that
    /// first invalidation fails (nothing is stored then).
    pub async fn insert(&self, key: &str, value: T) -> Result<(), CacheError> {
        if self.policy.ttl_ms == 0 {
            return Ok(());
        }
        let groups = self.groups.as_ref().clone();
        let value = Ok::<T, Infallible>(value);
        control::prime(self.site, key_buf(key), groups, value, key, self.ttl_from).await
    }

    /// Removes the entry under `key` from this cache's backend, in this process and in every
    /// process sharing the backend.
    pub async fn invalidate(&self, key: &str) -> Result<(), CacheError> {
        memo::invalidate_entry(self.backend, key.to_owned()).await
    }
}

fn key_buf(key: &str) -> KeyBuf {
    let mut buffer = KeyBuf::new();
    buffer.push_str(key);
    buffer
}

/// Names live as long as the program: interned, so that making the same `Cache` again leaks
/// nothing more.
fn intern(name: &str) -> &'static str {
    static NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(known) = names.iter().find(|known| **known == name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.push(leaked);
    leaked
}

/// One stats site per name, backend and policy.
fn site_for(name: &'static str, backend: &'static str, policy: Policy) -> &'static Site {
    type Sites = HashMap<(&'static str, &'static str, Shape), &'static Site>;
    /// Everything of a [`Policy`], comparable as a map key.
    type Shape = ([u64; 4], Option<Codec>, Codec, u32);
    static SITES: Mutex<Option<Sites>> = Mutex::new(None);
    let mut sites = SITES.lock().unwrap_or_else(|p| p.into_inner());
    let shape = (
        [
            policy.ttl_ms,
            policy.stale_ms,
            policy.stale_if_error_ms,
            policy.lock_ms,
        ],
        policy.codec,
        policy.default_codec,
        policy.version,
    );
    sites
        .get_or_insert_with(HashMap::new)
        .entry((name, backend, shape))
        .or_insert_with(|| {
            Box::leak(Box::new(Site::new(
                "cache_runtime::Cache",
                name,
                backend,
                policy,
            )))
        })
}
