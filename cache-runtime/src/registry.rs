//! Backend names, resolved at run time, and invalidation across every backend.
//!
//! Built-in names need no set-up: `"memory"`, `"redis"` (`REDIS_URL`) and `"file"` (`CACHE_DIR`) are
//! created on first use. [`register`] adds a backend under any name or remaps a built-in one.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, LazyLock, Mutex,
    },
};

use arc_swap::ArcSwap;

use crate::{
    backend::{Backend, FileBackend, MemoryBackend, RedisBackend, TieredBackend},
    guard::{timeout_from_env, Guard},
    key::normalize_key,
    stats::Site,
    CacheError,
};

/// A backend with its name and its fail-open guard.
pub(crate) struct Registered {
    pub(crate) name: String,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) guard: Guard,
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
/// Counts invalidations in this process; see [`invalidation_epoch`].
static EPOCH: AtomicU64 = AtomicU64::new(0);
/// The most recent invalidations, to tell which computations they concern.
static RECENT: Mutex<VecDeque<(u64, Target)>> = Mutex::new(VecDeque::new());
/// How many recent invalidations are remembered; older computations are judged conservatively.
const RECENT_CAPACITY: usize = 4096;

/// What an invalidation was about.
enum Target {
    Key(String),
    Group(String),
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
    let name = name.into();
    let entry = leak(&name, backend);
    let _writer = WRITER.lock().unwrap_or_else(|p| p.into_inner());
    update(|table| {
        table.insert(name, entry);
    });
}

fn leak(name: &str, backend: Arc<dyn Backend>) -> &'static Registered {
    Box::leak(Box::new(Registered {
        guard: Guard::new(name, timeout_from_env()),
        name: name.to_owned(),
        backend,
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

pub(crate) fn resolve(name: &str) -> Option<&'static Registered> {
    if let Some(found) = TABLE.load().get(name) {
        return Some(*found);
    }
    let _writer = WRITER.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(found) = TABLE.load().get(name) {
        return Some(*found);
    }
    let entry = leak(name, built_in(name)?);
    update(|table| {
        table.insert(name.to_owned(), entry);
    });
    Some(entry)
}

/// [`resolve`] for a memoized function, cached in its site until the registry changes: two atomic
/// loads on the hot path.
pub(crate) fn resolve_for(site: &Site) -> Option<&'static Registered> {
    let version = VERSION.load(Ordering::Acquire);
    let cached = site.resolved.load(Ordering::Acquire);
    // SAFETY: `resolved` only ever holds null or a pointer leaked below, never freed.
    if let Some(resolved) = unsafe { cached.as_ref() } {
        if resolved.version == version {
            return resolved.registered;
        }
    }
    let registered = resolve(site.backend);
    let fresh = Box::leak(Box::new(Resolved {
        version,
        registered,
    }));
    site.resolved.store(fresh, Ordering::Release);
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

/// A number that changes whenever this process invalidates anything. A computation remembers the
/// epoch it started under; see [`invalidated_since`].
pub(crate) fn invalidation_epoch() -> u64 {
    EPOCH.load(Ordering::Acquire)
}

/// Whether an invalidation of `key` or of one of `groups` ran in this process after `epoch`. Such
/// a computation may have read the data the invalidation was about: its value is neither stored nor
/// shared with callers that start later. Costs one atomic load when nothing was invalidated.
pub(crate) fn invalidated_since(epoch: u64, key: &str, groups: &[String]) -> bool {
    if EPOCH.load(Ordering::Acquire) == epoch {
        return false;
    }
    let recent = RECENT.lock().unwrap_or_else(|p| p.into_inner());
    match recent.front() {
        // Forgotten invalidations may have concerned this key: assume they did.
        Some((oldest, _)) if *oldest > epoch + 1 => true,
        None => true,
        Some(_) => recent
            .iter()
            .filter(|(seq, _)| *seq > epoch)
            .any(|(_, target)| match target {
                Target::Key(k) => k == key,
                Target::Group(g) => groups.iter().any(|group| group == g),
            }),
    }
}

/// Stores hold this gate (shared) from their [`invalidated_since`] check to the end of the write;
/// an invalidation takes it (exclusively) to move the epoch. So a store that passed its check before
/// the invalidation finishes before the invalidation touches any backend, and its entry is removed;
/// a store that checks after it sees the invalidation and does not write.
pub(crate) static STORE_GATE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Moves the epoch and remembers what the invalidation is about, before any backend is touched.
async fn record_invalidation(target: Target) {
    let _exclusive = STORE_GATE.write().await;
    let mut recent = RECENT.lock().unwrap_or_else(|p| p.into_inner());
    let seq = EPOCH.fetch_add(1, Ordering::AcqRel) + 1;
    if recent.len() == RECENT_CAPACITY {
        recent.pop_front();
    }
    recent.push_back((seq, target));
}

fn every_backend() -> Vec<&'static Registered> {
    // Configured built-ins count even before first use, so an admin process reaches them.
    if std::env::var_os("REDIS_URL").is_some() {
        resolve("redis");
    }
    if std::env::var_os("CACHE_DIR").is_some() {
        resolve("file");
    }
    TABLE.load().values().copied().collect()
}

/// Removes the entry stored under `key` from every backend.
///
/// Reaches every backend registered in this process and the built-in ones that are configured
/// (`REDIS_URL` or `CACHE_DIR` set) or have been used. Every backend is tried; the first failure is
/// returned.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_runtime::CacheError> {
/// cache_runtime::invalidate_key("user:42").await?;
/// # Ok(()) }
/// ```
pub async fn invalidate_key(key: &str) -> Result<(), CacheError> {
    let key = normalize_key(key.to_owned());
    record_invalidation(Target::Key(key.clone())).await;
    let mut first_error = None;
    for entry in every_backend() {
        let result = entry.guard.run("delete", entry.backend.delete(&key)).await;
        record(&mut first_error, entry, result);
    }
    first_error.map_or(Ok(()), Err)
}

/// Makes every entry of `group` stale, in every backend, in O(1) per backend.
///
/// Reaches the same backends as [`invalidate_key`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_runtime::CacheError> {
/// cache_runtime::invalidate_group("users").await?;
/// # Ok(()) }
/// ```
pub async fn invalidate_group(group: &str) -> Result<(), CacheError> {
    record_invalidation(Target::Group(group.to_owned())).await;
    let mut first_error = None;
    for entry in every_backend() {
        let result = entry
            .guard
            .run("invalidate_group", entry.backend.invalidate_group(group))
            .await;
        record(&mut first_error, entry, result);
    }
    first_error.map_or(Ok(()), Err)
}

/// Runs the invalidations a mutation asked for; failures are logged, never returned (the mutation
/// itself succeeded).
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

/// Records an invalidation of `key` that a backend-specific path carries out itself (the layer's
/// removal of a URI after a mutation).
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) async fn note_key_invalidation(key: &str) {
    record_invalidation(Target::Key(key.to_owned())).await;
}

/// Removes one key from the backend named `backend` only (used by the generated `*_invalidate` fns).
pub(crate) async fn invalidate_key_in(backend: &str, key: String) -> Result<(), CacheError> {
    let key = normalize_key(key);
    record_invalidation(Target::Key(key.clone())).await;
    let entry = resolve(backend).ok_or_else(|| CacheError::UnknownBackend(backend.to_owned()))?;
    entry
        .guard
        .run("delete", entry.backend.delete(&key))
        .await
        .map_err(|source| CacheError::Backend {
            backend: entry.name.clone(),
            source,
        })
}

fn record(
    first_error: &mut Option<CacheError>,
    entry: &Registered,
    result: Result<(), crate::BackendError>,
) {
    if let Err(source) = result {
        tracing::warn!(backend = %entry.name, error = %source, "cache invalidation failed");
        first_error.get_or_insert(CacheError::Backend {
            backend: entry.name.clone(),
            source,
        });
    }
}
