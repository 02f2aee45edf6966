//! Per-call control of memoized fns, behind the companions `#[cached]` generates (`<fn>_refresh`,
//! `<fn>_prime`, `<fn>_peek`) and its `force_refresh` and `cache_if` arguments.
//!
//! - **Refresh** ([`refresh`]): the call skips the lookup, invalidates the key (as
//!   [`invalidate_key_in`](crate::invalidation) does: so that no computation that started before,
//!   in any process, stores its older value afterwards), then runs the body as the leader of a new
//!   flight (callers that miss meanwhile in this process join it) and stores its value under the
//!   generations read after that invalidation. A call is marked for refresh either by its
//!   `force_refresh` expression or by [`forced`], which polls the call's future once with a
//!   thread-local mark set that the generated code takes first thing ([`take_refresh`]).
//! - **Prime** ([`prime`]): a value the caller already has is stored as if a call had computed it:
//!   the key is invalidated first (older computations must not overwrite it), then the value is
//!   stored under the barrier and the epoch check of every store, so an invalidation recorded after
//!   the prime started wins over it.
//! - **Peek** ([`peek`]): the fresh cached value, if any; never runs anything, counts nothing.
//! - **`cache_if`** ([`keep_if`]): a value the predicate rejects travels as an error
//!   ([`Uncached::Rejected`]) that is not stored, then becomes the call's value again.

use std::{cell::Cell, future::Future, sync::Arc};

use serde::{de::DeserializeOwned, Serialize};

use crate::{
    flight::{self, Role},
    invalidation,
    key::{normalize_key, KeyBuf},
    memo::{self, Body, ErrorSharing, Errors, Probe, TtlFrom},
    registry::Registered,
    stats::{Event, Site},
    CacheError,
};

thread_local! {
    /// The fn whose call starts next in this thread is to be refreshed (`""`: whichever starts
    /// first). Set only while [`forced`] polls a call for the first time.
    static FORCED: Cell<Option<&'static str>> = const { Cell::new(None) };
}

/// Whether the call of the fn named `token` that starts now was asked to refresh (by [`forced`]).
/// Called first thing by every generated fn: one thread-local read.
#[inline]
pub fn take_refresh(token: &'static str) -> bool {
    FORCED.with(|forced| match forced.get() {
        Some(marked) if marked.is_empty() || marked == token => {
            forced.set(None);
            true
        }
        _ => false,
    })
}

/// Restores the thread's mark when the first poll ends, however it ends.
struct Restore(Option<&'static str>);

impl Drop for Restore {
    fn drop(&mut self) {
        FORCED.with(|forced| forced.set(self.0));
    }
}

/// Runs `call` (the future of a call of the `#[cached]` fn `token` names) as a refresh: its body
/// runs and its value is stored, whatever is cached. Behind the generated `<fn>_refresh`.
pub async fn forced<F: Future>(token: &'static str, call: F) -> F::Output {
    let mut call = std::pin::pin!(call);
    let mut first = true;
    std::future::poll_fn(move |cx| {
        if !first {
            return call.as_mut().poll(cx);
        }
        first = false;
        // A generated fn takes the mark before anything else, in its first poll.
        let _restore = Restore(FORCED.with(|forced| forced.replace(Some(token))));
        call.as_mut().poll(cx)
    })
    .await
}

/// Runs a call of a `#[cached]` fn as a refresh: its body runs now (it never joins a computation
/// that started before, nor returns a cached value), the key's old entry is invalidated, and the
/// new value is stored, as the generated `<fn>_refresh` does.
///
/// `call` must be the future of the call itself (`load_user(7)`, `repo.load(7)`), not a future
/// that runs other code first: the mark is taken by the first `#[cached]` call that starts when
/// `call` is first polled. Works wherever the companions cannot be generated (trait impls with
/// `companions = false`).
///
/// ```
/// use cache_runtime::cached;
///
/// #[cached(ttl = 60)]
/// async fn answer() -> u64 {
///     42
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// assert_eq!(answer().await, 42); // runs the body
/// assert_eq!(cache_runtime::refresh(answer()).await, 42); // runs it again, stores the new value
/// # }
/// ```
pub async fn refresh<F: Future>(call: F) -> F::Output {
    forced("", call).await
}

/// The refresh path of a generated fn (see the docs of `control.rs`). The cache never fails the
/// call: when the key cannot be built, the backend is unknown or fails, the body runs uncached.
pub async fn refresh_call<T, E, F>(
    site: &'static Site,
    key: KeyBuf,
    groups: Vec<String>,
    body: Body<T, E, F>,
    sharing: Option<ErrorSharing<E>>,
    ttl_from: Option<TtlFrom<T>>,
) -> Result<T, E>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    F: Future<Output = Result<T, E>>,
{
    site.register();
    site.count(Event::Miss);
    let Some(backend) = site.resolve() else {
        return body.run_in_place().await;
    };
    if !key.is_keyable() {
        tracing::warn!(
            function = site.function,
            "an argument of this call could not be serialized into its key; refreshing uncached"
        );
        return body.run_in_place().await;
    }
    let (key, call) = key.into_key_and_call();
    let key = normalize_key(key);
    if let Err(error) = invalidation::invalidate_key_in(site.backend, key.clone()).await {
        // The backend is not used by this process until the invalidation is applied there.
        tracing::warn!(function = site.function, %error, "refresh: the old entry could not be invalidated; running uncached");
        return body.run_in_place().await;
    }
    let epoch = invalidation::invalidation_epoch();
    let groups = memo::groups_for(backend, &key, groups);
    let Ok(generations) = memo::current_generations(site, backend, &key, &groups).await else {
        return body.run_in_place().await;
    };
    let flight_key = memo::flight_key_of(backend, &key);
    if flight::runs_inside(&flight_key) {
        return body.run_in_place().await; // inside its own computation: cannot lead its flight
    }
    let joined_under = match backend.memory() {
        Some(_) => None,
        None => Some(generations.clone()),
    };
    let role = flight::join(flight_key.clone(), epoch, &joined_under, |started| {
        invalidation::invalidated_since(backend, started, &key, &groups)
    });
    match role {
        Role::Leader(leader) => {
            let errors = Errors::new(sharing);
            memo::lead(
                site,
                backend,
                memo::CallKey { key, call },
                groups,
                generations,
                epoch,
                flight_key,
                leader,
                body,
                errors,
                ttl_from,
            )
            .await
        }
        Role::Follower(_) => {
            // A computation that started after the invalidation is running: a refresh still runs
            // its own body (it was asked to), and stores its value as that computation would.
            let result = body.run_in_place().await;
            if let Ok(value) = &result {
                let value = Arc::new(value.clone());
                memo::store_checked(
                    site,
                    backend,
                    &key,
                    call.as_deref(),
                    &groups,
                    generations,
                    epoch,
                    epoch,
                    &value,
                    ttl_from,
                )
                .await;
            }
            result
        }
    }
}

/// The cached value of one call if a fresh one is stored (stale values do not count), without
/// running anything. Behind the generated `<fn>_peek`; counts nothing in the stats.
pub async fn peek<T>(site: &'static Site, key: KeyBuf, groups: Vec<String>) -> Option<T>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let backend = site.resolve()?;
    if !key.is_keyable() {
        return None;
    }
    let (key, call) = key.into_key_and_call();
    let key = normalize_key(key);
    let groups = memo::groups_for(backend, &key, groups);
    match memo::probe::<T>(site, backend, &key, call.as_deref(), &groups).await {
        Probe::Hit(value) => Some(value),
        Probe::Stale { .. } | Probe::Miss(_) => None,
    }
}

/// Stores `value` as the result of one call, as if the call had computed it now (behind the
/// generated `<fn>_prime`). `Err` values are those the fn does not cache (an `Err` of a `Result`,
/// `None` with `cache_none = false`, a value `cache_if` rejects): for them the old entry is only
/// removed.
///
/// The key is invalidated first, in the fn's backend (older computations, in any process, must
/// not overwrite the primed value), then the value is stored under the store barrier, unless an
/// invalidation of the key or of one of its groups was recorded in this process after that.
/// `Err` when the key cannot be built, the backend is unknown, or the invalidation fails (then
/// nothing is stored); `Ok` once the old entry is gone (should the store itself fail, the next
/// call computes the value).
pub async fn prime<T, X>(
    site: &'static Site,
    key: KeyBuf,
    groups: Vec<String>,
    value: Result<T, X>,
    target: &str,
    ttl_from: Option<TtlFrom<T>>,
) -> Result<(), CacheError>
where
    T: Serialize + Clone + Send + Sync + 'static,
{
    if !key.is_keyable() {
        return Err(crate::__private::unkeyable(target));
    }
    let (key, call) = key.into_key_and_call();
    let key = normalize_key(key);
    let backend = site
        .resolve()
        .ok_or_else(|| CacheError::UnknownBackend(site.backend.to_owned()))?;
    let groups = memo::groups_for(backend, &key, groups);

    // Group invalidations that run while the key is invalidated below must still win: in this
    // process by the epoch read now, in others by the generations read now.
    let groups_epoch = invalidation::invalidation_epoch();
    let before = generations_of(site, backend, &key, &groups).await;
    let recorded = invalidation::invalidate_key_recorded(site.backend, key.clone()).await?;
    let Ok(value) = value else {
        return Ok(()); // not cached: the old entry is gone, which is all there is to do
    };
    // Key invalidations recorded since the prime started win too: one recorded before the prime's
    // own (the slot had moved past `groups_epoch`), or after it (the slot moved past its own
    // number, which the store checks as its epoch).
    let marks = recorded
        .iter()
        .find(|(scope, _)| *scope == backend.scope)
        .map(|(_, marks)| *marks);
    let Some(marks) = marks.filter(|marks| marks.before <= groups_epoch) else {
        return Ok(());
    };
    let epoch = marks.own;
    let generations = generations_of(site, backend, &key, &groups).await?;
    // The key's own tombstone (last, on shared backends) moved with the invalidation above.
    let own = usize::from(backend.backend.tombstones());
    let unchanged = |before: &Vec<u64>| {
        let compared = generations.len().saturating_sub(own);
        before.len() == generations.len() && before[..compared] == generations[..compared]
    };
    if !before.as_ref().is_ok_and(unchanged) {
        return Ok(()); // a group was invalidated meanwhile: the value is not kept
    }
    let value = Arc::new(value);
    memo::store_checked(
        site,
        backend,
        &key,
        call.as_deref(),
        &groups,
        generations,
        epoch,
        groups_epoch,
        &value,
        ttl_from,
    )
    .await;
    Ok(())
}

/// The generations of `groups` now, for a store under `key`.
async fn generations_of(
    site: &'static Site,
    backend: &'static Registered,
    key: &str,
    groups: &[String],
) -> Result<Vec<u64>, CacheError> {
    memo::current_generations(site, backend, key, groups)
        .await
        .map_err(|source| CacheError::Backend {
            backend: backend.name.clone(),
            source,
        })
}

/// Why a value of a fn with `cache_if` is not stored.
#[derive(Debug, Clone)]
pub enum Uncached<E, T> {
    /// What the fn does not cache anyway (an `Err`, an uncached `None`).
    Error(E),
    /// A value `cache_if` rejected: returned to the caller, not stored.
    Rejected(T),
}

impl<E, T> Uncached<E, T> {
    /// Only errors are failures (that a stale value may stand in for), not rejected values.
    pub fn is_failure(&self) -> bool {
        matches!(self, Self::Error(_))
    }
}

/// A value `keep` rejects becomes an error that is not stored.
#[inline]
pub fn keep_if<T, E>(value: Result<T, E>, keep: fn(&T) -> bool) -> Result<T, Uncached<E, T>> {
    match value {
        Ok(value) if keep(&value) => Ok(value),
        Ok(value) => Err(Uncached::Rejected(value)),
        Err(error) => Err(Uncached::Error(error)),
    }
}

/// Undoes [`keep_if`]: a rejected value is the call's value again.
#[inline]
pub fn kept<T, E>(value: Result<T, Uncached<E, T>>) -> Result<T, E> {
    match value {
        Ok(value) | Err(Uncached::Rejected(value)) => Ok(value),
        Err(Uncached::Error(error)) => Err(error),
    }
}

/// [`memoize`](crate::__private::memoize) for fns with `cache_if`: a rejected value is not a
/// failure a stale value (`stale_if_error`) may stand in for.
pub async fn memoize_kept<T, E, V, F>(
    site: &'static Site,
    key: KeyBuf,
    groups: Vec<String>,
    body: Body<T, Uncached<E, V>, F>,
    sharing: Option<ErrorSharing<Uncached<E, V>>>,
    ttl_from: Option<TtlFrom<T>>,
) -> Result<T, Uncached<E, V>>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    F: Future<Output = Result<T, Uncached<E, V>>>,
{
    let errors = Errors::failing_when(sharing, Uncached::is_failure);
    memo::memoize_with(site, key, groups, body, errors, ttl_from).await
}

/// The head of the default key of a method of a trait impl, `"<Type as Trait>::{function}:"`, from
/// the type name of the method's fn item (`<app::Db as app::Repo>::load`, with generic arguments
/// after the name for generic methods, which are dropped).
///
/// ```
/// use cache_runtime::__private::fn_item_prefix;
/// assert_eq!(fn_item_prefix("<app::Db as app::Repo>::load", "load"), "<app::Db as app::Repo>::load:");
/// assert_eq!(
///     fn_item_prefix("<app::Db<u8> as app::Repo<'_>>::load<alloc::string::String>", "load"),
///     "<app::Db<u8> as app::Repo<'_>>::load:"
/// );
/// ```
pub fn fn_item_prefix(fn_type_name: &str, function: &str) -> String {
    // The parent ends at the last `::` outside angle brackets.
    let mut depth = 0usize;
    let mut parent_end = None;
    let bytes = fn_type_name.as_bytes();
    for (at, byte) in bytes.iter().enumerate() {
        match byte {
            b'<' => depth += 1,
            b'>' => depth = depth.saturating_sub(1),
            b':' if depth == 0 && bytes.get(at + 1) == Some(&b':') => parent_end = Some(at),
            _ => {}
        }
    }
    let parent = parent_end.map_or(fn_type_name, |end| &fn_type_name[..end]);
    crate::key::fn_prefix(parent, function)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_is_taken_once_by_its_fn() {
        let _restore = Restore(FORCED.with(|forced| forced.replace(Some("m::f"))));
        assert!(!take_refresh("m::g"));
        assert!(take_refresh("m::f"));
        assert!(!take_refresh("m::f"));
    }

    #[test]
    fn rejected_values_come_back_and_are_no_failures() {
        let kept_value = keep_if::<u8, ()>(Ok(3), |v| *v > 5);
        assert!(matches!(&kept_value, Err(e) if !e.is_failure()));
        assert_eq!(kept(kept_value), Ok(3));
        let error = keep_if::<u8, &str>(Err("e"), |_| true);
        assert!(matches!(&error, Err(e) if e.is_failure()));
        assert_eq!(kept(error), Err("e"));
    }
}
