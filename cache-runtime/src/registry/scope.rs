//! Isolated registries: a [`Caches`] value holds backends of its own, used by the calls made
//! inside [`Caches::scope`] instead of the process-wide registry.
//!
//! A scope is a tokio task-local, so it follows the scoped future across `.await`s and threads,
//! and the runtime carries it into the tasks it spawns itself (a memoized body running in a task of
//! its own, a background refresh); a task the program spawns with `tokio::spawn` starts outside
//! the scope. While no `Caches` value is alive, looking a backend up costs one more atomic load.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, Weak,
    },
};

use super::{leak, Registered};
use crate::{
    backend::{Backend, MemoryBackend},
    guard::Protection,
};

tokio::task_local! {
    static CURRENT: Arc<Table>;
}

/// How many scope tables are alive: while none is, lookups skip the task-local.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Every live scope table, so that an invalidation made outside a scope reaches them all.
static TABLES: Mutex<Vec<Weak<Table>>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The backends of one [`Caches`].
struct Table {
    id: u64,
    entries: Mutex<HashMap<String, &'static Registered>>,
}

/// An isolated registry: backends registered here, and a `"memory"` backend of its own, are used
/// by the calls made inside [`scope`](Self::scope), so that tests in one process share neither
/// entries nor registrations.
///
/// Inside a scope, a backend name resolves to the backend registered in the scope under that name;
/// `"memory"` resolves to the scope's own in-process store (made on first use); any other name
/// falls back to the process-wide registry. When the last clone of the `Caches` is dropped, the
/// in-process stores registered in it are emptied (the registrations themselves, about 5 KiB, stay
/// allocated: calls may still hold them). Invalidations made inside a scope reach the scope's
/// backends and the process-wide ones; those made outside any scope reach every backend, scoped
/// or not (an invalidation is never lost to a scope); the same holds for a fn's
/// `<fn>_invalidate` and for [`Cache::invalidate`](crate::Cache::invalidate), within the
/// backends of that name. Per-function [`stats`](crate::stats) stay process-wide.
///
/// ```
/// use cache_runtime::{cached, Caches, MemoryBackend};
/// use std::sync::atomic::{AtomicUsize, Ordering};
///
/// static RUNS: AtomicUsize = AtomicUsize::new(0);
///
/// #[cached(ttl = 60, key = "answer")]
/// async fn answer() -> u64 {
///     RUNS.fetch_add(1, Ordering::SeqCst);
///     42
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let first = Caches::new();
/// let second = Caches::new();
/// second.register("redis", MemoryBackend::default()); // an offline "redis", in this scope only
/// first.scope(answer()).await;
/// first.scope(answer()).await; // a hit in the first scope's memory
/// second.scope(answer()).await; // the second scope has entries of its own: the body runs
/// assert_eq!(RUNS.load(Ordering::SeqCst), 2);
/// # }
/// ```
#[derive(Clone)]
pub struct Caches {
    table: Arc<Table>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = lock(&self.table.entries).keys().cloned().collect();
        f.debug_struct("Caches")
            .field("id", &self.table.id)
            .field("backends", &names)
            .finish()
    }
}

impl Default for Caches {
    fn default() -> Self {
        Self::new()
    }
}

impl Caches {
    /// An empty isolated registry (with a `"memory"` backend of its own once used).
    pub fn new() -> Self {
        let table = Arc::new(Table {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            entries: Mutex::new(HashMap::new()),
        });
        let mut tables = lock(&TABLES);
        tables.retain(|table| table.strong_count() > 0);
        tables.push(Arc::downgrade(&table));
        LIVE.fetch_add(1, Ordering::SeqCst);
        Self { table }
    }

    /// Registers `backend` under `name` in this registry only (as [`register`](crate::register)
    /// does process-wide). Calls made inside [`scope`](Self::scope) afterwards use it.
    pub fn register(&self, name: impl Into<String>, backend: impl Backend) -> &Self {
        self.register_arc_with(name, Arc::new(backend), Protection::default())
    }

    /// [`register`](Self::register) with a timeout and breaker of its own, for a backend already
    /// behind an `Arc`.
    pub fn register_arc_with(
        &self,
        name: impl Into<String>,
        backend: Arc<dyn Backend>,
        protection: Protection,
    ) -> &Self {
        let name = name.into();
        let entry = leak(&name, backend, protection, self.table.id);
        lock(&self.table.entries).insert(name, entry);
        self
    }

    /// Runs `work` with this registry: the calls it makes resolve their backends here first.
    pub async fn scope<F: Future>(&self, work: F) -> F::Output {
        CURRENT.scope(Arc::clone(&self.table), work).await
    }

    /// Runs the synchronous `work` with this registry.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn sync_scope<R>(&self, work: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(Arc::clone(&self.table), work)
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::SeqCst);
        // The registrations are leaked (calls hold `&'static` references); what their in-process
        // stores hold is not (emptying a store only ever costs misses). Other stores are left
        // alone: clearing a shared Redis or folder would reach other processes.
        let entries = self.entries.get_mut().unwrap_or_else(|p| p.into_inner());
        for entry in entries.values() {
            if let Some(memory) = entry.memory() {
                memory.clear_now();
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The backend the current scope has under `name`: `None` outside a scope, `Some(None)` inside
/// one that leaves the name to the process-wide registry.
#[inline]
pub(super) fn resolve(name: &str) -> Option<Option<&'static Registered>> {
    if LIVE.load(Ordering::Relaxed) == 0 {
        return None;
    }
    resolve_in_scope(name)
}

#[cold]
fn resolve_in_scope(name: &str) -> Option<Option<&'static Registered>> {
    CURRENT
        .try_with(|table| {
            let mut entries = lock(&table.entries);
            if let Some(found) = entries.get(name) {
                return Some(*found);
            }
            if name != "memory" {
                return None;
            }
            let memory = Arc::new(MemoryBackend::from_env());
            let entry = leak(name, memory, Protection::default(), table.id);
            entries.insert(name.to_owned(), entry);
            Some(entry)
        })
        .ok()
}

/// The scoped backends an invalidation made here reaches: the current scope's, or, outside any
/// scope, those of every live scope.
pub(super) fn reachable() -> Vec<&'static Registered> {
    if LIVE.load(Ordering::SeqCst) == 0 {
        return Vec::new();
    }
    if let Ok(entries) = CURRENT.try_with(|table| lock(&table.entries).values().copied().collect())
    {
        return entries;
    }
    live_tables()
        .iter()
        .flat_map(|table| lock(&table.entries).values().copied().collect::<Vec<_>>())
        .collect()
}

/// Whether a live scope holds `entry` (its pending invalidations are still worth retrying).
pub(super) fn holds(entry: &Registered) -> bool {
    LIVE.load(Ordering::SeqCst) > 0
        && live_tables().iter().any(|table| {
            lock(&table.entries)
                .values()
                .any(|held| std::ptr::eq(*held, entry))
        })
}

fn live_tables() -> Vec<Arc<Table>> {
    lock(&TABLES).iter().filter_map(Weak::upgrade).collect()
}

/// `work`, run inside the current scope (if any) wherever it is polled: for the tasks the
/// runtime spawns on behalf of a scoped call.
pub(crate) fn carry<F: Future>(work: F) -> impl Future<Output = F::Output> {
    let current = CURRENT.try_with(Arc::clone).ok();
    async move {
        match current {
            Some(table) => CURRENT.scope(table, work).await,
            None => work.await,
        }
    }
}
