//! The contenders of the HTTP hit comparison (issue 11), shared by `benches/http_hit.rs` (in
//! process, criterion) and `benches/http_server.rs` (the server `scripts/bench-http.sh` loads with
//! wrk, `PEERS=1`): one axum router, `GET /page` from a constant handler with a 64-byte body,
//! behind each contender. The contenders:
//!
//! - the handler bare: the ceiling;
//! - `#[cached(http)]` on the handler, and `CacheLayer` around it: ours;
//! - `axum-response-cache` 0.5 around it: the fastest peer measured (it sends no validators and
//!   ignores `Cache-Control`);
//! - `hitbox` 0.2 (`hitbox-tower`'s layer on a `hitbox-moka` backend, bincode values),
//!   `tower-http-cache` 0.6 (its moka `InMemoryBackend`) and `http-cache-tower-server` 0.2
//!   (`http-cache`'s `MokaManager`) around it: the other tower caching layers of issue 11's table,
//!   each set up as its README shows.
//!
//! Every contender caches in memory for 600 s; each caching contender's handler counts its calls
//! ([`handler_calls`]), so that a bench can check that only its first request was a miss.
//!
//! Included with `#[path = "common/http_contenders.rs"] mod http_contenders;` by the two HTTP
//! benches only (not through `common`, which every bench includes): the other benches need none of
//! the peers.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{
    body::Body,
    error_handling::HandleErrorLayer,
    http::{header, Method, Response, StatusCode},
    response::IntoResponse,
    routing::{get, MethodRouter},
    BoxError, Router,
};
use bytes::Bytes;
use cache_runtime::{cached, http::CacheLayer};
use http_body_util::{BodyExt, Full};
use tower::ServiceBuilder;

/// How long every contender keeps the page.
pub const TTL: Duration = Duration::from_secs(600);

/// The page (63 bytes, though the benchmark group and issue 11 call it the 64-byte page).
pub const PAGE: &str = "<h1>Page</h1><p>rendered once, then served from the cache.</p>\n";

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

/// A contender: its name, the path segment the bench server serves it under (`/hit/{slug}/page`),
/// its router, and the count of its handler's calls (`None`: not a cache, or `#[cached(http)]`,
/// whose count is a static; see [`handler_calls`]).
pub struct Contender {
    pub name: &'static str,
    #[allow(dead_code, reason = "read by the bench server only, not by http_hit")]
    pub slug: &'static str,
    pub router: Router,
    calls: Option<Arc<AtomicUsize>>,
}

impl Contender {
    /// How many times this contender's handler ran (for `#[cached(http)]`, its function's body);
    /// `None` for the bare handler, which caches nothing.
    pub fn handler_calls(&self) -> Option<usize> {
        match &self.calls {
            Some(calls) => Some(calls.load(Ordering::Relaxed)),
            None if self.name.contains("#[cached(http)]") => {
                Some(CACHED_PAGE_CALLS.load(Ordering::Relaxed))
            }
            None => None,
        }
    }
}

/// Each contender's router, serving `GET /page`, made ready to serve as `axum::serve` makes it
/// (`with_state`: its layers are applied once, not on every request).
///
/// `#[cached(http)]`'s cache is its function's, shared by every call of `contenders` in a process;
/// the layers' caches are new on every call.
pub fn contenders() -> Vec<Contender> {
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
            slug: "bare",
            router: Router::new().route("/page", get(page)),
            calls: None,
        },
        Contender {
            name: "cache_runtime #[cached(http)]",
            slug: "cached-http",
            router: Router::new().route("/page", get(cached_page)),
            calls: None,
        },
        Contender {
            name: "cache_runtime CacheLayer",
            slug: "layer",
            router: Router::new()
                .route("/page", counted_page(&ours))
                .layer(CacheLayer::new().ttl(TTL)),
            calls: Some(ours),
        },
        Contender {
            name: "axum-response-cache 0.5",
            slug: "axum-response-cache",
            router: Router::new()
                .route("/page", counted_page(&peer))
                .layer(axum_response_cache::CacheLayer::with_lifespan(TTL)),
            calls: Some(peer),
        },
        Contender {
            name: "hitbox 0.2",
            slug: "hitbox",
            router: Router::new()
                .route("/page", counted_page(&hitbox))
                .layer(hitbox_layer),
            calls: Some(hitbox),
        },
        Contender {
            name: "tower-http-cache 0.6",
            slug: "tower-http-cache",
            router: Router::new()
                .route("/page", counted_page(&thc))
                .layer(tower_http_cache_layer),
            calls: Some(thc),
        },
        Contender {
            name: "http-cache-tower-server 0.2",
            slug: "http-cache-tower-server",
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
