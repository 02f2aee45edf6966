//! Per-backend protection configured in code (`register_with`): the timeout and the breaker's
//! thresholds, against a Redis address that accepts connections and never answers.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use cache_runtime::{cached, Protection, RedisBackend};

static RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, backend = "protected-silent")]
async fn lookup(id: u64) -> u64 {
    RUNS.fetch_add(1, Ordering::SeqCst);
    id
}

#[tokio::test]
async fn a_silent_backend_costs_the_configured_timeout_then_nothing() {
    // The kernel completes the TCP handshake for a listener nobody accepts from: the client's
    // commands are never answered.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let url = format!("redis://{}", silent.local_addr().unwrap());
    cache_runtime::register_with(
        "protected-silent",
        RedisBackend::open(&url).expect("valid url"),
        Protection::default()
            .timeout(Duration::from_millis(100))
            .breaker(1, Duration::from_secs(60)),
    );
    let started = Instant::now();
    assert_eq!(lookup(1).await, 1, "a failing backend never fails the call");
    let first = started.elapsed();
    assert!(
        first >= Duration::from_millis(90) && first < Duration::from_millis(220),
        "the first call waits for the 100 ms timeout, not the default 250 ms: {first:?}"
    );
    let started = Instant::now();
    for id in 2..12 {
        assert_eq!(lookup(id).await, id);
    }
    let next_ten = started.elapsed();
    assert!(
        next_ten < Duration::from_millis(100),
        "the breaker opened after one failure: ten calls took {next_ten:?}"
    );
    assert_eq!(RUNS.load(Ordering::SeqCst), 11);
    drop(silent);
}
