//! The server `scripts/bench-http.sh` loads: one route per HTTP scenario, all with the same small
//! HTML body, so that only the caching differs.
//!
//! ```text
//! PORT=3900 REDIS_URL=redis://127.0.0.1:6390 <this bench's executable> serve
//! ```
//!
//! | route | what |
//! |---|---|
//! | `GET /const` | constant handler, no work, no cache: the ceiling |
//! | `GET /plain/{id}` | the page handler uncached: 20 ms of simulated work every time |
//! | `GET /memory/{id}` | the same handler, `#[cached(http, ttl = 300)]` on the memory backend |
//! | `GET /redis/{id}` | the same handler, `#[cached(http, ttl = 300, backend = "redis")]` |
//! | `GET /layer/{id}` | the uncached handler behind `CacheLayer` (memory) |
//! | `GET /stats` | `cache_runtime::stats()` as JSON, for the script's hit/miss check |
//! | `GET /hit/{contender}/page` | issue 11's HTTP hit comparison (`PEERS=1 scripts/bench-http.sh`) |
//! | `GET /hit/calls` | how many times each contender's handler ran, one `{contender} {calls}` a line |
//!
//! The `/hit/` routes serve the routers of `benches/http_hit.rs` (built in
//! `common/http_contenders.rs`: a constant handler with a 63-byte body, bare or behind
//! `#[cached(http)]`, `CacheLayer`, axum-response-cache, hitbox, tower-http-cache or
//! http-cache-tower-server, each caching in memory for 600 s), each under its own prefix:
//! `/hit/bare/page`, `/hit/cached-http/page`, `/hit/layer/page`, `/hit/axum-response-cache/page`,
//! `/hit/hitbox/page`, `/hit/tower-http-cache/page`, `/hit/http-cache-tower-server/page`.
//! `/hit/calls` lets the script check that each caching contender's handler ran once (`-` for the
//! bare handler, which caches nothing).
//!
//! `WORKERS` sets the number of tokio worker threads (default: one per CPU, tokio's default);
//! the peer comparison runs with `WORKERS=1`.
//!
//! Redis is required (`REDIS_URL`): the server exits when it does not answer, rather than measuring
//! a silent fallback. Run without `serve` (as `cargo bench` does), it only prints this usage.

#[path = "common/http_contenders.rs"]
mod http_contenders;

use std::{fmt::Write as _, sync::Arc, time::Duration};

use axum::{extract::Path, http::header, response::IntoResponse, routing::get, Json, Router};
use cache_runtime::{cached, http::CacheLayer, RedisBackend};

/// Simulated work of the page handler (a query, a render).
const WORK: Duration = Duration::from_millis(20);

const CONSTANT: &str = "<h1>Page 1</h1><p>rendered once, then served from the cache</p>\n";

fn page(id: u64) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        format!("<h1>Page {id}</h1><p>rendered once, then served from the cache</p>\n"),
    )
}

async fn constant() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        CONSTANT,
    )
}

async fn plain(Path(id): Path<u64>) -> impl IntoResponse {
    tokio::time::sleep(WORK).await;
    page(id)
}

#[cached(http, ttl = 300)]
async fn memory(Path(id): Path<u64>) -> impl IntoResponse {
    tokio::time::sleep(WORK).await;
    page(id)
}

#[cached(http, ttl = 300, backend = "redis")]
async fn redis(Path(id): Path<u64>) -> impl IntoResponse {
    tokio::time::sleep(WORK).await;
    page(id)
}

async fn stats() -> impl IntoResponse {
    Json(cache_runtime::stats())
}

/// The `/hit/` routes: each contender of the HTTP hit comparison under `/hit/{slug}`, and
/// `/hit/calls`.
fn peers() -> Router {
    let contenders = Arc::new(http_contenders::contenders());
    let calls = {
        let contenders = Arc::clone(&contenders);
        get(move || async move {
            let mut text = String::new();
            for contender in contenders.iter() {
                match contender.handler_calls() {
                    Some(calls) => writeln!(text, "{} {calls}", contender.slug),
                    None => writeln!(text, "{} -", contender.slug),
                }
                .expect("a String");
            }
            text
        })
    };
    let mut router = Router::new().route("/hit/calls", get(calls));
    for contender in contenders.iter() {
        router = router.nest(
            &format!("/hit/{}", contender.slug),
            contender.router.clone(),
        );
    }
    router
}

fn app() -> Router {
    let layered = Router::new()
        .route("/{id}", get(plain))
        .layer(CacheLayer::new().ttl(Duration::from_secs(300)));
    Router::new()
        .route("/const", get(constant))
        .route("/plain/{id}", get(plain))
        .route("/memory/{id}", get(memory))
        .route("/redis/{id}", get(redis))
        .nest("/layer", layered)
        .route("/stats", get(stats))
        .merge(peers())
}

async fn serve() {
    let url = std::env::var("REDIS_URL").expect("REDIS_URL: the bench server needs its own Redis");
    let backend = RedisBackend::open(&url).expect("a valid REDIS_URL");
    match tokio::time::timeout(Duration::from_secs(2), backend.ping()).await {
        Ok(Ok(())) => cache_runtime::register("redis", backend),
        _ => {
            eprintln!("http_server: Redis at {url} does not answer");
            std::process::exit(2);
        }
    }
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3900);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind PORT");
    eprintln!("http_server: listening on http://127.0.0.1:{port}/");
    axum::serve(listener, app()).await.expect("server");
}

fn main() {
    if !std::env::args().any(|a| a == "serve") {
        println!(
            "http_server: the HTTP benchmark server; run scripts/bench-http.sh (or pass `serve`)"
        );
        return;
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = std::env::var("WORKERS").ok().filter(|w| !w.is_empty()) {
        let workers: usize = workers
            .parse()
            .ok()
            .filter(|&w| w > 0)
            .expect("WORKERS: a number of worker threads, at least 1");
        runtime.worker_threads(workers);
        eprintln!("http_server: {workers} tokio worker thread(s) (WORKERS)");
    }
    runtime
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(serve());
}
