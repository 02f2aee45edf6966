//! A user's wrapper around the memory store, with a hook before each call: the runtime cannot see
//! the store inside, so calls take the serialized path. Tests count calls or hold one.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Mutex,
    },
    time::Duration,
};

use cache_runtime::{Backend, BackendError, Lookup, MemoryBackend};
use tokio::sync::Notify;

/// A call of the [`Backend`] trait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Get,
    Set,
    Delete,
    InvalidateGroup,
    Clear,
    Unlock,
}

/// What a test adds before each call of a [`Wrapped`] store.
pub trait Hook: Send + Sync + 'static {
    fn before(&self, call: Call) -> impl Future<Output = ()> + Send;
}

/// A memory store behind `hook`, with computation locks of its own (key to holder's token).
pub struct Wrapped<H> {
    pub inner: MemoryBackend,
    pub hook: H,
    pub locks: Mutex<HashMap<String, u64>>,
}

impl<H: Hook> Wrapped<H> {
    pub fn new(hook: H) -> Self {
        Self {
            inner: MemoryBackend::default(),
            hook,
            locks: Mutex::default(),
        }
    }
}

#[cache_runtime::async_trait]
impl<H: Hook> Backend for Wrapped<H> {
    async fn get(&self, key: &str, groups: &[String]) -> Result<Lookup, BackendError> {
        self.hook.before(Call::Get).await;
        self.inner.get(key, groups).await
    }
    async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
        groups: &[String],
    ) -> Result<(), BackendError> {
        self.hook.before(Call::Set).await;
        self.inner.set(key, value, ttl, groups).await
    }
    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        self.hook.before(Call::Delete).await;
        self.inner.delete(key).await
    }
    async fn invalidate_group(&self, group: &str) -> Result<(), BackendError> {
        self.hook.before(Call::InvalidateGroup).await;
        self.inner.invalidate_group(group).await
    }
    async fn clear(&self) -> Result<(), BackendError> {
        self.hook.before(Call::Clear).await;
        self.inner.clear().await
    }
    async fn try_lock(&self, key: &str, token: u64, _ttl: Duration) -> Result<bool, BackendError> {
        let mut locks = self.locks.lock().unwrap();
        Ok(*locks.entry(key.to_owned()).or_insert(token) == token)
    }
    async fn unlock(&self, key: &str, token: u64) -> Result<(), BackendError> {
        self.hook.before(Call::Unlock).await;
        let mut locks = self.locks.lock().unwrap();
        if locks.get(key) == Some(&token) {
            locks.remove(key);
        }
        Ok(())
    }
}

/// Counts the calls of one kind.
pub struct Count {
    call: Call,
    pub count: AtomicUsize,
}

impl Count {
    pub fn new(call: Call) -> Self {
        Self {
            call,
            count: AtomicUsize::new(0),
        }
    }
}

impl Hook for Count {
    async fn before(&self, call: Call) {
        if call == self.call {
            self.count.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// While `hold` is set, the next call of one kind after the `skip` before it waits: `held` is
/// notified, and the call goes on when `resume` is (`hold` is cleared then).
pub struct Hold {
    call: Call,
    pub hold: AtomicBool,
    pub skip: AtomicUsize,
    pub held: Notify,
    pub resume: Notify,
}

impl Hold {
    pub fn new(call: Call) -> Self {
        Self {
            call,
            hold: AtomicBool::new(false),
            skip: AtomicUsize::new(0),
            held: Notify::new(),
            resume: Notify::new(),
        }
    }
}

impl Hook for Hold {
    async fn before(&self, call: Call) {
        if call != self.call || !self.hold.load(Ordering::SeqCst) {
            return;
        }
        let skipped = self
            .skip
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if !skipped && self.hold.swap(false, Ordering::SeqCst) {
            self.held.notify_one();
            self.resume.notified().await;
        }
    }
}
