//! The attribute's behaviour on the in-process backend.

mod support;

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use cache_runtime::cached;
use serde::{Deserialize, Serialize};
use support::wrapped::{Call, Count, Wrapped};

static SQUARE_RUNS: AtomicUsize = AtomicUsize::new(0);

/// Squares a number (the doc comment and visibility must survive the macro).
#[cached(ttl = 60)]
pub async fn square(n: u64) -> u64 {
    SQUARE_RUNS.fetch_add(1, Ordering::SeqCst);
    n * n
}

#[tokio::test]
async fn second_call_is_a_hit_and_arguments_separate_entries() {
    assert_eq!(square(3).await, 9);
    assert_eq!(square(3).await, 9);
    assert_eq!(square(4).await, 16);
    assert_eq!(SQUARE_RUNS.load(Ordering::SeqCst), 2);
    let stats = cache_runtime::stats();
    let s = stats
        .iter()
        .find(|s| s.function.ends_with("::square"))
        .expect("square has stats");
    assert_eq!((s.hits, s.misses), (1, 2));
}

static FALLIBLE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, PartialEq)]
struct LoadError;

#[cached(ttl = "5m", key = "fallible:{id}")]
async fn fallible(id: u32, fail: bool) -> Result<String, LoadError> {
    FALLIBLE_RUNS.fetch_add(1, Ordering::SeqCst);
    if fail {
        return Err(LoadError);
    }
    Ok(format!("item {id}"))
}

#[tokio::test]
async fn only_ok_results_are_cached() {
    assert_eq!(fallible(1, true).await, Err(LoadError));
    assert_eq!(fallible(1, true).await, Err(LoadError));
    assert_eq!(FALLIBLE_RUNS.load(Ordering::SeqCst), 2);
    assert_eq!(fallible(1, false).await.unwrap(), "item 1");
    // Same key (`fail` is not in the template): the Ok value is served now.
    assert_eq!(fallible(1, true).await.unwrap(), "item 1");
    assert_eq!(FALLIBLE_RUNS.load(Ordering::SeqCst), 3);
}

static QUESTION_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60)]
async fn question_mark(input: String) -> Result<u32, std::num::ParseIntError> {
    QUESTION_RUNS.fetch_add(1, Ordering::SeqCst);
    let n: u32 = input.parse()?;
    Ok(n + 1)
}

#[tokio::test]
async fn question_mark_and_errors_work_inside_the_body() {
    assert!(question_mark("x".into()).await.is_err());
    assert_eq!(question_mark("41".into()).await, Ok(42));
    assert_eq!(question_mark("41".into()).await, Ok(42));
    assert_eq!(QUESTION_RUNS.load(Ordering::SeqCst), 2);
}

static FIND_RUNS: AtomicUsize = AtomicUsize::new(0);
static FIND_STRICT_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60)]
async fn find(id: u32) -> Option<u32> {
    FIND_RUNS.fetch_add(1, Ordering::SeqCst);
    id.is_multiple_of(2).then_some(id)
}

#[cached(ttl = 60, cache_none = false)]
async fn find_strict(id: u32) -> Option<u32> {
    FIND_STRICT_RUNS.fetch_add(1, Ordering::SeqCst);
    id.is_multiple_of(2).then_some(id)
}

#[tokio::test]
async fn options_cache_none_unless_told_not_to() {
    assert_eq!(find(1).await, None);
    assert_eq!(find(1).await, None);
    assert_eq!(find(2).await, Some(2));
    assert_eq!(find(2).await, Some(2));
    assert_eq!(FIND_RUNS.load(Ordering::SeqCst), 2);

    assert_eq!(find_strict(1).await, None);
    assert_eq!(find_strict(1).await, None);
    assert_eq!(find_strict(2).await, Some(2));
    assert_eq!(find_strict(2).await, Some(2));
    assert_eq!(FIND_STRICT_RUNS.load(Ordering::SeqCst), 3);
}

static ERR_CACHED_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, cache_err)]
async fn err_cached(id: u32) -> Result<u32, String> {
    ERR_CACHED_RUNS.fetch_add(1, Ordering::SeqCst);
    Err(format!("no {id}"))
}

#[tokio::test]
async fn cache_err_caches_errors_too() {
    assert_eq!(err_cached(5).await, Err("no 5".to_string()));
    assert_eq!(err_cached(5).await, Err("no 5".to_string()));
    assert_eq!(ERR_CACHED_RUNS.load(Ordering::SeqCst), 1);
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
    tags: Vec<String>,
}

static USER_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, key = "user:{id}", group = "users", group = "user:{id}")]
async fn load_user(id: u64) -> User {
    USER_RUNS.fetch_add(1, Ordering::SeqCst);
    User {
        id,
        name: format!("user {id}"),
        tags: vec!["a".into()],
    }
}

#[tokio::test]
async fn key_template_key_fn_and_invalidation() {
    assert_eq!(load_user_key(7), "user:7");
    load_user(7).await;
    load_user(7).await;
    assert_eq!(USER_RUNS.load(Ordering::SeqCst), 1);

    load_user_invalidate(7).await.unwrap();
    load_user(7).await;
    assert_eq!(USER_RUNS.load(Ordering::SeqCst), 2);

    cache_runtime::invalidate_key("user:7").await.unwrap();
    load_user(7).await;
    assert_eq!(USER_RUNS.load(Ordering::SeqCst), 3);

    load_user(8).await;
    cache_runtime::invalidate_group("user:8").await.unwrap();
    load_user(7).await; // still cached: only user 8's own group moved
    load_user(8).await;
    assert_eq!(USER_RUNS.load(Ordering::SeqCst), 5);

    cache_runtime::invalidate_group("users").await.unwrap();
    load_user(7).await;
    load_user(8).await;
    assert_eq!(USER_RUNS.load(Ordering::SeqCst), 7);
}

#[derive(Debug, Clone, Serialize)]
struct Filter {
    owner: Owner,
    page: (u32, u32),
}

#[derive(Debug, Clone, Serialize)]
struct Owner {
    org: String,
}

#[cached(
    ttl = 60,
    key = "list:{filter.owner.org}:{filter.page.1}",
    group = "org:{filter.owner.org}"
)]
async fn list(filter: &Filter, verbose: &str) -> Vec<String> {
    vec![format!("{}:{verbose}", filter.owner.org)]
}

#[tokio::test]
async fn references_fields_and_hostile_values_in_templates() {
    let filter = Filter {
        owner: Owner {
            org: "a:b*{c} d".into(),
        },
        page: (1, 2),
    };
    assert_eq!(list_key(&filter, "x"), "list:a%3Ab%2A%7Bc%7D%20d:2");
    assert_eq!(list(&filter, "x").await, vec!["a:b*{c} d:x".to_string()]);
}

static BORROW_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60)]
async fn borrowed(name: &str, tags: &[u8]) -> usize {
    BORROW_RUNS.fetch_add(1, Ordering::SeqCst);
    name.len() + tags.len()
}

#[tokio::test]
async fn reference_arguments_enter_the_default_key() {
    assert_eq!(borrowed("ab", &[1]).await, 3);
    assert_eq!(borrowed("ab", &[1]).await, 3);
    assert_eq!(borrowed("ab", &[1, 2]).await, 4);
    assert_eq!(BORROW_RUNS.load(Ordering::SeqCst), 2);
    assert_ne!(borrowed_key("ab", &[1]), borrowed_key("ab", &[1, 2]));
    assert!(borrowed_key("ab", &[1]).starts_with("memory::borrowed:"));
}

struct Repo {
    runs: AtomicUsize,
    base: u64,
}

impl Repo {
    #[cached(ttl = 60, group = "repo")]
    async fn price(&self, item: u64) -> u64 {
        self.runs.fetch_add(1, Ordering::SeqCst);
        self.base + item
    }
}

#[tokio::test]
async fn methods_leave_self_out_of_the_key() {
    let repo = Repo {
        runs: AtomicUsize::new(0),
        base: 100,
    };
    assert_eq!(repo.price(1).await, 101);
    assert_eq!(repo.price(1).await, 101);
    assert_eq!(repo.runs.load(Ordering::SeqCst), 1);
    let key = Repo::price_key(1);
    assert!(key.contains("Repo::price:"), "{key}");
    Repo::price_invalidate(1).await.unwrap();
    repo.price(1).await;
    assert_eq!(repo.runs.load(Ordering::SeqCst), 2);
}

static SLOW_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60)]
async fn slow(n: u64) -> u64 {
    SLOW_RUNS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_first_calls_run_the_body_once() {
    let calls: Vec<_> = (0..64).map(|_| tokio::spawn(slow(1))).collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), 1);
    }
    assert_eq!(SLOW_RUNS.load(Ordering::SeqCst), 1);
    let s = cache_runtime::stats()
        .into_iter()
        .find(|s| s.function.ends_with("::slow"))
        .unwrap();
    assert_eq!(s.misses, 1);
    assert_eq!(s.joins + s.hits, 63);
}

static CANCEL_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60)]
async fn cancellable(n: u64) -> u64 {
    CANCEL_RUNS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    n
}

/// Starts one call (the leader), lets 8 more join it, aborts the leader, and returns what each
/// waiter received; every waiter must answer within 5 s.
async fn abort_leader_with_waiters<T, Fut>(call: impl Fn() -> Fut) -> Vec<T>
where
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let leader = tokio::spawn(call());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let waiters: Vec<_> = (0..8).map(|_| tokio::spawn(call())).collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    leader.abort();
    let mut values = Vec::new();
    for waiter in waiters {
        let value = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("waiter must not hang")
            .unwrap();
        values.push(value);
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_leader_leaves_no_waiter_hanging() {
    let values = abort_leader_with_waiters(|| cancellable(9)).await;
    assert_eq!(values, vec![9; 8]);
    // The body runs in a task of its own: it outlives the aborted caller and serves the waiters.
    assert_eq!(CANCEL_RUNS.load(Ordering::SeqCst), 1);
}

static BORROWED_CANCEL_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60)]
async fn cancellable_borrowed(name: &str) -> usize {
    BORROWED_CANCEL_RUNS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    name.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_leader_that_borrows_hands_over_to_one_waiter() {
    let values = abort_leader_with_waiters(|| async { cancellable_borrowed("abc").await }).await;
    assert_eq!(values, vec![3; 8]);
    // A borrowing body runs inside its caller: the aborted run plus exactly one re-run.
    assert_eq!(BORROWED_CANCEL_RUNS.load(Ordering::SeqCst), 2);
}

static PANIC_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60)]
async fn panics_first(n: u64) -> u64 {
    let run = PANIC_RUNS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    if run == 0 {
        panic!("first run fails");
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_body_leaves_no_waiter_hanging() {
    let leader = tokio::spawn(panics_first(3));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let waiters: Vec<_> = (0..8).map(|_| tokio::spawn(panics_first(3))).collect();
    assert!(
        leader.await.is_err(),
        "the leader's panic propagates to its caller"
    );
    for waiter in waiters {
        let value = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("waiter must not hang")
            .unwrap();
        assert_eq!(value, 3);
    }
    assert_eq!(PANIC_RUNS.load(Ordering::SeqCst), 2);
}

static TTL_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "300ms")]
async fn short_lived(n: u64) -> u64 {
    TTL_RUNS.fetch_add(1, Ordering::SeqCst);
    n
}

#[tokio::test]
async fn entries_expire_after_the_ttl() {
    short_lived(1).await;
    short_lived(1).await;
    assert_eq!(TTL_RUNS.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    short_lived(1).await;
    assert_eq!(TTL_RUNS.load(Ordering::SeqCst), 2);
}

static INFLIGHT_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, key = "inflight", group = "inflight-group")]
async fn inflight() -> usize {
    let run = INFLIGHT_RUNS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await;
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_computation_overtaken_by_an_invalidation_is_not_reused() {
    let early = tokio::spawn(inflight());
    tokio::time::sleep(Duration::from_millis(30)).await;
    cache_runtime::invalidate_group("inflight-group")
        .await
        .unwrap();
    // Started after the invalidation returned: must not join or reuse the earlier computation.
    let late = inflight().await;
    assert_eq!(early.await.unwrap(), 0);
    assert_eq!(late, 1);
    assert_eq!(inflight().await, 1, "the later value is the cached one");
}

#[tokio::test]
async fn calls_on_an_unknown_backend_run_uncached() {
    #[cached(ttl = 60, backend = "nowhere")]
    async fn unbacked(n: u64) -> u64 {
        n + 1
    }
    assert_eq!(unbacked(1).await, 2);
    assert!(cache_runtime::backend("nowhere").is_none());
}

#[test]
fn memoized_futures_are_send() {
    fn assert_send<T: Send>(_: T) {}
    assert_send(square(1));
    assert_send(load_user(1));
    assert_send(fallible(1, false));
}

/// Serializes to `""` when `ok`, fails to serialize otherwise.
struct MaybeFilter {
    ok: bool,
}

impl Serialize for MaybeFilter {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.ok {
            serializer.serialize_str("")
        } else {
            Err(serde::ser::Error::custom("unserializable filter"))
        }
    }
}

static SEARCH_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, key = "search:{q}:{filter}")]
async fn search(q: &str, filter: MaybeFilter) -> String {
    SEARCH_RUNS.fetch_add(1, Ordering::SeqCst);
    format!("{q} ok={}", filter.ok)
}

#[tokio::test]
async fn a_call_whose_key_cannot_be_built_runs_uncached_and_reads_no_entry() {
    // `search:x:` is the key of the serializable call; the failing call's key stops at the same
    // text, and must neither read that entry nor store one.
    assert_eq!(search("x", MaybeFilter { ok: true }).await, "x ok=true");
    assert_eq!(search("x", MaybeFilter { ok: false }).await, "x ok=false");
    assert_eq!(search("x", MaybeFilter { ok: false }).await, "x ok=false");
    assert_eq!(search("x", MaybeFilter { ok: true }).await, "x ok=true");
    assert_eq!(
        SEARCH_RUNS.load(Ordering::SeqCst),
        3,
        "1 miss + 2 uncached runs, then a hit"
    );
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
}

static WRAPPED_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(
    ttl = 60,
    backend = "wrapped-memory",
    key = "wrapped:{n}",
    group = "wrapped"
)]
async fn wrapped(n: u64) -> Profile {
    WRAPPED_RUNS.fetch_add(1, Ordering::SeqCst);
    Profile {
        id: n,
        name: format!("user {n}"),
    }
}

#[tokio::test]
async fn a_wrapped_memory_store_takes_the_serialized_path_with_the_same_answers() {
    // A user's wrapper around the memory store: the runtime cannot see the store inside, so it
    // takes the serialized path, with the same answers.
    let counted = std::sync::Arc::new(Wrapped::new(Count::new(Call::Get)));
    cache_runtime::register_arc("wrapped-memory", counted.clone());
    let first = wrapped(1).await;
    assert_eq!(wrapped(1).await, first);
    assert_eq!(WRAPPED_RUNS.load(Ordering::SeqCst), 1);
    assert!(
        counted.hook.count.load(Ordering::SeqCst) >= 2,
        "every lookup went through the wrapper"
    );
    cache_runtime::invalidate_group("wrapped").await.unwrap();
    assert_eq!(wrapped(1).await, first);
    assert_eq!(
        WRAPPED_RUNS.load(Ordering::SeqCst),
        2,
        "the group invalidation reached it"
    );
}

static RATE_RUNS: AtomicUsize = AtomicUsize::new(0);

/// A default key: in process, its entry is stored under the call's text (no digest on a hit),
/// and everything that names it by key reaches it.
#[cached(ttl = 600)]
async fn rate(from: String, to: u32) -> u64 {
    RATE_RUNS.fetch_add(1, Ordering::SeqCst);
    u64::from(to) * 10 + from.len() as u64
}

#[tokio::test]
async fn default_keys_in_process_are_reached_by_their_key_strings() {
    let runs = || RATE_RUNS.load(Ordering::SeqCst);
    let from = || "eur".to_string();
    // The key is the documented default key (integers are written without serde, alike).
    let documented = cache_runtime::key::default_key(module_path!(), "rate", &("eur", 1u32));
    assert_eq!(rate_key(from(), 1), documented);
    assert_eq!(rate(from(), 1).await, 13);
    assert_eq!(rate(from(), 1).await, 13);
    assert_eq!(runs(), 1, "a hit");
    assert_eq!(rate_peek(from(), 1).await, Some(13));

    cache_runtime::invalidate_key(&rate_key(from(), 1))
        .await
        .unwrap();
    assert_eq!(rate_peek(from(), 1).await, None);
    assert_eq!(rate(from(), 1).await, 13);
    assert_eq!(
        runs(),
        2,
        "invalidate_key with the key string reached the entry"
    );

    rate_prime(from(), 1, 99).await.unwrap();
    assert_eq!(
        rate(from(), 1).await,
        99,
        "the primed value, not the older one"
    );
    assert_eq!(runs(), 2);

    assert_eq!(rate_refresh(from(), 1).await, 13);
    assert_eq!(runs(), 3);
    assert_eq!(rate(from(), 1).await, 13, "the refreshed value");
    assert_eq!(runs(), 3);

    rate_invalidate(from(), 1).await.unwrap();
    assert_eq!(rate(from(), 1).await, 13);
    assert_eq!(runs(), 4);
    // Other arguments are other entries, untouched by all of the above.
    assert_eq!(rate(from(), 2).await, 23);
    assert_eq!(rate("usd".into(), 1).await, 13);
    assert_eq!(runs(), 6);
    assert_eq!(rate("usd".into(), 1).await, 13);
    assert_eq!(runs(), 6);
}
