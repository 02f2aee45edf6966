//! Invalidations are never lost: not to an open breaker, not to a stalled or restarted Redis, not
//! to a worker configured only with `REDIS_CLUSTER_NODES`.

mod support;

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use cache_runtime::cached;
use support::{RedisCluster, RegisteredRedis};

/// The tests invalidate through the process-wide functions: one at a time.
static GLOBAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The "database": what the body reads.
static PAUSED_SOURCE: AtomicU64 = AtomicU64::new(1);

#[cached(ttl = 600, backend = "lost-paused", key = "paused:{n}")]
async fn paused_value(n: u64) -> u64 {
    PAUSED_SOURCE.load(Ordering::SeqCst) * 100 + n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_during_a_stall_that_opened_the_breaker_is_applied_before_any_hit() {
    let _global = GLOBAL.lock().await;
    let redis = RegisteredRedis::start("lost-paused");
    assert_eq!(paused_value(1).await, 101);
    assert_eq!(paused_value(1).await, 101, "cached");
    // Redis stalls: calls time out and the breaker opens.
    redis.server.cli(&["CLIENT", "PAUSE", "1500", "ALL"]);
    let stalled = Instant::now();
    for _ in 0..4 {
        assert_eq!(
            paused_value(1).await,
            101,
            "the body ran: the source is unchanged"
        );
    }
    // The data changes and the writer invalidates: the stalled Redis cannot answer in time.
    PAUSED_SOURCE.store(2, Ordering::SeqCst);
    let invalidated = cache_runtime::invalidate_key("paused:1").await;
    assert!(
        invalidated.is_err(),
        "Redis is stalled: the invalidation cannot have reached it"
    );
    // From now on, whatever Redis does, no call may return the old value.
    let deadline = stalled + Duration::from_secs(4);
    while Instant::now() < deadline {
        assert_eq!(
            paused_value(1).await,
            201,
            "an invalidation made while the breaker was open was lost: the old value came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

static RESTART_SOURCE: AtomicU64 = AtomicU64::new(1);

#[cached(
    ttl = 600,
    backend = "lost-restart",
    key = "restart:{n}",
    group = "restarts"
)]
async fn restart_value(n: u64) -> u64 {
    RESTART_SOURCE.load(Ordering::SeqCst) * 100 + n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_while_redis_is_down_holds_after_it_restarts_with_its_old_data() {
    let _global = GLOBAL.lock().await;
    let mut redis = RegisteredRedis::start("lost-restart");
    assert_eq!(restart_value(1).await, 101);
    assert_eq!(restart_value(2).await, 102);
    // Persist the data (the old values and generations), then crash.
    assert_eq!(redis.server.cli(&["SAVE"]), "OK");
    redis.server.kill();
    RESTART_SOURCE.store(2, Ordering::SeqCst);
    assert!(cache_runtime::invalidate_key("restart:1").await.is_err());
    assert!(cache_runtime::invalidate_group("restarts").await.is_err());
    // Redis comes back with the data it saved: the old entries are there again.
    redis.server.restart();
    assert_eq!(redis.server.cli(&["EXISTS", "cache:k:restart:1"]), "1");
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        assert_eq!(restart_value(1).await, 201, "the key invalidation was lost");
        assert_eq!(
            restart_value(2).await,
            202,
            "the group invalidation was lost"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The pending invalidations were applied, and Redis is used again: it holds the new values.
    let deadline = Instant::now() + Duration::from_secs(5);
    for (key, value) in [("cache:k:restart:1", "201"), ("cache:k:restart:2", "202")] {
        while !redis.server.cli(&["GET", key]).ends_with(value) {
            assert!(
                Instant::now() < deadline,
                "Redis never used again for {key}"
            );
            restart_value(1).await;
            restart_value(2).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn a_worker_configured_with_cluster_nodes_only_invalidates_the_cluster() {
    let _global = GLOBAL.lock().await;
    let cluster = RedisCluster::start(3);
    let nodes = cluster.urls().join(",");
    support::run_child(
        &["none", "invalidate", "cluster-only-group"],
        &[("REDIS_CLUSTER_NODES", &nodes)],
        &["REDIS_URL"],
    );
    assert_ne!(
        cluster.cli_any(&["GET", "cache:g:cluster-only-group"]),
        "",
        "invalidate_group returned Ok without touching the cluster named by REDIS_CLUSTER_NODES"
    );
}

/// A store whose deletes take a while (a slow network): the caller of an invalidation may go away
/// before it finishes (a dropped request, a timeout around the call).
#[derive(Default)]
struct SlowDeletes {
    entries: std::sync::Mutex<std::collections::HashMap<String, Vec<u8>>>,
}

#[cache_runtime::async_trait]
impl cache_runtime::Backend for SlowDeletes {
    async fn get(
        &self,
        key: &str,
        groups: &[String],
    ) -> Result<cache_runtime::Lookup, cache_runtime::BackendError> {
        Ok(cache_runtime::Lookup {
            value: self.entries.lock().unwrap().get(key).cloned(),
            generations: vec![0; groups.len()],
        })
    }
    async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        _: Duration,
        _: &[String],
    ) -> Result<(), cache_runtime::BackendError> {
        self.entries.lock().unwrap().insert(key.to_owned(), value);
        Ok(())
    }
    async fn delete(&self, key: &str) -> Result<(), cache_runtime::BackendError> {
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.entries.lock().unwrap().remove(key);
        Ok(())
    }
    async fn invalidate_group(&self, _: &str) -> Result<(), cache_runtime::BackendError> {
        Ok(())
    }
    async fn clear(&self) -> Result<(), cache_runtime::BackendError> {
        Ok(())
    }
}

static SLOW_SOURCE: AtomicU64 = AtomicU64::new(1);

#[cached(ttl = 600, backend = "lost-slow", key = "slow:{n}")]
async fn slow_deleted(n: u64) -> u64 {
    SLOW_SOURCE.load(Ordering::SeqCst) * 100 + n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_whose_caller_goes_away_is_still_carried_out() {
    let _global = GLOBAL.lock().await;
    cache_runtime::register("lost-slow", SlowDeletes::default());
    assert_eq!(slow_deleted(1).await, 101);
    SLOW_SOURCE.store(2, Ordering::SeqCst);
    // The caller gives up after 20 ms, in the middle of the delete.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(20),
        cache_runtime::invalidate_key("slow:1"),
    )
    .await;
    assert!(gave_up.is_err(), "the delete takes 100 ms");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        slow_deleted(1).await,
        201,
        "an invalidation whose caller went away was dropped half-way: the old value stayed"
    );
    cache_runtime::unregister("lost-slow");
}
