//! Allocation check of the memory hit path, with a counting global allocator.
//!
//! Claim under test: a memory hit allocates no more than the clone of the value itself (0 for a
//! `u64`, 1 for a `String`, a `Vec` or the ~1 KiB struct). Prints allocations and bytes per hit for
//! this project's `#[cached]` and, for reference, for the `cached` crate and a direct `moka` get,
//! then fails (exit code 1) when a `cache_runtime` hit allocates more than its value's clone.
//!
//! `ALLOC_HIT_BACKTRACE=1` also prints the call stack of every allocation made by one hit of each
//! failing case (build with `CARGO_PROFILE_BENCH_DEBUG=line-tables-only` to see inlined frames).
//! `ALLOC_HIT_REPORT_ONLY=1` prints without failing.

mod common;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    future::Future,
    pin::pin,
    sync::{LazyLock, Mutex},
    task::{Context, Poll, Waker},
    time::Duration,
};

use common::Kib;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static TRACING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static BYTES: Cell<u64> = const { Cell::new(0) };
}

/// Call stacks of the allocations seen while tracing.
static TRACES: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn record(size: usize) {
    let counting = COUNTING.try_with(Cell::get).unwrap_or(false);
    if !counting {
        return;
    }
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
    let _ = BYTES.try_with(|c| c.set(c.get() + size as u64));
    if TRACING.try_with(Cell::get).unwrap_or(false) {
        // Capturing and printing a backtrace allocates: count none of that, trace none of that.
        COUNTING.with(|c| c.set(false));
        let trace = std::backtrace::Backtrace::force_capture().to_string();
        TRACES
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("{size} bytes at\n{}", relevant_frames(&trace)));
        COUNTING.with(|c| c.set(true));
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged; counting only reads and writes
// thread-local cells.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: forwarded with the caller's pointer, layout and size.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The frames worth reading: this project's and serde's, up to the benchmark's own code (standard
/// library internals and the counting allocator are left out).
fn relevant_frames(trace: &str) -> String {
    let mut frames: Vec<(String, String)> = Vec::new();
    let mut lines = trace.lines().peekable();
    while let Some(line) = lines.next() {
        let Some((index, name)) = line.trim().split_once(": ") else {
            continue;
        };
        if index.parse::<u32>().is_err() {
            continue;
        }
        let location = match lines.peek() {
            Some(next) if next.trim().starts_with("at ") => next.trim()[3..].to_owned(),
            _ => String::new(),
        };
        frames.push((name.to_owned(), location));
    }
    let mut out = String::new();
    for (name, location) in frames {
        let in_std = location.starts_with("/rustc/")
            || [
                "alloc::", "<alloc::", "core::", "<core::", "std::", "__rust",
            ]
            .iter()
            .any(|p| name.starts_with(p));
        let allocator = (location.contains("alloc_hit.rs") || name.starts_with("alloc_hit::"))
            && ["record", "alloc", "realloc", "alloc_zeroed"]
                .iter()
                .any(|f| name == *f || name.ends_with(&format!("::{f}")));
        if in_std || allocator || name.contains("Counting") {
            continue;
        }
        let location = location
            .rsplit_once("/src/")
            .map_or(location.as_str(), |(_, l)| l);
        out.push_str(&format!("      {name}  {location}\n"));
        if name.contains("alloc_hit::") || name.contains("{{closure}}") {
            break;
        }
    }
    out
}

/// Polls `future` once with a no-op waker: a memory hit must complete without waiting.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(value) => value,
        Poll::Pending => panic!("a memory hit returned Pending"),
    }
}

/// Allocations and bytes per call of `call`, over `n` calls.
fn measure<T>(n: u64, mut call: impl FnMut(u64) -> T) -> (f64, f64) {
    ALLOCS.with(|c| c.set(0));
    BYTES.with(|c| c.set(0));
    COUNTING.with(|c| c.set(true));
    for i in 0..n {
        std::hint::black_box(call(i));
    }
    COUNTING.with(|c| c.set(false));
    let allocs = ALLOCS.with(Cell::get) as f64 / n as f64;
    let bytes = BYTES.with(Cell::get) as f64 / n as f64;
    (allocs, bytes)
}

/// Records the call stacks of the allocations of one call.
fn trace_one<T>(mut call: impl FnMut(u64) -> T) -> Vec<String> {
    TRACES.lock().unwrap_or_else(|p| p.into_inner()).clear();
    TRACING.with(|c| c.set(true));
    COUNTING.with(|c| c.set(true));
    std::hint::black_box(call(1));
    COUNTING.with(|c| c.set(false));
    TRACING.with(|c| c.set(false));
    std::mem::take(&mut *TRACES.lock().unwrap_or_else(|p| p.into_inner()))
}

// --- the functions measured -------------------------------------------------------------------

const HOT: u64 = 8;

fn text(n: u64) -> String {
    format!("value number {n} with some padding to be a real string")
}

#[cache_runtime::cached(ttl = 600)]
async fn rt_u64(n: u64) -> u64 {
    n.wrapping_mul(3)
}

#[cache_runtime::cached(ttl = 600, key = "alloc_tpl:{n}")]
async fn rt_u64_template(n: u64) -> u64 {
    n.wrapping_mul(3)
}

#[cache_runtime::cached(ttl = 600, key = "alloc_grp:{n}", group = "alloc_group")]
async fn rt_u64_group(n: u64) -> u64 {
    n.wrapping_mul(3)
}

#[cache_runtime::cached(ttl = 600)]
async fn rt_string(n: u64) -> String {
    text(n)
}

#[cache_runtime::cached(ttl = 600)]
async fn rt_vec(n: u64) -> Vec<u64> {
    (0..16).map(|i| i * n).collect()
}

#[cache_runtime::cached(ttl = 600)]
async fn rt_kib(n: u64) -> Kib {
    Kib::new(n)
}

#[cached::macros::cached(ttl_secs = 600)]
async fn cr_u64(n: u64) -> u64 {
    n.wrapping_mul(3)
}

#[cached::macros::cached(ttl_secs = 600)]
async fn cr_string(n: u64) -> String {
    text(n)
}

static MOKA_U64: LazyLock<moka::sync::Cache<u64, u64>> = LazyLock::new(|| {
    moka::sync::Cache::builder()
        .max_capacity(1000)
        .time_to_live(Duration::from_secs(600))
        .build()
});
static MOKA_STRING: LazyLock<moka::sync::Cache<u64, String>> = LazyLock::new(|| {
    moka::sync::Cache::builder()
        .max_capacity(1000)
        .time_to_live(Duration::from_secs(600))
        .build()
});

struct Case {
    name: &'static str,
    /// Allocations of one clone of the value: the most a `cache_runtime` hit may make.
    clone_allocs: Option<u64>,
    /// One call; the value is dropped inside (deallocations are not counted).
    call: Box<dyn FnMut(u64)>,
}

fn case<T: 'static>(
    name: &'static str,
    clone_allocs: Option<u64>,
    mut call: impl FnMut(u64) -> T + 'static,
) -> Case {
    Case {
        name,
        clone_allocs,
        call: Box::new(move |i| {
            std::hint::black_box(call(i));
        }),
    }
}

fn main() {
    common::isolate_env();
    // `cargo bench -- <filter>` / `--list` style arguments are ignored: this check always runs whole.
    let rt = common::runtime();
    rt.block_on(async {
        for n in 0..HOT {
            rt_u64(n).await;
            rt_u64_template(n).await;
            rt_u64_group(n).await;
            rt_string(n).await;
            rt_vec(n).await;
            rt_kib(n).await;
            cr_u64(n).await;
            cr_string(n).await;
            MOKA_U64.insert(n, n * 3);
            MOKA_STRING.insert(n, text(n));
        }
    });
    // Warm every path once more (lazy statics, thread-locals, moka's read buffers).
    let hits_before: u64 = cache_runtime::stats().iter().map(|s| s.hits).sum();

    let mut cases = vec![
        case("cache_runtime u64, default key", Some(0), |i| {
            ready(rt_u64(i % HOT))
        }),
        case("cache_runtime u64, key template", Some(0), |i| {
            ready(rt_u64_template(i % HOT))
        }),
        case("cache_runtime u64, template + group", Some(0), |i| {
            ready(rt_u64_group(i % HOT))
        }),
        case("cache_runtime String (54 B)", Some(1), |i| {
            ready(rt_string(i % HOT))
        }),
        case("cache_runtime Vec<u64> (16)", Some(1), |i| {
            ready(rt_vec(i % HOT))
        }),
        case("cache_runtime 1 KiB struct", Some(1), |i| {
            ready(rt_kib(i % HOT))
        }),
        case("cached crate u64 (reference)", None, |i| {
            ready(cr_u64(i % HOT))
        }),
        case("cached crate String (reference)", None, |i| {
            ready(cr_string(i % HOT))
        }),
        case("moka sync get u64 (reference)", None, |i| {
            MOKA_U64.get(&(i % HOT))
        }),
        case("moka sync get String (reference)", None, |i| {
            MOKA_STRING.get(&(i % HOT))
        }),
    ];
    for case in &mut cases {
        measure(1000, &mut case.call);
    }

    const N: u64 = 100_000;
    println!();
    println!("allocations per memory hit ({N} hits each, {HOT} hot keys)");
    println!(
        "{:<38} {:>10} {:>10} {:>14}  verdict",
        "case", "allocs", "bytes", "clone allocs"
    );
    let mut failing = Vec::new();
    for case in &mut cases {
        let (allocs, bytes) = measure(N, &mut case.call);
        let verdict = match case.clone_allocs {
            Some(limit) if allocs > limit as f64 + 0.01 => {
                failing.push(case.name);
                "FAIL: more than the clone"
            }
            Some(_) => "ok",
            None => "-",
        };
        println!(
            "{:<38} {:>10.2} {:>10.1} {:>14}  {verdict}",
            case.name,
            allocs,
            bytes,
            case.clone_allocs.map_or("-".into(), |c| c.to_string()),
        );
    }
    let hits_after: u64 = cache_runtime::stats().iter().map(|s| s.hits).sum();
    assert!(
        hits_after - hits_before >= 6 * (N + 1000),
        "the measured calls were not all hits"
    );

    if std::env::var_os("ALLOC_HIT_BACKTRACE").is_some() {
        for case in cases.iter_mut().filter(|c| failing.contains(&c.name)) {
            println!("\nallocations of one hit of {}:", case.name);
            for (k, trace) in trace_one(&mut case.call).iter().enumerate() {
                println!("  #{} {trace}", k + 1);
            }
        }
    }
    if failing.is_empty() {
        println!("\nalloc_hit: every cache_runtime memory hit allocates no more than its clone");
    } else if std::env::var_os("ALLOC_HIT_REPORT_ONLY").is_some() {
        println!(
            "\nalloc_hit: {} case(s) allocate more than the clone (report only)",
            failing.len()
        );
    } else {
        eprintln!(
            "\nalloc_hit: FAILED: {} case(s) allocate more than the clone of the value: {}\n\
             (ALLOC_HIT_BACKTRACE=1 shows where; ALLOC_HIT_REPORT_ONLY=1 does not fail)",
            failing.len(),
            failing.join(", ")
        );
        std::process::exit(1);
    }
}
