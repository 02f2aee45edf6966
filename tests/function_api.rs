//! `Cache<T>`, the function API: the same single-flight, invalidation and backends as the
//! attribute, for keys and values built at run time.

mod support;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use cache_runtime::Cache;
use serde::{Deserialize, Serialize};

const MINUTE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Price {
    cents: u64,
    currency: String,
}

fn price(cents: u64) -> Price {
    Price {
        cents,
        currency: "EUR".into(),
    }
}

/// Counts how often a computation ran.
#[derive(Clone, Default)]
struct Runs(Arc<AtomicUsize>);

impl Runs {
    fn tick(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

async fn exercise(cache: Cache<Price>, prefix: &str) {
    let runs = Runs::default();
    let key = format!("{prefix}:1");
    let compute = |cents| {
        let runs = runs.clone();
        move || async move {
            runs.tick();
            tokio::time::sleep(Duration::from_millis(50)).await;
            price(cents)
        }
    };
    assert_eq!(cache.get(&key).await, None, "nothing stored yet");
    // 16 concurrent callers of one key share one computation.
    let callers = (0..16).map(|_| cache.get_or_insert_with(&key, compute(100)));
    let values = futures_util::future::join_all(callers).await;
    assert!(values.iter().all(|v| *v == price(100)));
    assert_eq!(runs.count(), 1, "one computation for 16 concurrent callers");
    assert_eq!(
        cache.get_or_insert_with(&key, compute(200)).await,
        price(100)
    );
    assert_eq!(cache.get(&key).await, Some(price(100)));
    assert_eq!(runs.count(), 1);

    // Write-through, then invalidation by key (this handle, and the global fn with the string).
    cache.insert(&key, price(300)).await.unwrap();
    assert_eq!(cache.get(&key).await, Some(price(300)));
    cache.invalidate(&key).await.unwrap();
    assert_eq!(
        cache.get(&key).await,
        None,
        "invalidated through the handle"
    );
    cache.insert(&key, price(400)).await.unwrap();
    cache_runtime::invalidate_key(&key).await.unwrap();
    assert_eq!(cache.get(&key).await, None, "invalidated by its key string");

    // Groups.
    assert_eq!(
        cache.get_or_insert_with(&key, compute(500)).await,
        price(500)
    );
    assert_eq!(runs.count(), 2);
    cache_runtime::invalidate_group(&format!("{prefix}-group"))
        .await
        .unwrap();
    assert_eq!(
        cache.get_or_insert_with(&key, compute(600)).await,
        price(600)
    );
    assert_eq!(runs.count(), 3, "the group invalidation reached the entry");

    // Only Ok values are stored.
    let other = format!("{prefix}:2");
    let failed: Result<Price, String> = cache
        .try_get_or_insert_with(&other, || async { Err("down".to_owned()) })
        .await;
    assert_eq!(failed, Err("down".to_owned()));
    assert_eq!(cache.get(&other).await, None, "an Err is not stored");
    let ok: Result<Price, String> = cache
        .try_get_or_insert_with(&other, || async { Ok(price(700)) })
        .await;
    assert_eq!(ok, Ok(price(700)));
    assert_eq!(cache.get(&other).await, Some(price(700)));
}

/// Taken by the tests that invalidate process-wide and by the one whose private Redis goes away
/// when it ends: an invalidation that listed that backend just before it was unregistered would
/// otherwise reach a stopped server and fail.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn memory_cache_shares_computations_and_follows_invalidations() {
    let _serial = SERIAL.lock().await;
    let cache = Cache::new("prices-memory", MINUTE).group("fn-memory-group");
    exercise(cache, "fn-memory").await;
}

#[tokio::test]
async fn redis_cache_shares_computations_and_follows_invalidations() {
    let _serial = SERIAL.lock().await;
    let redis = support::RegisteredRedis::start("redis-function-api");
    let cache = Cache::new("prices-redis", MINUTE)
        .backend(redis.name)
        .group("fn-redis-group");
    exercise(cache.clone(), "fn-redis").await;
    // Another handle on the same backend (another process would be the same) reads the entry.
    cache.insert("fn-redis:shared", price(800)).await.unwrap();
    let other: Cache<Price> = Cache::new("prices-redis-other", MINUTE)
        .backend(redis.name)
        .group("fn-redis-group");
    assert_eq!(other.get("fn-redis:shared").await, Some(price(800)));
    assert!(redis.server.cli(&["DBSIZE"]).parse::<u32>().unwrap() >= 1);
}

#[tokio::test]
async fn entries_expire_after_the_ttl() {
    let cache: Cache<u64> = Cache::new("short-lived", Duration::from_millis(200));
    let runs = Runs::default();
    let make = || {
        let runs = runs.clone();
        move || async move {
            runs.tick();
            7
        }
    };
    cache.get_or_insert_with("short", make()).await;
    cache.get_or_insert_with("short", make()).await;
    assert_eq!(runs.count(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cache.get("short").await, None);
    cache.get_or_insert_with("short", make()).await;
    assert_eq!(runs.count(), 2, "computed again after the TTL");
}

#[tokio::test]
async fn a_zero_ttl_stores_nothing() {
    let cache: Cache<u64> = Cache::new("never-kept", Duration::ZERO);
    let runs = Runs::default();
    for _ in 0..3 {
        let runs = runs.clone();
        cache
            .get_or_insert_with("k", move || async move {
                runs.tick();
                1
            })
            .await;
    }
    cache.insert("k", 2).await.unwrap();
    assert_eq!(runs.count(), 3);
    assert_eq!(cache.get("k").await, None);
}

#[tokio::test]
async fn stale_values_are_served_while_one_call_refreshes() {
    let cache: Cache<u64> =
        Cache::new("stale-served", Duration::from_millis(100)).stale(Duration::from_secs(30));
    cache.insert("s", 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let runs = Runs::default();
    let refresh = |value| {
        let runs = runs.clone();
        move || async move {
            runs.tick();
            tokio::time::sleep(Duration::from_millis(300)).await;
            value
        }
    };
    // The call that finds the value stale refreshes it (its closure may borrow: it runs in
    // place); a concurrent caller is answered at once with the stale value.
    let refreshing = cache.get_or_insert_with("s", refresh(2));
    let concurrent = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        let value = cache.get_or_insert_with("s", refresh(3)).await;
        (value, started.elapsed())
    };
    let (refreshed, (stale, waited)) = tokio::join!(refreshing, concurrent);
    assert_eq!(refreshed, 2);
    assert_eq!(stale, 1, "the stale value, at once");
    assert!(
        waited < Duration::from_millis(200),
        "did not wait: {waited:?}"
    );
    assert_eq!(runs.count(), 1);
    assert_eq!(cache.get("s").await, Some(2), "refreshed");
}

#[tokio::test]
async fn a_computation_running_during_an_insert_does_not_overwrite_it() {
    let cache: Cache<u64> = Cache::new("write-through", MINUTE);
    let slow_old = cache.get_or_insert_with("w", || async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        1 // computed from data the update below replaced
    });
    let update = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        cache.insert("w", 2).await.unwrap();
    };
    let (old, ()) = tokio::join!(slow_old, update);
    assert_eq!(
        old, 1,
        "the running computation returns its own value to its caller"
    );
    assert_eq!(
        cache.get("w").await,
        Some(2),
        "but the inserted value stays"
    );
}
