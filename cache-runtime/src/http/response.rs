//! A whole response in a form that can be stored, and the reply built from it.

use axum::{
    body::Body,
    http::{
        header::{self, HeaderName, HeaderValue},
        HeaderMap, Response, StatusCode,
    },
};
use base64::{engine::general_purpose::STANDARD, Engine};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http_body_util::{BodyExt, BodyStream, StreamBody};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, OnceLock};

use super::{
    cache_control::split_list,
    conditional::{none_match, strong_etag},
    policy::Rules,
};
use crate::envelope::now_ms;

/// Headers never stored: hop-by-hop ones, and those rebuilt on every reply.
const NOT_STORED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "age",
    "etag",
    "x-cache",
    "content-length",
];

/// The field that says how the layer answered (`HIT`, `MISS`, `STALE`...).
const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// Headers a `304` does not update in the stored response (RFC 9111 §3.2): besides those never
/// stored, the body's length and the validator this cache made itself.
const NOT_UPDATED: &[&str] = &["content-length"];

/// Headers that identify a representation, hashed into the ETag with the body.
const REPRESENTATION: &[&str] = &["content-type", "content-encoding", "content-language"];

/// A stored response: status, headers and body, with its validator and age. Shared behind an `Arc`,
/// so that a memory hit clones a pointer, not the headers.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct CachedResponse(Arc<ResponseParts>);

impl std::ops::Deref for CachedResponse {
    type Target = ResponseParts;

    fn deref(&self) -> &ResponseParts {
        &self.0
    }
}

impl Serialize for CachedResponse {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for CachedResponse {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        ResponseParts::deserialize(deserializer).map(|parts| Self(Arc::new(parts)))
    }
}

/// What a [`CachedResponse`] holds.
#[doc(hidden)]
#[derive(Debug, Serialize, Deserialize)]
pub struct ResponseParts {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    #[serde(with = "body_repr")]
    pub(crate) body: Bytes,
    pub(crate) etag: String,
    /// Whether `etag` was made by this cache (the origin sent none): never sent to the origin.
    #[serde(default)]
    pub(crate) generated_etag: bool,
    /// When the response was produced (ms since the Unix epoch): its age is counted from here.
    pub(crate) stored_ms: u64,
    /// How long it is fresh.
    pub(crate) ttl_ms: u64,
    /// What the response's directives say about reusing it.
    #[serde(default)]
    pub(crate) rules: Rules,
    /// The groups a response header named for it (a layer's `groups_from_header`).
    #[serde(default)]
    pub(crate) groups: Vec<String>,
    /// The parts of a reply that do not change between hits, built by the first one.
    #[serde(skip)]
    prepared: OnceLock<Prepared>,
}

/// Ages below this many seconds are sent from a table built once (a reply then allocates nothing
/// for its `Age`).
const TABULATED_AGES: u64 = 3600;

/// The `Age` header value for `seconds`.
fn age_value(seconds: u64) -> HeaderValue {
    static AGES: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    if seconds >= TABULATED_AGES {
        return HeaderValue::from(seconds);
    }
    let ages = AGES.get_or_init(|| {
        // One allocation for all the digits, kept for the process: the values borrow it, so
        // cloning one copies a pointer and a length.
        let mut digits = String::new();
        let mut ends = Vec::with_capacity(TABULATED_AGES as usize);
        for age in 0..TABULATED_AGES {
            let _ = std::fmt::Write::write_fmt(&mut digits, format_args!("{age}"));
            ends.push(digits.len());
        }
        let digits: &'static str = Box::leak(digits.into_boxed_str());
        let mut start = 0;
        ends.into_iter()
            .map(|end| {
                let value = HeaderValue::from_static(&digits[start..end]);
                start = end;
                value
            })
            .collect()
    });
    ages[seconds as usize].clone()
}

/// What every reply of one stored response shares, built once: its headers parsed, its `ETag`,
/// and its `Cache-Control` values (`None` where a value is not a valid header value: not sent).
#[derive(Debug)]
struct Prepared {
    headers: Vec<(HeaderName, HeaderValue)>,
    etag: Option<HeaderValue>,
    /// The handler's `Cache-Control` as stored, if it sent one.
    stored_cache_control: Option<HeaderValue>,
    /// `public, max-age=<lifetime>`: what the layer sends when the origin sent none.
    default_cache_control: Option<HeaderValue>,
    /// The handler's directives other than visibility and freshness, each preceded by `", "`.
    kept_directives: String,
    /// The attribute's `<visibility>, max-age=<lifetime><kept directives>`, for the visibility
    /// first asked for (a handler always asks with the same one).
    origin_cache_control: OnceLock<(String, Option<HeaderValue>)>,
    /// The fields of a full reply (the stored headers, `ETag`, `Cache-Control`, `Age` and
    /// `X-Cache`) with the `Cache-Control` and `X-Cache` values first asked for by a hit (a layer
    /// or a handler always asks with the same ones): a reply clones them and replaces `Age`.
    shaped_reply: OnceLock<(Option<HeaderValue>, Option<&'static str>, HeaderMap)>,
}

impl Prepared {
    /// The fields of a full reply with these `Cache-Control` and `X-Cache` values (an `Age`
    /// to be replaced).
    fn full_reply(
        &self,
        cache_control: Option<HeaderValue>,
        x_cache: Option<&'static str>,
    ) -> HeaderMap {
        if let Some((shaped_cache_control, shaped_x_cache, shaped)) = self.shaped_reply.get() {
            let mut headers = shaped.clone();
            if *shaped_cache_control != cache_control || *shaped_x_cache != x_cache {
                set_reply_fields(&mut headers, cache_control, x_cache);
            }
            return headers;
        }
        // Room in its index beyond the 4 fields added here (clones keep it): the `Content-Length`
        // the router adds then does not rehash the map.
        let mut headers = HeaderMap::with_capacity(self.headers.len() + 8);
        for (name, value) in &self.headers {
            headers.append(name.clone(), value.clone());
        }
        if let Some(etag) = &self.etag {
            headers.insert(header::ETAG, etag.clone());
        }
        headers.insert(header::AGE, HeaderValue::from_static("0"));
        set_reply_fields(&mut headers, cache_control.clone(), x_cache);
        // Kept for the shape of hits; the first reply may be another (`STALE`, `REVALIDATED`).
        if matches!(x_cache, None | Some("HIT")) {
            let _ = self
                .shaped_reply
                .set((cache_control, x_cache, headers.clone()));
        }
        headers
    }

    fn origin_cache_control(&self, visibility: &str, lifetime: u64) -> Option<HeaderValue> {
        let build = || {
            HeaderValue::from_str(&format!(
                "{visibility}, max-age={lifetime}{}",
                self.kept_directives
            ))
            .ok()
        };
        let (built_for, value) = self
            .origin_cache_control
            .get_or_init(|| (visibility.to_owned(), build()));
        if built_for == visibility {
            value.clone()
        } else {
            build()
        }
    }
}

/// What to put in `Cache-Control` on a reply.
pub(crate) enum ReplyCacheControl<'a> {
    /// `<visibility>, max-age=<lifetime>` with the handler's other directives (`Age` says how
    /// much of the lifetime is gone): the attribute, which is the origin.
    Origin(&'a str),
    /// The stored `Cache-Control` as received; when there is none and `default` is set,
    /// `public, max-age=<lifetime>`: the layer, which is a cache in front of the origin.
    Shared { default: bool },
}

/// When a captured response was produced, how long it is fresh, and its reuse rules.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stamp {
    pub(crate) stored_ms: u64,
    pub(crate) ttl_ms: u64,
    pub(crate) rules: Rules,
}

impl Stamp {
    /// The stamp `cached` has.
    pub(crate) fn of(cached: &CachedResponse) -> Self {
        Self {
            stored_ms: cached.stored_ms,
            ttl_ms: cached.ttl_ms,
            rules: cached.rules,
        }
    }

    /// Produced now, fresh for `ttl_ms`.
    pub(crate) fn now(ttl_ms: u64) -> Self {
        Self {
            stored_ms: now_ms(),
            ttl_ms,
            rules: Rules::default(),
        }
    }
}

impl CachedResponse {
    /// Reads a whole response into memory if it is at most `max_body` bytes; otherwise gives the
    /// response back, intact and still streaming.
    ///
    /// Headers are stored as received (without hop-by-hop ones); a `Date` is added when the
    /// response has none (RFC 9110 §6.6.1). Also returns the headers as received, for a reply
    /// that passes the response on.
    pub(crate) async fn capture(
        response: Response<Body>,
        stamp: Stamp,
        max_body: usize,
    ) -> Result<(Self, HeaderMap), Response<Body>> {
        let (parts, body) = response.into_parts();
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > max_body as u64) {
            return Err(Response::from_parts(parts, body));
        }
        let mut headers = Vec::with_capacity(parts.headers.len());
        let connection = connection_fields(&parts.headers);
        for (name, value) in &parts.headers {
            if NOT_STORED.contains(&name.as_str()) || connection.iter().any(|c| c == name.as_str())
            {
                continue;
            }
            match value.to_str() {
                Ok(text) => headers.push((name.as_str().to_owned(), text.to_owned())),
                // Not representable as text: do not cache rather than alter it.
                Err(_) => return Err(Response::from_parts(parts, body)),
            }
        }
        if !parts.headers.contains_key(header::DATE) {
            headers.push((
                "date".to_owned(),
                super::policy::format_date(now_ms() / 1000),
            ));
        }
        let body = match read_limited(body, max_body).await {
            Ok(bytes) => bytes,
            Err(body) => return Err(Response::from_parts(parts, body)),
        };
        let origin_etag = parts
            .headers
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok());
        let etag = match origin_etag {
            Some(tag) => tag.to_owned(),
            None => {
                let representation: Vec<(&str, &[u8])> = REPRESENTATION
                    .iter()
                    .filter_map(|name| Some((*name, parts.headers.get(*name)?.as_bytes())))
                    .collect();
                strong_etag(&representation, &body)
            }
        };
        let generated_etag = origin_etag.is_none();
        let cached = Self(Arc::new(ResponseParts {
            status: parts.status.as_u16(),
            headers,
            body,
            etag,
            generated_etag,
            stored_ms: stamp.stored_ms,
            ttl_ms: stamp.ttl_ms,
            rules: stamp.rules,
            groups: Vec::new(),
            prepared: OnceLock::new(),
        }));
        Ok((cached, parts.headers))
    }

    /// This response updated with the header fields of a `304 Not Modified` that validated it
    /// (RFC 9111 §3.2, §4.3.4), with a new age and lifetime.
    pub(crate) fn merged(&self, update: &HeaderMap, stamp: Stamp) -> Self {
        let connection = connection_fields(update);
        let updated = |name: &str| {
            update.contains_key(name)
                && !NOT_STORED.contains(&name)
                && !NOT_UPDATED.contains(&name)
                && !connection.iter().any(|c| c == name)
        };
        let mut headers: Vec<(String, String)> = self
            .headers
            .iter()
            .filter(|(name, _)| !updated(name))
            .cloned()
            .collect();
        for (name, value) in update {
            if updated(name.as_str()) {
                if let Ok(text) = value.to_str() {
                    headers.push((name.as_str().to_owned(), text.to_owned()));
                }
            }
        }
        let (etag, generated_etag) = match update.get(header::ETAG).and_then(|v| v.to_str().ok()) {
            Some(tag) => (tag.to_owned(), false),
            None => (self.etag.clone(), self.generated_etag),
        };
        Self(Arc::new(ResponseParts {
            status: self.status,
            headers,
            body: self.body.clone(),
            etag,
            generated_etag,
            stored_ms: stamp.stored_ms,
            ttl_ms: stamp.ttl_ms,
            rules: stamp.rules,
            groups: self.groups.clone(),
            prepared: OnceLock::new(),
        }))
    }

    /// This response, filed under `groups` (named by a response header).
    pub(crate) fn filed_under(self, groups: Vec<String>) -> Self {
        if self.groups == groups {
            return self;
        }
        Self(Arc::new(ResponseParts {
            status: self.status,
            headers: self.headers.clone(),
            body: self.body.clone(),
            etag: self.etag.clone(),
            generated_etag: self.generated_etag,
            stored_ms: self.stored_ms,
            ttl_ms: self.ttl_ms,
            rules: self.rules,
            groups,
            prepared: OnceLock::new(),
        }))
    }

    /// The validators to send to the origin to revalidate this response: its `ETag` if the
    /// origin made it, and its `Last-Modified`.
    pub(crate) fn validators(&self) -> (Option<&str>, Option<&str>) {
        let etag = (!self.generated_etag).then_some(self.etag.as_str());
        let modified = self
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("last-modified"))
            .map(|(_, v)| v.as_str());
        (etag, modified)
    }

    /// The stored response passed on as the origin sent it (`headers` as received), with the
    /// validator and `Date` this cache added.
    pub(crate) fn passthrough(&self, mut headers: HeaderMap) -> Response<Body> {
        if self.generated_etag {
            if let Ok(value) = HeaderValue::from_str(&self.etag) {
                headers.insert(header::ETAG, value);
            }
        }
        if !headers.contains_key(header::DATE) {
            if let Some(Ok(date)) = self.header("date").map(|d| HeaderValue::from_str(&d)) {
                headers.insert(header::DATE, date);
            }
        }
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::TRANSFER_ENCODING);
        let mut response = Response::new(Body::from(self.body.clone()));
        *response.status_mut() = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        *response.headers_mut() = headers;
        response
    }

    /// How old the response is now, in ms.
    pub(crate) fn age_ms(&self) -> u64 {
        now_ms().saturating_sub(self.stored_ms)
    }

    /// Every value of a stored header, joined with `, ` (the list form of a repeated field).
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    }

    fn prepared(&self) -> &Prepared {
        self.prepared.get_or_init(|| {
            let headers = self
                .headers
                .iter()
                .filter(|(name, _)| !name.eq_ignore_ascii_case("cache-control"))
                .filter_map(|(name, value)| {
                    Some((
                        HeaderName::from_bytes(name.as_bytes()).ok()?,
                        HeaderValue::from_str(value).ok()?,
                    ))
                })
                .collect();
            let cache_control = self.header("cache-control");
            let mut kept_directives = String::new();
            for directive in split_list(cache_control.as_deref().unwrap_or_default()) {
                let name = directive
                    .split('=')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                if !matches!(name.as_str(), "public" | "private" | "max-age") {
                    kept_directives.push_str(", ");
                    kept_directives.push_str(directive);
                }
            }
            let lifetime = self.ttl_ms / 1000;
            Prepared {
                headers,
                etag: HeaderValue::from_str(&self.etag).ok(),
                stored_cache_control: cache_control
                    .as_deref()
                    .and_then(|value| HeaderValue::from_str(value).ok()),
                default_cache_control: HeaderValue::from_str(&format!(
                    "public, max-age={lifetime}"
                ))
                .ok(),
                kept_directives,
                origin_cache_control: OnceLock::new(),
                shaped_reply: OnceLock::new(),
            }
        })
    }

    /// Builds the reply: the stored response, or `304 Not Modified` when `if_none_match` matches.
    pub(crate) fn reply(
        &self,
        cache_control: ReplyCacheControl<'_>,
        if_none_match: &[HeaderValue],
        x_cache: Option<&'static str>,
    ) -> Response<Body> {
        self.reply_to(
            cache_control,
            none_match(if_none_match, &self.etag),
            x_cache,
        )
    }

    /// Builds the reply: the stored response, or `304 Not Modified` (with the fields RFC 9110
    /// §15.4.5 lists) when `not_modified`.
    pub(crate) fn reply_to(
        &self,
        cache_control: ReplyCacheControl<'_>,
        not_modified: bool,
        x_cache: Option<&'static str>,
    ) -> Response<Body> {
        self.reply_at(cache_control, not_modified, x_cache, self.age_ms())
    }

    /// [`reply_to`](Self::reply_to), `age_ms` old.
    pub(crate) fn reply_at(
        &self,
        cache_control: ReplyCacheControl<'_>,
        not_modified: bool,
        x_cache: Option<&'static str>,
        age_ms: u64,
    ) -> Response<Body> {
        // Whole seconds, as HTTP counts them: Age is floored; max-age is the whole lifetime, of
        // which Age says how much is gone (RFC 9111 §4.2.3).
        let lifetime = self.ttl_ms / 1000;
        let prepared = self.prepared();
        let cache_control = match cache_control {
            // The handler's own directives (no-cache, must-revalidate, s-maxage...) are kept;
            // visibility and max-age are the cache's.
            ReplyCacheControl::Origin(visibility) => {
                prepared.origin_cache_control(visibility, lifetime)
            }
            ReplyCacheControl::Shared { default } => match &prepared.stored_cache_control {
                Some(stored) => Some(stored.clone()),
                None if default => prepared.default_cache_control.clone(),
                None => None,
            },
        };
        let mut headers = if not_modified {
            let mut headers = HeaderMap::with_capacity(prepared.headers.len() + 4);
            for (name, value) in &prepared.headers {
                let kept = name == header::VARY
                    || name == header::CONTENT_LOCATION
                    || name == header::DATE
                    || name == header::EXPIRES;
                if kept {
                    headers.append(name.clone(), value.clone());
                }
            }
            if let Some(etag) = &prepared.etag {
                headers.insert(header::ETAG, etag.clone());
            }
            set_reply_fields(&mut headers, cache_control, x_cache);
            headers
        } else {
            prepared.full_reply(cache_control, x_cache)
        };
        headers.insert(header::AGE, age_value(age_ms / 1000));
        let (status, body) = if not_modified {
            (StatusCode::NOT_MODIFIED, Body::empty())
        } else {
            (
                StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK),
                Body::from(self.body.clone()),
            )
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
    }
}

/// Sets a reply's `Cache-Control` and `X-Cache` (the layer's own constants: `HIT`, `STALE`...),
/// or removes them for `None`.
fn set_reply_fields(
    headers: &mut HeaderMap,
    cache_control: Option<HeaderValue>,
    x_cache: Option<&'static str>,
) {
    match cache_control {
        Some(cache_control) => headers.insert(header::CACHE_CONTROL, cache_control),
        None => headers.remove(header::CACHE_CONTROL),
    };
    match x_cache {
        Some(x_cache) => headers.insert(X_CACHE, HeaderValue::from_static(x_cache)),
        None => headers.remove(X_CACHE),
    };
}

/// The fields a `Connection` header names: hop-by-hop too (RFC 9110 §7.6.1), never stored.
fn connection_fields(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(split_list)
        .map(str::to_ascii_lowercase)
        .collect()
}

/// Collects `body` if it has at most `limit` bytes and no trailers. Otherwise returns a body that
/// replays what was read and streams the rest, so nothing is lost.
async fn read_limited(mut body: Body, limit: usize) -> Result<Bytes, Body> {
    let mut collected = BytesMut::new();
    let mut frames = Vec::new();
    loop {
        match body.frame().await {
            None => return Ok(collected.freeze()),
            Some(Ok(frame)) => {
                let within = frame
                    .data_ref()
                    .is_some_and(|data| collected.len() + data.len() <= limit);
                if within {
                    if let Some(data) = frame.data_ref() {
                        collected.extend_from_slice(data);
                    }
                    frames.push(frame);
                } else {
                    frames.push(frame);
                    return Err(replay(frames, Some(body), None));
                }
            }
            Some(Err(error)) => return Err(replay(frames, None, Some(error))),
        }
    }
}

fn replay(
    frames: Vec<http_body::Frame<Bytes>>,
    rest: Option<Body>,
    error: Option<axum::Error>,
) -> Body {
    let head = futures_util::stream::iter(frames.into_iter().map(Ok::<_, axum::Error>));
    let tail = futures_util::stream::iter(error.map(Err));
    match rest {
        Some(rest) => Body::new(StreamBody::new(
            head.chain(BodyStream::new(rest)).chain(tail),
        )),
        None => Body::new(StreamBody::new(head.chain(tail))),
    }
}

/// Bodies are stored as raw bytes in binary codecs (MessagePack). In human-readable ones (JSON),
/// as text when they are UTF-8 (JSON, HTML) and as base64 otherwise.
mod body_repr {
    use super::*;

    #[derive(Serialize, Deserialize)]
    enum Repr {
        #[serde(rename = "text")]
        Text(String),
        #[serde(rename = "base64")]
        Base64(String),
    }

    pub(super) fn serialize<S: serde::Serializer>(body: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        if !s.is_human_readable() {
            return s.serialize_bytes(body);
        }
        match std::str::from_utf8(body) {
            Ok(text) => Repr::Text(text.to_owned()),
            Err(_) => Repr::Base64(STANDARD.encode(body)),
        }
        .serialize(s)
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        if !d.is_human_readable() {
            return d.deserialize_byte_buf(Raw);
        }
        match Repr::deserialize(d)? {
            Repr::Text(text) => Ok(Bytes::from(text)),
            Repr::Base64(b64) => STANDARD
                .decode(b64)
                .map(Bytes::from)
                .map_err(serde::de::Error::custom),
        }
    }

    /// A body stored as raw bytes.
    struct Raw;

    impl<'de> serde::de::Visitor<'de> for Raw {
        type Value = Bytes;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a response body as bytes")
        }

        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
            Ok(Bytes::copy_from_slice(v))
        }

        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
            Ok(Bytes::from(v))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tabulated_ages_are_the_decimal_seconds() {
        for seconds in [
            0,
            1,
            9,
            10,
            59,
            600,
            TABULATED_AGES - 1,
            TABULATED_AGES,
            86_400,
        ] {
            assert_eq!(age_value(seconds).to_str().unwrap(), seconds.to_string());
        }
    }

    fn response(body: Body) -> Response<Body> {
        let mut r = Response::new(body);
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        r
    }

    #[tokio::test]
    async fn captures_and_replays_with_validators() {
        let (cached, _) =
            CachedResponse::capture(response(Body::from("hello")), Stamp::now(60_000), 1024)
                .await
                .unwrap();
        assert_eq!(cached.body, "hello");
        assert!(cached.header("connection").is_none());
        assert_eq!(cached.header("content-type").as_deref(), Some("text/plain"));
        let reply = cached.reply(ReplyCacheControl::Origin("public"), &[], Some("HIT"));
        assert_eq!(reply.status(), StatusCode::OK);
        assert_eq!(reply.headers()[header::ETAG], cached.etag.as_str());
        assert_eq!(reply.headers()[header::CACHE_CONTROL], "public, max-age=60");
        assert_eq!(reply.headers()["x-cache"], "HIT");
        let etag: HeaderValue = cached.etag.parse().unwrap();
        let not_modified = cached.reply(ReplyCacheControl::Origin("public"), &[etag], None);
        assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
        assert!(not_modified.headers().get(header::CONTENT_TYPE).is_none());
        let body = not_modified.into_body().collect().await.unwrap().to_bytes();
        assert!(body.is_empty());
    }

    #[tokio::test]
    async fn replies_of_every_shape_carry_their_own_fields() {
        let (cached, _) =
            CachedResponse::capture(response(Body::from("hello")), Stamp::now(60_000), 1024)
                .await
                .unwrap();
        // The first reply of a shape is kept for the next ones: alternate, and come back.
        let shapes = [
            (ReplyCacheControl::Shared { default: true }, Some("HIT")),
            (ReplyCacheControl::Origin("private"), None),
            (ReplyCacheControl::Shared { default: false }, Some("STALE")),
            (ReplyCacheControl::Origin("public"), Some("HIT")),
            (ReplyCacheControl::Shared { default: true }, Some("HIT")),
            (ReplyCacheControl::Shared { default: false }, None),
        ];
        for (round, (cache_control, x_cache)) in shapes.into_iter().enumerate() {
            let expected = match cache_control {
                ReplyCacheControl::Origin(visibility) => Some(format!("{visibility}, max-age=60")),
                ReplyCacheControl::Shared { default: true } => Some("public, max-age=60".into()),
                ReplyCacheControl::Shared { default: false } => None,
            };
            let reply = cached.reply_to(cache_control, false, x_cache);
            let headers = reply.headers();
            let all = |name| {
                headers
                    .get_all(name)
                    .iter()
                    .map(|v| v.to_str().unwrap().to_owned())
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                all(header::CACHE_CONTROL),
                Vec::from_iter(expected),
                "{round}"
            );
            assert_eq!(
                all(X_CACHE),
                Vec::from_iter(x_cache.map(str::to_owned)),
                "{round}"
            );
            assert_eq!(all(header::AGE), ["0"], "{round}");
            assert_eq!(
                all(header::ETAG),
                std::slice::from_ref(&cached.etag),
                "{round}"
            );
            assert_eq!(all(header::CONTENT_TYPE), ["text/plain"], "{round}");
            assert!(headers.get(header::CONTENT_LENGTH).is_none(), "{round}");
            assert_eq!(
                headers.keys().count(),
                headers.len(),
                "{round}: one value per field"
            );
        }
    }

    #[tokio::test]
    async fn oversized_bodies_come_back_whole() {
        let chunks = (0..10).map(|i| Ok::<_, std::io::Error>(Bytes::from(vec![b'a' + i; 100])));
        let body = Body::from_stream(futures_util::stream::iter(chunks));
        let passed = CachedResponse::capture(response(body), Stamp::now(60_000), 250)
            .await
            .unwrap_err();
        let bytes = passed.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(bytes.len(), 1000);
        assert_eq!(bytes[999], b'j');
    }

    #[tokio::test]
    async fn a_304_merge_keeps_connection_fields_out() {
        let (cached, _) =
            CachedResponse::capture(response(Body::from("x")), Stamp::now(60_000), 1024)
                .await
                .unwrap();
        let mut update = HeaderMap::new();
        update.insert(header::CONNECTION, HeaderValue::from_static("x-hop"));
        update.insert("x-hop", HeaderValue::from_static("secret"));
        update.insert("x-kept", HeaderValue::from_static("yes"));
        let merged = cached.merged(&update, Stamp::now(60_000));
        assert!(
            merged.header("x-hop").is_none(),
            "named by Connection: hop-by-hop"
        );
        assert!(merged.header("connection").is_none());
        assert_eq!(merged.header("x-kept").as_deref(), Some("yes"));
    }

    #[test]
    fn binary_bodies_survive_serialization() {
        let cached = CachedResponse(Arc::new(ResponseParts {
            status: 200,
            headers: vec![],
            body: Bytes::from_static(&[0, 159, 146, 150]),
            etag: "\"x\"".into(),
            generated_etag: true,
            stored_ms: 0,
            ttl_ms: 0,
            rules: Rules::default(),
            groups: Vec::new(),
            prepared: OnceLock::new(),
        }));
        let json = serde_json::to_string(&cached).unwrap();
        let back: CachedResponse = serde_json::from_str(&json).unwrap();
        assert_eq!(back.body, cached.body);
        assert!(json.contains(r#""base64":"AJ+Slg==""#), "{json}");
        let packed = rmp_serde::to_vec_named(&cached).unwrap();
        let back: CachedResponse = rmp_serde::from_slice(&packed).unwrap();
        assert_eq!(back.body, cached.body);
        // MessagePack `bin 8` of 4 bytes: the body verbatim, no base64.
        let raw = [0xc4, 4, 0, 159, 146, 150];
        assert!(packed.windows(raw.len()).any(|w| w == raw), "{packed:?}");
    }
}
