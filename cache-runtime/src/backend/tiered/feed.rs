//! The local tier as seen by whatever feeds it invalidations (a pub/sub subscription or a tracking
//! connection): invalidations to apply, and whether a feed is live.
//!
//! Each feed session has a number. The local tier is usable only while a session is live; a session
//! going live empties it first (invalidations may have been missed while none was), and a session
//! going down empties it again. A late "down" from an earlier session never affects a later one.

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc, Weak,
};

use super::super::{redis::Invalidation, MemoryBackend};

/// Shared by the backend (to read liveness) and its feed task (to apply and mark).
#[derive(Debug, Default)]
pub(crate) struct Liveness {
    /// The live session's number, 0 when none is live.
    live: AtomicU64,
    /// The last session number handed out.
    sessions: AtomicU64,
}

impl Liveness {
    pub(crate) fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst) != 0
    }
}

/// What a feed task holds: the local tier (weakly: the feed ends with the backend) and liveness.
#[derive(Clone)]
pub(crate) struct Feed {
    local: Weak<MemoryBackend>,
    liveness: Arc<Liveness>,
}

/// One feed session; `ended` is set by whoever sees its connection end first.
pub(crate) struct Session {
    number: u64,
    ended: AtomicBool,
    /// Wakes the task that keeps the session when it has ended.
    ended_signal: tokio::sync::Notify,
}

impl Session {
    /// Returns once the session has been marked down (at once if it already was).
    pub(crate) async fn ended(&self) {
        self.ended_signal.notified().await;
    }
}

impl Feed {
    pub(crate) fn new(local: &Arc<MemoryBackend>, liveness: &Arc<Liveness>) -> Self {
        Self {
            local: Arc::downgrade(local),
            liveness: Arc::clone(liveness),
        }
    }

    /// Whether the backend still exists (a feed task ends when it does not).
    pub(crate) fn wanted(&self) -> bool {
        self.local.strong_count() > 0
    }

    pub(crate) fn new_session(&self) -> Arc<Session> {
        Arc::new(Session {
            number: self.liveness.sessions.fetch_add(1, Ordering::SeqCst) + 1,
            ended: AtomicBool::new(false),
            ended_signal: tokio::sync::Notify::new(),
        })
    }

    /// Applies one invalidation to the local tier.
    pub(crate) fn apply(&self, invalidation: Option<Invalidation<'_>>) {
        let Some(local) = self.local.upgrade() else {
            return;
        };
        match invalidation {
            Some(Invalidation::Key(key)) => super::forget_key(&local, key),
            Some(Invalidation::Group(group)) => local.bump_group(group),
            Some(Invalidation::All) | None => local.clear_now(),
        }
    }

    /// `session` now receives every invalidation: empties the local tier, then makes it usable.
    pub(crate) fn up(&self, session: &Session) {
        self.clear();
        self.liveness.live.store(session.number, Ordering::SeqCst);
        if session.ended.load(Ordering::SeqCst) {
            // Its connection ended while it went live.
            self.down(session);
        }
    }

    /// `session`'s connection ended: if it was the live one, the local tier is unusable and empty.
    pub(crate) fn down(&self, session: &Session) {
        session.ended.store(true, Ordering::SeqCst);
        session.ended_signal.notify_one();
        let was_live = self
            .liveness
            .live
            .compare_exchange(session.number, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if was_live {
            self.clear();
        }
    }

    fn clear(&self) {
        if let Some(local) = self.local.upgrade() {
            local.clear_now();
        }
    }
}

/// Held by a feed task: however the task ends (a panic included), no session stays live and the
/// local tier is emptied.
pub(crate) struct FeedEnded(pub(crate) Feed);

impl Drop for FeedEnded {
    fn drop(&mut self) {
        self.0.liveness.live.store(0, Ordering::SeqCst);
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed() -> (Arc<MemoryBackend>, Arc<Liveness>, Feed) {
        let local = Arc::new(MemoryBackend::with_limits(100, 1 << 20));
        let liveness = Arc::new(Liveness::default());
        let feed = Feed::new(&local, &liveness);
        (local, liveness, feed)
    }

    #[test]
    fn a_late_down_of_an_old_session_leaves_the_new_one_live() {
        let (_local, liveness, feed) = feed();
        let old = feed.new_session();
        feed.up(&old);
        assert!(liveness.is_live());
        feed.down(&old);
        assert!(!liveness.is_live());
        let new = feed.new_session();
        feed.up(&new);
        feed.down(&old); // e.g. the old connection's driver reporting its end late
        assert!(liveness.is_live());
        feed.down(&new);
        assert!(!liveness.is_live());
    }

    #[test]
    fn a_session_that_ended_before_going_live_does_not_stay_live() {
        let (_local, liveness, feed) = feed();
        let session = feed.new_session();
        feed.down(&session);
        feed.up(&session);
        assert!(!liveness.is_live());
    }

    #[test]
    fn going_live_and_down_empty_the_tier_and_the_end_of_the_task_too() {
        let (local, liveness, feed) = feed();
        let clears = local.clears();
        let session = feed.new_session();
        feed.up(&session);
        assert_eq!(local.clears(), clears + 1);
        feed.apply(None);
        assert_eq!(
            local.clears(),
            clears + 2,
            "an unknown or flush report empties it"
        );
        feed.down(&session);
        assert_eq!(local.clears(), clears + 3);
        feed.up(&feed.new_session());
        drop(FeedEnded(feed.clone()));
        assert!(!liveness.is_live());
        assert_eq!(local.clears(), clears + 5);
        drop(local);
        assert!(!feed.wanted());
    }
}
