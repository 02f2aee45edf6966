//! Regressions found by the review of `ttl_from` and `Caches` (probes written against 18b8d22,
//! where each `probe_*` test failed): a re-registered backend keeping an invalidated value, name-
//! resolved invalidations not crossing scopes, a scoped backend cached for unscoped callers, and
//! what a dropped `Caches` keeps. `control_*` tests check the probes' mechanics.
//!
//! The tests of this file are serialized (`serial()`): the leak probes count allocations and the
//! resolve race needs the registry's version to stay put.

// Each test holds `serial()` for its whole run, across awaits: the tests run on threads of their
// own (one runtime each), and one of them is a sync test.
#![allow(clippy::await_holding_lock)]

mod support;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::{
        atomic::{AtomicIsize, AtomicU64, Ordering},
        Arc, Barrier, Mutex, MutexGuard,
    },
    time::Duration,
};

use cache_runtime::{
    cached, Cache, Caches, MemoryBackend, Protection, RedisBackend, TieredBackend,
};
use tokio::sync::{oneshot, Notify};

// ---------------------------------------------------------------------------------------------
// Allocation counting (for the leak probes).

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_bytes() -> isize {
    LIVE_BYTES.load(Ordering::SeqCst)
}

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------------------
// P1: the journal is per `Registered`; a backend re-registered under its name (same store, e.g.
// to change its `Protection`) while a computation runs: an invalidation marks only the new
// registration, so the old computation's value, computed before the invalidation, is stored
// into the shared store after it. Before this change one global journal stopped that store.

async fn reregistration_case(reregister: bool, name: &'static str) -> (u64, u64) {
    let shared = Arc::new(MemoryBackend::default());
    cache_runtime::register_arc(name, shared.clone());
    let cache: Cache<u64> =
        Cache::new(&format!("{name}-fn"), Duration::from_secs(600)).backend(name);
    let source = Arc::new(AtomicU64::new(1));
    let release = Arc::new(Notify::new());
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let task = tokio::spawn({
        let (cache, source, release) = (cache.clone(), source.clone(), release.clone());
        async move {
            cache
                .get_or_insert_with("probe-rereg:k", move || async move {
                    let read = source.load(Ordering::SeqCst); // reads the source: 1
                    let _ = started_tx.send(());
                    release.notified().await;
                    read
                })
                .await
        }
    });
    started_rx.await.unwrap();
    if reregister {
        // The same store, registered again (e.g. with a protection of its own).
        cache_runtime::register_arc_with(name, shared.clone(), Protection::default());
    }
    source.store(2, Ordering::SeqCst); // the write...
    cache_runtime::invalidate_key("probe-rereg:k")
        .await
        .unwrap(); // ...and its invalidation, Ok
    release.notify_one();
    let raced = task.await.unwrap();
    let after = cache
        .get_or_insert_with("probe-rereg:k", || async { source.load(Ordering::SeqCst) })
        .await;
    (raced, after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_invalidation_stops_an_older_computation_without_reregistration() {
    let _serial = serial();
    let (raced, after) = reregistration_case(false, "probe-rereg-control").await;
    assert_eq!(raced, 1);
    assert_eq!(
        after, 2,
        "control: the older computation's value was not stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reregistered_backend_stores_a_value_invalidated_meanwhile() {
    let _serial = serial();
    let (raced, after) = reregistration_case(true, "probe-rereg").await;
    assert_eq!(raced, 1);
    assert_eq!(
        after, 2,
        "BUG: invalidate_key returned Ok after the source changed to 2, yet every later call \
         gets 1: the computation that started before it, on the previous registration of the \
         same store, was stored after the invalidation (its marks are per registration)"
    );
}

// ---------------------------------------------------------------------------------------------
// P2 / P3: the generated `<fn>_invalidate` (and `Cache::invalidate`, and the invalidation that
// `_refresh` / `_prime` start with) resolve the backend *name* in the caller's scope and mark and
// delete only there. README: "one made outside every scope reaches every backend, scoped or not,
// so it is never lost to a scope" and "An invalidation made inside a scope reaches the scope's
// backends and the process-wide ones".

static P2_SOURCE: AtomicU64 = AtomicU64::new(1);

#[cached(ttl = 600, key = "probe-p2:{id}")]
async fn p2(id: u64) -> u64 {
    let _ = id; // in the key only
    P2_SOURCE.load(Ordering::SeqCst)
}

#[tokio::test]
async fn probe_fn_invalidate_outside_every_scope_reaches_scoped_entries() {
    let _serial = serial();
    let caches = Caches::new();
    assert_eq!(caches.scope(p2(1)).await, 1);
    P2_SOURCE.store(2, Ordering::SeqCst);
    p2_invalidate(1).await.unwrap(); // outside every scope (e.g. the app's own spawned task)
    assert_eq!(
        caches.scope(p2(1)).await,
        2,
        "BUG: p2_invalidate(1), made outside every scope, returned Ok but the scope still \
         serves the value it invalidated (cache_runtime::invalidate_key(&p2_key(1)) reaches it)"
    );
}

static P3_SOURCE: AtomicU64 = AtomicU64::new(1);

#[cached(ttl = 600, key = "probe-p3:{id}")]
async fn p3(id: u64) -> u64 {
    let _ = id; // in the key only
    P3_SOURCE.load(Ordering::SeqCst)
}

#[tokio::test]
async fn probe_fn_invalidate_inside_a_scope_reaches_process_wide_entries() {
    let _serial = serial();
    // A server task started with tokio::spawn runs outside the scope (README Limits): it caches
    // in the process-wide "memory".
    assert_eq!(tokio::spawn(p3(1)).await.unwrap(), 1);
    P3_SOURCE.store(2, Ordering::SeqCst);
    let caches = Caches::new();
    caches.scope(p3_invalidate(1)).await.unwrap(); // the test, in its scope, invalidates
    assert_eq!(
        tokio::spawn(p3(1)).await.unwrap(),
        2,
        "BUG: p3_invalidate(1) inside a scope returned Ok but the process-wide entry it names is \
         still served (cache_runtime::invalidate_key inside the scope reaches it)"
    );
}

static P2B_SOURCE: AtomicU64 = AtomicU64::new(1);

#[tokio::test]
async fn probe_cache_handle_invalidate_outside_every_scope_reaches_scoped_entries() {
    let _serial = serial();
    let cache: Cache<u64> = Cache::new("probe-p2b", Duration::from_secs(600));
    let caches = Caches::new();
    let load = || {
        cache.get_or_insert_with("probe-p2b:k", || async {
            P2B_SOURCE.load(Ordering::SeqCst)
        })
    };
    assert_eq!(caches.scope(load()).await, 1);
    P2B_SOURCE.store(2, Ordering::SeqCst);
    cache.invalidate("probe-p2b:k").await.unwrap(); // outside every scope
    assert_eq!(
        caches.scope(load()).await,
        2,
        "BUG: Cache::invalidate outside every scope returned Ok; the scope still serves the old value"
    );
}

// ---------------------------------------------------------------------------------------------
// P4: what a dropped `Caches` keeps. Its registrations stay allocated (calls hold `&'static`
// references to them), but the in-process stores among them are emptied: a few KiB per `Caches`,
// never what they held.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_memory_retained_per_dropped_caches_is_bounded() {
    let _serial = serial();
    const ROUNDS: isize = 40;
    const VALUE: usize = 64 * 1024;
    let cache: Cache<Vec<u8>> =
        Cache::new("probe-leak-bytes", Duration::from_secs(600)).backend("probe-leak-bytes");
    let round = |i: isize| {
        let cache = cache.clone();
        async move {
            let caches = Caches::new();
            caches.register("probe-leak-bytes", MemoryBackend::default()); // this test's backend
            caches
                .scope(cache.get_or_insert_with(&format!("k{i}"), || async { vec![1u8; VALUE] }))
                .await;
        }
    };
    round(-1).await; // warm-up: lazies, interned names
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = live_bytes();
    for i in 0..ROUNDS {
        round(i).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let per_round = (live_bytes() - before) / ROUNDS;
    eprintln!("retained per dropped Caches with one registered backend and one 64 KiB entry: {per_round} bytes");
    assert!(
        per_round < 16 * 1024,
        "every dropped Caches keeps {per_round} bytes alive: its registered store still holds its \
         64 KiB entry"
    );
}

static OWN_RUNS: AtomicU64 = AtomicU64::new(0);

#[cached(ttl = 600, key = "probe-own:{id}")]
async fn own(id: u64) -> u64 {
    let _ = id; // in the key only
    OWN_RUNS.fetch_add(1, Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_memory_retained_per_dropped_caches_own_memory_only() {
    let _serial = serial();
    const ROUNDS: isize = 100;
    Caches::new().scope(own(0)).await; // warm-up
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = live_bytes();
    for i in 0..ROUNDS {
        let caches = Caches::new();
        caches.scope(own(i as u64)).await; // makes the scope's own "memory"
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_round = (live_bytes() - before) / ROUNDS;
    eprintln!("retained per dropped Caches (own memory only, emptied): {per_round} bytes");
    assert!(
        per_round < 8 * 1024,
        "each dropped Caches that used its own \"memory\" keeps {per_round} bytes for the rest of \
         the process (README: 'a few hundred bytes')"
    );
}

// ---------------------------------------------------------------------------------------------
// P5: `resolve_cached` asks the scope, then (slot stale) calls `resolve`, which asks the scope
// again and caches whatever it got in the *site's process-wide slot*. A `caches.register(name)`
// landing between the two questions caches the scoped backend for every caller: unscoped ones
// then read and write the scope's backend.

#[test]
fn probe_resolve_cached_never_hands_a_scoped_backend_to_an_unscoped_caller() {
    let _serial = serial();
    cache_runtime::register("probe-race", MemoryBackend::default());
    let main = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    const ATTEMPTS: usize = 10_000;
    for attempt in 0..ATTEMPTS {
        let caches = Caches::new();
        // A fresh site per attempt: its slot is empty, so its first lookup takes the slow path.
        let cache: Cache<u64> =
            Cache::new(&format!("probe-race-{attempt}"), Duration::from_secs(600))
                .backend("probe-race");
        let barrier = Arc::new(Barrier::new(2));
        let caller = std::thread::spawn({
            let (caches, cache, barrier) = (caches.clone(), cache.clone(), barrier.clone());
            move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                barrier.wait();
                rt.block_on(caches.scope(cache.get_or_insert_with("k", || async { 1 })))
            }
        });
        barrier.wait();
        for _ in 0..fastrand_spin(attempt) {
            std::hint::spin_loop();
        }
        caches.register("probe-race", MemoryBackend::default());
        caller.join().unwrap();
        // Unscoped: must use the process-wide "probe-race".
        main.block_on(cache.get_or_insert_with("k2", || async { 7 }));
        let in_scope = main.block_on(caches.scope(cache.get("k2")));
        assert_eq!(
            in_scope, None,
            "BUG (attempt {attempt}): an unscoped call stored into the scope's backend: the site's \
             cached resolution holds the scoped backend"
        );
    }
}

fn fastrand_spin(attempt: usize) -> usize {
    // A spread of delays across the caller's path to its first lookup.
    (attempt * 7919) % 300
}

// ---------------------------------------------------------------------------------------------
// T1 (expected to pass): ttl_from on a tiered backend: the local-tier copy of a Redis hit lives
// no longer than the value's own TTL.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_ttl_from_bounds_the_tiered_local_copy() {
    let _serial = serial();
    let server = support::RedisServer::start();
    let tiered = Arc::new(TieredBackend::new(
        RedisBackend::open(&server.url()).unwrap(),
        MemoryBackend::with_limits(1000, 8 << 20),
    ));
    cache_runtime::register_arc("probe-tiered", tiered.clone());
    let _unregister = support::Unregister("probe-tiered");
    let cache: Cache<u64> = Cache::new("probe-tiered-fn", Duration::from_secs(600))
        .backend("probe-tiered")
        .ttl_from(|_| Duration::from_millis(800));
    let _ = cache.get("warm").await; // starts the subscriber
    for _ in 0..200 {
        if tiered.is_subscribed() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(tiered.is_subscribed());
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let load = || cache.get_or_insert_with("t", || async { RUNS.fetch_add(1, Ordering::SeqCst) });
    assert_eq!(load().await, 0);
    assert_eq!(load().await, 0, "a hit (Redis, copied locally)");
    assert_eq!(load().await, 0, "a local hit");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        load().await,
        1,
        "the local copy expired with the value's own TTL"
    );
}
