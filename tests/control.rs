//! Per-call control: the `<fn>_refresh`, `<fn>_prime` and `<fn>_peek` companions, and the
//! `force_refresh`, `cache_if` and `skip` arguments, on the memory backend and on a private Redis.
//! Counting how often each body ran.

mod support;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use cache_runtime::cached;
use serde::{Deserialize, Serialize};
use support::wrapped::{Call, Hold, Wrapped};
use tokio::sync::Notify;

/// Tests that invalidate groups (which reach every registered backend) or register backends take
/// this lock, so that a Redis stopped by one test does not fail another's invalidation.
static GLOBAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

static PRICE_RUNS: AtomicUsize = AtomicUsize::new(0);
static PRICE_BASE: AtomicU64 = AtomicU64::new(0);

#[cached(ttl = 60, key = "price:{item}")]
async fn price(item: u64) -> u64 {
    PRICE_RUNS.fetch_add(1, Ordering::SeqCst);
    PRICE_BASE.load(Ordering::SeqCst) + item
}

#[tokio::test]
async fn refresh_runs_the_body_and_stores_its_value() {
    assert_eq!(price(1).await, 1);
    PRICE_BASE.store(100, Ordering::SeqCst);
    assert_eq!(price(1).await, 1, "still cached");
    assert_eq!(price_refresh(1).await, 101);
    assert_eq!(price(1).await, 101, "the refreshed value is stored");
    assert_eq!(PRICE_RUNS.load(Ordering::SeqCst), 2);
    // A refresh of nothing cached runs and stores too.
    assert_eq!(price_refresh(2).await, 102);
    assert_eq!(price(2).await, 102);
    assert_eq!(PRICE_RUNS.load(Ordering::SeqCst), 3);
}

static STOCK_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, key = "stock:{item}", group = "stock")]
async fn stock(item: u64) -> Result<u64, String> {
    STOCK_RUNS.fetch_add(1, Ordering::SeqCst);
    if item == 0 {
        return Err("no item 0".into());
    }
    Ok(item * 10)
}

#[tokio::test]
async fn prime_stores_a_known_value_and_peek_never_runs_the_body() {
    let _global = GLOBAL.lock().await;
    assert_eq!(stock_peek(1).await, None);
    stock_prime(1, Ok(555)).await.unwrap();
    assert_eq!(stock_peek(1).await, Some(Ok(555)));
    assert_eq!(stock(1).await, Ok(555));
    assert_eq!(
        STOCK_RUNS.load(Ordering::SeqCst),
        0,
        "neither prime nor peek runs it"
    );

    // Primed values are in their groups.
    cache_runtime::invalidate_group("stock").await.unwrap();
    assert_eq!(stock_peek(1).await, None);
    assert_eq!(stock(1).await, Ok(10));
    assert_eq!(STOCK_RUNS.load(Ordering::SeqCst), 1);

    // A value the fn does not cache (an `Err`) only removes the entry.
    stock_prime(1, Err("gone".into())).await.unwrap();
    assert_eq!(stock_peek(1).await, None);
    assert_eq!(stock(1).await, Ok(10));
    assert_eq!(STOCK_RUNS.load(Ordering::SeqCst), 2);
}

static STALE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = "100ms", stale = "10s")]
async fn quote_of_the_day(n: u64) -> u64 {
    STALE_RUNS.fetch_add(1, Ordering::SeqCst) as u64 + n
}

#[tokio::test]
async fn peek_returns_fresh_values_only() {
    let first = quote_of_the_day(1).await;
    assert_eq!(quote_of_the_day_peek(1).await, Some(first));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(quote_of_the_day_peek(1).await, None, "stale is not fresh");
    assert_eq!(
        quote_of_the_day(1).await,
        first,
        "the call still serves it stale"
    );
}

static QUOTE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, skip = [fresh], force_refresh = fresh)]
async fn quote(symbol: String, fresh: bool) -> usize {
    let _ = symbol;
    QUOTE_RUNS.fetch_add(1, Ordering::SeqCst)
}

#[tokio::test]
async fn force_refresh_recomputes_and_stores_for_the_other_calls() {
    let first = quote("A".into(), false).await;
    assert_eq!(quote("A".into(), false).await, first);
    let forced = quote("A".into(), true).await;
    assert_eq!(forced, first + 1);
    assert_eq!(
        quote("A".into(), false).await,
        forced,
        "stored for the unforced calls"
    );
    assert_eq!(quote_key("A".into(), true), quote_key("A".into(), false));
    assert_eq!(QUOTE_RUNS.load(Ordering::SeqCst), 2);
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Page {
    n: u64,
    complete: bool,
}

fn is_complete(page: &Page) -> bool {
    page.complete
}

static PAGE_RUNS: AtomicUsize = AtomicUsize::new(0);
static PAGES_COMPLETE: AtomicBool = AtomicBool::new(false);

#[cached(ttl = 60, cache_if = is_complete)]
async fn page(n: u64) -> Result<Page, String> {
    PAGE_RUNS.fetch_add(1, Ordering::SeqCst);
    Ok(Page {
        n,
        complete: PAGES_COMPLETE.load(Ordering::SeqCst),
    })
}

#[tokio::test]
async fn cache_if_decides_from_the_value_whether_to_store_it() {
    assert!(!page(1).await.unwrap().complete);
    assert!(!page(1).await.unwrap().complete);
    assert_eq!(
        PAGE_RUNS.load(Ordering::SeqCst),
        2,
        "rejected values are returned, not stored"
    );
    // Prime follows `cache_if` too.
    page_prime(
        1,
        Ok(Page {
            n: 1,
            complete: false,
        }),
    )
    .await
    .unwrap();
    assert_eq!(page_peek(1).await, None);
    PAGES_COMPLETE.store(true, Ordering::SeqCst);
    assert!(page(1).await.unwrap().complete);
    assert!(page(1).await.unwrap().complete);
    assert_eq!(PAGE_RUNS.load(Ordering::SeqCst), 3);
}

static FEED_RUNS: AtomicUsize = AtomicUsize::new(0);

/// A closure works as `cache_if` too; a rejected value is no failure that `stale_if_error` would
/// answer with the old value.
#[cached(ttl = "100ms", stale_if_error = "10s", cache_if = |items: &Vec<u64>| !items.is_empty())]
async fn feed(user: u64) -> Vec<u64> {
    match FEED_RUNS.fetch_add(1, Ordering::SeqCst) {
        0 => vec![user],
        _ => Vec::new(),
    }
}

#[tokio::test]
async fn a_rejected_value_is_returned_not_replaced_by_a_stale_one() {
    assert_eq!(feed(7).await, vec![7]);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(feed(7).await, Vec::<u64>::new());
}

/// Not `Serialize`: left out of the key with `skip`.
struct Db {
    region: &'static str,
}

static NAME_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, skip = [db])]
async fn user_name(db: &Db, id: u64) -> String {
    NAME_RUNS.fetch_add(1, Ordering::SeqCst);
    format!("{}-{id}", db.region)
}

#[tokio::test]
async fn skipped_arguments_need_not_serialize_and_stay_out_of_the_key() {
    let (eu, us) = (Db { region: "eu" }, Db { region: "us" });
    assert_eq!(user_name(&eu, 1).await, "eu-1");
    assert_eq!(user_name(&us, 1).await, "eu-1", "the db is not in the key");
    assert_eq!(user_name(&us, 2).await, "us-2");
    assert_eq!(NAME_RUNS.load(Ordering::SeqCst), 2);
    assert_eq!(user_name_key(&eu, 1), user_name_key(&us, 1));
    // Refresh passes the skipped argument to the body.
    assert_eq!(user_name_refresh(&us, 1).await, "us-1");
    assert_eq!(user_name(&eu, 1).await, "us-1");
}

/// Starts and holds bodies until told.
struct Gate {
    entered: Notify,
    release: Notify,
}

impl Gate {
    const fn new() -> Self {
        Self {
            entered: Notify::const_new(),
            release: Notify::const_new(),
        }
    }

    async fn pass(&self) {
        self.entered.notify_one();
        self.release.notified().await;
    }
}

static SLOW_GATE: Gate = Gate::new();

#[cached(ttl = 60, key = "slow:{id}", group = "slow")]
async fn slow(id: u64, label: &'static str) -> String {
    SLOW_GATE.pass().await;
    format!("{label}{id}")
}

#[tokio::test]
async fn a_computation_older_than_a_prime_does_not_overwrite_it() {
    let _global = GLOBAL.lock().await; // `SLOW_GATE` is shared with the next test
    let older = tokio::spawn(slow(1, "old"));
    SLOW_GATE.entered.notified().await;
    slow_prime(1, "old", "primed".into()).await.unwrap();
    SLOW_GATE.release.notify_one();
    assert_eq!(
        older.await.unwrap(),
        "old1",
        "its caller gets what it computed"
    );
    assert_eq!(
        slow_peek(1, "old").await.as_deref(),
        Some("primed"),
        "but it is not stored over the primed value"
    );
}

#[tokio::test]
async fn a_refresh_overtaken_by_an_invalidation_is_not_stored() {
    let _global = GLOBAL.lock().await;
    let refresh = tokio::spawn(slow_refresh(2, "refreshed"));
    SLOW_GATE.entered.notified().await;
    cache_runtime::invalidate_group("slow").await.unwrap();
    SLOW_GATE.release.notify_one();
    assert_eq!(refresh.await.unwrap(), "refreshed2");
    assert_eq!(slow_peek(2, "x").await, None);
}

static HELD_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, backend = "held", key = "held:{id}", group = "held")]
async fn held(id: u64) -> u64 {
    HELD_RUNS.fetch_add(1, Ordering::SeqCst);
    id
}

#[tokio::test]
async fn a_prime_racing_an_invalidation_does_not_resurrect_its_value() {
    let _global = GLOBAL.lock().await;
    // A memory store, used through the serialized path, whose lookup can be held (a prime reads
    // generations twice: before and after its own invalidation of the key; the second read is the
    // one held).
    let backend = Arc::new(Wrapped::new(Hold::new(Call::Get)));
    cache_runtime::register_arc("held", backend.clone());
    let hold = &backend.hook;

    // The prime has invalidated the old entry and reads the generations to store under; an
    // invalidation of the key lands meanwhile and wins.
    hold.skip.store(1, Ordering::SeqCst);
    hold.hold.store(true, Ordering::SeqCst);
    let prime = tokio::spawn(held_prime(1, 500));
    hold.held.notified().await;
    cache_runtime::invalidate_key(&held_key(1)).await.unwrap();
    hold.resume.notify_one();
    prime.await.unwrap().unwrap();
    assert_eq!(held_peek(1).await, None);
    assert_eq!(held(1).await, 1);
    assert_eq!(HELD_RUNS.load(Ordering::SeqCst), 1);

    // The same with a group invalidation.
    hold.skip.store(1, Ordering::SeqCst);
    hold.hold.store(true, Ordering::SeqCst);
    let prime = tokio::spawn(held_prime(2, 500));
    hold.held.notified().await;
    cache_runtime::invalidate_group("held").await.unwrap();
    hold.resume.notify_one();
    prime.await.unwrap().unwrap();
    assert_eq!(held_peek(2).await, None);

    // Undisturbed, the prime is stored (through the serialized path).
    held_prime(3, 500).await.unwrap();
    assert_eq!(held_peek(3).await, Some(500));
    assert_eq!(held(3).await, 500);
    assert_eq!(HELD_RUNS.load(Ordering::SeqCst), 1);
    cache_runtime::unregister("held");
}

/// Serializes to an error (a map with non-string keys): the key cannot be built.
#[derive(Serialize)]
struct Unkeyable(std::collections::HashMap<(u8, u8), u8>);

static UNKEYABLE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60)]
async fn unkeyable(filter: Unkeyable) -> usize {
    let _ = filter;
    UNKEYABLE_RUNS.fetch_add(1, Ordering::SeqCst)
}

fn bad() -> Unkeyable {
    Unkeyable([((1, 2), 3)].into_iter().collect())
}

#[tokio::test]
async fn unkeyable_calls_are_refreshed_uncached_and_cannot_be_primed() {
    assert!(matches!(
        unkeyable_prime(bad(), 5).await,
        Err(cache_runtime::CacheError::Unkeyable { .. })
    ));
    assert_eq!(unkeyable_peek(bad()).await, None);
    let first = unkeyable_refresh(bad()).await;
    assert_eq!(unkeyable(bad()).await, first + 1, "nothing was stored");
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Account {
    id: u64,
    owner: String,
}

static ACCOUNT_RUNS: AtomicUsize = AtomicUsize::new(0);
static OWNER: std::sync::Mutex<&'static str> = std::sync::Mutex::new("ada");

#[cached(
    ttl = 60,
    backend = "redis-control",
    key = "acct:{id}",
    group = "accounts"
)]
async fn account(id: u64) -> Account {
    ACCOUNT_RUNS.fetch_add(1, Ordering::SeqCst);
    Account {
        id,
        owner: OWNER.lock().unwrap().to_string(),
    }
}

/// The same entries through another registration of the same server: what another process sees.
#[cached(
    ttl = 60,
    backend = "redis-control-b",
    key = "acct:{id}",
    group = "accounts"
)]
async fn account_elsewhere(id: u64) -> Account {
    Account {
        id,
        owner: "elsewhere".into(),
    }
}

static ACCOUNT_GATE: Gate = Gate::new();

#[cached(ttl = 60, backend = "redis-control", key = "slow-acct:{id}")]
async fn slow_account(id: u64, owner: &'static str) -> Account {
    ACCOUNT_GATE.pass().await;
    Account {
        id,
        owner: owner.into(),
    }
}

#[tokio::test]
async fn prime_peek_and_refresh_on_redis() {
    let _global = GLOBAL.lock().await;
    let redis = support::RegisteredRedis::start("redis-control");
    cache_runtime::register(
        "redis-control-b",
        cache_runtime::RedisBackend::open(&redis.server.url()).unwrap(),
    );
    let _unregister = support::Unregister("redis-control-b");

    assert_eq!(account(1).await.owner, "ada");
    assert_eq!(redis.server.cli(&["EXISTS", "cache:k:acct:1"]), "1");
    assert_eq!(
        account_peek(1).await.map(|a| a.owner).as_deref(),
        Some("ada")
    );
    assert_eq!(account_peek(2).await, None);
    assert_eq!(ACCOUNT_RUNS.load(Ordering::SeqCst), 1);

    // Prime writes through to Redis: another registration of the server reads it.
    let primed = Account {
        id: 2,
        owner: "grace".into(),
    };
    account_prime(2, primed.clone()).await.unwrap();
    assert_eq!(redis.server.cli(&["EXISTS", "cache:k:acct:2"]), "1");
    assert_eq!(account(2).await, primed);
    assert_eq!(account_elsewhere(2).await, primed);
    assert_eq!(ACCOUNT_RUNS.load(Ordering::SeqCst), 1);

    // Refresh recomputes and overwrites the Redis entry.
    *OWNER.lock().unwrap() = "ada l";
    assert_eq!(account(1).await.owner, "ada");
    assert_eq!(account_refresh(1).await.owner, "ada l");
    assert_eq!(ACCOUNT_RUNS.load(Ordering::SeqCst), 2);
    assert!(redis
        .server
        .cli(&["GET", "cache:k:acct:1"])
        .contains("ada l"));
    assert_eq!(account_elsewhere(1).await.owner, "ada l");
    assert_eq!(account(1).await.owner, "ada l");
    assert_eq!(ACCOUNT_RUNS.load(Ordering::SeqCst), 2);

    // An older computation does not overwrite a prime.
    let older = tokio::spawn(slow_account(3, "old"));
    ACCOUNT_GATE.entered.notified().await;
    let fresh = Account {
        id: 3,
        owner: "primed".into(),
    };
    slow_account_prime(3, "x", fresh.clone()).await.unwrap();
    ACCOUNT_GATE.release.notify_one();
    assert_eq!(older.await.unwrap().owner, "old");
    assert_eq!(slow_account_peek(3, "x").await, Some(fresh));

    // Primed entries are in their groups.
    cache_runtime::invalidate_group("accounts").await.unwrap();
    assert_eq!(account_peek(2).await, None);
    assert_eq!(account_elsewhere(2).await.owner, "elsewhere");
}
