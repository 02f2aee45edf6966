//! `CacheLayer` as an RFC 9111 shared cache, black-box: a programmable origin behind the layer on
//! a real port, a real client, and counts of how often the origin ran.
//!
//! Every test has its own origin (its own counters) and its own layer (its own call site, so its own
//! namespace): tests pass in any order, in parallel or with `--test-threads=1`.

mod support;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{header, request::Parts, HeaderMap, HeaderName, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
    routing::{any, get, MethodRouter},
    Router,
};
use cache_runtime::{cached, http::CacheLayer};
use support::http::{Reply, TestServer};

// ---------------------------------------------------------------------------------------------
// The programmable origin.
// ---------------------------------------------------------------------------------------------

/// What the origin saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn is_get(&self) -> bool {
        self.method == Method::GET
    }
}

/// One answer of the origin: status, headers, body, and how long it takes.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    delay: Duration,
}

impl Answer {
    fn new(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    fn ok(body: impl Into<String>) -> Self {
        Self::new(200, body)
    }

    fn not_modified() -> Self {
        Self::new(304, "")
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    fn cache_control(self, value: &str) -> Self {
        self.header("cache-control", value)
    }

    fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = StatusCode::from_u16(self.status).expect("valid status");
        for (name, value) in &self.headers {
            response.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).expect("valid header name"),
                HeaderValue::from_str(value).expect("valid header value"),
            );
        }
        response
    }
}

/// The origin's script: the request, and which run of the origin this is (1 for the first).
type Script = Arc<dyn Fn(&Seen, usize) -> Answer + Send + Sync>;

/// An origin whose answers a test scripts, recording every request it received.
#[derive(Clone)]
struct Origin {
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Script,
}

impl Origin {
    fn new(script: impl Fn(&Seen, usize) -> Answer + Send + Sync + 'static) -> Self {
        Self {
            seen: Arc::default(),
            script: Arc::new(script),
        }
    }

    /// The same answer every time.
    fn always(answer: Answer) -> Self {
        Self::new(move |_, _| answer.clone())
    }

    /// A handler for any method.
    fn handler(&self) -> MethodRouter {
        let origin = self.clone();
        any(move |request: Request| {
            let origin = origin.clone();
            async move { origin.answer(request).await }
        })
    }

    /// A router sending every path to the origin.
    fn router(&self) -> Router {
        Router::new()
            .route("/", self.handler())
            .route("/{*path}", self.handler())
    }

    async fn answer(&self, request: Request) -> Response {
        let seen = Seen {
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
            headers: request.headers().clone(),
        };
        let run = {
            let mut all = self.seen.lock().unwrap();
            all.push(seen.clone());
            all.len()
        };
        let answer = (self.script)(&seen, run);
        if !answer.delay.is_zero() {
            tokio::time::sleep(answer.delay).await;
        }
        answer.into_response()
    }

    /// How many requests reached the origin.
    fn runs(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// How many `method` requests for `path` reached the origin.
    fn runs_of(&self, method: &str, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.method.as_str() == method && s.path == path)
            .count()
    }

    /// The `n`-th request the origin received (1 for the first).
    fn request(&self, n: usize) -> Seen {
        let all = self.seen.lock().unwrap();
        all.get(n - 1).cloned().unwrap_or_else(|| {
            panic!(
                "expected the origin to receive request #{n}, it got {}",
                all.len()
            )
        })
    }
}

/// The origin behind `layer`, on a real port.
async fn serve(origin: &Origin, layer: CacheLayer) -> TestServer {
    TestServer::start(origin.router().layer(layer)).await
}

// ---------------------------------------------------------------------------------------------
// Small helpers.
// ---------------------------------------------------------------------------------------------

/// How long to wait for a `max-age=1` response to be stale, whatever the rounding of ages.
const STALE: Duration = Duration::from_millis(2_100);

/// An IMF-fixdate (RFC 9110 §5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(time: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // 1970-01-01 was a Thursday.
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    let secs = time
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (hour, minute, second) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil date from days since the epoch (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {hour:02}:{minute:02}:{second:02} GMT",
        WEEKDAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
    )
}

/// The HTTP date `secs` seconds ago.
fn ago(secs: u64) -> String {
    http_date(SystemTime::now() - Duration::from_secs(secs))
}

/// The HTTP date `secs` seconds from now.
fn from_now(secs: u64) -> String {
    http_date(SystemTime::now() + Duration::from_secs(secs))
}

/// The reply's `Age`, which must be there.
fn age(reply: &Reply) -> u64 {
    let value = reply
        .header("age")
        .unwrap_or_else(|| panic!("expected an Age header, got {:?}", reply.headers));
    value
        .parse()
        .unwrap_or_else(|_| panic!("expected Age to be delta-seconds, got {value:?}"))
}

/// The value of directive `name` in the reply's `Cache-Control`, if any.
fn directive(reply: &Reply, name: &str) -> Option<String> {
    let cc = reply.header("cache-control")?;
    cc.split(',').map(str::trim).find_map(|d| {
        let (n, v) = d.split_once('=').unwrap_or((d, ""));
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"').to_owned())
    })
}

async fn get_with(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> Reply {
    server.send("GET", path, headers).await
}

#[test]
fn http_date_formats_imf_fixdate() {
    // The example of RFC 9110 §5.6.7.
    let time = UNIX_EPOCH + Duration::from_secs(784_111_777);
    assert_eq!(http_date(time), "Sun, 06 Nov 1994 08:49:37 GMT");
    let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
    assert_eq!(http_date(leap), "Tue, 29 Feb 2000 00:00:00 GMT");
}

// ---------------------------------------------------------------------------------------------
// 1-3: Age, Date, pass-through.
// ---------------------------------------------------------------------------------------------

/// RFC 9111 §4.2.3: a received `Age` counts toward the age; `Age` past `max-age` is stale on arrival.
#[tokio::test]
async fn received_age_beyond_max_age_is_stale_on_arrival() {
    let origin = Origin::always(
        Answer::ok("old news")
            .cache_control("max-age=3600")
            .header("age", "7200"),
    );
    let server = serve(&origin, CacheLayer::proxy()).await;
    let first = server.get("/r").await;
    assert_eq!(first.status, 200, "expected the origin's 200");
    server.get("/r").await;
    assert_eq!(
        origin.runs(),
        2,
        "expected a response received with Age 7200 > max-age 3600 to be stale, so the second \
         request goes to the origin"
    );
}

/// RFC 9111 §4.2.3, §5.1: the `Age` of a hit includes the age the response had when received.
#[tokio::test]
async fn received_age_is_added_to_the_age_of_hits() {
    let origin = Origin::always(
        Answer::ok("aged")
            .cache_control("max-age=100")
            .header("age", "30"),
    );
    let server = serve(&origin, CacheLayer::proxy()).await;
    server.get("/r").await;
    let hit = server.get("/r").await;
    assert_eq!(
        origin.runs(),
        1,
        "expected max-age=100, Age: 30 to be fresh: a hit"
    );
    assert_eq!(hit.body, "aged");
    let age = age(&hit);
    assert!(
        (30..33).contains(&age),
        "expected the hit's Age to be the received 30 s plus its time in the cache, got {age}"
    );
}

/// RFC 9110 §6.6.1, RFC 9111 §4: a hit carries the origin's `Date` (when the response was made).
#[tokio::test]
async fn hit_keeps_the_origin_date() {
    let date = ago(5);
    let origin = Origin::always(
        Answer::ok("dated")
            .cache_control("max-age=60")
            .header("date", date.clone()),
    );
    let server = serve(&origin, CacheLayer::proxy()).await;
    server.get("/d").await;
    let hit = server.get("/d").await;
    assert_eq!(origin.runs(), 1, "expected the second request to be a hit");
    assert_eq!(
        hit.header("date"),
        Some(date.as_str()),
        "expected the hit to carry the origin's Date unchanged"
    );
}

/// RFC 9110 §7.7, RFC 9111 §3: the miss that gets stored reaches the client with its headers as received.
#[tokio::test]
async fn miss_passes_the_origin_headers_through() {
    let date = ago(5);
    let origin = Origin::always(
        Answer::ok("fresh from the origin")
            .cache_control("max-age=60, public")
            .header("date", date.clone())
            .header("x-custom", "from-origin"),
    );
    let server = serve(&origin, CacheLayer::proxy()).await;
    let miss = server.get("/m").await;
    assert_eq!(
        (miss.status, miss.body.as_str()),
        (200, "fresh from the origin")
    );
    assert_eq!(
        miss.header("x-custom"),
        Some("from-origin"),
        "expected the origin's custom header on the miss"
    );
    assert_eq!(
        miss.header("cache-control"),
        Some("max-age=60, public"),
        "expected the origin's Cache-Control unchanged on the miss"
    );
    assert_eq!(
        miss.header("date"),
        Some(date.as_str()),
        "expected the origin's Date unchanged on the miss"
    );
    server.get("/m").await;
    assert_eq!(origin.runs(), 1, "expected the response to be stored");
}

// ---------------------------------------------------------------------------------------------
// 4-7: validation.
// ---------------------------------------------------------------------------------------------

/// An origin with `ETag: "v1"`: 304 to `If-None-Match: "v1"` (with `X-Version: 2`, `max-age=60`),
/// else the full `max-age=1` response (`X-Version: 1`, `X-Kept: original`).
fn etag_origin() -> Origin {
    Origin::new(|seen, run| {
        if seen.header("if-none-match") == Some("\"v1\"") {
            Answer::not_modified()
                .header("etag", "\"v1\"")
                .header("x-version", "2")
                .cache_control("max-age=60")
        } else {
            Answer::ok(format!("body of run {run}"))
                .header("etag", "\"v1\"")
                .header("x-version", "1")
                .header("x-kept", "original")
                .header("content-type", "text/plain")
                .cache_control("max-age=1")
        }
    })
}

async fn assert_etag_revalidation(origin: &Origin, server: &TestServer) {
    let first = server.get("/e").await;
    assert_eq!(first.body, "body of run 1");
    tokio::time::sleep(STALE).await;
    let revalidated = server.get("/e").await;
    assert_eq!(
        origin.runs(),
        2,
        "expected the stale response to be revalidated"
    );
    assert_eq!(
        origin.request(2).header("if-none-match"),
        Some("\"v1\""),
        "expected the revalidation to send If-None-Match with the stored ETag"
    );
    assert_eq!(
        (revalidated.status, revalidated.body.as_str()),
        (200, "body of run 1"),
        "expected the 304 to be answered with the stored body as a 200"
    );
    assert_eq!(
        revalidated.header("x-version"),
        Some("2"),
        "expected the 304's header on the revalidated response"
    );
    let hit = server.get("/e").await;
    assert_eq!(
        origin.runs(),
        2,
        "expected the freshened response (max-age=60 from the 304) to be a hit"
    );
    assert_eq!(hit.body, "body of run 1");
}

/// RFC 9111 §4.3.1, §4.3.3: a stale response with an `ETag` is revalidated with `If-None-Match`.
#[tokio::test]
async fn stale_response_with_etag_is_revalidated_with_if_none_match() {
    let origin = etag_origin();
    let server = serve(&origin, CacheLayer::proxy()).await;
    assert_etag_revalidation(&origin, &server).await;
}

/// Taken by the tests that invalidate process-wide and by the one whose private Redis goes away
/// when it ends: an invalidation that listed that backend just before it was unregistered would
/// otherwise reach a stopped server and fail.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// RFC 9111 §4.3.1, §4.3.4: the same revalidation with entries stored in Redis.
#[tokio::test]
async fn stale_response_with_etag_is_revalidated_on_redis() {
    let _serial = SERIAL.lock().await;
    let _redis = support::RegisteredRedis::start("rfc9111-redis");
    let origin = etag_origin();
    let server = serve(&origin, CacheLayer::proxy().backend("rfc9111-redis")).await;
    assert_etag_revalidation(&origin, &server).await;
}

/// RFC 9111 §4.3.1: a stale response with only `Last-Modified` is revalidated with
/// `If-Modified-Since` (RFC 9110 §13.1.3).
#[tokio::test]
async fn stale_response_with_last_modified_is_revalidated_with_if_modified_since() {
    let modified = ago(3600);
    let lm = modified.clone();
    let origin = Origin::new(move |seen, run| {
        // RFC 9110 §13.2.2: If-None-Match, when present, decides (and this origin has no ETag).
        let unchanged = seen.header("if-none-match").is_none()
            && seen.header("if-modified-since") == Some(lm.as_str());
        if unchanged {
            Answer::not_modified().cache_control("max-age=60")
        } else {
            Answer::ok(format!("body of run {run}"))
                .header("last-modified", lm.clone())
                .cache_control("max-age=1")
        }
    });
    let server = serve(&origin, CacheLayer::proxy()).await;
    server.get("/lm").await;
    tokio::time::sleep(STALE).await;
    let revalidated = server.get("/lm").await;
    assert_eq!(
        origin.runs(),
        2,
        "expected the stale response to be revalidated"
    );
    assert_eq!(
        origin.request(2).header("if-modified-since"),
        Some(modified.as_str()),
        "expected the revalidation to send If-Modified-Since with the stored Last-Modified"
    );
    assert_eq!(
        origin.request(2).header("if-none-match"),
        None,
        "expected no If-None-Match: the origin sent no ETag"
    );
    assert_eq!(
        (revalidated.status, revalidated.body.as_str()),
        (200, "body of run 1"),
        "expected the 304 to be answered with the stored body"
    );
    server.get("/lm").await;
    assert_eq!(origin.runs(), 2, "expected a hit after the freshening 304");
}

/// RFC 9111 §4.3.4: a 304 replaces the stored headers it carries and keeps the others.
#[tokio::test]
async fn not_modified_updates_stored_headers_and_keeps_the_others() {
    let origin = etag_origin();
    let server = serve(&origin, CacheLayer::proxy()).await;
    server.get("/e").await;
    tokio::time::sleep(STALE).await;
    let revalidated = server.get("/e").await;
    assert_eq!(
        (revalidated.status, revalidated.body.as_str()),
        (200, "body of run 1"),
        "expected the stale response to be revalidated (304) and served with the stored body"
    );
    let hit = server.get("/e").await;
    assert_eq!(origin.runs(), 2, "expected a hit after the freshening 304");
    assert_eq!(hit.body, "body of run 1", "expected the stored body");
    assert_eq!(
        hit.header("x-version"),
        Some("2"),
        "expected the 304's X-Version to replace the stored one"
    );
    assert_eq!(
        hit.header("cache-control"),
        Some("max-age=60"),
        "expected the 304's Cache-Control to replace the stored one"
    );
    assert_eq!(
        hit.header("x-kept"),
        Some("original"),
        "expected a header the 304 did not carry to be kept"
    );
    assert_eq!(hit.header("content-type"), Some("text/plain"));
    assert_eq!(hit.header("etag"), Some("\"v1\""));
}

/// RFC 9111 §5.2.2.4: a `no-cache` response is stored but validated before every use.
#[tokio::test]
async fn no_cache_response_is_stored_and_revalidated_on_every_use() {
    let full_bodies = Arc::new(AtomicUsize::new(0));
    let sent = full_bodies.clone();
    let origin = Origin::new(move |seen, _| {
        if seen.header("if-none-match") == Some("\"nc\"") {
            Answer::not_modified()
                .header("etag", "\"nc\"")
                .cache_control("no-cache")
        } else {
            sent.fetch_add(1, Ordering::SeqCst);
            Answer::ok("the body")
                .header("etag", "\"nc\"")
                .cache_control("no-cache")
        }
    });
    let server = serve(&origin, CacheLayer::proxy()).await;
    for round in 1..=3 {
        let reply = server.get("/nc").await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, "the body"),
            "expected request {round} to get the 200 with the body"
        );
        assert_eq!(
            origin.runs(),
            round,
            "expected every use of a no-cache response to reach the origin"
        );
        if round > 1 {
            assert_eq!(
                origin.request(round).header("if-none-match"),
                Some("\"nc\""),
                "expected request {round} to reach the origin conditionally"
            );
        }
    }
    assert_eq!(
        full_bodies.load(Ordering::SeqCst),
        1,
        "expected the origin to send the body once, then only 304s"
    );
}

// ---------------------------------------------------------------------------------------------
// 8-10: freshness.
// ---------------------------------------------------------------------------------------------

/// RFC 9111 §5.3, §4.2.1: `Expires` without `max-age` gives freshness (`Expires - Date`).
#[tokio::test]
async fn expires_without_max_age_gives_freshness() {
    let origin = Origin::new(|_, run| {
        let now = SystemTime::now();
        Answer::ok(format!("run {run}"))
            .header("date", http_date(now))
            .header("expires", http_date(now + Duration::from_secs(60)))
    });
    let server = serve(&origin, CacheLayer::proxy()).await;
    server.get("/x").await;
    let hit = server.get("/x").await;
    assert_eq!(
        origin.runs(),
        1,
        "expected Expires = Date + 60 s to make the response fresh: a hit"
    );
    assert_eq!(hit.body, "run 1");
}

/// RFC 9111 §5.3: an `Expires` in the past, or invalid (`0`), means already expired.
#[tokio::test]
async fn expires_in_the_past_or_invalid_is_not_reused() {
    let origin = Origin::new(|seen, _| {
        let expires = if seen.path == "/past" {
            ago(60)
        } else {
            "0".to_owned()
        };
        Answer::ok("expired")
            .header("date", http_date(SystemTime::now()))
            .header("expires", expires)
    });
    let server = serve(&origin, CacheLayer::proxy()).await;
    for path in ["/past", "/zero"] {
        server.get(path).await;
        server.get(path).await;
        assert_eq!(
            origin.runs_of("GET", path),
            2,
            "expected {path} (expired) not to be reused"
        );
    }
}

/// RFC 9111 §3, RFC 9110 §15.1: a 404 with explicit freshness is stored and reused as a 404.
#[tokio::test]
async fn status_404_with_max_age_is_reused() {
    let origin = Origin::always(Answer::new(404, "no such page").cache_control("max-age=60"));
    let server = serve(&origin, CacheLayer::proxy()).await;
    server.get("/gone").await;
    let hit = server.get("/gone").await;
    assert_eq!(
        origin.runs(),
        1,
        "expected the 404 with max-age=60 to be a hit"
    );
    assert_eq!(
        (hit.status, hit.body.as_str()),
        (404, "no such page"),
        "expected the hit to keep the 404"
    );
}

/// RFC 9111 §3, RFC 9110 §15.4.2: a 301 with explicit freshness is stored with its `Location`.
#[tokio::test]
async fn status_301_with_max_age_is_reused_with_its_location() {
    let origin = Origin::always(
        Answer::new(301, "")
            .header("location", "/new-home")
            .cache_control("max-age=60"),
    );
    let server = serve(&origin, CacheLayer::proxy()).await;
    server.get("/old-home").await;
    let hit = server.get("/old-home").await;
    assert_eq!(
        origin.runs(),
        1,
        "expected the 301 with max-age=60 to be a hit"
    );
    assert_eq!(hit.status, 301, "expected the hit to keep the 301");
    assert_eq!(
        hit.header("location"),
        Some("/new-home"),
        "expected the hit to keep Location"
    );
}

/// RFC 9111 §3, §4.2.2: a 500 without explicit freshness is never reused (not heuristically
/// cacheable, not covered by the app mode's default TTL).
#[tokio::test]
async fn status_500_without_freshness_is_never_stored() {
    let origin = Origin::always(Answer::new(500, "boom").header("last-modified", ago(864_000)));
    let proxy = serve(&origin, CacheLayer::proxy()).await;
    let app_origin = Origin::always(Answer::new(500, "boom"));
    let app = serve(&app_origin, CacheLayer::new()).await;
    for _ in 0..2 {
        assert_eq!(proxy.get("/err").await.status, 500);
        assert_eq!(app.get("/err").await.status, 500);
    }
    assert_eq!(
        origin.runs(),
        2,
        "expected proxy mode never to store the 500"
    );
    assert_eq!(
        app_origin.runs(),
        2,
        "expected app mode never to store the 500"
    );
}

/// RFC 9111 §4.2.2: in proxy mode, `Last-Modified` 10 days ago gives heuristic freshness.
#[tokio::test]
async fn last_modified_gives_heuristic_freshness_in_proxy_mode() {
    let origin = Origin::new(|_, run| {
        Answer::ok(format!("run {run}")).header("last-modified", ago(10 * 86_400))
    });
    let server = serve(&origin, CacheLayer::proxy()).await;
    server.get("/h").await;
    let hit = server.get("/h").await;
    assert_eq!(
        origin.runs(),
        1,
        "expected a heuristically fresh response (Last-Modified 10 days ago) to be a hit"
    );
    assert_eq!(hit.body, "run 1");
}

/// RFC 9111 §4.2.2: in proxy mode, a response with no freshness and no `Last-Modified` is not reused.
#[tokio::test]
async fn no_freshness_information_is_not_reused_in_proxy_mode() {
    let origin = Origin::new(|_, run| Answer::ok(format!("run {run}")));
    let server = serve(&origin, CacheLayer::proxy()).await;
    server.get("/n").await;
    let second = server.get("/n").await;
    assert_eq!(
        origin.runs(),
        2,
        "expected proxy mode not to reuse a response without freshness information"
    );
    assert_eq!(second.body, "run 2");
}

/// RFC 9111 §4.2.2 (the layer's default TTL as the app's own heuristic): in app mode, a 200
/// without freshness is kept for the default TTL.
#[tokio::test]
async fn no_freshness_information_gets_the_default_ttl_in_app_mode() {
    let origin = Origin::new(|_, run| Answer::ok(format!("run {run}")));
    let server = serve(&origin, CacheLayer::new()).await;
    server.get("/n").await;
    let hit = server.get("/n").await;
    assert_eq!(
        origin.runs(),
        1,
        "expected app mode's default TTL to apply: a hit"
    );
    assert_eq!(hit.body, "run 1");
}

/// RFC 9110 §15.1, RFC 9111 §4.2.2: 201 is not heuristically cacheable, so without explicit
/// freshness it is not stored, even in app mode.
#[tokio::test]
async fn status_201_without_freshness_is_not_stored_in_app_mode() {
    let origin = Origin::new(|_, run| Answer::new(201, format!("run {run}")));
    let server = serve(&origin, CacheLayer::new()).await;
    server.get("/c").await;
    let second = server.get("/c").await;
    assert_eq!(
        origin.runs(),
        2,
        "expected a 201 without explicit freshness not to be stored"
    );
    assert_eq!((second.status, second.body.as_str()), (201, "run 2"));
}

// ---------------------------------------------------------------------------------------------
// 11-12: conditional requests answered by the cache.
// ---------------------------------------------------------------------------------------------

/// RFC 9111 §4.3.2, RFC 9110 §13.1.3: `If-Modified-Since` is evaluated against the stored
/// `Last-Modified`.
#[tokio::test]
async fn if_modified_since_is_answered_from_the_cache() {
    let modified = SystemTime::now() - Duration::from_secs(3600);
    let origin = Origin::always(
        Answer::ok("page")
            .header("last-modified", http_date(modified))
            .cache_control("max-age=60"),
    );
    let server = serve(&origin, CacheLayer::proxy()).await;
    server.get("/ims").await;
    let same = http_date(modified);
    let later = http_date(modified + Duration::from_secs(1800));
    let earlier = http_date(modified - Duration::from_secs(3600));
    for since in [&same, &later] {
        let reply = get_with(&server, "/ims", &[("if-modified-since", since)]).await;
        assert_eq!(
            reply.status, 304,
            "expected If-Modified-Since: {since} (not before Last-Modified) to get a 304"
        );
        assert!(reply.body.is_empty(), "expected a 304 without a body");
    }
    let reply = get_with(&server, "/ims", &[("if-modified-since", &earlier)]).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "page"),
        "expected an If-Modified-Since before Last-Modified to get the 200"
    );
    assert_eq!(origin.runs(), 1, "expected the cache to answer all of them");
}

/// RFC 9110 §15.4.5: a 304 carries the `ETag`, `Cache-Control`, `Date`, `Expires` and `Vary` the
/// 200 would have carried, and no body.
#[tokio::test]
async fn not_modified_from_the_cache_carries_the_required_headers() {
    let now = SystemTime::now() - Duration::from_secs(2);
    let (date, expires) = (http_date(now), http_date(now + Duration::from_secs(60)));
    let origin = Origin::always(
        Answer::ok("cached page")
            .header("etag", "\"v1\"")
            .cache_control("max-age=60")
            .header("date", date.clone())
            .header("expires", expires.clone())
            .header("vary", "accept-encoding")
            .header("content-type", "text/plain"),
    );
    let server = serve(&origin, CacheLayer::proxy()).await;
    server.get("/304").await;
    let reply = get_with(&server, "/304", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(
        origin.runs(),
        1,
        "expected the cache to answer the conditional request"
    );
    assert_eq!(
        reply.status, 304,
        "expected a matching If-None-Match to get a 304"
    );
    assert!(reply.body.is_empty(), "expected a 304 without a body");
    assert_eq!(
        reply.header("etag"),
        Some("\"v1\""),
        "expected the ETag on the 304"
    );
    assert_eq!(
        reply.header("cache-control"),
        Some("max-age=60"),
        "expected the Cache-Control on the 304"
    );
    assert_eq!(
        reply.header("date"),
        Some(date.as_str()),
        "expected the stored response's Date on the 304"
    );
    assert_eq!(
        reply.header("expires"),
        Some(expires.as_str()),
        "expected the stored response's Expires on the 304"
    );
    assert_eq!(
        reply.header("vary"),
        Some("accept-encoding"),
        "expected the Vary on the 304"
    );
}

// ---------------------------------------------------------------------------------------------
// 13-14: request directives, must-revalidate.
// ---------------------------------------------------------------------------------------------

/// An origin answering `max-age=60`, counting its runs in the body.
fn fresh_origin() -> Origin {
    Origin::new(|_, run| Answer::ok(format!("run {run}")).cache_control("max-age=60"))
}

/// RFC 9111 §5.2.1.1: a request's `max-age=0` does not accept a stored response of age ≥ 1.
#[tokio::test]
async fn request_max_age_zero_goes_to_the_origin() {
    let origin = fresh_origin();
    let server = serve(&origin, CacheLayer::proxy()).await;
    server.get("/q").await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let reply = get_with(&server, "/q", &[("cache-control", "max-age=0")]).await;
    assert_eq!(
        origin.runs(),
        2,
        "expected a request with max-age=0 not to be served a response aged ≥ 1 s"
    );
    assert_eq!(reply.status, 200);
}

/// RFC 9111 §5.2.1.1: a request's `max-age` larger than the age accepts the stored response.
#[tokio::test]
async fn request_max_age_larger_than_the_age_is_a_hit() {
    let origin = fresh_origin();
    let server = serve(&origin, CacheLayer::proxy()).await;
    server.get("/q").await;
    let reply = get_with(&server, "/q", &[("cache-control", "max-age=30")]).await;
    assert_eq!(
        origin.runs(),
        1,
        "expected max-age=30 to accept a fresh stored response"
    );
    assert_eq!(reply.body, "run 1");
}

/// RFC 9111 §5.2.1.3: `min-fresh` beyond the remaining freshness is not served from the cache.
#[tokio::test]
async fn request_min_fresh_beyond_the_remaining_freshness_goes_to_the_origin() {
    let origin = fresh_origin();
    let server = serve(&origin, CacheLayer::proxy()).await;
    server.get("/q").await;
    let reply = get_with(&server, "/q", &[("cache-control", "min-fresh=120")]).await;
    assert_eq!(
        origin.runs(),
        2,
        "expected min-fresh=120 not to accept a response fresh for at most 60 s more"
    );
    assert_eq!(reply.status, 200);
}

/// RFC 9111 §5.2.1.2, §4.2.4: `max-stale` accepts a stale response without contacting the origin.
#[tokio::test]
async fn request_max_stale_is_served_a_stale_response_without_the_origin() {
    let origin = Origin::new(|_, run| Answer::ok(format!("run {run}")).cache_control("max-age=1"));
    let server = serve(&origin, CacheLayer::proxy()).await;
    server.get("/s").await;
    tokio::time::sleep(STALE).await;
    let reply = get_with(&server, "/s", &[("cache-control", "max-stale=60")]).await;
    assert_eq!(
        origin.runs(),
        1,
        "expected max-stale=60 to be served the stale response without the origin"
    );
    assert_eq!((reply.status, reply.body.as_str()), (200, "run 1"));
}

/// RFC 9111 §5.2.1.7, RFC 9110 §15.6.5: `only-if-cached` with nothing stored gets a 504.
#[tokio::test]
async fn only_if_cached_with_nothing_stored_is_504() {
    let origin = fresh_origin();
    let server = serve(&origin, CacheLayer::proxy()).await;
    let reply = get_with(&server, "/o", &[("cache-control", "only-if-cached")]).await;
    assert_eq!(
        reply.status, 504,
        "expected only-if-cached with nothing stored to get 504 Gateway Timeout"
    );
    assert_eq!(
        origin.runs(),
        0,
        "expected only-if-cached never to reach the origin"
    );
}

/// RFC 9111 §5.2.1.7: `only-if-cached` with a fresh stored response is served it.
#[tokio::test]
async fn only_if_cached_with_a_fresh_response_is_served() {
    let origin = fresh_origin();
    let server = serve(&origin, CacheLayer::proxy()).await;
    server.get("/o").await;
    let reply = get_with(&server, "/o", &[("cache-control", "only-if-cached")]).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "run 1"),
        "expected only-if-cached to be served the stored response"
    );
    assert_eq!(origin.runs(), 1);
}

/// RFC 9111 §5.2.2.2: a stale `must-revalidate` response is never served stale, even to `max-stale`.
#[tokio::test]
async fn must_revalidate_is_not_served_stale_even_with_max_stale() {
    let origin = Origin::new(|_, run| {
        Answer::ok(format!("run {run}")).cache_control("max-age=1, must-revalidate")
    });
    let server = serve(&origin, CacheLayer::proxy()).await;
    server.get("/mr").await;
    tokio::time::sleep(STALE).await;
    let reply = get_with(&server, "/mr", &[("cache-control", "max-stale=60")]).await;
    assert_eq!(
        origin.runs(),
        2,
        "expected a stale must-revalidate response to go to the origin despite max-stale"
    );
    assert_eq!(reply.body, "run 2");
}

// ---------------------------------------------------------------------------------------------
// 15-16: RFC 5861.
// ---------------------------------------------------------------------------------------------

/// How long the origin takes to revalidate, in the stale-while-revalidate tests.
const SLOW_ORIGIN: Duration = Duration::from_millis(800);

/// First `old body` with `first_cc`, then, slowly, `new body` fresh for 60 s.
fn swr_origin(first_cc: &'static str) -> Origin {
    Origin::new(move |_, run| {
        if run == 1 {
            Answer::ok("old body").cache_control(first_cc)
        } else {
            Answer::ok("new body")
                .cache_control("max-age=60")
                .delay(SLOW_ORIGIN)
        }
    })
}

async fn assert_stale_while_revalidate(origin: &Origin, server: &TestServer) {
    server.get("/swr").await;
    tokio::time::sleep(STALE).await;
    let started = Instant::now();
    let stale = server.get("/swr").await;
    let took = started.elapsed();
    assert_eq!(
        (stale.status, stale.body.as_str()),
        (200, "old body"),
        "expected the stale response to be served while it is revalidated"
    );
    assert!(
        took < SLOW_ORIGIN / 2,
        "expected the stale answer not to wait for the origin ({SLOW_ORIGIN:?}), it took {took:?}"
    );
    assert!(
        age(&stale) >= 1,
        "expected the stale answer's Age to be ≥ 1"
    );
    tokio::time::sleep(SLOW_ORIGIN + Duration::from_millis(500)).await;
    assert_eq!(
        origin.runs(),
        2,
        "expected one background revalidation at the origin"
    );
    let next = server.get("/swr").await;
    assert_eq!(
        next.body, "new body",
        "expected the request after the background revalidation to get the new body"
    );
    assert_eq!(
        origin.runs(),
        2,
        "expected the revalidated response to be a hit"
    );
}

/// RFC 5861 §3: `stale-while-revalidate` serves the stale response at once and revalidates it
/// in the background.
#[tokio::test]
async fn stale_while_revalidate_directive_serves_stale_and_revalidates_in_the_background() {
    let origin = swr_origin("max-age=1, stale-while-revalidate=30");
    let server = serve(&origin, CacheLayer::proxy()).await;
    assert_stale_while_revalidate(&origin, &server).await;
}

/// RFC 5861 §3: the same window from the layer's `stale_while_revalidate` option.
#[tokio::test]
async fn stale_while_revalidate_option_serves_stale_and_revalidates_in_the_background() {
    let origin = swr_origin("max-age=1");
    let layer = CacheLayer::proxy().stale(Duration::from_secs(30));
    let server = serve(&origin, layer).await;
    assert_stale_while_revalidate(&origin, &server).await;
}

/// First `good body` with `first_cc`, then 500s.
fn failing_origin(first_cc: &'static str) -> Origin {
    Origin::new(move |_, run| {
        if run == 1 {
            Answer::ok("good body").cache_control(first_cc)
        } else {
            Answer::new(500, "origin failed")
        }
    })
}

async fn assert_stale_if_error(origin: &Origin, server: &TestServer) {
    server.get("/sie").await;
    tokio::time::sleep(STALE).await;
    let reply = server.get("/sie").await;
    assert_eq!(
        origin.runs(),
        2,
        "expected the stale response to be revalidated"
    );
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "good body"),
        "expected the stale 200 instead of the origin's 500"
    );
}

/// RFC 5861 §4: `stale-if-error` serves the stale response when the origin answers 500.
#[tokio::test]
async fn stale_if_error_directive_serves_stale_on_an_origin_500() {
    let origin = failing_origin("max-age=1, stale-if-error=60");
    let server = serve(&origin, CacheLayer::proxy()).await;
    assert_stale_if_error(&origin, &server).await;
}

/// RFC 9111 §4.2.4: `proxy()` serves a stale response when the origin cannot be reached (`502`
/// from the proxy's forwarder), by default; not when the origin answers for itself (`503`), nor a
/// response that was never fresh, nor against the request's `no-cache`.
#[tokio::test]
async fn proxy_serves_stale_when_the_origin_is_unreachable() {
    let unreachable = |status: u16, first_cc: &'static str| {
        Origin::new(move |_, run| {
            if run == 1 {
                Answer::ok("good body").cache_control(first_cc)
            } else {
                Answer::new(status, "origin failed")
            }
        })
    };
    let origin = unreachable(502, "max-age=1");
    let server = serve(&origin, CacheLayer::proxy()).await;
    assert_stale_if_error(&origin, &server).await;

    let origin = unreachable(502, "max-age=1");
    let server = serve(&origin, CacheLayer::proxy()).await;
    server.get("/sie").await;
    tokio::time::sleep(STALE).await;
    let reply = get_with(&server, "/sie", &[("cache-control", "no-cache")]).await;
    assert_eq!(
        reply.status, 502,
        "the request's no-cache forbids the stale response"
    );

    let origin = unreachable(503, "max-age=1");
    let server = serve(&origin, CacheLayer::proxy()).await;
    server.get("/sie").await;
    tokio::time::sleep(STALE).await;
    assert_eq!(
        server.get("/sie").await.status,
        503,
        "the origin answered for itself"
    );

    let origin = Origin::new(|_, run| {
        if run == 1 {
            Answer::ok("good body")
                .cache_control("max-age=0")
                .header("etag", "\"never-fresh\"")
        } else {
            Answer::new(502, "origin failed")
        }
    });
    let server = serve(&origin, CacheLayer::proxy()).await;
    server.get("/sie").await;
    assert_eq!(
        server.get("/sie").await.status,
        502,
        "never fresh, never stale"
    );
}

/// RFC 9111 §4.3.3: a revalidation answered with a response that may not be stored removes the
/// stored one: it is not served stale afterwards.
#[tokio::test]
async fn a_revalidation_that_forbids_storing_removes_the_stored_response() {
    let origin = Origin::new(|seen, run| {
        if seen.header("if-none-match").is_some() {
            return Answer::not_modified().cache_control("no-store");
        }
        Answer::ok(format!("run {run}"))
            .cache_control("max-age=1")
            .header("etag", "\"x\"")
    });
    let server = serve(&origin, CacheLayer::proxy()).await;
    server.get("/n").await;
    tokio::time::sleep(STALE).await;
    server.get("/n").await; // revalidated: 304 no-store
    let runs = origin.runs();
    let stale_ok = get_with(&server, "/n", &[("cache-control", "max-stale=3600")]).await;
    assert_eq!(
        origin.runs(),
        runs + 1,
        "the removed response was served stale ({:?})",
        stale_ok.header("x-cache")
    );
}

/// RFC 9111 §4.3.4: a `304` whose validator (weak or strong) differs from the stored one updates
/// nothing.
#[tokio::test]
async fn a_304_with_another_weak_etag_updates_nothing() {
    let origin = Origin::new(|seen, run| {
        if seen.header("if-none-match").is_some() {
            return Answer::not_modified()
                .header("etag", "W/\"2\"")
                .cache_control("max-age=60");
        }
        Answer::ok(format!("run {run}"))
            .cache_control("max-age=1")
            .header("etag", "W/\"1\"")
    });
    let server = serve(&origin, CacheLayer::proxy()).await;
    server.get("/w").await;
    tokio::time::sleep(STALE).await;
    let reply = server.get("/w").await;
    assert_eq!(
        reply.header("etag"),
        Some("W/\"1\""),
        "the stored body keeps its own tag"
    );
    server.get("/w").await;
    assert_eq!(
        origin.runs(),
        3,
        "not refreshed by the other representation's 304"
    );
}

/// RFC 9110 §14.2: several `Range` lines are one multi-range request, passed through; a range with
/// `only-if-cached` and nothing stored is `504`.
#[tokio::test]
async fn multi_range_requests_pass_through_and_only_if_cached_holds() {
    let origin =
        Origin::new(|_, run| Answer::ok(format!("body {run}")).cache_control("max-age=60"));
    let server = serve(&origin, CacheLayer::proxy()).await;
    let reply = get_with(
        &server,
        "/m",
        &[("range", "bytes=0-1"), ("cache-control", "only-if-cached")],
    )
    .await;
    assert_eq!(reply.status, 504);
    assert_eq!(origin.runs(), 0);
    server.get("/m").await;
    let multi = get_with(
        &server,
        "/m",
        &[("range", "bytes=0-1"), ("range", "bytes=3-4")],
    )
    .await;
    assert_eq!(origin.runs(), 2, "a multi-range request goes to the origin");
    assert_eq!(multi.status, 200);
}

/// RFC 5861 §4: the same window from the layer's `stale_if_error` option.
#[tokio::test]
async fn stale_if_error_option_serves_stale_on_an_origin_500() {
    let origin = failing_origin("max-age=1");
    let layer = CacheLayer::proxy().stale_if_error(Duration::from_secs(60));
    let server = serve(&origin, layer).await;
    assert_stale_if_error(&origin, &server).await;
}

/// RFC 9111 §4.2.4: without a stale-if-error window, the origin's 500 reaches the client (`proxy()`
/// has a default window: turned off here; `new()` has none).
#[tokio::test]
async fn without_stale_if_error_an_origin_500_reaches_the_client() {
    let origin = failing_origin("max-age=1");
    let layer = CacheLayer::proxy().stale_if_error(Duration::ZERO);
    let server = serve(&origin, layer).await;
    server.get("/sie").await;
    tokio::time::sleep(STALE).await;
    let reply = server.get("/sie").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (500, "origin failed"),
        "expected the origin's 500 when no stale-if-error applies"
    );
}

// ---------------------------------------------------------------------------------------------
// 17: cookies.
// ---------------------------------------------------------------------------------------------

/// The `lang` cookie of a request.
fn lang(seen: &Seen) -> String {
    seen.header("cookie")
        .unwrap_or("")
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == "lang")
        .map_or("none".to_owned(), |(_, value)| value.to_owned())
}

/// An origin whose page depends on the `lang` cookie.
fn cookie_origin() -> Origin {
    Origin::new(|seen, run| {
        Answer::ok(format!("lang={} run {run}", lang(seen))).cache_control("max-age=60")
    })
}

/// RFC 9111 §7.3 (layer policy): a request with `Cookie` bypasses the cache by default.
#[tokio::test]
async fn requests_with_cookies_bypass_the_cache_by_default() {
    let origin = cookie_origin();
    let server = serve(&origin, CacheLayer::proxy()).await;
    server.get("/page").await; // stored for cookie-less requests
    for round in 1..=2 {
        let reply = get_with(&server, "/page", &[("cookie", "session=1")]).await;
        assert_eq!(
            reply.header("x-cache"),
            Some("BYPASS"),
            "expected a request with a Cookie to bypass the cache"
        );
        assert_eq!(
            origin.runs(),
            1 + round,
            "expected every request with a Cookie to reach the origin"
        );
    }
}

/// RFC 9111 §4.1 (a secondary key, as `Vary`): `vary_on_cookies` keys on the named cookies only.
#[tokio::test]
async fn vary_on_cookies_keys_on_the_named_cookies_only() {
    let origin = cookie_origin();
    let server = serve(&origin, CacheLayer::proxy().vary_on_cookies(["lang"])).await;
    let fr = get_with(&server, "/page", &[("cookie", "lang=fr; session=1")]).await;
    let fr_again = get_with(&server, "/page", &[("cookie", "session=2; lang=fr")]).await;
    assert_eq!(fr.body, "lang=fr run 1");
    assert_eq!(
        fr_again.body, "lang=fr run 1",
        "expected the same lang cookie, in another order with other cookies, to share the entry"
    );
    assert_eq!(origin.runs(), 1);
    let de = get_with(&server, "/page", &[("cookie", "lang=de")]).await;
    assert_eq!(
        de.body, "lang=de run 2",
        "expected another lang cookie to get its own entry"
    );
    let de_again = get_with(&server, "/page", &[("cookie", "session=3; lang=de")]).await;
    assert_eq!(de_again.body, "lang=de run 2");
    assert_eq!(origin.runs(), 2, "expected one origin run per lang value");
}

/// RFC 9111 §4.1 (layer policy): with `ignore_cookies`, cookies do not change the key.
#[tokio::test]
async fn ignore_cookies_shares_one_entry() {
    let origin = cookie_origin();
    let server = serve(&origin, CacheLayer::proxy().ignore_cookies()).await;
    for cookie in ["lang=fr", "lang=de; session=1", "session=2"] {
        let reply = get_with(&server, "/page", &[("cookie", cookie)]).await;
        assert_eq!(reply.body, "lang=fr run 1", "expected one shared entry");
    }
    assert_eq!(origin.runs(), 1, "expected cookies to be ignored");
}

/// RFC 9111 §7.3 (layer policy): a response with `Set-Cookie` is never stored, even by a layer
/// that ignores request cookies.
#[tokio::test]
async fn set_cookie_responses_are_never_stored() {
    let origin = Origin::always(
        Answer::ok("welcome")
            .cache_control("max-age=60")
            .header("set-cookie", "session=abc"),
    );
    let server = serve(&origin, CacheLayer::proxy().ignore_cookies()).await;
    for _ in 0..2 {
        let reply = server.get("/welcome").await;
        assert_eq!(reply.header("set-cookie"), Some("session=abc"));
    }
    assert_eq!(
        origin.runs(),
        2,
        "expected a Set-Cookie response never to be stored"
    );
}

// ---------------------------------------------------------------------------------------------
// 18: separate layers.
// ---------------------------------------------------------------------------------------------

/// RFC 9111 §2 (one cache per layer): two layers on separate servers keep their own entries.
#[tokio::test]
async fn separate_layers_on_separate_servers_never_share_entries() {
    let a = Origin::always(Answer::ok("from A").cache_control("max-age=60"));
    let b = Origin::always(Answer::ok("from B").cache_control("max-age=60"));
    let server_a = serve(&a, CacheLayer::proxy()).await;
    let server_b = serve(&b, CacheLayer::proxy()).await;
    for round in 1..=2 {
        assert_eq!(server_a.get("/same").await.body, "from A", "round {round}");
        assert_eq!(server_b.get("/same").await.body, "from B", "round {round}");
    }
    assert_eq!(
        (a.runs(), b.runs()),
        (1, 1),
        "expected each layer to cache its own"
    );
}

/// RFC 9111 §2 (one cache per layer): two services behind one public host name (same `Host`),
/// each with its own layer on the same memory backend, keep their own entries.
#[tokio::test]
async fn separate_layers_behind_the_same_host_never_share_entries() {
    let a = Origin::always(Answer::ok("from A").cache_control("max-age=60"));
    let b = Origin::always(Answer::ok("from B").cache_control("max-age=60"));
    let server_a = serve(&a, CacheLayer::new()).await;
    let server_b = serve(&b, CacheLayer::new()).await;
    let host = [("host", "shop.example")];
    for round in 1..=2 {
        let from_a = get_with(&server_a, "/same", &host).await;
        let from_b = get_with(&server_b, "/same", &host).await;
        assert_eq!(
            from_a.body, "from A",
            "expected server A's own body (round {round})"
        );
        assert_eq!(
            from_b.body, "from B",
            "expected server B's own body, not A's entry (round {round})"
        );
    }
}

/// RFC 9111 §2 (one cache per layer): routers nested under different prefixes, each with its own
/// layer and the same inner path, keep their own entries.
#[tokio::test]
async fn nested_routers_with_their_own_layers_never_share_entries() {
    let one = Origin::always(Answer::ok("version one").cache_control("max-age=60"));
    let two = Origin::always(Answer::ok("version two").cache_control("max-age=60"));
    let v1 = Router::new()
        .route("/x", one.handler())
        .layer(CacheLayer::proxy());
    let v2 = Router::new()
        .route("/x", two.handler())
        .layer(CacheLayer::new());
    let server = TestServer::start(Router::new().nest("/v1", v1).nest("/v2", v2)).await;
    for round in 1..=2 {
        assert_eq!(
            server.get("/v1/x").await.body,
            "version one",
            "expected /v1/x's own body (round {round})"
        );
        assert_eq!(
            server.get("/v2/x").await.body,
            "version two",
            "expected /v2/x's own body, not /v1/x's entry (round {round})"
        );
    }
    assert_eq!(
        (one.runs(), two.runs()),
        (1, 1),
        "expected each layer to cache its own"
    );
}

// ---------------------------------------------------------------------------------------------
// 19: invalidation by unsafe methods.
// ---------------------------------------------------------------------------------------------

/// GETs: `max-age=60`, counting runs per path; `POST /doc-fail`: 500; other POSTs: 201 with
/// `Location: /doc-a` and `Content-Location: http://<host>/doc-b`.
fn document_origin() -> Origin {
    Origin::new(|seen, run| {
        if seen.is_get() {
            return Answer::ok(format!("{} run {run}", seen.path)).cache_control("max-age=60");
        }
        if seen.path == "/doc-fail" {
            return Answer::new(500, "failed");
        }
        let host = seen.header("host").unwrap_or("localhost").to_owned();
        Answer::new(201, "created")
            .header("location", "/doc-a")
            .header("content-location", format!("http://{host}/doc-b"))
    })
}

/// RFC 9111 §4.4: a successful `POST` invalidates the stored responses of its target URI.
#[tokio::test]
async fn successful_post_invalidates_the_target_uri() {
    let origin = document_origin();
    let server = serve(&origin, CacheLayer::proxy()).await;
    server.get("/doc").await;
    server.get("/doc").await;
    assert_eq!(
        origin.runs_of("GET", "/doc"),
        1,
        "expected a hit before the POST"
    );
    assert_eq!(server.send("POST", "/doc", &[]).await.status, 201);
    server.get("/doc").await;
    assert_eq!(
        origin.runs_of("GET", "/doc"),
        2,
        "expected the successful POST to invalidate GET /doc"
    );
}

/// RFC 9111 §4.4: a successful `POST` also invalidates the same-host URIs of `Location` and
/// `Content-Location`.
#[tokio::test]
async fn successful_post_invalidates_location_and_content_location() {
    let origin = document_origin();
    let server = serve(&origin, CacheLayer::proxy()).await;
    for path in ["/doc-a", "/doc-b", "/doc-a", "/doc-b"] {
        server.get(path).await;
    }
    assert_eq!(
        (
            origin.runs_of("GET", "/doc-a"),
            origin.runs_of("GET", "/doc-b")
        ),
        (1, 1),
        "expected hits before the POST"
    );
    assert_eq!(server.send("POST", "/new", &[]).await.status, 201);
    server.get("/doc-a").await;
    server.get("/doc-b").await;
    assert_eq!(
        origin.runs_of("GET", "/doc-a"),
        2,
        "expected the POST's Location (/doc-a) to be invalidated"
    );
    assert_eq!(
        origin.runs_of("GET", "/doc-b"),
        2,
        "expected the POST's Content-Location (http://<same host>/doc-b) to be invalidated"
    );
}

/// RFC 9111 §4.4: a failing `POST` (500) invalidates nothing.
#[tokio::test]
async fn failing_post_invalidates_nothing() {
    let origin = document_origin();
    let server = serve(&origin, CacheLayer::proxy()).await;
    server.get("/doc-fail").await;
    assert_eq!(server.send("POST", "/doc-fail", &[]).await.status, 500);
    let reply = server.get("/doc-fail").await;
    assert_eq!(
        origin.runs_of("GET", "/doc-fail"),
        1,
        "expected a failed POST not to invalidate GET /doc-fail"
    );
    assert_eq!(reply.body, "/doc-fail run 1");
}

// ---------------------------------------------------------------------------------------------
// 20-22: layer options.
// ---------------------------------------------------------------------------------------------

/// The path and query of a request without its `utm_*` parameters.
fn without_utm(parts: &Parts) -> String {
    let query: Vec<&str> = parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("utm_"))
        .collect();
    format!("{}?{}", parts.uri.path(), query.join("&"))
}

/// RFC 9111 §2 (the primary cache key, customised): a key dropping `utm_*` parameters shares
/// one entry among them.
#[tokio::test]
async fn custom_cache_key_drops_utm_parameters() {
    let origin = fresh_origin();
    let server = serve(&origin, CacheLayer::proxy().cache_key(without_utm)).await;
    let a = server.get("/p?utm_source=a").await;
    let b = server.get("/p?utm_source=b").await;
    assert_eq!(
        b.body, a.body,
        "expected /p?utm_source=a and /p?utm_source=b to share one entry"
    );
    assert_eq!(
        origin.runs(),
        1,
        "expected one origin run for both utm variants"
    );
    let other = server.get("/p?id=2&utm_source=a").await;
    assert_eq!(
        other.body, "run 2",
        "expected another real parameter to be another entry"
    );
}

/// RFC 9111 §3 (layer policy): requests the `bypass` predicate selects are never stored.
#[tokio::test]
async fn bypass_predicate_is_never_stored() {
    let origin = fresh_origin();
    let layer = CacheLayer::proxy().bypass(|parts| parts.uri.path().starts_with("/admin"));
    let server = serve(&origin, layer).await;
    for _ in 0..2 {
        let reply = server.get("/admin/users").await;
        assert_eq!(
            reply.header("x-cache"),
            Some("BYPASS"),
            "expected /admin requests to be marked X-Cache: BYPASS"
        );
    }
    assert_eq!(
        origin.runs_of("GET", "/admin/users"),
        2,
        "expected /admin never to be stored"
    );
    server.get("/public").await;
    server.get("/public").await;
    assert_eq!(
        origin.runs_of("GET", "/public"),
        1,
        "expected other paths to be cached"
    );
}

/// RFC 9111 §5.2.1.4 (overridden by the operator): with `ignore_client_no_cache`, a request's
/// `no-cache` is served from the cache.
#[tokio::test]
async fn ignore_client_no_cache_serves_from_the_cache() {
    let origin = fresh_origin();
    let server = serve(&origin, CacheLayer::proxy().ignore_client_no_cache()).await;
    server.get("/icn").await;
    let reply = get_with(&server, "/icn", &[("cache-control", "no-cache")]).await;
    assert_eq!(
        origin.runs(),
        1,
        "expected the client's no-cache to be ignored: answered from the cache"
    );
    assert_eq!(reply.body, "run 1");
}

/// RFC 9111 §5.2.1.4: a request's `no-cache` goes to the origin by default.
#[tokio::test]
async fn client_no_cache_goes_to_the_origin_by_default() {
    let origin = fresh_origin();
    let server = serve(&origin, CacheLayer::proxy()).await;
    server.get("/cn").await;
    get_with(&server, "/cn", &[("cache-control", "no-cache")]).await;
    assert_eq!(
        origin.runs(),
        2,
        "expected a request's no-cache to reach the origin"
    );
}

/// RFC 9213 §2.2, §3: a targeted `CDN-Cache-Control: max-age=60` wins over `Cache-Control:
/// no-store`, which is passed on unchanged.
#[tokio::test]
async fn targeted_field_max_age_overrides_cache_control_no_store() {
    let origin = Origin::new(|_, run| {
        Answer::ok(format!("run {run}"))
            .cache_control("no-store")
            .header("cdn-cache-control", "max-age=60")
    });
    let layer = CacheLayer::proxy().targeted(HeaderName::from_static("cdn-cache-control"));
    let server = serve(&origin, layer).await;
    server.get("/t").await;
    let hit = server.get("/t").await;
    assert_eq!(
        origin.runs(),
        1,
        "expected CDN-Cache-Control: max-age=60 to make the response stored: a hit"
    );
    assert_eq!(hit.body, "run 1");
    assert_eq!(
        hit.header("cache-control"),
        Some("no-store"),
        "expected the client to receive Cache-Control: no-store unchanged"
    );
}

/// RFC 9213 §2.2, §3: a targeted `CDN-Cache-Control: no-store` wins over `Cache-Control: max-age`.
#[tokio::test]
async fn targeted_field_no_store_overrides_cache_control_max_age() {
    let origin = Origin::new(|_, run| {
        Answer::ok(format!("run {run}"))
            .cache_control("max-age=60")
            .header("cdn-cache-control", "no-store")
    });
    let layer = CacheLayer::proxy().targeted(HeaderName::from_static("cdn-cache-control"));
    let server = serve(&origin, layer).await;
    server.get("/t").await;
    server.get("/t").await;
    assert_eq!(
        origin.runs(),
        2,
        "expected CDN-Cache-Control: no-store to keep the response from being stored"
    );
}

// ---------------------------------------------------------------------------------------------
// 23: `#[cached(http)]` handlers.
// ---------------------------------------------------------------------------------------------

/// A handler's run count and the date it sends.
#[derive(Clone)]
struct HandlerState {
    runs: Arc<AtomicUsize>,
    date: String,
}

impl HandlerState {
    fn new(date: String) -> Self {
        Self {
            runs: Arc::default(),
            date,
        }
    }

    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
}

#[cached(http, ttl = 60)]
async fn full_lifetime(State(state): State<HandlerState>) -> &'static str {
    state.runs.fetch_add(1, Ordering::SeqCst);
    "full lifetime"
}

#[cached(http, ttl = 60)]
async fn own_date(State(state): State<HandlerState>) -> impl IntoResponse {
    state.runs.fetch_add(1, Ordering::SeqCst);
    ([(header::DATE, state.date.clone())], "dated")
}

#[cached(http, ttl = 60)]
async fn own_s_maxage(State(state): State<HandlerState>) -> impl IntoResponse {
    state.runs.fetch_add(1, Ordering::SeqCst);
    ([(header::CACHE_CONTROL, "s-maxage=30")], "shared")
}

#[cached(http, ttl = 60)]
async fn own_expires(State(state): State<HandlerState>) -> impl IntoResponse {
    state.runs.fetch_add(1, Ordering::SeqCst);
    ([(header::EXPIRES, state.date.clone())], "expiring")
}

/// `GET /h` served by `handler` with `state`, on a real port.
async fn serve_handler<H, T>(handler: H, state: HandlerState) -> TestServer
where
    H: axum::handler::Handler<T, HandlerState>,
    T: 'static,
{
    TestServer::start(Router::new().route("/h", get(handler)).with_state(state)).await
}

/// RFC 9111 §4.2.3, §5.1: a handler hit sends `max-age` = the full lifetime with an `Age`
/// (downstream computes remaining = max-age − Age; `max-age=<remaining>` with `Age` would count
/// the age twice).
#[tokio::test]
async fn cached_handler_hit_sends_the_full_max_age_with_age() {
    let state = HandlerState::new(String::new());
    let server = serve_handler(full_lifetime, state.clone()).await;
    server.get("/h").await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let hit = server.get("/h").await;
    assert_eq!(state.runs(), 1, "expected a hit");
    assert!(
        age(&hit) >= 1,
        "expected the hit's Age to be ≥ 1 after 1.2 s"
    );
    assert_eq!(
        directive(&hit, "max-age").as_deref(),
        Some("60"),
        "expected max-age=60 (the full lifetime) with Age {}, got Cache-Control {:?}",
        age(&hit),
        hit.header("cache-control")
    );
}

/// RFC 9110 §6.6.1: a handler hit keeps the `Date` the handler sent.
#[tokio::test]
async fn cached_handler_hit_keeps_the_handler_date() {
    let state = HandlerState::new(ago(5));
    let server = serve_handler(own_date, state.clone()).await;
    server.get("/h").await;
    let hit = server.get("/h").await;
    assert_eq!(state.runs(), 1, "expected a hit");
    assert_eq!(
        hit.header("date"),
        Some(state.date.as_str()),
        "expected the hit to carry the handler's own Date"
    );
}

/// RFC 9111 §5.2.2.10: the handler's own `s-maxage` is kept in the reply's `Cache-Control`.
#[tokio::test]
async fn cached_handler_keeps_its_own_s_maxage() {
    let state = HandlerState::new(String::new());
    let server = serve_handler(own_s_maxage, state.clone()).await;
    let miss = server.get("/h").await;
    let hit = server.get("/h").await;
    assert_eq!(state.runs(), 1, "expected a hit");
    for (which, reply) in [("miss", &miss), ("hit", &hit)] {
        assert_eq!(
            directive(reply, "s-maxage").as_deref(),
            Some("30"),
            "expected the handler's s-maxage=30 in the {which}'s Cache-Control, got {:?}",
            reply.header("cache-control")
        );
    }
}

/// RFC 9110 §15.4.5: a handler's 304 carries the `Expires` its 200 carries.
#[tokio::test]
async fn cached_handler_not_modified_carries_expires() {
    let state = HandlerState::new(from_now(3600));
    let server = serve_handler(own_expires, state.clone()).await;
    let first = server.get("/h").await;
    assert_eq!(first.header("expires"), Some(state.date.as_str()));
    let etag = first.header("etag").expect("an ETag on the 200").to_owned();
    let reply = get_with(&server, "/h", &[("if-none-match", &etag)]).await;
    assert_eq!(
        reply.status, 304,
        "expected a matching If-None-Match to get a 304"
    );
    assert_eq!(
        reply.header("expires"),
        Some(state.date.as_str()),
        "expected the 304 to carry the Expires of the 200"
    );
}

// ---------------------------------------------------------------------------------------------
// Regressions: each of these failed against the first version of the rewrite (found in review).
// ---------------------------------------------------------------------------------------------

/// T1: a 412 caused by the client's If-Match is stored and served to plain GETs.
#[tokio::test]
async fn a_412_answering_if_match_is_not_stored_for_the_uri() {
    let origin = Origin::new(|seen, _| {
        if seen.header("if-match").is_some() {
            Answer::new(412, "precondition failed").cache_control("public, max-age=60")
        } else {
            Answer::ok("the page").cache_control("public, max-age=60")
        }
    });
    let server = serve(&origin, CacheLayer::proxy()).await;
    let first = get_with(&server, "/doc", &[("if-match", "\"nope\"")]).await;
    assert_eq!(first.status, 412);
    let plain = server.get("/doc").await;
    assert_eq!(
        plain.status, 200,
        "a plain GET got the 412 stored for an If-Match request"
    );
}

/// T1b: a 416 to a Range request is stored and served to plain GETs.
#[tokio::test]
async fn a_416_answering_a_range_is_not_stored_for_the_uri() {
    let origin = Origin::new(|seen, _| {
        if seen.header("range").is_some() {
            Answer::new(416, "").cache_control("max-age=60")
        } else {
            Answer::ok("the page").cache_control("max-age=60")
        }
    });
    let server = serve(&origin, CacheLayer::new()).await;
    let first = get_with(&server, "/doc", &[("range", "bytes=999999-")]).await;
    assert_eq!(first.status, 416);
    let plain = server.get("/doc").await;
    assert_eq!(
        plain.status, 200,
        "a plain GET got the 416 stored for a Range request"
    );
}

static VERSION: AtomicUsize = AtomicUsize::new(1);

/// T2: the groups a response header names are not covered by the epoch check: an
/// invalidate_group that runs while the origin computes the response is lost.
#[tokio::test]
async fn a_header_group_invalidated_during_the_fetch_is_not_lost() {
    let _serial = SERIAL.lock().await;
    let origin = Origin::new(|_, _| {
        let v = VERSION.load(Ordering::SeqCst);
        Answer::ok(format!("v{v}"))
            .cache_control("max-age=60")
            .header("x-groups", "probe-t2")
            .delay(Duration::from_millis(400))
    });
    let server = serve(
        &origin,
        CacheLayer::new().groups_from_header(HeaderName::from_static("x-groups")),
    )
    .await;
    let server = Arc::new(server);
    let s = Arc::clone(&server);
    let first = tokio::spawn(async move { s.get("/t2").await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    VERSION.store(2, Ordering::SeqCst);
    cache_runtime::invalidate_group("probe-t2").await.unwrap();
    let first = first.await.unwrap();
    assert_eq!(first.body, "v1");
    let after = server.get("/t2").await;
    assert_eq!(
        after.body, "v2",
        "served a response computed before invalidate_group"
    );
}

/// T3: header groups are kept per URI, not per Vary variant; a 304 refiles a variant under the
/// groups of another variant, so an invalidation of its own group misses it.
#[tokio::test]
async fn a_304_keeps_a_variant_under_its_own_groups() {
    let _serial = SERIAL.lock().await;
    let origin = Origin::new(|seen, _| {
        let accept = seen.header("accept").unwrap_or("").to_owned();
        let tag = format!("\"{accept}\"");
        if seen.header("if-none-match") == Some(tag.as_str()) {
            return Answer::not_modified()
                .header("etag", tag)
                .cache_control("max-age=1");
        }
        Answer::ok(format!("body-{accept}"))
            .cache_control("max-age=1")
            .header("vary", "accept")
            .header("etag", tag)
            .header("x-groups", format!("probe-t3-{accept}"))
    });
    let server = serve(
        &origin,
        CacheLayer::proxy().groups_from_header(HeaderName::from_static("x-groups")),
    )
    .await;
    // Each variant's first answer only records the groups it names; the second is stored.
    for accept in ["a", "a", "b", "b"] {
        let reply = get_with(&server, "/t3", &[("accept", accept)]).await;
        assert_eq!(reply.body, format!("body-{accept}"));
    }
    tokio::time::sleep(STALE).await;
    // Revalidated (or refetched), whichever the groups now recorded for the URI allow.
    get_with(&server, "/t3", &[("accept", "a")]).await;
    cache_runtime::invalidate_group("probe-t3-a").await.unwrap();
    let before = origin.runs();
    let a3 = get_with(&server, "/t3", &[("accept", "a")]).await;
    assert_eq!(
        origin.runs(),
        before + 1,
        "invalidate_group(probe-t3-a) missed variant a ({:?})",
        a3.header("x-cache")
    );
}

/// T4: a 304 naming groups in the groups header: the header reaches the client and is stored.
#[tokio::test]
async fn the_groups_header_of_a_304_stays_internal() {
    let origin = Origin::new(|seen, _| {
        if seen.header("if-none-match") == Some("\"x\"") {
            return Answer::not_modified()
                .header("etag", "\"x\"")
                .header("x-groups", "probe-t4")
                .cache_control("max-age=60");
        }
        Answer::ok("x")
            .cache_control("max-age=1")
            .header("etag", "\"x\"")
            .header("x-groups", "probe-t4")
    });
    let server = serve(
        &origin,
        CacheLayer::proxy().groups_from_header(HeaderName::from_static("x-groups")),
    )
    .await;
    let first = server.get("/t4").await;
    assert!(first.header("x-groups").is_none());
    tokio::time::sleep(STALE).await;
    let second = server.get("/t4").await;
    let third = server.get("/t4").await;
    assert!(
        second.header("x-groups").is_none() && third.header("x-groups").is_none(),
        "groups header leaked"
    );
}

/// T5: after a 304 without Date (as an axum handler's), the stored Date is never updated:
/// hits carry the capture-time Date with a small Age.
#[tokio::test]
async fn a_304_without_date_refreshes_the_date() {
    let origin = Origin::new(|seen, _| {
        if seen.header("if-none-match") == Some("\"x\"") {
            return Answer::not_modified()
                .header("etag", "\"x\"")
                .cache_control("max-age=2");
        }
        Answer::ok("x")
            .cache_control("max-age=2")
            .header("etag", "\"x\"")
    });
    let server = serve(&origin, CacheLayer::new()).await;
    let first = server.get("/t5").await;
    let d1 = first.header("date").unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    server.get("/t5").await;
    let third = server.get("/t5").await;
    assert_ne!(
        third.header("date"),
        Some(d1.as_str()),
        "Date not updated by the revalidation"
    );
}

/// T6: responses stored with no freshness (max-age=0 + ETag): concurrent requests coalesce, then
/// every follower goes to the origin anyway, after waiting for the leader.
#[tokio::test]
async fn never_fresh_entries_are_not_coalesced() {
    let origin = Origin::new(|_, _| {
        Answer::ok("x")
            .cache_control("max-age=0")
            .header("etag", "\"x\"")
            .delay(Duration::from_millis(500))
    });
    let server = Arc::new(serve(&origin, CacheLayer::new()).await);
    server.get("/t6").await; // stored, stale at once
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let s = Arc::clone(&server);
        tasks.push(tokio::spawn(async move { s.get("/t6").await }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(900),
        "requests were serialized: {took:?}"
    );
}

/// T7: a 304 answering an authorized revalidation refreshes the shared entry with its headers.
#[tokio::test]
async fn an_authorized_304_does_not_update_the_shared_entry() {
    let origin = Origin::new(|seen, _| {
        if seen.header("if-none-match") == Some("\"x\"") {
            let who = seen.header("authorization").unwrap_or("anon").to_owned();
            return Answer::not_modified()
                .header("etag", "\"x\"")
                .header("x-user", who)
                .cache_control("max-age=60");
        }
        Answer::ok("x")
            .cache_control("max-age=1")
            .header("etag", "\"x\"")
    });
    let server = serve(&origin, CacheLayer::proxy()).await;
    server.get("/t7").await;
    tokio::time::sleep(STALE).await;
    get_with(&server, "/t7", &[("authorization", "Bearer alice")]).await;
    let anon = server.get("/t7").await;
    assert_ne!(
        anon.header("x-user"),
        Some("Bearer alice"),
        "alice's 304 headers stored in the shared entry"
    );
}

/// T8: a 304 with a different strong ETag than the stored one is merged anyway.
#[tokio::test]
async fn a_304_with_another_strong_etag_updates_nothing() {
    let origin = Origin::new(|seen, run| {
        if run > 1 && seen.header("if-modified-since").is_some() {
            return Answer::not_modified()
                .header("etag", "\"other\"")
                .cache_control("max-age=60");
        }
        Answer::ok("old body")
            .cache_control("max-age=1")
            .header("etag", "\"old\"")
            .header("last-modified", ago(100))
    });
    let server = serve(&origin, CacheLayer::proxy()).await;
    server.get("/t8").await;
    tokio::time::sleep(STALE).await;
    let r = server.get("/t8").await;
    get_with(&server, "/t8", &[("if-none-match", "\"other\"")]).await;
    assert_ne!(
        r.header("etag"),
        Some("\"other\""),
        "old body served with the 304's different strong ETag"
    );
}

/// T9: huge coalesce_wait panics on every request.
#[tokio::test]
async fn an_endless_coalesce_wait_does_not_panic() {
    let origin = Origin::always(
        Answer::ok("x")
            .cache_control("max-age=60")
            .delay(Duration::from_millis(50)),
    );
    let server = Arc::new(serve(&origin, CacheLayer::new().coalesce_wait(Duration::MAX)).await);
    let s = Arc::clone(&server);
    let r = tokio::spawn(async move { s.get("/t9").await }).await;
    assert!(r.is_ok());
}

/// T10: weird dates in Date / Expires / Last-Modified / If-Modified-Since never panic.
#[tokio::test]
async fn odd_dates_do_not_panic() {
    let dates = [
        "Thu, 31 Feb 9999 23:59:60 GMT",
        "Sun, 00 Nov 0000 08:49:37 GMT",
        "Mon, 31 Dec 9999 23:59:59 GMT",
        "Wed, 31 Dec 1969 23:59:59 GMT",
        "Sun, 06 Nov 1994 24:61:61 GMT",
        "Sunday, 06-Nov-69 08:49:37 GMT",
        "Sun Nov 31 08:49:37 9999",
        "Sat, 29 Feb 2025 00:00:00 GMT",
        "Fri, 31 Dec 9999 23:59:59 GMT",
        "Thu, 01 Jan 1970 00:00:00 GMT",
    ];
    for (i, d) in dates.iter().enumerate() {
        let d = d.to_string();
        let origin = Origin::always(
            Answer::ok("x")
                .header("date", d.clone())
                .header("expires", d.clone())
                .header("last-modified", d.clone()),
        );
        let server = serve(&origin, CacheLayer::proxy().name(format!("dates{i}"))).await;
        server.get("/d").await;
        get_with(&server, "/d", &[("if-modified-since", &d)]).await;
    }
}

/// T11: a client's Range + If-Range is revalidated with If-Range stripped: the client gets a 206 of
/// a changed representation it asked not to get.
#[tokio::test]
async fn if_range_requests_pass_through_on_revalidation() {
    let origin = Origin::new(|seen, run| {
        let (tag, body) = if run == 1 {
            ("\"v1\"", "0123456789")
        } else {
            ("\"v2\"", "ABCDEFGHIJ")
        };
        if seen.header("if-none-match") == Some(tag) {
            return Answer::not_modified().header("etag", tag);
        }
        let range_applies =
            seen.header("range").is_some() && seen.header("if-range").is_none_or(|t| t == tag);
        if range_applies {
            return Answer::new(206, &body[5..])
                .header("etag", tag)
                .header("content-range", "bytes 5-9/10")
                .cache_control("max-age=1");
        }
        Answer::ok(body)
            .header("etag", tag)
            .cache_control("max-age=1")
    });
    let server = serve(&origin, CacheLayer::proxy()).await;
    let first = server.get("/f").await;
    assert_eq!(first.body, "0123456789");
    tokio::time::sleep(STALE).await;
    let resume = get_with(
        &server,
        "/f",
        &[("range", "bytes=5-"), ("if-range", "\"v1\"")],
    )
    .await;
    assert!(
        !(resume.status == 206 && resume.body == "FGHIJ"),
        "206 of v2 spliced onto a v1 download"
    );
}

/// T12: a 304 that adds `Vary: *` is merged and stored, and then served to every request.
#[tokio::test]
async fn a_304_adding_vary_star_is_not_stored() {
    let origin = Origin::new(|seen, run| {
        if run > 1 && seen.header("if-none-match") == Some("\"x\"") {
            return Answer::not_modified()
                .header("etag", "\"x\"")
                .header("vary", "*")
                .cache_control("max-age=60");
        }
        Answer::ok("x")
            .cache_control("max-age=1")
            .header("etag", "\"x\"")
    });
    let server = serve(&origin, CacheLayer::proxy()).await;
    server.get("/v").await;
    tokio::time::sleep(STALE).await;
    server.get("/v").await;
    let h = server.get("/v").await;
    assert_ne!(
        h.header("x-cache"),
        Some("HIT"),
        "a Vary: * response was served from the cache"
    );
}

/// T13: App mode keeps a `public` 500 for the default TTL.
#[tokio::test]
async fn app_mode_does_not_keep_a_public_500_on_the_default_ttl() {
    let origin = Origin::always(Answer::new(500, "boom").cache_control("public"));
    let server = serve(&origin, CacheLayer::new()).await;
    server.get("/e").await;
    let h = server.get("/e").await;
    assert_ne!(
        h.header("x-cache"),
        Some("HIT"),
        "a 500 was stored on a guess"
    );
}

/// T14: App mode: after a 304 the entry loses its validator-based retention (ETag is not in the
/// stored headers), so the next stale use is a full fetch instead of a revalidation.
#[tokio::test]
async fn app_mode_keeps_revalidating_after_a_304() {
    let origin = Origin::new(|seen, _| {
        if seen.header("if-none-match") == Some("\"x\"") {
            return Answer::not_modified()
                .header("etag", "\"x\"")
                .cache_control("max-age=1");
        }
        Answer::ok("x")
            .cache_control("max-age=1")
            .header("etag", "\"x\"")
    });
    let server = serve(&origin, CacheLayer::new()).await;
    server.get("/r").await;
    tokio::time::sleep(STALE).await;
    let r = server.get("/r").await;
    assert_eq!(r.header("x-cache"), Some("REVALIDATED"));
    tokio::time::sleep(STALE).await;
    server.get("/r").await;
    assert_eq!(
        origin.request(3).header("if-none-match"),
        Some("\"x\""),
        "no revalidation after the first 304"
    );
}

/// T15: an unsafe request the bypass predicate matches invalidates nothing.
#[tokio::test]
async fn a_bypassed_post_still_invalidates() {
    let origin = Origin::new(|seen, run| {
        if seen.is_get() {
            Answer::ok(format!("get{run}")).cache_control("max-age=60")
        } else {
            Answer::ok("posted")
        }
    });
    let server = serve(
        &origin,
        CacheLayer::new().bypass(|p| p.headers.contains_key("authorization")),
    )
    .await;
    server.get("/doc").await;
    server
        .send("POST", "/doc", &[("authorization", "Bearer x")])
        .await;
    let b = server.get("/doc").await;
    assert_ne!(
        b.header("x-cache"),
        Some("HIT"),
        "stale after an authorized POST"
    );
}

// ---------------------------------------------------------------------------------------------
// Found with the cache-tests suite (scripts/cache-tests.sh); each failed before its fix.
// ---------------------------------------------------------------------------------------------

/// RFC 9110 §14.2: a single byte range is answered from a stored complete `200` (`206` with
/// `Content-Range`), without the origin; a range of a stale or absent response goes to the origin
/// and its `206` is not stored.
#[tokio::test]
async fn ranges_are_served_from_a_stored_complete_response() {
    let origin = Origin::new(|seen, _| {
        if seen.header("range").is_some() {
            return Answer::new(206, "FGHIJ")
                .header("content-range", "bytes 5-9/10")
                .cache_control("max-age=60");
        }
        Answer::ok("ABCDEFGHIJ")
            .cache_control("max-age=60")
            .header("etag", "\"r1\"")
    });
    let server = serve(&origin, CacheLayer::proxy()).await;
    let miss = get_with(&server, "/r", &[("range", "bytes=5-")]).await;
    assert_eq!((miss.status, miss.body.as_str()), (206, "FGHIJ"));
    server.get("/r").await;
    assert_eq!(origin.runs(), 2, "the 206 was not stored");
    for (range, body, content_range) in [
        ("bytes=0-3", "ABCD", "bytes 0-3/10"),
        ("bytes=7-", "HIJ", "bytes 7-9/10"),
        ("bytes=-2", "IJ", "bytes 8-9/10"),
    ] {
        let reply = get_with(&server, "/r", &[("range", range)]).await;
        assert_eq!((reply.status, reply.body.as_str()), (206, body), "{range}");
        assert_eq!(reply.header("content-range"), Some(content_range));
        let length = body.len().to_string();
        assert_eq!(
            reply.header("content-length"),
            Some(length.as_str()),
            "{range}"
        );
    }
    let whole = server.get("/r").await;
    assert_eq!(whole.header("x-cache"), Some("HIT"));
    assert_eq!(whole.header("content-length"), Some("10"));
    let matching = get_with(
        &server,
        "/r",
        &[("range", "bytes=0-0"), ("if-range", "\"r1\"")],
    )
    .await;
    assert_eq!((matching.status, matching.body.as_str()), (206, "A"));
    assert_eq!(
        origin.runs(),
        2,
        "ranges of the stored response need no origin"
    );
    let other = get_with(
        &server,
        "/r",
        &[("range", "bytes=5-"), ("if-range", "\"old\"")],
    )
    .await;
    assert_eq!(other.status, 206);
    assert_eq!(
        origin.runs(),
        3,
        "an If-Range for another version goes to the origin"
    );
}

/// RFC 9213 §2.1: a targeted field that is not a valid Structured Fields Dictionary, or gives a
/// directive the wrong type, is ignored (`Cache-Control` applies).
#[tokio::test]
async fn an_invalid_targeted_field_is_ignored() {
    for cdn in ["max-age=10000, &&&&&", "max-age=\"10000\""] {
        let origin = Origin::new(move |_, run| {
            Answer::ok(format!("run {run}"))
                .header("cdn-cache-control", cdn)
                .cache_control("no-store")
        });
        let layer = CacheLayer::proxy().targeted(HeaderName::from_static("cdn-cache-control"));
        let server = serve(&origin, layer).await;
        server.get("/t").await;
        server.get("/t").await;
        assert_eq!(origin.runs(), 2, "CDN-Cache-Control: {cdn} must be ignored");
    }
}

/// RFC 9111 §5.1: of an `Age` list (`7200, 0`), the first value counts: stale on arrival.
#[tokio::test]
async fn the_first_value_of_an_age_list_counts() {
    let origin = Origin::new(|_, run| {
        Answer::ok(format!("run {run}"))
            .cache_control("max-age=3600")
            .header("age", "7200, 0")
    });
    let server = serve(&origin, CacheLayer::proxy()).await;
    server.get("/a").await;
    server.get("/a").await;
    assert_eq!(
        origin.runs(),
        2,
        "a response 7200 s old is stale for max-age=3600"
    );
}

/// RFC 9111 §5.2.2.3: `must-understand` lets a cache that understands the status ignore
/// `no-store`.
#[tokio::test]
async fn must_understand_lifts_no_store_for_a_known_status() {
    let origin = Origin::new(|_, run| {
        Answer::ok(format!("run {run}")).cache_control("max-age=60, no-store, must-understand")
    });
    let server = serve(&origin, CacheLayer::proxy()).await;
    server.get("/m").await;
    assert_eq!(server.get("/m").await.body, "run 1");
    assert_eq!(origin.runs(), 1);
}

/// RFC 9110 §5.6.7: an `Expires` with names in the wrong case is still a date.
#[tokio::test]
async fn expires_in_the_wrong_case_is_read() {
    let origin = Origin::new(|_, run| {
        Answer::ok(format!("run {run}")).header("expires", "THU, 18 AUG 2050 02:01:18 gmt")
    });
    let server = serve(&origin, CacheLayer::proxy()).await;
    server.get("/e").await;
    server.get("/e").await;
    assert_eq!(
        origin.runs(),
        1,
        "a far-future Expires makes the response fresh"
    );
}

/// RFC 9110 §12.5.4: `Accept-Language` values that differ only in case select the same stored
/// variant; order is kept (a server may break ties between equal weights by it).
#[tokio::test]
async fn accept_language_is_compared_without_case() {
    let origin = Origin::new(|_, run| {
        Answer::ok(format!("run {run}"))
            .cache_control("max-age=60")
            .header("vary", "accept-language")
    });
    let server = serve(&origin, CacheLayer::proxy()).await;
    get_with(&server, "/l", &[("accept-language", "en, de")]).await;
    get_with(&server, "/l", &[("accept-language", "eN, De")]).await;
    assert_eq!(origin.runs(), 1);
    get_with(&server, "/l", &[("accept-language", "de, en")]).await;
    assert_eq!(origin.runs(), 2, "another order may be another page");
    get_with(&server, "/l", &[("accept-language", "fr")]).await;
    assert_eq!(origin.runs(), 3, "another language is another variant");
}

/// RFC 9111 §5.2.2.3: with `must-understand`, a status the cache does not know is not stored.
#[tokio::test]
async fn must_understand_keeps_an_unknown_status_unstored() {
    let origin = Origin::new(|_, run| {
        Answer::new(599, format!("run {run}"))
            .cache_control("max-age=60, no-store, must-understand")
    });
    let server = serve(&origin, CacheLayer::proxy()).await;
    server.get("/m").await;
    server.get("/m").await;
    assert_eq!(origin.runs(), 2);
}
