//! Randomized torture test of the invalidation promise: after `invalidate_key` / `invalidate_group`
//! returns `Ok`, no call that starts later, in this process or another one sharing the backend,
//! returns a value computed before that invalidation.
//!
//! Each item has a version in a source of truth outside the cache (`src:{item}` in a private
//! redis-server the cache does not use). The memoized fn returns the version it read. Writers bump
//! a version, invalidate the item's key or its group, and note `t_ok` once that returned `Ok`;
//! readers note `t_start` before calling. A read of item `i` that returned `v` is a violation when
//! a write of `i` to a version above `v` has `t_ok < t_start`: the value was read from the source
//! before that write, so before its invalidation. Times are `CLOCK_MONOTONIC`, shared by every
//! process. The workload (src/bin/torture_child.rs, included below) runs in this process and in a
//! `torture_child` process on the same Redis / folder (memory: this process only).
//!
//! Tiered: another process's local tier drops an invalidated value when the pub/sub message
//! arrives, so cross-process violations are allowed there within `TIERED_WINDOW`; none in the
//! same process. Redis, file, memory: none at all.
//!
//! `TORTURE_SECS=<s>` runs each backend that long, restarting the cache's Redis every
//! `TORTURE_RESTART_SECS` (default 3) for redis and tiered: see scripts/torture.sh.
//!
//! Finding of the long mode (not fixed, the group-only redis run fails with it): with restarts,
//! one or two reads per 12 s run on Redis get a value older than another process's acknowledged
//! *group* invalidation; each was a call that joined, a few ms after that invalidation returned, a
//! flight of its own process that had started before it (the body returned after the call had
//! started). Without restarts none was seen.

mod support;

#[path = "../src/bin/torture_child.rs"]
#[allow(dead_code)]
mod workload;

use std::{
    collections::HashMap,
    process::{Command, Stdio},
    time::Duration,
};

use support::RedisServer;
use workload::{now_ns, Event, Kind, Log};

/// The tests invalidate through the process-wide functions (which reach every registered
/// backend) and share the source connection: one at a time.
static GLOBAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Largest lag allowed for a cross-process violation on the tiered backend.
const TIERED_WINDOW: Duration = Duration::from_millis(50);
/// How long each backend runs by default.
const DEFAULT_SECS: f64 = 4.0;
/// Time the child gets to start before the workload begins.
const CHILD_START: Duration = Duration::from_millis(400);
/// Violations printed in a failure message.
const SHOWN: usize = 8;

fn run_for() -> Duration {
    let secs = std::env::var("TORTURE_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(DEFAULT_SECS);
    Duration::from_secs_f64(secs)
}

fn long_mode() -> bool {
    std::env::var_os("TORTURE_SECS").is_some()
}

fn restart_every() -> Duration {
    let secs = std::env::var("TORTURE_RESTART_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(secs)
}

/// A read that got a value older than a write whose invalidation had returned before it started.
#[derive(Debug, Clone, Copy)]
struct Violation {
    read_proc: u8,
    item: u64,
    value: u64,
    /// The earliest-acknowledged write it missed (of the process that decided the class).
    write_proc: u8,
    write_version: u64,
    write_group: bool,
    lag_ns: u64,
    /// How long the read took.
    took_ns: u64,
    /// The body that computed the value served (the last one to return it before the read
    /// ended): its process, and when it returned relative to the missed write's `t_ok` (ns,
    /// positive: after the invalidation had returned).
    origin: Option<(u8, i64)>,
}

impl Violation {
    fn cross(&self) -> bool {
        self.read_proc != self.write_proc
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "item {} read {} in process {} (call took {:.2} ms), missed version {} written by \
             process {} and invalidated by {} {:.3} ms before the call started",
            self.item,
            self.value,
            self.read_proc,
            self.took_ns as f64 / 1e6,
            self.write_version,
            self.write_proc,
            if self.write_group { "group" } else { "key" },
            self.lag_ns as f64 / 1e6,
        )?;
        match self.origin {
            Some((proc, after)) => write!(
                f,
                "; the value was computed by a body in process {proc} that returned {:.3} ms {} \
                 that invalidation returned",
                after.unsigned_abs() as f64 / 1e6,
                if after >= 0 { "after" } else { "before" }
            ),
            None => write!(f, "; no body of this run computed that value"),
        }
    }
}

/// A recorded write: (version, t_ok, group).
type WriteRecord = (u64, u64, bool);

/// The writes of one item by one process, by version, with the earliest `t_ok` at or above each.
struct Writes {
    /// (version, t_ok, group), sorted by version.
    list: Vec<WriteRecord>,
    /// `earliest[i]`: index in `list[i..]` of the smallest `t_ok`.
    earliest: Vec<usize>,
}

impl Writes {
    fn new(mut list: Vec<WriteRecord>) -> Self {
        list.sort_unstable();
        let mut earliest = vec![0; list.len()];
        for i in (0..list.len()).rev() {
            earliest[i] = if i + 1 < list.len() && list[earliest[i + 1]].1 < list[i].1 {
                earliest[i + 1]
            } else {
                i
            };
        }
        Self { list, earliest }
    }

    /// The earliest-acknowledged write to a version above `value`, if acknowledged before `t`.
    fn missed(&self, value: u64, t: u64) -> Option<WriteRecord> {
        let first_above = self.list.partition_point(|w| w.0 <= value);
        let write = *self.list.get(self.earliest.get(first_above).copied()?)?;
        (write.1 < t).then_some(write)
    }
}

/// Every violation in the merged events. A read that missed a write of its own process is a
/// same-process violation (even if it also missed another process's).
fn check(events: &[Event]) -> Vec<Violation> {
    let mut by_writer: HashMap<(u64, u8), Vec<WriteRecord>> = HashMap::new();
    let mut bodies: HashMap<(u64, u64), Vec<(u8, u64)>> = HashMap::new();
    for event in events {
        if let Event::Body {
            proc,
            item,
            version,
            t_end,
            ..
        } = *event
        {
            bodies
                .entry((item, version))
                .or_default()
                .push((proc, t_end));
        }
        if let Event::Write {
            proc,
            item,
            version,
            t_ok,
            group,
        } = *event
        {
            by_writer
                .entry((item, proc))
                .or_default()
                .push((version, t_ok, group));
        }
    }
    let writes: HashMap<(u64, u8), Writes> = by_writer
        .into_iter()
        .map(|(k, list)| (k, Writes::new(list)))
        .collect();
    let mut violations = Vec::new();
    for event in events {
        let Event::Read {
            proc,
            item,
            value,
            t_start,
            t_end,
        } = *event
        else {
            continue;
        };
        let other = 1 - proc.min(1);
        for write_proc in [proc, other] {
            let Some(w) = writes.get(&(item, write_proc)) else {
                continue;
            };
            if let Some((version, t_ok, group)) = w.missed(value, t_start) {
                // Several bodies may have computed that version: prefer one of the other
                // process that returned after the invalidation (a store the invalidating
                // process could not order), else the last one.
                let candidates: Vec<(u8, u64)> = bodies
                    .get(&(item, value))
                    .into_iter()
                    .flatten()
                    .filter(|b| b.1 <= t_end)
                    .copied()
                    .collect();
                let origin = candidates
                    .iter()
                    .filter(|b| b.0 != write_proc && b.1 > t_ok)
                    .max_by_key(|b| b.1)
                    .or_else(|| candidates.iter().max_by_key(|b| b.1))
                    .map(|b| (b.0, b.1 as i64 - t_ok as i64));
                violations.push(Violation {
                    read_proc: proc,
                    item,
                    value,
                    write_proc,
                    write_version: version,
                    write_group: group,
                    lag_ns: t_start - t_ok,
                    took_ns: t_end - t_start,
                    origin,
                });
                break;
            }
        }
    }
    violations
}

/// The figures of one run.
struct Report {
    kind: Kind,
    group_only: bool,
    secs: f64,
    processes: usize,
    calls: usize,
    bodies: u64,
    key_invalidations: usize,
    group_invalidations: usize,
    failed_invalidations: u64,
    first_failure: Option<String>,
    restarts: usize,
    violations: Vec<Violation>,
}

impl Report {
    fn same(&self) -> Vec<Violation> {
        self.violations
            .iter()
            .filter(|v| !v.cross())
            .copied()
            .collect()
    }

    fn cross(&self) -> Vec<Violation> {
        self.violations
            .iter()
            .filter(|v| v.cross())
            .copied()
            .collect()
    }

    /// How many violations served a value whose body returned after the missed invalidation
    /// had returned, by whether that body ran in the invalidating process.
    fn late_stores(&self) -> (usize, usize) {
        let late = |same: bool| {
            self.violations
                .iter()
                .filter(|v| {
                    matches!(v.origin, Some((p, after)) if after > 0 && (p == v.write_proc) == same)
                })
                .count()
        };
        (late(true), late(false))
    }

    fn summary(&self) -> String {
        let count =
            |vs: &[Violation], group: bool| vs.iter().filter(|v| v.write_group == group).count();
        let (same, cross) = (self.same(), self.cross());
        let max_lag =
            |vs: &[Violation]| vs.iter().map(|v| v.lag_ns).max().unwrap_or(0) as f64 / 1e6;
        format!(
            "torture {} ({}): {:.1} s, {} process(es), {} calls ({} bodies, {:.1}% hits), \
             invalidations ok: {} key + {} group, failed: {}{}, redis restarts: {}; \
             violations: same-process {} (key {}, group {}, max lag {:.3} ms), \
             cross-process {} (key {}, group {}, max lag {:.3} ms); served values whose body \
             returned after the missed invalidation, in the invalidating process: {}, in the \
             other one: {}",
            self.kind.name(),
            if self.group_only {
                "group invalidations only"
            } else {
                "key or group"
            },
            self.secs,
            self.processes,
            self.calls,
            self.bodies,
            100.0 * (1.0 - self.bodies as f64 / self.calls.max(1) as f64),
            self.key_invalidations,
            self.group_invalidations,
            self.failed_invalidations,
            self.first_failure
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default(),
            self.restarts,
            same.len(),
            count(&same, false),
            count(&same, true),
            max_lag(&same),
            cross.len(),
            count(&cross, false),
            count(&cross, true),
            max_lag(&cross),
            self.late_stores().0,
            self.late_stores().1,
        )
    }

    fn first(violations: &[Violation]) -> String {
        let mut sorted = violations.to_vec();
        sorted.sort_by_key(|v| std::cmp::Reverse(v.lag_ns));
        sorted
            .iter()
            .take(SHOWN)
            .map(|v| format!("\n  - {v}"))
            .collect()
    }
}

/// Unregisters the backend under test even when the test panics (a leftover registration would
/// receive, and fail, the next tests' invalidations).
struct Registration(Kind);

impl Drop for Registration {
    fn drop(&mut self) {
        cache_runtime::unregister(&self.0.registered());
    }
}

async fn torture(kind: Kind, group_only: bool) -> Report {
    let _global = GLOBAL.lock().await;
    let source = RedisServer::start();
    let cache = kind.uses_redis().then(RedisServer::start);
    let dir = tempfile::tempdir().expect("cache dir");
    let cache_url = cache.as_ref().map(RedisServer::url);
    workload::connect_source(&source.url()).await;
    kind.register(cache_url.as_deref(), Some(dir.path()));
    let _registration = Registration(kind);

    let run_for = run_for();
    let start = now_ns() + CHILD_START.as_nanos() as u64;
    let end = start + run_for.as_nanos() as u64;
    let seed = fastrand::u64(..);
    println!("torture {}: seed {seed}", kind.name());

    let child = kind.shared().then(|| {
        let child = Command::new(env!("CARGO_BIN_EXE_torture_child"))
            .args([
                kind.name().to_owned(),
                if group_only { "group" } else { "mixed" }.to_owned(),
                source.url(),
                cache_url.clone().unwrap_or_else(|| "-".to_owned()),
                dir.path().to_str().expect("utf-8 temp dir").to_owned(),
                start.to_string(),
                end.to_string(),
                seed.wrapping_add(1).to_string(),
            ])
            .env_remove("REDIS_URL")
            .env_remove("REDIS_CLUSTER_NODES")
            .env_remove("CACHE_DIR")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("torture_child starts");
        tokio::task::spawn_blocking(move || child.wait_with_output())
    });

    // Long mode: the cache's Redis restarts every few seconds while the workload runs. Otherwise
    // the server is kept here (and killed on drop) until the end of the test.
    let (restarter, _kept) = match cache {
        Some(mut server) if long_mode() => {
            let every = restart_every();
            let restarter = std::thread::spawn(move || {
                let mut restarts = 0;
                loop {
                    std::thread::sleep(every);
                    if now_ns() + 200_000_000 >= end {
                        break;
                    }
                    server.restart();
                    restarts += 1;
                }
                (server, restarts)
            });
            (Some(restarter), None)
        }
        other => (None, other),
    };

    let mut log = workload::run(kind, group_only, 0, seed, start, end).await;
    let mut processes = 1;
    if let Some(child) = child {
        let output = child.await.expect("join").expect("torture_child ran");
        assert!(
            output.status.success(),
            "torture_child failed: {}",
            output.status
        );
        let child_log = Log::parse(&String::from_utf8_lossy(&output.stdout));
        assert!(
            !child_log.events.is_empty(),
            "torture_child recorded nothing"
        );
        log.events.extend(child_log.events);
        log.failed_invalidations += child_log.failed_invalidations;
        log.bodies += child_log.bodies;
        log.first_failure = log.first_failure.or(child_log.first_failure);
        processes = 2;
    }
    let restarts = restarter.map_or(0, |r| r.join().expect("restarter").1);
    let calls = log
        .events
        .iter()
        .filter(|e| matches!(e, Event::Read { .. }))
        .count();
    let bodies_seen = log
        .events
        .iter()
        .filter(|e| matches!(e, Event::Body { .. }))
        .count();
    assert_eq!(
        bodies_seen as u64, log.bodies,
        "every body run was recorded"
    );
    let writes = |group: bool| {
        log.events
            .iter()
            .filter(|e| matches!(e, Event::Write { group: g, .. } if *g == group))
            .count()
    };
    let report = Report {
        kind,
        group_only,
        secs: (end - start) as f64 / 1e9,
        processes,
        calls,
        bodies: log.bodies,
        key_invalidations: writes(false),
        group_invalidations: writes(true),
        failed_invalidations: log.failed_invalidations,
        first_failure: log.first_failure.clone(),
        restarts,
        violations: check(&log.events),
    };
    println!("{}", report.summary());
    assert!(
        report.calls > 1_000
            && (group_only || report.key_invalidations > 50)
            && report.group_invalidations > 50,
        "the workload barely ran: {}",
        report.summary()
    );
    assert!(
        report.bodies < report.calls as u64,
        "nothing was ever served from the cache: {}",
        report.summary()
    );
    report
}

/// Zero violations of any kind.
fn assert_none(report: &Report) {
    assert!(
        report.violations.is_empty(),
        "{}\nlargest lags:{}",
        report.summary(),
        Report::first(&report.violations)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_never_serves_a_value_older_than_an_acknowledged_invalidation() {
    assert_none(&torture(Kind::Memory, false).await);
}

/// Default keys: in process, entries are stored under the call's text, and invalidated by the key
/// string (`<fn>_key`) through its link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_default_keys_never_serve_a_value_older_than_an_acknowledged_invalidation() {
    assert_none(&torture(Kind::MemoryDefault, false).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_never_serves_a_value_older_than_an_acknowledged_group_invalidation() {
    assert_none(&torture(Kind::Redis, true).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_never_serves_a_value_older_than_an_acknowledged_group_invalidation() {
    assert_none(&torture(Kind::File, true).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_group_invalidations_lag_only_across_processes_within_the_window() {
    assert_tiered(&torture(Kind::Tiered, true).await);
}

// Key and group invalidations mixed. Before key tombstones (commit 7474004 and earlier) these failed
// on every run, with hundreds of violations: a key invalidation acknowledged in one process lost to
// a computation that another process started before it and stored after it (a plain SET after the
// UNLINK, a file renamed in after the delete). A value now records its key's tombstone, read before
// the body runs, as it records its groups' generations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_never_serves_a_value_older_than_an_acknowledged_key_or_group_invalidation() {
    assert_none(&torture(Kind::Redis, false).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_never_serves_a_value_older_than_an_acknowledged_key_or_group_invalidation() {
    assert_none(&torture(Kind::File, false).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_key_or_group_invalidations_lag_only_across_processes_within_the_window() {
    assert_tiered(&torture(Kind::Tiered, false).await);
}

/// Tiered: none in the same process, and across processes only within [`TIERED_WINDOW`].
fn assert_tiered(report: &Report) {
    let same = report.same();
    assert!(
        same.is_empty(),
        "same-process violations on tiered: {}\nlargest lags:{}",
        report.summary(),
        Report::first(&same)
    );
    let late: Vec<Violation> = report
        .cross()
        .into_iter()
        .filter(|v| v.lag_ns > TIERED_WINDOW.as_nanos() as u64)
        .collect();
    assert!(
        late.is_empty(),
        "cross-process violations on tiered beyond {TIERED_WINDOW:?}: {}\nlargest lags:{}",
        report.summary(),
        Report::first(&late)
    );
}

/// The checker itself: a read that started after an acknowledged invalidation and got the older
/// version is flagged, with its class and lag; one that started before is not.
#[test]
fn the_checker_flags_exactly_the_reads_that_missed_an_acknowledged_write() {
    let read = |proc, value, t_start| Event::Read {
        proc,
        item: 7,
        value,
        t_start,
        t_end: t_start + 5,
    };
    let write = |proc, version, t_ok, group| Event::Write {
        proc,
        item: 7,
        version,
        t_ok,
        group,
    };
    let events = [
        write(0, 1, 100, false),
        write(1, 2, 300, true),
        write(0, 3, 250, false), // acknowledged before version 2
        read(0, 0, 90),          // before any write: fine
        read(0, 0, 150),         // missed version 1 of its own process
        read(1, 1, 200),         // version 1 is current for it: fine
        read(1, 2, 260),         // missed version 3 of the other process
        read(0, 3, 1_000),       // current: fine
    ];
    let found = check(&events);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(
        (found[0].value, found[0].write_version, found[0].lag_ns),
        (0, 1, 50)
    );
    assert!(!found[0].cross());
    assert_eq!(
        (found[1].value, found[1].write_version, found[1].lag_ns),
        (2, 3, 10)
    );
    assert!(found[1].cross() && !found[1].write_group);
}
