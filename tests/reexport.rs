//! `crate = ".."`: the code the attributes generate names the runtime through the given path, so
//! a crate that re-exports `cache_runtime` can hand the attributes to its users.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Stands for a crate that re-exports the runtime.
mod deps {
    pub use cache_runtime as runtime;
}

use deps::runtime::{cache_invalidate, cached};

static RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, key = "reexported:{n}", crate = "crate::deps::runtime")]
async fn reexported(n: u64) -> u64 {
    RUNS.fetch_add(1, Ordering::SeqCst);
    n * 3
}

#[cache_invalidate(key = "reexported:{n}", crate = "crate::deps::runtime")]
async fn changed(n: u64) -> Result<(), String> {
    let _ = n;
    Ok(())
}

#[tokio::test]
async fn attributes_reach_the_runtime_through_a_reexport() {
    assert_eq!(reexported(2).await, 6);
    assert_eq!(reexported(2).await, 6);
    assert_eq!(RUNS.load(Ordering::SeqCst), 1);
    assert_eq!(reexported_key(2), "reexported:2");
    changed(2).await.unwrap();
    assert_eq!(reexported(2).await, 6);
    assert_eq!(
        RUNS.load(Ordering::SeqCst),
        2,
        "the invalidation after success reached it"
    );
}
