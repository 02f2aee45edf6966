//! What sealing costs per hit: the same hits with plain envelopes, with an HMAC-SHA256 tag
//! (`Secret::new`) and with AES-256-GCM (`Secret::new(..).encrypt()`), for a `u64` and a ~1 KiB
//! value.
//!
//! Two stores: a user-defined in-process byte store (a `HashMap` behind the `Backend` trait, so a
//! hit takes the serialized path, decode and open included, without a network round trip: the
//! differences are the crypto), and a private `redis-server` (what a hit costs in practice).

mod common;

use std::{collections::HashMap, sync::Mutex, time::Duration};

use cache_runtime::{
    async_trait, Backend, BackendError, Cache, Lookup, Protection, RedisBackend, Secret,
};
use common::{time_loop, Kib, RedisServer, HOT_KEYS};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};

const SECRET: &str = "a benchmark secret of 32 bytes..";

/// Bytes in a map: the serialized path of a hit, with no I/O.
#[derive(Default)]
struct ByteMap {
    entries: Mutex<HashMap<String, Vec<u8>>>,
}

#[async_trait]
impl Backend for ByteMap {
    async fn get(&self, key: &str, groups: &[String]) -> Result<Lookup, BackendError> {
        Ok(Lookup {
            value: self.entries.lock().unwrap().get(key).cloned(),
            generations: vec![0; groups.len()],
        })
    }
    async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        _ttl: Duration,
        _groups: &[String],
    ) -> Result<(), BackendError> {
        self.entries.lock().unwrap().insert(key.to_owned(), value);
        Ok(())
    }
    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        self.entries.lock().unwrap().remove(key);
        Ok(())
    }
    async fn invalidate_group(&self, _group: &str) -> Result<(), BackendError> {
        Ok(())
    }
    async fn clear(&self) -> Result<(), BackendError> {
        self.entries.lock().unwrap().clear();
        Ok(())
    }
}

/// The three ways to store: plain, MAC, encrypted.
fn modes() -> [(&'static str, Protection); 3] {
    let secret = Secret::new(SECRET).expect("long enough");
    [
        ("plain", Protection::default()),
        ("hmac", Protection::default().secret(secret.clone())),
        ("aes-gcm", Protection::default().secret(secret.encrypt())),
    ]
}

/// 64 hot keys per value type (both types share each backend, so not their keys).
fn hot_keys(kind: &str) -> Vec<String> {
    (0..HOT_KEYS).map(|n| format!("{kind}:{n}")).collect()
}

/// Registers one backend per mode, warms 64 keys of each value type and checks they hit.
fn warm(
    rt: &tokio::runtime::Runtime,
    store: &str,
    backend: impl Fn() -> Box<dyn Fn(&str, Protection)>,
) -> Vec<(String, Cache<u64>, Cache<Kib>)> {
    let (small_keys, large_keys) = (hot_keys("u64"), hot_keys("kib"));
    let register = backend();
    let mut caches = Vec::new();
    for (mode, protection) in modes() {
        let name = format!("bench-seal-{store}-{mode}");
        register(&name, protection);
        let small: Cache<u64> = Cache::new(&name, Duration::from_secs(600)).backend(&name);
        let large: Cache<Kib> =
            Cache::new(&format!("{name}-kib"), Duration::from_secs(600)).backend(&name);
        rt.block_on(async {
            let keys = small_keys.iter().zip(&large_keys).enumerate();
            for (n, (small_key, large_key)) in keys.clone() {
                small
                    .get_or_insert_with(small_key, || async { n as u64 })
                    .await;
                large
                    .get_or_insert_with(large_key, || async { Kib::new(n as u64) })
                    .await;
            }
            for (n, (small_key, large_key)) in keys {
                let hit = small
                    .get_or_insert_with(small_key, || async { u64::MAX })
                    .await;
                assert_eq!(hit, n as u64, "{name}: warm calls must hit");
                let hit = large
                    .get_or_insert_with(large_key, || async { Kib::new(0) })
                    .await;
                assert_eq!(hit, Kib::new(n as u64), "{name}: warm calls must hit");
            }
        });
        caches.push((mode.to_owned(), small, large));
    }
    caches
}

fn run(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    store: &str,
    caches: &[(String, Cache<u64>, Cache<Kib>)],
) {
    let (small_keys, large_keys) = (hot_keys("u64"), hot_keys("kib"));
    let (small_keys, large_keys) = (&small_keys, &large_keys);
    let mut g = c.benchmark_group(format!("sealed_hit_{store}_u64"));
    g.throughput(Throughput::Elements(1));
    for (mode, small, _) in caches {
        g.bench_function(BenchmarkId::from_parameter(mode), |b| {
            b.iter_custom(|iters| {
                time_loop(rt, iters, |i| {
                    let key = &small_keys[(i & (HOT_KEYS - 1)) as usize];
                    small.get_or_insert_with(key, || async { u64::MAX })
                })
            })
        });
    }
    g.finish();
    let mut g = c.benchmark_group(format!("sealed_hit_{store}_1KiB"));
    g.throughput(Throughput::Elements(1));
    for (mode, _, large) in caches {
        g.bench_function(BenchmarkId::from_parameter(mode), |b| {
            b.iter_custom(|iters| {
                time_loop(rt, iters, |i| {
                    let key = &large_keys[(i & (HOT_KEYS - 1)) as usize];
                    large.get_or_insert_with(key, || async { Kib::new(0) })
                })
            })
        });
    }
    g.finish();
}

fn integrity_benches(c: &mut Criterion) {
    let rt = common::runtime();
    let in_process = warm(&rt, "bytemap", || {
        Box::new(|name: &str, protection| {
            cache_runtime::register_with(name, ByteMap::default(), protection)
        })
    });
    run(c, &rt, "bytemap", &in_process);

    let server = RedisServer::start();
    let url = server.url();
    let on_redis = warm(&rt, "redis", || {
        let url = url.clone();
        Box::new(move |name: &str, protection| {
            // A prefix per mode: the modes must not read (and overwrite) each other's entries.
            let backend = RedisBackend::open(&url)
                .expect("valid url")
                .with_prefix(&format!("{name}:"));
            cache_runtime::register_with(name, backend, protection)
        })
    });
    run(c, &rt, "redis", &on_redis);

    for s in cache_runtime::stats() {
        assert_eq!(
            s.backend_errors + s.decode_failures,
            0,
            "{} on {}: {} backend errors, {} unopened entries during the benches",
            s.function,
            s.backend,
            s.backend_errors,
            s.decode_failures
        );
    }
    drop(server);
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = integrity_benches
}

fn main() {
    common::isolate_env();
    // The plain contender must be plain: no secret from the environment.
    for name in ["CACHE_SECRET", "CACHE_SECRET_PREVIOUS", "CACHE_ENCRYPT"] {
        std::env::remove_var(name);
    }
    common::pin_to_one_cpu();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
