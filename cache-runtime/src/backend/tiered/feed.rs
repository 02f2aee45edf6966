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

/// One feed session; `down` is set by whoever sees its connection end first.
pub(crate) struct Session {
    number: u64,
    ended: AtomicBool,
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
