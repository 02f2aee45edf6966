//! `ttl_from`: each value sets its own entry's TTL (a token that expires, an upstream `max-age`),
//! bounded by the fn's `ttl`; zero stores nothing. On memory, on a private Redis and through the
//! function API, counting how often each body ran.

mod support;

use std::{
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
    time::Duration,
};

use cache_runtime::{cached, Cache};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Token {
    id: u64,
    issued: usize,
    lifetime_ms: u64,
}

fn token_lifetime(token: &Token) -> Duration {
    Duration::from_millis(token.lifetime_ms)
}

static TOKEN_RUNS: AtomicUsize = AtomicUsize::new(0);

/// The lifetime each issued token gets, in ms, by id (set by the tests).
fn lifetime_of(id: u64) -> u64 {
    match id {
        1 => 300,       // short: expires long before the fn's ttl
        2 => 3_600_000, // longer than the fn's ttl: the ttl wins
        _ => 0,         // zero: never stored
    }
}

#[cached(ttl = "1500ms", key = "token:{id}", ttl_from = token_lifetime)]
async fn token(id: u64) -> Token {
    let issued = TOKEN_RUNS.fetch_add(1, Ordering::SeqCst) + 1;
    Token {
        id,
        issued,
        lifetime_ms: lifetime_of(id),
    }
}

#[tokio::test]
async fn each_value_lives_for_its_own_ttl_at_most_the_fns() {
    let short = token(1).await;
    let long = token(2).await;
    assert_eq!(token(1).await, short, "fresh within its own lifetime");
    assert_eq!(token(2).await, long);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_ne!(
        token(1).await.issued,
        short.issued,
        "expired after its 300 ms"
    );
    assert_eq!(
        token(2).await,
        long,
        "still fresh: the fn's 1.5 s bound has not passed"
    );
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert_ne!(
        token(2).await.issued,
        long.issued,
        "an hour asked for, but the fn's ttl (1.5 s) bounds it"
    );
}

#[tokio::test]
async fn a_zero_ttl_value_is_returned_but_never_stored() {
    let first = token(7).await;
    let second = token(7).await;
    assert_eq!(first.id, 7);
    assert_ne!(first.issued, second.issued, "the body ran for both calls");
    assert_eq!(token_peek(7).await, None);
}

static LEASE_RUNS: AtomicUsize = AtomicUsize::new(0);
static LEASE_MS: AtomicU64 = AtomicU64::new(0);

/// A `Result`: `ttl_from` sees the `Ok` value; written as a closure.
#[cached(
    ttl = 60,
    key = "lease:{id}",
    ttl_from = |lease: &u64| Duration::from_millis(*lease)
)]
async fn lease(id: u64) -> Result<u64, String> {
    LEASE_RUNS.fetch_add(1, Ordering::SeqCst);
    if id == 0 {
        return Err("no lease 0".into());
    }
    Ok(LEASE_MS.load(Ordering::SeqCst))
}

#[tokio::test]
async fn results_prime_and_refresh_use_the_values_ttl() {
    LEASE_MS.store(250, Ordering::SeqCst);
    assert_eq!(lease(1).await, Ok(250));
    assert_eq!(lease(1).await, Ok(250));
    assert_eq!(LEASE_RUNS.load(Ordering::SeqCst), 1);
    assert!(lease(0).await.is_err());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        lease_peek(1).await,
        None,
        "expired after the value's 250 ms"
    );

    // A primed value is stored for its own TTL too: zero is not stored at all.
    lease_prime(2, Ok(0)).await.unwrap();
    assert_eq!(lease_peek(2).await, None, "a zero TTL is not stored");
    lease_prime(2, Ok(200)).await.unwrap();
    assert_eq!(lease_peek(2).await, Some(Ok(200)));
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        lease_peek(2).await,
        None,
        "the primed value expired after 200 ms"
    );

    // A refresh stores for the value's TTL.
    LEASE_MS.store(60_000, Ordering::SeqCst);
    let runs = LEASE_RUNS.load(Ordering::SeqCst);
    assert_eq!(lease_refresh(3).await, Ok(60_000));
    assert_eq!(lease(3).await, Ok(60_000));
    assert_eq!(
        LEASE_RUNS.load(Ordering::SeqCst),
        runs + 1,
        "refreshed once, then a hit"
    );
}

static SHARED_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 600, backend = "ttl-from-redis", key = "shared:{id}", ttl_from = token_lifetime)]
async fn shared_token(id: u64) -> Token {
    let issued = SHARED_RUNS.fetch_add(1, Ordering::SeqCst) + 1;
    Token {
        id,
        issued,
        lifetime_ms: if id == 1 { 400 } else { 0 },
    }
}

/// On a serialized backend: `token(1)` (a 400 ms value) is a hit, then, once `stored` has looked
/// at the backend, recomputed after 400 ms; `token(2)` (a zero TTL) is never stored.
async fn expires_with_the_value<Fut: std::future::Future<Output = Token>>(
    token: impl Fn(u64) -> Fut,
    runs: &AtomicUsize,
    stored: impl FnOnce(),
) {
    let first = token(1).await;
    assert_eq!(token(1).await, first, "a hit from the backend");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    stored();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_ne!(
        token(1).await.issued,
        first.issued,
        "recomputed after 400 ms"
    );
    let zero = token(2).await;
    assert_ne!(
        token(2).await.issued,
        zero.issued,
        "a zero TTL is not stored"
    );
}

#[tokio::test]
async fn on_redis_the_entry_expires_with_the_value() {
    let redis = support::RegisteredRedis::start("ttl-from-redis");
    expires_with_the_value(shared_token, &SHARED_RUNS, || {
        let key = format!("cache:k:{}", shared_token_key(1));
        let stored_ttl: i64 = redis
            .server
            .cli(&["PTTL", &key])
            .trim()
            .parse()
            .expect("PTTL answers a number");
        assert!(
            (1..=400).contains(&stored_ttl),
            "Redis holds the entry for the value's 400 ms, not the fn's 600 s: PTTL {stored_ttl}"
        );
    })
    .await;
    assert_eq!(
        redis
            .server
            .cli(&["EXISTS", &format!("cache:k:{}", shared_token_key(2))])
            .trim(),
        "0"
    );
}

#[tokio::test]
async fn the_function_api_takes_a_ttl_from_too() {
    let runs = AtomicUsize::new(0);
    let quotes: Cache<(u64, u64)> = Cache::new("ttl-from-quotes", Duration::from_secs(60))
        .ttl_from(|&(_, valid_ms)| Duration::from_millis(valid_ms));
    let make = |valid_ms: u64| {
        let runs = &runs;
        move || async move {
            let run = runs.fetch_add(1, Ordering::SeqCst) as u64 + 1;
            (run, valid_ms)
        }
    };
    assert_eq!(quotes.get_or_insert_with("q", make(250)).await, (1, 250));
    assert_eq!(quotes.get_or_insert_with("q", make(250)).await, (1, 250));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(quotes.get_or_insert_with("q", make(0)).await, (2, 0));
    assert_eq!(quotes.get("q").await, None, "a zero TTL is not stored");
    quotes.insert("q", (9, 60_000)).await.unwrap();
    assert_eq!(quotes.get("q").await, Some((9, 60_000)));
    quotes.insert("q", (10, 0)).await.unwrap();
    assert_eq!(
        quotes.get("q").await,
        None,
        "inserting a zero-TTL value only removes the entry"
    );
}

static FILED_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 600, backend = "ttl-from-file", key = "filed:{id}", ttl_from = token_lifetime)]
async fn filed_token(id: u64) -> Token {
    let issued = FILED_RUNS.fetch_add(1, Ordering::SeqCst) + 1;
    Token {
        id,
        issued,
        lifetime_ms: if id == 1 { 400 } else { 0 },
    }
}

#[tokio::test]
async fn in_files_the_entry_expires_with_the_value() {
    let dir = tempfile::tempdir().expect("a temp dir");
    cache_runtime::register("ttl-from-file", cache_runtime::FileBackend::new(dir.path()));
    let _unregister = support::Unregister("ttl-from-file");
    expires_with_the_value(filed_token, &FILED_RUNS, || {}).await;
}
