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
//!
//! Redis is required (`REDIS_URL`): the server exits when it does not answer, rather than measuring
//! a silent fallback. Run without `serve` (as `cargo bench` does), it only prints this usage.

use std::time::Duration;

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
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(serve());
}
