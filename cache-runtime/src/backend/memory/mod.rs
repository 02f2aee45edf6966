//! The in-process backend: a bounded [`quick_cache`] cache that keeps typed values.
//!
//! Memoized calls store the value itself (inline in the entry's one allocation), so a hit costs a
//! lookup and a clone, with no serialization. The cache is bounded both by entry count and by
//! bytes, where the size of a value is the length of its JSON form (measured once, when it is
//! stored). Each entry carries its own expiry: a read past it is a miss that drops the entry, and a
//! sweep at most every 10 s drops expired entries nobody reads.
//!
//! Group invalidation keeps a bounded table of invalidated groups, whose oldest half is retired
//! when it fills up without making any valid entry stale (the private `Generations` type has the proof). The
//! "generations" this backend reports (in [`Lookup`] too) are stamps of one counter: a value stored
//! under them is valid while none of its groups was invalidated after the stamp.

use std::{
    any::Any,
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, RwLock,
    },
    time::Duration,
};

use async_trait::async_trait;

use super::{Backend, Lookup, Periodic};
use crate::BackendError;

/// Expiry is checked against the coarse monotonic clock (a few ms of resolution, a few ns to
/// read), so a hit does not pay for a precise clock read.
type Clock = coarsetime::Instant;

fn now() -> Clock {
    Clock::now_without_cache_update()
}

/// Default bound on the number of entries.
pub const DEFAULT_MAX_ENTRIES: u64 = 100_000;
/// Default bound on the total size of entries, in bytes.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Bookkeeping bytes counted per entry on top of key and value: the cache's slot, the entry
/// record and the allocations' headers. Measured by `tests/flood.rs`, which prints the live heap
/// per entry (about 1,300 bytes for a 1 KiB string and a 32-byte key).
const ENTRY_OVERHEAD: u64 = 224;
/// Fewest invalidated groups the generation table holds before it retires the oldest ones; the
/// bound is otherwise the entry bound (see [`MemoryBackend::max_tracked_groups`]).
const MIN_TRACKED_GROUPS: usize = 1024;
/// Least time between two sweeps of expired entries.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Share of a shard's weight that quick_cache's main ("hot") area may take (its default): the
/// heaviest entry a shard admits.
const HOT_SHARE: f64 = 0.97;
/// Hash-table slots reserved up front; the table grows up to the entry bound as it fills.
const INITIAL_SLOTS: u64 = 1024;

mod links;
mod store;

use links::{LinkGuard, Links};
use store::{Sizing, Store, StoreKey};

/// The entries, each in one allocation that the store alone owns.
type Entries = Store<Box<MemEntry>, EntryWeight>;

/// A bounded in-process cache.
///
/// ```
/// use cache_runtime::MemoryBackend;
/// // At most 10,000 entries and 64 MiB, whichever bound is reached first.
/// let backend = MemoryBackend::with_limits(10_000, 64 * 1024 * 1024);
/// cache_runtime::register("sessions", backend);
/// ```
pub struct MemoryBackend {
    entries: Entries,
    generations: Generations,
    max_entries: u64,
    max_bytes: u64,
    /// The heaviest entry the store admits (a share of one shard); heavier values are not kept.
    admissible: u64,
    /// When expired entries are next swept.
    sweeps: Periodic,
    /// Counts [`clear_now`](Self::clear_now)s: a copy started before one must not land after it.
    clears: AtomicU64,
    /// Default keys whose entries are stored under their call texts (see `links.rs`).
    links: Arc<Links>,
}

/// One entry, in one allocation with its value: a typed value (memoized calls) or a
/// [`Serialized`] one (stored through the [`Backend`] trait). A hit follows one pointer from the
/// store's slot to the header and the value, and clones the value under the shard's read lock.
struct MemEntry<V: ?Sized = dyn Any + Send + Sync> {
    /// When the cache drops the entry (freshness plus any stale window).
    expires_at: Clock,
    /// When the value stops being fresh (ms since the Unix epoch); 0 when it is fresh for as long as
    /// it is kept, which spares hits a second clock read.
    fresh_until_ms: u64,
    /// The groups the entry was stored under, and the stamp observed for each before the value
    /// was computed (see [`Generations`]).
    groups: Box<[String]>,
    generations: Box<[u64]>,
    weight: u64,
    /// For an entry stored under a call text: the link of its key, removed with the entry.
    link: Option<Box<LinkGuard>>,
    /// Last: the unsized part once the entry is erased to `MemEntry<dyn Any ..>`.
    value: V,
}

/// Bytes stored through the [`Backend`] trait. A private type, so that no typed value of a
/// caller's is ever taken for serialized bytes, or the other way round.
struct Serialized(Vec<u8>);

impl MemEntry {
    fn typed<T: 'static>(&self) -> Option<&T> {
        self.value.downcast_ref::<T>()
    }

    fn serialized(&self) -> Option<&[u8]> {
        self.value
            .downcast_ref::<Serialized>()
            .map(|s| s.0.as_slice())
    }

    /// Whether the value is still fresh (not yet in its stale window).
    fn fresh(&self) -> bool {
        self.fresh_until_ms == 0 || crate::envelope::now_ms() < self.fresh_until_ms
    }

    fn expired(&self, now: Clock) -> bool {
        now >= self.expires_at
    }
}

/// Longest time an entry is kept: about a century (the coarse clock counts 2^32 s at most).
const MAX_KEPT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn expiry(ttl: Duration) -> Clock {
    let kept = coarsetime::Duration::from(super::clamp_ttl(ttl).min(MAX_KEPT));
    now()
        .checked_add(kept)
        .unwrap_or_else(|| now() + coarsetime::Duration::from(MAX_KEPT / 2))
}

/// Shards of the store: quick_cache's default (4 per CPU), but fewer when that would leave a shard
/// too small for a value of the largest size stored (`CACHE_MAX_VALUE_BYTES`).
fn shard_count(max_bytes: u64) -> usize {
    let default = std::thread::available_parallelism().map_or(4, |n| n.get() * 4);
    // A shard admits HOT_SHARE of its weight; an entry weighs its value plus overhead and key.
    let heaviest = crate::config::max_value_bytes().saturating_add(ENTRY_OVERHEAD + 4096);
    let fitting = ((max_bytes as f64 * HOT_SHARE) as u64 / heaviest).max(1);
    // quick_cache rounds the count up to a power of two: round down here so shards stay large.
    let fitting = usize::try_from(fitting).unwrap_or(usize::MAX);
    default.min(1 << fitting.ilog2()).max(1)
}

/// Weighs entries by the weight computed once when they are stored.
#[derive(Clone)]
struct EntryWeight;

impl quick_cache::Weighter<StoreKey, Box<MemEntry>> for EntryWeight {
    fn weight(&self, _key: &StoreKey, entry: &Box<MemEntry>) -> u64 {
        entry.weight
    }
}

/// What a typed lookup found.
pub(crate) enum TypedLookup<T> {
    /// A fresh entry of the right type.
    Hit(T),
    /// An expired entry still kept for stale serving, with the generations observed now and the
    /// time it expired (ms since the Unix epoch).
    Stale(T, Vec<u64>, u64),
    /// No usable entry; the group generations observed now, to store the computed value with.
    Miss(Vec<u64>),
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::with_limits(DEFAULT_MAX_ENTRIES, DEFAULT_MAX_BYTES)
    }
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("max_entries", &self.max_entries)
            .field("max_bytes", &self.max_bytes)
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl MemoryBackend {
    /// A cache holding at most `max_entries` entries and `max_bytes` bytes (both at least 1).
    ///
    /// Each entry weighs its size, but never less than `max_bytes / max_entries`, so neither bound
    /// can be exceeded.
    pub fn with_limits(max_entries: u64, max_bytes: u64) -> Self {
        let max_entries = max_entries.max(1);
        let max_bytes = max_bytes.max(1);
        // The table of invalidated groups lives inside the byte bound: its share is taken from the
        // store's.
        let table_bytes = max_bytes / GROUP_TABLE_SHARE;
        let store_bytes = (max_bytes - table_bytes).max(1);
        let slots = usize::try_from(max_entries.min(INITIAL_SLOTS)).unwrap_or(usize::MAX);
        let entries = Entries::new(
            Sizing {
                estimated_items: slots,
                weight_capacity: store_bytes,
                shards: shard_count(store_bytes),
                hot_allocation: HOT_SHARE,
            },
            EntryWeight,
        );
        // quick_cache admits an entry only if it fits in its shard's main area.
        let admissible = (entries.shard_capacity() as f64 * HOT_SHARE) as u64;
        let tracked = usize::try_from(max_entries).unwrap_or(usize::MAX);
        Self {
            entries,
            admissible,
            generations: Generations::new(
                tracked.max(MIN_TRACKED_GROUPS),
                usize::try_from(table_bytes).unwrap_or(usize::MAX),
            ),
            max_entries,
            max_bytes,
            sweeps: Periodic::new(SWEEP_EVERY),
            clears: AtomicU64::new(0),
            links: Arc::default(),
        }
    }

    /// The built-in `"memory"` backend: limits from `CACHE_MEMORY_MAX_ENTRIES` and
    /// `CACHE_MEMORY_MAX_BYTES` when set, else the defaults.
    pub fn from_env() -> Self {
        let (entries, bytes) = crate::config::memory_limits(DEFAULT_MAX_ENTRIES, DEFAULT_MAX_BYTES);
        Self::with_limits(entries, bytes)
    }

    /// Bounds the table of invalidated groups to about `groups` (default: the entry bound, at
    /// least 1024). Past it, the groups invalidated longest ago are retired: forgotten, after the
    /// entries they made stale are dropped. Entries whose groups were not invalidated stay valid.
    pub fn max_tracked_groups(mut self, groups: usize) -> Self {
        self.generations.max_tracked = groups.max(1);
        self
    }

    /// Number of entries held (expired entries count until they are read or swept).
    pub fn entry_count(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Number of live entries, after dropping the expired ones.
    pub fn entry_count_now(&self) -> u64 {
        self.run_pending_tasks();
        self.entry_count()
    }

    /// Total weight of the entries held, in bytes.
    pub fn weighted_size(&self) -> u64 {
        self.entries.weight()
    }

    /// Drops expired entries now (otherwise done when they are read, and at most every 10 s
    /// when entries are stored).
    pub fn run_pending_tasks(&self) {
        let now = now();
        self.entries.retain(|_, entry| !entry.expired(now));
    }

    /// An entry's weight, or `None` when it is too heavy to be kept.
    fn weight(&self, key: &str, value_bytes: u64) -> Option<u64> {
        let size = ENTRY_OVERHEAD + key.len() as u64 + value_bytes;
        // The floor keeps the entry bound; it never exceeds what one shard admits (which only
        // matters for a bound of one entry or so, held by a single shard).
        let floor = (self.max_bytes / self.max_entries).min(self.admissible);
        (size <= self.admissible).then_some(size.max(floor))
    }

    /// Runs `read` on the entry under `key`, under its shard's read lock, unless the entry has
    /// expired (then it is dropped). `read` may take the group table's lock (the one order of the
    /// two: a shard's, then the table's), never another shard's.
    ///
    /// An entry of a default key stored under its call text is found through the key's link.
    #[inline]
    fn read_live<R>(&self, key: &str, read: impl Fn(&MemEntry) -> R) -> Option<R> {
        if !keyable(key) {
            return None;
        }
        if let Some(found) = self.read_at(key, &read) {
            return Some(found);
        }
        self.read_linked(key, read)
    }

    /// The entry of the default key `key` stored under its call text, if there is one.
    #[cold]
    fn read_linked<R>(&self, key: &str, read: impl FnOnce(&MemEntry) -> R) -> Option<R> {
        let call = self.links.call_of(key)?;
        self.read_at(&call, read)
    }

    /// As [`read_live`](Self::read_live), for the entry stored under `text` itself.
    #[inline]
    fn read_at<R>(&self, text: &str, read: impl FnOnce(&MemEntry) -> R) -> Option<R> {
        let key = text;
        let now = now();
        match self
            .entries
            .read(key, |entry| (!entry.expired(now)).then(|| read(entry)))?
        {
            Some(found) => Some(found),
            None => {
                self.drop_expired(key);
                None
            }
        }
    }

    /// Drops the entry under `key` if it has expired (checked again under the write lock: a
    /// value stored meanwhile stays).
    #[cold]
    fn drop_expired(&self, key: &str) {
        let now = now();
        self.entries.remove_if(key, |entry| entry.expired(now));
    }

    /// Stores `entry` under `key` itself; an entry of the same key stored under its call text goes.
    fn insert(&self, key: &str, entry: Box<MemEntry>) {
        self.entries.insert(key, entry);
        self.remove_linked(key);
        if self.sweeps.due() {
            self.run_pending_tasks();
        }
    }

    /// The value under `key` if it is fresh, of type `T`, and no group it was stored under has
    /// been invalidated since: the hit path, which needs no group names from the caller.
    /// `key` is the text the entry is stored under: a template key, or a default key's call text.
    #[inline]
    pub(crate) fn get_fresh<T: Clone + 'static>(&self, key: &str) -> Option<T> {
        self.read_at(key, |entry| {
            let value = entry.typed::<T>()?;
            (entry.fresh() && self.valid(entry)).then(|| value.clone())
        })?
    }

    /// Whether no group `entry` was stored under has been invalidated since. Called under the
    /// entry's shard lock: a retirement that forgets one of its groups must first drop the stale
    /// entries of that shard (under its write lock), so the check cannot see a group forgotten
    /// after the entry went stale while the entry is still held (see [`Generations`]).
    fn valid(&self, entry: &MemEntry) -> bool {
        self.generations.matches(&entry.groups, &entry.generations)
    }

    /// Looks `key` up for a call tagged with `groups`: a hit, a stale value, or a miss with the
    /// generations of `groups` to store the computed value under.
    pub(crate) fn get_typed<T: Clone + 'static>(
        &self,
        key: &str,
        groups: &[String],
    ) -> TypedLookup<T> {
        let found = self.read_live(key, |entry| {
            let value = entry.typed::<T>()?;
            self.valid(entry)
                .then(|| (value.clone(), entry.fresh(), entry.fresh_until_ms))
        });
        match found.flatten() {
            Some((value, true, _)) => TypedLookup::Hit(value),
            Some((value, false, fresh_until_ms)) => {
                TypedLookup::Stale(value, self.generations.current(groups), fresh_until_ms)
            }
            None => TypedLookup::Miss(self.generations.current(groups)),
        }
    }

    /// Stores a typed value kept for `ttl` and fresh until `fresh_until_ms` (0: while kept),
    /// under `key`, or under `call`, the call text of the default key `key` (see `links.rs`).
    /// Returns `false`, storing nothing, when its serialized size exceeds `max_value_bytes`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn set_typed<T: serde::Serialize + Clone + Send + Sync + 'static>(
        &self,
        key: String,
        call: Option<&str>,
        value: &T,
        ttl: Duration,
        fresh_until_ms: u64,
        stamps: (&[String], Vec<u64>),
        max_value_bytes: u64,
    ) -> bool {
        let at = (ttl, fresh_until_ms);
        self.insert_typed(key, call, value, at, stamps, max_value_bytes, None)
    }

    /// [`set_typed`](Self::set_typed) of a copy read elsewhere while this store had been cleared
    /// `clears` times (see [`clears`](Self::clears)): not kept if a clear began since, even one
    /// that runs while the copy is being made (checked under the shard's lock, which a clear takes
    /// after counting itself).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn copy_typed<T: serde::Serialize + Clone + Send + Sync + 'static>(
        &self,
        key: String,
        call: Option<&str>,
        value: &T,
        ttl: Duration,
        stamps: (&[String], Vec<u64>),
        max_value_bytes: u64,
        clears: u64,
    ) -> bool {
        let at = (ttl, 0);
        self.insert_typed(key, call, value, at, stamps, max_value_bytes, Some(clears))
    }

    #[allow(clippy::too_many_arguments)]
    fn insert_typed<T: serde::Serialize + Clone + Send + Sync + 'static>(
        &self,
        key: String,
        call: Option<&str>,
        value: &T,
        (ttl, fresh_until_ms): (Duration, u64),
        (groups, generations): (&[String], Vec<u64>),
        max_value_bytes: u64,
        unless_cleared_since: Option<u64>,
    ) -> bool {
        if call.is_none() && !keyable(&key) {
            return true; // nothing is stored under such a key (see `keyable`)
        }
        let size = serialized_len(value);
        let group_bytes: usize = groups.iter().map(|g| g.len() + size_of::<String>()).sum();
        let stored_under = call.unwrap_or(&key);
        let link_bytes = call.map_or(0, |call| LinkGuard::weight(&key, call));
        let weight = (size <= max_value_bytes)
            .then(|| {
                let extra = (size_of::<T>() + group_bytes) as u64 + link_bytes;
                self.weight(stored_under, size + extra)
            })
            .flatten();
        let Some(weight) = weight else {
            self.remove(&key); // an older value must not outlive this one
            return false;
        };
        let entry: Box<MemEntry> = Box::new(MemEntry {
            expires_at: expiry(ttl),
            fresh_until_ms,
            groups: groups.into(),
            generations: generations.into_boxed_slice(),
            weight,
            link: call.map(|_| Box::new(self.links.guard(&key))),
            value: value.clone(),
        });
        // Checked against the table (its read lock taken inside the shard's write lock, the one
        // order of the two) and inserted under that shard's write lock: a retirement's scan of the
        // shard (which needs its write lock) comes after the insertion and sees this entry, or its
        // first step came before the check and the check sees it (see `Generations`). Stale
        // already (computed before an invalidation): the older value goes too.
        // Under the same lock, an entry stored under a call text links its key to it (`links.rs`).
        self.entries.insert_if(stored_under, entry, |entry| {
            let uncleared = unless_cleared_since.is_none_or(|clears| self.clears() == clears);
            let storable = uncleared
                && (entry.groups.is_empty()
                    || self
                        .generations
                        .read()
                        .storable(&entry.groups, &entry.generations));
            if let (true, Some(guard), Some(call)) = (storable, &entry.link, call) {
                self.links.link(guard, call);
            }
            storable
        });
        match call {
            // A value stored under the key itself is older: it must not be found by key.
            Some(_) => drop(self.entries.remove(&key)),
            None => self.remove_linked(&key),
        }
        if self.sweeps.due() {
            self.run_pending_tasks();
        }
        true
    }

    /// Removes the entry of `key` stored under its call text, if there is one.
    fn remove_linked(&self, key: &str) {
        if let Some(call) = self.links.call_of(key) {
            drop(self.entries.remove(&call));
        }
    }

    /// Removes the entry of `key`, stored under the key or under its call text.
    pub(crate) fn remove(&self, key: &str) {
        drop(self.entries.remove(key));
        self.remove_linked(key);
    }

    /// Drops every entry at once.
    pub(crate) fn clear_now(&self) {
        self.clears.fetch_add(1, Ordering::AcqRel);
        self.entries.clear();
    }

    /// How many times the store was cleared (see `clear_now`).
    pub(crate) fn clears(&self) -> u64 {
        self.clears.load(Ordering::Acquire)
    }

    pub(crate) fn bump_group(&self, group: &str) {
        if self.generations.bump(group) {
            self.retire_groups();
        }
    }

    /// Retires the oldest half of the generation table (one retirement at a time): drops the
    /// entries those groups made stale, then forgets the groups. See [`Generations`].
    fn retire_groups(&self) {
        if self.generations.retiring.swap(true, Ordering::Acquire) {
            return; // another call is retiring; the next bump past the bound retires more
        }
        let retired = self.generations.start_retirement();
        if !retired.is_empty() {
            let by_name: HashMap<&str, u64> =
                retired.iter().map(|(g, n)| (g.as_ref(), *n)).collect();
            self.entries.retain(|_, entry| {
                !entry
                    .groups
                    .iter()
                    .zip(entry.generations.iter())
                    .any(|(g, r)| by_name.get(g.as_str()).is_some_and(|n| r < n))
            });
            self.generations.finish_retirement(&retired);
        }
        self.generations.retiring.store(false, Ordering::Release);
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    async fn get(&self, key: &str, groups: &[String]) -> Result<Lookup, BackendError> {
        let value = self
            .read_live(key, |entry| entry.serialized().map(<[u8]>::to_vec))
            .flatten();
        Ok(Lookup {
            value,
            generations: self.generations.current(groups),
        })
    }

    async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
        _groups: &[String],
    ) -> Result<(), BackendError> {
        if !keyable(key) {
            return Ok(()); // nothing is stored under such a key (see `keyable`)
        }
        let Some(weight) = self.weight(key, value.len() as u64) else {
            self.remove(key);
            return Ok(());
        };
        let entry: Box<MemEntry> = Box::new(MemEntry {
            expires_at: expiry(ttl),
            fresh_until_ms: 0,
            groups: Box::new([]),
            generations: Box::new([]),
            weight,
            link: None,
            value: Serialized(value),
        });
        self.insert(key, entry);
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        self.remove(key);
        Ok(())
    }

    async fn invalidate_group(&self, group: &str) -> Result<(), BackendError> {
        self.bump_group(group);
        Ok(())
    }

    async fn clear(&self) -> Result<(), BackendError> {
        self.clear_now();
        Ok(())
    }
}

/// Whether a value may be stored or read under `key` itself: not when it holds a NUL byte, which
/// only call texts do (a key spelled like one would stand in for that call's entry, out of reach of
/// its key's invalidation). Such keys come from no template value (escaped) and run uncached.
#[inline]
fn keyable(key: &str) -> bool {
    !key.as_bytes().contains(&crate::key::UNKEYABLE)
}

/// Length of `value`'s JSON form, measured without building it.
fn serialized_len<T: serde::Serialize>(value: &T) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// Group generations of the memory backend: a bounded table, with no cliff.
///
/// Generations are stamps of one counter, `last`, that only grows. Invalidating a group sets its
/// generation to a new stamp (`last + 1`); a group not in the table (never invalidated, or
/// retired) has generation 0. What a lookup hands out to store a computed value under is not a
/// group's generation but the stamp *observed* then: `last`, once per group. An entry is valid
/// while every one of its groups has a generation at most the stamp it recorded ("no invalidation
/// of this group happened after the value's inputs were read").
///
/// The table holds at most about `max_tracked` groups, weighing at most about 1/32 of the backend's
/// byte bound (taken from the store's share, so the whole backend stays within its bound). Past
/// either, the groups invalidated longest ago are *retired*, in three steps:
/// 1. under the write lock, the oldest are chosen (down to half of both bounds) and `retired_up_to` is raised to the
///    newest generation among them;
/// 2. the store is scanned, dropping every entry that records, for one of those groups, a stamp
///    below the group's generation (exactly the entries that group made stale);
/// 3. under the write lock, those groups leave the table (unless invalidated again meanwhile).
///
/// A store of a grouped entry checks, under the read lock and together with its insertion, that
/// the entry is valid now, and that each of its groups absent from the table has a recorded stamp
/// at least `retired_up_to`; otherwise it is not stored.
///
/// Why an invalidated entry never becomes valid again: let an entry record stamp `r` for group
/// `g`, and `g` be invalidated afterwards, with generation `n > r` (stamps grow). While `g` is in
/// the table its generation is `≥ n > r`: invalid. `g` leaves only through a retirement with
/// generation `n' ≥ n`, whose step 1 makes `retired_up_to ≥ n' > r`. The entry was inserted
/// either before step 1 (the insertion held the read lock, step 1 the write lock), so the scan of
/// step 2 sees it and drops it (`r < n'`); or after, and then its store check found `g` in the
/// table with generation `n' > r`, or absent with `r < retired_up_to`: not stored. After the
/// retirement, `g` reads 0 again, but no entry recording a stamp below `n'` for it is left, and
/// none can be stored.
///
/// A hit checks an entry's stamps while it holds the entry's shard lock. Were it to check after
/// releasing it, a retirement could run in between: its scan drops the stale entry, but this
/// reader holds a copy, and the group it then finds forgotten reads 0 (valid). Under the shard's
/// lock, the scan of that shard waits for the check, and a check after the scan finds no entry.
///
/// Why there is no cliff: a group never invalidated reads 0 forever, which is at most any stamp,
/// so the entries of untouched groups never go stale; a retired group reads 0, so entries
/// computed after its last invalidation stay valid too. A retirement costs one scan of the store
/// for every `max_tracked / 2` groups retired, and a store that overlaps a retirement may be
/// refused (a miss, later).
struct Generations {
    state: RwLock<GenerationTable>,
    max_tracked: usize,
    /// The table's share of the backend's byte bound (names plus bookkeeping, estimated).
    max_table_bytes: usize,
    /// Whether a retirement runs (at most one at a time).
    retiring: AtomicBool,
    /// The table's `last`, written under its write lock before it is released: a hit whose
    /// stamps all equal it was stored after the latest invalidation, and needs no lookup.
    last: AtomicU64,
}

#[derive(Default)]
struct GenerationTable {
    /// The generation of every tracked group.
    by_group: HashMap<Arc<str>, u64>,
    /// The same groups by generation, oldest first (generations are unique stamps).
    by_age: BTreeMap<u64, Arc<str>>,
    /// The newest stamp handed out.
    last: u64,
    /// The newest generation of a group retired (or being retired).
    retired_up_to: u64,
    /// What the tracked groups weigh (see [`TRACKED_GROUP_OVERHEAD`]).
    bytes: usize,
}

impl GenerationTable {
    fn get(&self, group: &str) -> u64 {
        self.by_group.get(group).copied().unwrap_or(0)
    }

    fn valid(&self, groups: &[String], recorded: &[u64]) -> bool {
        groups.len() == recorded.len()
            && groups
                .iter()
                .zip(recorded)
                // A stamp above `last` was not handed out by this table: never valid.
                .all(|(g, r)| self.get(g) <= *r && *r <= self.last)
    }

    /// Whether an entry recording `recorded` may be stored now (see [`Generations`]).
    fn storable(&self, groups: &[String], recorded: &[u64]) -> bool {
        self.valid(groups, recorded)
            && groups
                .iter()
                .zip(recorded)
                .all(|(g, r)| self.by_group.contains_key(g.as_str()) || *r >= self.retired_up_to)
    }
}

/// Which share of a memory backend's byte bound its table of invalidated groups may use (1/32).
const GROUP_TABLE_SHARE: u64 = 32;
/// Estimated bookkeeping of one tracked group beyond its name: two map slots, the shared name's
/// header, the stamps.
const TRACKED_GROUP_OVERHEAD: usize = 96;

fn tracked_weight(name: &str) -> usize {
    name.len() + TRACKED_GROUP_OVERHEAD
}

impl Generations {
    fn new(max_tracked: usize, max_table_bytes: usize) -> Self {
        Self {
            state: RwLock::default(),
            max_tracked,
            max_table_bytes,
            retiring: AtomicBool::new(false),
            last: AtomicU64::new(0),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, GenerationTable> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, GenerationTable> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The stamp observed now, once per group: what a value computed from now on is stored under.
    fn current(&self, groups: &[String]) -> Vec<u64> {
        if groups.is_empty() {
            return Vec::new();
        }
        vec![self.read().last; groups.len()]
    }

    fn matches(&self, groups: &[String], recorded: &[u64]) -> bool {
        if groups.is_empty() {
            return recorded.is_empty();
        }
        if groups.len() == recorded.len() && self.unchanged_since(recorded) {
            return true;
        }
        self.read().valid(groups, recorded)
    }

    /// Whether no group was invalidated since the stamps `recorded` were observed (an
    /// invalidation raises `last` before it returns): then an entry recording them is valid,
    /// whatever its groups. One atomic load, no lock.
    #[inline]
    fn unchanged_since(&self, recorded: &[u64]) -> bool {
        let last = self.last.load(Ordering::Acquire);
        recorded.iter().all(|r| *r == last)
    }

    /// Invalidates `group`; `true` when the table has grown past its bound.
    fn bump(&self, group: &str) -> bool {
        let mut table = self.write();
        table.last += 1;
        let next = table.last;
        let name: Arc<str> = match table.by_group.get_key_value(group) {
            Some((name, _)) => Arc::clone(name),
            None => Arc::from(group),
        };
        let weight = tracked_weight(&name);
        match table.by_group.insert(Arc::clone(&name), next) {
            Some(old) => {
                table.by_age.remove(&old);
            }
            None => table.bytes += weight,
        }
        table.by_age.insert(next, name);
        self.last.store(next, Ordering::Release);
        self.over_bound(&table)
    }

    fn over_bound(&self, table: &GenerationTable) -> bool {
        table.by_group.len() > self.max_tracked || table.bytes > self.max_table_bytes
    }

    /// Step 1 of a retirement: the oldest groups to retire, with their generations.
    fn start_retirement(&self) -> Vec<(Arc<str>, u64)> {
        let mut table = self.write();
        // Down to half of both bounds.
        let (count_goal, bytes_goal) = (self.max_tracked / 2, self.max_table_bytes / 2);
        let (mut count, mut bytes) = (table.by_group.len(), table.bytes);
        let retired: Vec<(Arc<str>, u64)> = table
            .by_age
            .iter()
            .take_while(|(_, name)| {
                let over = count > count_goal || bytes > bytes_goal;
                count = count.saturating_sub(1);
                bytes = bytes.saturating_sub(tracked_weight(name));
                over
            })
            .map(|(n, g)| (Arc::clone(g), *n))
            .collect();
        if let Some((_, newest)) = retired.last() {
            table.retired_up_to = table.retired_up_to.max(*newest);
        }
        retired
    }

    /// Step 3 of a retirement: forgets the retired groups not invalidated again since step 1.
    fn finish_retirement(&self, retired: &[(Arc<str>, u64)]) {
        let mut table = self.write();
        for (group, generation) in retired {
            if table.by_group.get(group) == Some(generation) {
                table.by_group.remove(group);
                table.by_age.remove(generation);
                table.bytes = table.bytes.saturating_sub(tracked_weight(group));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// Stores `value` under `key` for 60 s in `groups`, under their generations observed now.
    fn put_grouped(mem: &MemoryBackend, key: &str, value: u64, groups: &[String]) {
        let observed = mem.generations.current(groups);
        mem.set_typed(
            key.into(),
            None,
            &value,
            Duration::from_secs(60),
            0,
            (groups, observed),
            u64::MAX,
        );
    }

    /// Stores `value` under `key` for 60 s, fresh while kept, with no groups and no size limit.
    fn put<T: serde::Serialize + Clone + Send + Sync + 'static>(
        mem: &MemoryBackend,
        key: &str,
        value: T,
    ) -> bool {
        put_for(mem, key, value, Duration::from_secs(60))
    }

    /// As [`put`], kept for `ttl`.
    fn put_for<T: serde::Serialize + Clone + Send + Sync + 'static>(
        mem: &MemoryBackend,
        key: &str,
        value: T,
        ttl: Duration,
    ) -> bool {
        mem.set_typed(key.into(), None, &value, ttl, 0, (&[], vec![]), u64::MAX)
    }

    #[test]
    fn typed_round_trip_and_type_mismatch() {
        let mem = MemoryBackend::default();
        put(&mem, "k", 5u64);
        assert!(matches!(
            mem.get_typed::<u64>("k", &[]),
            TypedLookup::Hit(5)
        ));
        assert!(matches!(
            mem.get_typed::<String>("k", &[]),
            TypedLookup::Miss(_)
        ));
    }

    #[test]
    fn group_bump_makes_entries_stale() {
        let mem = MemoryBackend::default();
        let g = groups(&["users"]);
        put_grouped(&mem, "k", 1u64, &g);
        assert!(matches!(mem.get_typed::<u64>("k", &g), TypedLookup::Hit(1)));
        mem.bump_group("users");
        assert!(matches!(
            mem.get_typed::<u64>("k", &g),
            TypedLookup::Miss(_)
        ));
    }

    /// Hits, grouped stores, group invalidations (with retirements: a tiny table), removals and
    /// sweeps from four threads at once, on few keys. Every value read is the one its key stores
    /// (no value of another key, no hang); a watchdog fails the test if the threads stall.
    #[test]
    fn concurrent_hits_stores_and_invalidations_never_mix_keys_or_stall() {
        let mem =
            std::sync::Arc::new(MemoryBackend::with_limits(200, 1 << 30).max_tracked_groups(4));
        let (done, finished) = std::sync::mpsc::channel();
        let workers: Vec<_> = (0..4u64)
            .map(|t| {
                let (mem, done) = (mem.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(t);
                    for _ in 0..30_000 {
                        let n = rng.u64(0..64);
                        let key = format!("k:{n}");
                        let g = groups(&[&format!("g{}", n % 6), &format!("h{}", rng.u8(0..3))]);
                        match rng.u8(0..10) {
                            0..=2 => put_grouped(&mem, &key, n * 10, &g),
                            3 => mem.bump_group(&format!("g{}", rng.u64(0..6))),
                            4 => mem.remove(&key),
                            5 => mem.run_pending_tasks(),
                            6 => {
                                if let TypedLookup::Hit(v) | TypedLookup::Stale(v, ..) =
                                    mem.get_typed::<u64>(&key, &g)
                                {
                                    assert_eq!(v, n * 10, "{key}");
                                }
                            }
                            _ => {
                                if let Some(v) = mem.get_fresh::<u64>(&key) {
                                    assert_eq!(v, n * 10, "{key}");
                                }
                            }
                        }
                    }
                    done.send(()).expect("the test waits");
                })
            })
            .collect();
        for _ in 0..4 {
            finished
                .recv_timeout(Duration::from_secs(120))
                .expect("the threads stalled (a lock cycle?)");
        }
        for worker in workers {
            worker.join().expect("no assertion failed");
        }
    }

    /// An invalidation that has returned is never followed by a hit on a value computed before it,
    /// while other groups' invalidations make the table retire groups (a retirement between a
    /// hit's read of an entry and its check of the stamps used to make a stale entry valid: seen
    /// within 0.2 s with the check after the shard's lock; found by review 3).
    #[test]
    fn no_hit_on_a_value_older_than_a_returned_invalidation_while_groups_retire() {
        use std::sync::atomic::AtomicBool;
        let mem = Arc::new(MemoryBackend::with_limits(1_000, 1 << 30).max_tracked_groups(8));
        let stop = Arc::new(AtomicBool::new(false));
        let g = groups(&["g", "h"]);
        let mut threads = Vec::new();
        // Storers: the value is the stamp observed before it was "computed".
        for _ in 0..2 {
            let (mem, stop, g) = (mem.clone(), stop.clone(), g.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let observed = mem.generations.current(&g);
                    let value = observed[0];
                    let ttl = Duration::from_secs(60);
                    mem.set_typed("k".into(), None, &value, ttl, 0, (&g, observed), u64::MAX);
                }
            }));
        }
        // Other groups invalidated: the stamps move, and retirements run.
        {
            let (mem, stop) = (mem.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    mem.bump_group(&format!("other{}", i % 100));
                    i += 1;
                }
            }));
        }
        let mut failure = None;
        for _ in 0..200_000 {
            // Every stamp observed before the invalidation is at most `before`.
            let before = mem.generations.read().last;
            mem.bump_group("g");
            if let Some(v) = mem.get_fresh::<u64>("k").filter(|v| *v <= before) {
                failure = Some(format!("get_fresh: {v}, observed at or before {before}"));
                break;
            }
            if let TypedLookup::Hit(v) = mem.get_typed::<u64>("k", &g) {
                if v <= before {
                    failure = Some(format!("get_typed: {v}, observed at or before {before}"));
                    break;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        for thread in threads {
            thread.join().expect("no panic");
        }
        assert_eq!(
            failure, None,
            "a value older than a returned invalidation was a hit"
        );
    }

    #[test]
    fn a_hit_after_an_invalidation_of_another_group_still_checks_its_own() {
        let mem = MemoryBackend::default();
        let g = groups(&["a", "b"]);
        put_grouped(&mem, "k", 3u64, &g);
        assert_eq!(
            mem.get_fresh::<u64>("k"),
            Some(3),
            "no invalidation since: the fast path"
        );
        mem.bump_group("c");
        assert_eq!(
            mem.get_fresh::<u64>("k"),
            Some(3),
            "another group's invalidation"
        );
        put_grouped(&mem, "k2", 4u64, &g);
        mem.bump_group("b");
        assert_eq!(mem.get_fresh::<u64>("k"), None);
        assert_eq!(mem.get_fresh::<u64>("k2"), None);
        put_grouped(&mem, "k3", 5u64, &g);
        assert_eq!(
            mem.get_fresh::<u64>("k3"),
            Some(5),
            "stored after the invalidation"
        );
    }

    #[test]
    fn fresh_hits_check_the_groups_the_entry_was_stored_under() {
        let mem = MemoryBackend::default();
        let g = groups(&["users"]);
        put_grouped(&mem, "k", 7u64, &g);
        assert_eq!(mem.get_fresh::<u64>("k"), Some(7));
        assert_eq!(mem.get_fresh::<u32>("k"), None, "another type is a miss");
        mem.bump_group("other");
        assert_eq!(mem.get_fresh::<u64>("k"), Some(7));
        mem.bump_group("users");
        assert_eq!(mem.get_fresh::<u64>("k"), None);
    }

    #[test]
    fn folding_the_generation_table_never_revives_stale_entries() {
        let mem = MemoryBackend::default();
        let g = groups(&["a"]);
        let TypedLookup::Miss(before) = mem.get_typed::<u64>("k", &g) else {
            panic!()
        };
        mem.bump_group("a");
        // `before` was observed before the bump: storing with it must stay stale even after folding.
        mem.set_typed(
            "k".into(),
            None,
            &1u64,
            Duration::from_secs(60),
            0,
            (&g, before),
            u64::MAX,
        );
        for i in 0..=mem.generations.max_tracked * 2 {
            mem.bump_group(&format!("other{i}"));
        }
        assert!(matches!(
            mem.get_typed::<u64>("k", &g),
            TypedLookup::Miss(_)
        ));
    }

    /// Many distinct groups invalidated, far more than the generation table holds (a group per user,
    /// or the tiered backend's group per invalidated key): entries whose groups were never
    /// invalidated stay hits, none of them goes stale at once.
    #[test]
    fn many_invalidated_groups_never_make_untouched_entries_stale() {
        let mem = MemoryBackend::with_limits(1_000, 1 << 30);
        let live: Vec<Vec<String>> = (0..200).map(|i| groups(&[&format!("live:{i}")])).collect();
        for (i, g) in live.iter().enumerate() {
            put_grouped(&mem, &format!("live{i}"), i as u64, g);
        }
        let mut misses = 0;
        for round in 0..250_000u64 {
            mem.bump_group(&format!("user:{round}"));
            if round % 1_000 == 999 {
                misses += (0..live.len())
                    .filter(|i| mem.get_fresh::<u64>(&format!("live{i}")).is_none())
                    .count();
            }
        }
        assert_eq!(
            misses, 0,
            "live entries went stale while other groups were invalidated"
        );
        let table = mem.generations.read().by_group.len();
        assert!(
            table <= 2 * mem.generations.max_tracked,
            "{table} groups tracked"
        );
    }

    /// An entry stored under a group, that group invalidated, then retired from the table by many
    /// other invalidations: the entry stays stale, and so does one computed before the
    /// invalidation but stored only after the retirement.
    #[test]
    fn the_group_table_stays_within_its_share_of_the_byte_bound() {
        // 1 MiB: the table may weigh 32 KiB, far fewer groups than the entry bound allows.
        let mem = MemoryBackend::with_limits(100_000, 1 << 20);
        let long_name = "g".repeat(200);
        for i in 0..5_000 {
            mem.bump_group(&format!("{long_name}{i}"));
        }
        let table = mem.generations.read();
        assert!(
            table.bytes <= (1 << 20) / 32 + tracked_weight(&long_name) + 8,
            "the table weighs {} bytes",
            table.bytes
        );
        assert!(
            table.by_group.len() < 200,
            "{} groups tracked",
            table.by_group.len()
        );
    }

    #[test]
    fn an_invalidated_entry_never_comes_back_once_its_group_is_retired() {
        let mem = MemoryBackend::with_limits(1_000, 1 << 30);
        let g = groups(&["a"]);
        put_grouped(&mem, "stored", 1, &g);
        let TypedLookup::Miss(before) = mem.get_typed::<u64>("late", &g) else {
            panic!()
        };
        mem.bump_group("a");
        put_grouped(&mem, "after", 2, &g);
        for i in 0..20_000 {
            mem.bump_group(&format!("other{i}"));
        }
        assert!(
            !mem.generations.read().by_group.contains_key("a"),
            "the group was retired"
        );
        assert!(matches!(
            mem.get_typed::<u64>("stored", &g),
            TypedLookup::Miss(_)
        ));
        assert_eq!(mem.get_fresh::<u64>("stored"), None);
        mem.set_typed(
            "late".into(),
            None,
            &3u64,
            Duration::from_secs(60),
            0,
            (&g, before),
            u64::MAX,
        );
        assert_eq!(
            mem.get_fresh::<u64>("late"),
            None,
            "a value computed before the invalidation"
        );
        assert_eq!(
            mem.get_fresh::<u64>("after"),
            Some(2),
            "stored after the invalidation: valid"
        );
        // And the retired group can be invalidated again.
        mem.bump_group("a");
        assert_eq!(mem.get_fresh::<u64>("after"), None);
    }

    /// Stores `value` for the default key `key` under its call text `call`, for 60 s.
    fn put_call(mem: &MemoryBackend, key: &str, call: &str, value: u64) {
        let ttl = Duration::from_secs(60);
        mem.set_typed(
            key.into(),
            Some(call),
            &value,
            ttl,
            0,
            (&[], vec![]),
            u64::MAX,
        );
    }

    /// A value whose serialization (which a store runs to weigh it) clears the store armed in
    /// `CLEAR_WHILE_SERIALIZED`: a clear that runs while a copy is being made.
    #[derive(Clone, Debug, PartialEq)]
    struct ClearsWhileSerialized(u64);

    thread_local! {
        static CLEAR_WHILE_SERIALIZED: std::cell::RefCell<Option<Arc<MemoryBackend>>> =
            const { std::cell::RefCell::new(None) };
    }

    impl serde::Serialize for ClearsWhileSerialized {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            if let Some(mem) = CLEAR_WHILE_SERIALIZED.with(|armed| armed.borrow_mut().take()) {
                mem.clear_now();
            }
            serializer.serialize_u64(self.0)
        }
    }

    #[test]
    fn a_copy_is_not_kept_when_the_store_is_cleared_while_it_is_made() {
        let mem = Arc::new(MemoryBackend::default());
        let copy = |value: u64, clears: u64| {
            mem.copy_typed(
                "k".into(),
                None,
                &ClearsWhileSerialized(value),
                Duration::from_secs(60),
                (&[], vec![]),
                u64::MAX,
                clears,
            )
        };
        let before = mem.clears();
        CLEAR_WHILE_SERIALIZED.with(|armed| *armed.borrow_mut() = Some(Arc::clone(&mem)));
        copy(7, before);
        assert_eq!(mem.clears(), before + 1, "the clear ran during the copy");
        assert!(
            matches!(
                mem.get_typed::<ClearsWhileSerialized>("k", &[]),
                TypedLookup::Miss(_)
            ),
            "a copy read before the clear outlived it"
        );
        copy(8, mem.clears());
        assert!(matches!(
            mem.get_typed::<ClearsWhileSerialized>("k", &[]),
            TypedLookup::Hit(ClearsWhileSerialized(8))
        ));
        copy(9, before);
        assert!(
            !matches!(
                mem.get_typed::<ClearsWhileSerialized>("k", &[]),
                TypedLookup::Hit(ClearsWhileSerialized(9))
            ),
            "a copy read before an earlier clear is refused"
        );
    }

    #[test]
    fn an_entry_under_its_call_text_is_found_and_removed_by_its_key() {
        let mem = MemoryBackend::default();
        put_call(&mem, "m::f:abc", "m::f:\0[1]", 7);
        assert_eq!(mem.get_fresh::<u64>("m::f:\0[1]"), Some(7));
        assert!(matches!(
            mem.get_typed::<u64>("m::f:abc", &[]),
            TypedLookup::Hit(7)
        ));
        assert_eq!(mem.entry_count(), 1);
        mem.remove("m::f:abc");
        assert_eq!(mem.get_fresh::<u64>("m::f:\0[1]"), None);
        assert!(matches!(
            mem.get_typed::<u64>("m::f:abc", &[]),
            TypedLookup::Miss(_)
        ));
        assert_eq!(mem.links.len(), 0);
    }

    #[test]
    fn a_store_by_key_replaces_the_entry_under_the_call_text_and_back() {
        let mem = MemoryBackend::default();
        put_call(&mem, "k", "k\0[1]", 1);
        put(&mem, "k", 2u64);
        assert_eq!(
            mem.get_fresh::<u64>("k\0[1]"),
            None,
            "the older value is gone"
        );
        assert!(matches!(
            mem.get_typed::<u64>("k", &[]),
            TypedLookup::Hit(2)
        ));
        put_call(&mem, "k", "k\0[1]", 3);
        assert!(matches!(
            mem.get_typed::<u64>("k", &[]),
            TypedLookup::Hit(3)
        ));
        assert_eq!(mem.entry_count(), 1, "one entry per key");
        let serialized = Backend::set(&mem, "k", b"4".to_vec(), Duration::from_secs(60), &[]);
        let set = futures_util::FutureExt::now_or_never(serialized).expect("memory never waits");
        set.expect("memory never fails");
        assert_eq!(mem.get_fresh::<u64>("k\0[1]"), None);
        assert_eq!(mem.links.len(), 0);
        put_call(&mem, "k", "k\0[1]", 5);
        // Refused (oversized): neither the older value nor its link stays.
        let refused = mem.set_typed(
            "k".into(),
            Some("k\0[1]"),
            &6u64,
            Duration::from_secs(60),
            0,
            (&[], vec![]),
            0,
        );
        assert!(!refused);
        assert!(matches!(
            mem.get_typed::<u64>("k", &[]),
            TypedLookup::Miss(_)
        ));
        assert_eq!(mem.links.len(), 0);
    }

    /// A key spelled like a call text (a NUL byte: from no template, but a `Cache` key or a
    /// `Backend::set` can hold one) neither replaces that call's entry nor reads it (it did,
    /// out of reach of the call key's invalidation; found by review 4).
    #[test]
    fn a_key_spelled_like_a_call_text_cannot_stand_in_for_the_call() {
        let mem = MemoryBackend::default();
        put_call(&mem, "m::f:abc", "m::f:\0[1]", 1);
        put(&mem, "m::f:\0[1]", 2u64);
        let set = Backend::set(
            &mem,
            "m::f:\0[1]",
            b"3".to_vec(),
            Duration::from_secs(60),
            &[],
        );
        let set = futures_util::FutureExt::now_or_never(set).expect("memory never waits");
        set.expect("memory never fails");
        assert!(matches!(
            mem.get_typed::<u64>("m::f:\0[1]", &[]),
            TypedLookup::Miss(_)
        ));
        assert_eq!(
            mem.get_fresh::<u64>("m::f:\0[1]"),
            Some(1),
            "the call's own value"
        );
        mem.remove("m::f:abc");
        assert_eq!(mem.get_fresh::<u64>("m::f:\0[1]"), None);
    }

    #[test]
    fn links_leave_with_their_entries() {
        let mem = MemoryBackend::with_limits(64, 1 << 30);
        for n in 0..1_000u64 {
            put_call(&mem, &format!("k{n}"), &format!("k\0[{n}]"), n);
        }
        // Evicted entries took their links along.
        assert!(mem.entry_count() <= 64);
        assert_eq!(mem.links.len() as u64, mem.entry_count());
        for n in 0..1_000u64 {
            if let Some(v) = mem.get_fresh::<u64>(&format!("k\0[{n}]")) {
                assert_eq!(v, n);
                mem.remove(&format!("k{n}"));
                assert_eq!(mem.get_fresh::<u64>(&format!("k\0[{n}]")), None);
            }
        }
        assert_eq!(mem.links.len(), 0);
        for n in 0..10u64 {
            put_call(&mem, &format!("k{n}"), &format!("k\0[{n}]"), n);
        }
        mem.clear_now();
        assert_eq!(mem.links.len(), 0);
        for n in 0..10u64 {
            let ttl = Duration::from_millis(1);
            mem.set_typed(
                format!("k{n}"),
                Some(&format!("k\0[{n}]")),
                &n,
                ttl,
                0,
                (&[], vec![]),
                u64::MAX,
            );
        }
        std::thread::sleep(Duration::from_millis(1_100)); // past the coarse clock's resolution
        mem.run_pending_tasks();
        assert_eq!(mem.links.len(), 0);
    }

    /// Stores of default keys under their call texts (and under their keys), removals by key
    /// behind a store barrier as `invalidation.rs` runs them, evictions, sweeps and hits, from
    /// four threads: once a removal has returned, no hit (by call text or by key) returns a value
    /// stored before it, and no thread stalls.
    #[test]
    fn no_hit_by_call_text_outlives_a_removal_by_key() {
        use std::sync::atomic::AtomicBool;
        const KEYS: usize = 6;
        let mem = Arc::new(MemoryBackend::with_limits(24, 1 << 30));
        let barrier = Arc::new(RwLock::new(()));
        let versions: Arc<[AtomicU64; KEYS]> = Arc::new(Default::default());
        let removed_up_to: Arc<[AtomicU64; KEYS]> = Arc::new(Default::default());
        let stop = Arc::new(AtomicBool::new(false));
        let failure = Arc::new(std::sync::Mutex::new(None::<String>));
        let key = |n: usize| format!("m::f:{n:x}");
        let call = |n: usize| format!("m::f:\0[{n}]");
        let mut threads = Vec::new();
        for t in 0..4u64 {
            let (mem, barrier, versions, removed_up_to, stop, failure) = (
                mem.clone(),
                barrier.clone(),
                versions.clone(),
                removed_up_to.clone(),
                stop.clone(),
                failure.clone(),
            );
            threads.push(std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(t);
                while !stop.load(Ordering::Relaxed) {
                    let n = rng.usize(0..KEYS);
                    match rng.u8(0..10) {
                        // A store: the value is the key's version when it was "computed".
                        0..=2 => {
                            let _permit = barrier.read().expect("not poisoned");
                            let value = versions[n].load(Ordering::SeqCst);
                            if rng.u8(0..4) == 0 {
                                put(&mem, &key(n), value);
                            } else {
                                put_call(&mem, &key(n), &call(n), value);
                            }
                        }
                        // An invalidation: a new version, the barrier, the removal.
                        3 => {
                            let version = versions[n].fetch_add(1, Ordering::SeqCst) + 1;
                            drop(barrier.write().expect("not poisoned"));
                            mem.remove(&key(n));
                            removed_up_to[n].fetch_max(version, Ordering::SeqCst);
                        }
                        // Evictions of the call texts' entries by other keys.
                        4 => drop(put(&mem, &format!("filler:{}", rng.u16(..)), 0u64)),
                        5 => mem.run_pending_tasks(),
                        _ => {
                            let before = removed_up_to[n].load(Ordering::SeqCst);
                            let found = if rng.bool() {
                                mem.get_fresh::<u64>(&call(n))
                            } else {
                                match mem.get_typed::<u64>(&key(n), &[]) {
                                    TypedLookup::Hit(v) => Some(v),
                                    _ => None,
                                }
                            };
                            if let Some(v) = found.filter(|v| *v < before) {
                                *failure.lock().expect("not poisoned") =
                                    Some(format!("key {n}: read {v} after removal {before}"));
                            }
                        }
                    }
                }
            }));
        }
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for thread in threads {
                thread.join().expect("no thread panicked");
            }
            done.send(()).expect("the test waits");
        });
        finished
            .recv_timeout(Duration::from_secs(60))
            .expect("the threads stalled (a lock cycle?)");
        assert_eq!(*failure.lock().expect("not poisoned"), None);
        // Every link belongs to a live entry under its call text.
        mem.run_pending_tasks();
        assert!(mem.links.len() as u64 <= mem.entry_count());
    }

    #[test]
    fn bounded_by_entries() {
        let mem = MemoryBackend::with_limits(100, 1 << 30);
        for i in 0..10_000u64 {
            put(&mem, &format!("k{i}"), i);
        }
        mem.run_pending_tasks();
        assert!(mem.entry_count() <= 100, "{} entries", mem.entry_count());
    }

    #[test]
    fn bounded_by_bytes() {
        let mem = MemoryBackend::with_limits(1_000_000, 100 * 1024);
        for i in 0..2_000u64 {
            put(&mem, &format!("k{i}"), "x".repeat(1024));
        }
        mem.run_pending_tasks();
        assert!(
            mem.weighted_size() <= 100 * 1024,
            "{} bytes",
            mem.weighted_size()
        );
        assert!(mem.entry_count() < 100);
    }

    #[test]
    fn expired_entries_inside_the_stale_window_are_stale_never_fresh_hits() {
        let mem = MemoryBackend::default();
        let past = crate::envelope::now_ms() - 1;
        mem.set_typed(
            "k".into(),
            None,
            &1u8,
            Duration::from_secs(60),
            past,
            (&[], vec![]),
            u64::MAX,
        );
        assert!(matches!(
            mem.get_typed::<u8>("k", &[]),
            TypedLookup::Stale(1, _, _)
        ));
        assert_eq!(mem.get_fresh::<u8>("k"), None);
    }

    #[test]
    fn oversized_values_are_not_stored() {
        let mem = MemoryBackend::default();
        let stored = mem.set_typed(
            "k".into(),
            None,
            &"x".repeat(100),
            Duration::from_secs(60),
            0,
            (&[], vec![]),
            50,
        );
        assert!(!stored);
        assert!(matches!(
            mem.get_typed::<String>("k", &[]),
            TypedLookup::Miss(_)
        ));
    }

    #[test]
    fn values_too_heavy_for_a_shard_are_refused_not_silently_dropped() {
        let mem = MemoryBackend::with_limits(10_000, 16 * 1024 * 1024);
        let fits = "x".repeat(3 * 1024 * 1024);
        assert!(put(&mem, "k", fits));
        assert!(
            mem.get_fresh::<String>("k").is_some(),
            "a 3 MiB value fits in 16 MiB"
        );
        let too_heavy = "x".repeat(17 * 1024 * 1024);
        assert!(!put(&mem, "k", too_heavy));
        assert!(
            mem.get_fresh::<String>("k").is_none(),
            "the older value is gone too"
        );
    }

    #[test]
    fn a_one_entry_cache_keeps_one_entry() {
        let mem = MemoryBackend::with_limits(1, 1024 * 1024);
        for i in 0..3u64 {
            assert!(put(&mem, &format!("k{i}"), i));
        }
        assert_eq!(mem.get_fresh::<u64>("k2"), Some(2));
        assert_eq!(mem.entry_count(), 1);
    }

    #[test]
    fn a_century_long_ttl_neither_panics_nor_expires() {
        let mem = MemoryBackend::default();
        put_for(&mem, "k", 1u8, Duration::from_secs(u64::MAX / 2));
        assert_eq!(mem.get_fresh::<u8>("k"), Some(1));
    }

    #[test]
    fn entries_expire_after_their_ttl() {
        let mem = MemoryBackend::default();
        put_for(&mem, "k", 1u8, Duration::from_millis(30));
        std::thread::sleep(Duration::from_millis(60));
        assert!(matches!(
            mem.get_typed::<u8>("k", &[]),
            TypedLookup::Miss(_)
        ));
    }
}
