//! Test support: a private `redis-server` per test, on a free port, killed on drop.
#![allow(dead_code)]

pub mod http;
pub mod wrapped;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A `redis-server` process this test started. It is killed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    ///
    /// Panics with a clear message when `redis-server` cannot be started: a Redis test never passes
    /// without a server.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// [`start`](Self::start) with extra `redis-server` arguments (kept across restarts).
    pub fn start_with(extra: &[&str]) -> Self {
        let extra: Vec<String> = extra.iter().map(|a| (*a).to_owned()).collect();
        let dir = tempfile::tempdir().expect("temp dir for redis-server");
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut child = match spawn_with(port, dir.path(), &extra) {
                Ok(child) => child,
                Err(e) => {
                    last_error = e;
                    continue;
                }
            };
            match wait_ready(&mut child, port, Duration::from_secs(10)) {
                Ok(()) => {
                    return Self {
                        child: Some(child),
                        port,
                        dir,
                        extra,
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = e;
                }
            }
        }
        panic!(
            "could not start redis-server for this test ({last_error}); \
             install it (apt-get install redis-server): Redis tests need a real server"
        );
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (a crash, for fault tests).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port after [`kill`](Self::kill).
    pub fn restart(&mut self) {
        self.kill();
        let mut child = spawn_with(self.port, self.dir.path(), &self.extra)
            .unwrap_or_else(|e| panic!("could not restart redis-server: {e}"));
        wait_ready(&mut child, self.port, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("restarted redis-server not ready: {e}"));
        self.child = Some(child);
    }

    /// Runs one command through `redis-cli` and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl RedisServer {
    /// How many reads (`GET`, `MGET`) the server has run since it started: a call served by an
    /// in-process tier leaves it unchanged.
    pub fn reads(&self) -> u64 {
        command_calls(&self.cli(&["INFO", "commandstats"]), &["get", "mget"])
    }
}

/// Sums the `calls=` of `commands` in an `INFO commandstats` reply.
fn command_calls(info: &str, commands: &[&str]) -> u64 {
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            commands.contains(&name).then_some(stats)
        })
        .filter_map(|stats| {
            let calls = stats.strip_prefix("calls=")?;
            calls.split(',').next()?.parse::<u64>().ok()
        })
        .sum()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_ready(child: &mut Child, port: u16, limit: Duration) -> Result<(), String> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("redis-server exited with {status}"));
        }
        if ping(port) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("no PONG on port {port} within {limit:?}"))
}

fn spawn(port: u16, dir: &std::path::Path) -> Result<Child, String> {
    spawn_with(port, dir, &[])
}

fn spawn_with(port: u16, dir: &std::path::Path, extra: &[String]) -> Result<Child, String> {
    Command::new("redis-server")
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .args(["--protected-mode", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawning redis-server: {e}"))
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// A Redis Cluster of `masters` primaries (no replicas) on free ports, made with
/// `redis-cli --cluster create`; every node is killed on drop.
pub struct RedisCluster {
    nodes: Vec<Child>,
    ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub fn start(masters: usize) -> Self {
        Self::start_with(masters, &[])
    }

    /// [`start`](Self::start) with extra `redis-server` arguments for every node (for instance
    /// `--cluster-require-full-coverage no`, so the others keep serving when one is killed).
    pub fn start_with(masters: usize, extra_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for the cluster");
        let mut nodes = Vec::new();
        let mut ports = Vec::new();
        while ports.len() < masters {
            let port = free_port();
            // The cluster bus listens on port + 10000.
            if port > 55_000 || TcpListener::bind(("127.0.0.1", port + 10_000)).is_err() {
                continue;
            }
            let mut extra = vec![
                "--cluster-enabled".to_owned(),
                "yes".to_owned(),
                "--cluster-config-file".to_owned(),
                format!("nodes-{port}.conf"),
                "--cluster-node-timeout".to_owned(),
                "2000".to_owned(),
            ];
            extra.extend(extra_args.iter().map(|a| (*a).to_owned()));
            let mut child = spawn_with(port, dir.path(), &extra)
                .unwrap_or_else(|e| panic!("cluster node: {e}"));
            wait_ready(&mut child, port, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("cluster node not ready: {e}"));
            nodes.push(child);
            ports.push(port);
        }
        let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create runs");
        assert!(
            created.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let cluster = Self {
            nodes,
            ports,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cluster.ports.iter().all(|p| {
            cluster
                .cli(*p, &["CLUSTER", "INFO"])
                .contains("cluster_state:ok")
        }) {
            assert!(
                Instant::now() < deadline,
                "cluster never reached cluster_state:ok"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// Runs a command through `redis-cli -c` (follows redirections) against the first node.
    pub fn cli_any(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-c", "-p", &self.ports[0].to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// The port of node `index` (in the order of [`urls`](Self::urls)).
    pub fn port(&self, index: usize) -> u16 {
        self.ports[index]
    }

    /// Runs one command on node `index` (no redirections followed).
    pub fn cli_node(&self, index: usize, args: &[&str]) -> String {
        self.cli(self.ports[index], args)
    }

    /// Kills node `index` (a crash); the others keep running.
    pub fn kill_node(&mut self, index: usize) {
        let _ = self.nodes[index].kill();
        let _ = self.nodes[index].wait();
    }

    /// The node that owns `key`'s slot (the one that does not answer `MOVED`).
    pub fn owner_of(&self, key: &str) -> usize {
        (0..self.ports.len())
            .find(|&i| !self.cli_node(i, &["EXISTS", key]).starts_with("MOVED"))
            .expect("some node owns every slot")
    }

    /// How many clients are subscribed to `channel` on each node (`PUBSUB NUMSUB` is per node).
    pub fn subscribers(&self, channel: &str) -> Vec<u64> {
        (0..self.ports.len())
            .map(|i| {
                let reply = self.cli_node(i, &["PUBSUB", "NUMSUB", channel]);
                reply
                    .lines()
                    .nth(1)
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0)
            })
            .collect()
    }

    /// Reads (`GET`, `MGET`) run by the nodes still up, summed (see [`RedisServer::reads`]).
    pub fn reads(&self) -> u64 {
        (0..self.ports.len())
            .map(|i| {
                command_calls(
                    &self.cli_node(i, &["INFO", "commandstats"]),
                    &["get", "mget"],
                )
            })
            .sum()
    }

    /// Total keys over every node.
    pub fn total_keys(&self) -> u64 {
        self.ports
            .iter()
            .map(|p| self.cli(*p, &["DBSIZE"]).parse::<u64>().unwrap_or(0))
            .sum()
    }

    fn cli(&self, port: u16, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// Unregisters `name` on drop, so a test's backend never outlives the server it talks to: a
/// registered backend whose server is gone fails every later process-wide `invalidate_*` of the
/// test binary.
pub struct Unregister(pub &'static str);

impl Drop for Unregister {
    fn drop(&mut self) {
        cache_runtime::unregister(self.0);
    }
}

/// Registers a fresh private Redis under `name`; unregisters it and stops the server on drop.
pub struct RegisteredRedis {
    pub server: RedisServer,
    pub name: &'static str,
}

impl RegisteredRedis {
    pub fn start(name: &'static str) -> Self {
        let server = RedisServer::start();
        let backend = cache_runtime::RedisBackend::open(&server.url()).expect("valid url");
        cache_runtime::register(name, backend);
        Self { server, name }
    }
}

impl Drop for RegisteredRedis {
    fn drop(&mut self) {
        cache_runtime::unregister(self.name);
    }
}

/// Runs the helper binary with `args` and `env` added to (and `remove` taken from) this process's
/// environment, and fails the test unless it succeeds.
pub fn run_child(args: &[&str], env: &[(&str, &str)], remove: &[&str]) {
    let mut command = std::process::Command::new(child_binary());
    command.args(args);
    for (name, value) in env {
        command.env(name, value);
    }
    for name in remove {
        command.env_remove(name);
    }
    let output = command.output().expect("cache-child runs");
    assert!(
        output.status.success(),
        "cache-child {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Path of the helper binary the cross-process tests run.
pub fn child_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cache-child"))
}
