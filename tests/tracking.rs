//! The tiered backend on a single Redis node: its local tier is invalidated by Redis key tracking,
//! so a write by any client (here `redis-cli`), an expiry or a flush removes local copies; the
//! tracking connection's loss, a server that stops answering, and a server that refuses tracking.

mod support;

use std::{
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use cache_runtime::{cached, MemoryBackend, RedisBackend, TieredBackend};
use support::RedisServer;

static WRITES_RUNS: AtomicU64 = AtomicU64::new(0);
static KILLED_RUNS: AtomicU64 = AtomicU64::new(0);
static FALLBACK_RUNS: AtomicU64 = AtomicU64::new(0);

#[cached(ttl = 60, backend = "track-writes", key = "w:{n}", group = "wgroup")]
async fn after_writes(n: u64) -> u64 {
    WRITES_RUNS.fetch_add(1, Ordering::SeqCst) * 1000 + n
}

#[cached(ttl = 60, backend = "track-killed", key = "c:{n}", group = "cgroup")]
async fn after_kills(n: u64) -> u64 {
    KILLED_RUNS.fetch_add(1, Ordering::SeqCst) * 1000 + n
}

#[cached(ttl = 60, backend = "track-fallback", key = "f:{n}", group = "fgroup")]
async fn without_tracking(n: u64) -> u64 {
    FALLBACK_RUNS.fetch_add(1, Ordering::SeqCst) * 1000 + n
}

async fn wait_until(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A tiered backend on `server`, registered as `name`, with its feed live.
async fn live_tiered<F, Fut>(server: &RedisServer, name: &str, first_call: F) -> Arc<TieredBackend>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = u64>,
{
    let tiered = Arc::new(TieredBackend::new(
        RedisBackend::open(&server.url()).unwrap(),
        MemoryBackend::with_limits(1_000, 1 << 20),
    ));
    cache_runtime::register_arc(name, tiered.clone());
    first_call(0).await; // starts the feed
    wait_until(Duration::from_secs(5), "the feed", || {
        tiered.is_subscribed()
    })
    .await;
    tiered
}

/// Calls until the value is served by the local tier: the body ran once for it, and a call reads
/// nothing from Redis.
async fn only_in_local_tier<F, Fut>(server: &RedisServer, runs: &AtomicU64, call: F, n: u64) -> u64
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = u64>,
{
    for _ in 0..100 {
        let (reads, before) = (server.reads(), runs.load(Ordering::SeqCst));
        let value = call(n).await;
        if server.reads() == reads && runs.load(Ordering::SeqCst) == before {
            return value;
        }
        // A first copy may be dropped by the report of this process's own store.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("never served by the local tier");
}

/// Calls until one no longer returns `old`; fails if that takes `limit`, or if a later call
/// returns `old` again. Returns how long it took and how many calls still returned `old`.
async fn until_replaced<F, Fut>(call: F, n: u64, old: u64, limit: Duration) -> (Duration, u32)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = u64>,
{
    let started = Instant::now();
    let mut stale = 0;
    while call(n).await == old {
        stale += 1;
        assert!(
            started.elapsed() < limit,
            "still served {old} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = (started.elapsed(), stale);
    for _ in 0..20 {
        assert_ne!(call(n).await, old, "the old value came back");
    }
    took
}

/// The local copy is still served after a few heartbeats: a live feed stays live.
async fn stays_local<F, Fut>(server: &RedisServer, runs: &AtomicU64, call: F, n: u64, value: u64)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = u64>,
{
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let (reads, before) = (server.reads(), runs.load(Ordering::SeqCst));
    assert_eq!(call(n).await, value);
    assert_eq!(server.reads(), reads, "still served by the local tier");
    assert_eq!(runs.load(Ordering::SeqCst), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_by_another_client_invalidate_the_local_copy() {
    let server = RedisServer::start();
    let tiered = live_tiered(&server, "track-writes", after_writes).await;
    let limit = Duration::from_millis(100);
    // Each write, by `redis-cli` (another client, outside this library), to a key the local copy
    // depends on.
    let writes: [(&str, &[&str]); 6] = [
        (
            "an overwrite of the entry",
            &["SET", "cache:k:w:{n}", "not an envelope"],
        ),
        ("a delete of the entry", &["DEL", "cache:k:w:{n}"]),
        ("an expiry of the entry", &["PEXPIRE", "cache:k:w:{n}", "1"]),
        (
            "a move of the group's generation",
            &["INCR", "cache:g:wgroup"],
        ),
        ("a move of the key's tombstone", &["INCR", "cache:t:w:{n}"]),
        ("a flush", &["FLUSHALL"]),
    ];
    let old = only_in_local_tier(&server, &WRITES_RUNS, after_writes, 20).await;
    stays_local(&server, &WRITES_RUNS, after_writes, 20, old).await;
    let mut slowest = Duration::ZERO;
    for (n, (what, args)) in (1u64..).zip(writes) {
        let old = only_in_local_tier(&server, &WRITES_RUNS, after_writes, n).await;
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace("{n}", &n.to_string()))
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        server.cli(&args);
        let (took, stale) = until_replaced(after_writes, n, old, limit).await;
        slowest = slowest.max(took);
        eprintln!("{what}: replaced after {took:?}, {stale} calls served the old value");
    }
    // The expiry: a value whose Redis copy expires is not served from the local tier after.
    let old = only_in_local_tier(&server, &WRITES_RUNS, after_writes, 10).await;
    let runs = WRITES_RUNS.load(Ordering::SeqCst);
    server.cli(&["PEXPIRE", "cache:k:w:10", "30"]);
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_ne!(after_writes(10).await, old);
    assert_eq!(WRITES_RUNS.load(Ordering::SeqCst), runs + 1);
    assert!(tiered.is_subscribed());
    eprintln!("slowest: {slowest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_is_enabled_again_after_its_connection_is_lost() {
    let mut server = RedisServer::start();
    let tiered = live_tiered(&server, "track-killed", after_kills).await;
    let limit = Duration::from_millis(100);

    // Its connection killed by the server: a new one, tracked again, and an emptied local tier.
    only_in_local_tier(&server, &KILLED_RUNS, after_kills, 1).await;
    server.cli(&["CLIENT", "KILL", "TYPE", "normal"]);
    wait_until(Duration::from_secs(2), "the local tier emptied", || {
        tiered.local().entry_count_now() == 0
    })
    .await;
    wait_until(Duration::from_secs(5), "the feed back", || {
        tiered.is_subscribed()
    })
    .await;
    let old = only_in_local_tier(&server, &KILLED_RUNS, after_kills, 2).await;
    server.cli(&["INCR", "cache:g:cgroup"]);
    until_replaced(after_kills, 2, old, limit).await;

    // Redis restarted (its tracking state is gone): the same.
    let old = only_in_local_tier(&server, &KILLED_RUNS, after_kills, 3).await;
    server.kill();
    let killed = Instant::now();
    wait_until(Duration::from_millis(500), "the feed down", || {
        !tiered.is_subscribed()
    })
    .await;
    eprintln!("a killed server noticed after {:?}", killed.elapsed());
    assert_ne!(after_kills(3).await, old, "no local tier without its feed");
    server.restart();
    wait_until(Duration::from_secs(5), "the feed back", || {
        tiered.is_subscribed()
    })
    .await;
    let old = only_in_local_tier(&server, &KILLED_RUNS, after_kills, 4).await;
    server.cli(&["SET", "cache:k:c:4", "x"]);
    until_replaced(after_kills, 4, old, limit).await;

    // A server that stops answering (paused): the heartbeat notices within about 2 s.
    server.cli(&["CLIENT", "PAUSE", "3000", "ALL"]);
    let paused = Instant::now();
    wait_until(Duration::from_millis(2900), "the feed down", || {
        !tiered.is_subscribed()
    })
    .await;
    eprintln!("a silent server noticed after {:?}", paused.elapsed());
    wait_until(Duration::from_secs(8), "the feed back", || {
        tiered.is_subscribed()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_refuses_tracking_gets_pubsub() {
    let server = RedisServer::start_with(&["--rename-command", "CLIENT", ""]);
    let tiered = live_tiered(&server, "track-fallback", without_tracking).await;
    let old = subscribed_instead(&server, &FALLBACK_RUNS, without_tracking).await;
    stays_local(&server, &FALLBACK_RUNS, without_tracking, 1, old).await;
    invalidated_by_another_process(&server, &tiered, without_tracking, "fgroup", old).await;
}

/// The tier of `server` fell back to pub/sub: it is subscribed, and a value is served locally.
async fn subscribed_instead<F, Fut>(server: &RedisServer, runs: &AtomicU64, call: F) -> u64
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = u64>,
{
    assert_eq!(
        server.cli(&["PUBSUB", "NUMSUB", "cache:invalidations"]),
        "cache:invalidations\n1",
        "subscribed instead"
    );
    only_in_local_tier(server, runs, call, 1).await
}

/// Another process invalidates `group`: the local copy `old` is replaced through pub/sub.
async fn invalidated_by_another_process<F, Fut>(
    server: &RedisServer,
    tiered: &TieredBackend,
    call: F,
    group: &str,
    old: u64,
) where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = u64>,
{
    support::run_child(
        &["redis", "invalidate", group],
        &[("REDIS_URL", &server.url())],
        &[],
    );
    until_replaced(call, 1, old, Duration::from_millis(100)).await;
    assert!(tiered.is_subscribed());
}

static NO_HELLO_RUNS: AtomicU64 = AtomicU64::new(0);

#[cached(ttl = 60, backend = "track-no-hello", key = "h:{n}", group = "hgroup")]
async fn without_hello(n: u64) -> u64 {
    NO_HELLO_RUNS.fetch_add(1, Ordering::SeqCst) * 1000 + n
}

/// A server without `HELLO` (Redis before 6, or the command renamed away) cannot speak RESP3: the
/// client reports that as its own error kind, not a server `ERR`. The tier falls back to pub/sub
/// instead of retrying tracking forever (with its local tier off all the while).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_resp3_gets_pubsub() {
    let server = RedisServer::start_with(&["--rename-command", "HELLO", ""]);
    let tiered = live_tiered(&server, "track-no-hello", without_hello).await;
    let old = subscribed_instead(&server, &NO_HELLO_RUNS, without_hello).await;
    invalidated_by_another_process(&server, &tiered, without_hello, "hgroup", old).await;
}

static NO_CLIENT_ACL_RUNS: AtomicU64 = AtomicU64::new(0);

#[cached(ttl = 60, backend = "track-acl", key = "a:{n}", group = "agroup")]
async fn without_client_acl(n: u64) -> u64 {
    NO_CLIENT_ACL_RUNS.fetch_add(1, Ordering::SeqCst) * 1000 + n
}

/// An ACL that denies `CLIENT` answers `NOPERM`: the tier falls back to pub/sub too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_acl_denies_client_gets_pubsub() {
    let server = RedisServer::start();
    assert_eq!(
        server.cli(&["ACL", "SETUSER", "default", "-client"]).trim(),
        "OK"
    );
    let tiered = live_tiered(&server, "track-acl", without_client_acl).await;
    let old = subscribed_instead(&server, &NO_CLIENT_ACL_RUNS, without_client_acl).await;
    invalidated_by_another_process(&server, &tiered, without_client_acl, "agroup", old).await;
}
