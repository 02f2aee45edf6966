//! Per-backend invalidation bookkeeping, kept with each registered backend: the store barriers
//! (one lock per shard of keys) and the invalidations that backend has not applied yet. The rules
//! that use them are in `invalidation.rs`.

use std::{
    collections::HashMap,
    hash::BuildHasher,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Mutex,
    },
};

use tokio::sync::RwLock;

use crate::target::Target;

/// Store barriers per backend.
const GATE_SHARDS: usize = 64;
/// Pending invalidations kept per backend. Beyond, this process gives the backend up for good (it
/// could no longer apply what it dropped before serving from it again).
const MAX_PENDING: usize = 100_000;

/// Per-backend state of invalidation: store barriers and pending invalidations.
#[derive(Debug)]
pub(crate) struct BackendInvalidation {
    gates: [RwLock<()>; GATE_SHARDS],
    /// Each pending target with the sequence number of its latest failure.
    pub(crate) pending: Mutex<HashMap<Target, u64>>,
    pub(crate) pending_count: AtomicUsize,
    /// Set when more than [`MAX_PENDING`] were pending: the backend stays blocked in this process.
    given_up: AtomicBool,
    pub(crate) flusher_running: AtomicBool,
}

impl Default for BackendInvalidation {
    fn default() -> Self {
        Self {
            gates: std::array::from_fn(|_| RwLock::new(())),
            pending: Mutex::new(HashMap::new()),
            pending_count: AtomicUsize::new(0),
            given_up: AtomicBool::new(false),
            flusher_running: AtomicBool::new(false),
        }
    }
}

impl BackendInvalidation {
    /// Whether the backend missed an invalidation not yet applied: then it is neither read nor
    /// written by this process.
    pub(crate) fn blocked(&self) -> bool {
        self.pending_count.load(Ordering::Acquire) > 0 || self.given_up.load(Ordering::Acquire)
    }

    pub(crate) fn gate(&self, key: &str) -> &RwLock<()> {
        let hash = foldhash::fast::FixedState::with_seed(0x6a7e).hash_one(key);
        &self.gates[(hash as usize) % GATE_SHARDS]
    }

    pub(crate) fn keep(&self, target: Target) {
        static FAILURES: AtomicU64 = AtomicU64::new(0);
        let seq = FAILURES.fetch_add(1, Ordering::Relaxed);
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() >= MAX_PENDING && !pending.contains_key(&target) {
            if !self.given_up.swap(true, Ordering::AcqRel) {
                tracing::error!(
                    limit = MAX_PENDING,
                    "too many invalidations pending for a failing cache backend; this process no \
                     longer uses it (restart to use it again)"
                );
            }
            return;
        }
        pending.insert(target, seq);
        self.pending_count.store(pending.len(), Ordering::Release);
    }

    /// Drops `target` once applied, unless it failed again after `seq` (then a newer invalidation
    /// still needs applying).
    pub(crate) fn forget(&self, target: &Target, seq: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.get(target) == Some(&seq) {
            pending.remove(target);
        }
        self.pending_count.store(pending.len(), Ordering::Release);
    }

    pub(crate) fn snapshot(&self) -> Vec<(Target, u64)> {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.iter().map(|(t, seq)| (t.clone(), *seq)).collect()
    }
}
