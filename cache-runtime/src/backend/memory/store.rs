//! The memory backend's store: `quick_cache`'s single-threaded cache in shards of our own, each
//! behind a read-write lock, so that a hit reads its value in place under the shard's read lock.
//!
//! `quick_cache::sync::Cache` hands out clones of what it stores, so entries had to sit behind an
//! `Arc` whose count every hit bumps and drops: two atomic read-modify-writes, on a cache line
//! that two threads hitting the same key pass back and forth. Here a hit takes the shard's read
//! lock, clones the value, and lets go; entries are owned by the store alone.
//!
//! Each key's hash is computed once ([`StoreKey`]): its high bits pick the shard and the shard's
//! table takes the same hash through [`PassHash`]. Entries that eviction pushes out are dropped
//! after the shard's lock is released ([`DeferDrops`]).

use std::hash::{BuildHasher, Hash, Hasher};

use parking_lot::RwLock;
use quick_cache::{Equivalent, Lifecycle, Weighter};

/// Keys of up to 24 bytes (templates such as `user:{id}`) are held inline, so a probe compares
/// them without following a pointer.
type Text = compact_str::CompactString;

/// A stored key with its hash.
#[derive(Debug, Clone)]
pub(super) struct StoreKey {
    hash: u64,
    text: Text,
}

impl StoreKey {
    #[cfg(test)]
    pub(super) fn as_str(&self) -> &str {
        &self.text
    }
}

impl PartialEq for StoreKey {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.text == other.text
    }
}

impl Eq for StoreKey {}

impl Hash for StoreKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// A borrowed key to look up, hashed like the [`StoreKey`] it matches.
struct Probe<'a> {
    hash: u64,
    text: &'a str,
}

impl Hash for Probe<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl Equivalent<StoreKey> for Probe<'_> {
    fn equivalent(&self, key: &StoreKey) -> bool {
        self.hash == key.hash && self.text == key.text.as_str()
    }
}

/// Hands a key's precomputed hash to the shard's table.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct PassHash;

/// The hasher of [`PassHash`]: the last `u64` written is the hash.
#[derive(Debug, Default)]
pub(super) struct PassHasher(u64);

impl Hasher for PassHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by the keys above; anything else still hashes all its bytes.
        for byte in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(*byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl BuildHasher for PassHash {
    type Hasher = PassHasher;

    fn build_hasher(&self) -> PassHasher {
        PassHasher::default()
    }
}

/// Collects what a request evicts, to be dropped once the shard's lock is released.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct DeferDrops;

impl<K, V> Lifecycle<K, V> for DeferDrops {
    type RequestState = Vec<(K, V)>;

    fn on_evict(&self, evicted: &mut Self::RequestState, key: K, value: V) {
        evicted.push((key, value));
    }
}

type Shard<V, W> = quick_cache::unsync::Cache<StoreKey, V, W, PassHash, DeferDrops>;

/// Sizes of a [`Store`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Sizing {
    /// Items the tables are sized for up front (they grow as needed).
    pub estimated_items: usize,
    /// The total weight held.
    pub weight_capacity: u64,
    /// Shards asked for (rounded up to a power of two, fewer when shards would be tiny).
    pub shards: usize,
    /// The share of each shard's weight its main area may take.
    pub hot_allocation: f64,
}

/// A sharded, bounded cache whose reads run in place under a shard's read lock.
pub(super) struct Store<V, W> {
    shards: Box<[RwLock<Shard<V, W>>]>,
    /// foldhash: fast, with a per-process random seed (keys carry outside input).
    hasher: foldhash::fast::RandomState,
    /// Bits of the hash (from its top) that pick the shard.
    shard_bits: u32,
    shard_capacity: u64,
}

impl<V, W: Weighter<StoreKey, V> + Clone> Store<V, W> {
    /// A store as `quick_cache::sync::Cache` sizes one: shards of at least 32 items where the
    /// estimate allows, each holding an equal share of the weight.
    pub(super) fn new(sizing: Sizing, weighter: W) -> Self {
        let items = sizing.estimated_items as u64;
        let mut shards = sizing.shards.max(1).next_power_of_two() as u64;
        while shards > 1 && items.div_ceil(shards) < 32 {
            shards /= 2;
        }
        let shard_items = usize::try_from(items.div_ceil(shards)).unwrap_or(usize::MAX);
        let shard_capacity = sizing.weight_capacity.div_ceil(shards).max(1);
        let options = quick_cache::OptionsBuilder::new()
            .estimated_items_capacity(shard_items)
            .weight_capacity(shard_capacity)
            .hot_allocation(sizing.hot_allocation)
            .build()
            .expect("weight and item capacities are set");
        let shards = (0..shards)
            .map(|_| {
                RwLock::new(Shard::with_options(
                    options.clone(),
                    weighter.clone(),
                    PassHash,
                    DeferDrops,
                ))
            })
            .collect::<Box<[_]>>();
        Self {
            shard_bits: shards.len().trailing_zeros(),
            shards,
            hasher: foldhash::fast::RandomState::default(),
            shard_capacity,
        }
    }

    /// The weight one shard holds.
    pub(super) fn shard_capacity(&self) -> u64 {
        self.shard_capacity
    }

    fn probe<'a>(&self, key: &'a str) -> (&RwLock<Shard<V, W>>, Probe<'a>) {
        let hash = self.hasher.hash_one(key);
        // The table picks buckets with the low bits and tags with the top 7: the shard takes
        // bits just below the tag.
        let shard = if self.shard_bits == 0 {
            0
        } else {
            ((hash << 7) >> (64 - self.shard_bits)) as usize
        };
        (&self.shards[shard], Probe { hash, text: key })
    }

    /// Runs `read` on the value under `key`, under the shard's read lock (keep it short: it
    /// blocks writers of the shard).
    #[inline]
    pub(super) fn read<R>(&self, key: &str, read: impl FnOnce(&V) -> R) -> Option<R> {
        let (shard, probe) = self.probe(key);
        let shard = shard.read();
        shard.get(&probe).map(read)
    }

    /// Stores `value` under `key`, replacing any value there.
    pub(super) fn insert(&self, key: &str, value: V) {
        self.insert_if(key, value, |_| true);
    }

    /// Stores `value` under `key` if `condition` holds for it, checked under the shard's write
    /// lock together with the insertion; otherwise removes any value under `key`.
    pub(super) fn insert_if(&self, key: &str, value: V, condition: impl FnOnce(&V) -> bool) {
        let (shard, probe) = self.probe(key);
        let mut evicted = Vec::new();
        let mut shard = shard.write();
        if condition(&value) {
            let key = StoreKey {
                hash: probe.hash,
                text: Text::from(key),
            };
            shard.insert_with_lifecycle(key, value, &mut evicted);
        } else if let Some(removed) = shard.remove(&probe) {
            evicted.push(removed);
        }
        drop(shard);
        drop(evicted);
    }

    /// Removes the value under `key`.
    pub(super) fn remove(&self, key: &str) -> Option<V> {
        let (shard, probe) = self.probe(key);
        let removed = shard.write().remove(&probe);
        removed.map(|(_, value)| value)
    }

    /// Removes the value under `key` if `condition` holds for it (checked under the write lock).
    pub(super) fn remove_if(&self, key: &str, condition: impl FnOnce(&V) -> bool) -> Option<V> {
        let (shard, probe) = self.probe(key);
        let removed = shard.write().remove_if(&probe, condition);
        removed.map(|(_, value)| value)
    }

    /// Keeps only the entries for which `keep` holds, one shard at a time.
    pub(super) fn retain(&self, keep: impl Fn(&StoreKey, &V) -> bool) {
        for shard in &self.shards {
            shard.write().retain(&keep);
        }
    }

    /// Removes every entry, one shard at a time; the values are dropped outside the locks.
    pub(super) fn clear(&self) {
        for shard in &self.shards {
            let drained: Vec<(StoreKey, V)> = shard.write().drain().collect();
            drop(drained);
        }
    }

    /// Entries held.
    pub(super) fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.read().len()).sum()
    }

    /// Total weight held.
    pub(super) fn weight(&self) -> u64 {
        self.shards.iter().map(|shard| shard.read().weight()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone)]
    struct ByValue;

    impl Weighter<StoreKey, u64> for ByValue {
        fn weight(&self, _key: &StoreKey, value: &u64) -> u64 {
            *value
        }
    }

    fn store(items: usize, weight: u64, shards: usize) -> Store<u64, ByValue> {
        Store::new(
            Sizing {
                estimated_items: items,
                weight_capacity: weight,
                shards,
                hot_allocation: 0.97,
            },
            ByValue,
        )
    }

    #[test]
    fn reads_what_was_stored_and_nothing_else() {
        let store = store(10_000, 1_000_000, 8);
        for n in 0..5_000u64 {
            store.insert(&format!("k:{n}"), 1 + n % 7);
        }
        for n in 0..5_000u64 {
            assert_eq!(store.read(&format!("k:{n}"), |v| *v), Some(1 + n % 7));
        }
        assert_eq!(store.read("k:5000", |v| *v), None);
        assert_eq!(store.read("k:1\u{0}", |v| *v), None);
        assert_eq!(store.len(), 5_000);
        store.insert("k:3", 100);
        assert_eq!(store.read("k:3", |v| *v), Some(100));
        assert_eq!(store.len(), 5_000);
    }

    #[test]
    fn removes_clears_and_retains() {
        let store = store(1_000, 1_000_000, 4);
        for n in 0..100u64 {
            store.insert(&n.to_string(), n + 1);
        }
        assert_eq!(store.remove("7"), Some(8));
        assert_eq!(store.remove("7"), None);
        assert_eq!(store.remove_if("8", |v| *v == 0), None);
        assert_eq!(store.read("8", |v| *v), Some(9));
        assert_eq!(store.remove_if("8", |v| *v == 9), Some(9));
        store.insert_if("9", 99, |v| *v == 0);
        assert_eq!(
            store.read("9", |v| *v),
            None,
            "a refused value removes the older one"
        );
        store.insert_if("9", 99, |v| *v == 99);
        assert_eq!(store.read("9", |v| *v), Some(99));
        store.insert_if("9", 10, |_| true);
        store.retain(|key, _| key.as_str().len() == 1);
        assert_eq!(store.len(), 8); // "0".."9" less "7" and "8"
        assert_eq!(store.weight(), (1..=10).sum::<u64>() - 8 - 9);
        store.clear();
        assert_eq!(store.len(), 0);
        assert_eq!(store.weight(), 0);
    }

    #[test]
    fn stays_within_its_weight() {
        let store = store(100, 1_000, 4);
        for n in 0..10_000u64 {
            store.insert(&n.to_string(), 10);
        }
        assert!(store.weight() <= 1_000, "weight {}", store.weight());
        assert!(store.len() <= 100);
        assert!(store.shard_capacity() >= 250);
    }

    #[test]
    fn shards_share_the_keys() {
        let store = store(100_000, u64::MAX / 2, 8);
        assert_eq!(store.shards.len(), 8);
        for n in 0..8_000u64 {
            store.insert(&format!("user:{n}"), 1);
        }
        for shard in store.shards.iter() {
            let held = shard.read().len();
            assert!(
                (500..1_500).contains(&held),
                "a shard holds {held} of 8,000 keys"
            );
        }
    }

    #[test]
    fn concurrent_readers_and_writers_see_only_stored_values() {
        let store = std::sync::Arc::new(store(10_000, 1_000_000_000, 8));
        std::thread::scope(|scope| {
            for t in 0..4u64 {
                let store = &store;
                scope.spawn(move || {
                    for round in 0..20_000u64 {
                        let n = (round * 7 + t) % 512;
                        let key = format!("k:{n}");
                        if round % 3 == 0 {
                            // The value is a function of the key: no read can see another key's.
                            store.insert(&key, n * 1_000 + 1);
                        } else if round % 11 == 0 {
                            store.remove(&key);
                        } else if let Some(value) = store.read(&key, |v| *v) {
                            assert_eq!(value, n * 1_000 + 1, "{key}");
                        }
                    }
                });
            }
        });
    }
}
