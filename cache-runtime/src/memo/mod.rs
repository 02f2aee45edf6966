//! The path of one memoized call: look up, join or lead the flight, run the body, store.

mod lock;
mod lookup;
mod probes;
mod storing;

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{de::DeserializeOwned, Serialize};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::{
    envelope,
    flight::{self, Followed, Leader, Role},
    invalidation,
    key::{normalize_key, KeyBuf, UNKEYABLE},
    registry::Registered,
    stats::{Event, Site},
};

use lock::{wait_for_other_process, LockRelease, Wait};
pub(crate) use lookup::{probe, Probe};
pub use probes::{
    Body, ErrorProbe, ErrorSharing, Errors, SpawnProbe, TtlFrom, ViaClone, ViaLocal, ViaNoClone,
    ViaSpawn,
};
pub(crate) use storing::{current_generations, groups_for, store, store_checked, value_policy};

pub(crate) use crate::config::follow_timeout;

/// Everything a leader needs to store its value and end its flight.
#[doc(hidden)]
pub struct Lead<T> {
    site: &'static Site,
    ttl_from: Option<TtlFrom<T>>,
    backend: &'static Registered,
    key: String,
    /// The call text of a default key, which in-process backends store the entry under.
    call: Option<Box<str>>,
    groups: Vec<String>,
    generations: Option<Vec<u64>>,
    epoch: u64,
    /// The cross-process lock this computation holds, released when it ends or is dropped
    /// (including before its first poll).
    lock: Option<LockRelease>,
    /// This computation's flight, and the flights its caller runs inside (re-entry detection).
    flight_key: String,
    chain: Option<Arc<flight::Chain>>,
}

/// Runs `body` unless a live value for `key` is cached, and caches its `Ok` value.
///
/// Called by the code `#[cached]` generates, after [`fresh_hit`] found no fresh in-process value.
/// The cache never fails the call: backend errors are logged and counted, and the body runs.
pub async fn memoize<T, E, F>(
    site: &'static Site,
    key: KeyBuf,
    groups: Vec<String>,
    body: Body<T, E, F>,
    errors: Option<ErrorSharing<E>>,
    ttl_from: Option<TtlFrom<T>>,
) -> Result<T, E>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    F: Future<Output = Result<T, E>>,
{
    let errors = Errors::new(errors);
    memoize_with(site, key, groups, body, errors, ttl_from).await
}

/// The hot path: a fresh typed value in an in-process backend (or the local tier of a two-tier
/// one), found before anything else of the call is built (groups, body, span, flight, timers on
/// untimed calls).
#[inline]
pub fn fresh_hit<T: Clone + 'static>(site: &'static Site, key: &KeyBuf) -> Option<T> {
    let backend = site.resolve()?;
    if !key.is_keyable() {
        return None; // runs uncached, on the full path
    }
    // A default key's entry is stored under its call text: no digest to compute.
    let key = match key.call_text() {
        Some(call) => call,
        None => short(key.as_str())?,
    };
    let started = crate::stats::sample_timing().then(Instant::now);
    let value = fresh_in_process::<T>(backend, key)?;
    site.register();
    site.count(Event::Hit);
    site.hit_took(started.map(|s| s.elapsed()));
    Some(value)
}

/// A fresh typed value under `stored_under` (a key as stored, or a call text) in an in-process
/// backend, or in the local tier of a two-tier one; `None` for any other backend.
#[inline]
pub(crate) fn fresh_in_process<T: Clone + 'static>(
    backend: &Registered,
    stored_under: &str,
) -> Option<T> {
    let memory = match backend.memory() {
        Some(memory) => memory,
        // As `lookup::probe_tiered` reads it first: a local entry is checked against its own
        // groups, which include one standing for its key.
        None => backend.tiered()?.usable_local()?,
    };
    memory.get_fresh::<T>(stored_under)
}

/// The key of a call, with its call text when it is a default key built as one (see
/// [`KeyBuf::call_text`]).
pub(crate) struct CallKey {
    pub(crate) key: String,
    pub(crate) call: Option<Box<str>>,
}

impl From<KeyBuf> for CallKey {
    fn from(key: KeyBuf) -> Self {
        let (key, call) = key.into_key_and_call();
        Self { key, call }
    }
}

impl From<String> for CallKey {
    fn from(key: String) -> Self {
        Self { key, call: None }
    }
}

/// A key stored as it is (the full path normalizes longer ones, and runs keys with a NUL byte
/// uncached: only call texts hold one).
#[inline]
fn short(key: &str) -> Option<&str> {
    (key.len() <= crate::key::MAX_KEY_LEN && !key.as_bytes().contains(&UNKEYABLE)).then_some(key)
}

pub(crate) async fn memoize_with<T, E, F>(
    site: &'static Site,
    key: impl Into<CallKey>,
    groups: Vec<String>,
    body: Body<T, E, F>,
    errors: Errors<E>,
    ttl_from: Option<TtlFrom<T>>,
) -> Result<T, E>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    F: Future<Output = Result<T, E>>,
{
    let CallKey { key, call } = key.into();
    let span = tracing::debug_span!(
        "cache",
        function = site.function,
        backend = site.backend,
        key = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    if !span.is_disabled() {
        span.record("key", key.as_str());
    }
    memoize_in_span(
        site,
        key,
        call,
        groups,
        body,
        errors,
        ttl_from,
        span.clone(),
    )
    .instrument(span)
    .await
}

#[allow(clippy::too_many_arguments)]
async fn memoize_in_span<T, E, F>(
    site: &'static Site,
    key: String,
    call: Option<Box<str>>,
    groups: Vec<String>,
    body: Body<T, E, F>,
    errors: Errors<E>,
    ttl_from: Option<TtlFrom<T>>,
    span: tracing::Span,
) -> Result<T, E>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    F: Future<Output = Result<T, E>>,
{
    site.register();
    let outcome = |name: &'static str| span.record("outcome", name);
    let Some(backend) = site.resolve() else {
        tracing::debug!(
            backend = site.backend,
            "unknown cache backend; running uncached"
        );
        site.count(Event::Miss);
        outcome("uncached");
        return run_in_place(body).await;
    };
    let in_process = backend.memory().is_some();
    let started = (!in_process || crate::stats::sample_timing()).then(Instant::now);
    let took = || started.map(|s| s.elapsed());
    if key.as_bytes().contains(&UNKEYABLE) {
        tracing::warn!(
            "an argument of this call could not be serialized into its key; running uncached"
        );
        site.count(Event::Miss);
        outcome("unkeyable");
        return run_in_place(body).await;
    }
    let key = normalize_key(key);
    let groups = groups_for(backend, &key, groups);
    let mut flight_key = None;
    loop {
        let epoch = invalidation::invalidation_epoch();
        let (stale, generations) =
            match probe::<T>(site, backend, &key, call.as_deref(), &groups).await {
                Probe::Hit(value) => {
                    site.count(Event::Hit);
                    site.hit_took(took());
                    outcome("hit");
                    return Ok(value);
                }
                Probe::Stale {
                    value,
                    generations,
                    revalidate,
                    kept_until_ms,
                } => (
                    Some(Stale {
                        value,
                        revalidate,
                        kept_until_ms,
                    }),
                    Some(generations),
                ),
                Probe::Miss(generations) => (None, generations),
            };
        let overtaken =
            |started: u64| invalidation::invalidated_since(backend, started, &key, &groups);
        let serve = |value: T| {
            site.count(Event::Stale);
            site.hit_took(took());
            outcome("stale");
            value
        };
        // Stale-while-revalidate, decided now.
        let serve_revalidating =
            |stale: Option<Stale<T>>| stale.filter(|s| s.revalidate).map(|s| serve(s.value));
        // Stale-if-error, once a body failed (maybe long after the lookup): only inside the
        // window still, and only if nothing invalidated the key or a group since.
        let serve_after_failure = |stale: Option<Stale<T>>| {
            stale
                .filter(|s| envelope::now_ms() < s.kept_until_ms && !overtaken(epoch))
                .map(|s| serve(s.value))
        };
        // A body of this call's own (not the leader's): its failure may be answered stale too.
        let run_own = |body, stale: Option<Stale<T>>| async {
            match run_in_place(body).await {
                Err(error) if (errors.is_failure)(&error) => {
                    serve_after_failure(stale).ok_or(error)
                }
                result => result,
            }
        };
        let flight_key = flight_key
            .get_or_insert_with(|| flight_key_of(backend, &key))
            .clone();
        if flight::runs_inside(&flight_key) {
            // A call inside its own computation (cyclic data): waiting would wait for itself.
            site.count(Event::Miss);
            outcome("reentrant");
            return run_in_place(body).await;
        }
        if generations.is_none() {
            // The lookup failed: this call cannot tell whether another process invalidated since a
            // running computation started, so it joins none, and stores nothing.
            site.count(Event::Miss);
            outcome("backend-failed");
            return run_in_place(body).await;
        }
        // In-process stores need no generations to tell a flight's age: the epoch check is exact
        // there, and their generation stamps move with every invalidation of any group.
        let joined_under = if in_process {
            None
        } else {
            generations.clone()
        };
        match flight::join(flight_key.clone(), epoch, &joined_under, overtaken) {
            Role::Follower(receiver) => {
                if let Some(value) = serve_revalidating(stale.clone()) {
                    return Ok(value); // a refresh is under way
                }
                let Some(followed) = follow_at_most(follow_timeout(), receiver).await else {
                    tracing::warn!(
                        timeout = ?follow_timeout(),
                        "waited too long for another call's computation of this key; computing"
                    );
                    site.count(Event::Miss);
                    outcome("follow-timeout");
                    return run_own(body, stale).await;
                };
                match followed {
                    Followed::Value(shared) => {
                        if let Some(value) = shared.downcast_ref::<T>() {
                            site.count(Event::Join);
                            site.miss_took(took());
                            outcome("joined");
                            return Ok(value.clone());
                        }
                    }
                    Followed::Error(shared) => {
                        let taken = errors.sharing.as_ref().and_then(|e| (e.take)(&shared));
                        // Only a failure lets a stale value stand in (not a value `cache_if`
                        // rejected, which is the leader's answer).
                        let failed = taken.as_ref().is_none_or(|e| (errors.is_failure)(e));
                        if failed {
                            if let Some(value) = serve_after_failure(stale) {
                                return Ok(value); // stale-if-error: the leader's body failed
                            }
                        }
                        if let Some(error) = taken {
                            site.count(Event::Join);
                            outcome("joined-error");
                            return Err(error);
                        }
                    }
                    Followed::Pass => {
                        site.count(Event::Miss);
                        outcome("passed");
                        return run_own(body, stale).await;
                    }
                    Followed::Retry => {}
                }
                // The leader gave up: look again, and maybe lead.
            }
            Role::Leader(leader) => {
                let mut lead = Lead {
                    site,
                    ttl_from,
                    backend,
                    key: key.clone(),
                    call: call.clone(),
                    groups: groups.clone(),
                    generations,
                    epoch,
                    lock: None,
                    flight_key,
                    chain: flight::current_chain(),
                };
                let revalidating = stale.as_ref().is_some_and(|s| s.revalidate);
                let body = match body {
                    Body::Spawn(future, spawn) if revalidating && tokio_available() => {
                        // Stale-while-revalidate: refresh in the background, answer now.
                        drop(spawn(lead, future, leader, errors));
                        return Ok(serve_revalidating(stale).expect("revalidating stale value"));
                    }
                    body => body,
                };
                if site.policy.lock_ms > 0 && lead.generations.is_some() {
                    match wait_for_other_process::<T>(&lead).await {
                        Wait::Found(value) => {
                            leader.finish(Arc::new(value.clone()));
                            site.count(Event::LockWait);
                            site.miss_took(took());
                            outcome("lock-wait");
                            return Ok(value);
                        }
                        Wait::Locked(held) => lead.lock = Some(held),
                        Wait::Proceed => {}
                    }
                }
                site.count(Event::Miss);
                let result = run_body(lead, body, leader, errors).await;
                site.miss_took(took());
                return match result {
                    Ok(shared) => {
                        outcome("miss");
                        Ok(Arc::unwrap_or_clone(shared))
                    }
                    Err(error) => {
                        let failed = (errors.is_failure)(&error);
                        match stale
                            .filter(|_| failed)
                            .and_then(|s| serve_after_failure(Some(s)))
                        {
                            Some(value) => Ok(value), // stale-if-error
                            None => {
                                outcome("error");
                                Err(error)
                            }
                        }
                    }
                };
            }
        }
    }
}

/// A value past its freshness that a call may still answer with.
#[derive(Clone)]
struct Stale<T> {
    value: T,
    /// Inside the stale-while-revalidate window (served at once while a refresh runs).
    revalidate: bool,
    /// When both stale windows end (ms since the Unix epoch).
    kept_until_ms: u64,
}

/// Waits for the leader at most `limit`, timed on the library's runtime (the caller's may have no
/// timer, or be no tokio runtime at all).
async fn follow_at_most(
    limit: Duration,
    receiver: tokio::sync::watch::Receiver<flight::Outcome>,
) -> Option<Followed> {
    let mut timer = crate::io::handle().spawn(tokio::time::sleep(limit));
    let followed = tokio::select! {
        followed = flight::follow(receiver) => Some(followed),
        _ = &mut timer => None,
    };
    timer.abort();
    followed
}

fn tokio_available() -> bool {
    tokio::runtime::Handle::try_current().is_ok()
}

async fn run_in_place<T, E, F: Future<Output = Result<T, E>>>(body: Body<T, E, F>) -> Result<T, E> {
    body.run_in_place().await
}

pub(crate) fn spawn_leader<T, E, F>(
    lead: Lead<T>,
    future: F,
    leader: Leader,
    errors: Errors<E>,
) -> JoinHandle<Result<Arc<T>, E>>
where
    T: Serialize + Clone + Send + Sync + 'static,
    E: Send + 'static,
    F: Future<Output = Result<T, E>> + Send + 'static,
{
    // The caller's span goes along, so the body's events stay inside the request's.
    let work = run_leader(lead, future, leader, errors).instrument(tracing::Span::current());
    // Nested cached calls in the body resolve their backends in the caller's `Caches` scope.
    tokio::spawn(crate::registry::carry(work))
}

/// Runs the body as the flight's leader, stores an `Ok` value, releases any lock, and hands the
/// outcome to the followers.
async fn run_leader<T, E, F>(
    lead: Lead<T>,
    future: F,
    leader: Leader,
    errors: Errors<E>,
) -> Result<Arc<T>, E>
where
    T: Serialize + Clone + Send + Sync + 'static,
    F: Future<Output = Result<T, E>>,
{
    // Released when this leader ends, however it ends (a dropped caller or a panic included).
    let lock = lead.lock;
    let result = flight::inside(lead.chain.clone(), lead.flight_key.clone(), future).await;
    let outcome = match result {
        Ok(value) => {
            let shared = Arc::new(value);
            if let Some(generations) = lead.generations.clone() {
                let _permit = invalidation::store_permit(lead.backend, &lead.key).await;
                let policy = value_policy(lead.site.policy, lead.ttl_from, &shared);
                if policy.ttl_ms > 0
                    && !invalidation::invalidated_since(
                        lead.backend,
                        lead.epoch,
                        &lead.key,
                        &lead.groups,
                    )
                {
                    store(
                        lead.site,
                        lead.backend,
                        &lead.key,
                        lead.call.as_deref(),
                        &lead.groups,
                        generations,
                        &shared,
                        policy,
                    )
                    .await;
                    if invalidation::invalidated_since(lead.backend, lead.epoch, &lead.key, &[]) {
                        // A key invalidation passed its barrier while this write was under way
                        // (a store that stalled): what was written may predate it.
                        let backend = &lead.backend;
                        let removed = backend.backend.delete(&lead.key);
                        let _ = backend.guard.run_always("delete", removed).await;
                    }
                }
            }
            leader.finish(Arc::clone(&shared) as flight::Shared);
            Ok(shared)
        }
        Err(error) => {
            match &errors.sharing {
                Some(sharing) => leader.fail((sharing.share)(&error)),
                // The error cannot be shared: the waiters run their own bodies, all at once
                // (taking turns as leader would run them one after another).
                None => leader.pass(),
            }
            Err(error)
        }
    };
    if let Some(lock) = lock {
        lock.release().await;
    }
    outcome
}

/// The flight of `key` in `backend`: calls share a computation only within one backend (one
/// registration of a name, one [`Caches`](crate::Caches) scope).
pub(crate) fn flight_key_of(backend: &Registered, key: &str) -> String {
    format!("{:x}\u{0}{key}", std::ptr::from_ref(backend) as usize)
}

/// Removes one call's entry from the function's backend (behind the generated `*_invalidate` fns).
pub async fn invalidate_entry(backend: &str, key: String) -> Result<(), crate::CacheError> {
    crate::invalidation::invalidate_key_in(backend, key).await
}

/// Runs `body` as the leader of the flight `leader` heads (a refresh, see `control.rs`): its `Ok`
/// value is stored and handed to the followers as a miss's leader does, without the
/// cross-process lock and without serving a stale value.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn lead<T, E, F>(
    site: &'static Site,
    backend: &'static Registered,
    CallKey { key, call }: CallKey,
    groups: Vec<String>,
    generations: Vec<u64>,
    epoch: u64,
    flight_key: String,
    leader: Leader,
    body: Body<T, E, F>,
    errors: Errors<E>,
    ttl_from: Option<TtlFrom<T>>,
) -> Result<T, E>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    F: Future<Output = Result<T, E>>,
{
    let lead = Lead {
        site,
        ttl_from,
        backend,
        key,
        call,
        groups,
        generations: Some(generations),
        epoch,
        lock: None,
        flight_key,
        chain: flight::current_chain(),
    };
    run_body(lead, body, leader, errors)
        .await
        .map(Arc::unwrap_or_clone)
}

/// Runs `body` as the leader: in a task of its own when it can be spawned (a panic in it
/// resumes here), else in place.
async fn run_body<T, E, F>(
    lead: Lead<T>,
    body: Body<T, E, F>,
    leader: Leader,
    errors: Errors<E>,
) -> Result<Arc<T>, E>
where
    T: Serialize + Clone + Send + Sync + 'static,
    F: Future<Output = Result<T, E>>,
{
    match body {
        Body::Spawn(future, spawn) if tokio_available() => {
            match spawn(lead, future, leader, errors).await {
                Ok(result) => result,
                Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
                Err(join) => panic!("cache computation task was cancelled: {join}"),
            }
        }
        Body::Spawn(future, _) | Body::Local(future) => {
            run_leader(lead, future, leader, errors).await
        }
    }
}
