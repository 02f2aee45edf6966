//! A call that starts after another process invalidated a group must not join a computation that
//! this process started before that invalidation (its value predates it).

mod support;

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use cache_runtime::{cached, FileBackend};
use support::RegisteredRedis;

/// The tests invalidate through the process-wide functions: one at a time.
static GLOBAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

static REDIS_SOURCE: AtomicU64 = AtomicU64::new(1);

#[cached(
    ttl = 600,
    backend = "joined-redis",
    key = "joined:{n}",
    group = "joined-group"
)]
async fn on_redis(n: u64) -> u64 {
    let version = REDIS_SOURCE.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(600)).await; // a slow query
    version * 100 + n
}

static FILE_SOURCE: AtomicU64 = AtomicU64::new(1);

#[cached(
    ttl = 600,
    backend = "joined-file",
    key = "joined:{n}",
    group = "joined-group"
)]
async fn on_file(n: u64) -> u64 {
    let version = FILE_SOURCE.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(600)).await;
    version * 100 + n
}

fn invalidate_from_another_process(backend: &str, env: (&str, &str)) {
    run_child(backend, &["invalidate", "joined-group"], env);
}

fn invalidate_key_from_another_process(backend: &str, key: &str, env: (&str, &str)) {
    run_child(backend, &["invalidate-key", key], env);
}

fn run_child(backend: &str, args: &[&str], env: (&str, &str)) {
    let mut all = vec![backend];
    all.extend_from_slice(args);
    support::run_child(&all, &[env], &[]);
}

/// Starts a slow computation, lets another process change the data and invalidate the group while
/// it runs, then calls again: the later call must see the new data.
async fn later_call_sees_the_invalidation<F, Fut>(
    call: F,
    source: &AtomicU64,
    invalidate: impl FnOnce(),
) where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = u64> + Send + 'static,
{
    later_call_sees_the_invalidation_of(1, call, source, invalidate).await;
}

async fn later_call_sees_the_invalidation_of<F, Fut>(
    n: u64,
    call: F,
    source: &AtomicU64,
    invalidate: impl FnOnce(),
) where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = u64> + Send + 'static,
{
    let old = source.load(Ordering::SeqCst);
    let early = tokio::spawn(call(n));
    tokio::time::sleep(Duration::from_millis(150)).await; // the early call is computing
    source.store(old + 1, Ordering::SeqCst);
    invalidate(); // returns once the other process's invalidation returned Ok
    let (old, new) = (old * 100 + n, (old + 1) * 100 + n);
    let late = call(n).await;
    assert_eq!(
        late, new,
        "a call that started after another process's invalidation got the value computed before it"
    );
    assert_eq!(
        early.await.unwrap(),
        old,
        "the early call overlapped the invalidation"
    );
    assert_eq!(
        call(n).await,
        new,
        "the old value was stored over the new one"
    );
}

/// The early computation is alone (nobody joins it) and stores its old value after the other
/// process's key invalidation: that value must not be served afterwards.
async fn a_late_store_is_stale<F, Fut>(
    n: u64,
    call: F,
    source: &AtomicU64,
    invalidate: impl FnOnce(),
) where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = u64> + Send + 'static,
{
    let old = source.load(Ordering::SeqCst);
    let early = tokio::spawn(call(n));
    tokio::time::sleep(Duration::from_millis(150)).await;
    source.store(old + 1, Ordering::SeqCst);
    invalidate();
    assert_eq!(
        early.await.unwrap(),
        old * 100 + n,
        "overlapped the invalidation"
    );
    assert_eq!(
        call(n).await,
        (old + 1) * 100 + n,
        "a value computed before another process's key invalidation and stored after it was served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_followers_never_inherit_a_value_another_process_invalidated() {
    let _global = GLOBAL.lock().await;
    let redis = RegisteredRedis::start("joined-redis");
    // The group's generation exists before the computation starts (a lookup creates it).
    let url = redis.server.url();
    later_call_sees_the_invalidation(on_redis, &REDIS_SOURCE, || {
        invalidate_from_another_process("redis", ("REDIS_URL", &url))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_followers_never_inherit_a_value_another_process_invalidated() {
    let _global = GLOBAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    cache_runtime::register("joined-file", FileBackend::new(dir.path()));
    let path = dir.path().to_str().unwrap().to_owned();
    later_call_sees_the_invalidation(on_file, &FILE_SOURCE, || {
        invalidate_from_another_process("file", ("CACHE_DIR", &path))
    })
    .await;
    cache_runtime::unregister("joined-file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_key_invalidation_from_another_process_beats_joins_and_late_stores() {
    let _global = GLOBAL.lock().await;
    let redis = RegisteredRedis::start("joined-redis");
    let url = redis.server.url();
    later_call_sees_the_invalidation_of(2, on_redis, &REDIS_SOURCE, || {
        invalidate_key_from_another_process("redis", "joined:2", ("REDIS_URL", &url))
    })
    .await;
    a_late_store_is_stale(3, on_redis, &REDIS_SOURCE, || {
        invalidate_key_from_another_process("redis", "joined:3", ("REDIS_URL", &url))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_key_invalidation_from_another_process_beats_joins_and_late_stores() {
    let _global = GLOBAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    cache_runtime::register("joined-file", FileBackend::new(dir.path()));
    let path = dir.path().to_str().unwrap().to_owned();
    later_call_sees_the_invalidation_of(2, on_file, &FILE_SOURCE, || {
        invalidate_key_from_another_process("file", "joined:2", ("CACHE_DIR", &path))
    })
    .await;
    a_late_store_is_stale(3, on_file, &FILE_SOURCE, || {
        invalidate_key_from_another_process("file", "joined:3", ("CACHE_DIR", &path))
    })
    .await;
    cache_runtime::unregister("joined-file");
}
