//! Stale serving, error sharing, oversized values, hostile and unkeyable input (in-process backend).

use std::{
    collections::HashMap,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use cache_runtime::cached;

static SWR_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "200ms", stale = "5s")]
async fn revalidated(n: u64) -> usize {
    tokio::time::sleep(Duration::from_millis(150)).await;
    SWR_RUNS.fetch_add(1, Ordering::SeqCst) + n as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_answers_at_once_and_refreshes_in_the_background() {
    assert_eq!(revalidated(0).await, 0);
    tokio::time::sleep(Duration::from_millis(250)).await; // expired, inside the stale window

    let started = Instant::now();
    let stale = revalidated(0).await;
    let took = started.elapsed();
    assert_eq!(stale, 0, "the stale value is served");
    assert!(
        took < Duration::from_millis(100),
        "served without waiting for the body: {took:?}"
    );

    // Concurrent callers during the refresh get the stale value too; the body runs once more.
    let concurrent: Vec<_> = (0..16).map(|_| tokio::spawn(revalidated(0))).collect();
    for call in concurrent {
        assert_eq!(call.await.unwrap(), 0);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        revalidated(0).await,
        1,
        "the background refresh stored the new value"
    );
    assert_eq!(SWR_RUNS.load(Ordering::SeqCst), 2);
    let s = cache_runtime::stats()
        .into_iter()
        .find(|s| s.function.ends_with("::revalidated"))
        .unwrap();
    assert!(s.stale >= 17, "{s:?}");
}

static FAILING: AtomicBool = AtomicBool::new(false);
static SIE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "150ms", stale_if_error = "10s")]
async fn flaky(n: u64) -> Result<u64, String> {
    let run = SIE_RUNS.fetch_add(1, Ordering::SeqCst) as u64;
    if FAILING.load(Ordering::SeqCst) {
        return Err("database down".into());
    }
    Ok(n * 100 + run)
}

#[tokio::test]
async fn stale_if_error_serves_the_last_good_value_while_the_body_fails() {
    assert_eq!(flaky(1).await, Ok(100));
    FAILING.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(flaky(1).await, Ok(100), "stale value instead of the error");
    assert_eq!(SIE_RUNS.load(Ordering::SeqCst), 2, "the body was tried");
    assert_eq!(
        flaky(2).await,
        Err("database down".into()),
        "nothing stale to serve"
    );
    FAILING.store(false, Ordering::SeqCst);
    assert_eq!(
        flaky(1).await,
        Ok(103),
        "fresh again once the body succeeds"
    );
}

static SHARED_ERROR_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60)]
async fn always_fails(n: u64) -> Result<u64, String> {
    SHARED_ERROR_RUNS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await;
    Err(format!("no {n}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_receive_the_leaders_error_when_it_can_be_cloned() {
    let calls: Vec<_> = (0..32).map(|_| tokio::spawn(always_fails(4))).collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), Err("no 4".to_string()));
    }
    assert_eq!(
        SHARED_ERROR_RUNS.load(Ordering::SeqCst),
        1,
        "one run for 32 callers"
    );
}

static BIG_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60)]
async fn huge(n: u64) -> String {
    BIG_RUNS.fetch_add(1, Ordering::SeqCst);
    // Over the 8 MiB default of CACHE_MAX_VALUE_BYTES.
    "x".repeat(9 * 1024 * 1024 + n as usize)
}

#[tokio::test]
async fn oversized_values_are_not_stored_and_the_call_succeeds() {
    assert_eq!(huge(1).await.len(), 9 * 1024 * 1024 + 1);
    assert_eq!(huge(1).await.len(), 9 * 1024 * 1024 + 1);
    assert_eq!(BIG_RUNS.load(Ordering::SeqCst), 2);
    let s = cache_runtime::stats()
        .into_iter()
        .find(|s| s.function.ends_with("::huge"))
        .unwrap();
    assert_eq!(s.oversized, 2);
}

static PAIR_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, key = "pair:{a}:{b}", group = "pairs:{a}")]
async fn pair(a: String, b: String) -> String {
    PAIR_RUNS.fetch_add(1, Ordering::SeqCst);
    format!("{a}|{b}")
}

#[tokio::test]
async fn hostile_template_values_never_address_another_entry() {
    let hostile = [
        ("x:y", "z"),
        ("x", "y:z"),
        ("*", "*"),
        ("{a}", "}"),
        ("a b", "c\nd"),
        ("%3A", ":"),
    ];
    for (a, b) in hostile {
        assert_eq!(pair(a.into(), b.into()).await, format!("{a}|{b}"));
    }
    assert_eq!(
        PAIR_RUNS.load(Ordering::SeqCst),
        hostile.len(),
        "all distinct entries"
    );
    let keys: Vec<String> = hostile
        .iter()
        .map(|(a, b)| pair_key(a.to_string(), b.to_string()))
        .collect();
    for key in &keys {
        assert_eq!(key.matches(':').count(), 2, "{key}");
        assert!(!key.contains(['*', '{', '}', ' ', '\n']), "{key}");
    }

    // 10 KiB values: a bounded key, still distinct.
    let long_a = "a".repeat(10 * 1024);
    let long_b = format!("{}b", "a".repeat(10 * 1024 - 1));
    assert_eq!(pair(long_a.clone(), "1".into()).await.len(), 10 * 1024 + 2);
    assert_eq!(pair(long_b.clone(), "1".into()).await.len(), 10 * 1024 + 2);
    assert!(pair_key(long_a.clone(), "1".into()).len() <= cache_runtime::key::MAX_KEY_LEN);
    assert_ne!(pair_key(long_a, "1".into()), pair_key(long_b, "1".into()));

    // A group value cannot reach another group either.
    cache_runtime::invalidate_group("pairs:x").await.unwrap();
    pair("x:y".into(), "z".into()).await; // group "pairs:x%3Ay" untouched: still cached
    assert_eq!(PAIR_RUNS.load(Ordering::SeqCst), hostile.len() + 2);
}

static UNKEYABLE_RUNS: AtomicUsize = AtomicUsize::new(0);

/// JSON cannot have tuple map keys: this argument cannot be serialized into a key.
#[cached(ttl = 60)]
async fn unkeyable(map: HashMap<(u8, u8), u8>) -> usize {
    UNKEYABLE_RUNS.fetch_add(1, Ordering::SeqCst);
    map.len()
}

#[tokio::test]
async fn arguments_that_fail_to_serialize_run_uncached_without_error() {
    let map = HashMap::from([((1, 2), 3)]);
    assert_eq!(unkeyable(map.clone()).await, 1);
    assert_eq!(
        unkeyable(HashMap::new()).await,
        0,
        "never confused with another call"
    );
    assert_eq!(unkeyable(map).await, 1);
    assert_eq!(UNKEYABLE_RUNS.load(Ordering::SeqCst), 3);
}

/// An error that cannot be shared with waiters (not `Clone`): each runs its own body.
#[derive(Debug, PartialEq)]
struct Down;

static UNSHARED_FAILING: AtomicBool = AtomicBool::new(false);

#[cached(ttl = "150ms", stale_if_error = "10s")]
async fn unshared(n: u64) -> Result<u64, Down> {
    tokio::time::sleep(Duration::from_millis(100)).await;
    if UNSHARED_FAILING.load(Ordering::SeqCst) {
        return Err(Down);
    }
    Ok(n)
}

/// Waiters whose leader's error cannot be shared run their own body; when that fails too, the
/// stale value stands in for them as it does for the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_that_run_their_own_failing_body_get_the_stale_value() {
    assert_eq!(unshared(7).await, Ok(7));
    UNSHARED_FAILING.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (a, b, c) = tokio::join!(unshared(7), unshared(7), unshared(7));
    assert_eq!(
        [a, b, c],
        [Ok(7), Ok(7), Ok(7)],
        "stale value for every caller"
    );
}

static GROUPED_FAILING: AtomicBool = AtomicBool::new(false);

#[cached(ttl = "150ms", stale_if_error = "10s", group = "resilience-sie")]
async fn grouped(n: u64) -> Result<u64, String> {
    if GROUPED_FAILING.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        return Err("down".into());
    }
    Ok(n)
}

/// A stale value found before its group was invalidated is not served once the invalidation has
/// returned, even by a call whose body was already failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_value_invalidated_while_the_body_fails_is_not_served() {
    assert_eq!(grouped(3).await, Ok(3));
    GROUPED_FAILING.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let call = tokio::spawn(grouped(3)); // finds the stale value, then its body fails
    tokio::time::sleep(Duration::from_millis(100)).await;
    cache_runtime::invalidate_group("resilience-sie")
        .await
        .unwrap();
    assert_eq!(call.await.unwrap(), Err("down".into()));
}
