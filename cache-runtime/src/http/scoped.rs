//! [`ScopeLayer`]: every request of a router served inside one [`Caches`] scope.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use crate::Caches;

/// Serves each request inside a [`Caches`] scope, for tests that run a real server (whose
/// connection tasks start outside any scope). Made by [`Caches::layer`].
///
/// ```
/// use axum::{routing::get, Router};
///
/// let caches = cache_runtime::Caches::new();
/// let app: Router = Router::new()
///     .route("/", get(|| async { "hello" }))
///     .layer(caches.layer());
/// ```
#[derive(Debug, Clone)]
pub struct ScopeLayer {
    caches: Caches,
}

/// The service of a [`ScopeLayer`].
#[derive(Debug, Clone)]
pub struct ScopeService<S> {
    inner: S,
    caches: Caches,
}

impl Caches {
    /// A tower layer serving each request inside this registry's scope (see [`ScopeLayer`]).
    pub fn layer(&self) -> ScopeLayer {
        ScopeLayer {
            caches: self.clone(),
        }
    }
}

impl<S> tower_layer::Layer<S> for ScopeLayer {
    type Service = ScopeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ScopeService {
            inner,
            caches: self.caches.clone(),
        }
    }
}

impl<S, Request> tower_service::Service<Request> for ScopeService<S>
where
    S: tower_service::Service<Request>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // `call` itself runs in the scope too: a service may resolve its backend there.
        let caches = self.caches.clone();
        let response = caches.sync_scope(|| self.inner.call(request));
        Box::pin(async move { caches.scope(response).await })
    }
}
