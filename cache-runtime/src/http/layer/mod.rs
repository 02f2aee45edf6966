//! [`CacheLayer`]: a tower layer that caches whole `GET` responses of a router or route.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, OnceLock},
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::Body,
    http::{request::Parts, HeaderName, Request, Response},
};

use super::DEFAULT_MAX_BODY;
use crate::{
    backend::clamp_ttl_ms,
    codec::Codec,
    stats::{Policy, Site},
};

mod flow;
mod future;
mod keys;

pub use future::ResponseFuture;

/// Caches whole responses of the routes it wraps, as an RFC 9111 shared cache, on any backend.
///
/// - Entries are keyed by the layer's [`name`](Self::name), host, original URI (before
///   `Router::nest` stripped a prefix) and the request headers the response names in `Vary`;
///   [`cache_key`](Self::cache_key) replaces host and URI.
/// - Stored: final responses to `GET` (not `206`, not `304`) with explicit freshness
///   (`s-maxage`, `max-age`, `Expires`), or of a heuristically cacheable status (RFC 9110 §15.1)
///   with a heuristic lifetime: the layer's TTL for [`new`](Self::new), 10 % of the time since
///   `Last-Modified` for [`proxy`](Self::proxy). Never stored: `no-store`, `private`,
///   `Set-Cookie`, `Vary: *`, and answers to `Authorization` unless the response says `public`,
///   `s-maxage` or `must-revalidate`. Headers are stored as received, with a `Date` added when
///   there is none. `HEAD` is answered from the stored `GET`.
/// - Age counts the received `Age` and `Date` (RFC 9111 §4.2.3); hits carry the stored headers,
///   `Age` and `X-Cache: HIT`. Stale responses with a validator are revalidated with
///   `If-None-Match` / `If-Modified-Since`; a `304` updates the stored headers. `no-cache`
///   responses are revalidated on every use; `must-revalidate` ones are never served stale.
/// - Request directives `max-age`, `min-fresh`, `max-stale`, `no-cache`, `only-if-cached` (504
///   when nothing stored fits) and `no-store` are honoured (see
///   [`ignore_client_no_cache`](Self::ignore_client_no_cache)); conditional requests
///   (`If-None-Match`, `If-Modified-Since`) are answered from the cache with `304`.
/// - `stale-while-revalidate` answers at once from the stale response while one request
///   revalidates in the background (`X-Cache: STALE`); `stale-if-error` answers from it when the
///   origin fails (RFC 5861); the layer can add both windows itself.
/// - A successful `POST`/`PUT`/`PATCH`/`DELETE` removes the stored responses of its URI and of the
///   same-host URIs in its `Location` and `Content-Location` (RFC 9111 §4.4).
/// - Requests with a `Cookie` bypass the cache unless [`vary_on_cookies`](Self::vary_on_cookies)
///   or [`ignore_cookies`](Self::ignore_cookies) says otherwise; [`bypass`](Self::bypass) names
///   more (`X-Cache: BYPASS`).
/// - Bodies over the size limit stream through uncached.
/// - Concurrent misses on one URI are coalesced: one request goes to the origin, the others wait
///   for it (at most [`coalesce_wait`](Self::coalesce_wait)) and are answered from what it stored.
///   A URI whose response turns out not to be storable is remembered for a while
///   (30 s) so that its requests stop waiting for one another.
///
/// ```
/// use std::time::Duration;
/// use axum::{routing::get, Router};
/// use cache_runtime::http::CacheLayer;
///
/// let app: Router = Router::new()
///     .route("/products", get(|| async { "[...]" }))
///     .layer(CacheLayer::new().backend("redis").ttl(Duration::from_secs(30)).group("products"));
/// ```
#[derive(Clone)]
pub struct CacheLayer {
    backend: String,
    /// The namespace of this layer's entries: `.name(..)`, else derived from where it was made.
    name: String,
    ttl: Duration,
    /// Whether `ttl` applies to responses without explicit freshness (`new`), or only the RFC's
    /// heuristic does (`proxy`).
    mode: Mode,
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
    stale_if_unreachable: Duration,
    targeted: Option<HeaderName>,
    cookies: Cookies,
    cache_key: Option<KeyFn>,
    bypass: Option<BypassFn>,
    ignore_client_no_cache: bool,
    groups: Vec<String>,
    groups_header: Option<HeaderName>,
    max_body: usize,
    coalesce_wait: Duration,
    /// One stats site per configured layer, however many routes it is applied to.
    site: Arc<OnceLock<&'static Site>>,
    /// URIs whose last response could not be stored: their misses are not coalesced for a while.
    uncacheable: Arc<UncacheableUris>,
}

/// A custom key for a request: the part after the layer's namespace and method.
type KeyFn = Arc<dyn Fn(&Parts) -> String + Send + Sync>;
/// Requests for which the layer steps aside.
type BypassFn = Arc<dyn Fn(&Parts) -> bool + Send + Sync>;

/// What the default TTL applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The app's own routes: responses without explicit freshness get the layer's TTL.
    App,
    /// In front of another origin: only explicit freshness, or the RFC 9111 heuristic.
    Proxy,
}

/// How requests carrying `Cookie` are treated.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cookies {
    /// They bypass the cache (the default: a cookie may change the page).
    Bypass,
    /// The page varies on these cookies (their values are part of the key); others are ignored.
    VaryOn(Vec<String>),
    /// Cookies never change the page.
    Ignore,
}

impl std::fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheLayer")
            .field("backend", &self.backend)
            .field("name", &self.name)
            .field("ttl", &self.ttl)
            .field("mode", &self.mode)
            .field("groups", &self.groups)
            .field("stale_while_revalidate", &self.stale_while_revalidate)
            .field("stale_if_error", &self.stale_if_error)
            .field("stale_if_unreachable", &self.stale_if_unreachable)
            .field("targeted", &self.targeted)
            .field("cookies", &self.cookies)
            .field("cache_key", &self.cache_key.is_some())
            .field("bypass", &self.bypass.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for CacheLayer {
    #[track_caller]
    fn default() -> Self {
        Self::new()
    }
}

impl CacheLayer {
    /// A layer for the app's own routes, on the `"memory"` backend: responses that state no
    /// freshness are kept for the default TTL of 60 s ([`ttl`](Self::ttl)).
    ///
    /// Its entries are its own: the namespace is the name of the executable and the place in the
    /// source where `new` was called (see [`name`](Self::name)).
    #[track_caller]
    pub fn new() -> Self {
        Self::at(std::panic::Location::caller(), Mode::App)
    }

    /// A layer in front of another origin (a caching reverse proxy), as an RFC 9111 shared cache:
    /// only responses with explicit freshness (`s-maxage`, `max-age`, `Expires`) or a
    /// `Last-Modified` to compute heuristic freshness from (RFC 9111 §4.2.2) are reused, the
    /// rest are revalidated or passed through. [`ttl`](Self::ttl) caps the heuristic. When the
    /// origin cannot be reached (an error of the inner service, a `502` or `504`), a response that
    /// was fresh once is served stale for up to [`DEFAULT_PROXY_STALE_IF_UNREACHABLE`] past its
    /// freshness, unless it or the request forbids it; see
    /// [`stale_if_unreachable`](Self::stale_if_unreachable).
    ///
    /// ```
    /// use std::time::Duration;
    /// use axum::{http::HeaderName, routing::get, Router};
    /// use cache_runtime::http::CacheLayer;
    ///
    /// // In front of an origin (here a stand-in route): honour CDN-Cache-Control, cap heuristic
    /// // freshness at an hour, and share entries between the proxy's instances on Redis.
    /// let proxy: Router = Router::new()
    ///     .fallback(get(|| async { "from the origin" }))
    ///     .layer(
    ///         CacheLayer::proxy()
    ///             .name("edge")
    ///             .backend("redis")
    ///             .targeted(HeaderName::from_static("cdn-cache-control"))
    ///             .ttl(Duration::from_secs(3600)),
    ///     );
    /// ```
    #[track_caller]
    pub fn proxy() -> Self {
        Self::at(std::panic::Location::caller(), Mode::Proxy)
    }

    fn at(location: &std::panic::Location<'_>, mode: Mode) -> Self {
        let program = std::env::current_exe()
            .ok()
            .and_then(|path| Some(path.file_stem()?.to_string_lossy().into_owned()))
            .unwrap_or_default();
        Self {
            backend: "memory".to_owned(),
            name: format!(
                "{program}@{}:{}:{}",
                location.file(),
                location.line(),
                location.column()
            ),
            ttl: Duration::from_secs(match mode {
                Mode::App => 60,
                Mode::Proxy => 24 * 3600,
            }),
            mode,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            stale_if_unreachable: match mode {
                Mode::App => Duration::ZERO,
                Mode::Proxy => DEFAULT_PROXY_STALE_IF_UNREACHABLE,
            },
            targeted: None,
            cookies: match mode {
                Mode::App => Cookies::Bypass,
                Mode::Proxy => Cookies::Bypass,
            },
            cache_key: None,
            bypass: None,
            ignore_client_no_cache: false,
            groups: Vec::new(),
            groups_header: None,
            max_body: DEFAULT_MAX_BODY,
            coalesce_wait: DEFAULT_COALESCE_WAIT,
            site: Arc::default(),
            uncacheable: Arc::default(),
        }
    }

    fn reconfigured(mut self) -> Self {
        self.site = Arc::default();
        self.uncacheable = Arc::default();
        self
    }

    /// Stores in the backend registered under `name`.
    pub fn backend(mut self, name: impl Into<String>) -> Self {
        self.backend = name.into();
        self.reconfigured()
    }

    /// The namespace of this layer's entries. Two layers with the same name on one backend share
    /// entries (instances of one service on one Redis); layers with different names never do.
    /// Without it, a layer's name is the executable's name and the source location of the
    /// [`new`](Self::new) / [`proxy`](Self::proxy) call: unique per layer in a program, the same in
    /// every process of one build, but it changes when that line moves.
    ///
    /// ```
    /// use cache_runtime::http::CacheLayer;
    /// // The same entries for every binary and build that names its layer "catalog".
    /// let layer = CacheLayer::new().name("catalog").backend("redis");
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self.reconfigured()
    }

    /// For [`new`](Self::new): how long responses that state no freshness are fresh (explicit
    /// `s-maxage`, `max-age` or `Expires` always win). For [`proxy`](Self::proxy): the cap on
    /// heuristic freshness. Zero: only explicit freshness is used.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self.reconfigured()
    }

    /// Serves a stale response for up to this long past its freshness while one request
    /// revalidates it in the background (as the `stale-while-revalidate` response directive,
    /// RFC 5861, which wins when larger); `#[cached(stale = ..)]` on handlers is the same idea.
    /// Never for `must-revalidate` or `no-cache` responses.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_runtime::http::CacheLayer;
    /// // Fresh for 30 s, then answered at once for 5 more minutes while one request refreshes it,
    /// // and for an hour when the origin fails.
    /// let layer = CacheLayer::new()
    ///     .ttl(Duration::from_secs(30))
    ///     .stale(Duration::from_secs(300))
    ///     .stale_if_error(Duration::from_secs(3600));
    /// ```
    pub fn stale(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = window;
        self.reconfigured()
    }

    /// Serves a stale response for up to this long past its freshness when the origin fails
    /// (a 5xx or an error of the inner service; as the `stale-if-error` directive, RFC 5861).
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = window;
        self.reconfigured()
    }

    /// Serves a stale response that was fresh once for up to this long past its freshness when the
    /// origin cannot be reached: the inner service fails, or answers `502` / `504` (a proxy's
    /// way of saying so). Never for `must-revalidate` or `no-cache` responses, nor against a
    /// request's `no-cache`, `min-fresh` or `max-age`. Default: zero for [`new`](Self::new),
    /// [`DEFAULT_PROXY_STALE_IF_UNREACHABLE`] for [`proxy`](Self::proxy).
    pub fn stale_if_unreachable(mut self, window: Duration) -> Self {
        self.stale_if_unreachable = window;
        self.reconfigured()
    }

    /// Takes this cache's directives from a targeted field (RFC 9213), such as
    /// `CDN-Cache-Control`, when the response carries it; `Cache-Control` is then ignored for
    /// storing and freshness, and passed on unchanged.
    pub fn targeted(mut self, field: HeaderName) -> Self {
        self.targeted = Some(field);
        self.reconfigured()
    }

    /// Requests with a `Cookie` are cached, keyed on the values of these cookies only (by
    /// default such requests bypass the cache: a cookie may change the page).
    ///
    /// ```
    /// use cache_runtime::http::CacheLayer;
    /// // Pages depend on the `lang` and `theme` cookies only; a session cookie does not split
    /// // entries.
    /// let layer = CacheLayer::new().vary_on_cookies(["lang", "theme"]);
    /// ```
    pub fn vary_on_cookies<I, N>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = N>,
        N: Into<String>,
    {
        let mut names: Vec<String> = names.into_iter().map(Into::into).collect();
        names.sort();
        names.dedup();
        self.cookies = Cookies::VaryOn(names);
        self.reconfigured()
    }

    /// Requests with a `Cookie` are cached as if they had none.
    pub fn ignore_cookies(mut self) -> Self {
        self.cookies = Cookies::Ignore;
        self.reconfigured()
    }

    /// Keys requests with `key` instead of their host, path and query (for example to drop
    /// `utm_*` parameters). Requests with the same key share entries (the method, the layer's
    /// name and `Vary` are added).
    ///
    /// ```
    /// use cache_runtime::http::CacheLayer;
    /// // Drop tracking parameters, so `/news?utm_source=x` and `/news` share one entry.
    /// let layer = CacheLayer::new().cache_key(|parts| {
    ///     let query: Vec<&str> = parts
    ///         .uri
    ///         .query()
    ///         .unwrap_or("")
    ///         .split('&')
    ///         .filter(|pair| !pair.is_empty() && !pair.starts_with("utm_"))
    ///         .collect();
    ///     format!("{}?{}", parts.uri.path(), query.join("&"))
    /// });
    /// ```
    pub fn cache_key(mut self, key: impl Fn(&Parts) -> String + Send + Sync + 'static) -> Self {
        self.cache_key = Some(Arc::new(key));
        self.reconfigured()
    }

    /// Requests for which `bypass` returns `true` go to the inner service untouched
    /// (`X-Cache: BYPASS`).
    ///
    /// ```
    /// use cache_runtime::http::CacheLayer;
    /// // Never cache the admin pages, nor requests that ask for a preview.
    /// let layer = CacheLayer::new().bypass(|parts| {
    ///     parts.uri.path().starts_with("/admin/") || parts.headers.contains_key("x-preview")
    /// });
    /// ```
    pub fn bypass(mut self, bypass: impl Fn(&Parts) -> bool + Send + Sync + 'static) -> Self {
        self.bypass = Some(Arc::new(bypass));
        self.reconfigured()
    }

    /// A client's `Cache-Control: no-cache` or `max-age=0` does not make the layer go to the
    /// origin: stored fresh responses are served anyway (so clients cannot force origin load).
    pub fn ignore_client_no_cache(mut self) -> Self {
        self.ignore_client_no_cache = true;
        self.reconfigured()
    }

    /// Puts every entry of this layer in `group` (repeatable), for
    /// [`invalidate_group`](crate::invalidate_group).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.groups.push(group.into());
        self.reconfigured()
    }

    /// Also takes groups from this response header (comma-separated), which is removed from the
    /// response. Costs one more backend read per lookup.
    ///
    /// ```
    /// use axum::{http::HeaderName, routing::get, Router};
    /// use cache_runtime::http::CacheLayer;
    ///
    /// // The handler tags its response; `invalidate_group("product:7")` then drops it.
    /// let app: Router = Router::new()
    ///     .route("/products/7", get(|| async { ([("x-cache-groups", "products, product:7")], "...") }))
    ///     .layer(CacheLayer::new().groups_from_header(HeaderName::from_static("x-cache-groups")));
    /// ```
    pub fn groups_from_header(mut self, name: HeaderName) -> Self {
        self.groups_header = Some(name);
        self.reconfigured()
    }

    /// Bodies larger than this many bytes are not cached (default [`DEFAULT_MAX_BODY`]).
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self.reconfigured()
    }

    /// How long a request waits for a concurrent request of the same URI that went to the origin,
    /// before it goes there itself (default 10 s; zero turns coalescing off).
    pub fn coalesce_wait(mut self, wait: Duration) -> Self {
        self.coalesce_wait = wait;
        self.reconfigured()
    }
}

/// How long past its freshness [`CacheLayer::proxy`] serves a stale response when the origin cannot
/// be reached (RFC 9111 §4.2.4 allows a disconnected cache to).
pub const DEFAULT_PROXY_STALE_IF_UNREACHABLE: Duration = Duration::from_secs(60);

/// Default of [`CacheLayer::coalesce_wait`].
pub const DEFAULT_COALESCE_WAIT: Duration = Duration::from_secs(10);

/// How long a URI whose response could not be stored is exempt from coalescing.
pub const UNCACHEABLE_MEMORY: Duration = Duration::from_secs(30);

/// URIs recently answered with a response that could not be stored (bounded; the oldest go).
#[derive(Debug)]
struct UncacheableUris(quick_cache::sync::Cache<String, std::time::Instant>);

impl Default for UncacheableUris {
    fn default() -> Self {
        Self(quick_cache::sync::Cache::new(10_000))
    }
}

impl UncacheableUris {
    fn remember(&self, base: &str) {
        self.0.insert(
            base.to_owned(),
            std::time::Instant::now() + UNCACHEABLE_MEMORY,
        );
    }

    fn forget(&self, base: &str) {
        self.0.remove(base);
    }

    fn contains(&self, base: &str) -> bool {
        self.0
            .get(base)
            .is_some_and(|until| std::time::Instant::now() < until)
    }
}

impl<S> tower_layer::Layer<S> for CacheLayer {
    type Service = CacheService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let site = *self.site.get_or_init(|| {
            let backend: &'static str = Box::leak(self.backend.clone().into_boxed_str());
            let ttl_ms = clamp_ttl_ms(self.ttl);
            let site: &'static Site = Box::leak(Box::new(Site::new(
                "cache_runtime::http",
                "CacheLayer",
                backend,
                // Responses are stored in a binary codec unless the backend or CACHE_CODEC
                // names one: bodies as raw bytes.
                Policy {
                    default_codec: Codec::MessagePack,
                    ..Policy::ttl(ttl_ms)
                },
            )));
            site.register();
            site
        });
        CacheService {
            inner,
            shared: Arc::new(Shared {
                key_head: keys::head(self),
                config: self.clone(),
                site,
                revalidating: Mutex::default(),
            }),
        }
    }
}

/// What every clone of one layer's service shares.
#[derive(Debug)]
struct Shared {
    config: CacheLayer,
    /// The start of the layer's base keys (see [`keys::head`]).
    key_head: String,
    site: &'static Site,
    /// Keys being revalidated in the background (one revalidation per key at a time).
    revalidating: Mutex<HashSet<String>>,
}

/// The service [`CacheLayer`] wraps around a route or router.
#[derive(Debug, Clone)]
pub struct CacheService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, ReqBody> tower_service::Service<Request<ReqBody>> for CacheService<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The clone that was polled ready serves this request; a fresh clone stays for the next.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(inner, request, Arc::clone(&self.shared))
    }
}
