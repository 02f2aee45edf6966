//! Shared by the benches: a private `redis-server`, value types, criterion settings, and drivers.
#![allow(dead_code)]

use std::{
    future::Future,
    process::{Command, Stdio},
    sync::Barrier,
    time::{Duration, Instant},
};

use criterion::Criterion;
use serde::{Deserialize, Serialize};

/// Hot keys every hit benchmark cycles over (a power of two).
pub const HOT_KEYS: u64 = 64;

/// A value of about 1 KiB: a number and 1,016 bytes of text. Its clone is one 1,016-byte
/// allocation and copy; its JSON form is about 1 KiB.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kib {
    pub id: u64,
    pub body: String,
}

impl Kib {
    pub fn new(id: u64) -> Self {
        let letter = char::from(b'a' + (id % 26) as u8);
        Self {
            id,
            body: std::iter::repeat_n(letter, 1016).collect(),
        }
    }
}

/// Short, lean criterion settings: the whole `cargo bench` fits in a few minutes on 2 cores.
pub fn criterion() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args()
}

/// Benches must never reach a shared Redis or cache folder: `invalidate_group` and `invalidate_key`
/// reach the built-in `"redis"` / `"file"` backends when these are set.
pub fn isolate_env() {
    for name in ["REDIS_URL", "CACHE_DIR", "CACHE_REDIS_PREFIX"] {
        if std::env::var_os(name).is_some() {
            eprintln!("bench: ignoring {name} (benchmarks use their own servers and folders)");
            std::env::remove_var(name);
        }
    }
}

/// Pins this whole process (every thread, and the processes it starts later) to one CPU, with
/// `taskset`: CPU `BENCH_PIN_CPU` (default 0; `none` disables). Used by the benches that talk to
/// another process (Redis, blocking file I/O): on this 2-vCPU VM, unpinned request/response
/// round trips are bimodal (about 22 µs or 80 µs, depending on whether the peer's vCPU was idle),
/// which hides any difference between contenders. Pinned, they are stable.
pub fn pin_to_one_cpu() {
    let cpu = std::env::var("BENCH_PIN_CPU").unwrap_or_else(|_| "0".into());
    if cpu == "none" {
        return;
    }
    let pid = std::process::id().to_string();
    match Command::new("taskset")
        .args(["-a", "-c", "-p", &cpu, &pid])
        .stdout(Stdio::null())
        .status()
    {
        Ok(status) if status.success() => eprintln!("bench: pinned to CPU {cpu} (BENCH_PIN_CPU)"),
        _ => eprintln!("bench: could not pin to CPU {cpu} with taskset; figures may be bimodal"),
    }
}

/// A current-thread tokio runtime (timers and I/O on).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs `iters` calls of `op(i)` in one async loop on a current-thread runtime and returns the time.
pub fn time_loop<F, Fut>(rt: &tokio::runtime::Runtime, iters: u64, mut op: F) -> Duration
where
    F: FnMut(u64) -> Fut,
    Fut: Future,
{
    rt.block_on(async {
        let started = Instant::now();
        for i in 0..iters {
            std::hint::black_box(op(std::hint::black_box(i)).await);
        }
        started.elapsed()
    })
}

/// `threads` OS threads, each with its own current-thread runtime, run `iters / threads` calls of
/// `op(i)` each, all released at once; returns the wall time until the last one finished (so
/// criterion's per-iteration time is wall time per operation, and its throughput is total ops/s).
pub fn time_threads<F, Fut>(threads: u64, iters: u64, op: F) -> Duration
where
    F: Fn(u64) -> Fut + Sync,
    Fut: Future,
{
    let per_thread = iters.div_ceil(threads);
    let start = Barrier::new(threads as usize + 1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (op, start) = (&op, &start);
                scope.spawn(move || {
                    let rt = runtime();
                    rt.block_on(async {
                        start.wait();
                        // Thread t starts elsewhere in the hot set, then both cycle over all of it.
                        let offset = t * (HOT_KEYS / threads.max(1));
                        for i in 0..per_thread {
                            std::hint::black_box(op(std::hint::black_box(i + offset)).await);
                        }
                    });
                })
            })
            .collect();
        start.wait();
        let started = Instant::now();
        for handle in handles {
            handle.join().expect("bench thread");
        }
        started.elapsed()
    })
}

/// The tests' private `redis-server` (free port, no persistence, killed on drop).
#[path = "../../tests/support/mod.rs"]
mod support;
#[allow(unused_imports)] // not every bench talks to Redis
pub use support::RedisServer;
