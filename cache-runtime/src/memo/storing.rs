//! Storing a computed value, and the generations it is filed under.

use std::{sync::Arc, time::Duration};

use serde::Serialize;

use crate::config::max_value_bytes;
use crate::{
    backend::memory::TypedLookup,
    config,
    envelope::{self, now_ms, EncodeError, Meta},
    invalidation,
    registry::Registered,
    stats::{Event, Policy, Site},
};

use super::{
    lookup::{schema, type_fingerprint},
    TtlFrom,
};

/// The policy a value is stored under: with a `ttl_from`, fresh for the value's own TTL, at most
/// the fn's (a zero TTL: the value is not stored).
pub(crate) fn value_policy<T>(policy: Policy, ttl_from: Option<TtlFrom<T>>, value: &T) -> Policy {
    let Some(ttl_of) = ttl_from else {
        return policy;
    };
    let own = u64::try_from(ttl_of(value).as_millis()).unwrap_or(u64::MAX);
    Policy {
        ttl_ms: own.min(policy.ttl_ms),
        ..policy
    }
}

/// The groups an entry of `key` is filed under in `backend`: on shared backends also the key's
/// tombstone, which guards against a value computed before a key invalidation made elsewhere
/// being stored after it.
pub(crate) fn groups_for(backend: &Registered, key: &str, mut groups: Vec<String>) -> Vec<String> {
    if backend.backend.tombstones() {
        groups.push(invalidation::tombstone_group(key));
    }
    groups
}

/// Stores `value` under `key`, fresh for `policy.ttl_ms` and kept for its stale windows too; in
/// serialized backends with the codec and schema versions of `site`'s policy, which its reads use.
/// `call` is the call text of a default key: in-process backends store the entry under it.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn store<T>(
    site: &Site,
    backend: &Registered,
    key: &str,
    call: Option<&str>,
    groups: &[String],
    generations: Vec<u64>,
    value: &Arc<T>,
    policy: Policy,
) where
    T: Serialize + Clone + Send + Sync + 'static,
{
    let retention = policy.retention();
    if let Some(memory) = backend.memory() {
        let fresh_until = if policy.serves_stale() {
            now_ms().saturating_add(policy.ttl_ms)
        } else {
            0
        };
        let stored = memory.set_typed(
            key.to_owned(),
            call,
            value.as_ref(),
            retention,
            fresh_until,
            (groups, generations),
            max_value_bytes(),
        );
        if !stored {
            oversized(site, key);
        }
        return;
    }
    let meta = Meta::fresh(
        Duration::from_millis(policy.ttl_ms),
        type_fingerprint::<T>(site),
        generations,
        schema(site.policy, backend),
    );
    let compress_above = backend
        .storage
        .compress_above
        .unwrap_or_else(config::compress_above);
    let bytes = match envelope::encode(&meta, value.as_ref(), compress_above, max_value_bytes()) {
        Ok(bytes) => bytes,
        Err(EncodeError::Oversized) => {
            oversized(site, key);
            return;
        }
        Err(EncodeError::Codec(error)) => {
            tracing::warn!(key, %error, "value could not be serialized; not cached");
            return;
        }
    };
    let Some(bytes) = backend.seal.seal(key, bytes) else {
        return; // sealing failed or is unusable: nothing unsealed is stored (seal.rs logs why)
    };
    if backend.invalidation.blocked() {
        return; // the backend missed an invalidation: not written until it has been applied there
    }
    let stored = backend
        .guard
        .run("set", backend.backend.set(key, bytes, retention, groups))
        .await;
    if stored.is_err() {
        site.count(Event::BackendError);
    }
}

fn oversized(site: &Site, key: &str) {
    site.count(Event::Oversized);
    tracing::warn!(
        key,
        limit = max_value_bytes(),
        "value larger than CACHE_MAX_VALUE_BYTES; not cached"
    );
}

/// The group generations a value for `key` is stored under now, as a lookup reads them (for a
/// value about to be computed or already known: refresh and prime).
pub(crate) async fn current_generations(
    site: &Site,
    backend: &Registered,
    key: &str,
    groups: &[String],
) -> Result<Vec<u64>, crate::BackendError> {
    /// Never stored: a typed lookup of it is a miss that carries the generations.
    #[derive(Clone)]
    struct NoValue;
    if let Some(memory) = backend.memory() {
        return Ok(match memory.get_typed::<NoValue>(key, groups) {
            TypedLookup::Miss(generations) | TypedLookup::Stale(_, generations, _) => generations,
            TypedLookup::Hit(NoValue) => unreachable!("no entry holds a `NoValue`"),
        });
    }
    if backend.invalidation.blocked() {
        return Err(crate::BackendError::Unavailable);
    }
    match backend
        .guard
        .run("get", backend.backend.get(key, groups))
        .await
    {
        Ok(lookup) => Ok(lookup.generations),
        Err(error) => {
            site.count(Event::BackendError);
            Err(error)
        }
    }
}

/// Stores `value` as a leader does: under the store barrier of `key`, unless an invalidation of
/// `key` or of one of `groups` was recorded after `epoch`; a key invalidation that passed its
/// barrier during the write removes what was written. Returns whether the value was written.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn store_checked<T>(
    site: &'static Site,
    backend: &'static Registered,
    key: &str,
    call: Option<&str>,
    groups: &[String],
    generations: Vec<u64>,
    epoch: u64,
    groups_epoch: u64,
    value: &Arc<T>,
    ttl_from: Option<TtlFrom<T>>,
) -> bool
where
    T: Serialize + Clone + Send + Sync + 'static,
{
    let policy = value_policy(site.policy, ttl_from, value);
    if policy.ttl_ms == 0 {
        return false;
    }
    let _permit = invalidation::store_permit(backend, key).await;
    if invalidation::invalidated_since(backend, epoch, key, &[])
        || invalidation::invalidated_since(backend, groups_epoch, "", groups)
    {
        return false;
    }
    store(site, backend, key, call, groups, generations, value, policy).await;
    if invalidation::invalidated_since(backend, epoch, key, &[]) {
        let removed = backend.backend.delete(key);
        let _ = backend.guard.run_always("delete", removed).await;
        return false;
    }
    true
}
