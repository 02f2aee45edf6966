//! A helper process for the cross-process tests: calls one memoized function, or invalidates a group.
//!
//! ```text
//! cache-child <redis|file> call <n>        prints `BODY_RAN` when the body ran, then `value=<v>`
//! cache-child <redis|file> invalidate <g>  invalidates group <g> and prints `invalidated`
//! cache-child redis invalidate-key <k>     invalidates key <k> and prints `invalidated`
//! cache-child http serve -                 serves a cached handler, prints `listening=<port>`
//! cache-child redis locked <n> <ms>        like `call`, with a body taking <ms> under a 1 s lock
//! cache-child file race-write <ms>          for <ms>: writes expired then fresh entries, reads
//!                                           each fresh one back; prints `missing=<count>`
//! cache-child file race-remove <ms>         for <ms>: reads (removing expired entries) and sweeps
//! ```
//! The backends come from the environment (`REDIS_URL`, `CACHE_REDIS_PREFIX`, `CACHE_DIR`).

use axum::{extract::Path, routing::get, Json, Router};
use cache_runtime::cached;
use serde::Serialize;

#[cached(ttl = 60, backend = "redis", group = "shared")]
async fn double_on_redis(n: u64) -> u64 {
    println!("BODY_RAN");
    n * 2
}

#[cached(ttl = 60, backend = "file", group = "shared")]
async fn double_on_file(n: u64) -> u64 {
    println!("BODY_RAN");
    n * 2
}

#[cached(ttl = 60, backend = "redis", key = "locked:{n}", lock = "1s")]
async fn slow_locked(n: u64, sleep_ms: u64) -> u64 {
    println!("BODY_RAN");
    tokio::time::sleep(std::time::Duration::from_millis(sleep_ms)).await;
    n * 3
}

#[derive(Serialize)]
struct Article {
    id: u64,
    title: String,
}

#[cached(http, ttl = 60)]
async fn article(Path(id): Path<u64>) -> Json<Article> {
    Json(Article {
        id,
        title: format!("Article {id}"),
    })
}

async fn serve_http() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    println!("listening={}", listener.local_addr().expect("addr").port());
    let app = Router::new().route("/article/{id}", get(article));
    axum::serve(listener, app).await.expect("serve");
}

/// Keys the two `race-*` processes share.
const RACE_KEYS: usize = 4;

/// One side of the expiry-removal race on the folder of `CACHE_DIR`.
async fn file_race(writer: bool, run_for: std::time::Duration) {
    use cache_runtime::Backend;
    use std::time::{Duration, Instant};
    let file = cache_runtime::FileBackend::from_env();
    let started = Instant::now();
    let (mut missing, mut rounds) = (0u64, 0u64);
    while started.elapsed() < run_for {
        for i in 0..RACE_KEYS {
            let key = format!("race:{i}");
            if writer {
                // An entry expired as soon as written, then a fresh one: the fresh one must be
                // there when read back, whatever the other process removes meanwhile.
                let _ = file.set(&key, b"old".to_vec(), Duration::ZERO, &[]).await;
                file.set(&key, b"fresh".to_vec(), Duration::from_secs(600), &[])
                    .await
                    .expect("write");
                if file.get(&key, &[]).await.expect("read").value.is_none() {
                    missing += 1;
                }
            } else {
                let _ = file.get(&key, &[]).await;
            }
        }
        if !writer && rounds % 8 == 0 {
            let _ = file.sweep().await;
        }
        rounds += 1;
    }
    println!("missing={missing} rounds={rounds}");
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (backend, action, arg, extra) = match args.as_slice() {
        [backend, action, arg] => (backend, action, arg, None),
        [backend, action, arg, extra] => (backend, action, arg, Some(extra)),
        _ => {
            eprintln!("usage: cache-child <redis|file> <call N|invalidate GROUP|locked N MS>");
            std::process::exit(2);
        }
    };
    match action.as_str() {
        "serve" => serve_http().await,
        "race-write" | "race-remove" => {
            let ms: u64 = arg.parse().expect("a number of ms");
            file_race(action == "race-write", std::time::Duration::from_millis(ms)).await;
        }
        "locked" => {
            let n: u64 = arg.parse().expect("a number");
            let ms: u64 = extra.and_then(|e| e.parse().ok()).unwrap_or(0);
            println!("value={}", slow_locked(n, ms).await);
        }
        "call" => {
            let n: u64 = arg.parse().expect("a number");
            let _ = extra;
            let value = match backend.as_str() {
                "redis" => double_on_redis(n).await,
                _ => double_on_file(n).await,
            };
            println!("value={value}");
        }
        "invalidate" | "invalidate-key" => {
            // Touch the named backend so it is reached even without REDIS_URL/CACHE_DIR set.
            let _ = cache_runtime::backend(backend);
            let result = if action == "invalidate" {
                cache_runtime::invalidate_group(arg).await
            } else {
                cache_runtime::invalidate_key(arg).await
            };
            match result {
                Ok(()) => println!("invalidated"),
                Err(error) => {
                    eprintln!("invalidation failed: {error}");
                    std::process::exit(1);
                }
            }
        }
        other => {
            eprintln!("unknown action {other}");
            std::process::exit(2);
        }
    }
}
