//! Separate processes share entries through Redis and through a cache folder, and an invalidation
//! from a third process reaches both. The processes are the `cache-child` helper binary.

mod support;

use std::{
    process::{Command, Output},
    time::{Duration, Instant},
};

use support::{child_binary, free_port, RedisServer};

struct Env {
    redis_url: String,
    cache_dir: std::path::PathBuf,
}

fn run(env: &Env, args: &[&str]) -> Output {
    let output = Command::new(child_binary())
        .args(args)
        .env("REDIS_URL", &env.redis_url)
        .env("CACHE_DIR", &env.cache_dir)
        .env("CACHE_REDIS_PREFIX", "xproc:")
        .output()
        .expect("cache-child runs");
    assert!(
        output.status.success(),
        "cache-child {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Calls the memoized fn in a new process; returns whether its body ran there.
fn call(env: &Env, backend: &str, n: u64) -> bool {
    let output = run(env, &[backend, "call", &n.to_string()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(&format!("value={}", n * 2)), "{stdout}");
    stdout.contains("BODY_RAN")
}

#[test]
fn processes_share_entries_and_a_third_process_invalidates_both() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let env = Env {
        redis_url: server.url(),
        cache_dir: dir.path().to_owned(),
    };

    for backend in ["redis", "file"] {
        assert!(call(&env, backend, 21), "{backend}: first process computes");
        assert!(!call(&env, backend, 21), "{backend}: second process hits");
        assert!(
            call(&env, backend, 22),
            "{backend}: other arguments compute"
        );
    }
    assert!(server.cli(&["KEYS", "xproc:k:*"]).lines().count() == 2);

    // A third process invalidates the group; it reaches Redis and the folder (both configured).
    let output = run(&env, &["redis", "invalidate", "shared"]);
    assert!(String::from_utf8_lossy(&output.stdout).contains("invalidated"));

    for backend in ["redis", "file"] {
        assert!(
            call(&env, backend, 21),
            "{backend}: recomputed after invalidation"
        );
        assert!(!call(&env, backend, 21), "{backend}: then shared again");
    }
}

#[test]
fn concurrent_processes_on_one_folder_and_key_all_succeed() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let env = Env {
        redis_url: server.url(),
        cache_dir: dir.path().to_owned(),
    };
    let children: Vec<_> = (0..6)
        .map(|_| {
            Command::new(child_binary())
                .args(["file", "call", "7"])
                .env("CACHE_DIR", &env.cache_dir)
                .output()
        })
        .collect();
    for child in children {
        let output = child.unwrap();
        assert!(output.status.success());
        assert!(String::from_utf8_lossy(&output.stdout).contains("value=14"));
    }
    assert!(
        !call(&env, "file", 7),
        "the entry written concurrently is whole and valid"
    );
}

#[test]
fn a_closed_redis_port_returns_the_value_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env {
        redis_url: format!("redis://127.0.0.1:{}", free_port()),
        cache_dir: dir.path().to_owned(),
    };
    let started = Instant::now();
    assert!(call(&env, "redis", 5));
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
}
