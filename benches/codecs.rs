//! Codecs and compression: Redis and file hits and misses of a 1 KiB, a 100 KiB and a 1 MiB struct
//! (sizes of its JSON form) through `Cache<Doc>`, per codec, with and without LZ4 for the large
//! ones; the `cached` crate's `AsyncRedisCache` on the same Redis; the codecs' own encode and
//! decode time (postcard too, which is not offered: see BENCHMARKS.md); and the bytes stored per
//! entry, printed before the measurements.
//!
//! The benchmark starts its own `redis-server` on a free port (no persistence) and a temp folder,
//! and removes both at the end.

mod common;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

use cache_runtime::{Backend, Cache, Codec, Protection};
use cached::ConcurrentCachedAsync;
use common::{time_loop, RedisServer};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use serde::{Deserialize, Serialize};

/// Hot keys of the hit benchmarks (a power of two; 8 MiB per configuration at 1 MiB).
const HOT: u64 = 8;
/// Entries of the miss benchmarks live this long, so a long run does not fill Redis.
const MISS_TTL: Duration = Duration::from_secs(5);

/// A row of a typical API answer: text, numbers, a flag, a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    id: u64,
    name: String,
    email: String,
    score: f64,
    active: bool,
    tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Doc {
    page: u32,
    items: Vec<Item>,
}

/// A document whose JSON form is about `bytes` long.
fn doc(bytes: usize) -> Doc {
    const WORDS: [&str; 8] = [
        "amber", "basil", "cedar", "delta", "ember", "fjord", "grove", "haven",
    ];
    let mut rng = fastrand::Rng::with_seed(42);
    let mut items = Vec::new();
    let mut size = 20;
    while size < bytes {
        let id = rng.u64(..1_000_000);
        let item = Item {
            id,
            name: format!("{} {}", WORDS[rng.usize(..8)], WORDS[rng.usize(..8)]),
            email: format!("user{id}@example.com"),
            score: rng.f64() * 100.0,
            active: rng.bool(),
            tags: (0..rng.usize(1..4))
                .map(|_| WORDS[rng.usize(..8)].to_owned())
                .collect(),
        };
        size += serde_json::to_vec(&item).unwrap().len() + 1;
        items.push(item);
    }
    Doc { page: 1, items }
}

const SIZES: [(&str, usize); 3] = [
    ("1KiB", 1024),
    ("100KiB", 100 * 1024),
    ("1MiB", 1024 * 1024),
];

/// One storage configuration: a codec, compression on (above 1 KiB) or off.
#[derive(Clone, Copy)]
struct Setup {
    codec: Codec,
    compress: bool,
}

impl Setup {
    fn label(self) -> String {
        format!("{}{}", self.codec, if self.compress { "+lz4" } else { "" })
    }

    fn protection(self) -> Protection {
        let above = if self.compress { 1024 } else { u64::MAX };
        Protection::default()
            .codec(self.codec)
            .compress_above(above)
    }
}

const SETUPS: [Setup; 4] = [
    Setup {
        codec: Codec::Json,
        compress: false,
    },
    Setup {
        codec: Codec::Json,
        compress: true,
    },
    Setup {
        codec: Codec::MessagePack,
        compress: false,
    },
    Setup {
        codec: Codec::MessagePack,
        compress: true,
    },
];

/// A fresh key for every miss, across samples.
static NEXT_MISS: AtomicU64 = AtomicU64::new(1 << 40);
/// Body runs during hit benchmarks (must stay 0).
static HIT_BODY_RUNS: AtomicU64 = AtomicU64::new(0);
static DOCS: OnceLock<Vec<Doc>> = OnceLock::new();

fn docs() -> &'static [Doc] {
    DOCS.get_or_init(|| SIZES.iter().map(|(_, bytes)| doc(*bytes)).collect())
}

fn codec_benches(c: &mut Criterion) {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = common::runtime();
    let rt = &rt;
    let redis: Arc<dyn Backend> = Arc::new(
        cache_runtime::RedisBackend::open(&server.url())
            .expect("valid url")
            .with_prefix("bench:"),
    );
    let file: Arc<dyn Backend> = Arc::new(cache_runtime::FileBackend::new(dir.path()));
    let cached_store = rt.block_on(async {
        cached::AsyncRedisCache::<String, Doc>::builder("cr_doc")
            .ttl(Duration::from_secs(600))
            .connection_string(&server.url())
            .build()
            .await
            .expect("cached's redis store")
    });

    cpu_benches(c);
    for ((size, _), value) in SIZES.iter().zip(docs()) {
        let json_len = serde_json::to_vec(value).unwrap().len();
        for (place, backend) in [("redis", &redis), ("file", &file)] {
            let mut g = c.benchmark_group(format!("{place}_{size}"));
            g.throughput(Throughput::Elements(1));
            for setup in SETUPS {
                let name = format!("{place}-{size}-{}", setup.label());
                cache_runtime::register_arc_with(
                    name.clone(),
                    Arc::clone(backend),
                    setup.protection(),
                );
                let hits: Cache<Doc> = Cache::new(&name, Duration::from_secs(600)).backend(&name);
                let misses: Cache<Doc> = Cache::new(&name, MISS_TTL).backend(&name);
                let key = |i: u64| format!("{name}:{i}");
                let stored = rt.block_on(async {
                    for i in 0..HOT {
                        hits.get_or_insert_with(&key(i), || async { value.clone() })
                            .await;
                    }
                    let raw = backend.get(&key(0), &[]).await.expect("get").value;
                    raw.expect("stored").len()
                });
                eprintln!(
                    "bytes per entry: {place} {size} {:<12} {stored:>9} (JSON of the value: {json_len})",
                    setup.label()
                );
                g.bench_function(BenchmarkId::new("hit", setup.label()), |b| {
                    b.iter_custom(|iters| {
                        time_loop(rt, iters, |i| {
                            let (hits, key) = (&hits, key(i & (HOT - 1)));
                            async move {
                                hits.get_or_insert_with(&key, || async {
                                    HIT_BODY_RUNS.fetch_add(1, Ordering::Relaxed);
                                    value.clone()
                                })
                                .await
                            }
                        })
                    })
                });
                g.bench_function(BenchmarkId::new("miss", setup.label()), |b| {
                    b.iter_custom(|iters| {
                        time_loop(rt, iters, |_| {
                            let (misses, key) =
                                (&misses, key(NEXT_MISS.fetch_add(1, Ordering::Relaxed)));
                            async move {
                                misses
                                    .get_or_insert_with(&key, || async { value.clone() })
                                    .await
                            }
                        })
                    })
                });
            }
            if place == "redis" {
                let key = |i: u64| format!("{size}-{i}");
                let stored = rt.block_on(async {
                    for i in 0..HOT {
                        cached_store
                            .async_cache_set(key(i), value.clone())
                            .await
                            .expect("set");
                    }
                    let mut conn = redis::Client::open(server.url())
                        .unwrap()
                        .get_multiplexed_async_connection()
                        .await
                        .unwrap();
                    let names: Vec<String> = redis::cmd("KEYS")
                        .arg(format!("*cr_doc*{size}-0"))
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    let len: usize = redis::cmd("STRLEN")
                        .arg(&names[0])
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    len
                });
                eprintln!(
                    "bytes per entry: redis {size} {:<12} {stored:>9} (JSON of the value: {json_len})",
                    "cached"
                );
                g.bench_function(BenchmarkId::new("hit", "cached AsyncRedisCache"), |b| {
                    b.iter_custom(|iters| {
                        time_loop(rt, iters, |i| {
                            let (store, key) = (&cached_store, key(i & (HOT - 1)));
                            async move {
                                let got = store.async_cache_get(&key).await.expect("get");
                                assert!(got.is_some(), "a hit");
                                got
                            }
                        })
                    })
                });
                g.bench_function(BenchmarkId::new("miss", "cached AsyncRedisCache"), |b| {
                    b.iter_custom(|iters| {
                        time_loop(rt, iters, |_| {
                            let store = &cached_store;
                            let key = format!("miss-{}", NEXT_MISS.fetch_add(1, Ordering::Relaxed));
                            async move {
                                if store.async_cache_get(&key).await.expect("get").is_none() {
                                    store
                                        .async_cache_set(key, value.clone())
                                        .await
                                        .expect("set");
                                }
                            }
                        })
                    })
                });
            }
            g.finish();
        }
    }
    assert_eq!(
        HIT_BODY_RUNS.load(Ordering::Relaxed),
        0,
        "every hit benchmark call hit"
    );
    drop(server);
}

/// Encoding and decoding alone (no backend), with postcard beside the offered codecs.
fn cpu_benches(c: &mut Criterion) {
    for ((size, _), value) in SIZES.iter().zip(docs()) {
        let json = serde_json::to_vec(value).unwrap();
        let msgpack = rmp_serde::to_vec_named(value).unwrap();
        let postcard = postcard::to_allocvec(value).unwrap();
        let lz4 = |bytes: &[u8]| lz4_flex::block::compress(bytes).len();
        eprintln!(
            "encoded {size}: json {} (lz4 {}), msgpack {} (lz4 {}), postcard {} (lz4 {})",
            json.len(),
            lz4(&json),
            msgpack.len(),
            lz4(&msgpack),
            postcard.len(),
            lz4(&postcard)
        );
        let mut g = c.benchmark_group(format!("codec_{size}"));
        g.throughput(Throughput::Bytes(json.len() as u64));
        g.bench_function("encode/json", |b| {
            b.iter(|| serde_json::to_vec(value).unwrap())
        });
        g.bench_function("encode/msgpack", |b| {
            b.iter(|| rmp_serde::to_vec_named(value).unwrap())
        });
        g.bench_function("encode/postcard", |b| {
            b.iter(|| postcard::to_allocvec(value).unwrap())
        });
        g.bench_function("decode/json", |b| {
            b.iter(|| serde_json::from_slice::<Doc>(&json).unwrap())
        });
        g.bench_function("decode/msgpack", |b| {
            b.iter(|| rmp_serde::from_slice::<Doc>(&msgpack).unwrap())
        });
        g.bench_function("decode/postcard", |b| {
            b.iter(|| postcard::from_bytes::<Doc>(&postcard).unwrap())
        });
        g.bench_function("lz4 compress/msgpack", |b| {
            b.iter(|| lz4_flex::block::compress(&msgpack))
        });
        let packed = lz4_flex::block::compress(&msgpack);
        g.bench_function("lz4 decompress/msgpack", |b| {
            b.iter(|| lz4_flex::block::decompress(&packed, msgpack.len()).unwrap())
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = common::criterion()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = codec_benches
}

fn main() {
    common::isolate_env();
    common::pin_to_one_cpu();
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
