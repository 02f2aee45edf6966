//! Faults against real Redis servers the tests start: a server killed under load, restarts, the
//! cross-process lock and its holder dying.

mod support;

use std::{
    process::{Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use cache_runtime::cached;
use support::{child_binary, RedisServer, RegisteredRedis};

static LOAD_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, backend = "redis-load")]
async fn under_load(n: u64) -> u64 {
    LOAD_RUNS.fetch_add(1, Ordering::SeqCst);
    n * 7
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_fails_no_call_and_hits_resume_after_restart() {
    let mut redis = RegisteredRedis::start("redis-load");
    let started = Instant::now();
    let workers: Vec<_> = (0..32u64)
        .map(|worker| {
            tokio::spawn(async move {
                let (mut calls, mut wrong, mut slowest) = (0u64, 0u64, Duration::ZERO);
                let mut i = worker;
                while started.elapsed() < Duration::from_millis(3000) {
                    let n = i % 50;
                    let call = Instant::now();
                    if under_load(n).await != n * 7 {
                        wrong += 1;
                    }
                    slowest = slowest.max(call.elapsed());
                    calls += 1;
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                (calls, wrong, slowest)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    redis.server.kill();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    redis.server.restart();

    let (mut calls, mut wrong, mut slowest) = (0, 0, Duration::ZERO);
    for worker in workers {
        let (c, w, s) = worker.await.unwrap();
        calls += c;
        wrong += w;
        slowest = slowest.max(s);
    }
    assert!(calls > 1000, "{calls} calls");
    assert_eq!(wrong, 0, "every call returned the right value");
    assert!(
        slowest < Duration::from_millis(800),
        "slowest call {slowest:?}"
    );

    // After the restart the cache fills again and serves hits.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        under_load(1).await;
        let before = LOAD_RUNS.load(Ordering::SeqCst);
        under_load(1).await;
        if LOAD_RUNS.load(Ordering::SeqCst) == before {
            break;
        }
        assert!(Instant::now() < deadline, "no hits after the restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = cache_runtime::stats();
    let s = stats
        .iter()
        .find(|s| s.function.ends_with("::under_load"))
        .unwrap();
    assert!(s.backend_errors > 0, "the outage was noticed: {s:?}");
    println!("{calls} calls, slowest {slowest:?}, {s:?}");
}

static SWR_REDIS_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "300ms", stale = "5s", backend = "redis-stale")]
async fn stale_on_redis(n: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(150)).await;
    SWR_REDIS_RUNS.fetch_add(1, Ordering::SeqCst) as u64 + n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_through_redis() {
    let redis = RegisteredRedis::start("redis-stale");
    assert_eq!(stale_on_redis(10).await, 10);
    let key = stale_on_redis_key(10);
    let pttl: u64 = redis
        .server
        .cli(&["PTTL", &format!("cache:k:{key}")])
        .parse()
        .unwrap();
    assert!(pttl > 5_000, "kept for the stale window too: {pttl}");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let started = Instant::now();
    assert_eq!(stale_on_redis(10).await, 10, "stale");
    assert!(started.elapsed() < Duration::from_millis(100));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(stale_on_redis(10).await, 11, "refreshed in the background");
}

fn locked_child(url: &str, n: u64, sleep_ms: u64) -> std::process::Child {
    Command::new(child_binary())
        .args(["redis", "locked", &n.to_string(), &sleep_ms.to_string()])
        .env("REDIS_URL", url)
        .stdout(Stdio::piped())
        .spawn()
        .expect("cache-child starts")
}

fn finish(child: std::process::Child) -> (bool, String) {
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (stdout.contains("BODY_RAN"), stdout)
}

#[test]
fn concurrent_misses_in_two_processes_compute_once_under_the_lock() {
    let server = RedisServer::start();
    let a = locked_child(&server.url(), 5, 800);
    std::thread::sleep(Duration::from_millis(150));
    let b = locked_child(&server.url(), 5, 800);
    let (ran_a, out_a) = finish(a);
    let (ran_b, out_b) = finish(b);
    assert!(
        out_a.contains("value=15") && out_b.contains("value=15"),
        "{out_a} {out_b}"
    );
    assert_eq!(
        u8::from(ran_a) + u8::from(ran_b),
        1,
        "one process computed: {out_a} / {out_b}"
    );
    assert_eq!(
        server.cli(&["EXISTS", "cache:l:locked:5"]),
        "0",
        "the lock was released"
    );
}

#[test]
fn a_dead_lock_holder_blocks_others_no_longer_than_the_lock_ttl() {
    let server = RedisServer::start();
    let mut holder = locked_child(&server.url(), 6, 30_000);
    // Wait until the holder has the lock, then kill it mid-computation.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.cli(&["EXISTS", "cache:l:locked:6"]) != "1" {
        assert!(Instant::now() < deadline, "the holder never took the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    holder.kill().unwrap();
    holder.wait().unwrap();

    let started = Instant::now();
    let (ran, out) = finish(locked_child(&server.url(), 6, 50));
    let took = started.elapsed();
    assert!(ran && out.contains("value=18"), "{out}");
    // Lock TTL 1 s, plus process start-up and the 50 ms body.
    assert!(took < Duration::from_millis(2500), "waited {took:?}");
}
