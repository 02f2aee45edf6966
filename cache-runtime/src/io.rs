//! The library's own runtime: one thread, started on first use, that owns every connection driver
//! and background task of the library (Redis connections, the tiered subscriber, lock releases).
//!
//! Tasks spawned on the caller's runtime die with it: a `#[tokio::test]` (one runtime per test), a
//! CLI that builds a runtime per command, or sync code calling `Runtime::block_on` would leave the
//! library with dead connections. Work spawned here lives for the rest of the process, and callers on
//! any runtime talk to it through channels, so a hit costs no extra thread hop: only connecting,
//! reconnecting and background work run on this thread.

use std::{future::Future, sync::OnceLock};

use tokio::runtime::Handle;

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
