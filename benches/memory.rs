//! Memory hit: `#[cache_runtime::cached]` vs the `cached` crate's TTL macros vs a direct `moka` get,
//! for a `u64 -> u64` fn and a fn returning a ~1 KiB struct; in one thread, then with two threads
//! hammering the same 64 hot keys (throughput = total ops/s of both threads). The two-tier backend's
//! hit (its local tier, with Redis behind it: a private `redis-server`) is measured beside them.
//!
//! Every contender is driven the same way: an `async` loop of calls on a current-thread tokio runtime
//! (one per thread), so what differs is the cache, not the executor.

mod common;

use std::{hint::black_box, sync::LazyLock, time::Duration};

use common::{time_loop, time_threads, Kib, RedisServer, HOT_KEYS};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};

const TTL: Duration = Duration::from_secs(600);

// --- this project ---------------------------------------------------------------------------

/// Default key (`module::fn:<sha256 of the JSON args>`), the default backend ("memory").
#[cache_runtime::cached(ttl = 600)]
async fn rt_u64(n: u64) -> u64 {
    n.wrapping_mul(3)
}

/// Template key.
#[cache_runtime::cached(ttl = 600, key = "rt_u64_tpl:{n}")]
async fn rt_u64_tpl(n: u64) -> u64 {
    n.wrapping_mul(3)
}

#[cache_runtime::cached(ttl = 600)]
async fn rt_kib(n: u64) -> Kib {
    Kib::new(n)
}

/// The same fns on the two-tier backend (`TieredBackend`): hits are served by its local tier.
#[cache_runtime::cached(ttl = 600, backend = "bench-tiered")]
async fn rt_u64_tiered(n: u64) -> u64 {
    n.wrapping_mul(3)
}

#[cache_runtime::cached(ttl = 600, backend = "bench-tiered", key = "rt_u64_tiered_tpl:{n}")]
async fn rt_u64_tiered_tpl(n: u64) -> u64 {
    n.wrapping_mul(3)
}

#[cache_runtime::cached(ttl = 600, backend = "bench-tiered")]
async fn rt_kib_tiered(n: u64) -> Kib {
    Kib::new(n)
}

// --- the `cached` crate -----------------------------------------------------------------------

/// `#[cached(ttl_secs)]`: one `TtlCache` behind one async mutex.
#[cached::macros::cached(ttl_secs = 600)]
async fn cr_u64(n: u64) -> u64 {
    n.wrapping_mul(3)
}

#[cached::macros::cached(ttl_secs = 600)]
async fn cr_kib(n: u64) -> Kib {
    Kib::new(n)
}

/// `#[concurrent_cached(ttl_secs)]`: the sharded TTL store.
#[cached::macros::concurrent_cached(ttl_secs = 600)]
async fn crc_u64(n: u64) -> u64 {
    n.wrapping_mul(3)
}

#[cached::macros::concurrent_cached(ttl_secs = 600)]
async fn crc_kib(n: u64) -> Kib {
    Kib::new(n)
}

// --- moka, directly -------------------------------------------------------------------------

static MOKA_SYNC_U64: LazyLock<moka::sync::Cache<u64, u64>> = LazyLock::new(|| {
    moka::sync::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(TTL)
        .build()
});
static MOKA_SYNC_KIB: LazyLock<moka::sync::Cache<u64, Kib>> = LazyLock::new(|| {
    moka::sync::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(TTL)
        .build()
});
static MOKA_FUT_U64: LazyLock<moka::future::Cache<u64, u64>> = LazyLock::new(|| {
    moka::future::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(TTL)
        .build()
});
static MOKA_FUT_KIB: LazyLock<moka::future::Cache<u64, Kib>> = LazyLock::new(|| {
    moka::future::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(TTL)
        .build()
});

async fn moka_sync_u64(n: u64) -> u64 {
    MOKA_SYNC_U64.get(&n).expect("warmed")
}
async fn moka_sync_kib(n: u64) -> Kib {
    MOKA_SYNC_KIB.get(&n).expect("warmed")
}
async fn moka_fut_u64(n: u64) -> u64 {
    MOKA_FUT_U64.get(&n).await.expect("warmed")
}
async fn moka_fut_kib(n: u64) -> Kib {
    MOKA_FUT_KIB.get(&n).await.expect("warmed")
}

/// Registers the two-tier backend on a private `redis-server` (kept alive by the returned guard).
fn tiered_backend() -> (RedisServer, std::sync::Arc<cache_runtime::TieredBackend>) {
    let server = RedisServer::start();
    let remote = cache_runtime::RedisBackend::open(&server.url()).expect("valid url");
    let tiered = std::sync::Arc::new(cache_runtime::TieredBackend::new(
        remote,
        cache_runtime::MemoryBackend::default(),
    ));
    cache_runtime::register_arc("bench-tiered", tiered.clone());
    (server, tiered)
}

/// Fills the local tier with every hot key of the tiered fns (once its invalidation feed is up).
fn warm_tiered(rt: &tokio::runtime::Runtime, tiered: &cache_runtime::TieredBackend) {
    let started = std::time::Instant::now();
    rt.block_on(async {
        while tiered.local().entry_count() < 3 * HOT_KEYS {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the two-tier backend's local tier did not fill"
            );
            for n in 0..HOT_KEYS {
                rt_u64_tiered(n).await;
                rt_u64_tiered_tpl(n).await;
                rt_kib_tiered(n).await;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(rt_kib_tiered(5).await, Kib::new(5));
    });
}

fn warm(rt: &tokio::runtime::Runtime) {
    rt.block_on(async {
        for n in 0..HOT_KEYS {
            rt_u64(n).await;
            rt_u64_tpl(n).await;
            rt_kib(n).await;
            cr_u64(n).await;
            cr_kib(n).await;
            crc_u64(n).await;
            crc_kib(n).await;
            MOKA_SYNC_U64.insert(n, n.wrapping_mul(3));
            MOKA_SYNC_KIB.insert(n, Kib::new(n));
            MOKA_FUT_U64.insert(n, n.wrapping_mul(3)).await;
            MOKA_FUT_KIB.insert(n, Kib::new(n)).await;
        }
        // Sanity: hits return the computed value.
        assert_eq!(rt_u64(5).await, 15);
        assert_eq!(rt_kib(5).await, Kib::new(5));
        assert_eq!(cr_u64(5).await, 15);
        assert_eq!(moka_fut_u64(5).await, 15);
    });
    let hits: u64 = cache_runtime::stats().iter().map(|s| s.hits).sum();
    assert!(
        hits >= 2,
        "the project's memory fns did not hit after warming"
    );
}

/// Runs `$f(key)` as a benchmark named `$name` in `$group`, single-threaded and on the hot keys.
macro_rules! one_thread {
    ($group:expr, $rt:expr, $name:literal, $f:path) => {
        $group.bench_function(BenchmarkId::from_parameter($name), |b| {
            b.iter_custom(|iters| time_loop($rt, iters, |i| $f(i & (HOT_KEYS - 1))))
        });
    };
}

/// The same with two OS threads, each running a current-thread runtime.
macro_rules! two_threads {
    ($group:expr, $name:literal, $f:path) => {
        $group.bench_function(BenchmarkId::from_parameter($name), |b| {
            b.iter_custom(|iters| time_threads(2, iters, |i| $f(i & (HOT_KEYS - 1))))
        });
    };
}

fn memory_hit(c: &mut Criterion) {
    let (_redis, tiered) = tiered_backend();
    let rt = common::runtime();
    warm(&rt);
    warm_tiered(&rt, &tiered);
    let rt = &rt;

    let mut g = c.benchmark_group("memory_hit_u64");
    g.throughput(Throughput::Elements(1));
    one_thread!(g, rt, "cache_runtime default key", rt_u64);
    one_thread!(g, rt, "cache_runtime key template", rt_u64_tpl);
    one_thread!(g, rt, "cache_runtime tiered, default key", rt_u64_tiered);
    one_thread!(
        g,
        rt,
        "cache_runtime tiered, key template",
        rt_u64_tiered_tpl
    );
    one_thread!(g, rt, "cached #[cached(ttl_secs)]", cr_u64);
    one_thread!(g, rt, "cached #[concurrent_cached(ttl_secs)]", crc_u64);
    one_thread!(g, rt, "moka sync::Cache get", moka_sync_u64);
    one_thread!(g, rt, "moka future::Cache get", moka_fut_u64);
    g.finish();

    let mut g = c.benchmark_group("memory_hit_1KiB");
    g.throughput(Throughput::Elements(1));
    one_thread!(g, rt, "cache_runtime default key", rt_kib);
    one_thread!(g, rt, "cache_runtime tiered, default key", rt_kib_tiered);
    one_thread!(g, rt, "cached #[cached(ttl_secs)]", cr_kib);
    one_thread!(g, rt, "cached #[concurrent_cached(ttl_secs)]", crc_kib);
    one_thread!(g, rt, "moka sync::Cache get", moka_sync_kib);
    one_thread!(g, rt, "moka future::Cache get", moka_fut_kib);
    g.finish();

    let mut g = c.benchmark_group("memory_hit_u64_2threads");
    g.throughput(Throughput::Elements(1));
    two_threads!(g, "cache_runtime default key", rt_u64);
    two_threads!(g, "cache_runtime key template", rt_u64_tpl);
    two_threads!(g, "cache_runtime tiered, default key", rt_u64_tiered);
    two_threads!(g, "cached #[cached(ttl_secs)]", cr_u64);
    two_threads!(g, "cached #[concurrent_cached(ttl_secs)]", crc_u64);
    two_threads!(g, "moka sync::Cache get", moka_sync_u64);
    two_threads!(g, "moka future::Cache get", moka_fut_u64);
    g.finish();

    let mut g = c.benchmark_group("memory_hit_1KiB_2threads");
    g.throughput(Throughput::Elements(1));
    two_threads!(g, "cache_runtime default key", rt_kib);
    two_threads!(g, "cached #[cached(ttl_secs)]", cr_kib);
    two_threads!(g, "cached #[concurrent_cached(ttl_secs)]", crc_kib);
    two_threads!(g, "moka sync::Cache get", moka_sync_kib);
    two_threads!(g, "moka future::Cache get", moka_fut_kib);
    g.finish();

    black_box(cache_runtime::stats());
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = memory_hit
}

fn main() {
    common::isolate_env();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
