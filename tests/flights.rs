//! Single-flight without hangs or queues: re-entrant calls, errors that cannot be cloned, stores
//! that never stall unrelated work, and invalidation floods that do not turn caching off.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use cache_runtime::{async_trait, cached, Backend, BackendError, Lookup, MemoryBackend};

/// A graph with a cycle: 1 → 2 → 1.
fn next(node: u64) -> u64 {
    if node == 1 {
        2
    } else {
        1
    }
}

static WALKS: AtomicUsize = AtomicUsize::new(0);

type Walk = std::pin::Pin<Box<dyn std::future::Future<Output = u64> + Send>>;

/// The recursive call goes through a fn pointer defined outside `walk`, so that proving the body
/// `Send` does not need `walk`'s own future type while it is being defined.
static WALKER: fn(u64, u32) -> Walk = |node, steps| Box::pin(walk(node, steps));

/// Walks `steps` edges from `node`; the key leaves `steps` out, so the walk re-enters its own key.
#[cached(ttl = 60, key = "walk:{node}")]
async fn walk(node: u64, steps: u32) -> u64 {
    WALKS.fetch_add(1, Ordering::SeqCst);
    if steps == 0 {
        return node;
    }
    WALKER(next(node), steps - 1).await + 10
}

#[tokio::test]
async fn a_call_that_reenters_its_own_key_runs_uncached_instead_of_waiting_for_itself() {
    let value = tokio::time::timeout(Duration::from_secs(5), walk(1, 3))
        .await
        .expect("the re-entrant call waited for itself");
    assert_eq!(value, 32);
    let runs = WALKS.load(Ordering::SeqCst);
    assert_eq!(walk(1, 3).await, 32, "the outer call's value is cached");
    assert_eq!(WALKS.load(Ordering::SeqCst), runs);
}

/// An error type that is not `Clone`, as `anyhow::Error` and most `thiserror` enums.
#[derive(Debug)]
struct Opaque;

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static MOST_AT_ONCE: AtomicUsize = AtomicUsize::new(0);
static FAILURES: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, key = "fails:{n}")]
async fn fails(n: u64) -> Result<u64, Opaque> {
    let now = IN_FLIGHT.fetch_add(1, Ordering::SeqCst) + 1;
    MOST_AT_ONCE.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    FAILURES.fetch_add(1, Ordering::SeqCst);
    let _ = n;
    Err(Opaque)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_of_an_error_that_cannot_be_cloned_run_concurrently_not_in_a_queue() {
    let callers: Vec<_> = (0..16).map(|_| tokio::spawn(fails(1))).collect();
    for caller in callers {
        assert!(caller.await.unwrap().is_err());
    }
    assert_eq!(FAILURES.load(Ordering::SeqCst), 16);
    assert!(
        MOST_AT_ONCE.load(Ordering::SeqCst) > 1,
        "the waiters of a failed leader ran their bodies one after another"
    );
}

/// A backend whose stores hang until the guard's timeout.
struct SlowStores {
    store_finished: Arc<AtomicBool>,
}

#[async_trait]
impl Backend for SlowStores {
    async fn get(&self, _key: &str, groups: &[String]) -> Result<Lookup, BackendError> {
        Ok(Lookup {
            value: None,
            generations: vec![0; groups.len()],
        })
    }
    async fn set(
        &self,
        _: &str,
        _: Vec<u8>,
        _: Duration,
        _: &[String],
    ) -> Result<(), BackendError> {
        struct Finished(Arc<AtomicBool>);
        impl Drop for Finished {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let _finished = Finished(self.store_finished.clone());
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok(())
    }
    async fn delete(&self, _: &str) -> Result<(), BackendError> {
        Ok(())
    }
    async fn invalidate_group(&self, _: &str) -> Result<(), BackendError> {
        Ok(())
    }
    async fn clear(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

#[cached(ttl = 60, backend = "flights-slow", key = "slow:{n}")]
async fn slow_store(n: u64) -> u64 {
    n
}

static QUICK_RUNS: AtomicU64 = AtomicU64::new(0);

#[cached(ttl = 60, backend = "flights-memory", key = "quick:{n}")]
async fn quick(n: u64) -> u64 {
    QUICK_RUNS.fetch_add(1, Ordering::SeqCst);
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_store_never_stalls_unrelated_misses_while_an_invalidation_waits() {
    let store_finished = Arc::new(AtomicBool::new(false));
    cache_runtime::register(
        "flights-slow",
        SlowStores {
            store_finished: store_finished.clone(),
        },
    );
    cache_runtime::register("flights-memory", MemoryBackend::default());
    let slow = tokio::spawn(slow_store(1));
    tokio::time::sleep(Duration::from_millis(30)).await; // the slow store is under way
    let invalidation = tokio::spawn(cache_runtime::invalidate_key("unrelated:key"));
    tokio::time::sleep(Duration::from_millis(10)).await; // the invalidation waits (or not)
    assert_eq!(quick(5).await, 5, "a memory miss");
    assert!(
        !store_finished.load(Ordering::SeqCst),
        "a memory-backend miss waited for a store on another backend to time out"
    );
    slow.await.unwrap();
    let _ = invalidation.await.unwrap();
    cache_runtime::unregister("flights-slow");
}

static FLOODED_RUNS: AtomicU64 = AtomicU64::new(0);

#[cached(ttl = 60, backend = "flights-memory-2", key = "flooded:{n}")]
async fn flooded(n: u64) -> u64 {
    FLOODED_RUNS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_unrelated_invalidations_during_a_computation_do_not_turn_caching_off() {
    cache_runtime::register("flights-memory-2", MemoryBackend::default());
    let computing = tokio::spawn(flooded(1));
    for i in 0..5000 {
        cache_runtime::invalidate_key(&format!("other:{i}"))
            .await
            .unwrap();
    }
    assert_eq!(computing.await.unwrap(), 1);
    assert_eq!(flooded(1).await, 1);
    assert_eq!(
        FLOODED_RUNS.load(Ordering::SeqCst),
        1,
        "the value computed during 5000 unrelated invalidations was not stored"
    );
}

static DEPTHS: AtomicUsize = AtomicUsize::new(0);

/// A cached fn that calls itself (boxed, as any recursive `async fn`): it compiles, and runs its
/// body in place (a body calling its own fn is never spawned).
#[cached(ttl = 60, key = "depth:{node}")]
async fn depth(node: u64, steps: u32) -> u64 {
    DEPTHS.fetch_add(1, Ordering::SeqCst);
    if steps == 0 {
        return node;
    }
    Box::pin(depth(next(node), steps - 1)).await + 10
}

#[tokio::test]
async fn a_cached_fn_may_call_itself_and_cycles_do_not_hang() {
    let value = tokio::time::timeout(Duration::from_secs(5), depth(1, 3))
        .await
        .expect("the recursive call waited for itself");
    assert_eq!(value, 32);
    let runs = DEPTHS.load(Ordering::SeqCst);
    assert_eq!(depth(1, 3).await, 32);
    assert_eq!(
        DEPTHS.load(Ordering::SeqCst),
        runs,
        "the outer value is cached"
    );
}

static GROUPED_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(
    ttl = 60,
    backend = "flights-grouped",
    key = "grouped:{n}",
    group = "grouped"
)]
async fn grouped(n: u64) -> u64 {
    GROUPED_RUNS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrelated_group_invalidations_do_not_split_a_memory_flight() {
    cache_runtime::register("flights-grouped", MemoryBackend::default());
    let leader = tokio::spawn(grouped(1));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut callers = Vec::new();
    for i in 0..16 {
        cache_runtime::invalidate_group(&format!("unrelated-{i}"))
            .await
            .unwrap();
        callers.push(tokio::spawn(grouped(1)));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(leader.await.unwrap(), 1);
    for caller in callers {
        assert_eq!(caller.await.unwrap(), 1);
    }
    assert_eq!(
        GROUPED_RUNS.load(Ordering::SeqCst),
        1,
        "invalidations of other groups split one key's single flight"
    );
}
