//! The Redis backend against real `redis-server` processes that the tests start themselves.

mod support;

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use cache_runtime::cached;
use serde::{Deserialize, Serialize};
use support::{free_port, RegisteredRedis};

/// Every test takes this lock: the process-wide `invalidate_*` functions reach every registered
/// backend, so one test's killed or unreachable server must not fail another test's invalidation.
static GLOBAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
    friends: Vec<u64>,
    address: Option<Address>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Address {
    city: String,
}

static PROFILE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(
    ttl = 60,
    backend = "redis-hits",
    key = "profile:{id}",
    group = "profiles"
)]
async fn profile(id: u64) -> Profile {
    PROFILE_RUNS.fetch_add(1, Ordering::SeqCst);
    Profile {
        id,
        name: format!("p{id}"),
        friends: vec![1, 2, 3],
        address: Some(Address {
            city: "Lyon".into(),
        }),
    }
}

#[tokio::test]
async fn values_round_trip_through_redis_with_ttl_and_prefix() {
    let _global = GLOBAL.lock().await;
    let redis = RegisteredRedis::start("redis-hits");
    let first = profile(1).await;
    let second = profile(1).await;
    assert_eq!(first, second);
    assert_eq!(second.address.unwrap().city, "Lyon");
    assert_eq!(PROFILE_RUNS.load(Ordering::SeqCst), 1);

    assert_eq!(redis.server.cli(&["EXISTS", "cache:k:profile:1"]), "1");
    let pttl: u64 = redis
        .server
        .cli(&["PTTL", "cache:k:profile:1"])
        .parse()
        .unwrap();
    assert!((55_000..=60_000).contains(&pttl), "PTTL {pttl}");

    // Removing the entry behind the cache's back makes the next call recompute.
    redis.server.cli(&["DEL", "cache:k:profile:1"]);
    profile(1).await;
    assert_eq!(PROFILE_RUNS.load(Ordering::SeqCst), 2);
}

static GROUP_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 600, backend = "redis-groups", group = "big")]
async fn member(n: u64) -> u64 {
    GROUP_RUNS.fetch_add(1, Ordering::SeqCst);
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_invalidation_is_one_set_whatever_the_group_size() {
    let _global = GLOBAL.lock().await;
    let redis = RegisteredRedis::start("redis-groups");
    const MEMBERS: u64 = 3_000;
    for n in 0..MEMBERS {
        member(n).await;
    }
    assert_eq!(GROUP_RUNS.load(Ordering::SeqCst), MEMBERS as usize);
    let stored: u64 = redis.server.cli(&["DBSIZE"]).parse().unwrap();
    assert_eq!(
        stored,
        2 * MEMBERS + 1,
        "the entries, their tombstones and the group's generation"
    );

    redis.server.cli(&["CONFIG", "RESETSTAT"]);
    cache_runtime::invalidate_group("big").await.unwrap();
    let stats = redis.server.cli(&["INFO", "commandstats"]);
    let commands: Vec<&str> = stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_"))
        .filter(|l| !l.starts_with("cmdstat_info") && !l.starts_with("cmdstat_config"))
        .collect();
    // For the whole group the server saw one SET of its generation to a new random value (a move
    // that reads nothing, so a generation lost meanwhile never restarts at a value used before),
    // and one PUBLISH announcing it to in-process tiers: no KEYS, SCAN or DEL.
    assert_eq!(commands.len(), 2, "{commands:?}");
    for expected in ["cmdstat_set:calls=1,", "cmdstat_publish:calls=1,"] {
        assert!(
            commands.iter().any(|c| c.starts_with(expected)),
            "{commands:?}"
        );
    }

    for n in [0, MEMBERS / 2, MEMBERS - 1] {
        member(n).await;
    }
    assert_eq!(GROUP_RUNS.load(Ordering::SeqCst), MEMBERS as usize + 3);
}

static GARBAGE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, backend = "redis-garbage", key = "garbage:{n}")]
async fn garbage_target(n: u64) -> Vec<u64> {
    GARBAGE_RUNS.fetch_add(1, Ordering::SeqCst);
    vec![n; 3]
}

#[cached(ttl = 60, backend = "redis-garbage", key = "garbage:{n}")]
async fn same_key_other_type(n: u64) -> String {
    format!("text {n}")
}

#[tokio::test]
async fn garbage_truncated_and_foreign_entries_are_misses_that_get_overwritten() {
    let _global = GLOBAL.lock().await;
    let redis = RegisteredRedis::start("redis-garbage");
    redis
        .server
        .cli(&["SET", "cache:k:garbage:1", "not an envelope"]);
    assert_eq!(garbage_target(1).await, vec![1, 1, 1]);
    assert_eq!(GARBAGE_RUNS.load(Ordering::SeqCst), 1);
    assert_eq!(garbage_target(1).await, vec![1, 1, 1]);
    assert_eq!(
        GARBAGE_RUNS.load(Ordering::SeqCst),
        1,
        "overwritten by a valid entry"
    );

    // Another type under the same key: a miss for it, then a miss for the first type again.
    assert_eq!(same_key_other_type(1).await, "text 1");
    assert_eq!(garbage_target(1).await, vec![1, 1, 1]);
    assert_eq!(GARBAGE_RUNS.load(Ordering::SeqCst), 2);

    // A truncated envelope.
    redis.server.cli(&[
        "EVAL",
        "return redis.call('SET', KEYS[1], string.sub(redis.call('GET', KEYS[1]), 1, 20))",
        "1",
        "cache:k:garbage:1",
    ]);
    assert_eq!(redis.server.cli(&["STRLEN", "cache:k:garbage:1"]), "20");
    assert_eq!(garbage_target(1).await, vec![1, 1, 1]);
    assert_eq!(GARBAGE_RUNS.load(Ordering::SeqCst), 3);

    let stats = cache_runtime::stats();
    let s = stats
        .iter()
        .find(|s| s.function.ends_with("::garbage_target"))
        .unwrap();
    assert!(s.decode_failures >= 3, "{s:?}");
}

static DEAD_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, backend = "redis-dead")]
async fn on_dead_redis(n: u64) -> u64 {
    DEAD_RUNS.fetch_add(1, Ordering::SeqCst);
    n + 1
}

#[tokio::test]
async fn a_closed_port_costs_little_and_never_fails_the_call() {
    let _global = GLOBAL.lock().await;
    let url = format!("redis://127.0.0.1:{}", free_port());
    cache_runtime::register(
        "redis-dead",
        cache_runtime::RedisBackend::open(&url).unwrap(),
    );
    let _unregister = support::Unregister("redis-dead");
    let started = Instant::now();
    assert_eq!(on_dead_redis(1).await, 2);
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    let started = Instant::now();
    for n in 0..50 {
        assert_eq!(on_dead_redis(n).await, n + 1);
    }
    // The breaker opened: fifty more calls cost nothing like fifty timeouts.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(DEAD_RUNS.load(Ordering::SeqCst), 51);
}

static RESTART_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, backend = "redis-restart")]
async fn across_restart(n: u64) -> u64 {
    RESTART_RUNS.fetch_add(1, Ordering::SeqCst);
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_survive_a_redis_restart_and_hits_resume() {
    let _global = GLOBAL.lock().await;
    let mut redis = RegisteredRedis::start("redis-restart");
    across_restart(1).await;
    across_restart(1).await;
    assert_eq!(RESTART_RUNS.load(Ordering::SeqCst), 1);

    redis.server.kill();
    for _ in 0..5 {
        assert_eq!(
            across_restart(1).await,
            1,
            "a dead Redis never fails the call"
        );
    }
    let runs_while_down = RESTART_RUNS.load(Ordering::SeqCst);
    assert!(runs_while_down >= 2);

    redis.server.restart();
    // Within a few seconds the backend is used again: one call stores, the next ones hit.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let before = RESTART_RUNS.load(Ordering::SeqCst);
        across_restart(1).await;
        across_restart(1).await;
        if RESTART_RUNS.load(Ordering::SeqCst) - before <= 1 && redis.server.cli(&["DBSIZE"]) == "2"
        // the entry and its tombstone
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "hits did not resume after restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn invalidation_reports_a_failing_backend() {
    let _global = GLOBAL.lock().await;
    let url = format!("redis://127.0.0.1:{}", free_port());
    cache_runtime::register(
        "redis-unreachable",
        cache_runtime::RedisBackend::open(&url).unwrap(),
    );
    let _unregister = support::Unregister("redis-unreachable");
    let error = cache_runtime::invalidate_group("anything")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("redis-unreachable"), "{error}");
    // ... and what to check.
    assert!(error.to_string().contains("REDIS_URL"), "{error}");
}

static FIRST_MISS_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
static FIRST_MISS_RUNS: AtomicUsize = AtomicUsize::new(0);
/// What the server held while the body of `first_miss` last ran.
static HELD_WHILE_COMPUTING: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

#[cached(
    ttl = 600,
    backend = "redis-first-miss",
    key = "fresh:{n}",
    group = "fresh"
)]
async fn first_miss(n: u64) -> u64 {
    FIRST_MISS_RUNS.fetch_add(1, Ordering::SeqCst);
    let port = FIRST_MISS_PORT.load(Ordering::SeqCst).to_string();
    let output = std::process::Command::new("redis-cli")
        .args(["-p", &port, "DBSIZE"])
        .output()
        .expect("redis-cli runs");
    *HELD_WHILE_COMPUTING.lock().unwrap() = String::from_utf8_lossy(&output.stdout).trim().into();
    let invalidate = INVALIDATE_WHILE_COMPUTING.swap(false, Ordering::SeqCst);
    let lose = LOSE_TOMBSTONE_WHILE_COMPUTING.swap(false, Ordering::SeqCst);
    if invalidate || lose {
        // Another process's invalidation of this key, made while the body runs (it creates the
        // tombstone if it is missing, and moves it); then, maybe, the tombstone is lost (evicted,
        // or the server restarted without persistence).
        let tombstone = format!("cache:t:fresh:{n}");
        let mut commands: Vec<Vec<&str>> = vec![
            vec!["SET", &tombstone, "4242", "NX"],
            vec!["INCR", &tombstone],
        ];
        if lose {
            commands.push(vec!["DEL", &tombstone]);
        }
        for command in commands {
            std::process::Command::new("redis-cli")
                .args(["-p", &port])
                .args(command)
                .output()
                .expect("redis-cli runs");
        }
    }
    n
}

static INVALIDATE_WHILE_COMPUTING: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);
static LOSE_TOMBSTONE_WHILE_COMPUTING: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// A miss on a key never seen stores its value with the generations it was read under (the key's
/// tombstone, the group's), which the lookup created before the body ran; the value then hits,
/// and invalidations of its key and of its group still make it a miss.
#[tokio::test]
async fn a_first_miss_stores_its_value_under_new_generations() {
    let _global = GLOBAL.lock().await;
    let redis = RegisteredRedis::start("redis-first-miss");
    FIRST_MISS_PORT.store(redis.server.port(), Ordering::SeqCst);
    let held = || HELD_WHILE_COMPUTING.lock().unwrap().clone();

    assert_eq!(first_miss(1).await, 1);
    assert_eq!(
        held(),
        "2",
        "the lookup created the key's and group's generations"
    );
    let stored = redis.server.cli(&["KEYS", "cache:*"]);
    let mut stored: Vec<&str> = stored.lines().collect();
    stored.sort_unstable();
    assert_eq!(
        stored,
        ["cache:g:fresh", "cache:k:fresh:1", "cache:t:fresh:1"],
        "the entry and the generations it was read under"
    );
    let tombstone_ttl: i64 = redis
        .server
        .cli(&["PTTL", "cache:t:fresh:1"])
        .parse()
        .unwrap();
    assert!(
        tombstone_ttl > 23 * 3_600_000,
        "the tombstone expires: {tombstone_ttl}"
    );
    assert_eq!(
        redis.server.cli(&["PTTL", "cache:g:fresh"]),
        "-1",
        "a group's lives"
    );
    assert_eq!(first_miss(1).await, 1);
    assert_eq!(FIRST_MISS_RUNS.load(Ordering::SeqCst), 1, "a hit");

    // A second key of the group: its lookup finds the group's generation, creates its tombstone.
    first_miss(2).await;
    assert_eq!(held(), "4");
    first_miss(2).await;
    assert_eq!(FIRST_MISS_RUNS.load(Ordering::SeqCst), 2, "a hit");

    first_miss_invalidate(1).await.unwrap();
    first_miss(1).await;
    assert_eq!(
        FIRST_MISS_RUNS.load(Ordering::SeqCst),
        3,
        "invalidated by key"
    );
    cache_runtime::invalidate_group("fresh").await.unwrap();
    first_miss(1).await;
    first_miss(2).await;
    assert_eq!(
        FIRST_MISS_RUNS.load(Ordering::SeqCst),
        5,
        "invalidated by group"
    );
    first_miss(1).await;
    first_miss(2).await;
    assert_eq!(FIRST_MISS_RUNS.load(Ordering::SeqCst), 5, "hits again");
}

/// A key invalidated by another process while its first miss computes (the invalidation creates
/// the tombstone the lookup found missing): the value stored is a miss, never a hit.
#[tokio::test]
async fn a_tombstone_created_while_the_first_miss_computes_makes_its_value_a_miss() {
    let _global = GLOBAL.lock().await;
    let redis = RegisteredRedis::start("redis-first-miss");
    FIRST_MISS_PORT.store(redis.server.port(), Ordering::SeqCst);
    let runs = || FIRST_MISS_RUNS.load(Ordering::SeqCst);
    let before = runs();
    INVALIDATE_WHILE_COMPUTING.store(true, Ordering::SeqCst);
    first_miss(10).await;
    assert_eq!(
        redis.server.cli(&["EXISTS", "cache:k:fresh:10"]),
        "1",
        "stored"
    );
    first_miss(10).await;
    assert_eq!(
        runs(),
        before + 2,
        "the value computed before the invalidation is a miss"
    );
    first_miss(10).await;
    assert_eq!(runs(), before + 2, "the value computed after it hits");
}

static COLD_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 600, backend = "redis-cold", key = "cold:{n}", group = "cold")]
async fn cold(n: u64) -> u64 {
    COLD_RUNS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    n
}

/// Concurrent first misses of a new key in one process run its body once: each lookup proposes
/// its own generations for the missing tombstone and group, and they still join one computation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_misses_of_a_new_key_run_the_body_once() {
    let _global = GLOBAL.lock().await;
    let _redis = RegisteredRedis::start("redis-cold");
    for n in 0..5 {
        let before = COLD_RUNS.load(Ordering::SeqCst);
        let calls: Vec<_> = (0..8).map(|_| tokio::spawn(cold(n))).collect();
        for call in calls {
            assert_eq!(call.await.unwrap(), n);
        }
        assert_eq!(COLD_RUNS.load(Ordering::SeqCst), before + 1, "key {n}");
        cold(n).await;
        assert_eq!(
            COLD_RUNS.load(Ordering::SeqCst),
            before + 1,
            "key {n}: a hit"
        );
    }
}

/// The same, with the tombstone lost after the invalidation and before the value is stored (an
/// eviction, a restart without persistence): the value computed before the invalidation is still
/// a miss, never brought back as a hit.
#[tokio::test]
async fn a_tombstone_lost_after_an_invalidation_during_a_miss_never_revives_its_value() {
    let _global = GLOBAL.lock().await;
    let redis = RegisteredRedis::start("redis-first-miss");
    FIRST_MISS_PORT.store(redis.server.port(), Ordering::SeqCst);
    let runs = || FIRST_MISS_RUNS.load(Ordering::SeqCst);
    for n in [20, 21] {
        if n == 21 {
            first_miss(n).await; // a key seen before: its tombstone exists
            first_miss_invalidate(n).await.unwrap();
        }
        let before = runs();
        LOSE_TOMBSTONE_WHILE_COMPUTING.store(true, Ordering::SeqCst);
        first_miss(n).await;
        assert_eq!(
            redis.server.cli(&["EXISTS", &format!("cache:k:fresh:{n}")]),
            "1"
        );
        first_miss(n).await;
        assert_eq!(
            runs(),
            before + 2,
            "key {n}: the value computed before the invalidation is a miss"
        );
        first_miss(n).await;
        assert_eq!(
            runs(),
            before + 2,
            "key {n}: the value computed after it hits"
        );
    }
}
