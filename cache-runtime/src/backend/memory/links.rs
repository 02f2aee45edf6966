//! Links from a default key to the call text its entry is stored under.
//!
//! A memoized call with a default key (`"{prefix}{digest}"`) is stored under its call text
//! (`"{prefix}\0{json}"`), which a hit builds without computing the digest. Everything else that
//! names the entry does so by its key (`invalidate_key`, a plain store, a lookup by key), and
//! finds the call text here.
//!
//! The one rule that makes this safe: **while an entry is stored under a call text, the link of
//! its key names that call text.** A link is set under the entry's shard write lock, together
//! with the entry's insertion (see `MemoryBackend::set_typed`), and each entry holds a
//! [`LinkGuard`] that removes the link when the entry is dropped, unless a later insertion under
//! the same call text has set it again (each insertion has its own serial). So a removal by key
//! that reads the link and removes the call text's entry leaves no entry of that key behind.
//!
//! Lock order: a store shard's lock, then a links shard's; never the other way (a removal by key
//! copies the call text out and lets go before it touches the store).

use std::{
    collections::HashMap,
    hash::BuildHasher,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
};

use compact_str::CompactString;
use parking_lot::Mutex;

/// Shards of the links (a removal by key locks one).
const SHARDS: usize = 32;

/// The call text a key's entry is stored under, and the serial of the insertion that set it.
#[derive(Debug)]
struct Link {
    call: CompactString,
    serial: u64,
}

type Shard = HashMap<CompactString, Link, foldhash::fast::RandomState>;

/// The links of one memory backend.
#[derive(Debug, Default)]
pub(super) struct Links {
    shards: [Mutex<Shard>; SHARDS],
    hasher: foldhash::fast::RandomState,
    /// Links held: when 0, lookups by key skip the links.
    held: AtomicUsize,
    serials: AtomicU64,
}

/// Held by an entry stored under a call text: removes its key's link when the entry is dropped
/// (removed, replaced, evicted, expired or cleared), if the link is still this entry's.
#[derive(Debug)]
pub(super) struct LinkGuard {
    links: Arc<Links>,
    key: CompactString,
    serial: u64,
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        self.links.unlink(&self.key, self.serial);
    }
}

impl LinkGuard {
    /// Bytes a link costs beside its entry: the key twice (here and in the links), the call text
    /// once more, and the records.
    pub(super) fn weight(key: &str, call: &str) -> u64 {
        (2 * key.len() + call.len() + 2 * size_of::<Link>() + size_of::<Self>()) as u64
    }
}

impl Links {
    fn shard(&self, key: &str) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// A guard for a new entry of `key` (not linked yet: see [`link`](Self::link)).
    pub(super) fn guard(self: &Arc<Self>, key: &str) -> LinkGuard {
        LinkGuard {
            links: Arc::clone(self),
            key: CompactString::from(key),
            serial: self.serials.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Links the guard's key to `call`. Called under the store shard's write lock of `call`,
    /// with the insertion of the guard's entry.
    pub(super) fn link(&self, guard: &LinkGuard, call: &str) {
        let link = Link {
            call: CompactString::from(call),
            serial: guard.serial,
        };
        if self
            .shard(&guard.key)
            .lock()
            .insert(guard.key.clone(), link)
            .is_none()
        {
            self.held.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn unlink(&self, key: &str, serial: u64) {
        let mut shard = self.shard(key).lock();
        if shard.get(key).is_some_and(|link| link.serial == serial) {
            shard.remove(key);
            self.held.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The call text `key`'s entry is stored under, if it is stored under one.
    pub(super) fn call_of(&self, key: &str) -> Option<CompactString> {
        if self.held.load(Ordering::Acquire) == 0 {
            return None;
        }
        let shard = self.shard(key).lock();
        shard.get(key).map(|link| link.call.clone())
    }

    /// Links held.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guard_removes_only_its_own_link() {
        let links = Arc::new(Links::default());
        let first = links.guard("k");
        links.link(&first, "k\0[1]");
        let second = links.guard("k");
        links.link(&second, "k\0[1]");
        drop(first); // replaced: the link is the second entry's now
        assert_eq!(links.call_of("k").as_deref(), Some("k\0[1]"));
        assert_eq!(links.len(), 1);
        drop(second);
        assert_eq!(links.call_of("k"), None);
        assert_eq!(links.len(), 0);
    }

    #[test]
    fn an_unlinked_guard_leaves_the_link_alone() {
        let links = Arc::new(Links::default());
        let linked = links.guard("k");
        links.link(&linked, "k\0[1]");
        drop(links.guard("k")); // an entry refused before it was linked
        assert_eq!(links.call_of("k").as_deref(), Some("k\0[1]"));
        drop(linked);
        assert_eq!(links.call_of("k"), None);
    }
}
