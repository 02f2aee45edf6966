//! Sealed entries (HMAC-SHA256, AES-256-GCM) on a real Redis and on real files: planted, tampered,
//! moved and foreign-key entries are misses that the body overwrites; rotation reads old entries.
//!
//! Each scenario counts how often the body ran: a value served from a forged entry would show up
//! as a body that did not run (and a value it never returned).

mod support;

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use cache_runtime::{
    Backend, Cache, FileBackend, MemoryBackend, Protection, RedisBackend, Secret, TieredBackend,
};
use redis::aio::MultiplexedConnection;
use sha2::{Digest, Sha256};
use support::RedisServer;

const K1: &str = "integrity test secret number one";
const K2: &str = "integrity test secret number two";
const K3: &str = "integrity test secret unrelated";

/// A shared store seen from outside the library: what an attacker with write access can do.
enum Store {
    Redis {
        server: RedisServer,
        conn: MultiplexedConnection,
    },
    File {
        dir: tempfile::TempDir,
    },
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Store {
    async fn redis() -> Self {
        let server = RedisServer::start();
        let client = redis::Client::open(server.url()).unwrap();
        let conn = client.get_multiplexed_async_connection().await.unwrap();
        Store::Redis { server, conn }
    }

    fn file() -> Self {
        Store::File {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    async fn both() -> [Store; 2] {
        [Store::redis().await, Store::file()]
    }

    fn label(&self) -> &'static str {
        match self {
            Store::Redis { .. } => "redis",
            Store::File { .. } => "file",
        }
    }

    /// A new backend instance on the same storage.
    fn backend(&self) -> Arc<dyn Backend> {
        match self {
            Store::Redis { server, .. } => Arc::new(RedisBackend::open(&server.url()).unwrap()),
            Store::File { dir } => Arc::new(FileBackend::new(dir.path())),
        }
    }

    /// Registers a fresh backend on this storage under `name`, sealing with `secret`.
    fn register(&self, name: &str, secret: Option<Secret>) {
        let protection = match secret {
            Some(secret) => Protection::default().secret(secret),
            None => Protection::default(),
        };
        cache_runtime::register_arc_with(name, self.backend(), protection);
    }

    /// Where the envelope (or the sealed entry) starts in what the store holds: the file backend
    /// puts 8 bytes of its own expiry first.
    fn start(&self) -> usize {
        match self {
            Store::Redis { .. } => 0,
            Store::File { .. } => 8,
        }
    }

    /// Where the file backend rooted at `root` keeps `name` (an entry's key or a group).
    fn file_path(root: &Path, folder: &str, name: &str) -> PathBuf {
        let hash = hex(&Sha256::digest(name.as_bytes()));
        match folder {
            "entries" => root.join("entries").join(&hash[..2]).join(hash),
            _ => root.join(folder).join(hash),
        }
    }

    async fn get_raw(
        &self,
        redis_key: String,
        file: impl FnOnce(&tempfile::TempDir) -> PathBuf,
    ) -> Option<Vec<u8>> {
        match self {
            Store::Redis { conn, .. } => {
                let mut conn = conn.clone();
                redis::cmd("GET")
                    .arg(redis_key)
                    .query_async(&mut conn)
                    .await
                    .unwrap()
            }
            Store::File { dir } => std::fs::read(file(dir)).ok(),
        }
    }

    async fn set_raw(
        &self,
        redis_key: String,
        file: impl FnOnce(&tempfile::TempDir) -> PathBuf,
        bytes: &[u8],
    ) {
        match self {
            Store::Redis { conn, .. } => {
                let mut conn = conn.clone();
                let () = redis::cmd("SET")
                    .arg(redis_key)
                    .arg(bytes)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
            Store::File { dir } => {
                let path = file(dir);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, bytes).unwrap();
            }
        }
    }

    /// The stored entry of `key`, as the store holds it.
    async fn entry(&self, key: &str) -> Vec<u8> {
        self.get_raw(format!("cache:k:{key}"), |d| {
            Self::file_path(d.path(), "entries", key)
        })
        .await
        .unwrap_or_else(|| panic!("{}: no entry stored under {key}", self.label()))
    }

    async fn set_entry(&self, key: &str, bytes: &[u8]) {
        self.set_raw(
            format!("cache:k:{key}"),
            |d| Self::file_path(d.path(), "entries", key),
            bytes,
        )
        .await;
    }

    /// The generation of `key`'s tombstone (the only group of the entries these tests store), if
    /// stored (the file backend stores none until the key is invalidated: generation 0).
    async fn tombstone(&self, key: &str) -> Option<Vec<u8>> {
        self.get_raw(format!("cache:t:{key}"), |d| {
            Self::file_path(d.path(), "groups", &format!("\0t:{key}"))
        })
        .await
    }

    async fn set_tombstone(&self, key: &str, bytes: &[u8]) {
        self.set_raw(
            format!("cache:t:{key}"),
            |d| Self::file_path(d.path(), "groups", &format!("\0t:{key}")),
            bytes,
        )
        .await;
    }
}

/// A cache of strings on one backend name whose computation counts its runs and returns
/// `"{tag}#{run}"`.
struct Counted {
    cache: Cache<String>,
    name: String,
    tag: &'static str,
    runs: AtomicUsize,
}

impl Counted {
    fn new(name: &str, tag: &'static str) -> Self {
        Self {
            cache: Cache::new(name, Duration::from_secs(600)).backend(name),
            name: name.to_owned(),
            tag,
            runs: AtomicUsize::new(0),
        }
    }

    async fn get(&self, key: &str) -> String {
        self.cache
            .get_or_insert_with(key, || async {
                let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
                format!("{}#{run}", self.tag)
            })
            .await
    }

    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }

    fn decode_failures(&self) -> u64 {
        cache_runtime::stats()
            .into_iter()
            .filter(|s| s.function == format!("cache_runtime::Cache::{}", self.name))
            .map(|s| s.decode_failures)
            .sum()
    }
}

fn secret(key: &str, encrypt: bool) -> Secret {
    let secret = Secret::new(key).unwrap();
    if encrypt {
        secret.encrypt()
    } else {
        secret
    }
}

/// The sealing mode byte of a stored entry (after checking it is sealed at all).
fn mode(store: &Store, entry: &[u8]) -> u8 {
    let sealed = &entry[store.start()..];
    assert_eq!(
        &sealed[..2],
        b"CS",
        "{}: entry is not sealed",
        store.label()
    );
    sealed[2]
}

fn key_id(store: &Store, entry: &[u8]) -> Vec<u8> {
    entry[store.start() + 3..store.start() + 7].to_vec()
}

#[tokio::test]
async fn plain_and_planted_entries_are_misses_and_get_overwritten_sealed() {
    for store in Store::both().await {
        let name = format!("integrity-plant-{}", store.label());
        let calls = Counted::new(&name, "computed");

        // No secret: plain envelopes, served as ever (the planted entry of an attacker who can
        // write the store looks exactly like this).
        store.register(&name, None);
        assert_eq!(calls.get("p:1").await, "computed#1");
        assert_eq!(calls.get("p:1").await, "computed#1");
        assert_eq!(calls.runs(), 1);
        let plain = store.entry("p:1").await;
        assert_eq!(&plain[store.start()..store.start() + 2], b"CE");

        // With a secret, that plain entry is a miss, and is overwritten by a sealed one.
        store.register(&name, Some(secret(K1, false)));
        let failures = calls.decode_failures();
        assert_eq!(calls.get("p:1").await, "computed#2", "{}", store.label());
        assert_eq!(calls.decode_failures(), failures + 1);
        assert_eq!(mode(&store, &store.entry("p:1").await), 1);
        assert_eq!(calls.get("p:1").await, "computed#2");
        assert_eq!(calls.runs(), 2);

        // A plain envelope planted later (by a backend without the secret) is a miss too.
        let plain_writer = format!("{name}-unsealed");
        let planted = Counted::new(&plain_writer, "planted");
        store.register(&plain_writer, None);
        planted
            .cache
            .insert("p:2", "planted#0".to_owned())
            .await
            .unwrap();
        assert_eq!(
            planted.get("p:2").await,
            "planted#0",
            "control: plain is served"
        );
        assert_eq!(calls.get("p:2").await, "computed#3", "{}", store.label());
        assert_eq!(mode(&store, &store.entry("p:2").await), 1);

        // Raw bytes that look sealed: a miss, overwritten.
        let mut forged = store.entry("p:1").await[..store.start()].to_vec();
        forged.extend_from_slice(b"CS\x01\x00\x00\x00\x00{\"forged\":true}");
        store.set_entry("p:1", &forged).await;
        assert_eq!(calls.get("p:1").await, "computed#4", "{}", store.label());
        assert_eq!(calls.get("p:1").await, "computed#4");
        assert_eq!(calls.runs(), 4);
        cache_runtime::unregister(&name);
        cache_runtime::unregister(&plain_writer);
    }
}

#[tokio::test]
async fn rotated_secrets_still_read_old_entries_and_unknown_secrets_miss() {
    for store in Store::both().await {
        for encrypt in [false, true] {
            let name = format!("integrity-rotate-{}-{encrypt}", store.label());
            let calls = Counted::new(&name, "computed");
            store.register(&name, Some(secret(K1, encrypt)));
            assert_eq!(calls.get("r:1").await, "computed#1");
            let old_id = key_id(&store, &store.entry("r:1").await);

            // K2 current, K1 accepted: the K1 entry is a hit, the body does not run.
            let rotated = Secret::new(K2).unwrap().accept(K1).unwrap();
            let rotated = if encrypt { rotated.encrypt() } else { rotated };
            store.register(&name, Some(rotated));
            assert_eq!(calls.get("r:1").await, "computed#1", "{}", store.label());
            assert_eq!(calls.runs(), 1);
            // New writes are sealed with K2.
            assert_eq!(calls.get("r:2").await, "computed#2");
            let new_entry = store.entry("r:2").await;
            assert_eq!(mode(&store, &new_entry), if encrypt { 2 } else { 1 });
            assert_ne!(key_id(&store, &new_entry), old_id);

            // K1 retired: its entries are sealed with an unknown key, misses; K2's still hit.
            store.register(&name, Some(secret(K2, encrypt)));
            assert_eq!(calls.get("r:1").await, "computed#3", "{}", store.label());
            assert_eq!(calls.get("r:2").await, "computed#2");
            // An unrelated secret knows none of them.
            store.register(&name, Some(secret(K3, encrypt)));
            assert_eq!(calls.get("r:2").await, "computed#4");
            assert_eq!(calls.get("r:1").await, "computed#5");
            assert_eq!(calls.runs(), 5);
            cache_runtime::unregister(&name);
        }
    }
}

#[tokio::test]
async fn changing_any_one_byte_of_a_sealed_entry_is_a_miss() {
    for store in Store::both().await {
        for encrypt in [false, true] {
            let name = format!("integrity-tamper-{}-{encrypt}", store.label());
            let calls = Counted::new(&name, "v");
            store.register(&name, Some(secret(K1, encrypt)));
            assert_eq!(calls.get("t").await, "v#1");
            let original = store.entry("t").await;
            // Every byte the seal covers (the file backend's own 8-byte expiry prefix is not).
            let positions = store.start()..original.len();
            let tried = positions.len();
            for (n, at) in positions.enumerate() {
                let mut tampered = original.clone();
                tampered[at] ^= 0x01;
                store.set_entry("t", &tampered).await;
                let expected = format!("v#{}", n + 2);
                assert_eq!(
                    calls.get("t").await,
                    expected,
                    "{} encrypt={encrypt}: byte {at} of {} changed, yet served",
                    store.label(),
                    original.len()
                );
                assert_ne!(store.entry("t").await, tampered, "overwritten");
            }
            assert_eq!(calls.runs(), tried + 1);
            // Control: the untampered original is still served (the loop above would have
            // passed for the wrong reason otherwise).
            store.set_entry("t", &original).await;
            assert_eq!(calls.get("t").await, "v#1");
            assert_eq!(calls.runs(), tried + 1);
            cache_runtime::unregister(&name);
        }
    }
}

#[tokio::test]
async fn an_authentic_entry_moved_to_another_key_is_a_miss() {
    for store in Store::both().await {
        for sealing in [None, Some(false), Some(true)] {
            let name = format!("integrity-move-{}-{sealing:?}", store.label());
            let calls = Counted::new(&name, "v");
            store.register(&name, sealing.map(|encrypt| secret(K1, encrypt)));
            assert_eq!(calls.get("account:alice").await, "v#1");
            assert_eq!(calls.get("account:bob").await, "v#2");
            // The attacker copies alice's entry over bob's, and aligns bob's tombstone with
            // alice's so that the generations recorded inside the entry match.
            let entry = store.entry("account:alice").await;
            store.set_entry("account:bob", &entry).await;
            if let Some(tombstone) = store.tombstone("account:alice").await {
                store.set_tombstone("account:bob", &tombstone).await;
            }
            let served = calls.get("account:bob").await;
            match sealing {
                // Control: without a secret the attack works (this test can fail).
                None => assert_eq!(served, "v#1", "{}: copy not served", store.label()),
                Some(encrypt) => {
                    assert_eq!(served, "v#3", "{} encrypt={encrypt}", store.label());
                    assert_eq!(calls.get("account:alice").await, "v#1");
                }
            }
            cache_runtime::unregister(&name);
        }
    }
}

#[tokio::test]
async fn encrypted_entries_do_not_hold_the_plaintext_and_mac_only_entries_miss() {
    const MARKER: &str = "plaintext-marker-7f3a";
    for store in Store::both().await {
        let name = format!("integrity-encrypt-{}", store.label());
        let calls = Counted::new(&name, MARKER);

        // Integrity only: the value is readable in the store.
        store.register(&name, Some(secret(K1, false)));
        assert_eq!(calls.get("e:1").await, format!("{MARKER}#1"));
        let contains = |bytes: &[u8]| bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes());
        assert!(
            contains(&store.entry("e:1").await),
            "control: MAC mode is not secret"
        );

        // Encryption required: the MAC-only entry is a miss, overwritten encrypted.
        store.register(&name, Some(secret(K1, true)));
        assert_eq!(
            calls.get("e:1").await,
            format!("{MARKER}#2"),
            "{}",
            store.label()
        );
        let entry = store.entry("e:1").await;
        assert_eq!(mode(&store, &entry), 2);
        assert!(
            !contains(&entry),
            "{}: plaintext in the encrypted entry",
            store.label()
        );
        assert_eq!(calls.get("e:1").await, format!("{MARKER}#2"));
        assert_eq!(calls.runs(), 2);

        // An encrypted entry is authentic too: a backend that requires only integrity reads it.
        store.register(&name, Some(secret(K1, false)));
        assert_eq!(calls.get("e:1").await, format!("{MARKER}#2"));
        assert_eq!(calls.runs(), 2);
        cache_runtime::unregister(&name);
    }
}

#[tokio::test]
async fn the_redis_tier_of_a_tiered_backend_is_sealed() {
    let store = Store::redis().await;
    let Store::Redis { server, .. } = &store else {
        unreachable!()
    };
    let name = "integrity-tiered";
    let calls = Counted::new(name, "computed");
    // A fresh tiered backend each time: its local tier starts empty, so the Redis tier is read.
    let register_tiered = || {
        let tiered = TieredBackend::new(
            RedisBackend::open(&server.url()).unwrap(),
            MemoryBackend::with_limits(1_000, 1 << 20),
        );
        let protection = Protection::default().secret(secret(K1, false));
        cache_runtime::register_with(name, tiered, protection);
    };

    // A plain entry planted in Redis is a miss for the tiered backend, overwritten sealed.
    let plain_writer = "integrity-tiered-unsealed";
    store.register(plain_writer, None);
    let planted = Counted::new(plain_writer, "planted");
    planted
        .cache
        .insert("x:1", "planted#0".to_owned())
        .await
        .unwrap();
    register_tiered();
    assert_eq!(calls.get("x:1").await, "computed#1");
    let sealed = store.entry("x:1").await;
    assert_eq!(mode(&store, &sealed), 1);

    // Another instance reads the sealed entry from Redis without running the body.
    register_tiered();
    assert_eq!(calls.get("x:1").await, "computed#1");
    assert_eq!(calls.runs(), 1);

    // A changed byte in Redis is a miss for a fresh instance.
    let mut tampered = sealed.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    store.set_entry("x:1", &tampered).await;
    register_tiered();
    assert_eq!(calls.get("x:1").await, "computed#2");
    cache_runtime::unregister(name);
    cache_runtime::unregister(plain_writer);
}

/// Runs [`env_child`] in a child process with `env` (and every other secret variable unset).
fn run_env_child(dir: &std::path::Path, expect: &str, env: &[(&str, &str)]) {
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command
        .args(["env_child", "--exact", "--ignored", "--test-threads=1"])
        .env("INTEGRITY_DIR", dir)
        .env("INTEGRITY_EXPECT", expect);
    for name in ["CACHE_SECRET", "CACHE_SECRET_PREVIOUS", "CACHE_ENCRYPT"] {
        command.env_remove(name);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child expecting {expect} with {env:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn secrets_from_the_environment() {
    let long = "an environment secret that is long enough";
    let older = "an older environment secret still read";
    for (env, expect) in [
        // Invalid settings never turn integrity off: the backend reads and stores nothing.
        (vec![("CACHE_SECRET", "too short")], "unusable"),
        (vec![("CACHE_ENCRYPT", "1")], "unusable"),
        (vec![("CACHE_SECRET_PREVIOUS", long)], "unusable"),
        (
            vec![("CACHE_SECRET", long), ("CACHE_ENCRYPT", "maybe")],
            "unusable",
        ),
        (
            vec![
                ("CACHE_SECRET", long),
                ("CACHE_SECRET_PREVIOUS", "fine-but-short"),
            ],
            "unusable",
        ),
        (
            vec![("CACHE_SECRET", "a comma, in a long secret")],
            "unusable",
        ),
        // Valid settings seal.
        (vec![("CACHE_SECRET", long)], "mac"),
        (vec![("CACHE_SECRET", long), ("CACHE_ENCRYPT", "1")], "aead"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        run_env_child(dir.path(), expect, &env);
    }

    // Rotation through the environment, across processes sharing one cache directory.
    let dir = tempfile::tempdir().unwrap();
    run_env_child(dir.path(), "mac", &[("CACHE_SECRET", older)]);
    run_env_child(
        dir.path(),
        "hit",
        &[
            ("CACHE_SECRET", long),
            ("CACHE_SECRET_PREVIOUS", &format!("{older}, {K3}")),
        ],
    );
    run_env_child(dir.path(), "miss", &[("CACHE_SECRET", long)]);
}

/// The child side of [`secrets_from_the_environment`]: a file backend in `INTEGRITY_DIR`
/// protected as the environment says, checked against `INTEGRITY_EXPECT`.
#[tokio::test]
#[ignore = "run by secrets_from_the_environment in a child process"]
async fn env_child() {
    let dir = PathBuf::from(std::env::var_os("INTEGRITY_DIR").expect("INTEGRITY_DIR"));
    let expect = std::env::var("INTEGRITY_EXPECT").expect("INTEGRITY_EXPECT");
    cache_runtime::register_with(
        "integrity-env",
        FileBackend::new(&dir),
        Protection::default(),
    );
    let calls = Counted::new("integrity-env", "env");
    let entry = || std::fs::read(Store::file_path(&dir, "entries", "env:1"));
    match expect.as_str() {
        "unusable" => {
            for run in 1..=3 {
                assert_eq!(calls.get("env:1").await, format!("env#{run}"));
            }
            assert!(entry().is_err(), "an unusable secret stored an entry");
        }
        "mac" | "aead" => {
            assert_eq!(calls.get("env:1").await, "env#1");
            assert_eq!(calls.get("env:1").await, "env#1");
            let entry = entry().unwrap();
            assert_eq!(&entry[8..10], b"CS");
            assert_eq!(entry[10], if expect == "mac" { 1 } else { 2 });
        }
        "hit" => {
            assert_eq!(
                calls.get("env:1").await,
                "env#1",
                "the other process's value"
            );
            assert_eq!(calls.runs(), 0);
        }
        "miss" => assert_eq!(calls.get("env:1").await, "env#1"),
        other => panic!("unknown expectation {other}"),
    }
}
