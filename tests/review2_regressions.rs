//! Regressions found by the review of the codecs / sealing / tiered-tracking merge (each probe
//! failed before its fix): a planted, deeply nested MessagePack entry aborted the process with a
//! stack overflow; a read racing `TieredBackend::clear` left the cleared value in the local tier.
//! Private redis-servers only (tests/support), never the shared instance.

mod support;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use cache_runtime::{
    Backend, Cache, Codec, MemoryBackend, Protection, RedisBackend, TieredBackend,
};
use support::RedisServer;

/// Where the payload starts in a format-2 envelope (see envelope.rs).
fn payload_at(raw: &[u8]) -> usize {
    39 + 8 * usize::from(u16::from_le_bytes([raw[37], raw[38]]))
}

fn redis_store(name: &'static str, codec: Codec) -> (RedisServer, Arc<dyn Backend>) {
    let server = RedisServer::start();
    let backend: Arc<dyn Backend> = Arc::new(RedisBackend::open(&server.url()).unwrap());
    cache_runtime::register_arc_with(
        name,
        Arc::clone(&backend),
        Protection::default().codec(codec),
    );
    (server, backend)
}

/// A hostile (unsealed) entry whose MessagePack payload nests 1,000 arrays deep (under rmp-serde's
/// depth limit of 1024), read on a tokio worker (2 MiB stack): must be a miss or a value, never a
/// crash (before the fix, depth 700 already aborted the test binary in a debug build). Decoding
/// now stops at depth 128, as serde_json does: a miss, recomputed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_deeply_nested_msgpack_entry_is_a_miss_not_a_crash() {
    let name = "r2-deep";
    let (_server, backend) = redis_store(name, Codec::MessagePack);
    let cache: Cache<serde_json::Value> =
        Cache::new("r2-deep", Duration::from_secs(60)).backend(name);
    let first = cache
        .get_or_insert_with("k", || async { serde_json::json!([1]) })
        .await;
    assert_eq!(first, serde_json::json!([1]));
    let raw = backend.get("k", &[]).await.unwrap().value.unwrap();
    let mut hostile = raw[..payload_at(&raw)].to_vec();
    let depth = std::env::var("R2_DEPTH")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(1000usize);
    hostile.extend(std::iter::repeat_n(0x91u8, depth)); // fixarray of 1, nested
    hostile.push(0xc0); // nil
    backend
        .set("k", hostile, Duration::from_secs(60), &[])
        .await
        .unwrap();
    let cache2 = cache.clone();
    let got = tokio::spawn(async move {
        cache2
            .get_or_insert_with("k", || async { serde_json::json!("recomputed") })
            .await
    })
    .await
    .expect("the call task did not panic");
    assert_eq!(
        got,
        serde_json::json!("recomputed"),
        "an entry nested {depth} deep is a miss"
    );
    cache_runtime::unregister(name);
}

/// `TieredBackend::clear` empties the local tier before the Redis clear, but not after it (unlike
/// `delete` and `invalidate_group`, which apply their local part before and after). A read that
/// started after the local clear and reached Redis before the `UNLINK` copies the old value into
/// the local tier after `clear()` returned `Ok`: until the feed's report arrives, the process serves
/// a value its own acknowledged clear removed.
///
/// The server runs the feed in pub/sub mode (`CLIENT` renamed away, so tracking is refused); a
/// `DEBUG SLEEP` holds the server so that the lookup is queued between the `SCAN` and the `UNLINK`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_tiered_clear_then_read_serves_old_value() {
    let server = RedisServer::start_with(&[
        "--rename-command",
        "CLIENT",
        "",
        "--enable-debug-command",
        "yes",
    ]);
    clear_race(server, "r2-tiered-clear").await;
}

/// The same with key tracking (the default on one node): the `UNLINK` report usually arrives
/// before the clear's final `PUBLISH` returns, but nothing orders the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_tiered_clear_then_read_serves_old_value_tracking() {
    let server = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    clear_race(server, "r2-tiered-clear-track").await;
}

async fn clear_race(server: RedisServer, name: &'static str) {
    let tiered = Arc::new(TieredBackend::new(
        RedisBackend::open(&server.url()).unwrap(),
        MemoryBackend::with_limits(1_000, 1 << 20),
    ));
    cache_runtime::register_arc(name, tiered.clone());
    let cache: Cache<u64> = Cache::new("r2-clr", Duration::from_secs(60)).backend(name);
    cache.get_or_insert_with("warm", || async { 0 }).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !tiered.is_subscribed() {
        assert!(Instant::now() < deadline, "feed never live");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let port = server.port();
    let mut violations = Vec::new();
    let rounds = 12u64;
    for i in 0..rounds {
        let key = format!("k{i}");
        let old = 1_000 + i;
        assert_eq!(
            cache.get_or_insert_with(&key, || async move { old }).await,
            old
        );
        // Nothing of `key` in the local tier: the leader stored in Redis only.
        let sleeper = std::thread::spawn(move || {
            std::process::Command::new("redis-cli")
                .args(["-p", &port.to_string(), "DEBUG", "SLEEP", "0.15"])
                .output()
                .unwrap();
        });
        tokio::time::sleep(Duration::from_millis(40)).await;
        let clearing = {
            let tiered = tiered.clone();
            tokio::spawn(async move { tiered.clear().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let reader = {
            let cache = cache.clone();
            let key = key.clone();
            tokio::spawn(async move {
                cache
                    .get_or_insert_with(&key, || async move { 2_000 + i })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        clearing.await.unwrap().expect("clear acknowledged");
        // The reader started before the clear returned: whatever it got is its business. Waited
        // for, so that the next call cannot join its flight.
        let _ = reader.await;
        let in_local = tiered.local().entry_count_now();
        // The clear was acknowledged: no call that starts now may return the old value.
        let after = cache
            .get_or_insert_with(&key, || async move { 3_000 + i })
            .await;
        sleeper.join().unwrap();
        eprintln!("round {i}: after = {after}, local entries before it: {in_local}");
        if after == old {
            violations.push(i);
        }
    }
    cache_runtime::unregister(name);
    assert!(
        violations.is_empty(),
        "a call started after TieredBackend::clear() returned Ok served the cleared value in \
         rounds {violations:?} of {rounds}"
    );
}
