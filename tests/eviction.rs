//! Redis run as a cache (`maxmemory` with an `allkeys-*` policy) may evict any key. Losing a key
//! must cost a miss, never bring back a value that was invalidated.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};

use cache_runtime::cached;
use support::RegisteredRedis;

/// Both tests invalidate through the process-wide functions: one at a time.
static GLOBAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

static LOST_RUNS: AtomicU64 = AtomicU64::new(0);

#[cached(
    ttl = 600,
    backend = "evict-lost",
    key = "lost:{n}",
    group = "lost-group"
)]
async fn lost(n: u64) -> u64 {
    LOST_RUNS.fetch_add(1, Ordering::SeqCst) * 1000 + n
}

#[tokio::test]
async fn a_deleted_group_generation_never_revives_an_invalidated_entry() {
    let _global = GLOBAL.lock().await;
    let redis = RegisteredRedis::start("evict-lost");
    let before = lost(1).await;
    assert_eq!(lost(1).await, before, "cached");
    cache_runtime::invalidate_group("lost-group").await.unwrap();
    // The generation key disappears (evicted, or deleted by hand): the entry is still there.
    assert_eq!(redis.server.cli(&["DEL", "cache:g:lost-group"]), "1");
    assert_eq!(redis.server.cli(&["EXISTS", "cache:k:lost:1"]), "1");
    let after = lost(1).await;
    assert_ne!(
        after, before,
        "an entry invalidated by its group came back once the group's generation was lost"
    );
    assert_eq!(lost(1).await, after, "the recomputed value is cached again");
}

static EVICTED_RUNS: AtomicU64 = AtomicU64::new(0);

#[cached(
    ttl = 600,
    backend = "evict-real",
    key = "item:{n}",
    group = "item-group:{n}"
)]
async fn item(n: u64) -> u64 {
    EVICTED_RUNS.fetch_add(1, Ordering::SeqCst) * 10_000 + n
}

/// A real eviction: a server with a small `maxmemory` and `allkeys-random` evicts entries and
/// generations alike while junk is written; afterwards no call returns a value computed before its
/// group was invalidated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_evictions_under_allkeys_random_cost_misses_never_revivals() {
    let _global = GLOBAL.lock().await;
    let redis = RegisteredRedis::start("evict-real");
    const ITEMS: u64 = 400;
    let mut old = Vec::new();
    for n in 0..ITEMS {
        old.push(item(n).await);
    }
    for n in 0..ITEMS {
        cache_runtime::invalidate_group(&format!("item-group:{n}"))
            .await
            .unwrap();
    }
    let used: u64 = redis
        .server
        .cli(&["INFO", "memory"])
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory in INFO");
    redis
        .server
        .cli(&["CONFIG", "SET", "maxmemory-policy", "allkeys-random"]);
    redis.server.cli(&[
        "CONFIG",
        "SET",
        "maxmemory",
        &(used + 256 * 1024).to_string(),
    ]);
    let client = redis::Client::open(redis.server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let junk = "x".repeat(1024);
    // Write junk until evictions have hit enough generations whose entry survived (the cases that
    // matter), counting them after every batch.
    let mut revivable = 0;
    for batch in 0..100u32 {
        let mut pipe = redis::pipe();
        for i in 0..100u32 {
            pipe.cmd("SET")
                .arg(format!("junk:{batch}:{i}"))
                .arg(&junk)
                .ignore();
        }
        let _: () = pipe.query_async(&mut conn).await.unwrap();
        let mut exists = redis::pipe();
        for n in 0..ITEMS {
            exists.cmd("EXISTS").arg(format!("cache:k:item:{n}"));
            exists.cmd("EXISTS").arg(format!("cache:g:item-group:{n}"));
        }
        let found: Vec<u8> = exists.query_async(&mut conn).await.unwrap();
        revivable = found.chunks(2).filter(|pair| pair == &[1, 0]).count();
        if revivable >= 10 {
            break;
        }
    }
    assert!(
        revivable > 0,
        "the eviction hit no generation whose entry survived: the test proves nothing"
    );
    let mut revived = Vec::new();
    for n in 0..ITEMS {
        if item(n).await == old[n as usize] {
            revived.push(n);
        }
    }
    assert!(
        revived.is_empty(),
        "{} of {revivable} entries whose generation was evicted came back after invalidation: {revived:?}",
        revived.len()
    );
}

static TOMBSTONE_RUNS: AtomicU64 = AtomicU64::new(0);

#[cached(ttl = 600, backend = "evict-tombstone", key = "tomb:{n}")]
async fn tombstoned(n: u64) -> u64 {
    TOMBSTONE_RUNS.fetch_add(1, Ordering::SeqCst) * 1000 + n
}

/// A value stored late (computed before another process's key invalidation, written after it)
/// recorded the old tombstone; losing the tombstone afterwards must not make it valid again.
#[tokio::test]
async fn a_lost_tombstone_never_revives_a_late_stored_value() {
    let _global = GLOBAL.lock().await;
    let redis = RegisteredRedis::start("evict-tombstone");
    let late = tombstoned(1).await; // stored under the tombstone it read
                                    // Another process invalidates the key after that read: the tombstone moves (the entry, written
                                    // after the delete, is still there)...
    redis.server.cli(&["INCR", "cache:t:tomb:1"]);
    // ...then the tombstone is evicted, before anyone read the key again.
    assert_eq!(redis.server.cli(&["DEL", "cache:t:tomb:1"]), "1");
    assert_ne!(
        tombstoned(1).await,
        late,
        "a value made stale by its key's tombstone came back once the tombstone was lost"
    );
}
