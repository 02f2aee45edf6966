//! What the generated code probes by autoref specialization, and what it hands the call: the
//! body (spawned or in place) and how its errors are shared with waiting callers.

use std::{cell::Cell, future::Future, marker::PhantomData, sync::Arc, time::Duration};

use serde::Serialize;
use tokio::task::JoinHandle;

use crate::flight::{self, Leader};

use super::{spawn_leader, Lead};

/// Spawns a leader's computation (a fn pointer chosen where its bounds are known).
type SpawnLeader<T, E, F> = fn(Lead<T>, F, Leader, Errors<E>) -> JoinHandle<Result<Arc<T>, E>>;

/// A fn's `ttl_from`: each value's own TTL (at most the fn's `ttl`; zero: not stored).
pub type TtlFrom<T> = fn(&T) -> Duration;

/// A memoized fn's body, either run in place or, when it is `Send + 'static`, in a task of its own
/// so that it outlives a caller that goes away (and can refresh a stale value in the background).
pub enum Body<T, E, F> {
    /// Runs inside the caller's future.
    Local(F),
    /// Runs in a spawned task (spawned only on a miss: a hit never moves the body).
    Spawn(F, SpawnLeader<T, E, F>),
}

/// Chooses the [`Body`] kind by autoref specialization: `(&SpawnProbe::new(fut)).body()`.
pub struct SpawnProbe<F>(Cell<Option<F>>);

impl<F> SpawnProbe<F> {
    /// Wraps the body future.
    pub fn new(body: F) -> Self {
        Self(Cell::new(Some(body)))
    }

    fn take(&self) -> F {
        self.0
            .take()
            .expect("the generated code takes the body once")
    }
}

/// Selected when the body is `Send + 'static`.
pub trait ViaSpawn<T, E, F> {
    /// The body, to run in a task.
    fn body(&self) -> Body<T, E, F>;
}

impl<T, E, F> ViaSpawn<T, E, F> for SpawnProbe<F>
where
    F: Future<Output = Result<T, E>> + Send + 'static,
    T: Serialize + Clone + Send + Sync + 'static,
    E: Send + 'static,
{
    fn body(&self) -> Body<T, E, F> {
        Body::Spawn(self.take(), spawn_leader::<T, E, F>)
    }
}

/// Selected otherwise.
pub trait ViaLocal<T, E, F> {
    /// The body, to run in place.
    fn body(&self) -> Body<T, E, F>;
}

impl<T, E, F: Future<Output = Result<T, E>>> ViaLocal<T, E, F> for &SpawnProbe<F> {
    fn body(&self) -> Body<T, E, F> {
        Body::Local(self.take())
    }
}

/// How a leader's error reaches its followers: only for errors that are `Clone + Send + Sync`.
pub struct ErrorSharing<E> {
    pub(super) share: fn(&E) -> flight::Shared,
    pub(super) take: fn(&flight::Shared) -> Option<E>,
}

// Manual impls: fn pointers are `Copy` whatever `E` is.
impl<E> Clone for ErrorSharing<E> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<E> Copy for ErrorSharing<E> {}

impl<E> Clone for Errors<E> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<E> Copy for Errors<E> {}

/// Finds out by autoref specialization whether a body's error can be shared with waiters, which
/// then receive it instead of running the body again: `(&ErrorProbe::of(&fut)).sharing()`.
pub struct ErrorProbe<E>(PhantomData<fn() -> E>);

impl<E> ErrorProbe<E> {
    /// The probe for the error type of `body`.
    pub fn of<F, T>(body: &F) -> Self
    where
        F: Future<Output = Result<T, E>>,
    {
        let _ = body;
        Self(PhantomData)
    }
}

/// Selected when the error is `Clone + Send + Sync`.
pub trait ViaClone<E> {
    /// How to share the error.
    fn sharing(&self) -> Option<ErrorSharing<E>>;
}

impl<E: Clone + Send + Sync + 'static> ViaClone<E> for ErrorProbe<E> {
    fn sharing(&self) -> Option<ErrorSharing<E>> {
        Some(ErrorSharing {
            share: |error| Arc::new(error.clone()),
            take: |shared| shared.downcast_ref::<E>().cloned(),
        })
    }
}

/// What happens to a leader's error: shared with followers, or not; and whether it lets a stale
/// value be served (stale-if-error).
#[doc(hidden)]
pub struct Errors<E> {
    /// `None`: followers of a failed leader run their own body at once.
    pub(super) sharing: Option<ErrorSharing<E>>,
    /// Whether an error is a failure that a stale value may stand in for.
    pub(super) is_failure: fn(&E) -> bool,
}

impl<E> Errors<E> {
    pub(crate) fn new(sharing: Option<ErrorSharing<E>>) -> Self {
        Self {
            sharing,
            is_failure: |_| true,
        }
    }

    /// Per-request outcomes: followers run their own body; only `is_failure` errors count as
    /// failures for stale-if-error.
    pub(crate) fn independent(is_failure: fn(&E) -> bool) -> Self {
        Self {
            sharing: None,
            is_failure,
        }
    }
}

/// Selected otherwise.
pub trait ViaNoClone<E> {
    /// `None`: the error cannot be shared; waiters run the body themselves, concurrently.
    fn sharing(&self) -> Option<ErrorSharing<E>>;
}

impl<E> ViaNoClone<E> for &ErrorProbe<E> {
    fn sharing(&self) -> Option<ErrorSharing<E>> {
        None
    }
}

impl<T, E, F: Future<Output = Result<T, E>>> Body<T, E, F> {
    /// Runs the body in the caller, uncached.
    pub(crate) async fn run_in_place(self) -> Result<T, E> {
        match self {
            Body::Local(future) | Body::Spawn(future, _) => future.await,
        }
    }
}

impl<E> Errors<E> {
    /// Errors shared as `sharing` says, of which only those `is_failure` accepts let a stale value
    /// stand in (`cache_if`: a rejected value is no failure).
    pub(crate) fn failing_when(
        sharing: Option<ErrorSharing<E>>,
        is_failure: fn(&E) -> bool,
    ) -> Self {
        Self {
            sharing,
            is_failure,
        }
    }
}
