//! Huge TTLs are clamped to 2^31 s (RFC 9111 §1.2.2), never overflowed, truncated or sent to a
//! store as an out-of-range expiry.

mod support;

use std::time::Duration;

use axum::{extract::Path, http::header, response::IntoResponse, routing::get, Router};
use cache_runtime::{http::CacheLayer, Backend, FileBackend, RedisBackend};
use support::{http::TestServer, RedisServer};

/// 2^31 seconds, in milliseconds.
const MAX_TTL_MS: u64 = (1u64 << 31) * 1000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn redis_accepts_any_ttl_and_keeps_at_most_two_to_the_31_seconds() {
    let server = RedisServer::start();
    let redis = RedisBackend::open(&server.url()).unwrap();
    for (key, ttl) in [
        ("max", Duration::MAX),
        ("u64", Duration::from_secs(u64::MAX)),
        ("ms", Duration::from_millis(u64::MAX)),
        ("big", Duration::from_secs(99_999_999_999)),
    ] {
        redis
            .set(key, b"v".to_vec(), ttl, &[])
            .await
            .unwrap_or_else(|e| panic!("set {key} with {ttl:?}: {e}"));
        let found = redis.get(key, &[]).await.unwrap().value;
        assert_eq!(found.as_deref(), Some(&b"v"[..]), "{key}");
        let lock = redis
            .try_lock(key, 7, ttl)
            .await
            .unwrap_or_else(|e| panic!("try_lock {key} with {ttl:?}: {e}"));
        assert!(lock, "{key}: the lock is free");
    }
    let pttls: Vec<u64> = server
        .cli(&["--scan"])
        .lines()
        .map(|key| server.cli(&["PTTL", key]).trim().parse::<u64>().unwrap())
        .collect();
    assert!(!pttls.is_empty());
    for pttl in pttls {
        assert!(pttl <= MAX_TTL_MS, "PTTL {pttl} over 2^31 s");
        assert!(
            pttl > MAX_TTL_MS - 60_000,
            "PTTL {pttl} was clamped, not cut"
        );
    }
}

#[tokio::test]
async fn file_backend_expiry_is_clamped() {
    let dir = tempfile::tempdir().unwrap();
    let file = FileBackend::new(dir.path());
    file.set("k", b"v".to_vec(), Duration::MAX, &[])
        .await
        .unwrap();
    let expires = entry_expiries(dir.path());
    assert_eq!(expires.len(), 1);
    let left = expires[0].saturating_sub(now_ms());
    assert!(left <= MAX_TTL_MS, "expires in {left} ms");
    assert!(left > MAX_TTL_MS - 60_000, "expires in {left} ms");
}

/// The expiry (ms since the epoch) at the head of every entry file under `root`.
fn entry_expiries(root: &std::path::Path) -> Vec<u64> {
    let mut expiries = Vec::new();
    for shard in std::fs::read_dir(root.join("entries")).unwrap() {
        for file in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let bytes = std::fs::read(file.unwrap().path()).unwrap();
            expiries.push(u64::from_le_bytes(bytes[..8].try_into().unwrap()));
        }
    }
    expiries
}

async fn huge(Path(kind): Path<String>) -> impl IntoResponse {
    let cc = match kind.as_str() {
        // Fits in a u64 of seconds, but far beyond 2^31 s.
        "big" => "max-age=99999999999",
        // Does not fit in a u64 at all: still a very long freshness, never "stale".
        "overflow" => "max-age=99999999999999999999",
        // Fits in a u64 of seconds, but not once counted in milliseconds.
        "ms-overflow" => "max-age=18446744073709552",
        _ => "max-age=60",
    };
    ([(header::CACHE_CONTROL, cc)], kind)
}

#[tokio::test]
async fn layer_treats_huge_max_age_as_two_to_the_31_seconds() {
    let dir = tempfile::tempdir().unwrap();
    cache_runtime::register("file-huge-ttl", FileBackend::new(dir.path()));
    let app = Router::new()
        .route("/h/{kind}", get(huge))
        .layer(CacheLayer::new().backend("file-huge-ttl"));
    let server = TestServer::start(app).await;
    for kind in ["big", "overflow", "ms-overflow"] {
        let _ = std::fs::remove_dir_all(dir.path().join("entries"));
        let path = format!("/h/{kind}");
        let first = server.get(&path).await;
        let second = server.get(&path).await;
        assert_eq!(first.body, kind);
        assert_eq!(
            (first.header("x-cache"), second.header("x-cache")),
            (Some("MISS"), Some("HIT")),
            "{kind}: stored and then served"
        );
        let now = now_ms();
        for expires in entry_expiries(dir.path()) {
            let left = expires.saturating_sub(now);
            assert!(left <= MAX_TTL_MS, "{kind}: file expires in {left} ms");
            assert!(
                left > MAX_TTL_MS - 60_000,
                "{kind}: file expires in {left} ms"
            );
        }
    }
}
