//! File backend: hit (64 hot keys) and miss (a fresh key per call: look up, compute, write a temp
//! file, rename it into place), for a `u64` and a ~1 KiB value. The folder is a fresh temp dir.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use common::{time_loop, Kib, HOT_KEYS};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};

const BACKEND: &str = "bench-file";

static NEXT_MISS: AtomicU64 = AtomicU64::new(1 << 40);

#[cache_runtime::cached(ttl = 600, backend = "bench-file")]
async fn file_u64(n: u64) -> u64 {
    n.wrapping_mul(3)
}

#[cache_runtime::cached(ttl = 600, backend = "bench-file")]
async fn file_kib(n: u64) -> Kib {
    Kib::new(n)
}

fn file_benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    cache_runtime::register(BACKEND, cache_runtime::FileBackend::new(dir.path()));
    let rt = common::runtime();
    rt.block_on(async {
        for n in 0..HOT_KEYS {
            file_u64(n).await;
            file_kib(n).await;
        }
    });
    let misses = || -> u64 { cache_runtime::stats().iter().map(|s| s.misses).sum() };
    let before = misses();
    rt.block_on(async {
        for n in 0..HOT_KEYS {
            assert_eq!(file_u64(n).await, n * 3);
            assert_eq!(file_kib(n).await, Kib::new(n));
        }
    });
    assert_eq!(misses(), before, "warm calls should all hit");
    let rt = &rt;

    let mut g = c.benchmark_group("file");
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::new("hit", "u64"), |b| {
        b.iter_custom(|iters| time_loop(rt, iters, |i| file_u64(i & (HOT_KEYS - 1))))
    });
    g.bench_function(BenchmarkId::new("hit", "1KiB"), |b| {
        b.iter_custom(|iters| time_loop(rt, iters, |i| file_kib(i & (HOT_KEYS - 1))))
    });
    g.bench_function(BenchmarkId::new("miss", "u64"), |b| {
        b.iter_custom(|iters| {
            time_loop(rt, iters, |_| {
                file_u64(NEXT_MISS.fetch_add(1, Ordering::Relaxed))
            })
        })
    });
    g.bench_function(BenchmarkId::new("miss", "1KiB"), |b| {
        b.iter_custom(|iters| {
            time_loop(rt, iters, |_| {
                file_kib(NEXT_MISS.fetch_add(1, Ordering::Relaxed))
            })
        })
    });
    g.finish();

    let errors: u64 = cache_runtime::stats()
        .iter()
        .map(|s| s.backend_errors + s.decode_failures)
        .sum();
    assert_eq!(errors, 0, "backend errors during the file benches");
    cache_runtime::unregister(BACKEND);
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = file_benches
}

fn main() {
    common::isolate_env();
    common::pin_to_one_cpu();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
