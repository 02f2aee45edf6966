//! Single-flight: concurrent misses on one key in one process run the body once.
//!
//! The first caller becomes the *leader* and runs the body; later callers *follow* and receive the
//! leader's value, or its error when the error type can be cloned. If the leader gives up (its future
//! is dropped, its body panics, or it fails with an error that cannot be shared), its followers are
//! released and try again: one of them becomes the new leader, so nobody hangs and the body does not
//! run once per waiter.
//!
//! A flight also remembers the group generations its leader read: a caller whose own lookup saw
//! other generations (another process invalidated a group since) does not join it, and leads a
//! computation of its own. And each computation knows the chain of flights it runs inside (a
//! task-local, carried into spawned bodies), so a cached fn that re-enters its own key runs that
//! inner call uncached instead of waiting for itself.

use std::{
    any::Any,
    collections::HashMap,
    future::Future,
    sync::{Arc, LazyLock, Mutex},
};

use tokio::sync::watch;

/// A value shared with followers.
pub(crate) type Shared = Arc<dyn Any + Send + Sync>;

#[derive(Clone)]
pub(crate) enum Outcome {
    Pending,
    Done(Shared),
    Failed(Shared),
    /// The leader's outcome is its own (not cached, not shareable): followers run their own body.
    Passed,
    Abandoned,
}

/// What a follower received.
pub(crate) enum Followed {
    /// The leader's value.
    Value(Shared),
    /// The leader's error (a clone of it).
    Error(Shared),
    /// Run your own body, uncached.
    Pass,
    /// The leader gave up: look the key up again and maybe lead.
    Retry,
}

struct Flight {
    epoch: u64,
    /// The group generations the leader's lookup saw (`None`: its backend failed).
    generations: Option<Vec<u64>>,
    outcome: watch::Sender<Outcome>,
}

static FLIGHTS: LazyLock<Mutex<HashMap<String, Arc<Flight>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// What a caller does about a miss.
pub(crate) enum Role {
    /// Run the body, then [`Leader::finish`].
    Leader(Leader),
    /// Wait for the leader with [`follow`].
    Follower(watch::Receiver<Outcome>),
}

/// Joins the flight for `key`, or starts one under invalidation `epoch` with the `generations`
/// this caller's lookup saw. A flight is not joined when an invalidation in this process has
/// `overtaken` it since it started, or when its leader saw other generations (an invalidation
/// elsewhere): its value may predate it.
pub(crate) fn join(
    key: String,
    epoch: u64,
    generations: &Option<Vec<u64>>,
    overtaken: impl Fn(u64) -> bool,
) -> Role {
    let mut flights = FLIGHTS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(flight) = flights.get(&key) {
        let same_generations = flight.generations == *generations;
        if same_generations && (flight.epoch == epoch || !overtaken(flight.epoch)) {
            return Role::Follower(flight.outcome.subscribe());
        }
    }
    let flight = Arc::new(Flight {
        epoch,
        generations: generations.clone(),
        outcome: watch::Sender::new(Outcome::Pending),
    });
    flights.insert(key.clone(), Arc::clone(&flight));
    Role::Leader(Leader {
        key,
        flight,
        finished: false,
    })
}

/// The flights a computation runs inside, innermost first.
#[derive(Debug)]
pub(crate) struct Chain {
    key: String,
    parent: Option<Arc<Chain>>,
}

tokio::task_local! {
    static CHAIN: Arc<Chain>;
}

/// The chain of the current task (captured where the caller runs, before a body is spawned).
pub(crate) fn current_chain() -> Option<Arc<Chain>> {
    CHAIN.try_with(Arc::clone).ok()
}

/// Whether the current task runs inside the flight `key` (a re-entrant call).
pub(crate) fn runs_inside(key: &str) -> bool {
    let mut link = current_chain();
    while let Some(chain) = link {
        if chain.key == key {
            return true;
        }
        link = chain.parent.clone();
    }
    false
}

/// Runs `body` as the computation of flight `key`, inside `parent`.
pub(crate) fn inside<F: Future>(
    parent: Option<Arc<Chain>>,
    key: String,
    body: F,
) -> impl Future<Output = F::Output> {
    CHAIN.scope(Arc::new(Chain { key, parent }), body)
}

/// Waits for the leader.
pub(crate) async fn follow(mut receiver: watch::Receiver<Outcome>) -> Followed {
    let outcome = receiver
        .wait_for(|o| !matches!(o, Outcome::Pending))
        .await
        .ok()
        .map(|o| o.clone());
    match outcome {
        Some(Outcome::Done(value)) => Followed::Value(value),
        Some(Outcome::Failed(error)) => Followed::Error(error),
        Some(Outcome::Passed) => Followed::Pass,
        _ => Followed::Retry,
    }
}

/// The caller that runs the body. Dropping it without [`finish`](Leader::finish) releases followers.
#[doc(hidden)]
pub struct Leader {
    key: String,
    flight: Arc<Flight>,
    finished: bool,
}

impl Leader {
    /// Hands `value` to every follower and ends the flight.
    pub(crate) fn finish(mut self, value: Shared) {
        self.finished = true;
        self.end(Outcome::Done(value));
    }

    /// Tells every follower to run its own body, and ends the flight.
    pub(crate) fn pass(mut self) {
        self.finished = true;
        self.end(Outcome::Passed);
    }

    /// Hands (a clone of) the leader's error to every follower and ends the flight.
    pub(crate) fn fail(mut self, error: Shared) {
        self.finished = true;
        self.end(Outcome::Failed(error));
    }

    fn end(&self, outcome: Outcome) {
        {
            let mut flights = FLIGHTS.lock().unwrap_or_else(|p| p.into_inner());
            if flights
                .get(&self.key)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
            {
                flights.remove(&self.key);
            }
        }
        self.flight.outcome.send_replace(outcome);
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if !self.finished {
            self.end(Outcome::Abandoned);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_get_the_leaders_value() {
        let Role::Leader(leader) = join("t1".into(), 0, &None, |_| true) else {
            panic!("first caller must lead")
        };
        let Role::Follower(rx) = join("t1".into(), 0, &None, |_| true) else {
            panic!("second caller must follow")
        };
        let waiter = tokio::spawn(follow(rx));
        leader.finish(Arc::new(7u32));
        let Followed::Value(value) = waiter.await.unwrap() else {
            panic!("follower got no value")
        };
        assert_eq!(value.downcast_ref::<u32>(), Some(&7));
        assert!(matches!(
            join("t1".into(), 0, &None, |_| true),
            Role::Leader(_)
        ));
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_followers() {
        let Role::Leader(leader) = join("t2".into(), 0, &None, |_| true) else {
            panic!()
        };
        let Role::Follower(rx) = join("t2".into(), 0, &None, |_| true) else {
            panic!()
        };
        let waiter = tokio::spawn(follow(rx));
        drop(leader);
        assert!(matches!(waiter.await.unwrap(), Followed::Retry));
    }

    #[tokio::test]
    async fn a_newer_epoch_does_not_join_an_older_flight() {
        let Role::Leader(old) = join("t3".into(), 0, &None, |_| true) else {
            panic!()
        };
        let Role::Leader(new) = join("t3".into(), 1, &None, |_| true) else {
            panic!("an invalidation happened: must not join the older flight")
        };
        drop(old); // must not remove the newer flight
        assert!(matches!(
            join("t3".into(), 1, &None, |_| true),
            Role::Follower(_)
        ));
        drop(new);
    }

    #[tokio::test]
    async fn other_generations_do_not_join() {
        let Role::Leader(old) = join("t4".into(), 0, &Some(vec![5]), |_| false) else {
            panic!()
        };
        let Role::Leader(new) = join("t4".into(), 0, &Some(vec![6]), |_| false) else {
            panic!("a group moved since the leader's lookup: must not join its flight")
        };
        assert!(matches!(
            join("t4".into(), 0, &Some(vec![6]), |_| false),
            Role::Follower(_)
        ));
        drop((old, new));
    }

    #[tokio::test]
    async fn the_chain_follows_nested_computations() {
        assert!(!runs_inside("outer"));
        inside(None, "outer".into(), async {
            assert!(runs_inside("outer"));
            let parent = current_chain();
            tokio::spawn(inside(parent, "inner".into(), async {
                assert!(runs_inside("outer") && runs_inside("inner"));
            }))
            .await
            .unwrap();
            assert!(!runs_inside("inner"));
        })
        .await;
    }
}
