//! HTTP hits in process: one axum router, `GET /page` from a constant handler with a 64-byte body,
//! behind each contender, called with sequential `oneshot` requests on a current-thread runtime
//! (the body collected every time): the handler bare (the ceiling), `#[cached(http)]` on the
//! handler, `CacheLayer` around it, and `axum-response-cache` 0.5 around it (the fastest peer
//! measured; it sends no validators and ignores `Cache-Control`). Every contender caches in memory
//! for 600 s; the first call of each is the miss, every measured call a hit.
//!
//! `cargo bench --bench http_hit`; BENCHMARKS.md records the figures.

mod common;

use std::time::{Duration, Instant};

use axum::{
    body::Body,
    http::{header, Request, StatusCode},
    response::IntoResponse,
    routing::get,
    Router,
};
use cache_runtime::{cached, http::CacheLayer};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use http_body_util::BodyExt;
use tower::ServiceExt;

const TTL: Duration = Duration::from_secs(600);

/// 64 bytes.
const PAGE: &str = "<h1>Page</h1><p>rendered once, then served from the cache.</p>\n";

async fn page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE)
}

#[cached(http, ttl = 600)]
async fn cached_page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE)
}

/// Each contender's router, made ready to serve as `axum::serve` makes it (`with_state`: its
/// layers are applied once, not on every request).
fn routers() -> Vec<(&'static str, Router)> {
    let contenders = vec![
        (
            "bare handler (no cache)",
            Router::new().route("/page", get(page)),
        ),
        (
            "cache_runtime #[cached(http)]",
            Router::new().route("/page", get(cached_page)),
        ),
        (
            "cache_runtime CacheLayer",
            Router::new()
                .route("/page", get(page))
                .layer(CacheLayer::new().ttl(TTL)),
        ),
        (
            "axum-response-cache 0.5",
            Router::new()
                .route("/page", get(page))
                .layer(axum_response_cache::CacheLayer::with_lifespan(TTL)),
        ),
    ];
    contenders
        .into_iter()
        .map(|(name, router)| (name, router.with_state(())))
        .collect()
}

/// One request through `router`: the status and the body's length.
async fn get_page(router: &Router) -> (StatusCode, usize) {
    let request = Request::get("/page").body(Body::empty()).expect("request");
    let response = router.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let body = response.into_body().collect().await.expect("body");
    (status, body.to_bytes().len())
}

fn http_hits(c: &mut Criterion) {
    let rt = common::runtime();
    let routers = routers();
    for (name, router) in &routers {
        rt.block_on(async {
            for _ in 0..2 {
                assert_eq!(
                    get_page(router).await,
                    (StatusCode::OK, PAGE.len()),
                    "{name}"
                );
            }
        });
    }
    let misses_before: u64 = cache_runtime::stats().iter().map(|s| s.misses).sum();
    let mut g = c.benchmark_group("http_hit_64B");
    g.throughput(Throughput::Elements(1));
    for (name, router) in &routers {
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iters {
                        std::hint::black_box(get_page(router).await);
                    }
                    started.elapsed()
                })
            })
        });
    }
    g.finish();
    let misses_after: u64 = cache_runtime::stats().iter().map(|s| s.misses).sum();
    assert_eq!(misses_after, misses_before, "every measured call was a hit");
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = http_hits
}

fn main() {
    common::isolate_env();
    benches();
}
