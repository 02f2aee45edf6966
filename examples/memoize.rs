//! `#[cached]` on a plain service function, no web framework and no Redis: a key template, a
//! group, invalidation by key and by group, and how long each call took.
//!
//! ```text
//! cargo run --example memoize
//! ```
//!
//! Each line says whether the call ran the body (`miss`) or was answered from the in-process
//! cache (`hit`), how long it took, and what it returned.

use std::{
    collections::BTreeMap,
    fmt::Debug,
    future::Future,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use cache_runtime::{cache_invalidate, cached};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Product {
    sku: String,
    name: String,
    price_cents: u64,
}

/// The error of the service. `Clone`, so that concurrent callers waiting for one computation get
/// a copy of its error; errors are not cached (only `Ok` is, by default).
#[derive(Debug, Clone, PartialEq)]
struct NotFound(String);

/// A stand-in database: SKU -> (name, price in cents).
static CATALOG: Mutex<BTreeMap<String, (String, u64)>> = Mutex::new(BTreeMap::new());

/// How many times a cached body ran (a miss), to tell hits from misses below.
static BODY_RUNS: AtomicUsize = AtomicUsize::new(0);

/// Simulated latency of the database.
const QUERY: Duration = Duration::from_millis(200);

/// The slow service call, memoized for 10 minutes under `product:<sku>`, in group `catalog`.
#[cached(ttl = "10m", key = "product:{sku}", group = "catalog")]
async fn load_product(sku: &str) -> Result<Product, NotFound> {
    BODY_RUNS.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(QUERY).await;
    let catalog = CATALOG.lock().unwrap();
    let (name, price_cents) = catalog.get(sku).ok_or_else(|| NotFound(sku.to_owned()))?;
    Ok(Product {
        sku: sku.to_owned(),
        name: name.clone(),
        price_cents: *price_cents,
    })
}

/// Another cached call in the same group: one `invalidate_group("catalog")` drops both.
#[cached(ttl = "10m", key = "catalog:size", group = "catalog")]
async fn catalog_size() -> usize {
    BODY_RUNS.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(QUERY).await;
    CATALOG.lock().unwrap().len()
}

/// A write: after it returns `Ok`, the entry `product:<sku>` is invalidated (in every backend).
#[cache_invalidate(key = "product:{sku}")]
async fn set_price(sku: &str, price_cents: u64) -> Result<(), NotFound> {
    match CATALOG.lock().unwrap().get_mut(sku) {
        Some(entry) => {
            entry.1 = price_cents;
            Ok(())
        }
        None => Err(NotFound(sku.to_owned())),
    }
}

/// Runs `call`, then prints whether it ran the body, how long it took and what it returned.
async fn show<T: Debug>(label: &str, call: impl Future<Output = T>) -> T {
    let runs = BODY_RUNS.load(Ordering::Relaxed);
    let started = Instant::now();
    let value = call.await;
    let took = started.elapsed();
    let outcome = match BODY_RUNS.load(Ordering::Relaxed) > runs {
        true => "miss",
        false => "hit ",
    };
    println!(
        "{outcome} {label:<26} {:>8.3} ms  -> {value:?}",
        took.as_secs_f64() * 1e3
    );
    value
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), cache_runtime::CacheError> {
    for (sku, name, cents) in [("A-1", "kettle", 2_490), ("B-2", "teapot", 1_850)] {
        CATALOG
            .lock()
            .unwrap()
            .insert(sku.to_owned(), (name.to_owned(), cents));
    }
    println!("key of load_product(\"A-1\"): {}", load_product_key("A-1"));

    println!("\n-- first call runs the body, the next ones are hits");
    show("load_product(\"A-1\")", load_product("A-1"))
        .await
        .ok();
    show("load_product(\"A-1\")", load_product("A-1"))
        .await
        .ok();
    show("load_product(\"B-2\")", load_product("B-2"))
        .await
        .ok();
    show("load_product(\"B-2\")", load_product("B-2"))
        .await
        .ok();
    show("catalog_size()", catalog_size()).await;
    show("catalog_size()", catalog_size()).await;

    println!("\n-- errors are not cached: both calls run the body");
    show("load_product(\"Z-9\")", load_product("Z-9"))
        .await
        .ok();
    show("load_product(\"Z-9\")", load_product("Z-9"))
        .await
        .ok();

    println!("\n-- a write invalidates its key (#[cache_invalidate]); B-2 stays cached");
    set_price("A-1", 1_990).await.ok();
    show("load_product(\"A-1\")", load_product("A-1"))
        .await
        .ok();
    show("load_product(\"A-1\")", load_product("A-1"))
        .await
        .ok();
    show("load_product(\"B-2\")", load_product("B-2"))
        .await
        .ok();

    println!("\n-- one call's entry, through the generated load_product_invalidate");
    load_product_invalidate("B-2").await?;
    show("load_product(\"B-2\")", load_product("B-2"))
        .await
        .ok();

    println!("\n-- invalidate_group(\"catalog\") drops every entry of the group");
    cache_runtime::invalidate_group("catalog").await?;
    show("load_product(\"A-1\")", load_product("A-1"))
        .await
        .ok();
    show("load_product(\"B-2\")", load_product("B-2"))
        .await
        .ok();
    show("catalog_size()", catalog_size()).await;
    show("load_product(\"A-1\")", load_product("A-1"))
        .await
        .ok();

    println!("\n-- cache_runtime::stats()");
    for s in cache_runtime::stats() {
        println!(
            "{:<28} backend={} hits={} misses={}",
            s.function, s.backend, s.hits, s.misses
        );
    }
    Ok(())
}
