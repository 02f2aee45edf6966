//! HTTP hits in process: one axum router, `GET /page` from a constant handler with a 64-byte body,
//! behind each contender, called with sequential `oneshot` requests on a current-thread runtime
//! (the body collected every time). The contenders:
//!
//! - the handler bare: the ceiling;
//! - `#[cached(http)]` on the handler, and `CacheLayer` around it: ours;
//! - `axum-response-cache` 0.5 around it: the fastest peer measured (it sends no validators and
//!   ignores `Cache-Control`);
//! - `hitbox` 0.2 (`hitbox-tower`'s layer on a `hitbox-moka` backend, bincode values),
//!   `tower-http-cache` 0.6 (its moka `InMemoryBackend`) and `http-cache-tower-server` 0.2
//!   (`http-cache`'s `MokaManager`) around it: the other tower caching layers of issue 11's table
//!   (2.7–4.5× slower than `axum-response-cache` there), each set up as its README shows, so that
//!   the whole table is measured here, in one run.
//!
//! The contenders' routers are built in `common/http_contenders.rs`, shared with the bench server
//! (`benches/http_server.rs`) that `PEERS=1 scripts/bench-http.sh` loads with wrk.
//!
//! Every contender caches in memory for 600 s. The first call of each is the miss; a check before
//! and after the timing makes sure every other call was a hit (its handler ran once).
//!
//! `cargo bench --bench http_hit`; BENCHMARKS.md records the figures.

mod common;
#[path = "common/http_contenders.rs"]
mod http_contenders;

use std::time::Instant;

use axum::{
    body::Body,
    http::{Request, StatusCode},
    Router,
};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use http_body_util::BodyExt;
use http_contenders::{contenders, PAGE};
use tower::ServiceExt;

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
    let contenders = contenders();
    for contender in &contenders {
        let name = contender.name;
        rt.block_on(async {
            for call in 0..2 {
                assert_eq!(
                    get_page(&contender.router).await,
                    (StatusCode::OK, PAGE.len()),
                    "{name}"
                );
                if call == 0 {
                    // http-cache-tower-server stores the miss from a spawned task: let it run, as
                    // a server's runtime would between two requests.
                    for _ in 0..8 {
                        tokio::task::yield_now().await;
                    }
                }
            }
        });
        if let Some(calls) = contender.handler_calls() {
            assert_eq!(calls, 1, "{name}: the second call was a hit");
        }
    }
    let misses_before: u64 = cache_runtime::stats().iter().map(|s| s.misses).sum();
    let mut g = c.benchmark_group("http_hit_64B");
    g.throughput(Throughput::Elements(1));
    for contender in &contenders {
        let router = &contender.router;
        g.bench_function(BenchmarkId::from_parameter(contender.name), |b| {
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
    for contender in &contenders {
        if let Some(calls) = contender.handler_calls() {
            let name = contender.name;
            assert_eq!(calls, 1, "{name}: every measured call was a hit");
        }
    }
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
