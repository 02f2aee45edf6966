//! `Caches`: isolated registries. Entries, registrations and flights of one scope are not seen by
//! another; invalidations inside a scope stay there, those outside every scope reach them all;
//! bodies spawned by the runtime keep their caller's scope. Counting how often each body ran.

mod support;

use std::{
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
    time::Duration,
};

use axum::{routing::get, Router};
use cache_runtime::{cached, http::CacheLayer, Caches, MemoryBackend};
use support::http::TestServer;

static PROFILE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 600, key = "profile:{id}", group = "profiles")]
async fn profile(id: u64) -> (u64, usize) {
    let run = PROFILE_RUNS.fetch_add(1, Ordering::SeqCst) + 1;
    (id, run)
}

#[tokio::test]
async fn two_scopes_keep_entries_of_their_own() {
    let (first, second) = (Caches::new(), Caches::new());
    let a = first.scope(profile(1)).await;
    assert_eq!(first.scope(profile(1)).await, a, "a hit in the first scope");
    let b = second.scope(profile(1)).await;
    assert_ne!(a, b, "the second scope computed its own value");
    assert_eq!(second.scope(profile(1)).await, b);
    assert_eq!(
        first.scope(profile(1)).await,
        a,
        "the first scope still has its own"
    );
}

#[tokio::test]
async fn an_invalidation_in_a_scope_stays_in_it() {
    let (first, second) = (Caches::new(), Caches::new());
    let a = first.scope(profile(2)).await;
    let b = second.scope(profile(2)).await;
    first
        .scope(cache_runtime::invalidate_group("profiles"))
        .await
        .unwrap();
    assert_ne!(
        first.scope(profile(2)).await,
        a,
        "invalidated in the first scope"
    );
    assert_eq!(
        second.scope(profile(2)).await,
        b,
        "the second scope is untouched"
    );
    second
        .scope(cache_runtime::invalidate_key(&profile_key(2)))
        .await
        .unwrap();
    assert_ne!(
        second.scope(profile(2)).await,
        b,
        "invalidated by key in the second scope"
    );
}

#[tokio::test]
async fn an_invalidation_outside_every_scope_reaches_them_all() {
    let scoped = Caches::new();
    let before = scoped.scope(profile(3)).await;
    assert_eq!(scoped.scope(profile(3)).await, before);
    cache_runtime::invalidate_key(&profile_key(3))
        .await
        .unwrap();
    assert_ne!(
        scoped.scope(profile(3)).await,
        before,
        "an unscoped invalidation is never lost to a scope"
    );
}

static SLOW_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 600, key = "slow")]
async fn slow() -> usize {
    let run = SLOW_RUNS.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(Duration::from_millis(200)).await;
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_in_two_scopes_share_no_computation() {
    let (first, second) = (Caches::new(), Caches::new());
    let runs = SLOW_RUNS.load(Ordering::SeqCst);
    let (a, b) = tokio::join!(first.scope(slow()), second.scope(slow()));
    assert_eq!(
        SLOW_RUNS.load(Ordering::SeqCst),
        runs + 2,
        "each scope ran its own body (a joined flight would hand one scope the other's value)"
    );
    assert_ne!(a, b);
    assert_eq!(first.scope(slow()).await, a);
    assert_eq!(second.scope(slow()).await, b);
}

static INNER_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 600, key = "inner:{n}")]
async fn inner(n: u64) -> u64 {
    INNER_RUNS.fetch_add(1, Ordering::SeqCst);
    n * 2
}

/// Its body runs in a task of its own (the default `spawn`): the scope must go with it.
#[cached(ttl = 600, key = "outer:{n}")]
async fn outer(n: u64) -> u64 {
    inner(n).await + 1
}

#[tokio::test]
async fn a_spawned_body_keeps_its_callers_scope() {
    let scoped = Caches::new();
    assert_eq!(scoped.scope(outer(5)).await, 11);
    let runs = INNER_RUNS.load(Ordering::SeqCst);
    assert_eq!(scoped.scope(inner(5)).await, 10);
    assert_eq!(
        INNER_RUNS.load(Ordering::SeqCst),
        runs,
        "the nested call stored into the scope's memory, not the process-wide one"
    );
    let other = Caches::new();
    assert_eq!(other.scope(inner(5)).await, 10);
    assert_eq!(
        INNER_RUNS.load(Ordering::SeqCst),
        runs + 1,
        "not in another scope"
    );
}

static STORE_RUNS: AtomicU64 = AtomicU64::new(0);

#[cached(ttl = 600, backend = "scoped-store", key = "stored")]
async fn stored() -> u64 {
    STORE_RUNS.fetch_add(1, Ordering::SeqCst) + 1
}

#[tokio::test]
async fn registrations_are_per_scope() {
    let scoped = Caches::new();
    scoped.register("scoped-store", MemoryBackend::default());
    let inside = scoped.scope(stored()).await;
    assert_eq!(
        scoped.scope(stored()).await,
        inside,
        "cached in the scope's backend"
    );
    assert!(cache_runtime::backend("scoped-store").is_none());
    let outside = stored().await;
    assert_ne!(
        outside, inside,
        "outside the scope the name is unknown: uncached"
    );
    assert_ne!(stored().await, outside);
    assert!(scoped
        .scope(async { cache_runtime::backend("scoped-store") })
        .await
        .is_some());
}

static SLOW_KEYED_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 600, key = "slow-keyed:{n}")]
async fn slow_keyed(n: u64) -> usize {
    tokio::time::sleep(Duration::from_millis(200)).await;
    SLOW_KEYED_RUNS.fetch_add(1, Ordering::SeqCst) + n as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_in_one_scope_costs_another_scope_nothing() {
    let (first, second) = (Caches::new(), Caches::new());
    let computing = {
        let first = first.clone();
        tokio::spawn(async move { first.scope(slow_keyed(9)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    second
        .scope(cache_runtime::invalidate_key(&slow_keyed_key(9)))
        .await
        .unwrap();
    let value = computing.await.unwrap();
    let runs = SLOW_KEYED_RUNS.load(Ordering::SeqCst);
    assert_eq!(
        first.scope(slow_keyed(9)).await,
        value,
        "the first scope's computation was stored: the second scope's invalidation is not its"
    );
    assert_eq!(SLOW_KEYED_RUNS.load(Ordering::SeqCst), runs);
}

static PAGE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(http, ttl = 600, key = "scoped-page")]
async fn page() -> String {
    format!("page {}", PAGE_RUNS.fetch_add(1, Ordering::SeqCst) + 1)
}

static LAYER_RUNS: AtomicUsize = AtomicUsize::new(0);

async fn layered() -> String {
    format!("layered {}", LAYER_RUNS.fetch_add(1, Ordering::SeqCst) + 1)
}

fn app(caches: &Caches) -> Router {
    Router::new()
        .route("/page", get(page))
        .merge(
            Router::new()
                .route("/layered", get(layered))
                .layer(CacheLayer::new().name("scoped-layer")),
        )
        .layer(caches.layer())
}

#[tokio::test]
async fn two_servers_in_two_scopes_cache_apart() {
    let (first, second) = (Caches::new(), Caches::new());
    let (one, two) = (
        TestServer::start(app(&first)).await,
        TestServer::start(app(&second)).await,
    );
    for path in ["/page", "/layered"] {
        let a = one.get(path).await;
        assert_eq!(a.status, 200);
        assert_eq!(
            one.get(path).await.body,
            a.body,
            "{path}: a hit on the first server"
        );
        let b = two.get(path).await;
        assert_ne!(
            b.body, a.body,
            "{path}: the second server's scope has its own entry"
        );
        assert_eq!(two.get(path).await.body, b.body);
    }
    assert_eq!(PAGE_RUNS.load(Ordering::SeqCst), 2);
    assert_eq!(LAYER_RUNS.load(Ordering::SeqCst), 2);
}

/// A `CacheLayer` around a service counting its runs in `runs` (answering `run <n>`), one
/// `GET` for `path`, and the text of a response's body: for the tests of services called in one
/// place and awaited in another.
mod called_apart {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::{body::Body, http::Request, response::Response};
    use cache_runtime::http::{CacheLayer, CacheService};
    use tower::{Layer, Service, ServiceExt};

    /// Answers `run <n>`, counting its runs.
    #[derive(Clone)]
    pub struct Origin(&'static AtomicUsize);

    impl Service<Request<Body>> for Origin {
        type Response = Response<Body>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Response<Body>, Self::Error>>;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<Body>) -> Self::Future {
            let run = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            std::future::ready(Ok(Response::new(Body::from(format!("run {run}")))))
        }
    }

    pub fn service(name: &str, runs: &'static AtomicUsize) -> CacheService<Origin> {
        CacheLayer::new().name(name).layer(Origin(runs))
    }

    pub fn request(path: &str) -> Request<Body> {
        Request::get(format!("http://example.test{path}"))
            .body(Body::empty())
            .unwrap()
    }

    /// `service` polled ready and called with `GET path`: the future, not awaited yet.
    pub async fn call(
        service: &CacheService<Origin>,
        path: &str,
    ) -> <CacheService<Origin> as Service<Request<Body>>>::Future {
        let mut service = service.clone();
        ServiceExt::<Request<Body>>::ready(&mut service)
            .await
            .unwrap()
            .call(request(path))
    }

    pub async fn body(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// A process-wide entry for `path`: its first run, then a hit.
    pub async fn store_process_wide(service: &CacheService<Origin>, path: &str) {
        let first = service.clone().oneshot(request(path)).await.unwrap();
        assert_eq!(body(first).await, "run 1");
        let second = service.clone().oneshot(request(path)).await.unwrap();
        assert_eq!(body(second).await, "run 1", "a process-wide hit");
    }
}

static SERVICE_RUNS: AtomicUsize = AtomicUsize::new(0);

/// A `CacheLayer` service called outside a scope and awaited inside it answers from the scope's
/// store, as the whole call would (the backend a hit reads is resolved where the future runs).
#[tokio::test]
async fn a_layer_called_outside_a_scope_and_awaited_in_it_reads_the_scope() {
    let service = called_apart::service("called-outside", &SERVICE_RUNS);
    called_apart::store_process_wide(&service, "/outside-in").await;
    let caches = Caches::new();
    for round in 0..2 {
        let called = called_apart::call(&service, "/outside-in").await;
        let scoped = called_apart::body(caches.scope(called).await.unwrap()).await;
        assert_eq!(scoped, "run 2", "round {round}: the scope's own entry");
    }
    assert_eq!(SERVICE_RUNS.load(Ordering::SeqCst), 2);
}

static EARLY_CALL_RUNS: AtomicUsize = AtomicUsize::new(0);

/// The same, with the scope created after the call (while no scope may have been alive).
#[tokio::test]
async fn a_layer_called_before_its_scope_exists_reads_the_scope() {
    let service = called_apart::service("called-before", &EARLY_CALL_RUNS);
    called_apart::store_process_wide(&service, "/before").await;
    for round in 0..2 {
        let called = called_apart::call(&service, "/before").await;
        let caches = Caches::new();
        let scoped = called_apart::body(caches.scope(called).await.unwrap()).await;
        assert_eq!(
            scoped,
            format!("run {}", round + 2),
            "round {round}: a new scope's own entry"
        );
    }
    assert_eq!(EARLY_CALL_RUNS.load(Ordering::SeqCst), 3);
}

static OTHER_SCOPE_RUNS: AtomicUsize = AtomicUsize::new(0);

/// A call made in one scope and awaited in another reads the second scope's store.
#[tokio::test]
async fn a_layer_called_in_one_scope_and_awaited_in_another_reads_the_second() {
    let service = called_apart::service("called-elsewhere", &OTHER_SCOPE_RUNS);
    let (first, second) = (Caches::new(), Caches::new());
    let stored = first
        .scope(async {
            let response = called_apart::call(&service, "/elsewhere")
                .await
                .await
                .unwrap();
            called_apart::body(response).await
        })
        .await;
    assert_eq!(stored, "run 1", "stored in the first scope");
    let called = first
        .scope(called_apart::call(&service, "/elsewhere"))
        .await;
    let answered = called_apart::body(second.scope(called).await.unwrap()).await;
    assert_eq!(answered, "run 2", "the second scope's own entry");
    assert_eq!(OTHER_SCOPE_RUNS.load(Ordering::SeqCst), 2);
}
