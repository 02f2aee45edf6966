//! The runtime side of `#[cached(http)]` and `#[cache_invalidate(http)]` handlers.

use std::{convert::Infallible, future::Future};

use axum::{
    extract::FromRequestParts,
    http::{header, request::Parts, HeaderMap, HeaderValue, Method, Uri},
    response::Response,
};

pub use super::response::CachedResponse;
use super::{
    cache_control::CacheControl,
    response::{ReplyCacheControl, Stamp},
    DEFAULT_MAX_BODY,
};
use crate::{
    key::{CallKeyBuilder, KeyBuf},
    memo::{memoize_with, Body, Errors},
    stats::Site,
};

/// What a cached handler needs from the request besides its own extractors.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    method: Method,
    if_none_match: Vec<HeaderValue>,
}

impl RequestInfo {
    /// `GET` or `HEAD`: the methods whose responses are cached.
    pub fn cacheable_method(&self) -> bool {
        self.method == Method::GET || self.method == Method::HEAD
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestInfo {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self {
            method: parts.method.clone(),
            if_none_match: parts
                .headers
                .get_all(header::IF_NONE_MATCH)
                .iter()
                .cloned()
                .collect(),
        })
    }
}

/// Whether a response may be stored: 2xx but not 206, no `Set-Cookie`, no `no-store`/`private`.
pub(crate) fn storable(response: &Response) -> bool {
    let status = response.status();
    let cc = CacheControl::of(response.headers());
    status.is_success()
        && status.as_u16() != 206
        && !response.headers().contains_key(header::SET_COOKIE)
        && !cc.no_store
        && !cc.private
}

/// The hot path of a `#[cached(http)]` handler, checked before its body is built: the reply from
/// a fresh response in an in-process backend, if there is one (with validators, and `304` where
/// `If-None-Match` matches).
pub fn fresh_reply(
    site: &'static Site,
    request: &RequestInfo,
    key: &KeyBuf,
    visibility: &'static str,
) -> Option<Response> {
    if !request.cacheable_method() {
        return None;
    }
    let cached = crate::memo::fresh_hit::<CachedResponse>(site, key)?;
    Some(cached.reply(
        ReplyCacheControl::Origin(visibility),
        &request.if_none_match,
        None,
    ))
}

/// Serves a `#[cached(http)]` handler after [`fresh_reply`] found nothing: the cached response
/// when a backend has one, else the handler's (see [`outcome`]), stored when it may be; both
/// answered with validators and 304 where `If-None-Match` matches.
pub async fn serve<F>(
    site: &'static Site,
    request: RequestInfo,
    key: KeyBuf,
    groups: Vec<String>,
    visibility: &'static str,
    handler: Body<CachedResponse, Response, F>,
) -> Response
where
    F: Future<Output = Result<CachedResponse, Response>>,
{
    if !request.cacheable_method() {
        // `outcome` passes these through untouched.
        return match handler.run_in_place().await {
            Ok(cached) => cached.reply(ReplyCacheControl::Origin(visibility), &[], None),
            Err(response) => response,
        };
    }
    // An uncacheable response belongs to its request: concurrent requests each run the handler.
    // Only a server error lets a stale response stand in (stale-if-error).
    let errors = Errors::independent(|response: &Response| response.status().is_server_error());
    match memoize_with(site, key, groups, handler, errors, None).await {
        Ok(cached) => cached.reply(
            ReplyCacheControl::Origin(visibility),
            &request.if_none_match,
            None,
        ),
        Err(passthrough) => passthrough,
    }
}

/// A handler's response in storable form, or the response itself when it may not be stored (or
/// the method is not cacheable).
pub async fn outcome<F>(
    site: &'static Site,
    cacheable_method: bool,
    handler: F,
) -> Result<CachedResponse, Response>
where
    F: Future<Output = Response>,
{
    let response = handler.await;
    if !cacheable_method || !storable(&response) {
        return Err(response);
    }
    CachedResponse::capture(response, Stamp::now(site.policy.ttl_ms), DEFAULT_MAX_BODY)
        .await
        .map(|(cached, _)| cached)
}

/// Runs the invalidations of a `#[cache_invalidate(http)]` handler when its response is 2xx.
/// A failed invalidation is logged; the response is returned either way.
pub async fn after_mutation(
    response: Response,
    keys: Vec<String>,
    groups: Vec<String>,
) -> Response {
    if response.status().is_success() {
        crate::invalidation::invalidate_after_success(&keys, &groups).await;
    }
    response
}

/// Wraps a handler argument for the default key (autoref specialization: headers, URIs and
/// methods have their own way in; anything else must be `Serialize`).
pub struct HttpKeyArg<'a, T: ?Sized>(pub &'a T);

/// Key contribution of request metadata types.
pub trait HttpKeyViaHeaders {
    /// Adds the value to the key.
    fn add_to(&self, key: &mut CallKeyBuilder);
}

impl HttpKeyViaHeaders for HttpKeyArg<'_, HeaderMap> {
    fn add_to(&self, key: &mut CallKeyBuilder) {
        let mut pairs: Vec<(&str, &[u8])> = self
            .0
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        // By name only, keeping each name's values in the order received: a repeated field in
        // another order is another request (`HeaderMap::get` reads its first value).
        pairs.sort_by(|a, b| a.0.cmp(b.0));
        key.arg(&pairs);
    }
}

impl HttpKeyViaHeaders for HttpKeyArg<'_, Uri> {
    fn add_to(&self, key: &mut CallKeyBuilder) {
        key.arg(&self.0.to_string());
    }
}

impl HttpKeyViaHeaders for HttpKeyArg<'_, Method> {
    fn add_to(&self, key: &mut CallKeyBuilder) {
        key.arg(self.0.as_str());
    }
}

/// Key contribution of any serializable argument.
pub trait HttpKeyViaSerialize {
    /// Adds the value to the key.
    fn add_to(&self, key: &mut CallKeyBuilder);
}

impl<T: serde::Serialize + ?Sized> HttpKeyViaSerialize for &HttpKeyArg<'_, T> {
    fn add_to(&self, key: &mut CallKeyBuilder) {
        key.arg(self.0);
    }
}
