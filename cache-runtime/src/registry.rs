//! Backend names, resolved at run time, and invalidation across every backend.
//!
//! Built-in names need no set-up: `"memory"`, `"redis"` (`REDIS_URL`) and `"file"` (`CACHE_DIR`) are
//! created on first use. [`register`] adds a backend under any name or remaps a built-in one.
//! Invalidation across the registered backends is in `invalidation.rs`.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicPtr, AtomicU64, Ordering},
        Arc, LazyLock, Mutex,
    },
};

use arc_swap::ArcSwap;

mod scope;
pub(crate) use scope::carry;
pub use scope::Caches;

use crate::{
    backend::{Backend, FileBackend, MemoryBackend, RedisBackend, TieredBackend},
    codec::Storage,
    guard::{Guard, Protection},
    pending::BackendInvalidation,
    seal::Sealing,
};

/// A backend with its name and its fail-open guard.
pub(crate) struct Registered {
    pub(crate) name: String,
    pub(crate) backend: Arc<dyn Backend>,
    /// The typed path the runtime takes with this backend, chosen from its concrete type when it
    /// is registered (a user's wrapper around a built-in store takes the serialized path).
    typed: Typed,
    /// The [`Caches`] scope this backend belongs to (0: the process-wide registry): what is
    /// invalidated in one scope costs the computations of another nothing.
    pub(crate) scope: u64,
    pub(crate) guard: Guard,
    /// Store barriers and pending invalidations of this backend.
    pub(crate) invalidation: BackendInvalidation,
    /// How its stored entries are sealed (serialized backends only).
    pub(crate) seal: Sealing,
    /// How values are stored in it (codec, compression), as registered.
    pub(crate) storage: Storage,
}

/// Registered backends live for the rest of the process (re-registering a name leaks the old
/// entry, a few hundred bytes): calls then hold plain `&'static` references, with no reference
/// counting on the hot path.
type Table = HashMap<String, &'static Registered>;

static TABLE: LazyLock<ArcSwap<Table>> = LazyLock::new(|| ArcSwap::from_pointee(Table::new()));
/// Serializes writers of `TABLE` (readers never wait).
static WRITER: Mutex<()> = Mutex::new(());
/// Moves whenever `TABLE` changes; sites cache their resolution under it.
static VERSION: AtomicU64 = AtomicU64::new(1);

/// A site's cached resolution of its backend name.
pub(crate) struct Resolved {
    version: u64,
    registered: Option<&'static Registered>,
}
/// Registers `backend` under `name`, replacing whatever had that name (built-ins included).
///
/// Calls made after this returns use the new backend.
///
/// ```
/// // An offline demo: the "redis" name served from memory.
/// cache_runtime::register("redis", cache_runtime::MemoryBackend::default());
/// ```
pub fn register(name: impl Into<String>, backend: impl Backend) {
    register_arc(name, Arc::new(backend));
}

/// [`register`] for a backend already behind an `Arc` (to keep a handle on it).
pub fn register_arc(name: impl Into<String>, backend: Arc<dyn Backend>) {
    register_arc_with(name, backend, Protection::default());
}

/// [`register`] with a timeout and breaker of its own instead of the environment's defaults.
pub fn register_with(name: impl Into<String>, backend: impl Backend, protection: Protection) {
    register_arc_with(name, Arc::new(backend), protection);
}

/// [`register_with`] for a backend already behind an `Arc`.
pub fn register_arc_with(
    name: impl Into<String>,
    backend: Arc<dyn Backend>,
    protection: Protection,
) {
    let name = name.into();
    let entry = leak(&name, backend, protection, 0);
    let _writer = WRITER.lock().unwrap_or_else(|p| p.into_inner());
    update(|table| {
        table.insert(name, entry);
    });
}

/// What the runtime knows about a backend's concrete type.
enum Typed {
    /// The in-process store: typed values, no serialization.
    Memory(Arc<MemoryBackend>),
    /// Two tiers: a typed local one in front of a serialized remote one.
    Tiered(Arc<TieredBackend>),
    /// Serialized values only.
    Bytes,
}

impl Typed {
    fn of(backend: &Arc<dyn Backend>) -> Self {
        let any: Arc<dyn std::any::Any + Send + Sync> = Arc::clone(backend) as _;
        match any.downcast::<MemoryBackend>() {
            Ok(memory) => Self::Memory(memory),
            Err(any) => match any.downcast::<TieredBackend>() {
                Ok(tiered) => Self::Tiered(tiered),
                Err(_) => Self::Bytes,
            },
        }
    }
}

impl Registered {
    /// The in-process memory store, if this backend is one: the runtime keeps typed values in it
    /// and skips serialization.
    pub(crate) fn memory(&self) -> Option<&MemoryBackend> {
        match &self.typed {
            Typed::Memory(memory) => Some(memory),
            _ => None,
        }
    }

    /// The two-tier store, if this backend is one: the runtime reads its local tier first.
    pub(crate) fn tiered(&self) -> Option<&TieredBackend> {
        match &self.typed {
            Typed::Tiered(tiered) => Some(tiered),
            _ => None,
        }
    }
}

fn leak(
    name: &str,
    backend: Arc<dyn Backend>,
    protection: Protection,
    scope: u64,
) -> &'static Registered {
    let typed = Typed::of(&backend);
    let mut guard = Guard::new(name, protection.clone());
    // A timed-out operation may sit on a connection gone silently dead: the built-in Redis
    // backends drop the caller's runtime's connection then (the next operation connects again).
    let any: Arc<dyn std::any::Any + Send + Sync> = Arc::clone(&backend) as _;
    if let Ok(redis) = any.downcast::<RedisBackend>() {
        guard = guard.on_timeout(move |started| redis.forget_connection_made_before(started));
    } else if let Typed::Tiered(tiered) = &typed {
        let tiered = Arc::clone(tiered);
        guard = guard.on_timeout(move |started| {
            tiered.remote().forget_connection_made_before(started);
        });
    }
    Box::leak(Box::new(Registered {
        scope,
        seal: protection.sealing().clone(),
        storage: protection.storage(),
        guard,
        name: name.to_owned(),
        typed,
        backend,
        invalidation: BackendInvalidation::default(),
    }))
}

/// Applies `change` to a copy of the table and publishes it (callers hold `WRITER`).
fn update(change: impl FnOnce(&mut Table)) {
    let mut table = Table::clone(&TABLE.load());
    change(&mut table);
    TABLE.store(Arc::new(table));
    VERSION.fetch_add(1, Ordering::AcqRel);
}

/// Removes the backend registered under `name` and returns it. A built-in name used again later is
/// created afresh from the environment.
pub fn unregister(name: &str) -> Option<Arc<dyn Backend>> {
    let _writer = WRITER.lock().unwrap_or_else(|p| p.into_inner());
    let removed = *TABLE.load().get(name)?;
    update(|table| {
        table.remove(name);
    });
    Some(Arc::clone(&removed.backend))
}

/// The backend registered under `name` (creating a built-in one if needed).
pub fn backend(name: &str) -> Option<Arc<dyn Backend>> {
    resolve(name).map(|r| Arc::clone(&r.backend))
}

/// The backend a call made here uses under `name`: the current [`Caches`] scope's, else the
/// process-wide one (creating a built-in one if needed).
pub(crate) fn resolve(name: &str) -> Option<&'static Registered> {
    if let Some(Some(scoped)) = scope::resolve(name) {
        return Some(scoped);
    }
    resolve_global(name)
}

/// The process-wide backend under `name`, whatever scope the caller is in.
pub(crate) fn resolve_global(name: &str) -> Option<&'static Registered> {
    if let Some(found) = TABLE.load().get(name) {
        return Some(*found);
    }
    let _writer = WRITER.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(found) = TABLE.load().get(name) {
        return Some(*found);
    }
    let entry = leak(name, built_in(name)?, Protection::default(), 0);
    update(|table| {
        table.insert(name.to_owned(), entry);
    });
    Some(entry)
}

/// [`resolve`] of `name`, cached in `slot` (a stats site's) until the registry changes: two atomic
/// loads on the hot path.
#[inline]
pub(crate) fn resolve_cached(
    slot: &AtomicPtr<Resolved>,
    name: &str,
) -> Option<&'static Registered> {
    if let Some(Some(scoped)) = scope::resolve(name) {
        return Some(scoped);
    }
    let version = VERSION.load(Ordering::Acquire);
    let cached = slot.load(Ordering::Acquire);
    // SAFETY: `resolved` only ever holds null or a pointer leaked below, never freed.
    if let Some(resolved) = unsafe { cached.as_ref() } {
        if resolved.version == version {
            return resolved.registered;
        }
    }
    resolve_into(slot, name, version)
}

/// The slow part of [`resolve_cached`]: resolves `name` and caches it in `slot` under `version`.
#[cold]
fn resolve_into(
    slot: &AtomicPtr<Resolved>,
    name: &str,
    version: u64,
) -> Option<&'static Registered> {
    // The process-wide backend only: a scoped one cached here would serve unscoped callers.
    let registered = resolve_global(name);
    let fresh = Box::leak(Box::new(Resolved {
        version,
        registered,
    }));
    slot.store(fresh, Ordering::Release);
    registered
}

fn built_in(name: &str) -> Option<Arc<dyn Backend>> {
    match name {
        "memory" => Some(Arc::new(MemoryBackend::from_env())),
        "file" => Some(Arc::new(FileBackend::from_env())),
        "redis" => match RedisBackend::from_env() {
            Ok(redis) => Some(Arc::new(redis)),
            Err(error) => {
                tracing::error!(%error, "REDIS_URL is not a valid Redis URL; \"redis\" calls run uncached");
                None
            }
        },
        "tiered" => match TieredBackend::from_env() {
            Ok(tiered) => Some(Arc::new(tiered)),
            Err(error) => {
                tracing::error!(%error, "REDIS_URL is not a valid Redis URL; \"tiered\" calls run uncached");
                None
            }
        },
        _ => None,
    }
}

/// Whether `entry` is still the backend registered under its name (process-wide or in a live
/// [`Caches`]).
pub(crate) fn is_registered(entry: &Registered) -> bool {
    TABLE
        .load()
        .get(&entry.name)
        .is_some_and(|current| std::ptr::eq(*current, entry))
        || scope::holds(entry)
}

/// Every registration of `name` an invalidation of one fn's entry made here reaches: the one a
/// call made here uses, the process-wide one (if it exists), and, outside every scope, those of
/// every live [`Caches`] scope.
pub(crate) fn all_named(name: &str) -> Vec<&'static Registered> {
    let mut all: Vec<&'static Registered> = resolve(name).into_iter().collect();
    all.extend(TABLE.load().get(name).copied());
    all.extend(
        scope::reachable()
            .into_iter()
            .filter(|entry| entry.name == name),
    );
    all.sort_by_key(|entry| std::ptr::from_ref(*entry) as usize);
    all.dedup_by_key(|entry| std::ptr::from_ref(*entry) as usize);
    all
}

/// Every backend an invalidation made here reaches: those registered process-wide, and those of
/// the current [`Caches`] scope (outside any scope: of every live one).
pub(crate) fn all() -> Vec<&'static Registered> {
    let mut all: Vec<_> = TABLE.load().values().copied().collect();
    all.extend(scope::reachable());
    all
}
