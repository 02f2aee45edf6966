//! A flood of unique keys cannot grow the process past the memory backend's bound.

use cache_runtime::{cached, MemoryBackend};

/// 1 KiB values.
#[cached(ttl = 600, backend = "flood")]
async fn kilobyte(n: u64) -> String {
    format!("{n:0>1024}")
}

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_unique_keys_stay_within_the_configured_bound() {
    const BOUND: u64 = 32 * 1024 * 1024;
    const CALLS: u64 = 1_000_000;
    let backend = std::sync::Arc::new(MemoryBackend::with_limits(1_000_000, BOUND));
    cache_runtime::register_arc("flood", backend.clone());

    // Warm up allocator and runtime, then measure from there.
    for n in 0..10_000 {
        kilobyte(n).await;
    }
    let before = resident_bytes();
    let mut peak = before;
    for n in 0..CALLS {
        assert_eq!(kilobyte(n).await.len(), 1024);
        if n % 50_000 == 0 {
            peak = peak.max(resident_bytes());
        }
    }
    backend.run_pending_tasks();
    peak = peak.max(resident_bytes());
    let growth = peak.saturating_sub(before);
    println!(
        "{CALLS} calls of 1 KiB: {} entries, {} MiB weighed, RSS {} MiB -> peak {} MiB (growth {} MiB, bound {} MiB)",
        backend.entry_count(),
        backend.weighted_size() >> 20,
        before >> 20,
        peak >> 20,
        growth >> 20,
        BOUND >> 20
    );
    assert!(backend.weighted_size() <= BOUND);
    // Unbounded, the flood would hold ~1 GiB; bounded, growth stays near the bound.
    assert!(growth < BOUND * 2, "RSS grew by {} MiB", growth >> 20);
}
