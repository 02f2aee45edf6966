//! Two processes sharing one Redis: a `reader` caches a price, a `writer` changes it and
//! invalidates the group, and the reader sees the new value on its next call.
//!
//! ```text
//! cargo run --example redis_groups              # runs both: spawns the reader, is the writer
//! cargo run --example redis_groups -- reader    # or one role per terminal
//! cargo run --example redis_groups -- writer
//! ```
//!
//! Redis: `REDIS_URL` (default `redis://127.0.0.1:6379`). Every key this example writes starts
//! with `redis_groups_example:` (the cache's entries and its stand-in database), so it can share
//! a Redis with other users; it never flushes anything.

use std::{
    process::{Command, ExitCode},
    sync::{
        atomic::{AtomicUsize, Ordering},
        OnceLock,
    },
    time::{Duration, Instant},
};

use cache_runtime::{cached, RedisBackend};
use redis::aio::MultiplexedConnection;

/// Prefix of every key this example writes.
const PREFIX: &str = "redis_groups_example:";
/// The stand-in database: the price of the one product, in cents.
const PRICE_KEY: &str = "redis_groups_example:db:price:A-1";
/// Set by the reader once it has cached the price.
const READY_KEY: &str = "redis_groups_example:reader-ready";

/// The database connection of the bodies (the cache has its own, in `RedisBackend`).
static DB: OnceLock<MultiplexedConnection> = OnceLock::new();
/// How many times `price`'s body ran in this process.
static BODY_RUNS: AtomicUsize = AtomicUsize::new(0);

/// The cached read, shared by every process using this Redis: key `price:<sku>`, group `prices`.
#[cached(ttl = "10m", backend = "redis", key = "price:{sku}", group = "prices")]
async fn price(sku: String) -> Result<u64, String> {
    BODY_RUNS.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(100)).await; // a slow query
    let _ = sku;
    let cents: Option<u64> = redis::cmd("GET")
        .arg(PRICE_KEY)
        .query_async(&mut db())
        .await
        .map_err(|e| e.to_string())?;
    cents.ok_or_else(|| "no price stored".to_owned())
}

fn db() -> MultiplexedConnection {
    DB.get().expect("connected in main").clone()
}

/// Calls `price` and says whether this process ran the body or got the value from Redis.
async fn call(role: &str) -> Result<u64, String> {
    let runs = BODY_RUNS.load(Ordering::Relaxed);
    let started = Instant::now();
    let cents = price("A-1".to_owned()).await?;
    let how = match BODY_RUNS.load(Ordering::Relaxed) > runs {
        true => "miss: this process ran the body",
        false => "hit: from Redis",
    };
    println!(
        "{role}: price(A-1) = {}.{:02} ({how}, {:.1} ms)",
        cents / 100,
        cents % 100,
        started.elapsed().as_secs_f64() * 1e3
    );
    Ok(cents)
}

async fn set(key: &str, value: u64) -> Result<(), String> {
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .arg("EX")
        .arg(600)
        .query_async::<()>(&mut db())
        .await
        .map_err(|e| format!("cannot write {key}: {e}"))
}

async fn get(key: &str) -> Result<Option<u64>, String> {
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut db())
        .await
        .map_err(|e| format!("cannot read {key}: {e}"))
}

async fn del(key: &str) -> Result<(), String> {
    redis::cmd("DEL")
        .arg(key)
        .query_async::<()>(&mut db())
        .await
        .map_err(|e| format!("cannot delete {key}: {e}"))
}

/// Caches the price, says it is ready, then calls again until the value changes.
async fn reader() -> Result<(), String> {
    let first = call("reader").await?;
    call("reader").await?;
    set(READY_KEY, 1).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let runs = BODY_RUNS.load(Ordering::Relaxed);
        let cents = price("A-1".to_owned()).await?;
        if cents != first {
            // Print the call that saw the change (the polls before it were silent hits).
            let how = match BODY_RUNS.load(Ordering::Relaxed) > runs {
                true => "miss: the group was invalidated, the body ran again",
                false => "hit: another process already recomputed it",
            };
            println!(
                "reader: price(A-1) = {}.{:02} ({how}): sees the writer's new value",
                cents / 100,
                cents % 100
            );
            return Ok(());
        }
    }
    Err("reader: the value did not change within 30 s (is the writer running?)".into())
}

/// Waits for the reader, changes the price, invalidates the group.
async fn writer() -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(READY_KEY).await? != Some(1) {
        if Instant::now() > deadline {
            return Err("writer: no reader became ready within 30 s (start one)".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    del(READY_KEY).await?; // the next writer waits for its own reader
    let old = call("writer").await?;
    set(PRICE_KEY, old + 500).await?;
    println!(
        "writer: the database now says {}.{:02}",
        (old + 500) / 100,
        (old + 500) % 100
    );
    call("writer").await?; // still the cached value: nothing was invalidated yet
    cache_runtime::invalidate_group("prices")
        .await
        .map_err(|e| format!("writer: {e}"))?;
    println!("writer: invalidate_group(\"prices\") done");
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let role = std::env::args().nth(1).unwrap_or_else(|| "both".to_owned());
    if !matches!(role.as_str(), "both" | "reader" | "writer") {
        eprintln!("usage: redis_groups [reader|writer]   (no argument: both, in two processes)");
        return ExitCode::from(2);
    }
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    match connect(&url).await {
        Ok(()) => {}
        Err(why) => {
            eprintln!("redis_groups: cannot reach Redis at {url}: {why}");
            return ExitCode::FAILURE;
        }
    }
    let result = match role.as_str() {
        "reader" => reader().await,
        "writer" => writer().await,
        _ => both().await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("redis_groups: {why}");
            ExitCode::FAILURE
        }
    }
}

/// The cache's `"redis"` backend on `url` (under this example's prefix) and the database
/// connection; fails within 2 s when Redis does not answer.
async fn connect(url: &str) -> Result<(), String> {
    let backend = RedisBackend::open(url)
        .map_err(|e| e.to_string())?
        .with_prefix(PREFIX);
    match tokio::time::timeout(Duration::from_secs(2), backend.ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("no answer within 2 s".to_owned()),
    }
    cache_runtime::register("redis", backend);
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let _ = DB.set(conn);
    Ok(())
}

/// Seeds the database, starts a reader process and acts as the writer.
async fn both() -> Result<(), String> {
    // A fresh start: the price, no ready flag, and no entry of an earlier run (a group
    // invalidation, not a flush: the rest of this Redis is left alone).
    set(PRICE_KEY, 1_250).await?;
    del(READY_KEY).await?;
    cache_runtime::invalidate_group("prices")
        .await
        .map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .arg("reader")
        .spawn()
        .map_err(|e| format!("cannot start the reader process: {e}"))?;
    println!(
        "started the reader (pid {}); this process is the writer",
        child.id()
    );
    let written = writer().await;
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    written?;
    match status.success() {
        true => Ok(()),
        false => Err(format!("the reader failed ({status})")),
    }
}
