//! Redis hit and miss: `#[cache_runtime::cached(backend = "bench-redis")]` (a `RedisBackend`
//! registered under that name) vs a raw `GET` of the same entry on a `redis` multiplexed connection
//! vs the `cached` crate's `AsyncRedisCache` (through `#[concurrent_cached]`).
//!
//! The benchmark starts its own `redis-server` on a free port (no persistence) and kills it at the
//! end; it never touches another Redis. One current-thread tokio runtime drives every contender.

mod common;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        OnceLock,
    },
    time::Duration,
};

use common::{time_loop, Kib, RedisServer, HOT_KEYS};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use redis::AsyncCommands;

const BACKEND: &str = "bench-redis";
const PREFIX: &str = "bench:";

/// The private server's URL, for the `cached` crate's stores (they read it in their `create` block).
static URL: OnceLock<String> = OnceLock::new();
/// A fresh argument for every miss, across samples.
static NEXT_MISS: AtomicU64 = AtomicU64::new(1 << 40);

fn url() -> &'static str {
    URL.get().expect("redis started")
}

// --- this project ---------------------------------------------------------------------------

#[cache_runtime::cached(ttl = 600, backend = "bench-redis")]
async fn rt_u64(n: u64) -> u64 {
    n.wrapping_mul(3)
}

#[cache_runtime::cached(ttl = 600, backend = "bench-redis")]
async fn rt_kib(n: u64) -> Kib {
    Kib::new(n)
}

/// With a group: the lookup is one `MGET` of the entry and the group's generation.
#[cache_runtime::cached(ttl = 600, backend = "bench-redis", group = "bench")]
async fn rt_u64_grouped(n: u64) -> u64 {
    n.wrapping_mul(3)
}

#[cache_runtime::cached(ttl = 600, backend = "bench-redis")]
async fn rt_miss(n: u64) -> u64 {
    n.wrapping_mul(3)
}

// --- the `cached` crate's AsyncRedisCache -----------------------------------------------------

#[cached::macros::concurrent_cached(
    map_error = r##"|e| format!("{e:?}")"##,
    ty = "cached::AsyncRedisCache<u64, u64>",
    create = r##"{
        cached::AsyncRedisCache::builder("cr_u64")
            .ttl(Duration::from_secs(600))
            .connection_string(url())
            .build()
            .await
            .expect("cached's redis store")
    }"##
)]
async fn cr_u64(n: u64) -> Result<u64, String> {
    Ok(n.wrapping_mul(3))
}

#[cached::macros::concurrent_cached(
    map_error = r##"|e| format!("{e:?}")"##,
    ty = "cached::AsyncRedisCache<u64, Kib>",
    create = r##"{
        cached::AsyncRedisCache::builder("cr_kib")
            .ttl(Duration::from_secs(600))
            .connection_string(url())
            .build()
            .await
            .expect("cached's redis store")
    }"##
)]
async fn cr_kib(n: u64) -> Result<Kib, String> {
    Ok(Kib::new(n))
}

#[cached::macros::concurrent_cached(
    map_error = r##"|e| format!("{e:?}")"##,
    ty = "cached::AsyncRedisCache<u64, u64>",
    create = r##"{
        cached::AsyncRedisCache::builder("cr_miss")
            .ttl(Duration::from_secs(600))
            .connection_string(url())
            .build()
            .await
            .expect("cached's redis store")
    }"##
)]
async fn cr_miss(n: u64) -> Result<u64, String> {
    Ok(n.wrapping_mul(3))
}

/// Where the project's Redis backend stores the entry of `key`.
fn entry_key(key: &str) -> String {
    format!("{PREFIX}k:{key}")
}

fn redis_benches(c: &mut Criterion) {
    let server = RedisServer::start();
    URL.set(server.url()).expect("set once");
    let backend = cache_runtime::RedisBackend::open(url())
        .expect("valid url")
        .with_prefix(PREFIX);
    cache_runtime::register(BACKEND, backend);

    let rt = common::runtime();
    let conn = rt.block_on(async {
        let client = redis::Client::open(url()).expect("valid url");
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the private redis");
        for n in 0..HOT_KEYS {
            rt_u64(n).await;
            rt_kib(n).await;
            rt_u64_grouped(n).await;
            cr_u64(n).await.expect("cached's store");
            cr_kib(n).await.expect("cached's store");
        }
        conn
    });
    // The raw contender reads exactly the entries the project stored.
    let u64_keys: Vec<String> = (0..HOT_KEYS).map(|n| entry_key(&rt_u64_key(n))).collect();
    let kib_keys: Vec<String> = (0..HOT_KEYS).map(|n| entry_key(&rt_kib_key(n))).collect();
    let grouped_keys: Vec<String> = (0..HOT_KEYS)
        .map(|n| entry_key(&rt_u64_grouped_key(n)))
        .collect();
    let group_key = format!("{PREFIX}g:bench");
    rt.block_on(async {
        let mut conn = conn.clone();
        let stored: Option<Vec<u8>> = conn.get(&u64_keys[3]).await.expect("GET");
        assert!(
            stored.is_some(),
            "the project's entry is not where expected"
        );
    });
    let misses_before = total_misses();
    rt.block_on(async {
        for n in 0..HOT_KEYS {
            assert_eq!(rt_u64(n).await, n * 3);
        }
    });
    assert_eq!(total_misses(), misses_before, "warm calls should all hit");
    let rt = &rt;

    let mut g = c.benchmark_group("redis_hit_u64");
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::from_parameter("cache_runtime"), |b| {
        b.iter_custom(|iters| time_loop(rt, iters, |i| rt_u64(i & (HOT_KEYS - 1))))
    });
    g.bench_function(BenchmarkId::from_parameter("raw GET (redis crate)"), |b| {
        b.iter_custom(|iters| {
            let keys = &u64_keys;
            let conn = &conn;
            time_loop(rt, iters, |i| async move {
                let mut conn = conn.clone();
                let v: Option<Vec<u8>> = conn
                    .get(&keys[(i & (HOT_KEYS - 1)) as usize])
                    .await
                    .expect("GET");
                v
            })
        })
    });
    g.bench_function(BenchmarkId::from_parameter("cached AsyncRedisCache"), |b| {
        b.iter_custom(|iters| time_loop(rt, iters, |i| cr_u64(i & (HOT_KEYS - 1))))
    });
    g.bench_function(
        BenchmarkId::from_parameter("cache_runtime with group (MGET)"),
        |b| b.iter_custom(|iters| time_loop(rt, iters, |i| rt_u64_grouped(i & (HOT_KEYS - 1)))),
    );
    g.bench_function(
        BenchmarkId::from_parameter("raw MGET entry + group (redis crate)"),
        |b| {
            b.iter_custom(|iters| {
                let (keys, group_key, conn) = (&grouped_keys, &group_key, &conn);
                time_loop(rt, iters, |i| async move {
                    let mut conn = conn.clone();
                    let v: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                        .arg(&keys[(i & (HOT_KEYS - 1)) as usize])
                        .arg(group_key)
                        .query_async(&mut conn)
                        .await
                        .expect("MGET");
                    v
                })
            })
        },
    );
    g.finish();

    let mut g = c.benchmark_group("redis_hit_1KiB");
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::from_parameter("cache_runtime"), |b| {
        b.iter_custom(|iters| time_loop(rt, iters, |i| rt_kib(i & (HOT_KEYS - 1))))
    });
    g.bench_function(BenchmarkId::from_parameter("raw GET (redis crate)"), |b| {
        b.iter_custom(|iters| {
            let (keys, conn) = (&kib_keys, &conn);
            time_loop(rt, iters, |i| async move {
                let mut conn = conn.clone();
                let v: Option<Vec<u8>> = conn
                    .get(&keys[(i & (HOT_KEYS - 1)) as usize])
                    .await
                    .expect("GET");
                v
            })
        })
    });
    g.bench_function(BenchmarkId::from_parameter("cached AsyncRedisCache"), |b| {
        b.iter_custom(|iters| time_loop(rt, iters, |i| cr_kib(i & (HOT_KEYS - 1))))
    });
    g.finish();

    // Miss: every call has a fresh argument, so it looks up, computes and stores.
    let mut g = c.benchmark_group("redis_miss_u64");
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::from_parameter("cache_runtime"), |b| {
        b.iter_custom(|iters| {
            time_loop(rt, iters, |_| {
                rt_miss(NEXT_MISS.fetch_add(1, Ordering::Relaxed))
            })
        })
    });
    g.bench_function(
        BenchmarkId::from_parameter("raw GET + SET PX (redis crate)"),
        |b| {
            b.iter_custom(|iters| {
                let conn = &conn;
                time_loop(rt, iters, |_| async move {
                    let n = NEXT_MISS.fetch_add(1, Ordering::Relaxed);
                    let key = format!("{PREFIX}raw:{n}");
                    let mut conn = conn.clone();
                    let found: Option<Vec<u8>> = conn.get(&key).await.expect("GET");
                    assert!(found.is_none());
                    let value = n.wrapping_mul(3);
                    let _: () = redis::cmd("SET")
                        .arg(&key)
                        .arg(value.to_string())
                        .arg("PX")
                        .arg(600_000)
                        .query_async(&mut conn)
                        .await
                        .expect("SET");
                    value
                })
            })
        },
    );
    g.bench_function(BenchmarkId::from_parameter("cached AsyncRedisCache"), |b| {
        b.iter_custom(|iters| {
            time_loop(rt, iters, |_| {
                cr_miss(NEXT_MISS.fetch_add(1, Ordering::Relaxed))
            })
        })
    });
    g.finish();

    let errors: u64 = cache_runtime::stats()
        .iter()
        .map(|s| s.backend_errors + s.decode_failures)
        .sum();
    assert_eq!(errors, 0, "backend errors during the Redis benches");
    cache_runtime::unregister(BACKEND);
    drop(server);
}

fn total_misses() -> u64 {
    cache_runtime::stats().iter().map(|s| s.misses).sum()
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = redis_benches
}

fn main() {
    common::isolate_env();
    common::pin_to_one_cpu();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
