//! A flood of unique keys cannot grow the process past the memory backend's bound.
//!
//! Two figures are checked: the live heap (every byte allocated and not yet freed, counted by a
//! global allocator wrapper, so the figure does not depend on the allocator's arenas or on when it
//! returns pages) and the resident set size, which adds what the allocator keeps for reuse.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};

use cache_runtime::{cached, MemoryBackend};

/// The system allocator, counting live bytes.
struct LiveBytes;

static LIVE: AtomicI64 = AtomicI64::new(0);

unsafe impl GlobalAlloc for LiveBytes {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: LiveBytes = LiveBytes;

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

fn live_bytes() -> u64 {
    LIVE.load(Ordering::Relaxed).max(0) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_unique_keys_stay_within_the_configured_bound() {
    const MIB: u64 = 1024 * 1024;
    const BOUND: u64 = 32 * MIB;
    const CALLS: u64 = 1_000_000;
    let backend = std::sync::Arc::new(MemoryBackend::with_limits(1_000_000, BOUND));
    cache_runtime::register_arc("flood", backend.clone());

    // The live heap is measured from before the first entry; the resident set from after a warm-up
    // of the allocator and runtime (the first pages it touches are not the cache's doing).
    let live_before = live_bytes();
    for n in 0..10_000 {
        kilobyte(n).await;
    }
    backend.run_pending_tasks();
    let rss_before = resident_bytes();
    let calls: u64 = std::env::var("FLOOD_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CALLS);
    let (mut rss_peak, mut live_peak) = (rss_before, live_before);
    for n in 0..calls {
        assert_eq!(kilobyte(n).await.len(), 1024);
        if n % 10_000 == 0 {
            rss_peak = rss_peak.max(resident_bytes());
            live_peak = live_peak.max(live_bytes());
        }
    }
    backend.run_pending_tasks();
    rss_peak = rss_peak.max(resident_bytes());
    live_peak = live_peak.max(live_bytes());
    let live_growth = live_peak.saturating_sub(live_before);
    let rss_growth = rss_peak.saturating_sub(rss_before);
    println!(
        "{calls} calls of 1 KiB, bound {} MiB: {} entries weighing {} MiB; live heap {} -> peak {} MiB \
         (growth {} MiB); RSS {} -> peak {} MiB (growth {} MiB)",
        BOUND / MIB,
        backend.entry_count(),
        backend.weighted_size() / MIB,
        live_before / MIB,
        live_peak / MIB,
        live_growth / MIB,
        rss_before / MIB,
        rss_peak / MIB,
        rss_growth / MIB,
    );
    let end_live = live_bytes().saturating_sub(live_before);
    println!(
        "{} bytes per entry",
        end_live / backend.entry_count().max(1)
    );
    assert!(backend.weighted_size() <= BOUND);
    // Unbounded, the flood would hold well over 1 GiB. Bounded, the bytes the process really holds
    // stay within the bound plus a small overhead (the hash table's spare slots, allocator headers)...
    assert!(
        live_growth < BOUND + BOUND / 4,
        "live heap grew by {} MiB",
        live_growth / MIB
    );
    // ...and the resident set, which adds freed memory the allocator keeps in its per-thread
    // arenas, stays within a small multiple of it.
    assert!(
        rss_growth < BOUND * 3,
        "RSS grew by {} MiB",
        rss_growth / MIB
    );
}
