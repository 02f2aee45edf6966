//! Runtimes: the library's own (one thread, started on first use) for its background work (the
//! tiered subscriber, lock releases, invalidations and their retries, follower timers), and
//! [`PerRuntime`] values (Redis connections) made on each caller's runtime.
//!
//! Tasks spawned on a caller's runtime die with it: a `#[tokio::test]` (one runtime per test), a CLI
//! that builds a runtime per command, or sync code calling `Runtime::block_on`. Background work
//! therefore lives on the library's runtime, for the rest of the process. Connections live on the
//! runtime of the callers that use them (their driver then needs no thread hop), one per runtime,
//! and are forgotten when that runtime shuts down.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, OnceLock,
    },
};

use tokio::runtime::Handle;

use crate::BackendError;

/// The handle of the library's runtime, started on first use.
pub(crate) fn handle() -> &'static Handle {
    static HANDLE: OnceLock<Handle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("cache-runtime-io")
            .build()
            .expect("cache-runtime: could not build its I/O runtime");
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("cache-runtime-io".to_owned())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))
            .expect("cache-runtime: could not start its I/O thread");
        handle
    })
}

/// Runs `work` on the library's runtime and waits for it from the caller's (any runtime, any
/// thread). Dropping the returned future does not cancel `work`.
pub(crate) async fn run<F>(work: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match handle().spawn(work).await {
        Ok(output) => output,
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        // The runtime never shuts down: a cancelled task cannot happen.
        Err(join) => panic!("cache-runtime I/O task cancelled: {join}"),
    }
}

/// Spawns background work on the library's runtime.
pub(crate) fn spawn<F>(work: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    drop(handle().spawn(work));
}

/// One value per tokio runtime, made on that runtime (so that tasks it spawns, like a connection's
/// driver, live there) and forgotten once that runtime has shut down. Callers without a runtime
/// share one made on the library's runtime. A caller's connection then needs no thread hop, and a
/// runtime that goes away takes only its own connections with it.
pub(crate) struct PerRuntime<C> {
    slots: arc_swap::ArcSwap<Vec<Arc<RuntimeSlot<C>>>>,
    writer: std::sync::Mutex<()>,
}

/// The value of one runtime.
pub(crate) struct RuntimeSlot<C> {
    runtime: tokio::runtime::Id,
    handle: Handle,
    /// Cleared when the runtime drops its tasks (it shut down).
    alive: Arc<AtomicBool>,
    value: tokio::sync::OnceCell<C>,
    /// When the value was made.
    made_at: std::sync::OnceLock<std::time::Instant>,
}

/// Clears its flag when dropped: held by a task that never ends, so only its runtime's shutdown
/// drops it.
struct AliveWhileHeld(Arc<AtomicBool>);

impl Drop for AliveWhileHeld {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl<C> Default for PerRuntime<C> {
    fn default() -> Self {
        Self {
            slots: arc_swap::ArcSwap::from_pointee(Vec::new()),
            writer: std::sync::Mutex::new(()),
        }
    }
}

impl<C: Clone + Send + Sync + 'static> PerRuntime<C> {
    /// The slot of the caller's runtime (or of the library's, outside any runtime).
    pub(crate) fn current(&self) -> Arc<RuntimeSlot<C>> {
        let handle = Handle::try_current().unwrap_or_else(|_| handle().clone());
        let runtime = handle.id();
        if let Some(slot) = slot_of(&self.slots.load(), runtime) {
            return Arc::clone(slot);
        }
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let slots = self.slots.load_full();
        if let Some(slot) = slot_of(&slots, runtime) {
            return Arc::clone(slot);
        }
        let alive = Arc::new(AtomicBool::new(true));
        let held = AliveWhileHeld(Arc::clone(&alive));
        drop(handle.spawn(async move {
            let _held = held;
            std::future::pending::<()>().await;
        }));
        let slot = Arc::new(RuntimeSlot {
            runtime,
            handle,
            alive,
            value: tokio::sync::OnceCell::new(),
            made_at: std::sync::OnceLock::new(),
        });
        let mut next: Vec<_> = slots
            .iter()
            .filter(|s| s.alive.load(Ordering::Acquire))
            .cloned()
            .collect();
        next.push(Arc::clone(&slot));
        self.slots.store(Arc::new(next));
        slot
    }

    /// Forgets the caller's runtime's value if it was made before `started` (an operation that
    /// began then on it has timed out: it may be dead without an error). A value still being made,
    /// or made since, stays; no slot is created.
    pub(crate) fn forget_if_made_before(&self, started: std::time::Instant) {
        let Ok(handle) = Handle::try_current() else {
            return;
        };
        let slots = self.slots.load();
        let stale = slot_of(&slots, handle.id())
            .filter(|slot| slot.made_at.get().is_some_and(|made| *made <= started));
        if let Some(slot) = stale {
            self.forget(slot);
        }
    }

    /// Drops `slot` (its value turned out broken): the next caller on that runtime makes another.
    pub(crate) fn forget(&self, slot: &Arc<RuntimeSlot<C>>) {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let next: Vec<_> = self
            .slots
            .load()
            .iter()
            .filter(|s| !Arc::ptr_eq(s, slot) && s.alive.load(Ordering::Acquire))
            .cloned()
            .collect();
        self.slots.store(Arc::new(next));
    }
}

/// The live slot of `runtime` among `slots`.
fn slot_of<C>(
    slots: &[Arc<RuntimeSlot<C>>],
    runtime: tokio::runtime::Id,
) -> Option<&Arc<RuntimeSlot<C>>> {
    slots
        .iter()
        .find(|slot| slot.runtime == runtime && slot.alive.load(Ordering::Acquire))
}

impl<C: Clone + Send + Sync + 'static> RuntimeSlot<C> {
    /// The value, made by `make` on this slot's runtime if there is none yet. Making it runs to
    /// the end there even if this caller goes away, so a slow connection is still made and kept.
    pub(crate) async fn get_or_make<F, Fut>(self: &Arc<Self>, make: F) -> Result<C, BackendError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<C, BackendError>> + Send + 'static,
    {
        if let Some(value) = self.value.get() {
            return Ok(value.clone());
        }
        let slot = Arc::clone(self);
        let making = self.handle.spawn(async move {
            let made = slot.value.get_or_try_init(make).await.cloned();
            if made.is_ok() {
                let _ = slot.made_at.set(std::time::Instant::now());
            }
            made
        });
        match making.await {
            Ok(result) => result,
            Err(join) => Err(BackendError::other(join)),
        }
    }

    /// The value, if made.
    pub(crate) fn get(&self) -> Option<C> {
        self.value.get().cloned()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn work_outlives_the_runtime_that_started_it() {
        let (tx, rx) = std::sync::mpsc::channel();
        let first = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        first.block_on(async {
            super::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                tx.send(7).unwrap();
            });
        });
        drop(first);
        assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(5)), Ok(7));
        let second = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(second.block_on(super::run(async { 1 + 1 })), 2);
    }
}
