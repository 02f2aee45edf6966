//! HTTP caching for axum: `#[cached(http)]` handlers, [`CacheLayer`] for whole routers, and the
//! validators (ETag / `If-None-Match` → 304) both use.
//!
//! Both store whole responses (status, headers, body) in any backend and answer conditional
//! requests. What is cached:
//! - `GET` and `HEAD` only; other methods pass straight through;
//! - `2xx` responses other than `206`;
//! - never a response carrying `Set-Cookie`, `Cache-Control: no-store` or `private`;
//! - bodies up to a size limit (larger ones stream through uncached).
//!
//! Replies carry a strong `ETag` (a SHA-256 of the body and its representation headers, the same in
//! every process), `Cache-Control` and `Age`. A request whose `If-None-Match` matches (weak
//! comparison, lists, `*`) gets `304 Not Modified` with `ETag`, `Cache-Control` and `Vary`.

mod cache_control;
mod conditional;
mod handler;
mod layer;
mod policy;
mod range;
mod response;
mod scoped;

pub use axum::response::{IntoResponse, Response};
pub use layer::{CacheLayer, CacheService, ResponseFuture, DEFAULT_PROXY_STALE_IF_UNREACHABLE};
pub use scoped::{ScopeLayer, ScopeService};

/// Default limit on the size of a cached body (8 MiB).
pub const DEFAULT_MAX_BODY: usize = 8 * 1024 * 1024;

#[doc(hidden)]
pub use handler::{
    after_mutation, fresh_reply, outcome, serve, CachedResponse, HttpKeyArg, HttpKeyViaHeaders,
    HttpKeyViaSerialize, RequestInfo,
};
