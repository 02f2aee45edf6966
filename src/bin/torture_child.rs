//! The workload of the invalidation torture test (`tests/torture.rs`), and its second process.
//!
//! The test includes this file as a module (`#[path]`) and runs [`run`] in its own process while
//! this binary runs the same workload against the same Redis or cache folder:
//!
//! ```text
//! torture_child <redis|tiered|file> <mixed|group> <source-url> <cache-url|-> <cache-dir|-> <start-ns> <end-ns> <seed>
//! ```
//!
//! `mixed`: writers invalidate the key or the group at random; `group`: always the group.
//! It prints its events, one a line (see [`Event::line`]), then a `S` line of counters.
//!
//! The source of truth is a version counter per item, `src:{item}`, in a redis-server that is not
//! the cache's (so restarting the cache's Redis never resets it). Writers `INCR` it, then invalidate
//! the item's key or its group and record when that returned `Ok`; readers record when they started
//! and what they got. Times are `CLOCK_MONOTONIC` nanoseconds: one clock for every process.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::Duration,
};

use cache_runtime::cached;

/// Items of the source.
pub const ITEMS: u64 = 300;
/// The first `HOT` items get [`HOT_SHARE`] of the operations.
pub const HOT: u64 = 8;
pub const HOT_SHARE: f32 = 0.8;
/// Item `i` is in group `grp:{i % GROUPS}`.
pub const GROUPS: u64 = 16;
pub const READERS: u64 = 8;
pub const WRITERS: u64 = 2;
/// Longest random pause of a body after it read the source (so that flights overlap writes).
pub const BODY_SLEEP_MS: u64 = 20;

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in every process of the machine.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is always supported on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The connection to the source of truth of this process (set by [`connect_source`]).
static SOURCE: Mutex<Option<redis::aio::MultiplexedConnection>> = Mutex::new(None);
/// Bodies run in this process (misses).
pub static BODIES: AtomicU64 = AtomicU64::new(0);
/// The process number bodies record (0: the test, 1: the child).
static PROC: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
/// The bodies run since [`run`] started, to tell where a stale value came from.
static BODY_EVENTS: Mutex<Vec<Event>> = Mutex::new(Vec::new());

/// Connects this process to the source of truth at `url` (on the current runtime).
pub async fn connect_source(url: &str) {
    let client = redis::Client::open(url).expect("source url");
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("source redis-server answers");
    *SOURCE.lock().unwrap() = Some(conn);
}

fn source() -> redis::aio::MultiplexedConnection {
    SOURCE
        .lock()
        .unwrap()
        .clone()
        .expect("connect_source was called")
}

/// The current version of `item` (0 before its first write).
pub async fn source_version(item: u64) -> u64 {
    let version: Option<u64> = redis::cmd("GET")
        .arg(format!("src:{item}"))
        .query_async(&mut source())
        .await
        .expect("source read");
    version.unwrap_or(0)
}

async fn bump(item: u64) -> u64 {
    redis::cmd("INCR")
        .arg(format!("src:{item}"))
        .query_async(&mut source())
        .await
        .expect("source write")
}

/// What every memoized fn computes: the version of the item, read at the start of a slow query.
async fn body(item: u64) -> u64 {
    BODIES.fetch_add(1, Ordering::Relaxed);
    let t_start = now_ns();
    let version = source_version(item).await;
    let pause = fastrand::u64(0..=BODY_SLEEP_MS);
    if pause > 0 {
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    BODY_EVENTS.lock().unwrap().push(Event::Body {
        proc: PROC.load(Ordering::Relaxed),
        item,
        version,
        t_start,
        t_end: now_ns(),
    });
    version
}

#[cached(
    ttl = 600,
    backend = "torture-memory",
    key = "item:{item}",
    group = "grp:{grp}"
)]
async fn read_memory(item: u64, grp: u64) -> u64 {
    body(item).await
}

/// As `read_memory`, with the default key (the memory backend stores it under the call's text).
#[cached(ttl = 600, backend = "torture-memory-default", group = "grp:{grp}")]
async fn read_memory_default(item: u64, grp: u64) -> u64 {
    body(item).await
}

#[cached(
    ttl = 600,
    backend = "torture-redis",
    key = "item:{item}",
    group = "grp:{grp}"
)]
async fn read_redis(item: u64, grp: u64) -> u64 {
    body(item).await
}

#[cached(
    ttl = 600,
    backend = "torture-tiered",
    key = "item:{item}",
    group = "grp:{grp}"
)]
async fn read_tiered(item: u64, grp: u64) -> u64 {
    body(item).await
}

#[cached(
    ttl = 600,
    backend = "torture-file",
    key = "item:{item}",
    group = "grp:{grp}"
)]
async fn read_file(item: u64, grp: u64) -> u64 {
    body(item).await
}

/// The backend under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Memory,
    Redis,
    Tiered,
    File,
    /// Memory with a default key (invalidated by the key string `<fn>_key` gives). In process
    /// only: a default key names the fn's module path, which differs between this binary and the
    /// test that includes it, so the two processes would not share entries.
    MemoryDefault,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Memory => "memory",
            Kind::Redis => "redis",
            Kind::Tiered => "tiered",
            Kind::File => "file",
            Kind::MemoryDefault => "memory-default",
        }
    }

    /// Whether other processes share the backend (through Redis or files).
    pub fn shared(self) -> bool {
        !matches!(self, Kind::Memory | Kind::MemoryDefault)
    }

    /// Whether the backend needs a Redis of its own.
    pub fn uses_redis(self) -> bool {
        matches!(self, Kind::Redis | Kind::Tiered)
    }

    /// The key string of an item's entry, as `invalidate_key` takes it.
    pub fn key(self, item: u64) -> String {
        let grp = item % GROUPS;
        match self {
            Kind::MemoryDefault => read_memory_default_key(item, grp),
            _ => format!("item:{item}"),
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [
            Kind::Memory,
            Kind::Redis,
            Kind::Tiered,
            Kind::File,
            Kind::MemoryDefault,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }

    /// The name it is registered under.
    pub fn registered(self) -> String {
        format!("torture-{}", self.name())
    }

    /// Registers the backend: `cache_url` for redis and tiered, `cache_dir` for file.
    pub fn register(self, cache_url: Option<&str>, cache_dir: Option<&std::path::Path>) {
        let redis = || {
            cache_runtime::RedisBackend::open(cache_url.expect("a cache url"))
                .expect("valid cache url")
        };
        match self {
            Kind::Memory | Kind::MemoryDefault => {
                cache_runtime::register(self.registered(), cache_runtime::MemoryBackend::default())
            }
            Kind::Redis => cache_runtime::register(self.registered(), redis()),
            Kind::Tiered => cache_runtime::register(
                self.registered(),
                cache_runtime::TieredBackend::new(redis(), cache_runtime::MemoryBackend::default()),
            ),
            Kind::File => cache_runtime::register(
                self.registered(),
                cache_runtime::FileBackend::new(cache_dir.expect("a cache dir")),
            ),
        }
    }

    /// Calls the memoized fn of this backend.
    pub async fn read(self, item: u64) -> u64 {
        let grp = item % GROUPS;
        match self {
            Kind::Memory => read_memory(item, grp).await,
            Kind::Redis => read_redis(item, grp).await,
            Kind::Tiered => read_tiered(item, grp).await,
            Kind::File => read_file(item, grp).await,
            Kind::MemoryDefault => read_memory_default(item, grp).await,
        }
    }
}

/// One thing that happened, with the process it happened in (0: the test, 1: the child).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A call of the memoized fn: started at `t_start`, returned `value` at `t_end`.
    Read {
        proc: u8,
        item: u64,
        value: u64,
        t_start: u64,
        t_end: u64,
    },
    /// A write: the source of `item` was bumped to `version`, then the invalidation (of the key,
    /// or of the group when `group`) returned `Ok` just before `t_ok`.
    Write {
        proc: u8,
        item: u64,
        version: u64,
        t_ok: u64,
        group: bool,
    },
    /// A body ran (a miss): it read `version` from the source just after `t_start`, and returned
    /// at `t_end` (its value was stored after that).
    Body {
        proc: u8,
        item: u64,
        version: u64,
        t_start: u64,
        t_end: u64,
    },
}

impl Event {
    /// `R <proc> <item> <value> <t_start> <t_end>`, `W <proc> <item> <version> <t_ok> <k|g>` or
    /// `B <proc> <item> <version> <t_start> <t_end>`.
    pub fn line(&self) -> String {
        match *self {
            Event::Read {
                proc,
                item,
                value,
                t_start,
                t_end,
            } => format!("R {proc} {item} {value} {t_start} {t_end}"),
            Event::Write {
                proc,
                item,
                version,
                t_ok,
                group,
            } => format!(
                "W {proc} {item} {version} {t_ok} {}",
                if group { 'g' } else { 'k' }
            ),
            Event::Body {
                proc,
                item,
                version,
                t_start,
                t_end,
            } => format!("B {proc} {item} {version} {t_start} {t_end}"),
        }
    }

    /// The inverse of [`line`](Self::line); `None` for other lines.
    pub fn parse(line: &str) -> Option<Self> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| fields.get(i)?.parse::<u64>().ok();
        match *fields.first()? {
            "R" => Some(Event::Read {
                proc: num(1)? as u8,
                item: num(2)?,
                value: num(3)?,
                t_start: num(4)?,
                t_end: num(5)?,
            }),
            "W" => Some(Event::Write {
                proc: num(1)? as u8,
                item: num(2)?,
                version: num(3)?,
                t_ok: num(4)?,
                group: *fields.get(5)? == "g",
            }),
            "B" => Some(Event::Body {
                proc: num(1)? as u8,
                item: num(2)?,
                version: num(3)?,
                t_start: num(4)?,
                t_end: num(5)?,
            }),
            _ => None,
        }
    }
}

/// What one process did.
#[derive(Debug, Default)]
pub struct Log {
    pub events: Vec<Event>,
    /// Invalidations that returned `Err` (their writes are not recorded).
    pub failed_invalidations: u64,
    pub first_failure: Option<String>,
    /// Bodies run (misses) in this process.
    pub bodies: u64,
}

impl Log {
    /// The `S` line closing a child's output.
    pub fn summary_line(&self) -> String {
        format!(
            "S {} {} {}",
            self.failed_invalidations,
            self.bodies,
            self.first_failure
                .as_deref()
                .unwrap_or("-")
                .replace(char::is_whitespace, "_")
        )
    }

    /// Reads a child's output.
    pub fn parse(output: &str) -> Self {
        let mut log = Log::default();
        for line in output.lines() {
            if let Some(event) = Event::parse(line) {
                log.events.push(event);
            } else if let Some(rest) = line.strip_prefix("S ") {
                let fields: Vec<&str> = rest.split(' ').collect();
                log.failed_invalidations = fields[0].parse().expect("S line");
                log.bodies = fields[1].parse().expect("S line");
                if fields[2] != "-" {
                    log.first_failure = Some(fields[2].to_owned());
                }
            }
        }
        log
    }
}

fn pick_item(rng: &mut fastrand::Rng) -> u64 {
    if rng.f32() < HOT_SHARE {
        rng.u64(0..HOT)
    } else {
        rng.u64(HOT..ITEMS)
    }
}

async fn sleep_until_ns(t: u64) {
    let now = now_ns();
    if t > now {
        tokio::time::sleep(Duration::from_nanos(t - now)).await;
    }
}

async fn reader(kind: Kind, proc: u8, seed: u64, end: u64) -> Vec<Event> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut events = Vec::new();
    while now_ns() < end {
        let item = pick_item(&mut rng);
        let t_start = now_ns();
        let value = kind.read(item).await;
        let t_end = now_ns();
        events.push(Event::Read {
            proc,
            item,
            value,
            t_start,
            t_end,
        });
        // About a millisecond between calls: enough to keep ~8 000 calls/s per process.
        tokio::time::sleep(Duration::from_micros(rng.u64(100..1_000))).await;
    }
    events
}

struct Writes {
    events: Vec<Event>,
    failed: u64,
    first_failure: Option<String>,
}

async fn writer(kind: Kind, proc: u8, seed: u64, end: u64, group_only: bool) -> Writes {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut writes = Writes {
        events: Vec::new(),
        failed: 0,
        first_failure: None,
    };
    while now_ns() < end {
        let item = pick_item(&mut rng);
        let version = bump(item).await;
        let group = group_only || rng.bool();
        let result = if group {
            cache_runtime::invalidate_group(&format!("grp:{}", item % GROUPS)).await
        } else {
            cache_runtime::invalidate_key(&kind.key(item)).await
        };
        let t_ok = now_ns();
        match result {
            Ok(()) => writes.events.push(Event::Write {
                proc,
                item,
                version,
                t_ok,
                group,
            }),
            Err(error) => {
                writes.failed += 1;
                writes
                    .first_failure
                    .get_or_insert_with(|| error.to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(2..=8))).await;
    }
    writes
}

/// Runs [`READERS`] readers and [`WRITERS`] writers on `kind` from `start` to `end`
/// (`CLOCK_MONOTONIC` ns); writers invalidate only groups when `group_only`, else the key or the
/// group at random. The backend is registered and the source connected.
pub async fn run(kind: Kind, group_only: bool, proc: u8, seed: u64, start: u64, end: u64) -> Log {
    PROC.store(proc, Ordering::Relaxed);
    BODY_EVENTS.lock().unwrap().clear();
    sleep_until_ns(start).await;
    let bodies_before = BODIES.load(Ordering::Relaxed);
    let readers: Vec<_> = (0..READERS)
        .map(|i| {
            tokio::spawn(reader(
                kind,
                proc,
                seed.wrapping_mul(31).wrapping_add(i),
                end,
            ))
        })
        .collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            tokio::spawn(writer(
                kind,
                proc,
                seed.wrapping_mul(31).wrapping_add(1_000 + i),
                end,
                group_only,
            ))
        })
        .collect();
    let mut log = Log::default();
    for reader in readers {
        log.events.extend(reader.await.expect("reader task"));
    }
    for writer in writers {
        let writes = writer.await.expect("writer task");
        log.events.extend(writes.events);
        log.failed_invalidations += writes.failed;
        if log.first_failure.is_none() {
            log.first_failure = writes.first_failure;
        }
    }
    log.bodies = BODIES.load(Ordering::Relaxed) - bodies_before;
    log.events
        .extend(std::mem::take(&mut *BODY_EVENTS.lock().unwrap()));
    log
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kind, mode, source_url, cache_url, cache_dir, start, end, seed] = args.as_slice() else {
        eprintln!(
            "usage: torture_child <redis|tiered|file> <mixed|group> <source-url> <cache-url|-> \
             <cache-dir|-> <start-ns> <end-ns> <seed>"
        );
        std::process::exit(2);
    };
    let kind = Kind::parse(kind).expect("a backend: redis, tiered or file");
    let cache_url = (cache_url != "-").then_some(cache_url.as_str());
    let cache_dir = (cache_dir != "-").then(|| std::path::PathBuf::from(cache_dir));
    connect_source(source_url).await;
    kind.register(cache_url, cache_dir.as_deref());
    let number = |s: &str| s.parse::<u64>().expect("a number");
    let group_only = match mode.as_str() {
        "group" => true,
        "mixed" => false,
        other => panic!("unknown mode {other}: mixed or group"),
    };
    let log = run(
        kind,
        group_only,
        1,
        number(seed),
        number(start),
        number(end),
    )
    .await;
    let mut out = String::with_capacity(log.events.len() * 40);
    for event in &log.events {
        out.push_str(&event.line());
        out.push('\n');
    }
    out.push_str(&log.summary_line());
    out.push('\n');
    use std::io::Write;
    std::io::stdout()
        .lock()
        .write_all(out.as_bytes())
        .expect("stdout");
}
