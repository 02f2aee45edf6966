//! The Redis backend against a real 3-master Redis Cluster that the test creates, and the tiered
//! backend on one that loses the node its subscriber is on.

mod support;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use cache_runtime::{cached, Backend, MemoryBackend, RedisBackend, TieredBackend};
use support::{RedisCluster, Unregister};

/// Every test takes this lock: the process-wide `invalidate_*` functions reach every registered
/// backend, so one test's lost node must not fail another test's invalidation.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

static RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(
    ttl = 60,
    backend = "cluster",
    key = "acct:{id}",
    group = "accounts",
    group = "acct:{id}:all"
)]
async fn account(id: u64) -> String {
    RUNS.fetch_add(1, Ordering::SeqCst);
    format!("account {id}")
}

static LOCKED_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, backend = "cluster", key = "locked:{id}", lock = "2s")]
async fn locked(id: u64) -> u64 {
    LOCKED_RUNS.fetch_add(1, Ordering::SeqCst);
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_set_ttl_and_invalidation_work_on_a_cluster_without_crossslot() {
    let _serial = SERIAL.lock().await;
    let cluster = RedisCluster::start(3);
    let urls = cluster.urls();
    let nodes: Vec<&str> = urls.iter().map(String::as_str).collect();
    cache_runtime::register("cluster", RedisBackend::cluster(&nodes).unwrap());
    let _unregister = Unregister("cluster");

    // Many keys: they land on every node; the groups' generation keys live in other slots.
    for id in 0..60 {
        assert_eq!(account(id).await, format!("account {id}"));
    }
    for id in 0..60 {
        account(id).await;
    }
    assert_eq!(RUNS.load(Ordering::SeqCst), 60, "second round all hits");
    let s = cache_runtime::stats()
        .into_iter()
        .find(|s| s.function.ends_with("::account"))
        .unwrap();
    assert_eq!(s.backend_errors, 0, "no CROSSSLOT or other error: {s:?}");
    // 60 entries, the generations of their groups (created on first use): "accounts" and one
    // "acct:{id}:all" each, and each key's tombstone.
    assert_eq!(cluster.total_keys(), 60 + 1 + 60 + 60);

    let pttl: u64 = cluster
        .cli_any(&["PTTL", "cache:k:acct:7"])
        .parse()
        .unwrap();
    assert!((55_000..=60_000).contains(&pttl), "{pttl}");

    // Key invalidation.
    cache_runtime::invalidate_key("acct:7").await.unwrap();
    account(7).await;
    assert_eq!(RUNS.load(Ordering::SeqCst), 61);

    // Group invalidation, per entry and for all.
    cache_runtime::invalidate_group("acct:8:all").await.unwrap();
    account(8).await;
    account(9).await;
    assert_eq!(RUNS.load(Ordering::SeqCst), 62);
    cache_runtime::invalidate_group("accounts").await.unwrap();
    for id in 0..60 {
        account(id).await;
    }
    assert_eq!(RUNS.load(Ordering::SeqCst), 122);

    // The lock works on a cluster too (its key has one slot).
    assert_eq!(locked(3).await, 3);
    assert_eq!(locked(3).await, 3);
    assert_eq!(LOCKED_RUNS.load(Ordering::SeqCst), 1);
    assert_eq!(cluster.cli_any(&["EXISTS", "cache:l:locked:3"]), "0");

    let s = cache_runtime::stats()
        .into_iter()
        .find(|s| s.function.ends_with("::account"))
        .unwrap();
    assert_eq!(s.backend_errors, 0, "{s:?}");
}

static TIERED_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(
    ttl = 60,
    backend = "cluster-tiered",
    key = "ct:{n}",
    group = "ctg:{g}"
)]
async fn cluster_tiered(n: u64, g: u64) -> u64 {
    (TIERED_RUNS.fetch_add(1, Ordering::SeqCst) as u64) * 1000 + n
}

fn tiered_runs() -> usize {
    TIERED_RUNS.load(Ordering::SeqCst)
}

async fn wait_until(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Calls until a call is served by the local tier (no read on any node, no run of the body).
async fn only_in_local_tier(cluster: &RedisCluster, n: u64, g: u64) -> u64 {
    for _ in 0..100 {
        let (reads, runs) = (cluster.reads(), tiered_runs());
        let value = cluster_tiered(n, g).await;
        if cluster.reads() == reads && tiered_runs() == runs {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("never served by the local tier");
}

/// Calls until one no longer returns `old`, within 100 ms; then `old` never comes back.
async fn until_replaced(n: u64, g: u64, old: u64) -> Duration {
    let started = Instant::now();
    while cluster_tiered(n, g).await == old {
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(100),
            "still {old} after {took:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = started.elapsed();
    for _ in 0..20 {
        assert_ne!(cluster_tiered(n, g).await, old, "the old value came back");
    }
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_invalidations_survive_the_loss_of_the_subscribers_node() {
    let _serial = SERIAL.lock().await;
    let mut cluster = RedisCluster::start_with(3, &["--cluster-require-full-coverage", "no"]);
    let urls = cluster.urls();
    let nodes: Vec<&str> = urls.iter().map(String::as_str).collect();
    // A prefix whose channel's slot is on the first node, where the subscriber starts: losing that
    // node loses both.
    let prefix = (0..)
        .map(|i| format!("ct{i}:"))
        .find(|p| cluster.owner_of(&format!("{p}invalidations")) == 0)
        .unwrap();
    let backend = || RedisBackend::cluster(&nodes).unwrap().with_prefix(&prefix);
    let local = || MemoryBackend::with_limits(1_000, 1 << 20);
    let first = Arc::new(TieredBackend::new(backend(), local()));
    cache_runtime::register_arc("cluster-tiered", first.clone());
    let _unregister = Unregister("cluster-tiered");
    // Another process: its invalidations reach `first` only through Redis.
    let second = TieredBackend::new(backend(), local());
    second.remote().ping().await.unwrap();

    cluster_tiered(0, 0).await; // starts the subscriber
    wait_until(Duration::from_secs(5), "the subscription", || {
        first.is_subscribed()
    })
    .await;
    let channel = format!("{prefix}invalidations");
    let on = cluster.subscribers(&channel);
    assert_eq!(on, [1, 0, 0], "subscribed on the first node");
    let doomed = 0;

    // A key and a group whose keys live on the nodes that stay up.
    let survives = |key: String| cluster.owner_of(&key) != doomed;
    let n = (1..)
        .find(|n| survives(format!("{prefix}k:ct:{n}")) && survives(format!("{prefix}t:ct:{n}")))
        .unwrap();
    let g = (1..)
        .find(|g| survives(format!("{prefix}g:ctg:{g}")))
        .unwrap();
    let group = format!("ctg:{g}");

    let before_loss = only_in_local_tier(&cluster, n, g).await;
    cluster.kill_node(doomed);
    // Invalidated while the subscriber is (or is about to be) without a node.
    let started = Instant::now();
    second.invalidate_group(&group).await.unwrap();
    eprintln!(
        "invalidation with the channel's node lost took {:?}",
        started.elapsed()
    );
    let took = until_replaced(n, g, before_loss).await;
    eprintln!("invalidation during the loss: replaced after {took:?}");

    wait_until(
        Duration::from_secs(10),
        "a subscription on another node",
        || first.is_subscribed(),
    )
    .await;
    let on = cluster.subscribers(&channel);
    assert_eq!(on.iter().sum::<u64>(), 1, "moved: {on:?}");
    assert_eq!(on[doomed], 0);

    // Group and key invalidations by the other instance still reach this process's local tier.
    let old = only_in_local_tier(&cluster, n, g).await;
    let runs = tiered_runs();
    second.invalidate_group(&group).await.unwrap();
    let took = until_replaced(n, g, old).await;
    assert_eq!(tiered_runs(), runs + 1, "recomputed once");
    eprintln!("group invalidation after the move: replaced after {took:?}");

    let old = only_in_local_tier(&cluster, n, g).await;
    second.delete(&format!("ct:{n}")).await.unwrap();
    let took = until_replaced(n, g, old).await;
    eprintln!("key invalidation after the move: replaced after {took:?}");
}
