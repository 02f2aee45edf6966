//! The path of one memoized call: look up, join or lead the flight, run the body, store.

use std::{
    cell::Cell,
    future::Future,
    marker::PhantomData,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{de::DeserializeOwned, Serialize};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::{
    backend::{memory::TypedLookup, MemoryBackend},
    config,
    envelope::{self, now_ms, Decoded, EncodeError, Meta, Schema},
    flight::{self, Followed, Leader, Role},
    invalidation,
    key::{fingerprint, normalize_key, KeyBuf, UNKEYABLE},
    registry::Registered,
    stats::{Event, Policy, Site},
};

/// How often a caller waiting for another process's computation looks for its result.
const LOCK_POLL: Duration = Duration::from_millis(20);

pub(crate) use crate::config::{follow_timeout, max_value_bytes};

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
    T: Serialize + Send + Sync + 'static,
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
    share: fn(&E) -> flight::Shared,
    take: fn(&flight::Shared) -> Option<E>,
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
    sharing: Option<ErrorSharing<E>>,
    /// Whether an error is a failure that a stale value may stand in for.
    is_failure: fn(&E) -> bool,
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

/// What a lookup found.
pub(crate) enum Probe<T> {
    Hit(T),
    /// Expired but kept for stale serving. `revalidate`: inside the stale-while-revalidate window
    /// (serve it now); otherwise only inside the stale-if-error window (serve it if the body fails).
    Stale {
        value: T,
        generations: Vec<u64>,
        revalidate: bool,
    },
    /// A miss, with the group generations to store the new value under (`None`: the backend failed,
    /// so nothing is stored).
    Miss(Option<Vec<u64>>),
}

/// Everything a leader needs to store its value and end its flight.
#[doc(hidden)]
pub struct Lead<T> {
    site: &'static Site,
    ttl_from: Option<TtlFrom<T>>,
    backend: &'static Registered,
    key: String,
    groups: Vec<String>,
    generations: Option<Vec<u64>>,
    epoch: u64,
    lock_token: Option<u64>,
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
    memoize_with(site, key.into_string(), groups, body, errors, ttl_from).await
}

/// The hot path: a fresh typed value in an in-process backend, found before anything else of the
/// call is built (groups, body, span, flight, timers on untimed calls).
pub fn fresh_hit<T: Clone + 'static>(site: &'static Site, key: &KeyBuf) -> Option<T> {
    let memory = site.resolve()?.memory()?;
    if !key.is_keyable() {
        return None; // runs uncached, on the full path
    }
    let key = key.as_str();
    if key.len() > crate::key::MAX_KEY_LEN {
        return None; // the full path normalizes the key
    }
    let started = crate::stats::sample_timing().then(Instant::now);
    let value = memory.get_fresh::<T>(key)?;
    site.register();
    site.count(Event::Hit);
    site.hit_took(started.map(|s| s.elapsed()));
    Some(value)
}

pub(crate) async fn memoize_with<T, E, F>(
    site: &'static Site,
    key: String,
    groups: Vec<String>,
    body: Body<T, E, F>,
    errors: Errors<E>,
    ttl_from: Option<TtlFrom<T>>,
) -> Result<T, E>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    F: Future<Output = Result<T, E>>,
{
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
    memoize_in_span(site, key, groups, body, errors, ttl_from, span.clone())
        .instrument(span)
        .await
}

async fn memoize_in_span<T, E, F>(
    site: &'static Site,
    key: String,
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
        let (stale, generations) = match probe::<T>(site, backend, &key, &groups).await {
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
            } => (Some((value, revalidate)), Some(generations)),
            Probe::Miss(generations) => (None, generations),
        };
        let serve_stale = |stale: Option<(T, bool)>, only_revalidating: bool| {
            let (value, revalidate) = stale?;
            (revalidate || !only_revalidating).then(|| {
                site.count(Event::Stale);
                site.hit_took(took());
                outcome("stale");
                value
            })
        };
        let overtaken =
            |started: u64| invalidation::invalidated_since(backend, started, &key, &groups);
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
                if let Some(value) = serve_stale(stale.clone(), true) {
                    return Ok(value); // a refresh is under way
                }
                let Some(followed) = follow_at_most(follow_timeout(), receiver).await else {
                    tracing::warn!(
                        timeout = ?follow_timeout(),
                        "waited too long for another call's computation of this key; computing"
                    );
                    site.count(Event::Miss);
                    outcome("follow-timeout");
                    return run_in_place(body).await;
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
                            if let Some(value) = serve_stale(stale, false) {
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
                        return run_in_place(body).await;
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
                    groups: groups.clone(),
                    generations,
                    epoch,
                    lock_token: None,
                    flight_key,
                    chain: flight::current_chain(),
                };
                let revalidating = stale.as_ref().is_some_and(|(_, revalidate)| *revalidate);
                let body = match body {
                    Body::Spawn(future, spawn) if revalidating && tokio_available() => {
                        // Stale-while-revalidate: refresh in the background, answer now.
                        drop(spawn(lead, future, leader, errors));
                        return Ok(serve_stale(stale, true).expect("revalidating stale value"));
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
                        Wait::Locked(token) => lead.lock_token = Some(token),
                        Wait::Proceed => {}
                    }
                }
                site.count(Event::Miss);
                let result = match body {
                    Body::Spawn(future, spawn) if tokio_available() => {
                        match spawn(lead, future, leader, errors).await {
                            Ok(result) => result,
                            Err(join) if join.is_panic() => {
                                std::panic::resume_unwind(join.into_panic())
                            }
                            Err(join) => panic!("cache computation task was cancelled: {join}"),
                        }
                    }
                    Body::Spawn(future, _) => run_leader(lead, future, leader, errors).await,
                    Body::Local(future) => run_leader(lead, future, leader, errors).await,
                };
                site.miss_took(took());
                return match result {
                    Ok(shared) => {
                        outcome("miss");
                        Ok(Arc::unwrap_or_clone(shared))
                    }
                    Err(error) => match stale.filter(|_| (errors.is_failure)(&error)) {
                        Some(stale) => Ok(serve_stale(Some(stale), false).expect("stale value")), // stale-if-error
                        None => {
                            outcome("error");
                            Err(error)
                        }
                    },
                };
            }
        }
    }
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

impl<T, E, F: Future<Output = Result<T, E>>> Body<T, E, F> {
    /// Runs the body in the caller, uncached.
    pub(crate) async fn run_in_place(self) -> Result<T, E> {
        match self {
            Body::Local(future) | Body::Spawn(future, _) => future.await,
        }
    }
}

pub(crate) fn spawn_leader<T, E, F>(
    lead: Lead<T>,
    future: F,
    leader: Leader,
    errors: Errors<E>,
) -> JoinHandle<Result<Arc<T>, E>>
where
    T: Serialize + Send + Sync + 'static,
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
    T: Serialize + Send + Sync + 'static,
    F: Future<Output = Result<T, E>>,
{
    // Released when this leader ends, however it ends (a dropped caller or a panic included).
    let lock = lead.lock_token.map(|token| LockRelease {
        backend: lead.backend,
        key: lead.key.clone(),
        token: Some(token),
    });
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
    if let Some(mut lock) = lock {
        if let Some(token) = lock.token.take() {
            release_lock(lock.backend, &lock.key, token).await;
        }
    }
    outcome
}

async fn release_lock(backend: &Registered, key: &str, token: u64) {
    let _ = backend
        .guard
        .run("unlock", backend.backend.unlock(key, token))
        .await;
}

/// Releases a cross-process lock that its leader did not release itself (it was dropped or
/// panicked), from a task of its own.
struct LockRelease {
    backend: &'static Registered,
    key: String,
    token: Option<u64>,
}

impl Drop for LockRelease {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else {
            return;
        };
        let backend = self.backend;
        let key = std::mem::take(&mut self.key);
        // On the library's runtime: the caller's may be shutting down.
        crate::io::spawn(async move { release_lock(backend, &key, token).await });
    }
}

enum Wait<T> {
    /// Another process stored the value while this one waited.
    Found(T),
    /// This process holds the lock: compute, then release it.
    Locked(u64),
    /// No lock (backend failed, or the holder took too long): compute anyway.
    Proceed,
}

/// Takes the cross-process lock of the key, or waits (at most the lock's TTL) for the process that
/// holds it to store the value.
async fn wait_for_other_process<T>(lead: &Lead<T>) -> Wait<T>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let backend = &lead.backend;
    let lock_ttl = Duration::from_millis(lead.site.policy.lock_ms);
    let token = fastrand::u64(1..);
    let deadline = Instant::now() + lock_ttl;
    loop {
        let locked = backend
            .guard
            .run("lock", backend.backend.try_lock(&lead.key, token, lock_ttl))
            .await;
        match locked {
            Ok(true) => {
                // The previous holder may have stored the value just before releasing the lock.
                if let Probe::Hit(value) =
                    probe::<T>(lead.site, backend, &lead.key, &lead.groups).await
                {
                    release_lock(backend, &lead.key, token).await;
                    return Wait::Found(value);
                }
                return Wait::Locked(token);
            }
            Ok(false) => {}
            Err(_) => return Wait::Proceed,
        }
        if Instant::now() >= deadline {
            return Wait::Proceed;
        }
        tokio::time::sleep(LOCK_POLL).await;
        if let Probe::Hit(value) = probe::<T>(lead.site, backend, &lead.key, &lead.groups).await {
            return Wait::Found(value);
        }
    }
}

/// The flight of `key` in `backend`: calls share a computation only within one backend (one
/// registration of a name, one [`Caches`](crate::Caches) scope).
pub(crate) fn flight_key_of(backend: &Registered, key: &str) -> String {
    format!("{:x}\u{0}{key}", std::ptr::from_ref(backend) as usize)
}

/// The policy a value is stored under: with a `ttl_from`, fresh for the value's own TTL, at most
/// the fn's (a zero TTL: the value is not stored).
pub(crate) fn value_policy<T>(policy: Policy, ttl_from: Option<TtlFrom<T>>, value: &T) -> Policy {
    let Some(ttl_of) = ttl_from else {
        return policy;
    };
    let own = u64::try_from(ttl_of(value).as_millis()).unwrap_or(u64::MAX);
    Policy {
        ttl_ms: own.min(policy.ttl_ms),
        ..policy
    }
}

/// The fingerprint of `T`, cached for the first type a site stores (a layer stores several).
fn type_fingerprint<T: 'static>(site: &Site) -> u64 {
    let of_t = || fingerprint(std::any::type_name::<T>());
    let (type_id, cached) = *site
        .fingerprint
        .get_or_init(|| (std::any::TypeId::of::<T>(), of_t()));
    if type_id == std::any::TypeId::of::<T>() {
        cached
    } else {
        of_t()
    }
}

pub(crate) async fn probe<T>(
    site: &Site,
    backend: &Registered,
    key: &str,
    groups: &[String],
) -> Probe<T>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let policy = site.policy;
    if let Some(memory) = backend.memory() {
        return match memory.get_typed::<T>(key, groups) {
            TypedLookup::Hit(value) => Probe::Hit(value),
            TypedLookup::Stale(value, generations, expired_ms) => Probe::Stale {
                value,
                generations,
                revalidate: now_ms() < expired_ms.saturating_add(policy.stale_ms),
            },
            TypedLookup::Miss(generations) => Probe::Miss(Some(generations)),
        };
    }
    if let Some(tiered) = backend.tiered() {
        return probe_tiered(site, backend, tiered, key, groups).await;
    }
    probe_stored(site, backend, key, groups).await.0
}

/// The local tier first, then Redis; a fresh value found in Redis is copied into the local tier
/// under the local generations observed before reading Redis.
async fn probe_tiered<T>(
    site: &Site,
    backend: &Registered,
    tiered: &crate::TieredBackend,
    key: &str,
    groups: &[String],
) -> Probe<T>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let local = tiered.usable_local();
    let local_groups = crate::backend::tiered::local_groups(key, groups);
    let observed = match local.map(|l| l.get_typed::<T>(key, &local_groups)) {
        Some(TypedLookup::Hit(value)) => return Probe::Hit(value),
        Some(TypedLookup::Stale(_, generations, _) | TypedLookup::Miss(generations)) => {
            Some(generations)
        }
        None => None,
    };
    let clears = local.map(MemoryBackend::clears);
    let (probe, expires_ms) = probe_stored::<T>(site, backend, key, groups).await;
    // Not copied while the backend missed an invalidation (the read may have overtaken it), nor
    // across a clear of the local tier (a lost subscription: invalidations may have been missed).
    let usable = !backend.invalidation.blocked() && local.map(MemoryBackend::clears) == clears;
    if let (Probe::Hit(value), Some(local), Some(generations), true) =
        (&probe, local, observed, usable)
    {
        let remaining = Duration::from_millis(expires_ms.saturating_sub(now_ms()));
        let ttl = remaining.min(tiered.local_ttl());
        if !ttl.is_zero() {
            let value = Arc::new(value.clone());
            let _ = local.set_typed(
                key.to_owned(),
                value,
                ttl,
                0,
                (&local_groups, generations),
                max_value_bytes(),
            );
        }
    }
    probe
}

/// Reads and decodes a serialized entry; with a hit, also when it expires (ms since the epoch).
async fn probe_stored<T>(
    site: &Site,
    backend: &Registered,
    key: &str,
    groups: &[String],
) -> (Probe<T>, u64)
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let policy = site.policy;
    if backend.invalidation.blocked() {
        // The backend missed an invalidation: not read until it has been applied there.
        return (Probe::Miss(None), 0);
    }
    let lookup = match backend
        .guard
        .run("get", backend.backend.get(key, groups))
        .await
    {
        Ok(lookup) => lookup,
        Err(_) => {
            site.count(Event::BackendError);
            return (Probe::Miss(None), 0);
        }
    };
    let current = lookup.generations;
    let Some(bytes) = lookup.value else {
        return (Probe::Miss(Some(current)), 0);
    };
    let bytes = match backend.seal.open(key, bytes) {
        Ok(opened) => opened,
        Err(crate::seal::Refusal::Unusable) => return (Probe::Miss(None), 0),
        Err(refused) => {
            decode_failure(site, key, &refused);
            return (Probe::Miss(Some(current)), 0);
        }
    };
    let schema = schema(site.policy, backend);
    let (meta, payload) = match envelope::decode(&bytes) {
        Decoded::Valid(meta, _) if meta.type_fingerprint != type_fingerprint::<T>(site) => {
            decode_failure(site, key, &"stored by a different value type");
            return (Probe::Miss(Some(current)), 0);
        }
        Decoded::Valid(meta, _) if meta.schema != schema => {
            // Another codec or schema version (a rolling deploy, a changed setting): recomputed
            // and overwritten in this reader's.
            decode_failure(
                site,
                key,
                &format_args!("stored as {:?}, read as {schema:?}", meta.schema),
            );
            return (Probe::Miss(Some(current)), 0);
        }
        Decoded::Valid(meta, payload) => (meta, payload),
        Decoded::Unusable => {
            decode_failure(site, key, &"not an envelope of this format version");
            return (Probe::Miss(Some(current)), 0);
        }
    };
    if meta.generations != current {
        // A group was invalidated: never served, even stale.
        return (Probe::Miss(Some(current)), 0);
    }
    let now = now_ms();
    let stale_until = meta
        .expires_ms
        .saturating_add(policy.stale_ms.max(policy.stale_if_error_ms));
    if now >= meta.expires_ms && now >= stale_until {
        return (Probe::Miss(Some(current)), 0);
    }
    let Some(payload) = payload.decoded(max_value_bytes()) else {
        decode_failure(
            site,
            key,
            &"compressed payload corrupt or over CACHE_MAX_VALUE_BYTES",
        );
        return (Probe::Miss(Some(current)), 0);
    };
    let probe = match schema.codec.decode(&payload) {
        Ok(value) if now < meta.expires_ms => Probe::Hit(value),
        Ok(value) => Probe::Stale {
            value,
            generations: current,
            revalidate: now < meta.expires_ms.saturating_add(policy.stale_ms),
        },
        Err(error) => {
            decode_failure(site, key, &error);
            Probe::Miss(Some(current))
        }
    };
    (probe, meta.expires_ms)
}

/// What an entry of `policy`'s function in `backend` is written under and must be read under:
/// the codec (the function's, else the backend's, else `CACHE_CODEC`, else the policy's default)
/// and the schema versions.
fn schema(policy: Policy, backend: &Registered) -> Schema {
    let codec = policy
        .codec
        .or(backend.storage.codec)
        .or_else(config::codec)
        .unwrap_or(policy.default_codec);
    Schema {
        codec,
        version: policy.version,
        key_version: config::key_version(),
    }
}

fn decode_failure(site: &Site, key: &str, reason: &dyn std::fmt::Display) {
    site.count(Event::DecodeFailure);
    tracing::debug!(key, %reason, "cached entry unusable; recomputing");
}

/// The groups an entry of `key` is filed under in `backend`: on shared backends also the key's
/// tombstone, which guards against a value computed before a key invalidation made elsewhere
/// being stored after it.
pub(crate) fn groups_for(backend: &Registered, key: &str, mut groups: Vec<String>) -> Vec<String> {
    if backend.backend.tombstones() {
        groups.push(invalidation::tombstone_group(key));
    }
    groups
}

/// Stores `value` under `key`, fresh for `policy.ttl_ms` and kept for its stale windows too; in
/// serialized backends with the codec and schema versions of `site`'s policy, which its reads use.
pub(crate) async fn store<T>(
    site: &Site,
    backend: &Registered,
    key: &str,
    groups: &[String],
    generations: Vec<u64>,
    value: &Arc<T>,
    policy: Policy,
) where
    T: Serialize + Send + Sync + 'static,
{
    let retention = policy.retention();
    if let Some(memory) = backend.memory() {
        let fresh_until = if policy.serves_stale() {
            now_ms().saturating_add(policy.ttl_ms)
        } else {
            0
        };
        let stored = memory.set_typed(
            key.to_owned(),
            Arc::clone(value),
            retention,
            fresh_until,
            (groups, generations),
            max_value_bytes(),
        );
        if !stored {
            oversized(site, key);
        }
        return;
    }
    let meta = Meta::fresh(
        Duration::from_millis(policy.ttl_ms),
        type_fingerprint::<T>(site),
        generations,
        schema(site.policy, backend),
    );
    let compress_above = backend
        .storage
        .compress_above
        .unwrap_or_else(config::compress_above);
    let bytes = match envelope::encode(&meta, value.as_ref(), compress_above, max_value_bytes()) {
        Ok(bytes) => bytes,
        Err(EncodeError::Oversized) => {
            oversized(site, key);
            return;
        }
        Err(EncodeError::Codec(error)) => {
            tracing::warn!(key, %error, "value could not be serialized; not cached");
            return;
        }
    };
    let Some(bytes) = backend.seal.seal(key, bytes) else {
        return; // sealing failed or is unusable: nothing unsealed is stored (seal.rs logs why)
    };
    if backend.invalidation.blocked() {
        return; // the backend missed an invalidation: not written until it has been applied there
    }
    let stored = backend
        .guard
        .run("set", backend.backend.set(key, bytes, retention, groups))
        .await;
    if stored.is_err() {
        site.count(Event::BackendError);
    }
}

fn oversized(site: &Site, key: &str) {
    site.count(Event::Oversized);
    tracing::warn!(
        key,
        limit = max_value_bytes(),
        "value larger than CACHE_MAX_VALUE_BYTES; not cached"
    );
}

/// Removes one call's entry from the function's backend (behind the generated `*_invalidate` fns).
pub async fn invalidate_entry(backend: &str, key: String) -> Result<(), crate::CacheError> {
    crate::invalidation::invalidate_key_in(backend, key).await
}

// Support for per-call control (`control.rs`): refresh, prime and `cache_if`. Additive: the call
// path above does not use these.

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

/// The group generations a value for `key` is stored under now, as a lookup reads them (for a
/// value about to be computed or already known: refresh and prime).
pub(crate) async fn current_generations(
    site: &Site,
    backend: &Registered,
    key: &str,
    groups: &[String],
) -> Result<Vec<u64>, crate::BackendError> {
    /// Never stored: a typed lookup of it is a miss that carries the generations.
    #[derive(Clone)]
    struct NoValue;
    if let Some(memory) = backend.memory() {
        return Ok(match memory.get_typed::<NoValue>(key, groups) {
            TypedLookup::Miss(generations) | TypedLookup::Stale(_, generations, _) => generations,
            TypedLookup::Hit(NoValue) => unreachable!("no entry holds a `NoValue`"),
        });
    }
    if backend.invalidation.blocked() {
        return Err(crate::BackendError::Unavailable);
    }
    match backend
        .guard
        .run("get", backend.backend.get(key, groups))
        .await
    {
        Ok(lookup) => Ok(lookup.generations),
        Err(error) => {
            site.count(Event::BackendError);
            Err(error)
        }
    }
}

/// Stores `value` as a leader does: under the store barrier of `key`, unless an invalidation of
/// `key` or of one of `groups` was recorded after `epoch`; a key invalidation that passed its
/// barrier during the write removes what was written. Returns whether the value was written.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn store_checked<T>(
    site: &'static Site,
    backend: &'static Registered,
    key: &str,
    groups: &[String],
    generations: Vec<u64>,
    epoch: u64,
    groups_epoch: u64,
    value: &Arc<T>,
    ttl_from: Option<TtlFrom<T>>,
) -> bool
where
    T: Serialize + Send + Sync + 'static,
{
    let policy = value_policy(site.policy, ttl_from, value);
    if policy.ttl_ms == 0 {
        return false;
    }
    let _permit = invalidation::store_permit(backend, key).await;
    if invalidation::invalidated_since(backend, epoch, key, &[])
        || invalidation::invalidated_since(backend, groups_epoch, "", groups)
    {
        return false;
    }
    store(site, backend, key, groups, generations, value, policy).await;
    if invalidation::invalidated_since(backend, epoch, key, &[]) {
        let removed = backend.backend.delete(key);
        let _ = backend.guard.run_always("delete", removed).await;
        return false;
    }
    true
}

/// Runs `body` as the leader of the flight `leader` heads (a refresh, see `control.rs`): its `Ok`
/// value is stored and handed to the followers as a miss's leader does, without the
/// cross-process lock and without serving a stale value.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn lead<T, E, F>(
    site: &'static Site,
    backend: &'static Registered,
    key: String,
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
        groups,
        generations: Some(generations),
        epoch,
        lock_token: None,
        flight_key,
        chain: flight::current_chain(),
    };
    let result = match body {
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
    };
    result.map(Arc::unwrap_or_clone)
}
