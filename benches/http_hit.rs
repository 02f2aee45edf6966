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
//! Every contender caches in memory for 600 s. The first call of each is the miss; a check before
//! and after the timing makes sure every other call was a hit (its handler ran once).
//!
//! `cargo bench --bench http_hit`; BENCHMARKS.md records the figures.

mod common;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    error_handling::HandleErrorLayer,
    http::{header, Method, Request, Response, StatusCode},
    response::IntoResponse,
    routing::{get, MethodRouter},
    BoxError, Router,
};
use bytes::Bytes;
use cache_runtime::{cached, http::CacheLayer};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};

const TTL: Duration = Duration::from_secs(600);

/// 64 bytes.
const PAGE: &str = "<h1>Page</h1><p>rendered once, then served from the cache.</p>\n";

async fn page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE)
}

/// How many times `cached_page`'s body ran.
static CACHED_PAGE_CALLS: AtomicUsize = AtomicUsize::new(0);

#[cached(http, ttl = 600)]
async fn cached_page() -> impl IntoResponse {
    CACHED_PAGE_CALLS.fetch_add(1, Ordering::Relaxed);
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE)
}

/// `GET` of `page`, counting its calls in `calls` (the layers' hits never reach it).
fn counted_page(calls: &Arc<AtomicUsize>) -> MethodRouter {
    let calls = Arc::clone(calls);
    get(move || {
        calls.fetch_add(1, Ordering::Relaxed);
        page()
    })
}

/// The answer of the layers whose errors are not `Infallible` (axum's `HandleErrorLayer`).
async fn layer_error(error: BoxError) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
}

/// tower-http-cache wants a `Sync` response body, which axum's `Body` is not: the handler's
/// response is collected into a `Full` first (on the miss only; a hit does not reach it).
async fn sync_body(response: Response<Body>) -> Result<Response<Full<Bytes>>, BoxError> {
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await?.to_bytes();
    Ok(Response::from_parts(parts, Full::new(bytes)))
}

/// A contender: its name, its router, and the count of its handler's calls (`None`: not a cache).
struct Contender {
    name: &'static str,
    router: Router,
    calls: Option<Arc<AtomicUsize>>,
}

/// Each contender's router, made ready to serve as `axum::serve` makes it (`with_state`: its
/// layers are applied once, not on every request).
fn contenders() -> Vec<Contender> {
    let counter = || Arc::new(AtomicUsize::new(0));
    let (ours, peer, hitbox, thc, hcts) = (counter(), counter(), counter(), counter(), counter());

    let hitbox_layer = {
        use hitbox::policy::PolicyConfig;
        use hitbox_http::{
            extractors::{path::PathExtractor, Method as MethodKey},
            predicates::{request::Method as RequestMethod, response::StatusCode as Status},
        };
        let backend = hitbox_moka::MokaBackend::builder()
            .max_entries(10_000)
            .value_format(hitbox_backend::format::BincodeFormat)
            .build();
        let config = hitbox::Config::builder()
            .request_predicate(RequestMethod::new(Method::GET).expect("GET"))
            .response_predicate(Status::new(StatusCode::OK))
            .extractor(MethodKey::new().path("/{path}*"))
            .policy(PolicyConfig::builder().ttl(TTL).build())
            .build();
        hitbox_tower::Cache::builder()
            .backend(backend)
            .config(config)
            .build()
    };
    let tower_http_cache_layer = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(layer_error))
        .layer(
            tower_http_cache::CacheLayer::builder(
                tower_http_cache::backend::memory::InMemoryBackend::new(10_000),
            )
            .ttl(TTL)
            .build(),
        )
        .and_then(sync_body);
    let http_cache_tower_server_layer = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(layer_error))
        .layer(
            http_cache_tower_server::ServerCacheLayer::new(http_cache::MokaManager::default())
                .with_options(http_cache_tower_server::ServerCacheOptions {
                    // The handler sends no `Cache-Control`: cache it anyway, for 600 s.
                    default_ttl: Some(TTL),
                    cache_by_default: true,
                    ..Default::default()
                }),
        );

    let contenders = vec![
        Contender {
            name: "bare handler (no cache)",
            router: Router::new().route("/page", get(page)),
            calls: None,
        },
        Contender {
            name: "cache_runtime #[cached(http)]",
            router: Router::new().route("/page", get(cached_page)),
            calls: None,
        },
        Contender {
            name: "cache_runtime CacheLayer",
            router: Router::new()
                .route("/page", counted_page(&ours))
                .layer(CacheLayer::new().ttl(TTL)),
            calls: Some(ours),
        },
        Contender {
            name: "axum-response-cache 0.5",
            router: Router::new()
                .route("/page", counted_page(&peer))
                .layer(axum_response_cache::CacheLayer::with_lifespan(TTL)),
            calls: Some(peer),
        },
        Contender {
            name: "hitbox 0.2",
            router: Router::new()
                .route("/page", counted_page(&hitbox))
                .layer(hitbox_layer),
            calls: Some(hitbox),
        },
        Contender {
            name: "tower-http-cache 0.6",
            router: Router::new()
                .route("/page", counted_page(&thc))
                .layer(tower_http_cache_layer),
            calls: Some(thc),
        },
        Contender {
            name: "http-cache-tower-server 0.2",
            router: Router::new()
                .route("/page", counted_page(&hcts))
                .layer(http_cache_tower_server_layer),
            calls: Some(hcts),
        },
    ];
    contenders
        .into_iter()
        .map(|c| Contender {
            router: c.router.with_state(()),
            ..c
        })
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

/// How many times `contender`'s handler ran (for `#[cached(http)]`, its function's body).
fn handler_calls(contender: &Contender) -> Option<usize> {
    match &contender.calls {
        Some(calls) => Some(calls.load(Ordering::Relaxed)),
        None if contender.name.contains("#[cached(http)]") => {
            Some(CACHED_PAGE_CALLS.load(Ordering::Relaxed))
        }
        None => None,
    }
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
        if let Some(calls) = handler_calls(contender) {
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
        if let Some(calls) = handler_calls(contender) {
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
