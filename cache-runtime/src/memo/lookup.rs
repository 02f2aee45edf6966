//! Lookups: what a backend holds for a key (typed in process, decoded from bytes elsewhere).

use std::time::Duration;

use serde::{de::DeserializeOwned, Serialize};

use crate::config::max_value_bytes;
use crate::{
    backend::{memory::TypedLookup, MemoryBackend},
    config,
    envelope::{self, now_ms, Decoded, Schema},
    key::fingerprint,
    registry::Registered,
    stats::{Event, Policy, Site},
};

/// What a lookup found.
pub(crate) enum Probe<T> {
    Hit(T),
    /// Expired but kept for stale serving. `revalidate`: inside the stale-while-revalidate window
    /// (serve it now); otherwise only inside the stale-if-error window (serve it if the body fails).
    Stale {
        value: T,
        generations: Vec<u64>,
        revalidate: bool,
        /// When both stale windows end (ms since the Unix epoch): past it, never served.
        kept_until_ms: u64,
    },
    /// A miss, with the group generations to store the new value under (`None`: the backend failed,
    /// so nothing is stored).
    Miss(Option<Vec<u64>>),
}

/// The fingerprint of `T`, cached for the first type a site stores (a layer stores several).
pub(super) fn type_fingerprint<T: 'static>(site: &Site) -> u64 {
    let of_t = || fingerprint(std::any::type_name::<T>());
    let (type_id, cached) = *site
        .fingerprint
        .get_or_init(|| (std::any::TypeId::of::<T>(), of_t()));
    if type_id == std::any::TypeId::of::<T>() {
        cached
    } else {
        of_t()
    }
}

/// `call` is the call text of a default key (see `KeyBuf::call_text`): an in-process tier keeps
/// what it copies under it.
pub(crate) async fn probe<T>(
    site: &Site,
    backend: &Registered,
    key: &str,
    call: Option<&str>,
    groups: &[String],
) -> Probe<T>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let policy = site.policy;
    if let Some(memory) = backend.memory() {
        return match memory.get_typed::<T>(key, groups) {
            TypedLookup::Hit(value) => Probe::Hit(value),
            TypedLookup::Stale(value, generations, expired_ms) => Probe::Stale {
                value,
                generations,
                revalidate: now_ms() < expired_ms.saturating_add(policy.stale_ms),
                kept_until_ms: kept_until_ms(policy, expired_ms),
            },
            TypedLookup::Miss(generations) => Probe::Miss(Some(generations)),
        };
    }
    if let Some(tiered) = backend.tiered() {
        return probe_tiered(site, backend, tiered, key, call, groups).await;
    }
    probe_stored(site, backend, key, groups).await.0
}

/// The local tier first, then Redis; a fresh value found in Redis is copied into the local tier
/// under the local generations observed before reading Redis.
async fn probe_tiered<T>(
    site: &Site,
    backend: &Registered,
    tiered: &crate::TieredBackend,
    key: &str,
    call: Option<&str>,
    groups: &[String],
) -> Probe<T>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let local = tiered.usable_local();
    let local_groups = crate::backend::tiered::local_groups(key, groups);
    let observed = match local.map(|l| l.get_typed::<T>(key, &local_groups)) {
        Some(TypedLookup::Hit(value)) => return Probe::Hit(value),
        Some(TypedLookup::Stale(_, generations, _) | TypedLookup::Miss(generations)) => {
            Some(generations)
        }
        None => None,
    };
    let clears = local.map(MemoryBackend::clears);
    let (probe, expires_ms) = probe_stored::<T>(site, backend, key, groups).await;
    // Not copied while the backend missed an invalidation (the read may have overtaken it), nor
    // across a clear of the local tier (a lost subscription: invalidations may have been missed).
    let usable = !backend.invalidation.blocked() && local.map(MemoryBackend::clears) == clears;
    if let (Probe::Hit(value), Some(local), Some(generations), Some(clears), true) =
        (&probe, local, observed, clears, usable)
    {
        let remaining = Duration::from_millis(expires_ms.saturating_sub(now_ms()));
        let ttl = remaining.min(tiered.local_ttl());
        if !ttl.is_zero() {
            // Not kept if the local tier is cleared before it lands, however long copying takes.
            let _ = local.copy_typed(
                key.to_owned(),
                call,
                value,
                ttl,
                (&local_groups, generations),
                max_value_bytes(),
                clears,
            );
        }
    }
    probe
}

/// Reads and decodes a serialized entry; with a hit, also when it expires (ms since the epoch).
async fn probe_stored<T>(
    site: &Site,
    backend: &Registered,
    key: &str,
    groups: &[String],
) -> (Probe<T>, u64)
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let policy = site.policy;
    if backend.invalidation.blocked() {
        // The backend missed an invalidation: not read until it has been applied there.
        return (Probe::Miss(None), 0);
    }
    let lookup = match backend
        .guard
        .run("get", backend.backend.get(key, groups))
        .await
    {
        Ok(lookup) => lookup,
        Err(_) => {
            site.count(Event::BackendError);
            return (Probe::Miss(None), 0);
        }
    };
    let current = lookup.generations;
    let Some(bytes) = lookup.value else {
        return (Probe::Miss(Some(current)), 0);
    };
    let bytes = match backend.seal.open(key, bytes) {
        Ok(opened) => opened,
        Err(crate::seal::Refusal::Unusable) => return (Probe::Miss(None), 0),
        Err(refused) => {
            decode_failure(site, key, &refused);
            return (Probe::Miss(Some(current)), 0);
        }
    };
    let schema = schema(site.policy, backend);
    let (meta, payload) = match envelope::decode(&bytes) {
        Decoded::Valid(meta, _) if meta.type_fingerprint != type_fingerprint::<T>(site) => {
            decode_failure(site, key, &"stored by a different value type");
            return (Probe::Miss(Some(current)), 0);
        }
        Decoded::Valid(meta, _) if meta.schema != schema => {
            // Another codec or schema version (a rolling deploy, a changed setting): recomputed
            // and overwritten in this reader's.
            decode_failure(
                site,
                key,
                &format_args!("stored as {:?}, read as {schema:?}", meta.schema),
            );
            return (Probe::Miss(Some(current)), 0);
        }
        Decoded::Valid(meta, payload) => (meta, payload),
        Decoded::Unusable => {
            decode_failure(site, key, &"not an envelope of this format version");
            return (Probe::Miss(Some(current)), 0);
        }
    };
    if meta.generations != current {
        // A group was invalidated: never served, even stale.
        return (Probe::Miss(Some(current)), 0);
    }
    let now = now_ms();
    let stale_until = kept_until_ms(policy, meta.expires_ms);
    if now >= meta.expires_ms && now >= stale_until {
        return (Probe::Miss(Some(current)), 0);
    }
    let Some(payload) = payload.decoded(max_value_bytes()) else {
        decode_failure(
            site,
            key,
            &"compressed payload corrupt or over CACHE_MAX_VALUE_BYTES",
        );
        return (Probe::Miss(Some(current)), 0);
    };
    let probe = match schema.codec.decode(&payload) {
        Ok(value) if now < meta.expires_ms => Probe::Hit(value),
        Ok(value) => Probe::Stale {
            value,
            generations: current,
            revalidate: now < meta.expires_ms.saturating_add(policy.stale_ms),
            kept_until_ms: stale_until,
        },
        Err(error) => {
            decode_failure(site, key, &error);
            Probe::Miss(Some(current))
        }
    };
    (probe, meta.expires_ms)
}

/// When a value that stopped being fresh at `expired_ms` leaves both stale windows.
fn kept_until_ms(policy: Policy, expired_ms: u64) -> u64 {
    expired_ms.saturating_add(policy.stale_ms.max(policy.stale_if_error_ms))
}

/// What an entry of `policy`'s function in `backend` is written under and must be read under:
/// the codec (the function's, else the backend's, else `CACHE_CODEC`, else the policy's default)
/// and the schema versions.
pub(super) fn schema(policy: Policy, backend: &Registered) -> Schema {
    let codec = policy
        .codec
        .or(backend.storage.codec)
        .or_else(config::codec)
        .unwrap_or(policy.default_codec);
    Schema {
        codec,
        version: policy.version,
        key_version: config::key_version(),
    }
}

fn decode_failure(site: &Site, key: &str, reason: &dyn std::fmt::Display) {
    site.count(Event::DecodeFailure);
    tracing::debug!(key, %reason, "cached entry unusable; recomputing");
}
