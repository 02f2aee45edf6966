//! What the layer does with one request: bypass, lookup, reuse or revalidation of a stored
//! response, coalescing of misses, the origin's answer and storing it.

use std::{sync::Arc, time::Duration};

use axum::{
    body::Body,
    http::{header, request::Parts, HeaderMap, HeaderName, HeaderValue, Method, Request, Response},
};
use serde::{Deserialize, Serialize};

use super::{keys, Mode, Shared};
use crate::{
    backend::clamp_ttl_ms,
    envelope::now_ms,
    flight::{self, Followed, Role},
    http::{
        cache_control::CacheControl,
        conditional::none_match,
        policy::{self, date_field, Exchange, Heuristic, Reuse, Rules, Windows},
        response::{CachedResponse, ReplyCacheControl, Stamp},
    },
    key::{normalize_key, KeyBuf, MAX_KEY_LEN},
    memo::{self, probe, store, Probe},
    registry::Registered,
    stats::{Event, Policy},
};

/// How long a stale response is kept for revalidation (or `max-stale`) beyond its freshness
/// and stale windows.
const KEEP_STALE_MS: u64 = 3_600_000;

/// The entry under a URI's key.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum UriEntry {
    /// The response, which has no `Vary`.
    Whole(CachedResponse),
    /// The response varies on these request headers; variants live under keys with `nonce`.
    Vary { names: Vec<String>, nonce: u64 },
}

/// What a lookup saw, to store the fresh response consistently with it.
#[derive(Clone)]
struct Observed {
    epoch: u64,
    groups: Vec<String>,

    generations: Option<Vec<u64>>,
    vary: Option<(Vec<String>, u64)>,
}

/// The client's conditional headers, answered from the cache.
struct Conditionals {
    if_none_match: Vec<HeaderValue>,
    if_modified_since: Option<u64>,
}

impl Conditionals {
    fn of(headers: &HeaderMap) -> Self {
        Self {
            if_none_match: headers
                .get_all(header::IF_NONE_MATCH)
                .iter()
                .cloned()
                .collect(),
            if_modified_since: date_field(headers, &header::IF_MODIFIED_SINCE).and_then(Result::ok),
        }
    }

    /// Whether a stored response satisfies them (RFC 9110 §13.1.2, §13.1.3, §13.2.2: with
    /// `If-None-Match`, `If-Modified-Since` is ignored).
    fn not_modified(&self, cached: &CachedResponse) -> bool {
        if !(200..300).contains(&cached.status) {
            return false;
        }
        if !self.if_none_match.is_empty() {
            return none_match(&self.if_none_match, &cached.etag);
        }
        let Some(since) = self.if_modified_since else {
            return false;
        };
        let modified = cached
            .header("last-modified")
            .or_else(|| cached.header("date"))
            .and_then(|text| policy::parse_date(&text));
        modified.is_some_and(|modified| modified <= since)
    }
}

/// One request's view of the layer.
struct Context<'a> {
    shared: &'a Shared,
    backend: &'static Registered,
    base: String,
    request_cc: CacheControl,
    conditionals: Conditionals,
}

pub(super) async fn handle<S, B>(
    mut inner: S,
    request: Request<B>,
    shared: Arc<Shared>,
    admitted: Option<Admission>,
) -> Result<Response<Body>, S::Error>
where
    S: tower_service::Service<Request<B>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    // The layer's site names its backend: resolved through the site's cached slot.
    let Some(backend) = shared.site.resolve() else {
        return inner.call(request).await;
    };
    let (parts, body) = request.into_parts();
    let method = parts.method.clone();
    if method != Method::GET && method != Method::HEAD {
        // Bypassed or not, a mutation removes what the cache holds for its URI.
        return mutation(inner, parts, body, &shared, backend).await;
    }
    // `Range` is ignored on `HEAD` (RFC 9110 §14.2): its answer is the full response's head.
    let range = match method {
        Method::GET => parts.headers.get(header::RANGE).cloned(),
        _ => None,
    };
    let admission = admitted.unwrap_or_else(|| admit(&shared, &parts));
    let (base, request_cc) = match admission {
        Admission::Passed(passed) => {
            let x_cache = match passed {
                Passed::Bypass => "BYPASS",
                Passed::NoStore => "MISS",
            };
            let request = Request::from_parts(parts, body);
            return Ok(mark(inner.call(request).await?, x_cache));
        }
        Admission::Cached { base, request_cc } => (base, request_cc),
    };
    let cx = Context {
        shared: &shared,
        backend,
        conditionals: Conditionals::of(&parts.headers),
        base,
        request_cc,
    };
    let site = shared.site;
    let epoch = crate::invalidation::invalidation_epoch();
    let mut observed = Observed {
        epoch,
        groups: lookup_groups(&shared, backend, &cx.base).await,
        generations: None,
        vary: None,
    };
    let found = lookup(&cx, &parts.headers, &mut observed).await;
    if let Some(range) = range {
        // A range is served from a stored complete response that may answer the request as it
        // is; anything else goes to the origin, and its answer (206, 416...) is not stored.
        if let Some(reply) = found.and_then(|cached| cx.serve_range(&cached, &range, &parts)) {
            site.count(Event::Hit);
            return Ok(reply);
        }
        if cx.request_cc.only_if_cached {
            return Ok(mark(gateway_timeout(), "MISS"));
        }
        let request = Request::from_parts(parts, body);
        return Ok(mark(inner.call(request).await?, "MISS"));
    }
    let mut stale = None;
    if let Some(cached) = found {
        match cx.reuse(&cached) {
            Reuse::Fresh | Reuse::StaleAccepted => {
                site.count(Event::Hit);
                return Ok(cx.serve(&cached, "HIT"));
            }
            Reuse::StaleWhileRevalidate => {
                site.count(Event::Stale);
                let reply = cx.serve(&cached, "STALE");
                if method == Method::GET {
                    observed.generations = generations_now(&cx, &observed.groups).await;
                    revalidate_in_background(inner, parts, body, &shared, &cx, observed, cached);
                }
                return Ok(reply);
            }
            Reuse::Revalidate => {
                // A hit reports no generations: read them, to store the revalidated response.
                observed.generations = generations_now(&cx, &observed.groups).await;
                stale = Some(cached);
            }
        }
    }
    if cx.request_cc.only_if_cached {
        return Ok(mark(gateway_timeout(), "MISS"));
    }
    // HEAD is answered from stored GET responses, but a HEAD reply has no body to store.
    if method == Method::HEAD {
        site.count(Event::Miss);
        let request = Request::from_parts(parts, body);
        return Ok(mark(inner.call(request).await?, "MISS"));
    }
    let mut parts = parts;
    let mut leader = None;
    // A layer nested inside another one that already leads this request's flight must not wait
    // for it: that would be waiting for itself. A failed lookup (no generations) cannot tell
    // whether another process invalidated the URI since a running request started: such requests
    // coalesce with none. Responses that must be validated on every use are not shared either.
    let rejects_stored = cx.request_cc.no_cache
        || cx.request_cc.max_age.is_some()
        || cx.request_cc.min_fresh.is_some();
    let coalesce = observed.generations.is_some()
        && !rejects_stored
        && !stale
            .as_ref()
            .is_some_and(|s: &CachedResponse| s.rules.no_cache || s.ttl_ms == 0)
        && !shared.config.coalesce_wait.is_zero()
        && parts.extensions.get::<Coalesced>().is_none()
        && !shared.config.uncacheable.contains(&cx.base);
    if coalesce {
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(shared.config.coalesce_wait)
            .unwrap_or(now + Duration::from_secs(86_400 * 365));
        loop {
            let overtaken = |started: u64| {
                crate::invalidation::invalidated_since(backend, started, &cx.base, &observed.groups)
            };
            let flight_key = format!(
                "layer\u{0}{}",
                crate::memo::flight_key_of(backend, &cx.base)
            );
            // In-process stores: the epoch check is exact, their stamps move with any invalidation.
            let joined_under = if backend.memory().is_some() {
                None
            } else {
                observed.generations.clone()
            };
            match flight::join(flight_key, epoch, &joined_under, overtaken) {
                Role::Leader(lead) => {
                    // The previous leader may have stored the response since this request looked.
                    if let Some(cached) = cx.reusable(&parts.headers, &mut observed).await {
                        lead.finish(Arc::new(()));
                        site.count(Event::Hit);
                        return Ok(cx.serve(&cached, "HIT"));
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
                    if let Some(cached) = cx.reusable(&parts.headers, &mut observed).await {
                        site.count(Event::Join);
                        return Ok(cx.serve(&cached, "HIT"));
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
        parts.extensions.insert(Coalesced);
    }
    site.count(Event::Miss);
    let fetched = fetch(inner, parts, body, &cx, observed, stale).await;
    if let Some(leader) = leader {
        match &fetched {
            Ok((_, true)) => leader.finish(Arc::new(())),
            _ => leader.pass(),
        }
    }
    fetched.map(|(reply, _)| reply)
}

/// How the layer takes a `GET` or `HEAD` request.
pub(super) enum Admission {
    /// Passed to the inner service as it is.
    Passed(Passed),
    /// Answered from the cache where it can be, under `base`.
    Cached {
        base: String,
        request_cc: CacheControl,
    },
}

fn admit(shared: &Shared, parts: &Parts) -> Admission {
    match directives(shared, parts) {
        Ok(request_cc) => Admission::Cached {
            base: keys::base(&shared.config, &shared.key_head, parts),
            request_cc,
        },
        Err(passed) => Admission::Passed(passed),
    }
}

/// Why a request the layer does not answer from the cache passes on.
pub(super) enum Passed {
    /// Bypassed (marked `BYPASS`).
    Bypass,
    /// The client forbids storing (`no-store`; marked `MISS`).
    NoStore,
}

/// The request's directives, when the layer may answer it from the cache; otherwise how it
/// passes it on.
fn directives(shared: &Shared, parts: &Parts) -> Result<CacheControl, Passed> {
    let config = &shared.config;
    // Preconditions other than the validators the cache answers itself pass through: their
    // answers (412...) belong to the request, not to the URI. So does an `If-Range` alone.
    let ranges = parts.headers.get_all(header::RANGE).iter().count();
    let bypassed = config.bypass.as_ref().is_some_and(|bypass| bypass(parts))
        || PASSED_THROUGH
            .iter()
            .any(|name| parts.headers.contains_key(name))
        || (ranges == 0 && parts.headers.contains_key(header::IF_RANGE))
        // Several Range lines are one multi-range request: passed through.
        || ranges > 1;
    if bypassed || keys::cookie_bypass(config, parts) || !keys::host_is_authority(config, parts) {
        return Err(Passed::Bypass);
    }
    let mut request_cc = CacheControl::of(&parts.headers);
    if config.ignore_client_no_cache {
        request_cc.no_cache = false;
        request_cc.max_age = None;
        request_cc.min_fresh = None;
    }
    if request_cc.no_store {
        return Err(Passed::NoStore);
    }
    Ok(request_cc)
}

/// What [`fresh_reply`] found.
pub(super) enum HotPath {
    /// The reply.
    Reply(Response<Body>),
    /// None: the request takes the full flow, with its admission when it was decided.
    Full(Option<Admission>),
}

/// The hot path, taken at the first poll of the request's future, before the full flow is
/// built (where the full flow would resolve its backend): the reply (`HIT`, or `304`) from
/// a stored response without `Vary` that this `GET` or `HEAD` may reuse, in an in-process store
/// (or the local tier of a two-tier one). Otherwise the request takes the full flow (which would
/// have served the same reply had this found it), with the admission decided here if it was.
pub(super) fn fresh_reply(shared: &Shared, parts: &Parts) -> HotPath {
    let cacheable = parts.method == Method::GET || parts.method == Method::HEAD;
    if !cacheable || parts.headers.contains_key(header::RANGE) {
        return HotPath::Full(None);
    }
    let Some(backend) = shared.site.resolve() else {
        return HotPath::Full(None);
    };
    let request_cc = match directives(shared, parts) {
        Ok(request_cc) => request_cc,
        Err(passed) => return HotPath::Full(Some(Admission::Passed(passed))),
    };
    // The key on the stack: a hit allocates none (up to `KeyBuf`'s inline length). One too long
    // to be stored as it is (it is shortened) is looked up by the full flow.
    let mut key = KeyBuf::new();
    keys::write_base(&shared.config, &shared.key_head, parts, &mut key);
    let found = (key.as_str().len() <= MAX_KEY_LEN)
        .then(|| memo::fresh_in_process::<UriEntry>(backend, key.as_str()))
        .flatten();
    let cx = Context {
        shared,
        backend,
        // Not read by `reuse_at` and `serve_at`: the key is on the stack.
        base: String::new(),
        request_cc,
        conditionals: Conditionals::of(&parts.headers),
    };
    if let Some(UriEntry::Whole(cached)) = found {
        // One clock read for the decision and the reply's `Age`.
        let age_ms = cached.age_ms();
        if matches!(
            cx.reuse_at(&cached, age_ms),
            Reuse::Fresh | Reuse::StaleAccepted
        ) {
            shared.site.count(Event::Hit);
            return HotPath::Reply(cx.serve_at(&cached, "HIT", age_ms));
        }
    }
    HotPath::Full(Some(Admission::Cached {
        base: normalize_key(key.into_string()),
        request_cc: cx.request_cc,
    }))
}

/// Marks a request whose misses a `CacheLayer` coalesces, for the layers nested inside it.
#[derive(Debug, Clone, Copy)]
struct Coalesced;

impl Context<'_> {
    fn windows(&self) -> Windows {
        Windows {
            stale_while_revalidate_ms: clamp_ttl_ms(self.shared.config.stale_while_revalidate),
            stale_if_error_ms: clamp_ttl_ms(self.shared.config.stale_if_error),
            unreachable_ms: clamp_ttl_ms(self.shared.config.stale_if_unreachable),
        }
    }

    fn reuse(&self, cached: &CachedResponse) -> Reuse {
        self.reuse_at(cached, cached.age_ms())
    }

    /// [`reuse`](Self::reuse) of a response `age_ms` old.
    fn reuse_at(&self, cached: &CachedResponse, age_ms: u64) -> Reuse {
        policy::reuse(
            age_ms,
            cached.ttl_ms,
            cached.rules,
            &self.request_cc,
            self.windows(),
        )
    }

    /// Whether `cached` may stand in for an origin that failed (`unreachable`: it gave no answer
    /// of its own).
    fn may_serve_stale_on_error(&self, cached: &CachedResponse, unreachable: bool) -> bool {
        policy::stale_if_error(
            cached.age_ms(),
            cached.ttl_ms,
            cached.rules,
            &self.request_cc,
            self.windows(),
            unreachable,
        )
    }

    /// A stored response that may answer this request without the origin.
    async fn reusable(
        &self,
        headers: &HeaderMap,
        observed: &mut Observed,
    ) -> Option<CachedResponse> {
        let cached = lookup(self, headers, observed).await?;
        matches!(self.reuse(&cached), Reuse::Fresh | Reuse::StaleAccepted).then_some(cached)
    }

    /// The reply from a stored response: itself, or `304` when the client's conditions hold.
    fn serve(&self, cached: &CachedResponse, x_cache: &'static str) -> Response<Body> {
        self.serve_at(cached, x_cache, cached.age_ms())
    }

    /// [`serve`](Self::serve) of a response `age_ms` old.
    fn serve_at(
        &self,
        cached: &CachedResponse,
        x_cache: &'static str,
        age_ms: u64,
    ) -> Response<Body> {
        let default = self.shared.config.mode == Mode::App;
        cached.reply_at(
            ReplyCacheControl::Shared { default },
            self.conditionals.not_modified(cached),
            Some(x_cache),
            age_ms,
        )
    }

    /// A `206` for a single byte range of a stored complete `200` that may answer the request
    /// without the origin, when its `If-Range` (if any) names that very response.
    fn serve_range(
        &self,
        cached: &CachedResponse,
        range: &HeaderValue,
        parts: &Parts,
    ) -> Option<Response<Body>> {
        let servable = matches!(self.reuse(cached), Reuse::Fresh | Reuse::StaleAccepted);
        if !servable || cached.status != 200 {
            return None;
        }
        if let Some(if_range) = parts.headers.get(header::IF_RANGE) {
            let if_range = if_range.to_str().ok()?.trim();
            let same_tag = cached.validators().0 == Some(if_range) && !if_range.starts_with("W/");
            // A date validates only when strong: the response was dated a second or more after it
            // was last modified (RFC 9110 §8.8.2.2, §13.1.5).
            let modified = cached.header("last-modified");
            let strong_date = modified.as_deref().and_then(policy::parse_date).zip(
                cached
                    .header("date")
                    .as_deref()
                    .and_then(policy::parse_date),
            );
            let same_date = modified.as_deref() == Some(if_range)
                && strong_date.is_some_and(|(modified, date)| date > modified);
            if !(same_tag || same_date) {
                return None;
            }
        }
        let len = cached.body.len() as u64;
        let (first, last) = crate::http::range::single_range(range.to_str().ok()?, len)?;
        let mut reply = self.serve(cached, "HIT");
        if reply.status() == axum::http::StatusCode::OK {
            let content_range =
                HeaderValue::from_str(&format!("bytes {first}-{last}/{len}")).ok()?;
            *reply.status_mut() = axum::http::StatusCode::PARTIAL_CONTENT;
            reply
                .headers_mut()
                .insert(header::CONTENT_RANGE, content_range);
            let (first, last) = (usize::try_from(first).ok()?, usize::try_from(last).ok()?);
            *reply.body_mut() = Body::from(cached.body.slice(first..=last));
        }
        Some(reply)
    }

    fn heuristic(&self) -> Heuristic {
        let secs = self.shared.config.ttl.as_secs();
        match self.shared.config.mode {
            Mode::App => Heuristic::Ttl(secs),
            Mode::Proxy => Heuristic::LastModified { cap_secs: secs },
        }
    }

    /// The directives this cache follows in a response, and whether `Expires` counts: a
    /// targeted field (RFC 9213) when configured and present replaces both.
    fn directives(&self, headers: &HeaderMap) -> (CacheControl, bool) {
        let targeted = self.shared.config.targeted.as_ref();
        match targeted.and_then(|field| CacheControl::of_targeted(headers, field)) {
            Some(cc) => (cc, false),
            None => (CacheControl::of(headers), true),
        }
    }
}

/// The stored response for this request (its `Vary` variant), fresh or not; otherwise records
/// what the lookup observed, to store a new response under.
async fn lookup(
    cx: &Context<'_>,
    request: &HeaderMap,
    observed: &mut Observed,
) -> Option<CachedResponse> {
    let (site, backend, base) = (cx.shared.site, cx.backend, cx.base.as_str());
    match probe::<UriEntry>(site, backend, base, None, &observed.groups).await {
        Probe::Hit(UriEntry::Whole(cached)) => return Some(cached),
        Probe::Hit(UriEntry::Vary { names, nonce }) => {
            let variant = keys::variant(&cx.shared.config, base, nonce, &names, request);
            observed.vary = Some((names, nonce));
            match probe::<CachedResponse>(site, backend, &variant, None, &observed.groups).await {
                Probe::Hit(cached) => return Some(cached),
                Probe::Stale { generations, .. } => observed.generations = Some(generations),
                Probe::Miss(generations) => observed.generations = generations,
            }
        }
        Probe::Stale { generations, .. } => observed.generations = Some(generations),
        Probe::Miss(generations) => observed.generations = generations,
    }
    None
}

/// The generations of a key's groups now (`None`: the backend failed).
async fn generations_now(cx: &Context<'_>, groups: &[String]) -> Option<Vec<u64>> {
    memo::current_generations(cx.shared.site, cx.backend, &cx.base, groups)
        .await
        .ok()
}

/// After a successful unsafe request, removes the stored responses of its URI and of the
/// same-host URIs in `Location` and `Content-Location` (RFC 9111 §4.4).
async fn mutation<S, B>(
    mut inner: S,
    parts: Parts,
    body: B,
    shared: &Shared,
    backend: &'static Registered,
) -> Result<Response<Body>, S::Error>
where
    S: tower_service::Service<Request<B>, Response = Response<Body>>,
{
    let method = parts.method.clone();
    let target = keys::base(&shared.config, &shared.key_head, &parts);
    // If this request is cancelled while the origin handles it, the mutation may have happened:
    // its URI is removed anyway (costs a miss at most).
    let mut cancelled = (!method.is_safe()).then(|| RemoveOnDrop {
        backend,
        keys: vec![target.clone(), keys::groups(&target)],
    });
    let answered = inner
        .call(Request::from_parts(clone_parts(&parts), body))
        .await;
    if let Some(guard) = cancelled.as_mut() {
        guard.keys.clear(); // it was not cancelled: the answer decides below
    }
    let response = answered?;
    let status = response.status();
    if method.is_safe() || !(status.is_success() || status.is_redirection()) {
        return Ok(response);
    }
    let mut bases = vec![target];
    for field in [header::LOCATION, header::CONTENT_LOCATION] {
        if let Some(uri) = response.headers().get(field).and_then(|v| v.to_str().ok()) {
            bases.extend(keys::base_of(&shared.config, &shared.key_head, &parts, uri));
        }
    }
    let keys: Vec<String> = bases
        .iter()
        .flat_map(|base| [base.clone(), keys::groups(base)])
        .collect();
    if let Err(error) = crate::invalidation::invalidate_keys_in(backend, &keys).await {
        tracing::warn!(?keys, %error, "could not remove cached responses after a mutation; kept pending");
    }
    Ok(response)
}

/// Removes keys in the background when dropped with some left.
struct RemoveOnDrop {
    backend: &'static Registered,
    keys: Vec<String>,
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let (backend, keys) = (self.backend, std::mem::take(&mut self.keys));
        crate::io::spawn(async move {
            let _ = crate::invalidation::invalidate_keys_in(backend, &keys).await;
        });
    }
}

fn clone_parts(parts: &Parts) -> Parts {
    let mut builder = Request::builder()
        .method(parts.method.clone())
        .uri(parts.uri.clone())
        .version(parts.version);
    if let Some(headers) = builder.headers_mut() {
        *headers = parts.headers.clone();
    }
    let (mut cloned, ()) = builder.body(()).unwrap_or_default().into_parts();
    cloned.extensions = parts.extensions.clone();
    cloned
}

/// Serves nothing: `only-if-cached` found no stored response that fits (RFC 9111 §5.2.1.7).
fn gateway_timeout() -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = axum::http::StatusCode::GATEWAY_TIMEOUT;
    response
}

/// Revalidates `stale` in the background (stale-while-revalidate), at most once per key at a time.
fn revalidate_in_background<S, B>(
    inner: S,
    parts: Parts,
    body: B,
    shared: &Arc<Shared>,
    cx: &Context<'_>,
    observed: Observed,
    stale: CachedResponse,
) where
    S: tower_service::Service<Request<B>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    {
        let mut running = shared
            .revalidating
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !running.insert(cx.base.clone()) {
            return;
        }
    }
    // Made before the spawn: a task dropped before it first runs still ends the revalidation.
    let done = Revalidating(Arc::clone(shared), cx.base.clone());
    let backend = cx.backend;
    let request_cc = cx.request_cc.clone();
    let span = tracing::Span::current();
    // In the request's `Caches` scope, like the request itself.
    tokio::spawn(crate::registry::carry(tracing::Instrument::instrument(
        async move {
            let (shared, base) = (&done.0, &done.1);
            let cx = Context {
                shared,
                backend,
                base: base.clone(),
                request_cc,
                conditionals: Conditionals {
                    if_none_match: Vec::new(),
                    if_modified_since: None,
                },
            };
            let revalidation = fetch(inner, parts, body, &cx, observed, Some(stale));
            let _ = tokio::time::timeout(BACKGROUND_LIMIT, revalidation).await;
        },
        span,
    )));
}

/// How long a background revalidation may take before it is given up.
const BACKGROUND_LIMIT: Duration = Duration::from_secs(60);

/// Ends a background revalidation of a key, however its task ends.
struct Revalidating(Arc<Shared>, String);

impl Drop for Revalidating {
    fn drop(&mut self) {
        self.0
            .revalidating
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

/// The client's validators, replaced by the cache's own when it revalidates.
const CONDITIONALS: [HeaderName; 2] = [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE];

/// Request headers that make a request pass through the cache untouched.
const PASSED_THROUGH: [HeaderName; 2] = [header::IF_MATCH, header::IF_UNMODIFIED_SINCE];

/// Asks the origin (conditionally when `stale` has a validator), and stores what it may; `true`
/// when a response was written to the backend.
async fn fetch<S, B>(
    mut inner: S,
    mut parts: Parts,
    body: B,
    cx: &Context<'_>,
    observed: Observed,
    stale: Option<CachedResponse>,
) -> Result<(Response<Body>, bool), S::Error>
where
    S: tower_service::Service<Request<B>, Response = Response<Body>>,
{
    let mut validating = false;
    if let Some(stale) = &stale {
        for name in &CONDITIONALS {
            parts.headers.remove(name);
        }
        let (etag, modified) = stale.validators();
        if let Some(value) = etag.and_then(|tag| HeaderValue::from_str(tag).ok()) {
            parts.headers.insert(header::IF_NONE_MATCH, value);
            validating = true;
        }
        if let Some(value) = modified.and_then(|date| HeaderValue::from_str(date).ok()) {
            parts.headers.insert(header::IF_MODIFIED_SINCE, value);
            validating = true;
        }
    }
    let authorized = parts.headers.contains_key(header::AUTHORIZATION);
    // Whether a response that cannot be stored says so of the URI, not of this request.
    let plain_request = !authorized
        && stale.is_none()
        && !CONDITIONALS
            .iter()
            .any(|name| parts.headers.contains_key(name));
    let request_headers = parts.headers.clone();
    let request_ms = now_ms();
    let answered = inner.call(Request::from_parts(parts, body)).await;
    let exchange = Exchange {
        request_ms,
        response_ms: now_ms(),
    };
    let response = match answered {
        Ok(response) => response,
        Err(error) => {
            return match stale {
                Some(stale) if cx.may_serve_stale_on_error(&stale, true) => {
                    Ok((cx.serve(&stale, "STALE"), false))
                }
                _ => Err(error),
            }
        }
    };
    let replacing = stale.is_some();
    if let Some(stale) = stale {
        if validating && response.status() == axum::http::StatusCode::NOT_MODIFIED {
            let (update, _) = response.into_parts();
            let refreshed = refreshed(
                cx,
                observed,
                &request_headers,
                &stale,
                update.headers,
                exchange,
            );
            let (reply, stored) = refreshed.await;
            if !stored {
                forget_stale(cx).await;
            }
            return Ok((reply, stored));
        }
        let status = response.status();
        let unreachable = matches!(status.as_u16(), 502 | 504);
        if status.is_server_error() && cx.may_serve_stale_on_error(&stale, unreachable) {
            return Ok((cx.serve(&stale, "STALE"), false));
        }
    }
    let (reply, stored) = received(
        cx,
        observed,
        &request_headers,
        response,
        authorized,
        plain_request,
        exchange,
    )
    .await;
    if replacing && !stored {
        forget_stale(cx).await;
    }
    Ok((reply, stored))
}

/// Removes the stored response a revalidation replaced with one that is not stored (`no-store`,
/// `private`, ...): it must not be served stale afterwards.
async fn forget_stale(cx: &Context<'_>) {
    let keys = [cx.base.clone()];
    if let Err(error) = crate::invalidation::invalidate_keys_in(cx.backend, &keys).await {
        tracing::warn!(key = cx.base, %error, "could not remove a replaced response; kept pending");
    }
}

/// The stored response, validated by a `304`: its headers updated (RFC 9111 §4.3.4) and stored
/// again when the merged response may be stored.
async fn refreshed(
    cx: &Context<'_>,
    observed: Observed,
    request_headers: &HeaderMap,
    stale: &CachedResponse,
    mut update: HeaderMap,
    exchange: Exchange,
) -> (Response<Body>, bool) {
    // A 304 naming another validator than the stored one is for another representation: it
    // updates nothing (RFC 9111 §4.3.4).
    let other_tag = update
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .zip(stale.validators().0)
        .is_some_and(|(new, old)| new.trim() != old.trim());
    if other_tag {
        return (cx.serve(stale, "REVALIDATED"), false);
    }
    if !update.contains_key(header::DATE) {
        // Its Date is now (RFC 9110 §6.6.1): the stored one would make it look old.
        if let Ok(date) = HeaderValue::from_str(&policy::format_date(exchange.response_ms / 1000)) {
            update.insert(header::DATE, date);
        }
    }
    let named = take_header_groups(cx.shared, &mut update);
    let header_groups = if named.is_empty() {
        stale.groups.clone()
    } else {
        named
    };
    let provisional = stale.merged(&update, Stamp::of(stale));
    let merged_headers = header_map(&provisional);
    let (cc, expires) = cx.directives(&merged_headers);
    let authorized = request_headers.contains_key(header::AUTHORIZATION);
    let storable = storable_lifetime(
        cx,
        provisional.status,
        &merged_headers,
        &cc,
        expires,
        authorized,
        exchange.response_ms,
    );
    let initial_age = exchange.initial_age_ms(&update);
    let lifetime = storable.unwrap_or(0);
    let stamp = Stamp {
        stored_ms: exchange.response_ms.saturating_sub(initial_age),
        ttl_ms: lifetime,
        rules: Rules::of(&cc),
    };
    let merged = stale
        .merged(&update, stamp)
        .filed_under(header_groups.clone());
    let retention = retention_ms(cx, &merged_headers, &cc, lifetime, initial_age);
    let stored = match (storable, retention) {
        (Some(_), Some(retention)) => {
            let entry = merged.clone();
            save(
                cx,
                observed,
                header_groups,
                request_headers,
                entry,
                retention,
            )
            .await
        }
        _ => false,
    };
    (cx.serve(&merged, "REVALIDATED"), stored)
}

/// The stored headers of a response as a map (to evaluate them like a received response's).
fn header_map(cached: &CachedResponse) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(cached.headers.len() + 1);
    if let (Some(etag), _) = cached.validators() {
        if let Ok(value) = HeaderValue::from_str(etag) {
            map.insert(header::ETAG, value);
        }
    }
    for (name, value) in &cached.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            map.append(name, value);
        }
    }
    map
}

/// How long to keep a response in the backend: its remaining freshness plus the time it may still
/// be served stale or revalidated. `None`: not worth storing.
fn retention_ms(
    cx: &Context<'_>,
    headers: &HeaderMap,
    cc: &CacheControl,
    lifetime_ms: u64,
    initial_age_ms: u64,
) -> Option<u64> {
    let windows = cx.windows();
    let rules = Rules::of(cc);
    let validator =
        headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED);
    let mut keep = 0;
    if !rules.must_revalidate && !rules.no_cache {
        keep = (rules.stale_while_revalidate.max(rules.stale_if_error))
            .saturating_mul(1000)
            .max(windows.stale_while_revalidate_ms)
            .max(windows.stale_if_error_ms);
        if lifetime_ms > 0 {
            keep = keep.max(windows.unreachable_ms);
        }
    }
    // Stale responses with a validator stay for a while, to be revalidated. In front of another
    // origin, others with a lifetime stay as well, as a proxy's do (for `max-stale` and a request's
    // `stale-if-error`); a response that is never fresh and cannot be revalidated is not kept.
    if validator || (cx.shared.config.mode == Mode::Proxy && lifetime_ms > 0) {
        keep = keep.max(KEEP_STALE_MS);
    }
    let retention = lifetime_ms
        .saturating_sub(initial_age_ms)
        .saturating_add(keep);
    let retention = clamp_ttl_ms(Duration::from_millis(retention));
    (retention > 0).then_some(retention)
}

/// Whether a response may be stored by a shared cache (RFC 9111 §3, §3.5), and its lifetime.
/// Whether the response is a stream of server-sent events: never stored, since storing would read
/// it to its end before the client got its first event (it may never end).
fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("text/event-stream"))
}

fn storable_lifetime(
    cx: &Context<'_>,
    status: u16,
    headers: &HeaderMap,
    cc: &CacheControl,
    expires: bool,
    authorized: bool,
    response_ms: u64,
) -> Option<u64> {
    let varies_on_everything = headers.get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .is_ok_and(|t| t.split(',').any(|n| n.trim() == "*"))
    });
    // `must-understand`: stored only with a status whose caching rules this cache knows, and then
    // despite `no-store` (RFC 9111 §5.2.2.3).
    if cc.must_understand && !policy::understood(status) {
        return None;
    }
    let no_store = cc.no_store && !cc.must_understand;
    if status < 200
        || status == 206
        || status == 304
        || no_store
        || cc.private
        || headers.contains_key(header::SET_COOKIE)
        || varies_on_everything
        || is_event_stream(headers)
    {
        return None;
    }
    // Answers to authorized requests only with the origin's leave, and explicit freshness.
    if authorized
        && (!(cc.public || cc.s_maxage.is_some() || cc.must_revalidate)
            || cc.s_maxage.or(cc.max_age).is_none())
    {
        return None;
    }
    let lifetime = policy::lifetime_ms(status, headers, cc, expires, response_ms, cx.heuristic());
    match lifetime {
        Some(lifetime) => Some(lifetime),
        // No freshness at all: storable for revalidation if the status allows a heuristic.
        None if policy::heuristically_cacheable(status) || cc.no_cache => Some(0),
        None => None,
    }
}

/// A response from the origin: stored when it may be, and passed on as received.
#[allow(clippy::too_many_arguments)]
async fn received(
    cx: &Context<'_>,
    observed: Observed,
    request_headers: &HeaderMap,
    mut response: Response<Body>,
    authorized: bool,
    plain_request: bool,
    exchange: Exchange,
) -> (Response<Body>, bool) {
    let shared = cx.shared;
    let header_groups = take_header_groups(shared, response.headers_mut());
    let uncacheable = |response: Response<Body>| {
        if plain_request {
            shared.config.uncacheable.remember(&cx.base);
        }
        (mark(response, "MISS"), false)
    };
    let (cc, expires) = cx.directives(response.headers());
    let Some(lifetime) = storable_lifetime(
        cx,
        response.status().as_u16(),
        response.headers(),
        &cc,
        expires,
        authorized,
        exchange.response_ms,
    ) else {
        return uncacheable(response);
    };
    let initial_age = exchange.initial_age_ms(response.headers());
    let Some(retention) = retention_ms(cx, response.headers(), &cc, lifetime, initial_age) else {
        return uncacheable(response);
    };
    let stamp = Stamp {
        stored_ms: exchange.response_ms.saturating_sub(initial_age),
        ttl_ms: lifetime,
        rules: Rules::of(&cc),
    };
    let status = response.status();
    let (cached, original) =
        match CachedResponse::capture(response, stamp, shared.config.max_body).await {
            Ok(captured) => captured,
            Err(passthrough) => return uncacheable(passthrough),
        };
    let cached = cached.filed_under(header_groups.clone());
    let reply = if cx.conditionals.not_modified(&cached) {
        cx.serve(&cached, "MISS")
    } else {
        let mut reply = cached.passthrough(original);
        *reply.status_mut() = status;
        mark(reply, "MISS")
    };
    let stored = save(
        cx,
        observed,
        header_groups,
        request_headers,
        cached,
        retention,
    )
    .await;
    if stored {
        shared.config.uncacheable.forget(&cx.base);
    }
    (reply, stored)
}

/// Stores a response (and its `Vary` index) under the generations the lookup saw, unless an
/// invalidation of its URI or groups ran since.
async fn save(
    cx: &Context<'_>,
    observed: Observed,
    header_groups: Vec<String>,
    request_headers: &HeaderMap,
    cached: CachedResponse,
    retention_ms: u64,
) -> bool {
    let (shared, backend, base) = (cx.shared, cx.backend, cx.base.as_str());
    let site = shared.site;
    let _permit = crate::invalidation::store_permit(backend, base).await;
    if crate::invalidation::invalidated_since(backend, observed.epoch, base, &observed.groups) {
        return false; // an invalidation of this URI or its groups ran while it was computed
    }
    let mut groups = shared.config.groups.clone();
    groups.extend(header_groups.iter().cloned());
    // On shared backends the URI's tombstone too, which a mutation's removal of the URI moves.
    let groups = memo::groups_for(backend, base, groups);
    let policy = Policy::ttl(retention_ms);
    // Side entries (the groups a header named, the `Vary` index) outlive the variants they lead to.
    let side_policy = Policy::ttl(retention_ms.saturating_add(KEEP_STALE_MS));
    // Written with every store, so that it lives as long as the entries it serves.
    if shared.config.groups_header.is_some() {
        let key = keys::groups(base);
        let named = Arc::new(header_groups);
        store(
            site,
            backend,
            &key,
            None,
            &[],
            Vec::new(),
            &named,
            side_policy,
        )
        .await;
    }
    // The response names groups whose generations were not read before it was fetched: an
    // invalidation of them during the fetch would go unseen. Only the groups are recorded; the
    // next request, which reads them first, stores the response.
    if groups != observed.groups {
        return false;
    }
    let Some(generations) = observed.generations else {
        return false; // the backend failed during the lookup: store nothing
    };
    let names = vary_names(&cached);
    if names.is_empty() && !keys::always_variants(&shared.config) {
        let entry = Arc::new(UriEntry::Whole(cached));
        store(
            site,
            backend,
            base,
            None,
            &groups,
            generations,
            &entry,
            policy,
        )
        .await;
        return true;
    }
    let nonce = match observed.vary {
        Some((seen, nonce)) if seen == names => nonce,
        _ => fastrand::u64(..),
    };
    let variant = keys::variant(&shared.config, base, nonce, &names, request_headers);
    let index = Arc::new(UriEntry::Vary { names, nonce });
    store(
        site,
        backend,
        base,
        None,
        &groups,
        generations.clone(),
        &index,
        side_policy,
    )
    .await;
    let cached = Arc::new(cached);
    store(
        site,
        backend,
        &variant,
        None,
        &groups,
        generations,
        &cached,
        policy,
    )
    .await;
    true
}

/// The groups a URI's entries are filed under: the layer's, those a response header named (as
/// recorded for the URI), and the URI's tombstone on shared backends.
async fn lookup_groups(shared: &Shared, backend: &Registered, base: &str) -> Vec<String> {
    let mut groups = shared.config.groups.clone();
    if shared.config.groups_header.is_some() {
        if let Probe::Hit(extra) =
            probe::<Vec<String>>(shared.site, backend, &keys::groups(base), None, &[]).await
        {
            groups.extend(extra);
        }
    }
    // On shared backends the URI's tombstone too: a response fetched before a mutation's removal
    // of the URI and stored after it (in any process) is stale.
    memo::groups_for(backend, base, groups)
}

/// Removes the groups header the layer reads (if any) and returns the groups it named, sorted.
fn take_header_groups(shared: &Shared, headers: &mut HeaderMap) -> Vec<String> {
    let Some(name) = &shared.config.groups_header else {
        return Vec::new();
    };
    let values: Vec<HeaderValue> = match headers.entry(name) {
        axum::http::header::Entry::Occupied(entry) => entry.remove_entry_mult().1.collect(),
        axum::http::header::Entry::Vacant(_) => Vec::new(),
    };
    sorted_list(values.iter().filter_map(|v| v.to_str().ok()))
}

/// The header names a stored response's `Vary` lists, lower case.
fn vary_names(cached: &CachedResponse) -> Vec<String> {
    let fields: Vec<String> = cached
        .headers
        .iter()
        .filter(|(n, _)| n == "vary")
        .map(|(_, v)| v.to_ascii_lowercase())
        .collect();
    sorted_list(fields.iter().map(String::as_str))
}

/// The elements of comma-separated field values, trimmed, sorted, without duplicates or empties.
fn sorted_list<'a>(values: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut items: Vec<String> = values
        .flat_map(|text| text.split(','))
        .map(|item| item.trim().to_owned())
        .filter(|item| !item.is_empty())
        .collect();
    items.sort();
    items.dedup();
    items
}

fn mark(mut response: Response<Body>, x_cache: &'static str) -> Response<Body> {
    response.headers_mut().insert(
        HeaderName::from_static("x-cache"),
        HeaderValue::from_static(x_cache),
    );
    response
}
