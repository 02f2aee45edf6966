//! Invalidation by key and by group, across every backend, and what makes it reliable:
//!
//! - **Epochs.** Every invalidation in this process takes a sequence number and marks the slot of
//!   its target (a fixed table of slots, hashed by key or group name). A computation remembers the
//!   sequence it started under; if a slot of its key or groups moved since, its value may predate
//!   the invalidation: it is neither stored nor handed to callers that start later. A hash
//!   collision only costs a value not stored; there is no log to overflow.
//! - **Store barriers.** A store holds a read lock of its key's shard, in its own backend, from its
//!   epoch check to the end of the write; a key invalidation, once recorded, passes through the
//!   write lock of that shard before it deletes. So no store that checked before the invalidation
//!   lands after its delete. Only stores of the same shard of the same backend wait, for at most one
//!   backend timeout; group invalidations need no barrier (stale generations travel with values).
//! - **Never skipped, never lost.** An invalidation ignores the circuit breaker and is tried twice.
//!   In-process tiers apply it at once. If a backend still fails, the invalidation is kept as
//!   *pending* for that backend: until every pending invalidation has been applied (retried in the
//!   background), this process neither reads from nor writes to that backend, so it never serves a
//!   value the invalidation was about. The call returns the error: `Ok` means every backend applied
//!   it; an `Err` means this process is safe, but other processes sharing the failed backend may
//!   serve the old value until the pending invalidation is applied. Past 100,000 pending
//!   invalidations for one backend, this process stops using that backend until it restarts.

use std::{
    hash::BuildHasher,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use tokio::sync::RwLockReadGuard;

pub(crate) use crate::target::{tombstone_group, Target};
use crate::{
    key::normalize_key,
    registry::{self, Registered},
    BackendError, CacheError,
};

/// Counts invalidations in this process; see [`invalidation_epoch`].
static EPOCH: AtomicU64 = AtomicU64::new(0);
/// How many slots invalidation targets are hashed into.
const SLOTS: usize = 1 << 16;
/// The sequence number of the latest invalidation of each slot.
static SLOT_EPOCHS: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
/// Foreground attempts of one invalidation on one backend before it is left pending.
const ATTEMPTS: usize = 2;
/// Pause between the foreground attempts, and between background retries.
const RETRY_PAUSE: Duration = Duration::from_millis(25);
const BACKGROUND_RETRY_EVERY: Duration = Duration::from_millis(100);

fn slot(scope: u64, target: &Target) -> usize {
    match target {
        Target::Key(key) => key_slot(scope, key),
        Target::Group(group) => group_slot(scope, group),
    }
}

fn key_slot(scope: u64, key: &str) -> usize {
    hashed_slot(scope, 0, key)
}

fn group_slot(scope: u64, group: &str) -> usize {
    hashed_slot(scope, 1, group)
}

/// Marks are per [`Caches`](crate::Caches) scope (0: the process-wide registry): what is
/// invalidated in one scope costs the computations of another nothing.
fn hashed_slot(scope: u64, kind: u8, name: &str) -> usize {
    let hash = foldhash::fast::FixedState::with_seed(0x5eed).hash_one((scope, kind, name));
    (hash as usize) % SLOTS
}

/// A number that changes whenever this process invalidates anything. A computation remembers the
/// epoch it started under; see [`invalidated_since`].
pub(crate) fn invalidation_epoch() -> u64 {
    EPOCH.load(Ordering::SeqCst)
}

/// Whether an invalidation of `key` or of one of `groups` (or a hash neighbour of them) in
/// `backend` was recorded in this process after `epoch`. Costs one atomic load when nothing was
/// invalidated.
pub(crate) fn invalidated_since(
    backend: &Registered,
    epoch: u64,
    key: &str,
    groups: &[String],
) -> bool {
    if EPOCH.load(Ordering::SeqCst) == epoch {
        return false;
    }
    let scope = backend.scope;
    let moved = |slot: usize| SLOT_EPOCHS[slot].load(Ordering::SeqCst) > epoch;
    moved(key_slot(scope, key)) || groups.iter().any(|g| moved(group_slot(scope, g)))
}

/// Marks `target` as invalidated in `backend` (in its scope) now, before the backend is touched:
/// computations of it there that started before do not store their values (see
/// [`invalidated_since`]).
pub(crate) fn record(backend: &Registered, target: &Target) {
    record_in(&[backend], target);
}

/// What [`record_in`] did to the slot of its target in each scope: the slot's value before, and
/// the one this record left (a value no earlier record left there).
pub(crate) type Recorded = Vec<(u64, Marks)>;

/// A slot's value before a record, and the record's own.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Marks {
    pub(crate) before: u64,
    pub(crate) own: u64,
}

/// [`record`] for every backend of `entries`, once per scope. Each record leaves its slot at a
/// sequence number above every earlier one there (drawing again if a later-drawn number got there
/// first), so that a slot still at a record's own number saw no record since: for an `epoch` of
/// `own`, [`invalidated_since`] tells whether another invalidation was recorded after this one.
fn record_in(entries: &[&Registered], target: &Target) -> Recorded {
    let mut scopes: Vec<u64> = entries.iter().map(|entry| entry.scope).collect();
    scopes.sort_unstable();
    scopes.dedup();
    scopes
        .into_iter()
        .map(|scope| {
            let slot = &SLOT_EPOCHS[slot(scope, target)];
            loop {
                let own = EPOCH.fetch_add(1, Ordering::SeqCst) + 1;
                let before = slot.fetch_max(own, Ordering::SeqCst);
                if before < own {
                    return (scope, Marks { before, own });
                }
            }
        })
        .collect()
}

/// Held by a store from its [`invalidated_since`] check to the end of its write.
pub(crate) async fn store_permit<'a>(
    backend: &'a Registered,
    key: &str,
) -> RwLockReadGuard<'a, ()> {
    backend.invalidation.gate(key).read().await
}

/// Waits until every store of `key`'s shard on `backend` that may have passed its check before the
/// invalidation was recorded has finished.
///
/// Bounded: a store whose future stopped being polled while it held its permit must not hold every
/// invalidation of its shard. Such a store, if it ever writes, notices the invalidation after its
/// write and removes what it wrote (see `memo.rs`).
async fn barrier(backend: &Registered, key: &str) {
    let limit = backend.guard.timeout().saturating_mul(4);
    if tokio::time::timeout(limit, backend.invalidation.gate(key).write())
        .await
        .is_err()
    {
        tracing::warn!(backend = %backend.name, key, "a store of this key's shard is stuck; invalidating anyway");
    }
}

/// Applies `target` to one backend: its in-process tier at once, then the backend itself, never
/// skipped by its breaker, tried [`ATTEMPTS`] times; left pending if it still fails.
async fn apply(entry: &'static Registered, target: Target) -> Result<(), BackendError> {
    // The tiered backend's own operations start with their local part too, but a key invalidation
    // may fail at its tombstone before reaching the delete; and local-tier hits are served even
    // while the backend is blocked.
    if let Some(tiered) = entry.tiered() {
        tiered.invalidate_locally(&target);
    }
    if let Target::Key(key) = &target {
        barrier(entry, key).await;
    }
    let mut result = Ok(());
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        result = apply_once(entry, &target).await;
        if result.is_ok() {
            return Ok(());
        }
    }
    entry.invalidation.keep(target.clone());
    // Again, now that nothing more is read from the backend or copied from it: a timed-out attempt
    // was cancelled before its own second local pass, and a read of the old value made during it
    // may have left a local copy.
    if let Some(tiered) = entry.tiered() {
        tiered.invalidate_locally(&target);
    }
    start_flusher(entry);
    result
}

async fn apply_once(entry: &Registered, target: &Target) -> Result<(), BackendError> {
    let backend = &entry.backend;
    match target {
        Target::Key(key) => {
            if backend.tombstones() {
                // The tombstone first: a store landing between the two is removed by the delete,
                // one landing after it recorded the old tombstone.
                let tombstone = tombstone_group(key);
                let moved = backend.invalidate_group(&tombstone);
                entry.guard.run_always("invalidate_key", moved).await?;
            }
            entry.guard.run_always("delete", backend.delete(key)).await
        }
        Target::Group(group) => {
            let moved = backend.invalidate_group(group);
            entry.guard.run_always("invalidate_group", moved).await
        }
    }
}

/// Retries a backend's pending invalidations in the background (on the library's runtime) until
/// none is left, or the backend is no longer registered.
fn start_flusher(entry: &'static Registered) {
    if entry
        .invalidation
        .flusher_running
        .swap(true, Ordering::AcqRel)
    {
        return;
    }
    crate::io::spawn(async move {
        loop {
            tokio::time::sleep(BACKGROUND_RETRY_EVERY).await;
            if !registry::is_registered(entry) {
                let state = &entry.invalidation;
                state
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
                state.pending_count.store(0, Ordering::Release);
                break;
            }
            for (target, seq) in entry.invalidation.snapshot() {
                if apply_once(entry, &target).await.is_ok() {
                    entry.invalidation.forget(&target, seq);
                    tracing::info!(backend = %entry.name, ?target, "pending cache invalidation applied");
                }
            }
            if entry.invalidation.pending_count.load(Ordering::Acquire) == 0 {
                break;
            }
        }
        entry
            .invalidation
            .flusher_running
            .store(false, Ordering::Release);
        // A target kept after the last snapshot, while this flusher was ending.
        if entry.invalidation.pending_count.load(Ordering::Acquire) > 0 {
            start_flusher(entry);
        }
    });
}

/// Records `target`, then applies it to every backend on the library's runtime: a caller that goes
/// away (a dropped request, a timeout around the call) cancels nothing, so an invalidation that was
/// recorded is always carried out or kept pending.
async fn invalidate_everywhere(target: Target) -> Result<(), CacheError> {
    invalidate_in(every_backend(), target).await.map(drop)
}

/// Records `target` for `entries`, then applies it to each of them on the library's runtime; the
/// first failure is returned.
async fn invalidate_in(
    entries: Vec<&'static Registered>,
    target: Target,
) -> Result<Recorded, CacheError> {
    let recorded = record_in(&entries, &target);
    crate::io::run(async move {
        let mut first_error = None;
        for entry in entries {
            let result = apply(entry, target.clone()).await;
            keep_first_error(&mut first_error, entry, result);
        }
        first_error.map_or(Ok(()), Err)
    })
    .await?;
    Ok(recorded)
}

fn every_backend() -> Vec<&'static Registered> {
    // Configured built-ins count even before first use, so an admin process reaches them.
    let (redis, file) = crate::config::configured_backends();
    if redis {
        registry::resolve_global("redis");
    }
    if file {
        registry::resolve_global("file");
    }
    registry::all()
}

/// Removes the entry stored under `key` from every backend.
///
/// Reaches every backend registered in this process and the built-in ones that are configured
/// (`REDIS_URL`, `REDIS_CLUSTER_NODES` or `CACHE_DIR` set) or have been used. Every backend is
/// tried, whatever its circuit breaker says; the first failure is returned.
///
/// `Ok` means every backend applied it: no call that starts afterwards, in this process or another
/// one sharing the backends, returns the old value. On `Err`, in-process tiers applied it, and this
/// process neither reads nor writes the failed backend until the invalidation, kept pending and
/// retried in the background, has been applied there; other processes may see the old value from
/// that backend until then.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_runtime::CacheError> {
/// cache_runtime::invalidate_key("user:42").await?;
/// # Ok(()) }
/// ```
pub async fn invalidate_key(key: &str) -> Result<(), CacheError> {
    invalidate_everywhere(Target::Key(normalize_key(key.to_owned()))).await
}

/// Makes every entry of `group` stale, in every backend, in O(1) per backend.
///
/// Reaches the same backends, with the same guarantees, as [`invalidate_key`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_runtime::CacheError> {
/// cache_runtime::invalidate_group("users").await?;
/// # Ok(()) }
/// ```
pub async fn invalidate_group(group: &str) -> Result<(), CacheError> {
    invalidate_everywhere(Target::Group(group.to_owned())).await
}

/// Runs the invalidations a mutation asked for; failures are logged, never returned (the mutation
/// itself succeeded). A failed backend keeps them pending (see [`invalidate_key`]).
#[doc(hidden)]
pub async fn invalidate_after_success(keys: &[String], groups: &[String]) {
    for key in keys {
        if let Err(error) = invalidate_key(key).await {
            tracing::error!(key, %error, "invalidation after a successful mutation failed");
        }
    }
    for group in groups {
        if let Err(error) = invalidate_group(group).await {
            tracing::error!(group, %error, "invalidation after a successful mutation failed");
        }
    }
}

/// Removes `keys` from one backend, as one invalidation of the first (the layer's removal of a URI
/// after a mutation: the URI's entry and its side entries).
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) async fn invalidate_keys_in(
    entry: &'static Registered,
    keys: &[String],
) -> Result<(), BackendError> {
    let targets: Vec<Target> = keys.iter().map(|key| Target::Key(key.clone())).collect();
    targets.iter().for_each(|target| record(entry, target));
    // On the library's runtime, as in `invalidate_everywhere`.
    crate::io::run(async move {
        let mut first_error = Ok(());
        for target in targets {
            let result = apply(entry, target).await;
            if first_error.is_ok() {
                first_error = result;
            }
        }
        first_error
    })
    .await
}

/// Removes one key from the backends named `backend` only (used by the generated `*_invalidate`
/// fns, `Cache::invalidate`, refreshes and primes): the one a call made here uses, the
/// process-wide one, and, outside every [`Caches`](crate::Caches) scope, those of every scope.
pub(crate) async fn invalidate_key_in(backend: &str, key: String) -> Result<(), CacheError> {
    invalidate_key_recorded(backend, key).await.map(drop)
}

/// [`invalidate_key_in`], with what its record did to the key's slot in each scope (a prime
/// tells from it whether another invalidation of the key was recorded meanwhile).
pub(crate) async fn invalidate_key_recorded(
    backend: &str,
    key: String,
) -> Result<Recorded, CacheError> {
    let target = Target::Key(normalize_key(key));
    let entries = registry::all_named(backend);
    if entries.is_empty() {
        return Err(CacheError::UnknownBackend(backend.to_owned()));
    }
    invalidate_in(entries, target).await
}

fn keep_first_error(
    first_error: &mut Option<CacheError>,
    entry: &Registered,
    result: Result<(), BackendError>,
) {
    if let Err(source) = result {
        tracing::warn!(backend = %entry.name, error = %source, "cache invalidation failed; kept pending");
        first_error.get_or_insert(CacheError::Backend {
            backend: entry.name.clone(),
            source,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalidation_marks_its_target_and_not_others() {
        let memory = registry::resolve("memory").unwrap();
        let epoch = invalidation_epoch();
        record(memory, &Target::Key("epoch-test:a".into()));
        assert!(invalidated_since(memory, epoch, "epoch-test:a", &[]));
        // Another key is only marked by a hash collision (1 in 65,536).
        let unrelated = (0..64)
            .filter(|i| invalidated_since(memory, epoch, &format!("epoch-test:b{i}"), &[]))
            .count();
        assert!(unrelated <= 2, "{unrelated} unrelated keys marked");
        let later = invalidation_epoch();
        assert!(!invalidated_since(memory, later, "epoch-test:a", &[]));
        record(memory, &Target::Group("epoch-test:g".into()));
        assert!(invalidated_since(
            memory,
            later,
            "epoch-test:x",
            &["epoch-test:g".into()]
        ));
    }

    #[test]
    fn thousands_of_unrelated_invalidations_do_not_mark_a_computation() {
        let memory = registry::resolve("memory").unwrap();
        let epoch = invalidation_epoch();
        for i in 0..10_000 {
            record(memory, &Target::Key(format!("flood:{i}")));
        }
        // With a log of 4096 every such computation was judged overtaken; slots only collide
        // (about 14 % of them after 10,000 invalidations).
        let marked = (0..1000)
            .filter(|i| invalidated_since(memory, epoch, &format!("quiet:{i}"), &[]))
            .count();
        assert!(
            marked < 250,
            "{marked} of 1000 computations judged overtaken"
        );
    }
}
