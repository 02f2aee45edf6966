//! What is cached depends on the return type, not on how it is spelled: aliases of `Result` and
//! `Option` behave as `Result` and `Option`.

use std::sync::atomic::{AtomicUsize, Ordering};

use cache_runtime::cached;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ApiError(String);

type ApiResult<T> = Result<T, ApiError>;
type Maybe<T> = Option<T>;

static RESULT_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, key = "alias_result:{fail}")]
async fn alias_result(fail: bool) -> ApiResult<u64> {
    RESULT_RUNS.fetch_add(1, Ordering::SeqCst);
    if fail {
        Err(ApiError("down".into()))
    } else {
        Ok(7)
    }
}

#[tokio::test]
async fn errors_of_a_result_alias_are_not_cached() {
    assert_eq!(alias_result(true).await, Err(ApiError("down".into())));
    assert_eq!(alias_result(true).await, Err(ApiError("down".into())));
    assert_eq!(
        RESULT_RUNS.load(Ordering::SeqCst),
        2,
        "the body runs again after an Err"
    );
    assert_eq!(alias_result(false).await, Ok(7));
    assert_eq!(alias_result(false).await, Ok(7));
    assert_eq!(RESULT_RUNS.load(Ordering::SeqCst), 3, "Ok is cached");
}

static CACHE_ERR_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, key = "alias_cache_err", cache_err)]
async fn alias_cache_err() -> ApiResult<u64> {
    CACHE_ERR_RUNS.fetch_add(1, Ordering::SeqCst);
    Err(ApiError("cached".into()))
}

#[tokio::test]
async fn cache_err_caches_errors_of_a_result_alias() {
    assert!(alias_cache_err().await.is_err());
    assert!(alias_cache_err().await.is_err());
    assert_eq!(CACHE_ERR_RUNS.load(Ordering::SeqCst), 1);
}

static MAYBE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, key = "maybe:{n}", cache_none = false)]
async fn maybe(n: u64) -> Maybe<u64> {
    MAYBE_RUNS.fetch_add(1, Ordering::SeqCst);
    (n > 0).then_some(n)
}

#[tokio::test]
async fn none_of_an_option_alias_follows_cache_none() {
    assert_eq!(maybe(0).await, None);
    assert_eq!(maybe(0).await, None);
    assert_eq!(
        MAYBE_RUNS.load(Ordering::SeqCst),
        2,
        "None is not cached with cache_none = false"
    );
    assert_eq!(maybe(5).await, Some(5));
    assert_eq!(maybe(5).await, Some(5));
    assert_eq!(MAYBE_RUNS.load(Ordering::SeqCst), 3, "Some is cached");
}

static MAYBE_CACHED_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, key = "maybe_cached:{n}")]
async fn maybe_cached(n: u64) -> Maybe<u64> {
    MAYBE_CACHED_RUNS.fetch_add(1, Ordering::SeqCst);
    (n > 0).then_some(n)
}

#[tokio::test]
async fn an_option_alias_caches_none_by_default() {
    assert_eq!(maybe_cached(0).await, None);
    assert_eq!(maybe_cached(0).await, None);
    assert_eq!(maybe_cached(2).await, Some(2));
    assert_eq!(maybe_cached(2).await, Some(2));
    assert_eq!(MAYBE_CACHED_RUNS.load(Ordering::SeqCst), 2);
}

static PLAIN_RUNS: AtomicUsize = AtomicUsize::new(0);

/// A type named like `Result` that is not one is cached as a plain value.
mod named {
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct Result(pub u8);
}

#[cached(ttl = 60, key = "named_result")]
async fn named_result() -> named::Result {
    PLAIN_RUNS.fetch_add(1, Ordering::SeqCst);
    named::Result(1)
}

#[tokio::test]
async fn a_type_merely_named_result_is_a_plain_value() {
    assert_eq!(named_result().await, named::Result(1));
    assert_eq!(named_result().await, named::Result(1));
    assert_eq!(PLAIN_RUNS.load(Ordering::SeqCst), 1);
}

static GUARDED_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, key = "guarded")]
async fn guarded() -> u64 {
    GUARDED_RUNS.fetch_add(1, Ordering::SeqCst);
    1
}

#[cache_runtime::cache_invalidate(key = "guarded")]
async fn failing_mutation(fail: bool) -> ApiResult<()> {
    if fail {
        Err(ApiError("no".into()))
    } else {
        Ok(())
    }
}

#[tokio::test]
async fn cache_invalidate_sees_a_result_alias_as_a_result() {
    guarded().await;
    assert!(failing_mutation(true).await.is_err());
    guarded().await;
    assert_eq!(
        GUARDED_RUNS.load(Ordering::SeqCst),
        1,
        "an Err invalidates nothing"
    );
    failing_mutation(false).await.unwrap();
    guarded().await;
    assert_eq!(GUARDED_RUNS.load(Ordering::SeqCst), 2);
}
