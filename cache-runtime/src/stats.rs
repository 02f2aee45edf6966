//! Per-function counters and latencies, read with [`stats`](crate::stats) and, with the `metrics`
//! feature, exported through the [`metrics`](https://docs.rs/metrics) facade.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering},
        Mutex, OnceLock,
    },
    time::Duration,
};

use crate::codec::Codec;

/// Upper bounds of the latency buckets, in microseconds (the last bucket is unbounded).
pub const LATENCY_BUCKETS_US: [u64; 7] = [50, 250, 1_000, 5_000, 25_000, 100_000, 500_000];

/// A latency distribution: count, sum and cumulative buckets (Prometheus style).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Latency {
    /// Number of observations.
    pub count: u64,
    /// Sum of all observations, in nanoseconds.
    pub sum_ns: u64,
    /// `(upper bound in µs, observations at or below it)`, cumulative; the bounds are
    /// 50, 250, 1 000, 5 000, 25 000, 100 000 and 500 000 µs (slower calls count only in `count`).
    pub buckets: Vec<(u64, u64)>,
}

/// A snapshot of one memoized function's counters.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct FnStats {
    /// `module::function`.
    pub function: String,
    /// The backend name the function uses.
    pub backend: &'static str,
    /// Calls answered from the cache with a fresh value.
    pub hits: u64,
    /// Calls answered with a stale value (stale-while-revalidate or stale-if-error).
    pub stale: u64,
    /// Calls that ran the body (or waited for another process's run, see `lock_waits`).
    pub misses: u64,
    /// Calls that waited for another call's body in this process instead of running their own.
    pub joins: u64,
    /// Misses that found another process computing the value and waited for it.
    pub lock_waits: u64,
    /// Backend operations that failed or timed out (the calls still succeeded).
    pub backend_errors: u64,
    /// Stored entries that could not be decoded (treated as misses and overwritten).
    pub decode_failures: u64,
    /// Values not stored because they exceeded the size limit.
    pub oversized: u64,
    /// Latency of calls answered from the cache (fresh or stale).
    pub hit_latency: Latency,
    /// Latency of calls that ran the body or waited for it.
    pub miss_latency: Latency,
}

/// How long values live and are served, and how they are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Freshness.
    pub ttl_ms: u64,
    /// After expiry, serve the stale value this long while one refresh runs.
    pub stale_ms: u64,
    /// After expiry, serve the stale value this long when the refresh fails.
    pub stale_if_error_ms: u64,
    /// Cross-process lock TTL on a miss (0: no lock).
    pub lock_ms: u64,
    /// The function's own codec (`#[cached(codec = ..)]`), above the backend's and `CACHE_CODEC`.
    pub codec: Option<Codec>,
    /// The codec when neither the function, the backend nor `CACHE_CODEC` chose one: JSON for
    /// values, MessagePack for HTTP responses.
    pub default_codec: Codec,
    /// The function's schema version (`#[cached(version = N)]`): entries of another are misses.
    pub version: u32,
}

impl Policy {
    /// Fresh for `ttl_ms`, nothing else.
    pub const fn ttl(ttl_ms: u64) -> Self {
        Self {
            ttl_ms,
            stale_ms: 0,
            stale_if_error_ms: 0,
            lock_ms: 0,
            codec: None,
            default_codec: Codec::Json,
            version: 0,
        }
    }

    /// How long a backend keeps an entry: freshness plus the longest stale window.
    pub(crate) fn retention(&self) -> Duration {
        let stale = self.stale_ms.max(self.stale_if_error_ms);
        Duration::from_millis(self.ttl_ms.saturating_add(stale))
    }

    pub(crate) fn serves_stale(&self) -> bool {
        self.stale_ms > 0 || self.stale_if_error_ms > 0
    }
}

#[derive(Debug)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; LATENCY_BUCKETS_US.len() + 1],
            sum_ns: AtomicU64::new(0),
        }
    }

    fn record(&self, elapsed: Duration) {
        let us = elapsed.as_micros() as u64;
        let index = LATENCY_BUCKETS_US
            .iter()
            .position(|bound| us <= *bound)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Latency {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(LATENCY_BUCKETS_US.len());
        for (bound, bucket) in LATENCY_BUCKETS_US.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            buckets.push((*bound, cumulative));
        }
        let count = cumulative + self.buckets[LATENCY_BUCKETS_US.len()].load(Ordering::Relaxed);
        Latency {
            count,
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
            buckets,
        }
    }
}

/// One counter of a [`Site`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Event {
    Hit,
    Stale,
    Miss,
    Join,
    LockWait,
    BackendError,
    DecodeFailure,
    Oversized,
}

impl Event {
    #[cfg(feature = "metrics")]
    fn metric_name(self) -> &'static str {
        match self {
            Event::Hit => "cache_hits_total",
            Event::Stale => "cache_stale_total",
            Event::Miss => "cache_misses_total",
            Event::Join => "cache_joins_total",
            Event::LockWait => "cache_lock_waits_total",
            Event::BackendError => "cache_backend_errors_total",
            Event::DecodeFailure => "cache_decode_failures_total",
            Event::Oversized => "cache_oversized_total",
        }
    }
}

/// The static state of one `#[cached]` function. Created by the macro; not for direct use.
#[doc(hidden)]
pub struct Site {
    pub(crate) module: &'static str,
    pub(crate) function: &'static str,
    pub(crate) backend: &'static str,
    pub(crate) policy: Policy,
    pub(crate) fingerprint: OnceLock<(std::any::TypeId, u64)>,
    /// The backend this site's name resolves to, cached (see [`Site::resolve`]).
    pub(crate) resolved: AtomicPtr<crate::registry::Resolved>,
    registered: AtomicBool,
    counters: [Stripe; STRIPES],
    hit_latency: Histogram,
    miss_latency: Histogram,
}

impl std::fmt::Debug for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Site")
            .field("module", &self.module)
            .field("function", &self.function)
            .field("backend", &self.backend)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

static SITES: Mutex<Vec<&'static Site>> = Mutex::new(Vec::new());

/// Counter stripes per site. The first [`OWNED_STRIPES`] are leased to one thread each, which
/// counts with a plain load and store (no read-modify-write on a hit); threads beyond those share
/// the others and count with `fetch_add`.
const STRIPES: usize = 8;
const OWNED_STRIPES: usize = 6;

/// One cache line of counters.
#[repr(align(64))]
struct Stripe([AtomicU64; 8]);

/// A thread's stripe, and whether no other thread counts in it.
#[derive(Clone, Copy)]
struct Lease {
    stripe: usize,
    owned: bool,
}

/// The owned stripes no live thread holds, one bit each.
static FREE_STRIPES: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new((1 << OWNED_STRIPES) - 1);

/// Holds a thread's lease; gives an owned stripe back when the thread ends.
struct LeaseHolder(Lease);

impl LeaseHolder {
    fn take() -> Self {
        let mut free = FREE_STRIPES.load(Ordering::Acquire);
        while free != 0 {
            let stripe = free.trailing_zeros() as usize;
            // Acquire: the counts of the thread that held the stripe before are visible here.
            match FREE_STRIPES.compare_exchange_weak(
                free,
                free & !(1 << stripe),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Self(Lease {
                        stripe,
                        owned: true,
                    })
                }
                Err(now) => free = now,
            }
        }
        Self(shared_lease())
    }
}

impl Drop for LeaseHolder {
    fn drop(&mut self) {
        if self.0.owned {
            // Release: the next holder's plain increments start from this thread's last counts.
            FREE_STRIPES.fetch_or(1 << self.0.stripe, Ordering::Release);
        }
    }
}

/// One of the shared stripes, spreading the threads over them.
fn shared_lease() -> Lease {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let shared = STRIPES - OWNED_STRIPES;
    Lease {
        stripe: OWNED_STRIPES + NEXT.fetch_add(1, Ordering::Relaxed) % shared,
        owned: false,
    }
}

/// This thread's stripe (a shared one while the thread is ending).
#[inline]
fn lease() -> Lease {
    thread_local! {
        static LEASE: LeaseHolder = LeaseHolder::take();
    }
    LEASE
        .try_with(|holder| holder.0)
        .unwrap_or_else(|_| shared_lease())
}

/// Whether to time this call: one in [`SAMPLE_EVERY`] calls on in-process backends (a clock read
/// costs as much as a hit there), every call elsewhere.
#[inline]
pub(crate) fn sample_timing() -> bool {
    thread_local! {
        static CALLS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }
    CALLS.with(|calls| {
        let n = calls.get().wrapping_add(1);
        calls.set(n);
        n % SAMPLE_EVERY == 0
    })
}

/// Latencies of in-process hits are sampled one call in this many.
pub const SAMPLE_EVERY: u32 = 64;

impl Site {
    /// The backend this site's backend name resolves to now.
    #[inline]
    pub(crate) fn resolve(&self) -> Option<&'static crate::registry::Registered> {
        crate::registry::resolve_cached(&self.resolved, self.backend)
    }
    /// Describes a memoized function.
    pub const fn new(
        module: &'static str,
        function: &'static str,
        backend: &'static str,
        policy: Policy,
    ) -> Self {
        Self {
            module,
            function,
            backend,
            policy,
            fingerprint: OnceLock::new(),
            resolved: AtomicPtr::new(std::ptr::null_mut()),
            registered: AtomicBool::new(false),
            counters: [const { Stripe([const { AtomicU64::new(0) }; 8]) }; STRIPES],
            hit_latency: Histogram::new(),
            miss_latency: Histogram::new(),
        }
    }

    /// Makes the site visible to [`stats`] (once).
    #[inline]
    pub(crate) fn register(&'static self) {
        if !self.registered.load(Ordering::Relaxed) {
            self.register_now();
        }
    }

    #[cold]
    fn register_now(&'static self) {
        if !self.registered.swap(true, Ordering::AcqRel) {
            SITES
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(self);
        }
    }

    /// Counts one event (in this thread's stripe: threads hitting one function do not contend).
    #[inline]
    pub(crate) fn count(&self, event: Event) {
        let lease = lease();
        let counter = &self.counters[lease.stripe].0[event as usize];
        if lease.owned {
            // Only this thread writes this stripe.
            counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        } else {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        #[cfg(feature = "metrics")]
        metrics::counter!(
            event.metric_name(),
            "function" => self.function,
            "module" => self.module,
            "backend" => self.backend
        )
        .increment(1);
    }

    /// Records how long a call answered from the cache took (when it was timed).
    pub(crate) fn hit_took(&self, elapsed: Option<Duration>) {
        let Some(elapsed) = elapsed else {
            return;
        };
        self.hit_latency.record(elapsed);
        #[cfg(feature = "metrics")]
        metrics::histogram!("cache_hit_seconds", "function" => self.function, "module" => self.module)
            .record(elapsed.as_secs_f64());
    }

    /// Records how long a call that missed took (when it was timed).
    pub(crate) fn miss_took(&self, elapsed: Option<Duration>) {
        let Some(elapsed) = elapsed else {
            return;
        };
        self.miss_latency.record(elapsed);
        #[cfg(feature = "metrics")]
        metrics::histogram!("cache_miss_seconds", "function" => self.function, "module" => self.module)
            .record(elapsed.as_secs_f64());
    }

    fn snapshot(&self) -> FnStats {
        let read = |event: Event| {
            self.counters
                .iter()
                .map(|stripe| stripe.0[event as usize].load(Ordering::Relaxed))
                .sum()
        };
        FnStats {
            function: format!("{}::{}", self.module, self.function),
            backend: self.backend,
            hits: read(Event::Hit),
            stale: read(Event::Stale),
            misses: read(Event::Miss),
            joins: read(Event::Join),
            lock_waits: read(Event::LockWait),
            backend_errors: read(Event::BackendError),
            decode_failures: read(Event::DecodeFailure),
            oversized: read(Event::Oversized),
            hit_latency: self.hit_latency.snapshot(),
            miss_latency: self.miss_latency.snapshot(),
        }
    }
}

/// Counters of every memoized function called so far in this process (and of every
/// [`CacheLayer`](crate::http::CacheLayer) built).
///
/// ```
/// for s in cache_runtime::stats() {
///     println!("{}: {} hits, {} misses", s.function, s.hits, s.misses);
/// }
/// ```
pub fn stats() -> Vec<FnStats> {
    SITES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .iter()
        .map(|site| site.snapshot())
        .collect()
}

/// [`stats`] in the Prometheus text exposition format, ready to serve at `/metrics`.
///
/// ```
/// let text = cache_runtime::stats_prometheus();
/// assert!(text.contains("# TYPE cache_hits_total counter"));
/// ```
pub fn stats_prometheus() -> String {
    use std::fmt::Write;
    let all = stats();
    let mut out = String::new();
    type Counter = (&'static str, &'static str, fn(&FnStats) -> u64);
    let counters: [Counter; 9] = [
        (
            "hits",
            "Calls answered from the cache with a fresh value",
            |s| s.hits,
        ),
        ("stale", "Calls answered with a stale value", |s| s.stale),
        ("misses", "Calls that ran the body", |s| s.misses),
        (
            "joins",
            "Calls that waited for an identical call in this process",
            |s| s.joins,
        ),
        (
            "lock_waits",
            "Misses that waited for another process",
            |s| s.lock_waits,
        ),
        (
            "backend_errors",
            "Backend operations that failed (calls still succeeded)",
            |s| s.backend_errors,
        ),
        (
            "decode_failures",
            "Stored entries that could not be decoded",
            |s| s.decode_failures,
        ),
        ("oversized", "Values too large to store", |s| s.oversized),
        ("calls", "All calls", |s| {
            s.hits + s.stale + s.misses + s.joins
        }),
    ];
    for (name, help, read) in counters {
        let _ = writeln!(
            out,
            "# HELP cache_{name}_total {help}\n# TYPE cache_{name}_total counter"
        );
        for s in &all {
            let _ = writeln!(out, "cache_{name}_total{{{}}} {}", labels(s), read(s));
        }
    }
    for (name, help, read) in [
        (
            "hit",
            "Latency of calls answered from the cache",
            (|s| &s.hit_latency) as fn(&FnStats) -> &Latency,
        ),
        ("miss", "Latency of calls that ran the body", |s| {
            &s.miss_latency
        }),
    ] {
        let _ = writeln!(
            out,
            "# HELP cache_{name}_seconds {help}\n# TYPE cache_{name}_seconds histogram"
        );
        for s in &all {
            let latency = read(s);
            for (bound, count) in &latency.buckets {
                let le = *bound as f64 / 1e6;
                let _ = writeln!(
                    out,
                    "cache_{name}_seconds_bucket{{{},le=\"{le}\"}} {count}",
                    labels(s)
                );
            }
            let _ = writeln!(
                out,
                "cache_{name}_seconds_bucket{{{},le=\"+Inf\"}} {}",
                labels(s),
                latency.count
            );
            let _ = writeln!(
                out,
                "cache_{name}_seconds_sum{{{}}} {}",
                labels(s),
                latency.sum_ns as f64 / 1e9
            );
            let _ = writeln!(
                out,
                "cache_{name}_seconds_count{{{}}} {}",
                labels(s),
                latency.count
            );
        }
    }
    out
}

fn labels(s: &FnStats) -> String {
    let escape = |v: &str| {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    format!(
        "function=\"{}\",backend=\"{}\"",
        escape(&s.function),
        escape(s.backend)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts from more threads than there are owned stripes, all at once, in waves of
    /// short-lived threads (whose stripes are handed on): none is lost.
    #[test]
    fn counts_from_many_threads_and_handed_on_stripes_are_exact() {
        static SITE: Site = Site::new("app", "counted", "memory", Policy::ttl(1000));
        const PER_THREAD: u64 = 100_000;
        const WAVE: usize = 2 * STRIPES;
        const WAVES: u64 = 4;
        for _ in 0..WAVES {
            let start = std::sync::Barrier::new(WAVE);
            std::thread::scope(|wave| {
                for _ in 0..WAVE {
                    wave.spawn(|| {
                        start.wait();
                        for _ in 0..PER_THREAD {
                            SITE.count(Event::Hit);
                        }
                    });
                }
            });
        }
        assert_eq!(SITE.snapshot().hits, WAVES * WAVE as u64 * PER_THREAD);
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new();
        h.record(Duration::from_micros(10));
        h.record(Duration::from_micros(300));
        h.record(Duration::from_secs(2));
        let snap = h.snapshot();
        assert_eq!(snap.count, 3);
        assert_eq!(snap.buckets[0], (50, 1));
        assert_eq!(snap.buckets[2], (1_000, 2));
        assert_eq!(snap.buckets.last().unwrap().1, 2);
    }

    #[cfg(feature = "metrics")]
    #[test]
    fn counters_and_latencies_reach_the_metrics_facade() {
        use std::sync::{Arc, Mutex};

        /// Records the name and labels of every counter increment and histogram sample.
        #[derive(Default)]
        struct Recorded(Arc<Mutex<Vec<String>>>);
        struct Handle(Arc<Mutex<Vec<String>>>, String);
        impl metrics::CounterFn for Handle {
            fn increment(&self, value: u64) {
                self.0.lock().unwrap().push(format!("{} +{value}", self.1));
            }
            fn absolute(&self, _: u64) {}
        }
        impl metrics::HistogramFn for Handle {
            fn record(&self, _: f64) {
                self.0.lock().unwrap().push(format!("{} sample", self.1));
            }
        }
        impl metrics::Recorder for Recorded {
            fn describe_counter(
                &self,
                _: metrics::KeyName,
                _: Option<metrics::Unit>,
                _: metrics::SharedString,
            ) {
            }
            fn describe_gauge(
                &self,
                _: metrics::KeyName,
                _: Option<metrics::Unit>,
                _: metrics::SharedString,
            ) {
            }
            fn describe_histogram(
                &self,
                _: metrics::KeyName,
                _: Option<metrics::Unit>,
                _: metrics::SharedString,
            ) {
            }
            fn register_counter(
                &self,
                key: &metrics::Key,
                _: &metrics::Metadata<'_>,
            ) -> metrics::Counter {
                let name = format!(
                    "{}{:?}",
                    key.name(),
                    key.labels()
                        .map(|l| l.value().to_owned())
                        .collect::<Vec<_>>()
                );
                metrics::Counter::from_arc(Arc::new(Handle(Arc::clone(&self.0), name)))
            }
            fn register_gauge(
                &self,
                _: &metrics::Key,
                _: &metrics::Metadata<'_>,
            ) -> metrics::Gauge {
                metrics::Gauge::noop()
            }
            fn register_histogram(
                &self,
                key: &metrics::Key,
                _: &metrics::Metadata<'_>,
            ) -> metrics::Histogram {
                let name = key.name().to_owned();
                metrics::Histogram::from_arc(Arc::new(Handle(Arc::clone(&self.0), name)))
            }
        }

        static SITE: Site = Site::new("app", "load", "memory", Policy::ttl(1000));
        let recorder = Recorded::default();
        let seen = Arc::clone(&recorder.0);
        metrics::with_local_recorder(&recorder, || {
            SITE.count(Event::Hit);
            SITE.count(Event::Miss);
            SITE.hit_took(Some(Duration::from_micros(3)));
        });
        let seen = seen.lock().unwrap().clone();
        assert!(
            seen.contains(&r#"cache_hits_total["load", "app", "memory"] +1"#.to_owned()),
            "{seen:?}"
        );
        assert!(
            seen.iter().any(|s| s.starts_with("cache_misses_total")),
            "{seen:?}"
        );
        assert!(
            seen.contains(&"cache_hit_seconds sample".to_owned()),
            "{seen:?}"
        );
    }

    #[test]
    fn prometheus_text_has_counters_and_histograms_per_function() {
        static SITE: Site = Site::new("app::users", "load", "redis", Policy::ttl(1000));
        SITE.register();
        SITE.count(Event::Hit);
        SITE.hit_took(Some(Duration::from_micros(100)));
        let text = stats_prometheus();
        let labels = r#"function="app::users::load",backend="redis""#;
        assert!(
            text.contains(&format!("cache_hits_total{{{labels}}} 1\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "cache_hit_seconds_bucket{{{labels},le=\"0.00025\"}} 1\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!("cache_hit_seconds_count{{{labels}}} 1\n")),
            "{text}"
        );
        assert!(text.contains("# TYPE cache_miss_seconds histogram"));
    }

    #[test]
    fn retention_covers_the_longest_stale_window() {
        let policy = Policy {
            ttl_ms: 1_000,
            stale_ms: 500,
            stale_if_error_ms: 3_000,
            ..Policy::ttl(0)
        };
        assert_eq!(policy.retention(), Duration::from_millis(4_000));
        assert!(policy.serves_stale());
        assert!(!Policy::ttl(5).serves_stale());
    }
}
