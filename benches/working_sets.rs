//! Memory hits over working sets of 64, 10,000 and 1,000,000 distinct warm keys, visited in a
//! scattered order (so that large sets also measure CPU cache misses), for every contender on the
//! same keys in the same run: `#[cache_runtime::cached]` (default key and template key),
//! `cached`'s `#[concurrent_cached]`, and a bare `quick_cache` get (the floor: the store the memory
//! backend is built on, with nothing around it).
//!
//! `cargo bench --bench working_sets`; BENCHMARKS.md records the figures.

mod common;

use std::{hint::black_box, sync::LazyLock, time::Duration};

use common::time_loop;
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};

/// The working sets measured.
const SETS: [u64; 3] = [64, 10_000, 1_000_000];
/// Keys warmed: the largest set.
const WARM: u64 = 1_000_000;

#[cache_runtime::cached(ttl = 3600)]
async fn rt_default(n: u64) -> u64 {
    n.wrapping_mul(3)
}

#[cache_runtime::cached(ttl = 3600, key = "ws:{n}")]
async fn rt_template(n: u64) -> u64 {
    n.wrapping_mul(3)
}

#[cached::macros::concurrent_cached(ttl_secs = 3600)]
async fn crc(n: u64) -> u64 {
    n.wrapping_mul(3)
}

static QUICK: LazyLock<quick_cache::sync::Cache<u64, u64>> =
    LazyLock::new(|| quick_cache::sync::Cache::new(WARM as usize * 2));

async fn quick(n: u64) -> u64 {
    QUICK.get(&n).expect("warmed")
}

/// The `i`-th key of a set of `size`: a fixed permutation of `0..size` that jumps around.
fn scattered(i: u64, size: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % size
}

/// Keys to warm: all of the largest set, or `WORKING_SETS_WARM` (for a profile of the small sets).
fn warm_keys() -> u64 {
    std::env::var("WORKING_SETS_WARM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(WARM)
}

fn warm(rt: &tokio::runtime::Runtime) {
    let warm = warm_keys();
    // Room for every key of every contender in the memory backend (the default bound is 100,000).
    cache_runtime::register(
        "memory",
        cache_runtime::MemoryBackend::with_limits(4 * WARM, 8 * 1024 * 1024 * 1024),
    );
    rt.block_on(async {
        for n in 0..warm {
            rt_default(n).await;
            rt_template(n).await;
            crc(n).await;
            QUICK.insert(n, n.wrapping_mul(3));
        }
    });
    let before: u64 = cache_runtime::stats().iter().map(|s| s.hits).sum();
    rt.block_on(async {
        for n in [0, warm / 2, warm - 1] {
            assert_eq!(rt_default(n).await, n.wrapping_mul(3));
            assert_eq!(rt_template(n).await, n.wrapping_mul(3));
        }
    });
    let after: u64 = cache_runtime::stats().iter().map(|s| s.hits).sum();
    assert_eq!(
        after - before,
        6,
        "every warmed key is a hit (none evicted)"
    );
}

fn working_sets(c: &mut Criterion) {
    let rt = common::runtime();
    warm(&rt);
    let rt = &rt;
    for size in SETS.into_iter().filter(|size| *size <= warm_keys()) {
        let mut g = c.benchmark_group(format!("memory_hit_u64_{size}_keys"));
        g.throughput(Throughput::Elements(1));
        macro_rules! contender {
            ($name:literal, $f:path) => {
                g.bench_function(BenchmarkId::from_parameter($name), |b| {
                    b.iter_custom(|iters| time_loop(rt, iters, |i| $f(scattered(i, size))))
                });
            };
        }
        contender!("cache_runtime default key", rt_default);
        contender!("cache_runtime key template", rt_template);
        contender!("cached #[concurrent_cached]", crc);
        contender!("quick_cache get (floor)", quick);
        g.finish();
    }
    black_box(cache_runtime::stats());
}

criterion_group! {
    name = benches;
    config = common::criterion().measurement_time(Duration::from_secs(2));
    targets = working_sets
}

/// `WORKING_SETS_CALLS=N WORKING_SETS_ONLY=<contender> WORKING_SETS_SET=<size>`: N plain calls of
/// one contender, timed, instead of criterion (for instruction counts under `valgrind`: the
/// difference between two counts of N calls, divided by their difference in N, is one hit).
fn plain_calls(calls: u64) {
    let rt = common::runtime();
    warm(&rt);
    let only = std::env::var("WORKING_SETS_ONLY").unwrap_or_default();
    let size: u64 = std::env::var("WORKING_SETS_SET")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    macro_rules! run {
        ($name:literal, $f:path) => {
            if $name == only {
                let took = time_loop(&rt, calls, |i| $f(scattered(i, size)));
                println!(
                    "{}: {:.1} ns per call",
                    $name,
                    took.as_nanos() as f64 / calls.max(1) as f64
                );
                return;
            }
        };
    }
    run!("default", rt_default);
    run!("template", rt_template);
    run!("concurrent_cached", crc);
    run!("quick_cache", quick);
    panic!("WORKING_SETS_ONLY: one of default, template, concurrent_cached, quick_cache");
}

fn main() {
    common::isolate_env();
    match std::env::var("WORKING_SETS_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(calls) => plain_calls(calls),
        None => benches(),
    }
}
