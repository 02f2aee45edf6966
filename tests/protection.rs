//! Per-backend protection configured in code (`register_with`): the timeout and the breaker's
//! thresholds, against a Redis address that accepts connections and never answers.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use cache_runtime::{cached, Protection, RedisBackend};

static RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 60, backend = "protected-silent")]
async fn lookup(id: u64) -> u64 {
    RUNS.fetch_add(1, Ordering::SeqCst);
    id
}

#[tokio::test]
async fn a_silent_backend_costs_the_configured_timeout_then_nothing() {
    // The kernel completes the TCP handshake for a listener nobody accepts from: the client's
    // commands are never answered.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let url = format!("redis://{}", silent.local_addr().unwrap());
    cache_runtime::register_with(
        "protected-silent",
        RedisBackend::open(&url).expect("valid url"),
        Protection::default()
            .timeout(Duration::from_millis(100))
            .breaker(1, Duration::from_secs(60)),
    );
    let started = Instant::now();
    assert_eq!(lookup(1).await, 1, "a failing backend never fails the call");
    let first = started.elapsed();
    assert!(
        first >= Duration::from_millis(90) && first < Duration::from_millis(220),
        "the first call waits for the 100 ms timeout, not the default 250 ms: {first:?}"
    );
    let started = Instant::now();
    for id in 2..12 {
        assert_eq!(lookup(id).await, id);
    }
    let next_ten = started.elapsed();
    assert!(
        next_ten < Duration::from_millis(100),
        "the breaker opened after one failure: ten calls took {next_ten:?}"
    );
    assert_eq!(RUNS.load(Ordering::SeqCst), 11);
    drop(silent);
}

mod support;

/// A TCP proxy to a Redis server whose open connections can be made silent (bytes read and
/// dropped both ways, sockets left open: a peer gone without a word) while new ones work.
struct SilencingProxy {
    port: u16,
    silenced: std::sync::Arc<std::sync::Mutex<Vec<std::sync::Arc<std::sync::atomic::AtomicBool>>>>,
}

impl SilencingProxy {
    async fn start(target: u16) -> Self {
        Self::start_slow(target, Duration::ZERO).await
    }

    /// A proxy that waits `delay` before connecting each client to the server (a slow connect).
    async fn start_slow(target: u16, delay: Duration) -> Self {
        use std::sync::{atomic::AtomicBool, Arc, Mutex};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let silenced: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let open = Arc::clone(&silenced);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let open = Arc::clone(&open);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    let silent = Arc::new(AtomicBool::new(false));
                    open.lock().unwrap().push(Arc::clone(&silent));
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::spawn(pump(client_read, server_write, Arc::clone(&silent)));
                    tokio::spawn(pump(server_read, client_write, silent));
                });
            }
        });
        Self { port, silenced }
    }

    /// Registers a Redis backend reached through this proxy under `name`, with a guard `timeout`
    /// and a breaker that stays closed; unregistered when the guard is dropped.
    fn register(&self, name: &'static str, timeout: Duration) -> support::Unregister {
        cache_runtime::register_with(
            name,
            RedisBackend::open(&format!("redis://127.0.0.1:{}", self.port)).expect("valid url"),
            Protection::default()
                .timeout(timeout)
                .breaker(1_000, Duration::from_secs(60)),
        );
        support::Unregister(name)
    }

    /// Every connection open now goes silent.
    fn silence_open_connections(&self) {
        for silent in self.silenced.lock().unwrap().iter() {
            silent.store(true, Ordering::SeqCst);
        }
    }
}

async fn pump(
    from: tokio::net::tcp::OwnedReadHalf,
    to: tokio::net::tcp::OwnedWriteHalf,
    silent: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        if from.readable().await.is_err() {
            return;
        }
        let read = match from.try_read(&mut buffer) {
            Ok(0) => return,
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        };
        if silent.load(Ordering::SeqCst) {
            continue; // read and dropped
        }
        let mut written = 0;
        while written < read {
            if to.writable().await.is_err() {
                return;
            }
            match to.try_write(&buffer[written..read]) {
                Ok(n) => written += n,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    }
}

static RECOVERY_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 600, backend = "protected-recovers", key = "recovers:{id}")]
async fn recovering(id: u64) -> u64 {
    RECOVERY_RUNS.fetch_add(1, Ordering::SeqCst);
    id
}

/// A connection that goes silent (no reply, no error) under a guard timeout shorter than the
/// connection's own reply timeout: the timed-out operation drops it, and the next ones connect
/// again and hit, instead of timing out on the dead connection until the kernel gives up on it.
#[tokio::test]
async fn a_connection_gone_silent_is_replaced_after_a_timeout() {
    let server = support::RedisServer::start();
    let proxy = SilencingProxy::start(server.port()).await;
    let _unregister = proxy.register("protected-recovers", Duration::from_millis(100));
    assert_eq!(recovering(1).await, 1);
    assert_eq!(recovering(1).await, 1);
    assert_eq!(
        RECOVERY_RUNS.load(Ordering::SeqCst),
        1,
        "a hit through the proxy"
    );

    proxy.silence_open_connections();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let before = RECOVERY_RUNS.load(Ordering::SeqCst);
        assert_eq!(
            recovering(1).await,
            1,
            "a failing backend never fails the call"
        );
        if RECOVERY_RUNS.load(Ordering::SeqCst) == before {
            break; // a hit: served through a new connection
        }
        assert!(
            Instant::now() < deadline,
            "still no hit 3 s after the connection went silent ({} runs)",
            RECOVERY_RUNS.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

static SLOW_CONNECT_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = 600, backend = "protected-slow-connect", key = "slow:{id}")]
async fn slow_connect(id: u64) -> u64 {
    SLOW_CONNECT_RUNS.fetch_add(1, Ordering::SeqCst);
    id
}

/// A connect slower than the guard's timeout: the first operations time out, but the connection
/// they started is made and kept (a timed-out operation forgets only a connection made before it
/// started), so the backend is used once it is there.
#[tokio::test]
async fn a_connect_slower_than_the_timeout_is_kept_once_made() {
    let server = support::RedisServer::start();
    let proxy = SilencingProxy::start_slow(server.port(), Duration::from_millis(300)).await;
    let _unregister = proxy.register("protected-slow-connect", Duration::from_millis(50));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let before = SLOW_CONNECT_RUNS.load(Ordering::SeqCst);
        assert_eq!(
            slow_connect(1).await,
            1,
            "a failing backend never fails the call"
        );
        if before > 0 && SLOW_CONNECT_RUNS.load(Ordering::SeqCst) == before {
            break; // a hit: the connection was made and kept
        }
        assert!(
            Instant::now() < deadline,
            "no hit 5 s after the first call: the slow connection was never kept"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
