//! The in-process backend: a bounded [`moka`] cache that keeps typed values.
//!
//! Memoized calls store the value itself (behind an `Arc`), so a hit costs a lookup and a clone,
//! with no serialization. The cache is bounded both by entry count and by bytes, where the size of a
//! value is the length of its JSON form (measured once, when it is stored).

use std::{
    any::Any,
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use async_trait::async_trait;

use super::{Backend, Lookup};
use crate::BackendError;

/// Default bound on the number of entries.
pub const DEFAULT_MAX_ENTRIES: u64 = 100_000;
/// Default bound on the total size of entries, in bytes.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Bookkeeping bytes counted per entry on top of key and value: moka's node, hash-table slot and
/// access-order links, the entry record and the allocations' headers. Measured by `tests/flood.rs`,
/// which prints the live heap per entry (about 1,500 bytes for a 1 KiB string and a 32-byte key).
const ENTRY_OVERHEAD: u64 = 420;
/// How many invalidated groups are remembered before the table is folded into one floor.
const MAX_TRACKED_GROUPS: usize = 100_000;

/// A bounded in-process cache.
///
/// ```
/// use cache_runtime::MemoryBackend;
/// // At most 10,000 entries and 64 MiB, whichever bound is reached first.
/// let backend = MemoryBackend::with_limits(10_000, 64 * 1024 * 1024);
/// cache_runtime::register("sessions", backend);
/// ```
pub struct MemoryBackend {
    /// foldhash: a fast hasher with a per-process random seed (keys carry outside input).
    entries: moka::sync::Cache<String, Arc<MemEntry>, foldhash::fast::RandomState>,
    generations: Generations,
    max_entries: u64,
    max_bytes: u64,
}

struct MemEntry {
    value: Stored,
    /// How long the cache keeps the entry (freshness plus any stale window).
    ttl: Duration,
    /// When the value stops being fresh (ms since the Unix epoch); 0 when it is fresh for as long as
    /// it is kept, which spares hits a clock read.
    fresh_until_ms: u64,
    generations: Box<[u64]>,
    weight: u32,
}

enum Stored {
    Typed(Arc<dyn Any + Send + Sync>),
    Bytes(Vec<u8>),
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
            .field("entries", &self.entries.entry_count())
            .finish()
    }
}

struct PerEntryTtl;

impl moka::Expiry<String, Arc<MemEntry>> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<MemEntry>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Arc<MemEntry>,
        _now: std::time::Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
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
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_key: &String, entry: &Arc<MemEntry>| entry.weight)
            .expire_after(PerEntryTtl)
            .build_with_hasher(foldhash::fast::RandomState::default());
        Self {
            entries,
            generations: Generations::default(),
            max_entries,
            max_bytes,
        }
    }

    /// The built-in `"memory"` backend: limits from `CACHE_MEMORY_MAX_ENTRIES` and
    /// `CACHE_MEMORY_MAX_BYTES` when set, else the defaults.
    pub fn from_env() -> Self {
        let read = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(default)
        };
        Self::with_limits(
            read("CACHE_MEMORY_MAX_ENTRIES", DEFAULT_MAX_ENTRIES),
            read("CACHE_MEMORY_MAX_BYTES", DEFAULT_MAX_BYTES),
        )
    }

    /// Number of live entries (approximate: moka applies writes in batches).
    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    /// Number of live entries after applying pending writes and evictions.
    pub fn entry_count_now(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    /// Total weight of live entries in bytes (approximate, as [`entry_count`](Self::entry_count)).
    pub fn weighted_size(&self) -> u64 {
        self.entries.weighted_size()
    }

    /// Applies pending evictions now (moka otherwise does it in batches).
    pub fn run_pending_tasks(&self) {
        self.entries.run_pending_tasks();
    }

    fn weight(&self, key: &str, value_bytes: u64) -> u32 {
        let floor = self.max_bytes / self.max_entries;
        let size = ENTRY_OVERHEAD + key.len() as u64 + value_bytes;
        u32::try_from(size.max(floor)).unwrap_or(u32::MAX)
    }

    pub(crate) fn get_typed<T: Clone + 'static>(
        &self,
        key: &str,
        groups: &[String],
    ) -> TypedLookup<T> {
        if let Some(entry) = self.entries.get(key) {
            if let Stored::Typed(value) = &entry.value {
                if let Some(value) = value.downcast_ref::<T>() {
                    if self.generations.matches(groups, &entry.generations) {
                        if entry.fresh_until_ms != 0
                            && crate::envelope::now_ms() >= entry.fresh_until_ms
                        {
                            return TypedLookup::Stale(
                                value.clone(),
                                self.generations.current(groups),
                                entry.fresh_until_ms,
                            );
                        }
                        return TypedLookup::Hit(value.clone());
                    }
                }
            }
        }
        TypedLookup::Miss(self.generations.current(groups))
    }

    /// Stores a typed value kept for `ttl` and fresh until `fresh_until_ms` (0: while kept).
    /// Returns `false`, storing nothing, when its serialized size exceeds `max_value_bytes`.
    pub(crate) fn set_typed<T: serde::Serialize + Send + Sync + 'static>(
        &self,
        key: String,
        value: Arc<T>,
        ttl: Duration,
        fresh_until_ms: u64,
        generations: Vec<u64>,
        max_value_bytes: u64,
    ) -> bool {
        let size = serialized_len(value.as_ref());
        if size > max_value_bytes {
            return false;
        }
        let weight = self.weight(&key, size + size_of::<T>() as u64);
        let entry = MemEntry {
            value: Stored::Typed(value),
            ttl,
            fresh_until_ms,
            generations: generations.into_boxed_slice(),
            weight,
        };
        self.entries.insert(key, Arc::new(entry));
        true
    }

    pub(crate) fn remove(&self, key: &str) {
        self.entries.invalidate(key);
    }

    /// Drops every entry at once.
    pub(crate) fn clear_now(&self) {
        self.entries.invalidate_all();
    }

    pub(crate) fn bump_group(&self, group: &str) {
        self.generations.bump(group);
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    async fn get(&self, key: &str, groups: &[String]) -> Result<Lookup, BackendError> {
        let value = self.entries.get(key).and_then(|entry| match &entry.value {
            Stored::Bytes(bytes) => Some(bytes.clone()),
            Stored::Typed(_) => None,
        });
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
        let weight = self.weight(key, value.len() as u64);
        let entry = MemEntry {
            value: Stored::Bytes(value),
            ttl,
            fresh_until_ms: 0,
            generations: Box::new([]),
            weight,
        };
        self.entries.insert(key.to_owned(), Arc::new(entry));
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

    fn as_memory(&self) -> Option<&MemoryBackend> {
        Some(self)
    }
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

/// Group generations of the memory backend.
///
/// Only invalidated groups are tracked; any other group reads as `floor`. When the table grows past
/// [`MAX_TRACKED_GROUPS`] it is emptied and `floor` is raised to the newest generation handed out, so
/// memory stays bounded and an entry can only ever be judged stale too early, never too late.
#[derive(Default)]
struct Generations {
    state: RwLock<GenerationTable>,
}

#[derive(Default)]
struct GenerationTable {
    by_group: HashMap<String, u64>,
    floor: u64,
    last: u64,
}

impl GenerationTable {
    fn get(&self, group: &str) -> u64 {
        self.by_group.get(group).copied().unwrap_or(self.floor)
    }
}

impl Generations {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, GenerationTable> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn current(&self, groups: &[String]) -> Vec<u64> {
        if groups.is_empty() {
            return Vec::new();
        }
        let table = self.read();
        groups.iter().map(|g| table.get(g)).collect()
    }

    fn matches(&self, groups: &[String], recorded: &[u64]) -> bool {
        if groups.len() != recorded.len() {
            return false;
        }
        if groups.is_empty() {
            return true;
        }
        let table = self.read();
        groups.iter().zip(recorded).all(|(g, r)| table.get(g) == *r)
    }

    fn bump(&self, group: &str) {
        let mut table = self
            .state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if table.by_group.len() >= MAX_TRACKED_GROUPS && !table.by_group.contains_key(group) {
            table.floor = table.last;
            table.by_group.clear();
        }
        table.last += 1;
        let next = table.last;
        table.by_group.insert(group.to_owned(), next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn typed_round_trip_and_type_mismatch() {
        let mem = MemoryBackend::default();
        mem.set_typed(
            "k".into(),
            Arc::new(5u64),
            Duration::from_secs(60),
            0,
            vec![],
            u64::MAX,
        );
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
        let TypedLookup::Miss(gens) = mem.get_typed::<u64>("k", &g) else {
            panic!("empty cache hit")
        };
        mem.set_typed(
            "k".into(),
            Arc::new(1u64),
            Duration::from_secs(60),
            0,
            gens,
            u64::MAX,
        );
        assert!(matches!(mem.get_typed::<u64>("k", &g), TypedLookup::Hit(1)));
        mem.bump_group("users");
        assert!(matches!(
            mem.get_typed::<u64>("k", &g),
            TypedLookup::Miss(_)
        ));
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
            Arc::new(1u64),
            Duration::from_secs(60),
            0,
            before,
            u64::MAX,
        );
        for i in 0..=MAX_TRACKED_GROUPS {
            mem.bump_group(&format!("other{i}"));
        }
        assert!(matches!(
            mem.get_typed::<u64>("k", &g),
            TypedLookup::Miss(_)
        ));
    }

    #[test]
    fn bounded_by_entries() {
        let mem = MemoryBackend::with_limits(100, 1 << 30);
        for i in 0..10_000u64 {
            mem.set_typed(
                format!("k{i}"),
                Arc::new(i),
                Duration::from_secs(60),
                0,
                vec![],
                u64::MAX,
            );
        }
        mem.run_pending_tasks();
        assert!(mem.entry_count() <= 100, "{} entries", mem.entry_count());
    }

    #[test]
    fn bounded_by_bytes() {
        let mem = MemoryBackend::with_limits(1_000_000, 100 * 1024);
        for i in 0..2_000u64 {
            mem.set_typed(
                format!("k{i}"),
                Arc::new("x".repeat(1024)),
                Duration::from_secs(60),
                0,
                vec![],
                u64::MAX,
            );
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
    fn expired_entries_inside_the_stale_window_are_stale() {
        let mem = MemoryBackend::default();
        let past = crate::envelope::now_ms() - 1;
        mem.set_typed(
            "k".into(),
            Arc::new(1u8),
            Duration::from_secs(60),
            past,
            vec![],
            u64::MAX,
        );
        assert!(matches!(
            mem.get_typed::<u8>("k", &[]),
            TypedLookup::Stale(1, _, _)
        ));
    }

    #[test]
    fn oversized_values_are_not_stored() {
        let mem = MemoryBackend::default();
        let stored = mem.set_typed(
            "k".into(),
            Arc::new("x".repeat(100)),
            Duration::from_secs(60),
            0,
            vec![],
            50,
        );
        assert!(!stored);
        assert!(matches!(
            mem.get_typed::<String>("k", &[]),
            TypedLookup::Miss(_)
        ));
    }

    #[test]
    fn entries_expire_after_their_ttl() {
        let mem = MemoryBackend::default();
        mem.set_typed(
            "k".into(),
            Arc::new(1u8),
            Duration::from_millis(30),
            0,
            vec![],
            u64::MAX,
        );
        std::thread::sleep(Duration::from_millis(60));
        assert!(matches!(
            mem.get_typed::<u8>("k", &[]),
            TypedLookup::Miss(_)
        ));
    }
}
