//! The Redis backend against a real 3-master Redis Cluster that the test creates.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};

use cache_runtime::{cached, RedisBackend};
use support::RedisCluster;

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
    let cluster = RedisCluster::start(3);
    let urls = cluster.urls();
    let nodes: Vec<&str> = urls.iter().map(String::as_str).collect();
    cache_runtime::register("cluster", RedisBackend::cluster(&nodes).unwrap());

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
