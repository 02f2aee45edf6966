//! The tour of cache-runtime: every caching scenario on its own route.
//!
//! ```text
//! cargo run --example axum_app          # serves on 127.0.0.1:3000 (PORT to change; 0: any free port)
//! curl -s localhost:3000/               # lists the routes
//! ```
//!
//! Redis: the app pings `REDIS_URL` (default `redis://127.0.0.1:6379`) at start-up. When it does not
//! answer, the `"redis"` backend name is remapped to an in-process cache and a warning says so; every
//! route still works. Files go under `CACHE_DIR` (default: `cache` in the OS temp dir).

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::{Path, Query, State},
    http::{header, StatusCode},
    response::IntoResponse,
    routing::{get, post},
    Json, Router,
};
use cache_runtime::{cache_invalidate, cached, http::CacheLayer, MemoryBackend, RedisBackend};
use serde::{Deserialize, Serialize};

/// The routes, as `GET /` lists them.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET /", "this list"),
    (
        "GET /memory/square/{n}",
        "in-memory caching of a slow computation (TTL 60 s)",
    ),
    (
        "GET /ttl/clock",
        "time-based expiry: the cached time changes every 5 s",
    ),
    (
        "GET /redis/users/{id}",
        "Redis caching of data (key user:{id}, group users)",
    ),
    (
        "PUT /redis/users/{id}?name=..",
        "event-driven invalidation: updates the user and drops user:{id}",
    ),
    (
        "GET /redis/pages/{id}",
        "Redis caching of a whole response (status and headers kept)",
    ),
    ("GET /file/reports/{name}", "filesystem caching (CACHE_DIR)"),
    (
        "GET /headers/profile",
        "Cache-Control: private, max-age=<remaining>",
    ),
    (
        "GET /etag/articles/{id}",
        "ETag; send If-None-Match to get 304",
    ),
    (
        "GET /middleware/news",
        "the caching middleware (CacheLayer) on a whole router",
    ),
    (
        "GET /middleware/weather?city=..",
        "the middleware with Vary: Accept-Language",
    ),
    (
        "POST /groups/{group}/clear",
        "group invalidation (try users, pages, middleware)",
    ),
    (
        "GET /nested/orgs/{id}",
        "nested data serialized in Redis and restored",
    ),
    (
        "GET /stale/quote",
        "stale-while-revalidate: fresh 5 s, then served stale while one refresh runs",
    ),
    (
        "GET /metrics",
        "counters and latency histograms in the Prometheus text format",
    ),
];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct User {
    pub id: u64,
    pub name: String,
    pub roles: Vec<String>,
}

/// A stand-in database.
#[derive(Clone, Default)]
pub struct Db {
    users: Arc<RwLock<BTreeMap<u64, User>>>,
}

impl Db {
    fn seeded() -> Self {
        let db = Self::default();
        for (id, name) in [(1, "Ada"), (2, "Grace"), (3, "Linus")] {
            db.users.write().unwrap().insert(
                id,
                User {
                    id,
                    name: name.into(),
                    roles: vec!["reader".into()],
                },
            );
        }
        db
    }
}

/// Simulated latency of a slow backend call.
const SLOW: Duration = Duration::from_millis(300);

#[cached(ttl = 60)]
async fn slow_square(n: u64) -> u64 {
    tokio::time::sleep(SLOW).await;
    n.wrapping_mul(n)
}

async fn memory_square(Path(n): Path<u64>) -> Json<serde_json::Value> {
    let started = Instant::now();
    let value = slow_square(n).await;
    Json(serde_json::json!({ "n": n, "square": value, "took_ms": started.elapsed().as_millis() }))
}

#[cached(ttl = "5s")]
async fn cached_clock() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn ttl_clock() -> String {
    format!(
        "cached unix time: {} (refreshes every 5 s)\n",
        cached_clock().await
    )
}

#[cached(ttl = "10m", backend = "redis", key = "user:{id}", group = "users")]
async fn load_user(db: &Db, id: u64) -> Option<User> {
    tokio::time::sleep(SLOW).await;
    db.users.read().unwrap().get(&id).cloned()
}

async fn get_user(State(db): State<Db>, Path(id): Path<u64>) -> impl IntoResponse {
    match load_user(&db, id).await {
        Some(user) => Json(user).into_response(),
        None => (StatusCode::NOT_FOUND, "no such user\n").into_response(),
    }
}

#[derive(Deserialize)]
struct Rename {
    name: String,
}

#[cache_invalidate(http, key = "user:{id}")]
async fn update_user(
    State(db): State<Db>,
    Path(id): Path<u64>,
    Query(rename): Query<Rename>,
) -> impl IntoResponse {
    let mut users = db.users.write().unwrap();
    match users.get_mut(&id) {
        Some(user) => {
            user.name = rename.name;
            (StatusCode::OK, Json(user.clone())).into_response()
        }
        None => (StatusCode::NOT_FOUND, "no such user\n").into_response(),
    }
}

#[cached(http, ttl = 30, backend = "redis", group = "pages")]
async fn redis_page(Path(id): Path<u64>) -> impl IntoResponse {
    tokio::time::sleep(SLOW).await;
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::HeaderName::from_static("x-rendered-by"), "axum_app"),
        ],
        format!("<h1>Page {id}</h1><p>rendered once, then served from Redis</p>\n"),
    )
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Report {
    name: String,
    lines: Vec<String>,
}

#[cached(ttl = "1h", backend = "file", key = "report:{name}")]
async fn build_report(name: String) -> Report {
    tokio::time::sleep(SLOW).await;
    Report {
        lines: (1..=3).map(|i| format!("{name}: line {i}")).collect(),
        name,
    }
}

async fn file_report(Path(name): Path<String>) -> Json<Report> {
    Json(build_report(name).await)
}

#[cached(http, ttl = 120, visibility = "private")]
async fn profile_headers() -> &'static str {
    "look at the Cache-Control header of this response\n"
}

#[cached(http, ttl = 300)]
async fn article(Path(id): Path<u64>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "id": id, "title": format!("Article {id}"), "body": "..." }))
}

async fn news() -> Json<serde_json::Value> {
    tokio::time::sleep(SLOW).await;
    Json(serde_json::json!({ "headlines": ["caching is hard", "invalidation is harder"] }))
}

#[derive(Deserialize)]
struct City {
    city: Option<String>,
}

async fn weather(headers: axum::http::HeaderMap, Query(q): Query<City>) -> impl IntoResponse {
    tokio::time::sleep(SLOW).await;
    let lang = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("en");
    let city = q.city.unwrap_or_else(|| "Paris".into());
    let text = if lang.starts_with("fr") {
        format!("{city} : ensoleillé\n")
    } else {
        format!("{city}: sunny\n")
    };
    (
        [
            (header::VARY, "accept-language"),
            (header::CACHE_CONTROL, "max-age=20"),
        ],
        text,
    )
}

async fn clear_group(Path(group): Path<String>) -> impl IntoResponse {
    match cache_runtime::invalidate_group(&group).await {
        Ok(()) => (StatusCode::OK, format!("group {group} invalidated\n")),
        Err(error) => (StatusCode::BAD_GATEWAY, format!("{error}\n")),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Org {
    id: u64,
    name: String,
    teams: Vec<Team>,
    settings: BTreeMap<String, Setting>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Team {
    name: String,
    lead: Option<User>,
    members: Vec<User>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value")]
enum Setting {
    Flag(bool),
    Limit(u32),
    Text(String),
}

#[cached(ttl = "15m", backend = "redis", key = "org:{id}", group = "orgs")]
async fn load_org(db: &Db, id: u64) -> Org {
    tokio::time::sleep(SLOW).await;
    let users: Vec<User> = db.users.read().unwrap().values().cloned().collect();
    Org {
        id,
        name: format!("Org {id}"),
        teams: vec![
            Team {
                name: "core".into(),
                lead: users.first().cloned(),
                members: users.clone(),
            },
            Team {
                name: "empty".into(),
                lead: None,
                members: vec![],
            },
        ],
        settings: BTreeMap::from([
            ("sso".into(), Setting::Flag(true)),
            ("seats".into(), Setting::Limit(25)),
            ("motto".into(), Setting::Text("cache: with care".into())),
        ]),
    }
}

async fn nested_org(State(db): State<Db>, Path(id): Path<u64>) -> Json<Org> {
    Json(load_org(&db, id).await)
}

#[cached(ttl = "5s", stale = "1m")]
async fn quote_of_the_moment() -> String {
    tokio::time::sleep(SLOW).await;
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("quote computed at unix time {secs}")
}

async fn stale_quote() -> String {
    let started = Instant::now();
    let quote = quote_of_the_moment().await;
    format!(
        "{quote} (answered in {} ms)\n",
        started.elapsed().as_millis()
    )
}

async fn index() -> String {
    let mut out = String::from("cache-runtime example routes:\n");
    for (route, what) in ROUTES {
        out.push_str(&format!("  {route:<34} {what}\n"));
    }
    out
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        cache_runtime::stats_prometheus(),
    )
}

/// Uses Redis at `url` for the `"redis"` backend, or memory when Redis does not answer.
pub async fn configure_redis(url: &str) {
    let reachable = match RedisBackend::open(url) {
        Ok(backend) => {
            let ok = matches!(
                tokio::time::timeout(Duration::from_millis(800), backend.ping()).await,
                Ok(Ok(()))
            );
            if ok {
                cache_runtime::register("redis", backend);
            }
            ok
        }
        Err(_) => false,
    };
    if reachable {
        tracing::info!(url, "using Redis for the \"redis\" backend");
    } else {
        tracing::warn!(
            url,
            "Redis is unreachable: the \"redis\" backend falls back to an in-process cache"
        );
        cache_runtime::register("redis", MemoryBackend::default());
    }
}

/// The whole app.
pub fn app() -> Router {
    let middleware = Router::new()
        .route("/news", get(news))
        .route("/weather", get(weather))
        .layer(
            CacheLayer::new()
                .ttl(Duration::from_secs(15))
                .group("middleware"),
        );
    Router::new()
        .route("/", get(index))
        .route("/memory/square/{n}", get(memory_square))
        .route("/ttl/clock", get(ttl_clock))
        .route("/redis/users/{id}", get(get_user).put(update_user))
        .route("/redis/pages/{id}", get(redis_page))
        .route("/file/reports/{name}", get(file_report))
        .route("/headers/profile", get(profile_headers))
        .route("/etag/articles/{id}", get(article))
        .nest("/middleware", middleware)
        .route("/groups/{group}/clear", post(clear_group))
        .route("/nested/orgs/{id}", get(nested_org))
        .route("/stale/quote", get(stale_quote))
        .route("/metrics", get(metrics))
        .with_state(Db::seeded())
}

#[allow(dead_code)] // the integration test includes this file and uses `app` only
#[tokio::main]
async fn main() -> std::process::ExitCode {
    use std::process::ExitCode;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let port: u16 = match std::env::var("PORT") {
        Err(_) => 3000,
        Ok(port) => match port.trim().parse() {
            Ok(port) => port,
            Err(_) => {
                eprintln!("axum_app: PORT={port} is not a port number (0-65535)");
                return ExitCode::FAILURE;
            }
        },
    };
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(listener) => listener,
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {
            eprintln!(
                "axum_app: port {port} is already in use on 127.0.0.1 (another axum_app still \
                 running?); set PORT to use another one, e.g. PORT=3001"
            );
            return ExitCode::FAILURE;
        }
        Err(error) => {
            eprintln!("axum_app: cannot listen on 127.0.0.1:{port}: {error} (set PORT to use another port)");
            return ExitCode::FAILURE;
        }
    };
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    configure_redis(&url).await;
    let port = listener.local_addr().map_or(port, |address| address.port());
    tracing::info!("listening on http://127.0.0.1:{port}/ (GET / lists the routes)");
    match axum::serve(listener, app()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("axum_app: the server stopped: {error}");
            ExitCode::FAILURE
        }
    }
}
