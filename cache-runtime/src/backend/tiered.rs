//! Two tiers: a small in-process cache in front of Redis, kept coherent across processes by Redis.
//!
//! Reads look in the local tier first (typed values, no round trip), then in Redis; a value found in
//! Redis is copied into the local tier. What removes local copies, once this process has started
//! using the tier:
//! - on a single node, Redis itself: `CLIENT TRACKING ON BCAST` on a dedicated RESP3 connection
//!   reports every write, expiry, eviction or flush of this prefix's entries, group generations and
//!   key tombstones, by any client (see `tracking`). A server that refuses tracking (older than 6,
//!   some proxies) gets pub/sub instead;
//! - on a cluster, pub/sub: every invalidation through a [`RedisBackend`] on the same prefix is
//!   announced on `{prefix}invalidations`, which every node relays; the subscriber moves to the next
//!   configured node when its node is lost (see `pubsub`). (Tracking only reports the keys of the
//!   node it is enabled on.)
//!
//! Safety nets: the local tier is only used while that feed is live; when it drops (Redis restart,
//! network, node loss, no answer to a `PING` every second), the local tier is emptied and bypassed
//! until a feed is back, and emptied again then. Local entries also live at most `local_ttl`
//! (default 30 s).

mod feed;
mod pubsub;
mod tracking;

use std::{
    sync::{Arc, Once},
    time::Duration,
};

use async_trait::async_trait;

use super::{redis::RedisBackend, Backend, Lookup, MemoryBackend};
use crate::BackendError;
use feed::{Feed, Liveness};

/// Default bound of the local tier's entry lifetime.
pub const DEFAULT_LOCAL_TTL: Duration = Duration::from_secs(30);
/// How long connecting and subscribing (or enabling tracking) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a live feed's connection is checked with `PING`.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A `PING` unanswered for this long ends the feed's session.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// A memory tier in front of a Redis tier, invalidated across processes by Redis (key tracking on a
/// single node, pub/sub on a cluster).
///
/// ```no_run
/// use cache_runtime::{MemoryBackend, RedisBackend, TieredBackend};
/// # fn demo() -> Result<(), cache_runtime::BackendError> {
/// let tiered = TieredBackend::new(
///     RedisBackend::open("redis://127.0.0.1:6379")?,
///     MemoryBackend::with_limits(10_000, 64 << 20),
/// );
/// cache_runtime::register("tiered", tiered);
/// # Ok(()) }
/// ```
pub struct TieredBackend {
    local: Arc<MemoryBackend>,
    remote: RedisBackend,
    local_ttl: Duration,
    liveness: Arc<Liveness>,
    subscriber: Once,
}

impl std::fmt::Debug for TieredBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredBackend")
            .field("remote", &self.remote)
            .field("local", &self.local)
            .field("subscribed", &self.is_subscribed())
            .finish()
    }
}

impl TieredBackend {
    /// `local` in front of `remote`.
    pub fn new(remote: RedisBackend, local: MemoryBackend) -> Self {
        Self {
            local: Arc::new(local),
            remote,
            local_ttl: DEFAULT_LOCAL_TTL,
            liveness: Arc::default(),
            subscriber: Once::new(),
        }
    }

    /// The built-in `"tiered"` backend: Redis from the environment (as `"redis"`), a local tier of
    /// 10,000 entries and 64 MiB.
    pub fn from_env() -> Result<Self, BackendError> {
        Ok(Self::new(
            RedisBackend::from_env()?,
            MemoryBackend::with_limits(10_000, 64 * 1024 * 1024),
        ))
    }

    /// Local entries live at most `ttl` (and never longer than their value is fresh).
    ///
    /// This bounds how long a process can serve a value from its local tier when an invalidation
    /// announcement does not reach it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cache_runtime::{MemoryBackend, RedisBackend, TieredBackend};
    /// # fn main() -> Result<(), cache_runtime::BackendError> {
    /// let tiered = TieredBackend::new(
    ///     RedisBackend::open("redis://127.0.0.1:6379")?, // nothing connects until first use
    ///     MemoryBackend::with_limits(1_000, 8 << 20),
    /// )
    /// .with_local_ttl(Duration::from_secs(5));
    /// cache_runtime::register("tiered", tiered);
    /// # Ok(()) }
    /// ```
    pub fn with_local_ttl(mut self, ttl: Duration) -> Self {
        self.local_ttl = ttl;
        self
    }

    /// The local tier.
    pub fn local(&self) -> &MemoryBackend {
        &self.local
    }

    /// The Redis tier.
    pub fn remote(&self) -> &RedisBackend {
        &self.remote
    }

    /// Whether the invalidation feed (tracking connection or subscription) is live: the local tier
    /// is used only then.
    pub fn is_subscribed(&self) -> bool {
        self.liveness.is_live()
    }

    /// The local tier, if it may be used now; starts the subscriber on first use.
    pub(crate) fn usable_local(&self) -> Option<&MemoryBackend> {
        self.start_subscriber();
        self.is_subscribed().then_some(&*self.local)
    }

    pub(crate) fn local_ttl(&self) -> Duration {
        self.local_ttl
    }

    /// Applies an invalidation to the local tier (at once, before Redis is reached).
    pub(crate) fn invalidate_locally(&self, target: &crate::target::Target) {
        use crate::target::Target;
        match target {
            Target::Key(key) => forget_key(&self.local, key),
            Target::Group(group) => self.local.bump_group(group),
        }
    }

    fn start_subscriber(&self) {
        if self.subscriber.is_completed() {
            return;
        }
        self.subscriber.call_once(|| {
            let feed = Feed::new(&self.local, &self.liveness);
            let remote = &self.remote;
            let pubsub = (
                remote.pubsub_clients().to_vec(),
                remote.invalidation_channel(),
            );
            // On the library's runtime: the feed must outlive the caller's runtime.
            match remote.tracking_client() {
                Some(client) => crate::io::spawn(tracking::run(
                    tracking::Tracking {
                        client,
                        prefix: remote.prefix().to_owned(),
                        prefixes: remote.tracked_prefixes(),
                        fallback: pubsub,
                    },
                    feed,
                )),
                None => crate::io::spawn(pubsub::run(pubsub.0, pubsub.1, feed)),
            }
        });
    }
}

/// The groups a local entry is checked against: its own, plus one standing for its key, so that a
/// value read from Redis before a key invalidation and copied locally after it is stale.
pub(crate) fn local_groups(key: &str, groups: &[String]) -> Vec<String> {
    let mut all = Vec::with_capacity(groups.len() + 1);
    all.extend_from_slice(groups);
    all.push(format!("\u{0}key:{key}"));
    all
}

fn forget_key(local: &MemoryBackend, key: &str) {
    local.remove(key);
    local.bump_group(&format!("\u{0}key:{key}"));
}

#[async_trait]
impl Backend for TieredBackend {
    fn tombstones(&self) -> bool {
        true
    }

    async fn get(&self, key: &str, groups: &[String]) -> Result<Lookup, BackendError> {
        self.remote.get(key, groups).await
    }

    async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
        groups: &[String],
    ) -> Result<(), BackendError> {
        self.remote.set(key, value, ttl, groups).await
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        forget_key(&self.local, key);
        let result = self.remote.delete(key).await;
        forget_key(&self.local, key);
        result
    }

    async fn invalidate_group(&self, group: &str) -> Result<(), BackendError> {
        self.local.bump_group(group);
        let result = self.remote.invalidate_group(group).await;
        self.local.bump_group(group);
        result
    }

    async fn clear(&self) -> Result<(), BackendError> {
        self.local.clear_now();
        let cleared = self.remote.clear().await;
        // Again afterwards, as `delete` does: a read that reached Redis before the clear may have
        // copied what it found into the local tier meanwhile.
        self.local.clear_now();
        cleared
    }

    async fn try_lock(&self, key: &str, token: u64, ttl: Duration) -> Result<bool, BackendError> {
        self.remote.try_lock(key, token, ttl).await
    }

    async fn unlock(&self, key: &str, token: u64) -> Result<(), BackendError> {
        self.remote.unlock(key, token).await
    }
}
