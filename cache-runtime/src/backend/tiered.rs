//! Two tiers: a small in-process cache in front of Redis, kept coherent across processes by Redis
//! pub/sub.
//!
//! Reads look in the local tier first (typed values, no round trip), then in Redis; a value found in
//! Redis is copied into the local tier. Every invalidation through any [`RedisBackend`] on the same
//! prefix is announced on the channel `{prefix}invalidations`; each process's subscriber applies it
//! to its local tier within milliseconds.
//!
//! Safety nets: the local tier is only used while the subscription is live; when it drops (Redis
//! restart, network), the local tier is emptied and bypassed until the subscription is back, and
//! emptied again then. Local entries also live at most `local_ttl` (default 30 s), which bounds
//! staleness even if a message were lost on a connection that stays up.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Once, Weak,
    },
    time::Duration,
};

use async_trait::async_trait;
use futures_util::StreamExt;

use super::{
    redis::{Invalidation, RedisBackend},
    Backend, Lookup, MemoryBackend,
};
use crate::BackendError;

/// Default bound of the local tier's entry lifetime.
pub const DEFAULT_LOCAL_TTL: Duration = Duration::from_secs(30);
/// Pause between subscription attempts.
const RESUBSCRIBE_EVERY: Duration = Duration::from_millis(250);

/// A memory tier in front of a Redis tier, invalidated across processes by pub/sub.
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
    subscribed: Arc<AtomicBool>,
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
            subscribed: Arc::new(AtomicBool::new(false)),
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

    /// Whether the invalidation subscription is live (the local tier is used only then).
    pub fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
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
            // On the library's runtime: the subscription must outlive the caller's runtime.
            crate::io::spawn(subscribe(
                self.remote.pubsub_client().clone(),
                self.remote.invalidation_channel(),
                Arc::downgrade(&self.local),
                Arc::clone(&self.subscribed),
            ));
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

/// Marks the subscription down, and empties the local tier, when the subscriber ends however it
/// ends (a panic included): the local tier is never used without a live subscription.
struct SubscriptionDown {
    local: Weak<MemoryBackend>,
    subscribed: Arc<AtomicBool>,
}

impl Drop for SubscriptionDown {
    fn drop(&mut self) {
        self.subscribed.store(false, Ordering::Release);
        if let Some(local) = self.local.upgrade() {
            local.clear_now();
        }
    }
}

/// Keeps a subscription to the invalidation channel and applies its messages to the local tier,
/// until the backend is dropped.
async fn subscribe(
    client: redis::Client,
    channel: String,
    local: Weak<MemoryBackend>,
    subscribed: Arc<AtomicBool>,
) {
    let _down = SubscriptionDown {
        local: local.clone(),
        subscribed: Arc::clone(&subscribed),
    };
    loop {
        if local.strong_count() == 0 {
            return;
        }
        if let Ok(mut pubsub) = client.get_async_pubsub().await {
            if pubsub.subscribe(&channel).await.is_ok() {
                // Anything cached before this point may have missed an invalidation.
                if let Some(local) = local.upgrade() {
                    local.clear_now();
                }
                subscribed.store(true, Ordering::Release);
                tracing::debug!(channel, "tiered cache subscribed to invalidations");
                let mut messages = pubsub.on_message();
                while let Some(message) = messages.next().await {
                    let Some(local) = local.upgrade() else {
                        return;
                    };
                    let payload = String::from_utf8_lossy(message.get_payload_bytes());
                    match Invalidation::decode(&payload) {
                        Some(Invalidation::Key(key)) => forget_key(&local, key),
                        Some(Invalidation::Group(group)) => local.bump_group(group),
                        Some(Invalidation::All) | None => local.clear_now(),
                    }
                }
                subscribed.store(false, Ordering::Release);
                if let Some(local) = local.upgrade() {
                    local.clear_now();
                }
                tracing::warn!(channel, "tiered cache lost its invalidation subscription; local tier off until it is back");
            }
        }
        tokio::time::sleep(RESUBSCRIBE_EVERY).await;
    }
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
        self.remote.clear().await
    }

    async fn try_lock(&self, key: &str, token: u64, ttl: Duration) -> Result<bool, BackendError> {
        self.remote.try_lock(key, token, ttl).await
    }

    async fn unlock(&self, key: &str, token: u64) -> Result<(), BackendError> {
        self.remote.unlock(key, token).await
    }
}
