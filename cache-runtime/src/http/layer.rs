//! [`CacheLayer`]: a tower layer that caches whole `GET` responses of a router or route.

use std::{
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::Body,
    http::{header, request::Parts, HeaderMap, HeaderName, HeaderValue, Method, Request, Response},
};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{
    cache_control::CacheControl,
    handler::storable,
    response::{CachedResponse, ReplyCacheControl},
    DEFAULT_MAX_BODY,
};
use crate::{
    backend::{clamp_ttl, clamp_ttl_ms},
    flight::{self, Followed, Role},
    key::{escape_into, normalize_key, DefaultKey},
    memo::{probe, store, Probe},
    registry::{self, Registered},
    stats::{Event, Policy, Site},
};

/// Caches whole responses of the routes it wraps, keyed by method, host, URI and the request
/// headers the response names in `Vary`, following RFC 9111 for a shared cache:
///
/// - only `GET` is stored, and `HEAD` is answered from it (same headers and `ETag`, no body);
/// - not stored: `Cache-Control: no-store` or `private` responses, `Set-Cookie`, `Vary: *`, non-2xx or
///   `206`, and answers to requests with `Authorization` unless the response says `public`,
///   `s-maxage` or `must-revalidate`; a request's own `no-store` bypasses the cache and its
///   `no-cache` skips the lookup;
/// - freshness from `s-maxage`, else `max-age`, else the layer's TTL;
/// - a successful `POST`/`PUT`/`PATCH`/`DELETE` through the layer removes the entry of its URI;
/// - replies carry `ETag`, `Age`, `Cache-Control` (the origin's, or `public, max-age=<remaining>`)
///   and `X-Cache: HIT` or `MISS`; `If-None-Match` is answered with 304;
/// - bodies over the size limit stream through uncached;
/// - concurrent misses on one URI are coalesced: one request goes to the origin, the others wait
///   for it (at most [`coalesce_wait`](Self::coalesce_wait)) and are answered from what it stored.
///   A URI whose response turns out not to be storable is remembered for a while
///   ([`UNCACHEABLE_MEMORY`]) so that its requests stop waiting for one another.
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
    /// rest are revalidated or passed through. [`ttl`](Self::ttl) caps the heuristic.
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
    /// RFC 5861, which wins when larger). Never for `must-revalidate` or `no-cache` responses.
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = window;
        self.reconfigured()
    }

    /// Serves a stale response for up to this long past its freshness when the origin fails
    /// (a 5xx or an error of the inner service; as the `stale-if-error` directive, RFC 5861).
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = window;
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
    pub fn cache_key(mut self, key: impl Fn(&Parts) -> String + Send + Sync + 'static) -> Self {
        self.cache_key = Some(Arc::new(key));
        self.reconfigured()
    }

    /// Requests for which `bypass` returns `true` go to the inner service untouched
    /// (`X-Cache: BYPASS`).
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
    /// before it goes there itself (default [`DEFAULT_COALESCE_WAIT`]; zero turns coalescing off).
    pub fn coalesce_wait(mut self, wait: Duration) -> Self {
        self.coalesce_wait = wait;
        self.reconfigured()
    }
}

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
                Policy::ttl(ttl_ms),
            )));
            site.register();
            site
        });
        CacheService {
            inner,
            shared: Arc::new(Shared {
                config: self.clone(),
                site,
            }),
        }
    }
}

#[derive(Debug)]
struct Shared {
    config: CacheLayer,
    site: &'static Site,
}

/// The service [`CacheLayer`] wraps around a route or router.
#[derive(Debug, Clone)]
pub struct CacheService<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// The entry under a URI's key.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum UriEntry {
    /// The response, which has no `Vary`.
    Whole(CachedResponse),
    /// The response varies on these request headers; variants live under keys with `nonce`.
    Vary { names: Vec<String>, nonce: u64 },
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
    type Future = BoxFuture<'static, Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The clone that was polled ready serves this request; a fresh clone stays for the next.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(handle(inner, request, Arc::clone(&self.shared)))
    }
}

/// What a lookup saw, to store the fresh response consistently with it.
struct Observed {
    epoch: u64,
    groups: Vec<String>,
    generations: Option<Vec<u64>>,
    vary: Option<(Vec<String>, u64)>,
}

async fn handle<S, B>(
    mut inner: S,
    mut request: Request<B>,
    shared: Arc<Shared>,
) -> Result<Response<Body>, S::Error>
where
    S: tower_service::Service<Request<B>, Response = Response<Body>>,
{
    let method = request.method().clone();
    let Some(backend) = registry::resolve(&shared.config.backend) else {
        return inner.call(request).await;
    };
    let base = uri_key(&Method::GET, &request);
    if method != Method::GET && method != Method::HEAD {
        let response = inner.call(request).await?;
        let status = response.status();
        if !method.is_safe() && (status.is_success() || status.is_redirection()) {
            forget(backend, &base).await;
        }
        return Ok(response);
    }
    let request_cc = CacheControl::of(request.headers());
    if request_cc.no_store {
        return Ok(mark(inner.call(request).await?, "MISS"));
    }
    let if_none_match: Vec<HeaderValue> = request
        .headers()
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .cloned()
        .collect();
    let site = shared.site;
    let epoch = crate::invalidation::invalidation_epoch();
    let groups = lookup_groups(&shared, backend, &base).await;
    let mut observed = Observed {
        epoch,
        groups,
        generations: None,
        vary: None,
    };
    if request_cc.no_cache {
        // Skip the lookup, but read the generations so that the fresh response is stored.
        let read = backend
            .guard
            .run("get", backend.backend.get(&base, &observed.groups));
        observed.generations = read.await.ok().map(|lookup| lookup.generations);
    }
    // A request's `no-cache` skips the answer from the cache, not the lookup (which finds the
    // `Vary` headers and generations to store the new response under).
    let serve = !request_cc.no_cache;
    let lookup = Lookup {
        site,
        backend,
        base: &base,
        serve,
    };
    let reply = |cached: CachedResponse| {
        cached.reply(ReplyCacheControl::Shared, &if_none_match, Some("HIT"))
    };
    if let Some(cached) = lookup.run(request.headers(), &mut observed).await {
        site.count(Event::Hit);
        return Ok(reply(cached));
    }
    // HEAD is answered from stored GET responses, but a HEAD reply has no body to store.
    if method == Method::HEAD {
        site.count(Event::Miss);
        return Ok(mark(inner.call(request).await?, "MISS"));
    }
    let mut leader = None;
    // A layer nested inside another one that already leads this request's flight must not wait
    // for it: that would be waiting for itself.
    // A failed lookup (no generations) cannot tell whether another process invalidated the URI since
    // a running request started: such requests coalesce with none.
    let coalesce = serve
        && observed.generations.is_some()
        && !shared.config.coalesce_wait.is_zero()
        && request.extensions().get::<Coalesced>().is_none()
        && !shared.config.uncacheable.contains(&base);
    if coalesce {
        let deadline = tokio::time::Instant::now() + shared.config.coalesce_wait;
        loop {
            let overtaken = |started: u64| {
                crate::invalidation::invalidated_since(started, &base, &observed.groups)
            };
            let flight_key = format!("layer\u{0}{base}");
            // In-process stores: the epoch check is exact, their stamps move with any invalidation.
            let joined_under = if backend.backend.as_memory().is_some() {
                None
            } else {
                observed.generations.clone()
            };
            match flight::join(flight_key, epoch, &joined_under, overtaken) {
                Role::Leader(lead) => {
                    // The previous leader may have stored the response since this request looked.
                    if let Some(cached) = lookup.run(request.headers(), &mut observed).await {
                        lead.finish(Arc::new(()));
                        site.count(Event::Hit);
                        return Ok(reply(cached));
                    }
                    leader = Some(lead);
                    break;
                }
                Role::Follower(receiver) => {
                    let waited = tokio::time::timeout_at(deadline, flight::follow(receiver)).await;
                    if matches!(waited, Ok(Followed::Pass)) {
                        break; // the leader's response was its own: ask the origin
                    }
                    // Most likely stored now.
                    if let Some(cached) = lookup.run(request.headers(), &mut observed).await {
                        site.count(Event::Join);
                        return Ok(reply(cached));
                    }
                    // The leader gave up (cancelled, panicked): take turns as leader, within
                    // the time this request agreed to wait.
                    if !matches!(waited, Ok(Followed::Retry))
                        || tokio::time::Instant::now() >= deadline
                    {
                        break;
                    }
                }
            }
        }
    }
    if leader.is_some() {
        request.extensions_mut().insert(Coalesced);
    }
    site.count(Event::Miss);
    let response = origin(
        inner,
        request,
        &shared,
        backend,
        &base,
        observed,
        &if_none_match,
    )
    .await;
    if let Some(leader) = leader {
        match &response {
            Ok((_, true)) => leader.finish(Arc::new(())),
            _ => leader.pass(),
        }
    }
    response.map(|(reply, _)| reply)
}

/// Marks a request whose misses a `CacheLayer` coalesces, for the layers nested inside it.
#[derive(Debug, Clone, Copy)]
struct Coalesced;

/// One lookup of a request's URI (and `Vary` variant) in the layer's backend.
struct Lookup<'a> {
    site: &'static Site,
    backend: &'static Registered,
    base: &'a str,
    /// Whether a fresh response found is the answer (not for a request's `no-cache`).
    serve: bool,
}

impl Lookup<'_> {
    /// The fresh response the cache holds for this request, if any and if it is to be served;
    /// otherwise records what the lookup observed, to store a new response under.
    async fn run(&self, request: &HeaderMap, observed: &mut Observed) -> Option<CachedResponse> {
        let Self {
            site,
            backend,
            base,
            serve,
        } = *self;
        match probe::<UriEntry>(site, backend, base, &observed.groups).await {
            Probe::Hit(UriEntry::Whole(cached)) if serve => return Some(cached),
            Probe::Hit(UriEntry::Vary { names, nonce }) => {
                let variant = variant_key(base, nonce, &names, request);
                match probe::<CachedResponse>(site, backend, &variant, &observed.groups).await {
                    Probe::Hit(cached) if serve => return Some(cached),
                    Probe::Hit(_) => {}
                    Probe::Stale { generations, .. } => observed.generations = Some(generations),
                    Probe::Miss(generations) => observed.generations = generations,
                }
                observed.vary = Some((names, nonce));
            }
            Probe::Hit(UriEntry::Whole(_)) => {}
            Probe::Stale { generations, .. } => observed.generations = Some(generations),
            Probe::Miss(generations) => observed.generations = generations,
        }
        None
    }
}

/// Sends the request to the origin and stores its response when it may; `true` when it was
/// written to the backend.
async fn origin<S, B>(
    mut inner: S,
    request: Request<B>,
    shared: &Shared,
    backend: &'static Registered,
    base: &str,
    observed: Observed,
    if_none_match: &[HeaderValue],
) -> Result<(Response<Body>, bool), S::Error>
where
    S: tower_service::Service<Request<B>, Response = Response<Body>>,
{
    let authorized = request.headers().contains_key(header::AUTHORIZATION);
    // Whether a response that cannot be stored says so of the URI, not of this request.
    let plain_request = !authorized
        && !request.headers().contains_key(header::IF_NONE_MATCH)
        && !request.headers().contains_key(header::IF_MODIFIED_SINCE);
    let request_headers = request.headers().clone();
    let mut response = inner.call(request).await?;
    let header_groups = take_header_groups(shared, &mut response);
    let uncacheable = |response: Response<Body>| {
        if plain_request {
            shared.config.uncacheable.remember(base);
        }
        Ok((mark(response, "MISS"), false))
    };
    let Some(ttl) = freshness(shared, &response, authorized) else {
        return uncacheable(response);
    };
    let cached =
        match CachedResponse::capture(response, clamp_ttl_ms(ttl), shared.config.max_body).await {
            Ok(cached) => cached,
            Err(passthrough) => return uncacheable(passthrough),
        };
    let reply = cached.reply(ReplyCacheControl::Shared, if_none_match, Some("MISS"));
    let stored = save(
        shared,
        backend,
        base,
        observed,
        header_groups,
        &request_headers,
        cached,
        ttl,
    )
    .await;
    if stored {
        shared.config.uncacheable.forget(base);
    }
    Ok((reply, stored))
}

/// How long the response may be stored, or `None` when it may not be.
fn freshness(shared: &Shared, response: &Response<Body>, authorized: bool) -> Option<Duration> {
    let cc = CacheControl::of(response.headers());
    let varies_on_everything = response.headers().get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .is_ok_and(|t| t.split(',').any(|n| n.trim() == "*"))
    });
    if !storable(response) || varies_on_everything {
        return None;
    }
    // RFC 9111 §3.5; and such a response is only stored with explicit freshness, never the
    // layer's default TTL, so one user's answer is not kept on a guess.
    if authorized
        && (!(cc.public || cc.s_maxage.is_some() || cc.must_revalidate)
            || cc.s_maxage.or(cc.max_age).is_none())
    {
        return None;
    }
    // `no-cache` responses need revalidation on every use; `Expires` without `max-age` is not
    // interpreted: neither is stored.
    let expires_only =
        response.headers().contains_key(header::EXPIRES) && cc.s_maxage.or(cc.max_age).is_none();
    if cc.no_cache || expires_only {
        return None;
    }
    // Clamped to 2^31 s (RFC 9111 §1.2.2), whether it came from the response or the layer.
    let ttl = clamp_ttl(match cc.s_maxage.or(cc.max_age) {
        Some(seconds) => Duration::from_secs(seconds),
        None => shared.config.ttl,
    });
    (!ttl.is_zero()).then_some(ttl)
}

#[allow(clippy::too_many_arguments)]
async fn save(
    shared: &Shared,
    backend: &Registered,
    base: &str,
    observed: Observed,
    header_groups: Vec<String>,
    request_headers: &HeaderMap,
    cached: CachedResponse,
    ttl: Duration,
) -> bool {
    let site = shared.site;
    let ttl_ms = clamp_ttl_ms(ttl);
    let _permit = crate::invalidation::store_permit(backend, base).await;
    if crate::invalidation::invalidated_since(observed.epoch, base, &observed.groups) {
        return false; // an invalidation of this URI or its groups ran while it was computed
    }
    let mut groups = shared.config.groups.clone();
    groups.extend(header_groups.iter().cloned());
    let groups = with_tombstone(backend, base, groups);
    let generations = if groups == observed.groups {
        observed.generations
    } else {
        // New groups from the response header: their generations are read now.
        match backend
            .guard
            .run("get", backend.backend.get(base, &groups))
            .await
        {
            Ok(lookup) => Some(lookup.generations),
            Err(_) => None,
        }
    };
    let Some(generations) = generations else {
        return false; // the backend failed during the lookup: store nothing
    };
    let names = vary_names(&cached);
    if shared.config.groups_header.is_some() {
        let key = groups_key(base);
        store(
            site,
            backend,
            &key,
            &[],
            Vec::new(),
            &Arc::new(header_groups),
            Policy::ttl(ttl_ms),
        )
        .await;
    }
    if names.is_empty() {
        let entry = Arc::new(UriEntry::Whole(cached));
        store(
            site,
            backend,
            base,
            &groups,
            generations,
            &entry,
            Policy::ttl(ttl_ms),
        )
        .await;
        return true;
    }
    let nonce = match observed.vary {
        Some((seen, nonce)) if seen == names => nonce,
        _ => fastrand::u64(..),
    };
    let variant = variant_key(base, nonce, &names, request_headers);
    let index = Arc::new(UriEntry::Vary { names, nonce });
    store(
        site,
        backend,
        base,
        &groups,
        generations.clone(),
        &index,
        Policy::ttl(ttl_ms),
    )
    .await;
    store(
        site,
        backend,
        &variant,
        &groups,
        generations,
        &Arc::new(cached),
        Policy::ttl(ttl_ms),
    )
    .await;
    true
}

/// Removes a URI's entries after a successful unsafe request (RFC 9111 §4.4).
async fn forget(backend: &'static Registered, base: &str) {
    let keys = [base.to_owned(), groups_key(base)];
    if let Err(error) = crate::invalidation::invalidate_keys_in(backend, &keys).await {
        tracing::warn!(key = base, %error, "could not remove a cached response after a mutation; kept pending");
    }
}

async fn lookup_groups(shared: &Shared, backend: &Registered, base: &str) -> Vec<String> {
    let mut groups = shared.config.groups.clone();
    if shared.config.groups_header.is_some() {
        if let Probe::Hit(extra) =
            probe::<Vec<String>>(shared.site, backend, &groups_key(base), &[]).await
        {
            groups.extend(extra);
        }
    }
    with_tombstone(backend, base, groups)
}

/// On shared backends, a URI's entries also record its tombstone, which a mutation's removal of
/// the URI moves: a response fetched before it and stored after it (in any process) is stale.
fn with_tombstone(backend: &Registered, base: &str, mut groups: Vec<String>) -> Vec<String> {
    if backend.backend.tombstones() {
        groups.push(crate::invalidation::tombstone_group(base));
    }
    groups
}

fn take_header_groups(shared: &Shared, response: &mut Response<Body>) -> Vec<String> {
    let Some(name) = &shared.config.groups_header else {
        return Vec::new();
    };
    let values: Vec<HeaderValue> = response.headers_mut().remove(name).into_iter().collect();
    let mut groups: Vec<String> = values
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|t| t.split(','))
        .map(|g| g.trim().to_owned())
        .filter(|g| !g.is_empty())
        .collect();
    groups.sort();
    groups.dedup();
    groups
}

fn vary_names(cached: &CachedResponse) -> Vec<String> {
    let mut names: Vec<String> = cached
        .headers
        .iter()
        .filter(|(n, _)| n == "vary")
        .flat_map(|(_, v)| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    names.dedup();
    names
}

fn mark(mut response: Response<Body>, x_cache: &'static str) -> Response<Body> {
    response.headers_mut().insert(
        HeaderName::from_static("x-cache"),
        HeaderValue::from_static(x_cache),
    );
    response
}

/// `http:<METHOD>:<host><path?query>`, host escaped.
fn uri_key<B>(method: &Method, request: &Request<B>) -> String {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    let mut key = format!("http:{method}:");
    escape_into(&mut key, host);
    key.push_str(request.uri().path_and_query().map_or("/", |p| p.as_str()));
    normalize_key(key)
}

fn variant_key(base: &str, nonce: u64, names: &[String], headers: &HeaderMap) -> String {
    let values: Vec<(&str, Vec<&[u8]>)> = names
        .iter()
        .map(|n| {
            let values = headers
                .get_all(n.as_str())
                .iter()
                .map(|v| v.as_bytes())
                .collect();
            (n.as_str(), values)
        })
        .collect();
    let hash = DefaultKey::new()
        .arg(&nonce)
        .arg(&values)
        .finish("vary", "v");
    normalize_key(format!("{base}|{}", hash.as_str()))
}

fn groups_key(base: &str) -> String {
    normalize_key(format!("{base}|groups"))
}
