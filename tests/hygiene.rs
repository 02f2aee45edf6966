//! The locals of the code `#[cached]` generates (`__cache_key`, `__cache_shape`, ...) are hidden
//! from the fn (`Span::mixed_site()`): arguments, template values and locals of the body named like
//! them are the user's own, never shadowed by the generated ones and never colliding with them.
//! (That a body cannot name a generated local is a UI case: tests/ui/body_names_generated_local.rs.)

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};

use axum::{
    extract::{Path, Query},
    routing::get,
    Router,
};
use cache_runtime::cached;
use serde::{Deserialize, Serialize};
use support::http::TestServer;

static DEFAULT_KEY_RUNS: AtomicUsize = AtomicUsize::new(0);

/// Arguments named like the generated locals, in the default key, and locals of the body named like
/// others.
#[cached(ttl = 60)]
async fn default_key(__cache_key: u64, __cache_shape: u64) -> u64 {
    DEFAULT_KEY_RUNS.fetch_add(1, Ordering::SeqCst);
    let __cache_result = __cache_key * 10;
    let __cache_body = __cache_shape;
    let mut __cache_out = __cache_result;
    __cache_out += __cache_body;
    __cache_out
}

#[tokio::test]
async fn arguments_and_locals_named_like_generated_ones_are_the_users() {
    assert_eq!(default_key(4, 2).await, 42);
    assert_eq!(default_key(4, 2).await, 42);
    assert_eq!(
        DEFAULT_KEY_RUNS.load(Ordering::SeqCst),
        1,
        "the second call hits"
    );
    // Each argument is in the key: other values are other entries.
    assert_eq!(default_key(4, 3).await, 43);
    assert_eq!(default_key(5, 2).await, 52);
    assert_eq!(DEFAULT_KEY_RUNS.load(Ordering::SeqCst), 3);
    assert_ne!(default_key_key(4, 2), default_key_key(4, 3));
    assert_ne!(default_key_key(4, 2), default_key_key(5, 2));
}

static TEMPLATE_RUNS: AtomicUsize = AtomicUsize::new(0);

/// Template values and group values named like the locals the rendering uses.
#[cached(
    ttl = 60,
    key = "hyg:{__cache_text}:{__cache_key}",
    group = "hyg_group:{__cache_names}"
)]
async fn template(__cache_text: String, __cache_key: u64, __cache_names: u64) -> String {
    TEMPLATE_RUNS.fetch_add(1, Ordering::SeqCst);
    format!("{__cache_text}-{__cache_key}-{__cache_names}")
}

#[tokio::test]
async fn template_values_named_like_generated_locals_are_the_arguments() {
    assert_eq!(template_key("a".into(), 1, 9), "hyg:a:1");
    assert_eq!(template("a".into(), 1, 9).await, "a-1-9");
    assert_eq!(template("a".into(), 1, 9).await, "a-1-9");
    assert_eq!(
        TEMPLATE_RUNS.load(Ordering::SeqCst),
        1,
        "the second call hits"
    );
    cache_runtime::invalidate_group("hyg_group:9")
        .await
        .unwrap();
    assert_eq!(template("a".into(), 1, 9).await, "a-1-9");
    assert_eq!(
        TEMPLATE_RUNS.load(Ordering::SeqCst),
        2,
        "the group is rendered from the argument"
    );
}

static COMPANION_RUNS: AtomicUsize = AtomicUsize::new(0);

/// Companions take the fn's arguments beside their own: `<fn>_prime` its value, `<fn>_refresh`
/// plain names for arguments bound by patterns (`(a, b)` here), neither of which may collide with
/// an argument's name.
#[cached(ttl = 60)]
async fn companions(__cache_arg1: u64, (a, b): (u64, u64), value: u64, cached_value: u64) -> u64 {
    COMPANION_RUNS.fetch_add(1, Ordering::SeqCst);
    __cache_arg1 + a + b + value + cached_value
}

#[tokio::test]
async fn companions_do_not_collide_with_arguments() {
    assert_eq!(companions(1, (2, 3), 4, 5).await, 15);
    assert_eq!(companions(1, (2, 3), 4, 5).await, 15);
    assert_eq!(COMPANION_RUNS.load(Ordering::SeqCst), 1);
    companions_prime(1, (2, 3), 4, 5, 100).await.unwrap();
    assert_eq!(companions(1, (2, 3), 4, 5).await, 100);
    assert_eq!(companions_peek(1, (2, 3), 4, 5).await, Some(100));
    assert_eq!(companions_refresh(1, (2, 3), 4, 5).await, 15);
    assert_eq!(COMPANION_RUNS.load(Ordering::SeqCst), 2);
    assert_eq!(companions(1, (2, 3), 4, 5).await, 15);
    assert_eq!(COMPANION_RUNS.load(Ordering::SeqCst), 2);
}

struct Repo {
    base: u64,
}

static METHOD_RUNS: AtomicUsize = AtomicUsize::new(0);

impl Repo {
    /// A method: `self` and an argument named like the generated flag of a refresh.
    #[cached(ttl = 60, key = "hyg_method:{__cache_refresh}")]
    async fn load(&self, __cache_refresh: bool, __cache_groups: u64) -> Result<u64, String> {
        METHOD_RUNS.fetch_add(1, Ordering::SeqCst);
        let __cache_errors = u64::from(__cache_refresh);
        Ok(self.base + __cache_errors + __cache_groups)
    }
}

#[tokio::test]
async fn a_methods_arguments_named_like_generated_locals_are_its_own() {
    let repo = Repo { base: 10 };
    assert_eq!(repo.load(true, 5).await, Ok(16));
    assert_eq!(repo.load(true, 5).await, Ok(16));
    assert_eq!(repo.load(false, 5).await, Ok(15));
    assert_eq!(
        METHOD_RUNS.load(Ordering::SeqCst),
        2,
        "`true` is not a forced refresh, and each value has its entry"
    );
}

#[derive(Serialize, Deserialize)]
struct Page {
    n: u64,
}

static HANDLER_RUNS: AtomicUsize = AtomicUsize::new(0);

/// A handler whose patterns bind the names its rewrite gives its arguments (`__cache_arg0`, ...)
/// and its request (`__cache_http`).
#[cached(http, ttl = 60, key = "hyg_handler:{__cache_arg1}:{__cache_arg0.n}")]
async fn handler(Path(__cache_arg1): Path<u64>, Query(__cache_arg0): Query<Page>) -> String {
    HANDLER_RUNS.fetch_add(1, Ordering::SeqCst);
    format!("{}-{}", __cache_arg1, __cache_arg0.n)
}

#[cached(http, ttl = 60)]
async fn handler_http(Path(__cache_http): Path<u64>) -> String {
    HANDLER_RUNS.fetch_add(1, Ordering::SeqCst);
    format!("http-{__cache_http}")
}

#[tokio::test]
async fn handler_patterns_named_like_generated_arguments_are_the_users() {
    let app = Router::new()
        .route("/h/{id}", get(handler))
        .route("/http/{id}", get(handler_http));
    let server = TestServer::start(app).await;
    assert_eq!(server.get("/h/7?n=3").await.body, "7-3");
    assert_eq!(server.get("/h/7?n=3").await.body, "7-3");
    assert_eq!(
        HANDLER_RUNS.load(Ordering::SeqCst),
        1,
        "the second request hits"
    );
    assert_eq!(server.get("/h/7?n=4").await.body, "7-4");
    assert_eq!(server.get("/http/8").await.body, "http-8");
    assert_eq!(server.get("/http/8").await.body, "http-8");
    assert_eq!(HANDLER_RUNS.load(Ordering::SeqCst), 3);
}

/// A type named like a primitive integer (an alias, here) is keyed through serde like any other:
/// the generated code writes only real integers without serde.
mod shadowed {
    use super::*;

    #[allow(non_camel_case_types)]
    type u32 = String;

    pub(super) static RUNS: AtomicUsize = AtomicUsize::new(0);

    #[cached(ttl = 60)]
    pub(super) async fn shadowed_integer(id: u32, n: u64) -> usize {
        RUNS.fetch_add(1, Ordering::SeqCst);
        id.len() + n as usize
    }
}

#[tokio::test]
async fn a_type_named_like_an_integer_is_keyed_as_what_it_is() {
    use shadowed::{shadowed_integer, shadowed_integer_key, RUNS};
    assert_eq!(shadowed_integer("abc".into(), 1).await, 4);
    assert_eq!(shadowed_integer("abc".into(), 1).await, 4);
    assert_eq!(shadowed_integer("abcd".into(), 1).await, 5);
    assert_eq!(RUNS.load(Ordering::SeqCst), 2);
    let documented = cache_runtime::key::default_key(
        &format!("{}::shadowed", module_path!()),
        "shadowed_integer",
        &("abc", 1u64),
    );
    assert_eq!(shadowed_integer_key("abc".into(), 1), documented);
}
