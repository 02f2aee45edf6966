//! Codecs, compression and schema versions, against real `redis-server` processes that the tests
//! start themselves and real cache folders: what is stored, and when a stored entry is a miss.
//!
//! Envelope offsets used here (format 2, see `envelope.rs`): byte 2 format version, byte 3 codec
//! (1 JSON, 2 MessagePack), byte 4 flags (1 = compressed), 5..9 the function's schema version,
//! 9..13 `CACHE_KEY_VERSION`, 37..39 the number `n` of generations, payload from `39 + 8n`.

mod support;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{http::header, routing::get, Router};
use cache_runtime::{cached, http::CacheLayer, Backend, Cache, Codec, Protection};
use serde::{Deserialize, Serialize};
use support::{http::TestServer, RedisServer};

// --- the value stored ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Inner {
    label: String,
    weight: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Kind {
    Plain,
    Tagged(String),
    Sized { w: u32, h: u32 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    id: u64,
    inner: Inner,
    maybe: Option<Inner>,
    none: Option<u32>,
    list: Vec<i64>,
    kinds: Vec<Kind>,
    map: BTreeMap<String, u16>,
    #[serde(with = "raw_bytes")]
    bytes: Vec<u8>,
    text: String,
}

/// A record whose `text` makes it about `size` bytes (compressible: repeated words).
fn record(id: u64, size: usize) -> Record {
    let words = ["alpha ", "beta ", "gamma ", "delta "];
    let mut text = String::with_capacity(size);
    let mut i = id as usize;
    while text.len() < size {
        text.push_str(words[i % words.len()]);
        i += 1;
    }
    Record {
        id,
        inner: Inner {
            label: format!("inner {id}"),
            weight: 0.25 + id as f64,
        },
        maybe: Some(Inner {
            label: "maybe".into(),
            weight: -1.5,
        }),
        none: None,
        list: vec![-1, 0, i64::MAX],
        kinds: vec![
            Kind::Plain,
            Kind::Tagged("t".into()),
            Kind::Sized { w: 3, h: 4 },
        ],
        map: BTreeMap::from([("a".to_owned(), 1), ("b".to_owned(), 2)]),
        bytes: vec![0, 1, 0xff, 0x9f, 0x92],
        text,
    }
}

/// `Vec<u8>` as serde bytes (binary in MessagePack, an array of numbers in JSON).
mod raw_bytes {
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = a.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(V)
    }
}

// --- stores -------------------------------------------------------------------------------------

/// A real store: a private `redis-server`, or a cache folder in a temp dir.
enum Place {
    Redis(RedisServer),
    File(#[allow(dead_code)] tempfile::TempDir),
}

struct Store {
    _place: Place,
    backend: Arc<dyn Backend>,
    name: &'static str,
}

impl Store {
    fn redis(name: &'static str) -> Self {
        let server = RedisServer::start();
        let backend = cache_runtime::RedisBackend::open(&server.url()).expect("valid url");
        Self {
            _place: Place::Redis(server),
            backend: Arc::new(backend),
            name,
        }
    }

    fn file(name: &'static str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let backend = cache_runtime::FileBackend::new(dir.path());
        Self {
            _place: Place::File(dir),
            backend: Arc::new(backend),
            name,
        }
    }

    fn both(redis: &'static str, file: &'static str) -> [Self; 2] {
        [Self::redis(redis), Self::file(file)]
    }

    fn server(&self) -> &RedisServer {
        match &self._place {
            Place::Redis(server) => server,
            Place::File(_) => panic!("not a Redis store"),
        }
    }

    /// (Re-)registers the same store under its name with `protection`.
    fn register(&self, protection: Protection) {
        cache_runtime::register_arc_with(self.name, Arc::clone(&self.backend), protection);
    }

    /// The bytes stored under `key`, as the backend holds them.
    async fn raw(&self, key: &str) -> Vec<u8> {
        let lookup = self.backend.get(key, &[]).await.expect("backend get");
        lookup
            .value
            .unwrap_or_else(|| panic!("{}: nothing under {key}", self.name))
    }

    /// Replaces the bytes stored under `key`.
    async fn put_raw(&self, key: &str, bytes: Vec<u8>) {
        self.backend
            .set(key, bytes, Duration::from_secs(60), &[])
            .await
            .expect("backend set");
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        cache_runtime::unregister(self.name);
    }
}

fn codec_of(raw: &[u8]) -> u8 {
    raw[3]
}

fn compressed(raw: &[u8]) -> bool {
    raw[4] & 1 == 1
}

fn version_of(raw: &[u8]) -> u32 {
    u32::from_le_bytes(raw[5..9].try_into().unwrap())
}

/// Where the payload (or, compressed, its claimed length) starts.
fn payload_at(raw: &[u8]) -> usize {
    39 + 8 * usize::from(u16::from_le_bytes([raw[37], raw[38]]))
}

fn id(codec: Codec) -> u8 {
    match codec {
        Codec::Json => 1,
        Codec::MessagePack => 2,
        other => panic!("unknown codec {other:?}"),
    }
}

const CODECS: [Codec; 2] = [Codec::Json, Codec::MessagePack];

/// One call through `cache`, counting body runs in `runs`.
async fn call(cache: &Cache<Record>, key: &str, value: &Record, runs: &AtomicUsize) -> Record {
    cache
        .get_or_insert_with(key, || async {
            runs.fetch_add(1, Ordering::SeqCst);
            value.clone()
        })
        .await
}

// --- round trips --------------------------------------------------------------------------------

#[tokio::test]
async fn structs_round_trip_in_every_codec_on_redis_and_files() {
    for store in Store::both("codecs-rt-redis", "codecs-rt-file") {
        for codec in CODECS {
            // Chosen by the backend's registration.
            store.register(Protection::default().codec(codec));
            let cache: Cache<Record> =
                Cache::new("codecs-rt", Duration::from_secs(60)).backend(store.name);
            let runs = AtomicUsize::new(0);
            let key = format!("rt:{codec}");
            let value = record(1, 200);
            assert_eq!(call(&cache, &key, &value, &runs).await, value);
            assert_eq!(
                call(&cache, &key, &value, &runs).await,
                value,
                "{codec}: hit"
            );
            assert_eq!(runs.load(Ordering::SeqCst), 1, "{} {codec}", store.name);
            let raw = store.raw(&key).await;
            assert_eq!(raw[2], 2, "format version");
            assert_eq!(codec_of(&raw), id(codec));
            assert!(!compressed(&raw), "a 200-byte text is under the threshold");
            let payload = &raw[payload_at(&raw)..];
            // Struct fields are stored by name in both codecs.
            assert!(payload.windows(5).any(|w| w == b"label"), "{codec}");
            match codec {
                Codec::Json => {
                    let json: serde_json::Value = serde_json::from_slice(payload).unwrap();
                    assert_eq!(json["inner"]["label"], "inner 1");
                }
                _ => {
                    let back: Record = rmp_serde::from_slice(payload).unwrap();
                    assert_eq!(back, value);
                    // `bytes` is MessagePack `bin 8`: raw.
                    let bin = [0xc4, 5, 0, 1, 0xff, 0x9f, 0x92];
                    assert!(payload.windows(bin.len()).any(|w| w == bin));
                }
            }
        }
    }
}

static ATTR_MSGPACK_RUNS: AtomicUsize = AtomicUsize::new(0);
static ATTR_DEFAULT_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(
    ttl = 60,
    backend = "codecs-attr",
    key = "attr:msgpack:{id}",
    codec = "msgpack"
)]
async fn attr_msgpack(id: u64) -> Record {
    ATTR_MSGPACK_RUNS.fetch_add(1, Ordering::SeqCst);
    record(id, 100)
}

#[cached(ttl = 60, backend = "codecs-attr", key = "attr:default:{id}")]
async fn attr_default(id: u64) -> Record {
    ATTR_DEFAULT_RUNS.fetch_add(1, Ordering::SeqCst);
    record(id, 100)
}

#[tokio::test]
async fn the_attribute_codec_wins_over_the_backend_and_json_is_the_default() {
    let store = Store::redis("codecs-attr");
    store.register(Protection::default());
    assert_eq!(attr_default(1).await, record(1, 100));
    assert_eq!(attr_default(1).await, record(1, 100));
    assert_eq!(ATTR_DEFAULT_RUNS.load(Ordering::SeqCst), 1);
    assert_eq!(codec_of(&store.raw(&attr_default_key(1)).await), 1, "JSON");

    store.register(Protection::default().codec(Codec::Json));
    assert_eq!(attr_msgpack(1).await, record(1, 100));
    assert_eq!(attr_msgpack(1).await, record(1, 100));
    assert_eq!(ATTR_MSGPACK_RUNS.load(Ordering::SeqCst), 1);
    assert_eq!(codec_of(&store.raw(&attr_msgpack_key(1)).await), 2);

    // Cache<T>::codec is the function's own choice too.
    let cache: Cache<Record> = Cache::new("codecs-attr", Duration::from_secs(60))
        .backend(store.name)
        .codec(Codec::MessagePack);
    let runs = AtomicUsize::new(0);
    call(&cache, "attr:cache", &record(2, 10), &runs).await;
    assert_eq!(codec_of(&store.raw("attr:cache").await), 2);
}

// --- misses -------------------------------------------------------------------------------------

#[tokio::test]
async fn a_codec_change_between_registrations_is_a_miss_that_overwrites() {
    for store in Store::both("codecs-change-redis", "codecs-change-file") {
        let cache: Cache<Record> =
            Cache::new("codecs-change", Duration::from_secs(60)).backend(store.name);
        let runs = AtomicUsize::new(0);
        let value = record(3, 300);
        let mut expected_runs = 0;
        for codec in [Codec::Json, Codec::MessagePack, Codec::Json] {
            store.register(Protection::default().codec(codec));
            assert_eq!(call(&cache, "change", &value, &runs).await, value);
            expected_runs += 1;
            assert_eq!(
                runs.load(Ordering::SeqCst),
                expected_runs,
                "{codec}: a miss"
            );
            assert_eq!(
                codec_of(&store.raw("change").await),
                id(codec),
                "overwritten"
            );
            assert_eq!(call(&cache, "change", &value, &runs).await, value);
            assert_eq!(
                runs.load(Ordering::SeqCst),
                expected_runs,
                "{codec}: then a hit"
            );
        }
    }
}

static V2_RUNS: AtomicUsize = AtomicUsize::new(0);
static V3_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(
    ttl = 60,
    backend = "codecs-version",
    key = "versioned:{id}",
    version = 2
)]
async fn versioned_v2(id: u64) -> Record {
    V2_RUNS.fetch_add(1, Ordering::SeqCst);
    record(id, 10)
}

#[cached(
    ttl = 60,
    backend = "codecs-version",
    key = "versioned:{id}",
    version = 3
)]
async fn versioned_v3(id: u64) -> Record {
    V3_RUNS.fetch_add(1, Ordering::SeqCst);
    record(id, 10)
}

#[tokio::test]
async fn a_schema_version_change_is_a_miss_that_overwrites_under_the_same_key() {
    let store = Store::redis("codecs-version");
    store.register(Protection::default());
    assert_eq!(
        versioned_v2_key(7),
        versioned_v3_key(7),
        "the key does not change"
    );
    let key = versioned_v2_key(7);
    versioned_v2(7).await;
    versioned_v2(7).await;
    assert_eq!(V2_RUNS.load(Ordering::SeqCst), 1);
    assert_eq!(version_of(&store.raw(&key).await), 2);
    // A new build (version 3) misses and overwrites; an old instance still running then misses
    // in turn (a rolling deploy).
    versioned_v3(7).await;
    versioned_v3(7).await;
    assert_eq!(V3_RUNS.load(Ordering::SeqCst), 1);
    assert_eq!(version_of(&store.raw(&key).await), 3);
    versioned_v2(7).await;
    assert_eq!(V2_RUNS.load(Ordering::SeqCst), 2);
    // Invalidation by key reaches the entry whichever version wrote it.
    versioned_v3(7).await;
    assert_eq!(V3_RUNS.load(Ordering::SeqCst), 2);
    versioned_v2_invalidate(7).await.unwrap();
    assert!(store.backend.get(&key, &[]).await.unwrap().value.is_none());

    // The same through Cache<T>::version, on files.
    let store = Store::file("codecs-version-file");
    store.register(Protection::default());
    let runs = AtomicUsize::new(0);
    let value = record(8, 10);
    for (version, expected_runs) in [(1, 1), (1, 1), (2, 2), (2, 2), (1, 3)] {
        let cache: Cache<Record> = Cache::new("codecs-version", Duration::from_secs(60))
            .backend(store.name)
            .version(version);
        assert_eq!(call(&cache, "v", &value, &runs).await, value);
        assert_eq!(
            runs.load(Ordering::SeqCst),
            expected_runs,
            "version {version}"
        );
        assert_eq!(version_of(&store.raw("v").await), version);
    }
}

#[tokio::test]
async fn old_format_envelopes_are_misses_that_get_overwritten() {
    for store in Store::both("codecs-old-redis", "codecs-old-file") {
        store.register(Protection::default());
        let cache: Cache<Record> =
            Cache::new("codecs-old", Duration::from_secs(60)).backend(store.name);
        let value = record(4, 50);
        // Format 1: magic, version 1, codec 1 (JSON), 26 bytes of times, fingerprint and no
        // generations, then the JSON payload of a value this test never computes.
        let mut old = b"CE\x01\x01".to_vec();
        old.extend_from_slice(&0u64.to_le_bytes());
        old.extend_from_slice(&u64::MAX.to_le_bytes());
        old.extend_from_slice(&[0; 10]);
        old.extend_from_slice(&serde_json::to_vec(&record(999, 50)).unwrap());
        store.put_raw("old", old).await;
        let runs = AtomicUsize::new(0);
        assert_eq!(call(&cache, "old", &value, &runs).await, value);
        assert_eq!(runs.load(Ordering::SeqCst), 1, "{}: a miss", store.name);
        assert_eq!(store.raw("old").await[2], 2, "rewritten in format 2");
        assert_eq!(call(&cache, "old", &value, &runs).await, value);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}

// --- compression --------------------------------------------------------------------------------

#[tokio::test]
async fn large_values_are_compressed_and_round_trip() {
    for store in Store::both("codecs-lz4-redis", "codecs-lz4-file") {
        for codec in CODECS {
            let value = record(5, 100 * 1024);
            let json_len = serde_json::to_vec(&value).unwrap().len();
            store.register(Protection::default().codec(codec).compress_above(1024));
            let cache: Cache<Record> =
                Cache::new("codecs-lz4", Duration::from_secs(60)).backend(store.name);
            let runs = AtomicUsize::new(0);
            let key = format!("lz4:{codec}");
            assert_eq!(call(&cache, &key, &value, &runs).await, value);
            assert_eq!(call(&cache, &key, &value, &runs).await, value);
            assert_eq!(
                runs.load(Ordering::SeqCst),
                1,
                "{} {codec}: a hit",
                store.name
            );
            let raw = store.raw(&key).await;
            assert!(compressed(&raw));
            assert!(
                raw.len() * 4 < json_len,
                "{codec}: {} stored bytes for {json_len} bytes of JSON",
                raw.len()
            );
            // Below the threshold: stored as is.
            let small = record(6, 100);
            call(&cache, "small", &small, &runs).await;
            assert!(!compressed(&store.raw("small").await));
            // Compression off: as is, and larger.
            store.register(Protection::default().codec(codec).compress_above(u64::MAX));
            let plain_key = format!("plain:{codec}");
            call(&cache, &plain_key, &value, &runs).await;
            let plain = store.raw(&plain_key).await;
            assert!(!compressed(&plain));
            assert!(plain.len() > raw.len() * 4);
            // A reader with compression off still reads compressed entries.
            let before = runs.load(Ordering::SeqCst);
            assert_eq!(call(&cache, &key, &value, &runs).await, value);
            assert_eq!(runs.load(Ordering::SeqCst), before);
        }
    }
}

/// Stores a compressed entry, lets `damage` change its stored bytes, and checks the next call is
/// a miss that computes the right value and overwrites the entry with a readable one.
async fn damaged_entry_is_a_miss(store: &Store, key: &str, damage: impl Fn(&mut Vec<u8>)) {
    store.register(Protection::default().compress_above(1024));
    let cache: Cache<Record> =
        Cache::new("codecs-damage", Duration::from_secs(60)).backend(store.name);
    let value = record(9, 20 * 1024);
    let runs = AtomicUsize::new(0);
    call(&cache, key, &value, &runs).await;
    let mut raw = store.raw(key).await;
    assert!(compressed(&raw));
    damage(&mut raw);
    store.put_raw(key, raw).await;
    assert_eq!(call(&cache, key, &value, &runs).await, value);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "{} {key}: a miss",
        store.name
    );
    assert!(compressed(&store.raw(key).await), "overwritten");
    assert_eq!(call(&cache, key, &value, &runs).await, value);
    assert_eq!(runs.load(Ordering::SeqCst), 2, "then a hit");
}

#[tokio::test]
async fn corrupted_compressed_payloads_are_misses() {
    for store in Store::both("codecs-corrupt-redis", "codecs-corrupt-file") {
        // Garbage in place of the LZ4 block.
        damaged_entry_is_a_miss(&store, "garbage", |raw| {
            let at = payload_at(raw) + 4;
            raw[at..].fill(0xff);
        })
        .await;
        // The block cut short.
        damaged_entry_is_a_miss(&store, "truncated", |raw| {
            let keep = payload_at(raw) + 4 + (raw.len() - payload_at(raw)) / 2;
            raw.truncate(keep);
        })
        .await;
        // A claimed length that the block does not decompress to.
        damaged_entry_is_a_miss(&store, "short-claim", |raw| {
            let at = payload_at(raw);
            raw[at..at + 4].copy_from_slice(&100u32.to_le_bytes());
        })
        .await;
    }
}

#[tokio::test]
async fn claimed_lengths_over_the_value_limit_are_misses() {
    for store in Store::both("codecs-claim-redis", "codecs-claim-file") {
        // CACHE_MAX_VALUE_BYTES is 8 MiB here: one byte more, and the largest claim.
        for claim in [8 * 1024 * 1024 + 1, u32::MAX] {
            damaged_entry_is_a_miss(&store, &format!("claim:{claim}"), |raw| {
                let at = payload_at(raw);
                raw[at..at + 4].copy_from_slice(&claim.to_le_bytes());
            })
            .await;
        }
    }
}

// --- HTTP ---------------------------------------------------------------------------------------

/// Not UTF-8: JSON would have stored it as base64.
const BODY: &[u8] = b"\x00\x9f\x92\x96 binary body \xff\xfe\x01 end";

static HTTP_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(http, ttl = 60, backend = "codecs-http")]
async fn download() -> impl axum::response::IntoResponse {
    HTTP_RUNS.fetch_add(1, Ordering::SeqCst);
    ([(header::CONTENT_TYPE, "application/octet-stream")], BODY)
}

/// Every value stored in `server` (the test's own private Redis).
async fn stored_values(server: &RedisServer) -> Vec<Vec<u8>> {
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("cache:k:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut values = Vec::new();
    for key in keys {
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        values.extend(value);
    }
    values
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn http_responses_are_stored_in_message_pack_with_raw_bodies() {
    let store = Store::redis("codecs-http");
    store.register(Protection::default());
    let lossy = String::from_utf8_lossy(BODY).into_owned();
    let server = TestServer::start(Router::new().route("/download", get(download))).await;
    let first = server.get("/download").await;
    let second = server.get("/download").await;
    assert_eq!((first.status, second.status), (200, 200));
    assert_eq!(
        (first.body.as_str(), second.body.as_str()),
        (&*lossy, &*lossy)
    );
    assert_eq!(HTTP_RUNS.load(Ordering::SeqCst), 1);
    let stored = stored_values(store.server()).await;
    let entry = stored
        .iter()
        .find(|v| contains(v, BODY))
        .unwrap_or_else(|| panic!("no stored value holds the body verbatim: {stored:?}"));
    assert_eq!(codec_of(entry), 2, "MessagePack");

    // The layer too, on another route and Redis.
    let layered = Store::redis("codecs-layer");
    layered.register(Protection::default());
    let layer_runs = Arc::new(AtomicUsize::new(0));
    let runs = Arc::clone(&layer_runs);
    let app = Router::new().route(
        "/blob",
        get(move || {
            runs.fetch_add(1, Ordering::SeqCst);
            async { ([(header::CONTENT_TYPE, "application/octet-stream")], BODY) }
        })
        .layer(CacheLayer::new().backend("codecs-layer")),
    );
    let server = TestServer::start(app).await;
    assert_eq!(server.get("/blob").await.body, lossy);
    assert_eq!(server.get("/blob").await.body, lossy);
    assert_eq!(layer_runs.load(Ordering::SeqCst), 1);
    let stored = stored_values(layered.server()).await;
    let entry = stored
        .iter()
        .find(|v| contains(v, BODY))
        .unwrap_or_else(|| panic!("no stored value holds the body verbatim: {stored:?}"));
    assert_eq!(codec_of(entry), 2);

    // Told otherwise (the backend says JSON): text or base64 again, still served right.
    store.register(Protection::default().codec(Codec::Json));
    let server = TestServer::start(Router::new().route("/download", get(download))).await;
    assert_eq!(server.get("/download").await.body, lossy);
    assert_eq!(
        HTTP_RUNS.load(Ordering::SeqCst),
        2,
        "a miss: stored in another codec"
    );
    assert_eq!(server.get("/download").await.body, lossy);
    assert_eq!(HTTP_RUNS.load(Ordering::SeqCst), 2);
    let stored = stored_values(store.server()).await;
    assert!(stored.iter().all(|v| !contains(v, BODY)));
    assert!(stored
        .iter()
        .any(|v| codec_of(v) == 1 && contains(v, b"base64")));
}

// --- the environment ----------------------------------------------------------------------------

/// `CACHE_CODEC`, `CACHE_COMPRESS_ABOVE` and `CACHE_KEY_VERSION` are read once per process: a
/// child process (this test binary, running the ignored test below) gets them set.
#[tokio::test]
async fn environment_defaults_apply_below_the_backend_and_the_function() {
    let server = RedisServer::start();
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["environment_child", "--exact", "--ignored", "--nocapture"])
        .env("CODECS_CHILD_REDIS", server.url())
        .env("CACHE_CODEC", "msgpack")
        .env("CACHE_COMPRESS_ABOVE", "1000")
        .env("CACHE_KEY_VERSION", "5")
        .env_remove("REDIS_URL")
        .env_remove("CACHE_DIR")
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
#[ignore = "run by environment_defaults_apply_below_the_backend_and_the_function"]
async fn environment_child() {
    let url = std::env::var("CODECS_CHILD_REDIS").expect("run by the parent test");
    let backend: Arc<dyn Backend> = Arc::new(cache_runtime::RedisBackend::open(&url).unwrap());
    cache_runtime::register_arc_with("codecs-env", Arc::clone(&backend), Protection::default());
    let cache: Cache<Record> =
        Cache::new("codecs-env", Duration::from_secs(60)).backend("codecs-env");
    let runs = AtomicUsize::new(0);
    let (small, large) = (record(1, 100), record(2, 4000));
    call(&cache, "small", &small, &runs).await;
    call(&cache, "large", &large, &runs).await;
    let raw = |key: &'static str| {
        let backend = Arc::clone(&backend);
        async move { backend.get(key, &[]).await.unwrap().value.unwrap() }
    };
    let (small_raw, large_raw) = (raw("small").await, raw("large").await);
    assert_eq!(codec_of(&small_raw), 2, "CACHE_CODEC=msgpack");
    assert!(
        !compressed(&small_raw) && compressed(&large_raw),
        "CACHE_COMPRESS_ABOVE=1000"
    );
    assert_eq!(u32::from_le_bytes(large_raw[9..13].try_into().unwrap()), 5);
    // Another global key version: a miss, overwritten under 5.
    let mut other = large_raw.clone();
    other[9..13].copy_from_slice(&4u32.to_le_bytes());
    backend
        .set("large", other, Duration::from_secs(60), &[])
        .await
        .unwrap();
    assert_eq!(call(&cache, "large", &large, &runs).await, large);
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert_eq!(
        u32::from_le_bytes(raw("large").await[9..13].try_into().unwrap()),
        5
    );
    assert_eq!(call(&cache, "large", &large, &runs).await, large);
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    // The backend's registration is above the environment; the function's above both.
    cache_runtime::register_arc_with(
        "codecs-env",
        Arc::clone(&backend),
        Protection::default().codec(Codec::Json),
    );
    call(&cache, "json", &small, &runs).await;
    assert_eq!(codec_of(&raw("json").await), 1);
    let own = cache.clone().codec(Codec::MessagePack);
    call(&own, "own", &small, &runs).await;
    assert_eq!(codec_of(&raw("own").await), 2);
}
