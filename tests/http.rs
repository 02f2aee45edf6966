//! HTTP caching against real servers on real ports, with a real client.

mod support;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use axum::{
    extract::{FromRequestParts, Path, Query, State},
    http::{header, request::Parts, HeaderMap, StatusCode},
    response::IntoResponse,
    routing::{get, post},
    Json, Router,
};
use cache_runtime::{cache_invalidate, cached, http::CacheLayer};
use serde::{Deserialize, Serialize};
use support::http::{client, send, TestServer};

static ITEM_RUNS: AtomicUsize = AtomicUsize::new(0);

#[derive(Clone, Serialize, Deserialize)]
struct Item {
    id: u64,
    name: String,
}

#[derive(Clone)]
struct AppState {
    prefix: &'static str,
}

#[cached(http, ttl = 60, key = "item:{id}", group = "items")]
async fn item(State(state): State<AppState>, Path(id): Path<u64>) -> impl IntoResponse {
    ITEM_RUNS.fetch_add(1, Ordering::SeqCst);
    (
        [("x-custom", "kept")],
        Json(Item {
            id,
            name: format!("{}{id}", state.prefix),
        }),
    )
}

#[tokio::test]
async fn handler_hits_keep_status_headers_and_body() {
    let app = Router::new()
        .route("/items/{id}", get(item))
        .with_state(AppState { prefix: "item-" });
    let server = TestServer::start(app).await;

    let first = server.get("/items/1").await;
    let second = server.get("/items/1").await;
    assert_eq!(
        ITEM_RUNS.load(Ordering::SeqCst),
        1,
        "second request is a hit"
    );
    assert_eq!(first.status, 200);
    assert_eq!(first.body, r#"{"id":1,"name":"item-1"}"#);
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("x-custom"), Some("kept"));
    assert_eq!(second.header("content-type"), Some("application/json"));
    let etag = first.header("etag").unwrap();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    assert_eq!(second.header("etag"), Some(etag));
    let cc = second.header("cache-control").unwrap();
    assert!(
        cc == "public, max-age=60" || cc == "public, max-age=59",
        "{cc}"
    );
    assert!(second.header("age").is_some());

    server.get("/items/2").await;
    assert_eq!(ITEM_RUNS.load(Ordering::SeqCst), 2);

    // HEAD: same validators, no body, answered from the cache.
    let head = server.send("HEAD", "/items/1", &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("etag"), Some(etag));
    assert!(head.body.is_empty());
    assert_eq!(ITEM_RUNS.load(Ordering::SeqCst), 2);
}

static ARTICLE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(http, ttl = 60, visibility = "private")]
async fn article(Path(id): Path<u64>) -> String {
    ARTICLE_RUNS.fetch_add(1, Ordering::SeqCst);
    format!("article {id}")
}

#[tokio::test]
async fn if_none_match_gets_304_for_exact_weak_listed_and_star() {
    let server = TestServer::start(Router::new().route("/articles/{id}", get(article))).await;
    let first = server.get("/articles/7").await;
    let etag = first.header("etag").unwrap().to_owned();
    assert_eq!(first.header("cache-control"), Some("private, max-age=60"));

    let weak = format!("W/{etag}");
    let listed = format!("\"nope\", {etag}");
    for validator in [etag.as_str(), weak.as_str(), listed.as_str(), "*"] {
        let reply = server
            .send("GET", "/articles/7", &[("if-none-match", validator)])
            .await;
        assert_eq!(reply.status, 304, "validator {validator}");
        assert!(reply.body.is_empty());
        assert_eq!(reply.header("etag"), Some(etag.as_str()));
        assert!(reply
            .header("cache-control")
            .unwrap()
            .starts_with("private, max-age="));
    }
    let other = server
        .send("GET", "/articles/7", &[("if-none-match", "\"other\"")])
        .await;
    assert_eq!(other.status, 200);
    assert_eq!(other.body, "article 7");
    assert_eq!(ARTICLE_RUNS.load(Ordering::SeqCst), 1);

    // The first (miss) response answers a matching validator too, e.g. from another process.
    article_invalidate(Path(7)).await.unwrap();
    let revalidated = server
        .send("GET", "/articles/7", &[("if-none-match", &etag)])
        .await;
    assert_eq!(revalidated.status, 304);
    assert_eq!(ARTICLE_RUNS.load(Ordering::SeqCst), 2);
}

static STATUS_RUNS: AtomicUsize = AtomicUsize::new(0);

#[derive(Deserialize, Serialize)]
struct Mode {
    mode: String,
}

#[cached(http, ttl = 60)]
async fn status(Query(q): Query<Mode>) -> axum::response::Response {
    STATUS_RUNS.fetch_add(1, Ordering::SeqCst);
    match q.mode.as_str() {
        "404" => (StatusCode::NOT_FOUND, "missing").into_response(),
        "500" => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        "cookie" => ([(header::SET_COOKIE, "session=1")], "with cookie").into_response(),
        "no-store" => ([(header::CACHE_CONTROL, "no-store")], "secret").into_response(),
        "private" => ([(header::CACHE_CONTROL, "private")], "mine").into_response(),
        _ => "ok".into_response(),
    }
}

#[tokio::test]
async fn errors_cookies_no_store_private_and_post_are_never_cached() {
    let app = Router::new().route("/status", get(status).post(status));
    let server = TestServer::start(app).await;
    for mode in ["404", "500", "cookie", "no-store", "private"] {
        let before = STATUS_RUNS.load(Ordering::SeqCst);
        let path = format!("/status?mode={mode}");
        let a = server.get(&path).await;
        let b = server.get(&path).await;
        assert_eq!(
            STATUS_RUNS.load(Ordering::SeqCst),
            before + 2,
            "{mode} was cached"
        );
        assert_eq!(a.status, b.status);
        assert!(a.header("etag").is_none(), "{mode} got an etag");
    }
    assert_eq!(server.get("/status?mode=404").await.status, 404);
    assert_eq!(
        server.get("/status?mode=cookie").await.header("set-cookie"),
        Some("session=1")
    );

    let before = STATUS_RUNS.load(Ordering::SeqCst);
    server.send("POST", "/status?mode=ok", &[]).await;
    server.send("POST", "/status?mode=ok", &[]).await;
    assert_eq!(
        STATUS_RUNS.load(Ordering::SeqCst),
        before + 2,
        "POST passes through"
    );
    server.get("/status?mode=ok").await;
    server.get("/status?mode=ok").await;
    assert_eq!(
        STATUS_RUNS.load(Ordering::SeqCst),
        before + 3,
        "GET is cached"
    );
}

/// An extractor for the caller's identity; being `Serialize`, it enters the default key.
#[derive(Serialize)]
struct Caller(String);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = StatusCode;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, StatusCode> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(StatusCode::UNAUTHORIZED)?;
        Ok(Caller(token.to_owned()))
    }
}

#[cached(http, ttl = 60, visibility = "private")]
async fn profile(caller: Caller) -> String {
    format!("profile of {}", caller.0)
}

#[cached(http, ttl = 60, visibility = "private")]
async fn dashboard(headers: HeaderMap) -> String {
    let who = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anonymous");
    format!("dashboard of {who}")
}

#[tokio::test]
async fn two_users_never_share_an_entry() {
    let app = Router::new()
        .route("/profile", get(profile))
        .route("/dashboard", get(dashboard));
    let server = TestServer::start(app).await;
    for path in ["/profile", "/dashboard"] {
        let alice = server
            .send("GET", path, &[("authorization", "Bearer alice")])
            .await;
        let bob = server
            .send("GET", path, &[("authorization", "Bearer bob")])
            .await;
        let alice_again = server
            .send("GET", path, &[("authorization", "Bearer alice")])
            .await;
        assert!(alice.body.ends_with("Bearer alice"), "{}", alice.body);
        assert!(bob.body.ends_with("Bearer bob"), "{}", bob.body);
        assert_eq!(alice_again.body, alice.body);
    }
    assert_eq!(server.get("/profile").await.status, 401);
    // A repeated field in another order is another request (`HeaderMap::get` reads the first).
    let (alice, bob) = (
        ("authorization", "Bearer alice"),
        ("authorization", "Bearer bob"),
    );
    let first = server.send("GET", "/dashboard", &[alice, bob]).await;
    let reversed = server.send("GET", "/dashboard", &[bob, alice]).await;
    assert_eq!(first.body, "dashboard of Bearer alice");
    assert_eq!(reversed.body, "dashboard of Bearer bob");
}

static LAYER_RUNS: AtomicUsize = AtomicUsize::new(0);

async fn layered(headers: HeaderMap, Path(kind): Path<String>) -> axum::response::Response {
    LAYER_RUNS.fetch_add(1, Ordering::SeqCst);
    let lang = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("en")
        .to_owned();
    match kind.as_str() {
        "vary" => (
            [(header::VARY, "accept-language")],
            format!("hello in {lang}"),
        )
            .into_response(),
        "vary-star" => ([(header::VARY, "*")], "anything").into_response(),
        "max-age" => ([(header::CACHE_CONTROL, "max-age=1")], "short").into_response(),
        "public" => ([(header::CACHE_CONTROL, "public, max-age=30")], "shared").into_response(),
        "big" => "x".repeat(10_000).into_response(),
        "error" => (StatusCode::SERVICE_UNAVAILABLE, "later").into_response(),
        _ => format!("plain {kind}").into_response(),
    }
}

fn layered_app() -> Router {
    Router::new()
        .route("/l/{kind}", get(layered).post(|| async { "updated" }))
        .layer(
            CacheLayer::new()
                .ttl(Duration::from_secs(30))
                .max_body(4096),
        )
}

async fn runs_for(
    server: &TestServer,
    path: &str,
    headers: &[(&str, &str)],
) -> (usize, Vec<String>) {
    let before = LAYER_RUNS.load(Ordering::SeqCst);
    let mut x_cache = Vec::new();
    for _ in 0..2 {
        let reply = server.send("GET", path, headers).await;
        x_cache.push(reply.header("x-cache").unwrap_or("-").to_owned());
    }
    (LAYER_RUNS.load(Ordering::SeqCst) - before, x_cache)
}

#[tokio::test]
async fn layer_caches_by_uri_and_vary_and_follows_rfc_9111() {
    let server = TestServer::start(layered_app()).await;

    assert_eq!(
        runs_for(&server, "/l/a", &[]).await,
        (1, vec!["MISS".into(), "HIT".into()])
    );
    assert_eq!(
        runs_for(&server, "/l/a?page=2", &[]).await.0,
        1,
        "query is part of the key"
    );

    // Vary: one entry per Accept-Language value.
    let fr = [("accept-language", "fr")];
    let de = [("accept-language", "de")];
    assert_eq!(runs_for(&server, "/l/vary", &fr).await.0, 1);
    assert_eq!(runs_for(&server, "/l/vary", &de).await.0, 1);
    assert_eq!(server.send("GET", "/l/vary", &fr).await.body, "hello in fr");
    assert_eq!(server.send("GET", "/l/vary", &de).await.body, "hello in de");
    assert_eq!(runs_for(&server, "/l/vary", &fr).await.0, 0);
    assert_eq!(
        runs_for(&server, "/l/vary-star", &[]).await.0,
        2,
        "Vary: * is never stored"
    );

    // Authorization: not stored unless the response allows it.
    let auth = [("authorization", "Bearer x")];
    assert_eq!(runs_for(&server, "/l/private-data", &auth).await.0, 2);
    assert_eq!(runs_for(&server, "/l/public", &auth).await.0, 1);

    // Errors and oversized bodies pass through, the latter whole.
    assert_eq!(runs_for(&server, "/l/error", &[]).await.0, 2);
    assert_eq!(runs_for(&server, "/l/big", &[]).await.0, 2);
    assert_eq!(server.get("/l/big").await.body.len(), 10_000);

    // max-age from the response wins over the layer's TTL.
    assert_eq!(runs_for(&server, "/l/max-age", &[]).await.0, 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(runs_for(&server, "/l/max-age", &[]).await.0, 1);

    // A request's no-store bypasses the cache.
    assert_eq!(
        runs_for(&server, "/l/a", &[("cache-control", "no-store")])
            .await
            .0,
        2
    );

    // ETag and 304 from the layer, HEAD from the stored GET.
    let reply = server.get("/l/a").await;
    let etag = reply.header("etag").unwrap().to_owned();
    let not_modified = server
        .send("GET", "/l/a", &[("if-none-match", &etag)])
        .await;
    assert_eq!(not_modified.status, 304);
    assert_eq!(not_modified.header("x-cache"), Some("HIT"));
    let head = server.send("HEAD", "/l/a", &[]).await;
    assert_eq!(
        (head.status, head.header("etag")),
        (200, Some(etag.as_str()))
    );

    // A successful POST to the URI removes its entry.
    assert_eq!(server.send("POST", "/l/a", &[]).await.body, "updated");
    assert_eq!(
        runs_for(&server, "/l/a", &[]).await,
        (1, vec!["MISS".into(), "HIT".into()])
    );
}

static PRODUCT_RUNS: AtomicUsize = AtomicUsize::new(0);
static CATALOG_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(http, ttl = 60, group = "products")]
async fn product(Path(id): Path<u64>) -> String {
    PRODUCT_RUNS.fetch_add(1, Ordering::SeqCst);
    format!("product {id}")
}

async fn catalog() -> &'static str {
    CATALOG_RUNS.fetch_add(1, Ordering::SeqCst);
    "catalog"
}

#[derive(Deserialize)]
struct NewPrice {
    valid: bool,
}

#[cache_invalidate(http, group = "products", key = "price:{id}")]
async fn update_product(Path(id): Path<u64>, Query(q): Query<NewPrice>) -> impl IntoResponse {
    if q.valid {
        (StatusCode::OK, format!("updated {id}"))
    } else {
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid".to_owned())
    }
}

#[tokio::test]
async fn a_mutation_handler_invalidates_the_attribute_and_the_layer() {
    let app = Router::new()
        .route("/products/{id}", get(product))
        .route(
            "/catalog",
            get(catalog).layer(CacheLayer::new().group("products")),
        )
        .route("/products/{id}/price", post(update_product));
    let server = TestServer::start(app).await;
    for _ in 0..2 {
        server.get("/products/1").await;
        server.get("/catalog").await;
    }
    assert_eq!(PRODUCT_RUNS.load(Ordering::SeqCst), 1);
    assert_eq!(CATALOG_RUNS.load(Ordering::SeqCst), 1);

    // A failed mutation invalidates nothing.
    let rejected = server
        .send("POST", "/products/1/price?valid=false", &[])
        .await;
    assert_eq!(rejected.status, 422);
    server.get("/products/1").await;
    server.get("/catalog").await;
    assert_eq!(PRODUCT_RUNS.load(Ordering::SeqCst), 1);
    assert_eq!(CATALOG_RUNS.load(Ordering::SeqCst), 1);

    let accepted = server
        .send("POST", "/products/1/price?valid=true", &[])
        .await;
    assert_eq!(
        (accepted.status, accepted.body.as_str()),
        (200, "updated 1")
    );
    server.get("/products/1").await;
    server.get("/catalog").await;
    assert_eq!(PRODUCT_RUNS.load(Ordering::SeqCst), 2);
    assert_eq!(CATALOG_RUNS.load(Ordering::SeqCst), 2);
}

/// A child process serving the same cached handler; killed on drop.
struct ChildServer {
    child: Child,
    port: u16,
}

impl ChildServer {
    fn start() -> Self {
        let mut child = Command::new(support::child_binary())
            .args(["http", "serve", "-"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("cache-child starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening=")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected child output {line:?}"));
        Self { child, port }
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn etags_are_identical_across_processes() {
    let (a, b) = (ChildServer::start(), ChildServer::start());
    let client = client();
    let url = |port: u16| format!("http://127.0.0.1:{port}/article/5");
    let from_a = send(&client, "GET", &url(a.port), &[]).await;
    let from_b = send(&client, "GET", &url(b.port), &[]).await;
    assert_eq!(from_a.status, 200);
    assert_eq!(from_a.body, from_b.body);
    let etag = from_a.header("etag").unwrap();
    assert_eq!(from_b.header("etag"), Some(etag));
    // A validator from one process is honoured by the other.
    let revalidated = send(&client, "GET", &url(b.port), &[("if-none-match", etag)]).await;
    assert_eq!(revalidated.status, 304);
}

static TAGGED_RUNS: AtomicUsize = AtomicUsize::new(0);

async fn tagged(Path(id): Path<u64>) -> impl IntoResponse {
    TAGGED_RUNS.fetch_add(1, Ordering::SeqCst);
    (
        [("x-cache-groups", format!("shelf, book:{id}"))],
        format!("book {id}"),
    )
}

#[tokio::test]
async fn layer_on_redis_with_groups_from_a_response_header() {
    let redis = support::RegisteredRedis::start("redis-layer");
    let app = Router::new().route("/books/{id}", get(tagged)).layer(
        CacheLayer::new()
            .backend("redis-layer")
            .groups_from_header(header::HeaderName::from_static("x-cache-groups")),
    );
    let server = TestServer::start(app).await;
    let first = server.get("/books/1").await;
    assert_eq!(first.header("x-cache"), Some("MISS"));
    assert!(
        first.header("x-cache-groups").is_none(),
        "the header is internal"
    );
    // The first answer only records the groups it names: their generations were not read before
    // it was fetched, so an invalidation of them meanwhile would go unseen. The second is stored.
    let second = server.get("/books/1").await;
    assert_eq!(second.header("x-cache"), Some("MISS"));
    let third = server.get("/books/1").await;
    assert_eq!(third.header("x-cache"), Some("HIT"));
    assert_eq!(third.body, "book 1");
    server.get("/books/2").await;
    server.get("/books/2").await;
    assert_eq!(TAGGED_RUNS.load(Ordering::SeqCst), 4);
    assert!(redis.server.cli(&["DBSIZE"]).parse::<u32>().unwrap() >= 2);

    // A group named only by the response header reaches the entry...
    cache_runtime::invalidate_group("book:1").await.unwrap();
    assert_eq!(server.get("/books/1").await.header("x-cache"), Some("MISS"));
    assert_eq!(server.get("/books/2").await.header("x-cache"), Some("HIT"));
    // ...and so does a group shared by both.
    cache_runtime::invalidate_group("shelf").await.unwrap();
    assert_eq!(server.get("/books/1").await.header("x-cache"), Some("MISS"));
    assert_eq!(server.get("/books/2").await.header("x-cache"), Some("MISS"));
    assert_eq!(TAGGED_RUNS.load(Ordering::SeqCst), 7);
}

/// Origin runs of `slow`, per path segment (tests run in parallel: each uses its own).
static SLOW_RUNS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn slow_runs(kind: &str) -> usize {
    SLOW_RUNS
        .lock()
        .unwrap()
        .iter()
        .filter(|k| *k == kind)
        .count()
}

/// A slow origin behind the layer: `/slow/private` is not cacheable, every other kind is.
async fn slow(Path(kind): Path<String>) -> impl IntoResponse {
    SLOW_RUNS.lock().unwrap().push(kind.clone());
    let work = if kind == "private" { 1_000 } else { 300 };
    tokio::time::sleep(Duration::from_millis(work)).await;
    let cache_control = if kind == "private" {
        "private"
    } else {
        "max-age=30"
    };
    (
        [(header::CACHE_CONTROL, cache_control)],
        format!("slow {kind}"),
    )
}

/// Sends `n` concurrent GETs and returns their `X-Cache` values and the origin runs they caused.
async fn concurrent_gets(server: &TestServer, kind: &str, n: usize) -> (Vec<String>, usize) {
    let before = slow_runs(kind);
    let path = format!("/slow/{kind}");
    let path = path.as_str();
    let replies =
        futures_util::future::join_all((0..n).map(|_| server.send("GET", path, &[]))).await;
    for reply in &replies {
        assert_eq!(reply.status, 200);
        assert!(reply.body.starts_with("slow "), "{}", reply.body);
    }
    let x_cache = replies
        .iter()
        .map(|r| r.header("x-cache").unwrap_or("-").to_owned())
        .collect();
    (x_cache, slow_runs(kind) - before)
}

#[tokio::test]
async fn layer_coalesces_concurrent_misses_of_one_uri() {
    let app = Router::new()
        .route("/slow/{kind}", get(slow))
        .layer(CacheLayer::new().ttl(Duration::from_secs(30)));
    let server = TestServer::start(app).await;

    // 20 concurrent requests for one cold URI: the origin runs once, everyone gets its answer.
    let (x_cache, runs) = concurrent_gets(&server, "shared", 20).await;
    assert_eq!(runs, 1, "one request goes to the origin");
    assert_eq!(x_cache.iter().filter(|x| *x == "MISS").count(), 1);
    assert_eq!(x_cache.iter().filter(|x| *x == "HIT").count(), 19);

    // An uncacheable URI (1 s of work): the first wave waits for its leader once, then each
    // request goes to the origin (nothing was stored to share); the next wave does not wait at all.
    let (_, runs) = concurrent_gets(&server, "private", 8).await;
    assert_eq!(runs, 8, "a private response is never shared");
    let started = std::time::Instant::now();
    let (x_cache, runs) = concurrent_gets(&server, "private", 8).await;
    assert_eq!(runs, 8);
    assert!(x_cache.iter().all(|x| x == "MISS"));
    assert!(
        started.elapsed() < Duration::from_millis(1_800),
        "requests for a URI known to be uncacheable do not queue behind each other: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn layer_coalescing_can_be_turned_off() {
    let app = Router::new().route("/slow/{kind}", get(slow)).layer(
        CacheLayer::new()
            .ttl(Duration::from_secs(30))
            .coalesce_wait(Duration::ZERO),
    );
    let server = TestServer::start(app).await;
    let (x_cache, runs) = concurrent_gets(&server, "uncoalesced", 6).await;
    assert!(x_cache.iter().all(|x| x == "MISS"));
    assert_eq!(runs, 6);
}

#[tokio::test]
async fn nested_layers_do_not_wait_for_their_own_flight() {
    let inner_route = get(slow).layer(CacheLayer::new().ttl(Duration::from_secs(30)));
    let app = Router::new()
        .route("/slow/{kind}", inner_route)
        .layer(CacheLayer::new().ttl(Duration::from_secs(60)));
    let server = TestServer::start(app).await;
    let started = std::time::Instant::now();
    let (x_cache, runs) = concurrent_gets(&server, "nested", 4).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the inner layer waited for the outer one: {:?}",
        started.elapsed()
    );
    assert_eq!(runs, 1);
    assert_eq!(x_cache.iter().filter(|x| *x == "HIT").count(), 3);
}

static REWRITTEN_RUNS: AtomicUsize = AtomicUsize::new(0);

/// A layer outside the cache that replaces the body gets the same, consistent reply on a hit as on
/// the miss: the cache's replies carry no `Content-Length` of the stored body to contradict it.
#[tokio::test]
async fn a_body_rewritten_outside_the_cache_is_sent_whole_on_hits() {
    async fn short() -> &'static str {
        REWRITTEN_RUNS.fetch_add(1, Ordering::SeqCst);
        "abc"
    }
    let rewrite = |response: axum::response::Response| {
        let (parts, _) = response.into_parts();
        axum::response::Response::from_parts(parts, axum::body::Body::from("rewritten: longer"))
    };
    let app = Router::new()
        .route("/rewritten", get(short))
        .layer(CacheLayer::new().name("rewritten"))
        .layer(tower::util::MapResponseLayer::new(rewrite));
    let server = TestServer::start(app).await;
    for round in ["miss", "hit", "hit again"] {
        let reply = server.get("/rewritten").await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, "rewritten: longer"),
            "{round}"
        );
        assert_eq!(reply.header("content-length"), Some("17"), "{round}");
    }
    assert_eq!(
        REWRITTEN_RUNS.load(Ordering::SeqCst),
        1,
        "served from the cache"
    );
}

static LONG_URI_RUNS: AtomicUsize = AtomicUsize::new(0);

/// A URI whose key is too long to be stored as it is (it is shortened with a digest) is still
/// served from the cache, and another long URI with the same beginning is not served its entry.
#[tokio::test]
async fn long_uris_are_cached_apart() {
    async fn echo(uri: axum::http::Uri) -> String {
        LONG_URI_RUNS.fetch_add(1, Ordering::SeqCst);
        uri.to_string()
    }
    let app = Router::new()
        .route("/long/{*rest}", get(echo))
        .layer(CacheLayer::new().name("long-uris"));
    let server = TestServer::start(app).await;
    let stem = format!("/long/{}", "segment/".repeat(40));
    for tail in ["a", "b"] {
        let uri = format!("{stem}{tail}");
        for round in ["miss", "hit"] {
            let reply = server.get(&uri).await;
            assert_eq!(
                (reply.status, reply.body.as_str()),
                (200, uri.as_str()),
                "{round}"
            );
        }
    }
    assert_eq!(LONG_URI_RUNS.load(Ordering::SeqCst), 2, "one run per URI");
}

static HOSTS_RUNS: AtomicUsize = AtomicUsize::new(0);

async fn host_page(uri: axum::http::Uri) -> String {
    let run = HOSTS_RUNS.fetch_add(1, Ordering::SeqCst) + 1;
    format!("page {} run {run}", uri.path())
}

fn hosts_app() -> Router {
    Router::new()
        .route("/products", get(host_page))
        .route("/admin/products", get(host_page))
        .route("/case", get(host_page).post(|| async { "updated" }))
        .layer(CacheLayer::new().name("hosts"))
}

/// A `Host` that is not an authority (`example.test/admin`) cannot file a response under another
/// URI's key (`example.test` + `/admin/products`): such requests pass the cache by.
#[tokio::test]
async fn a_host_with_a_path_cannot_poison_another_uri() {
    let server = TestServer::start(hosts_app()).await;
    let evil = server
        .send("GET", "/products", &[("host", "example.test/admin")])
        .await;
    assert_eq!(evil.status, 200);
    assert!(evil.body.starts_with("page /products"), "{}", evil.body);
    let real = server
        .send("GET", "/admin/products", &[("host", "example.test")])
        .await;
    assert!(
        real.body.starts_with("page /admin/products"),
        "another URI's response was served: {}",
        real.body
    );
    assert_eq!(real.header("x-cache"), Some("MISS"));
}

/// Host names are compared without case (RFC 9110 §4.2.3): one entry per URI, which a mutation
/// through any spelling of the host removes. `Range` on `HEAD` is ignored (RFC 9110 §14.2).
#[tokio::test]
async fn host_case_names_one_entry_and_head_ignores_range() {
    let server = TestServer::start(hosts_app()).await;
    let get = |host: &'static str| {
        let server = &server;
        async move { server.send("GET", "/case", &[("host", host)]).await }
    };
    let first = get("Example.TEST").await;
    assert_eq!(first.header("x-cache"), Some("MISS"));
    let second = get("example.test").await;
    assert_eq!(
        second.header("x-cache"),
        Some("HIT"),
        "same URI, other case"
    );
    assert_eq!(second.body, first.body);

    let head = server
        .send(
            "HEAD",
            "/case",
            &[("host", "example.test"), ("range", "bytes=0-4")],
        )
        .await;
    assert_eq!(head.status, 200, "Range is ignored on HEAD");
    assert_eq!(
        head.header("content-length"),
        Some(first.body.len().to_string().as_str())
    );
    assert_eq!(head.header("content-range"), None);

    let posted = server
        .send("POST", "/case", &[("host", "EXAMPLE.test")])
        .await;
    assert_eq!(posted.status, 200);
    let after = get("example.test").await;
    assert_eq!(
        after.header("x-cache"),
        Some("MISS"),
        "the mutation removed it"
    );
    assert_ne!(after.body, first.body);
}

/// An endless event stream: one event every 50 ms.
async fn events() -> axum::response::Response {
    let ticks = futures_util::stream::unfold(0u64, |n| async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let event = bytes::Bytes::from(format!("data: {n}\n\n"));
        Some((Ok::<_, std::convert::Infallible>(event), n + 1))
    });
    axum::response::Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(axum::body::Body::from_stream(ticks))
        .unwrap()
}

/// Server-sent events stream through a layer that gives unlabelled responses a lifetime of its
/// own: the first event reaches the client while the stream goes on (an event stream is never
/// stored, so it is never read to its end first).
#[tokio::test]
async fn an_event_stream_reaches_the_client_as_it_goes() {
    use http_body_util::BodyExt;
    let app = Router::new()
        .route("/events", get(events))
        .layer(CacheLayer::new().name("events"));
    let server = TestServer::start(app).await;
    let first_event = async {
        let response = client()
            .get(server.url("/events").parse().unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        body.frame().await.expect("a frame").expect("no error")
    };
    let first = tokio::time::timeout(Duration::from_secs(5), first_event)
        .await
        .expect("the first event arrives while the stream goes on");
    let data = first.into_data().expect("data");
    assert_eq!(&data[..], b"data: 0\n\n");
}

static AUTHORITY_RUNS: AtomicUsize = AtomicUsize::new(0);

/// Requests as HTTP/2 carries them: the host in the URI's authority, no `Host` field. A mutation
/// whose answer names another URI in `Location` removes that URI's entry; a `Host` field that is not
/// visible ASCII passes the cache by (it would otherwise key as no host at all).
#[tokio::test]
async fn authority_only_requests_are_keyed_and_invalidated_by_their_host() {
    use tower::ServiceExt;
    let app = Router::new()
        .route(
            "/items/{id}",
            get(|Path(id): Path<u64>| async move {
                let run = AUTHORITY_RUNS.fetch_add(1, Ordering::SeqCst) + 1;
                format!("item {id} run {run}")
            }),
        )
        .route(
            "/items",
            post(|| async {
                (
                    StatusCode::CREATED,
                    [(header::LOCATION, "/items/2")],
                    "made",
                )
            }),
        )
        .layer(CacheLayer::new().name("authority"));
    let send = |method: &str, uri: &str, host: Option<&[u8]>| {
        let mut request = axum::http::Request::builder().method(method).uri(uri);
        if let Some(host) = host {
            request = request.header(
                header::HOST,
                axum::http::HeaderValue::from_bytes(host).unwrap(),
            );
        }
        let request = request.body(axum::body::Body::empty()).unwrap();
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await.unwrap();
            let x_cache = response
                .headers()
                .get("x-cache")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = axum::body::to_bytes(response.into_body(), 1024)
                .await
                .unwrap();
            (x_cache, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    let first = send("GET", "http://example.test/items/2", None).await;
    assert_eq!(first.0.as_deref(), Some("MISS"));
    let second = send("GET", "http://example.test/items/2", None).await;
    assert_eq!(second.0.as_deref(), Some("HIT"));
    send("POST", "http://example.test/items", None).await;
    let after = send("GET", "http://example.test/items/2", None).await;
    assert_eq!(
        after.0.as_deref(),
        Some("MISS"),
        "the Location's entry was removed"
    );

    let odd = send("GET", "/items/3", Some(b"t\xe9nant.test")).await;
    assert_eq!(odd.0.as_deref(), Some("BYPASS"), "a Host that is not text");
}
