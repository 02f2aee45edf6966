//! A body that runs in a task of its own on a miss still runs inside the caller's span.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use cache_runtime::cached;
use tracing::Instrument;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cached(ttl = 60, key = "traced:{n}")]
async fn traced(n: u64) -> u64 {
    tracing::info!("inside the body");
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_body_keeps_the_callers_span() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    // The multi-thread runtime's workers have no default subscriber: set it globally for them.
    let dispatch = tracing::dispatcher::get_default(|d| d.clone());
    let _ = tracing::dispatcher::set_global_default(dispatch);
    traced(7)
        .instrument(tracing::info_span!("request", id = 42))
        .await;
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("inside the body"))
        .unwrap_or_else(|| panic!("the body's event was not recorded: {text}"));
    assert!(
        line.contains("request{id=42}"),
        "the body's event is detached from the request's span: {line}"
    );
}
