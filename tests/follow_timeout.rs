//! A waiter waits for another call's computation at most `CACHE_FOLLOW_TIMEOUT_MS`, then computes
//! itself: a deadlock across tasks (A waits for B, which waits for A) costs that long, not forever.
//! (Its own test binary: the limit is read once per process.)

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        LazyLock,
    },
    time::Duration,
};

use cache_runtime::cached;
use tokio::sync::Barrier;

/// Both computations start before either asks for the other.
static BOTH_STARTED: LazyLock<Barrier> = LazyLock::new(|| Barrier::new(2));
static RUNS: AtomicUsize = AtomicUsize::new(0);

type Boxed = std::pin::Pin<Box<dyn std::future::Future<Output = u64> + Send>>;
static CALL_A: fn(u64) -> Boxed = |n| Box::pin(a(n));
static CALL_B: fn(u64) -> Boxed = |n| Box::pin(b(n));

#[cached(ttl = 60, key = "a:{n}")]
async fn a(n: u64) -> u64 {
    RUNS.fetch_add(1, Ordering::SeqCst);
    if RUNS.load(Ordering::SeqCst) <= 2 {
        BOTH_STARTED.wait().await;
        return CALL_B(n).await + 1;
    }
    n
}

#[cached(ttl = 60, key = "b:{n}")]
async fn b(n: u64) -> u64 {
    RUNS.fetch_add(1, Ordering::SeqCst);
    if RUNS.load(Ordering::SeqCst) <= 2 {
        BOTH_STARTED.wait().await;
        return CALL_A(n).await + 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlock_across_tasks_ends_after_the_follow_timeout() {
    std::env::set_var("CACHE_FOLLOW_TIMEOUT_MS", "300");
    let first = tokio::spawn(a(1));
    let second = tokio::spawn(b(1));
    let both = tokio::time::timeout(Duration::from_secs(10), async {
        (first.await.unwrap(), second.await.unwrap())
    })
    .await
    .expect("two computations waiting for each other hung");
    // A waiter gave up and computed the other fn itself (past the barrier: a plain value, 1); the
    // other then got that value, or gave up too.
    assert!(matches!(both, (2 | 3, 2 | 3)), "unexpected values {both:?}");
}
