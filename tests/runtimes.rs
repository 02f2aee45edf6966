//! Backends outlive the runtime that first used them: each step below builds a runtime by hand,
//! uses the cache, and drops the runtime, as a CLI with a runtime per command, `block_on` in sync
//! code, or a suite of `#[tokio::test]`s (one runtime each) run with `--test-threads=1` do.

mod support;

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use cache_runtime::{cached, MemoryBackend, RedisBackend, TieredBackend};
use support::{RedisCluster, RedisServer, Unregister};

/// Every test takes this lock while its backend is registered: the process-wide `invalidate_*`
/// functions reach every registered backend, so one test's stopped server must not fail another
/// test's invalidation.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A fresh runtime for one step, dropped (shut down) when the step returns.
fn in_new_runtime<T>(multi_thread: bool, step: impl std::future::Future<Output = T>) -> T {
    let runtime = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
    .expect("a tokio runtime");
    let out = runtime.block_on(step);
    drop(runtime);
    out
}

/// Five runtimes one after another: the value computed in the first is a hit in every later one,
/// and invalidations by key and by group made from a later runtime take effect.
fn survives_runtimes(
    name: &'static str,
    backend: impl cache_runtime::Backend,
    call: fn(u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = u64>>>,
    runs: &'static AtomicU64,
    n: u64,
    group: &'static str,
) {
    let _serial = serial();
    cache_runtime::register(name, backend);
    let _unregister = Unregister(name);
    let key = format!("v:{n}");
    let first = in_new_runtime(false, call(n));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    for round in 0..4 {
        let multi = round % 2 == 1;
        let again = in_new_runtime(multi, call(n));
        assert_eq!(
            again, first,
            "round {round}: a hit from a later runtime must return the stored value"
        );
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "round {round}: the body ran again: the backend did not answer from a new runtime"
        );
    }
    in_new_runtime(false, async {
        cache_runtime::invalidate_key(&key)
            .await
            .expect("invalidate_key from a later runtime")
    });
    let after_key = in_new_runtime(true, call(n));
    assert_ne!(after_key, first, "invalidated by key: recomputed");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    in_new_runtime(false, async {
        cache_runtime::invalidate_group(group)
            .await
            .expect("invalidate_group from a later runtime")
    });
    let after_group = in_new_runtime(false, call(n));
    assert_ne!(after_group, after_key, "invalidated by group: recomputed");
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert_eq!(in_new_runtime(true, call(n)), after_group);
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

static REDIS_RUNS: AtomicU64 = AtomicU64::new(0);

#[cached(
    ttl = 600,
    backend = "rt-redis",
    key = "v:{n}",
    group = "rt-redis-group"
)]
async fn redis_value(n: u64) -> u64 {
    REDIS_RUNS.fetch_add(1, Ordering::SeqCst) * 1000 + n
}

#[test]
fn redis_backend_works_from_runtime_after_runtime() {
    let server = RedisServer::start();
    survives_runtimes(
        "rt-redis",
        RedisBackend::open(&server.url()).expect("valid url"),
        |n| Box::pin(redis_value(n)),
        &REDIS_RUNS,
        11,
        "rt-redis-group",
    );
}

static CLUSTER_RUNS: AtomicU64 = AtomicU64::new(0);

#[cached(
    ttl = 600,
    backend = "rt-cluster",
    key = "v:{n}",
    group = "rt-cluster-group"
)]
async fn cluster_value(n: u64) -> u64 {
    CLUSTER_RUNS.fetch_add(1, Ordering::SeqCst) * 1000 + n
}

#[test]
fn cluster_backend_works_from_runtime_after_runtime() {
    let cluster = RedisCluster::start(3);
    let urls = cluster.urls();
    let nodes: Vec<&str> = urls.iter().map(String::as_str).collect();
    survives_runtimes(
        "rt-cluster",
        RedisBackend::cluster(&nodes).expect("cluster client"),
        |n| Box::pin(cluster_value(n)),
        &CLUSTER_RUNS,
        12,
        "rt-cluster-group",
    );
}

static MEMORY_RUNS: AtomicU64 = AtomicU64::new(0);

#[cached(
    ttl = 600,
    backend = "rt-memory",
    key = "v:{n}",
    group = "rt-memory-group"
)]
async fn memory_value(n: u64) -> u64 {
    MEMORY_RUNS.fetch_add(1, Ordering::SeqCst) * 1000 + n
}

#[test]
fn memory_backend_works_from_runtime_after_runtime() {
    survives_runtimes(
        "rt-memory",
        MemoryBackend::default(),
        |n| Box::pin(memory_value(n)),
        &MEMORY_RUNS,
        13,
        "rt-memory-group",
    );
}

static FILE_RUNS: AtomicU64 = AtomicU64::new(0);

#[cached(ttl = 600, backend = "rt-file", key = "v:{n}", group = "rt-file-group")]
async fn file_value(n: u64) -> u64 {
    FILE_RUNS.fetch_add(1, Ordering::SeqCst) * 1000 + n
}

#[test]
fn file_backend_works_from_runtime_after_runtime() {
    let dir = tempfile::tempdir().expect("temp dir");
    survives_runtimes(
        "rt-file",
        cache_runtime::FileBackend::new(dir.path()),
        |n| Box::pin(file_value(n)),
        &FILE_RUNS,
        14,
        "rt-file-group",
    );
}

static TIERED_RUNS: AtomicU64 = AtomicU64::new(0);

#[cached(
    ttl = 600,
    backend = "rt-tiered",
    key = "v:{n}",
    group = "rt-tiered-group"
)]
async fn tiered_value(n: u64) -> u64 {
    TIERED_RUNS.fetch_add(1, Ordering::SeqCst) * 1000 + n
}

#[test]
fn tiered_backend_works_from_runtime_after_runtime() {
    let server = RedisServer::start();
    let tiered = TieredBackend::new(
        RedisBackend::open(&server.url()).expect("valid url"),
        MemoryBackend::default(),
    );
    survives_runtimes(
        "rt-tiered",
        tiered,
        |n| Box::pin(tiered_value(n)),
        &TIERED_RUNS,
        15,
        "rt-tiered-group",
    );
}

static TIERED_REMOTE_RUNS: AtomicU64 = AtomicU64::new(0);

#[cached(
    ttl = 600,
    backend = "rt-tiered-remote",
    key = "v:{n}",
    group = "rt-tiered-remote-group"
)]
async fn tiered_remote_value(n: u64) -> u64 {
    TIERED_REMOTE_RUNS.fetch_add(1, Ordering::SeqCst) * 1000 + n
}

/// The tiered backend's subscriber outlives the runtime that started it: an invalidation made by
/// another client of the same Redis after that runtime is gone still empties the local tier.
#[test]
fn tiered_subscription_outlives_its_runtime() {
    let _serial = serial();
    let server = RedisServer::start();
    let tiered = std::sync::Arc::new(TieredBackend::new(
        RedisBackend::open(&server.url()).expect("valid url"),
        MemoryBackend::default(),
    ));
    cache_runtime::register_arc("rt-tiered-remote", tiered.clone());
    let _unregister = Unregister("rt-tiered-remote");
    let first = in_new_runtime(false, async {
        let value = tiered_remote_value(3).await;
        // The second call copies the value into the local tier (once the subscription is live).
        let deadline = Instant::now() + Duration::from_secs(5);
        while !tiered.is_subscribed() {
            assert!(Instant::now() < deadline, "tiered backend never subscribed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(tiered_remote_value(3).await, value);
        assert_eq!(tiered_remote_value(3).await, value);
        value
    });
    assert_eq!(TIERED_REMOTE_RUNS.load(Ordering::SeqCst), 1);
    // Another process invalidates the group: it moves the generation and announces it.
    server.cli(&["INCR", "cache:g:rt-tiered-remote-group"]);
    server.cli(&["PUBLISH", "cache:invalidations", "g:rt-tiered-remote-group"]);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let now = in_new_runtime(false, tiered_remote_value(3));
        if now != first {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the local tier kept serving a value another process invalidated: \
             its subscriber died with the runtime that started it"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
