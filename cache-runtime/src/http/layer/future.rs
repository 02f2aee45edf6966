//! [`ResponseFuture`]: what [`CacheService`](super::CacheService) returns. Its first poll takes
//! the hot path (a fresh in-process hit answered at once) or builds the full flow, boxed.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use axum::{
    body::Body,
    http::{Request, Response},
};
use futures_util::future::BoxFuture;

use super::{flow, Shared};

/// The future of one request through a [`CacheLayer`](super::CacheLayer)'s service.
///
/// Nothing is decided when the service is called: backends are resolved where the future is
/// polled, so a call made outside a [`Caches`](crate::Caches) scope and awaited inside it (or
/// made in one scope and awaited in another) reads the scope that awaits it.
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture<S, B>
where
    S: tower_service::Service<Request<B>>,
{
    state: State<S, B>,
}

// Boxing `Called` would cost every request an allocation; the future is moved about once.
#[allow(clippy::large_enum_variant)]
enum State<S, B>
where
    S: tower_service::Service<Request<B>>,
{
    /// Called, not polled yet: the service polled ready, the request.
    Called {
        inner: S,
        request: Request<B>,
        shared: Arc<Shared>,
    },
    /// The full flow.
    Running(BoxFuture<'static, Result<Response<Body>, S::Error>>),
    /// Answered.
    Done,
}

impl<S, B> ResponseFuture<S, B>
where
    S: tower_service::Service<Request<B>>,
{
    pub(super) fn new(inner: S, request: Request<B>, shared: Arc<Shared>) -> Self {
        Self {
            state: State::Called {
                inner,
                request,
                shared,
            },
        }
    }
}

// The service and the request are only ever moved out, never pinned; the running flow is boxed.
impl<S, B> Unpin for ResponseFuture<S, B> where S: tower_service::Service<Request<B>> {}

impl<S, B> std::fmt::Debug for ResponseFuture<S, B>
where
    S: tower_service::Service<Request<B>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Called { .. } => "called",
            State::Running(_) => "running",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, B> Future for ResponseFuture<S, B>
where
    S: tower_service::Service<Request<B>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Output = Result<Response<Body>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let State::Called { .. } = this.state {
            let State::Called {
                inner,
                request,
                shared,
            } = std::mem::replace(&mut this.state, State::Done)
            else {
                unreachable!("matched above")
            };
            let (parts, body) = request.into_parts();
            match flow::fresh_reply(&shared, &parts) {
                flow::HotPath::Reply(reply) => return Poll::Ready(Ok(reply)),
                flow::HotPath::Full(admitted) => {
                    let request = Request::from_parts(parts, body);
                    this.state =
                        State::Running(Box::pin(flow::handle(inner, request, shared, admitted)));
                }
            }
        }
        let State::Running(flow) = &mut this.state else {
            panic!("ResponseFuture polled after it completed");
        };
        let answer = flow.as_mut().poll(cx);
        if answer.is_ready() {
            this.state = State::Done;
        }
        answer
    }
}
