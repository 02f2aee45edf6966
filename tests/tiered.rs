//! Two tiers: a local tier in front of Redis, invalidated across processes (by key tracking on a
//! single node).

mod support;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use cache_runtime::{cached, MemoryBackend, Protection, RedisBackend, TieredBackend};
use support::RedisServer;

static RUNS: AtomicU64 = AtomicU64::new(0);

#[cached(ttl = 60, backend = "tiered-test", key = "t:{n}", group = "tgroup")]
async fn tiered_value(n: u64) -> u64 {
    RUNS.fetch_add(1, Ordering::SeqCst) * 1000 + n
}

fn runs() -> u64 {
    RUNS.load(Ordering::SeqCst)
}

async fn wait_until(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Calls until the value is served by the local tier: the body ran once, and a call reads nothing
/// from Redis. (Removing the Redis copy would not do: Redis reports that write, and the local copy
/// goes with it.)
async fn only_in_local_tier(server: &RedisServer, n: u64) -> u64 {
    for _ in 0..100 {
        let (reads, before) = (server.reads(), runs());
        let value = tiered_value(n).await;
        if server.reads() == reads && runs() == before {
            return value;
        }
        // A first copy may be dropped by the report of this process's own store.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("never served by the local tier");
}

fn invalidate_from_another_process(server: &RedisServer, action: &str, target: &str) {
    support::run_child(
        &["redis", action, target],
        &[("REDIS_URL", &server.url())],
        &[],
    );
}

/// Polls until a call runs the body; returns how long that took.
async fn time_until_recomputed(n: u64) -> Duration {
    let started = Instant::now();
    let before = runs();
    while runs() == before {
        tiered_value(n).await;
        if started.elapsed() > Duration::from_secs(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_invalidation_reaches_the_local_tier_within_100ms() {
    let mut server = RedisServer::start();
    let tiered = Arc::new(TieredBackend::new(
        RedisBackend::open(&server.url()).unwrap(),
        MemoryBackend::with_limits(1_000, 1 << 20),
    ));
    cache_runtime::register_arc("tiered-test", tiered.clone());
    tiered_value(0).await; // starts the subscriber
    wait_until(Duration::from_secs(3), "the subscription", || {
        tiered.is_subscribed()
    })
    .await;

    // Group invalidation from another process.
    let old = only_in_local_tier(&server, 1).await;
    invalidate_from_another_process(&server, "invalidate", "tgroup");
    let took = time_until_recomputed(1).await;
    assert!(took < Duration::from_millis(100), "seen after {took:?}");
    assert_ne!(tiered_value(1).await, old);

    // Key invalidation from another process.
    let old = only_in_local_tier(&server, 2).await;
    invalidate_from_another_process(&server, "invalidate-key", "t:2");
    let took = time_until_recomputed(2).await;
    assert!(took < Duration::from_millis(100), "seen after {took:?}");
    assert_ne!(tiered_value(2).await, old);

    // A lost subscription turns the local tier off (and empties it): no stale local value.
    let old = only_in_local_tier(&server, 3).await;
    server.kill();
    wait_until(Duration::from_secs(2), "the subscription to drop", || {
        !tiered.is_subscribed()
    })
    .await;
    assert_ne!(
        tiered_value(3).await,
        old,
        "the local tier is not used without its subscription"
    );
    server.restart();
    wait_until(Duration::from_secs(5), "the subscription to return", || {
        tiered.is_subscribed()
    })
    .await;
    assert_eq!(
        tiered.local().entry_count_now(),
        0,
        "emptied on resubscription"
    );
    only_in_local_tier(&server, 4).await;
}

static DEFAULT_RUNS: AtomicU64 = AtomicU64::new(0);

/// A default key: the local tier keeps its copy under the call's text, reached by the key string.
#[cached(ttl = 60, backend = "tiered-default")]
async fn tiered_default(n: u64) -> u64 {
    DEFAULT_RUNS.fetch_add(1, Ordering::SeqCst) * 1000 + n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_invalidations_reach_local_copies_of_default_keys() {
    let server = RedisServer::start();
    let tiered = Arc::new(TieredBackend::new(
        RedisBackend::open(&server.url()).unwrap(),
        MemoryBackend::with_limits(1_000, 1 << 20),
    ));
    cache_runtime::register_arc("tiered-default", tiered.clone());
    tiered_default(0).await; // starts the subscriber
    wait_until(Duration::from_secs(3), "the subscription", || {
        tiered.is_subscribed()
    })
    .await;
    let runs = || DEFAULT_RUNS.load(Ordering::SeqCst);
    // Served by the local tier: no body run, no Redis read.
    let local_copy = || async {
        for _ in 0..100 {
            let (reads, before) = (server.reads(), runs());
            let value = tiered_default(5).await;
            if server.reads() == reads && runs() == before {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("never served by the local tier");
    };

    // From another process, by the key string.
    let old = local_copy().await;
    invalidate_from_another_process(&server, "invalidate-key", &tiered_default_key(5));
    let deadline = Instant::now() + Duration::from_millis(500);
    while tiered_default(5).await == old {
        assert!(
            Instant::now() < deadline,
            "the old value outlived its invalidation"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    // From this process.
    let old = local_copy().await;
    tiered_default_invalidate(5).await.unwrap();
    assert_ne!(tiered_default(5).await, old);
}

static DENIED_RUNS: AtomicU64 = AtomicU64::new(0);

#[cached(ttl = 60, backend = "tiered-denied", key = "d:{n}")]
async fn denied_value(n: u64) -> u64 {
    DENIED_RUNS.fetch_add(1, Ordering::SeqCst) * 1000 + n
}

/// An invalidation that times out (Redis holds writes with `CLIENT PAUSE .. WRITE`; the backend's
/// 100 ms timeout cancels each attempt before the connection's own 200 ms reply timeout) is kept
/// pending. A call made during its last attempt reads the old value from Redis (nothing blocks it
/// yet, and reads go on): the copy it leaves in the local tier must not be served once the
/// invalidation has returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_invalidation_leaves_no_local_copy_read_while_it_was_tried() {
    let server = RedisServer::start();
    let tiered = Arc::new(TieredBackend::new(
        RedisBackend::open(&server.url()).unwrap(),
        MemoryBackend::with_limits(1_000, 1 << 20),
    ));
    cache_runtime::register_arc_with(
        "tiered-denied",
        tiered.clone(),
        Protection::default().timeout(Duration::from_millis(100)),
    );
    denied_value(0).await; // starts the subscriber
    wait_until(Duration::from_secs(3), "the subscription", || {
        tiered.is_subscribed()
    })
    .await;
    let runs = || DENIED_RUNS.load(Ordering::SeqCst);
    // The call must land in the last attempt's window (about 125 to 225 ms in); on a loaded
    // machine it may miss it, so the scene is played on fresh keys until one call lands.
    let mut landed = false;
    for n in 1..=5 {
        let stored = format!("cache:k:d:{n}");
        let old = denied_value(n).await;
        wait_until(Duration::from_secs(2), "the value in Redis", || {
            server.cli(&["EXISTS", &stored]) == "1"
        })
        .await;
        let before = runs();
        assert_eq!(denied_value(n).await, old);
        assert_eq!(runs(), before, "served from the cache before the test");

        // Two attempts of 100 ms with 25 ms between them.
        server.cli(&["CLIENT", "PAUSE", "800", "WRITE"]);
        let invalidation = tokio::spawn(denied_value_invalidate(n));
        tokio::time::sleep(Duration::from_millis(165)).await;
        let during = denied_value(n).await;
        let result = invalidation.await.unwrap();
        let after = denied_value(n).await;
        assert!(result.is_err(), "the invalidation timed out");
        assert_ne!(
            after, old,
            "old value served after its invalidation returned"
        );
        landed |= during == old; // read from Redis while the invalidation was tried
                                 // The pending invalidation is applied in the background once the pause ends.
        wait_until(Duration::from_secs(3), "the pending invalidation", || {
            server.cli(&["EXISTS", &stored]) == "0"
        })
        .await;
        if landed {
            break;
        }
    }
    assert!(
        landed,
        "no call read Redis while the invalidation was tried"
    );
}
