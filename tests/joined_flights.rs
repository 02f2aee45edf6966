//! A call that starts after another process invalidated a group must not join a computation that
//! this process started before that invalidation (its value predates it).

mod support;

use std::{
    process::Command,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use cache_runtime::{cached, FileBackend};
use support::{child_binary, RegisteredRedis};

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
    let output = Command::new(child_binary())
        .args([backend, "invalidate", "joined-group"])
        .env(env.0, env.1)
        .output()
        .expect("cache-child runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
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
    let early = tokio::spawn(call(1));
    tokio::time::sleep(Duration::from_millis(150)).await; // the early call is computing
    source.store(2, Ordering::SeqCst);
    invalidate(); // returns once the other process's invalidate_group returned Ok
    let late = call(1).await;
    assert_eq!(
        late, 201,
        "a call that started after another process's invalidation got the value computed before it"
    );
    assert_eq!(
        early.await.unwrap(),
        101,
        "the early call overlapped the invalidation"
    );
    assert_eq!(
        call(1).await,
        201,
        "the old value was not stored over the new one"
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
