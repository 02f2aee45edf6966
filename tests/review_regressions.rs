//! Regressions found in review of the macro features and the per-call control: each of these gave
//! a wrong answer (or panicked) before its fix.
#![allow(async_fn_in_trait)]

mod support;

use std::{
    marker::PhantomData,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use cache_runtime::{cached, cached_impl, MemoryBackend};
use support::wrapped::{Call, Hold, Wrapped};

pub struct Sized_<T>(PhantomData<T>);

#[cached_impl]
impl<T: 'static> Sized_<T> {
    #[cached(ttl = 60)]
    async fn size() -> usize {
        std::mem::size_of::<T>()
    }
}

pub struct Plain<T>(PhantomData<T>);

impl<T: 'static> Plain<T> {
    #[cached(ttl = 60)]
    async fn size() -> usize {
        std::mem::size_of::<T>()
    }
}

pub struct Named<T>(PhantomData<T>);

impl<T: 'static + Send + Sync> Named<T> {
    #[cached(ttl = 60, name = "named_size")]
    async fn size(&self) -> usize {
        std::mem::size_of::<T>()
    }
}

pub struct Buf<const N: usize>;

impl<const N: usize> Buf<N> {
    #[cached(ttl = 60)]
    async fn cap() -> usize {
        N
    }
}

pub struct Pair<A, B>(PhantomData<(A, B)>);

impl<T: 'static> Pair<u8, T> {
    #[cached(ttl = 60)]
    async fn size() -> usize {
        std::mem::size_of::<T>()
    }
}

pub struct NamedStatic<T>(PhantomData<T>);

impl<T: 'static> NamedStatic<T> {
    #[cached(ttl = 60, name = "named_static_size")]
    async fn size() -> usize {
        std::mem::size_of::<T>()
    }
}

pub struct FnOut<F>(PhantomData<F>);

impl<T: 'static> FnOut<fn() -> T> {
    #[cached(ttl = 60)]
    async fn size() -> usize {
        std::mem::size_of::<T>()
    }
}

pub struct Concrete<T>(PhantomData<T>);

static CONCRETE_RUNS: AtomicUsize = AtomicUsize::new(0);

impl Concrete<u8> {
    #[cached(ttl = 60)]
    async fn make(x: u64) -> u64 {
        CONCRETE_RUNS.fetch_add(1, Ordering::SeqCst);
        x
    }
}

pub trait Sz {
    async fn sz(&self) -> usize;
}

pub struct W<T>(PhantomData<T>);

#[cached_impl]
impl<T: Send + Sync + 'static> Sz for W<T> {
    #[cached(ttl = 60, name = "wsz")]
    async fn sz(&self) -> usize {
        std::mem::size_of::<T>()
    }
}

/// Instantiations of a generic impl never share an entry: with `#[cached_impl]` the impl's
/// parameters are in the key; without it (they are unknown) the call runs uncached; a `name`d
/// method keys on its receiver's type.
#[tokio::test]
async fn instantiations_of_a_generic_impl_never_share_an_entry() {
    assert_eq!(Sized_::<u8>::size().await, 1);
    assert_eq!(
        Sized_::<u64>::size().await,
        8,
        "#[cached_impl] inherent impl"
    );
    assert_eq!(Plain::<u8>::size().await, 1);
    assert_eq!(
        Plain::<u64>::size().await,
        8,
        "plain #[cached] in a generic impl"
    );
    assert_eq!(Named::<u8>(PhantomData).size().await, 1);
    assert_eq!(Named::<u64>(PhantomData).size().await, 8, "a named method");
    assert_eq!(W::<u8>(PhantomData).sz().await, 1);
    assert_eq!(W::<u64>(PhantomData).sz().await, 8, "a named trait method");
    // Parents whose printed name hides the parameters without `<_`.
    assert_eq!(Buf::<1>::cap().await, 1);
    assert_eq!(Buf::<2>::cap().await, 2, "a const parameter");
    assert_eq!(Pair::<u8, u8>::size().await, 1);
    assert_eq!(Pair::<u8, u64>::size().await, 8, "a partly generic impl");
    // A parameter after an arrow (`FnOut<fn() -> _>`).
    assert_eq!(FnOut::<fn() -> u8>::size().await, 1);
    assert_eq!(
        FnOut::<fn() -> u64>::size().await,
        8,
        "a parameter after `->`"
    );
    // A non-generic impl of a generic type is cached (`Concrete<u8>` names one instantiation).
    assert_eq!(Concrete::<u8>::make(1).await, 1);
    assert_eq!(Concrete::<u8>::make(1).await, 1);
    assert_eq!(
        CONCRETE_RUNS.load(Ordering::SeqCst),
        1,
        "impl Concrete<u8> is cached"
    );
    assert_eq!(NamedStatic::<u8>::size().await, 1);
    assert_eq!(
        NamedStatic::<u64>::size().await,
        8,
        "a named fn without a receiver"
    );
}

static HD_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(
    ttl = 60,
    backend = "review-held-deletes",
    key = "hd:{id}",
    group = "review-hd"
)]
async fn hd(id: u64) -> u64 {
    HD_RUNS.fetch_add(1, Ordering::SeqCst);
    id
}

/// A group invalidation recorded while a prime invalidates its key wins over the primed value.
#[tokio::test]
async fn a_group_invalidation_during_a_prime_wins() {
    // The next delete waits until told to go on.
    let backend = Arc::new(Wrapped::new(Hold::new(Call::Delete)));
    backend.hook.hold.store(true, Ordering::SeqCst);
    cache_runtime::register_arc("review-held-deletes", backend.clone());
    let prime = tokio::spawn(hd_prime(1, 500)); // computed before the group changed
    backend.hook.held.notified().await;
    cache_runtime::invalidate_group("review-hd").await.unwrap();
    backend.hook.resume.notify_one();
    prime.await.unwrap().unwrap();
    assert_eq!(
        hd_peek(1).await,
        None,
        "the primed value predates the group invalidation"
    );
    assert_eq!(
        HD_RUNS.load(Ordering::SeqCst),
        0,
        "prime and peek never run the body"
    );
    cache_runtime::unregister("review-held-deletes");
}

static HK_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, backend = "review-held-key-deletes", key = "hk:{id}")]
async fn hk(id: u64) -> u64 {
    HK_RUNS.fetch_add(1, Ordering::SeqCst);
    id
}

/// A key invalidation recorded while a prime removes the old entry (after the prime's own
/// invalidation was recorded) wins over the primed value too.
#[tokio::test]
async fn a_key_invalidation_during_a_prime_wins() {
    let backend = Arc::new(Wrapped::new(Hold::new(Call::Delete)));
    backend.hook.hold.store(true, Ordering::SeqCst);
    cache_runtime::register_arc("review-held-key-deletes", backend.clone());
    let prime = tokio::spawn(hk_prime(1, 500)); // read from the database before its new write
    backend.hook.held.notified().await;
    // Another writer's invalidation of the key, acknowledged before the prime returns.
    cache_runtime::invalidate_key(&hk_key(1)).await.unwrap();
    backend.hook.resume.notify_one();
    prime.await.unwrap().unwrap();
    assert_eq!(
        hk_peek(1).await,
        None,
        "the primed value predates the key invalidation"
    );
    assert_eq!(HK_RUNS.load(Ordering::SeqCst), 0);
    cache_runtime::unregister("review-held-key-deletes");
}

/// A huge timeout neither overflows nor panics an invalidation.
#[tokio::test]
async fn a_huge_protection_timeout_does_not_panic_invalidations() {
    cache_runtime::register_with(
        "review-huge-timeout",
        MemoryBackend::default(),
        cache_runtime::Protection::default().timeout(Duration::MAX),
    );
    let result = tokio::spawn(async { cache_runtime::invalidate_key("review-x").await }).await;
    assert!(result.is_ok(), "the invalidation panicked");
    cache_runtime::unregister("review-huge-timeout");
}

static FEED_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "100ms", stale_if_error = "10s", cache_if = |v: &Vec<u64>| !v.is_empty())]
async fn feed(user: u64) -> Vec<u64> {
    match FEED_RUNS.fetch_add(1, Ordering::SeqCst) {
        0 => vec![user],
        _ => {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Vec::new()
        }
    }
}

/// A value `cache_if` rejects is the answer, for the leader and for the callers that waited on it:
/// not replaced by the stale value (which only stands in for failures).
#[tokio::test]
async fn a_rejected_value_reaches_waiting_callers_too() {
    assert_eq!(feed(7).await, vec![7]);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let leader = tokio::spawn(feed(7));
    tokio::time::sleep(Duration::from_millis(30)).await;
    let follower = tokio::spawn(feed(7));
    let (leader, follower) = (leader.await.unwrap(), follower.await.unwrap());
    assert_eq!(leader, Vec::<u64>::new());
    assert_eq!(
        follower,
        Vec::<u64>::new(),
        "the follower got the stale value"
    );
}

static LC_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(
    ttl = 60,
    backend = "review-lock-cancel",
    key = "lc:{id}",
    lock = "10s"
)]
async fn lc(id: u64) -> u64 {
    LC_RUNS.fetch_add(1, Ordering::SeqCst);
    id
}

/// A call dropped just after it took the cross-process lock (while it looks once more for a value
/// stored by the previous holder) releases the lock: other processes do not wait out its TTL.
#[tokio::test]
async fn a_call_dropped_right_after_taking_the_lock_releases_it() {
    let backend = Arc::new(Wrapped::new(Hold::new(Call::Get)));
    cache_runtime::register_arc("review-lock-cancel", backend.clone());
    // The first read (the lookup) goes on; the second (after the lock is taken) waits.
    backend.hook.skip.store(1, Ordering::SeqCst);
    backend.hook.hold.store(true, Ordering::SeqCst);
    let call = tokio::spawn(lc(1));
    backend.hook.held.notified().await;
    assert_eq!(backend.locks.lock().unwrap().len(), 1, "the lock is held");
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !backend.locks.lock().unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the dropped call left the lock held"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(LC_RUNS.load(Ordering::SeqCst), 0);
}
