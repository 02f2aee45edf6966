//! Group invalidation time for groups of 1,000, 100,000 and 1,000,000 entries, on Redis and in
//! memory. Only `cache_runtime::invalidate_group` is timed; it should not depend on the group size.
//!
//! Redis groups are filled with a pipeline, in the backend's own format: one real call stores an
//! entry, and its envelope header (times, type fingerprint, group generations) is reused for the
//! others with their own JSON payloads. Sample calls then check that those entries are hits, and after
//! the timing, that they are stale. Memory groups are filled by calling the memoized fn.

mod common;

use std::{
    hint::black_box,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use common::RedisServer;
use criterion::{criterion_group, BenchmarkId, Criterion};

const REDIS: &str = "bench-groups-redis";
const MEMORY: &str = "bench-groups-memory";
const PREFIX: &str = "bench:";
const SIZES: [u64; 3] = [1_000, 100_000, 1_000_000];
const TTL_MS: u64 = 3_600_000;

/// How many times a body ran (a hit does not run it).
static BODY_RUNS: AtomicU64 = AtomicU64::new(0);

#[cache_runtime::cached(
    ttl = "1h",
    backend = "bench-groups-redis",
    key = "ge:{group}:{i}",
    group = "{group}"
)]
async fn redis_entry(group: &str, i: u64) -> u64 {
    BODY_RUNS.fetch_add(1, Ordering::Relaxed);
    i.wrapping_mul(3)
}

#[cache_runtime::cached(
    ttl = "1h",
    backend = "bench-groups-memory",
    key = "me:{group}:{i}",
    group = "{group}"
)]
async fn memory_entry(group: &str, i: u64) -> u64 {
    BODY_RUNS.fetch_add(1, Ordering::Relaxed);
    i.wrapping_mul(3)
}

fn group_name(size: u64) -> String {
    format!("g{size}")
}

/// Indexes spread over a group, to check a sample of its entries.
fn sample(size: u64) -> impl Iterator<Item = u64> {
    (0..16).map(move |k| (k * 7919 * 1_000_003) % size)
}

/// Fills the Redis group of `size` entries and checks that a sample of them are hits.
fn fill_redis(rt: &tokio::runtime::Runtime, conn: &redis::aio::MultiplexedConnection, size: u64) {
    let group = group_name(size);
    let started = Instant::now();
    rt.block_on(async {
        let mut conn = conn.clone();
        // One real entry gives the exact envelope header of this fn and group.
        redis_entry(&group, 0).await;
        let real: Vec<u8> = redis::cmd("GET")
            .arg(format!("{PREFIX}k:{}", redis_entry_key(&group, 0)))
            .query_async(&mut conn)
            .await
            .expect("the real entry is stored");
        // Its envelope ends with the payload, `0` (JSON, uncompressed): what comes before is the
        // header (format, schema, times, type, generations) every entry of the group shares.
        assert_eq!(real.last(), Some(&b'0'), "payload of the real entry");
        let header = &real[..real.len() - 1];
        // Each key has a tombstone generation, recorded in its entries: the others get the one
        // recorded in the header (key 0's).
        let tombstone: String = redis::cmd("GET")
            .arg(format!("{PREFIX}t:{}", redis_entry_key(&group, 0)))
            .query_async(&mut conn)
            .await
            .expect("the real entry's tombstone generation");
        for chunk in (1..size).collect::<Vec<_>>().chunks(10_000) {
            let mut pipe = redis::pipe();
            for &i in chunk {
                let mut value = header.to_vec();
                value.extend_from_slice(i.wrapping_mul(3).to_string().as_bytes());
                pipe.cmd("SET")
                    .arg(format!("{PREFIX}k:{}", redis_entry_key(&group, i)))
                    .arg(value)
                    .arg("PX")
                    .arg(TTL_MS)
                    .ignore();
                pipe.cmd("SET")
                    .arg(format!("{PREFIX}t:{}", redis_entry_key(&group, i)))
                    .arg(&tombstone)
                    .arg("PX")
                    .arg(TTL_MS)
                    .ignore();
            }
            let () = pipe.query_async(&mut conn).await.expect("pipeline");
        }
        let runs = BODY_RUNS.load(Ordering::Relaxed);
        for i in sample(size) {
            assert_eq!(redis_entry(&group, i).await, i.wrapping_mul(3));
        }
        assert_eq!(
            BODY_RUNS.load(Ordering::Relaxed),
            runs,
            "entries written by the pipeline must be hits"
        );
    });
    eprintln!(
        "groups: redis group {group} filled with {size} entries in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn fill_memory(rt: &tokio::runtime::Runtime, size: u64) {
    let group = group_name(size);
    let started = Instant::now();
    rt.block_on(async {
        for i in 0..size {
            memory_entry(&group, i).await;
        }
        let runs = BODY_RUNS.load(Ordering::Relaxed);
        for i in sample(size) {
            assert_eq!(memory_entry(&group, i).await, i.wrapping_mul(3));
        }
        assert_eq!(
            BODY_RUNS.load(Ordering::Relaxed),
            runs,
            "filled entries hit"
        );
    });
    eprintln!(
        "groups: memory group {group} filled with {size} entries in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Invalidates the group once more (untimed: a `--exact` filter may have skipped its benchmark),
/// then checks that every sampled entry is stale.
fn assert_stale(rt: &tokio::runtime::Runtime, size: u64, redis: bool) {
    let group = group_name(size);
    rt.block_on(cache_runtime::invalidate_group(&group))
        .expect("invalidate_group");
    let runs = BODY_RUNS.load(Ordering::Relaxed);
    rt.block_on(async {
        for i in sample(size) {
            if redis {
                redis_entry(&group, i).await;
            } else {
                memory_entry(&group, i).await;
            }
        }
    });
    let distinct = sample(size)
        .collect::<std::collections::BTreeSet<_>>()
        .len() as u64;
    assert_eq!(
        BODY_RUNS.load(Ordering::Relaxed) - runs,
        distinct,
        "invalidated entries must run their body again"
    );
}

fn group_benches(c: &mut Criterion) {
    let rt = common::runtime();

    // Redis: only the Redis backend is registered while it is timed.
    let server = RedisServer::start();
    let backend = cache_runtime::RedisBackend::open(&server.url())
        .expect("valid url")
        .with_prefix(PREFIX);
    cache_runtime::register(REDIS, backend);
    let conn = rt.block_on(async {
        redis::Client::open(server.url())
            .expect("valid url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the private redis")
    });
    for size in SIZES {
        fill_redis(&rt, &conn, size);
    }
    let (keys, memory): (u64, String) = rt.block_on(async {
        let mut conn = conn.clone();
        let keys: u64 = redis::cmd("DBSIZE")
            .query_async(&mut conn)
            .await
            .expect("DBSIZE");
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await
            .expect("INFO");
        let used = info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory_human:"))
            .unwrap_or("?")
            .to_owned();
        (keys, used)
    });
    eprintln!("groups: redis holds {keys} keys, {memory}");
    assert!(keys >= SIZES.iter().sum::<u64>());

    let mut g = c.benchmark_group("invalidate_group");
    for size in SIZES {
        let group = group_name(size);
        g.bench_with_input(BenchmarkId::new("redis", size), &group, |b, group| {
            b.iter(|| {
                rt.block_on(cache_runtime::invalidate_group(black_box(group)))
                    .expect("invalidate_group")
            })
        });
    }
    for size in SIZES {
        assert_stale(&rt, size, true);
    }
    cache_runtime::unregister(REDIS);
    drop(conn);
    drop(server);

    // Memory: a backend big enough to hold every entry (the default holds 100,000).
    let memory = Arc::new(cache_runtime::MemoryBackend::with_limits(
        4_000_000,
        16 << 30,
    ));
    cache_runtime::register_arc(MEMORY, memory.clone());
    for size in SIZES {
        fill_memory(&rt, size);
    }
    memory.run_pending_tasks();
    eprintln!(
        "groups: memory backend holds {} entries",
        memory.entry_count()
    );
    assert!(memory.entry_count() >= SIZES.iter().sum::<u64>());
    for size in SIZES {
        let group = group_name(size);
        g.bench_with_input(BenchmarkId::new("memory", size), &group, |b, group| {
            b.iter(|| {
                rt.block_on(cache_runtime::invalidate_group(black_box(group)))
                    .expect("invalidate_group")
            })
        });
    }
    g.finish();
    for size in SIZES {
        assert_stale(&rt, size, false);
    }
    cache_runtime::unregister(MEMORY);
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = group_benches
}

fn main() {
    common::isolate_env();
    common::pin_to_one_cpu();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
