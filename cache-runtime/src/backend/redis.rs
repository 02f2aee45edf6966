//! The Redis backend, on the `redis` crate's multiplexed connection, or on its cluster client for a
//! Redis Cluster.
//!
//! Each tokio runtime gets its own connection, made on that runtime (see `io.rs`): its driver then
//! runs beside its callers (no thread hop), and a runtime that shuts down takes only its own
//! connection with it; callers outside any runtime share one on the library's runtime. A connection
//! that reports itself broken is forgotten, and the next operation on that runtime connects again.
//!
//! Layout under the prefix (default `cache:`):
//! - `{prefix}k:{key}`: an entry, written with `SET .. PX <ttl ms>`;
//! - `{prefix}g:{group}`: a group's generation, created at a random value on first use
//!   (`SET NX`) and moved to a new random value (`SET`; no TTL);
//! - `{prefix}t:{key}`: the key's tombstone generation, created like a group's by the first lookup
//!   and moved by every invalidation of the key; it expires [`TOMBSTONE_TTL`] after it was created
//!   or last moved (an entry older than that becomes a miss);
//! - `{prefix}l:{key}`: a computation lock (`SET NX PX`, released by compare-and-delete).
//!
//! A lookup is one `MGET` of the entry and its groups' generations, the key's tombstone among them
//! (the runtime adds it as a group of every memoized call; one round trip; on a cluster the client
//! splits it by slot and runs the parts in parallel, so there is no `CROSSSLOT` error). The
//! tombstone travels inside stored values like a group's generation, so a value computed before a
//! key invalidation, in any process, and stored after it, is stale. Group invalidation is one `SET` of
//! the generation to a new random value, followed by a `PUBLISH` on
//! `{prefix}invalidations` that in-process tiers of other processes listen to on a cluster (on a
//! single node they track the keys themselves; see [`TieredBackend`](super::TieredBackend)). Clearing walks the prefix with `SCAN` and removes in
//! batches with `UNLINK`, so no command blocks the server.
//!
//! Any key may be evicted (`allkeys-*` policies): a lost entry is a miss, and a lost generation comes
//! back at a new random value, so entries recorded under the old one are misses, never revivals.

use std::time::Duration;

use std::sync::Arc;

use async_trait::async_trait;
use redis::{aio::MultiplexedConnection, cluster::ClusterClient, cluster_async::ClusterConnection};

use super::{Backend, Lookup};
use crate::BackendError;
use crate::{
    io::{PerRuntime, RuntimeSlot},
    target::tombstone_key_of,
};

/// Default Redis URL when `REDIS_URL` is not set.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379";
/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "cache:";
/// How long a key's tombstone generation lives after it was created or last moved.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// A Redis store, single node or cluster. Connects lazily on first use and reconnects by itself.
///
/// ```no_run
/// # async fn demo() -> Result<(), cache_runtime::BackendError> {
/// use cache_runtime::RedisBackend;
/// let backend = RedisBackend::open("redis://127.0.0.1:6379")?.with_prefix("myapp:");
/// cache_runtime::register("redis", backend);
/// let cluster = RedisBackend::cluster(&["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])?;
/// cache_runtime::register("sessions", cluster);
/// # Ok(()) }
/// ```
pub struct RedisBackend {
    target: Target,
    /// Where pub/sub subscriptions may go: the node, or every configured node of a cluster (each
    /// sees every message; the subscriber moves to the next when its node is lost).
    pubsub: Vec<redis::Client>,
    url: String,
    prefix: String,
    /// A connection per runtime (made on first use there); forgotten when it breaks.
    connections: PerRuntime<Connection>,
    timeout: Duration,
}

/// One runtime's connection.
type Slot = Arc<RuntimeSlot<Connection>>;

#[derive(Clone)]
enum Target {
    Single(redis::Client),
    Cluster(Box<ClusterClient>),
}

/// A live connection: both kinds are cheap handles to a shared, multiplexed connection.
#[derive(Clone)]
enum Connection {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Connection {
    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match self {
            Connection::Single(conn) => cmd.query_async(conn).await,
            Connection::Cluster(conn) => cmd.query_async(conn).await,
        }
    }

    /// Commands in order: pipelined on a single node, one after the other on a cluster (they may
    /// belong to different nodes).
    async fn query_all(&mut self, commands: Vec<redis::Cmd>) -> redis::RedisResult<()> {
        match self {
            Connection::Single(conn) => {
                let mut pipe = redis::pipe();
                for command in commands {
                    pipe.add_command(command).ignore();
                }
                pipe.query_async(conn).await
            }
            Connection::Cluster(conn) => {
                for command in commands {
                    let _: redis::Value = command.query_async(conn).await?;
                }
                Ok(())
            }
        }
    }

    /// `commands`, then `announcement`: one pipeline on a single node; on a cluster, the
    /// announcement goes to any reachable node (every node relays it to its subscribers), so losing
    /// the node that owns the channel's slot does not fail invalidations.
    async fn query_then_announce(
        &mut self,
        commands: Vec<redis::Cmd>,
        announcement: redis::Cmd,
    ) -> redis::RedisResult<()> {
        match self {
            Connection::Single(_) => {
                let mut commands = commands;
                commands.push(announcement);
                self.query_all(commands).await
            }
            Connection::Cluster(conn) => {
                for command in commands {
                    let _: redis::Value = command.query_async(conn).await?;
                }
                publish_anywhere(conn, announcement).await
            }
        }
    }

    /// Creates a missing generation at a random value (`SET NX`) and reads what it is now.
    async fn start_generation(
        &mut self,
        group_key: String,
        ttl: Option<Duration>,
    ) -> redis::RedisResult<u64> {
        let init = new_generation(&group_key, ttl, Write::IfMissing);
        let mut get = redis::cmd("GET");
        get.arg(&group_key);
        let read: Option<Vec<u8>> = match self {
            // One round trip (`SET .. NX GET` would need Redis 7).
            Connection::Single(conn) => {
                let mut pipe = redis::pipe();
                pipe.add_command(init).ignore().add_command(get);
                let (read,): (Option<Vec<u8>>,) = pipe.query_async(conn).await?;
                read
            }
            Connection::Cluster(_) => {
                let _: redis::Value = self.query(&init).await?;
                self.query(&get).await?
            }
        };
        read.as_deref().and_then(parse_generation).ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Parse, "group generation is not a number"))
        })
    }

    async fn unlock(&mut self, lock_key: String, token: u64) -> redis::RedisResult<i64> {
        let mut invocation = UNLOCK.key(lock_key);
        invocation.arg(token);
        match self {
            Connection::Single(conn) => invocation.invoke_async(conn).await,
            Connection::Cluster(conn) => invocation.invoke_async(conn).await,
        }
    }
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &self.url)
            .field("cluster", &matches!(self.target, Target::Cluster(_)))
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisBackend {
    /// A backend for `url` (`redis://host:port/db`). Nothing is connected until first use.
    pub fn open(url: &str) -> Result<Self, BackendError> {
        let client = redis::Client::open(url)?;
        Ok(Self::with_target(
            Target::Single(client.clone()),
            vec![client],
            url,
        ))
    }

    /// A backend for a Redis Cluster reached through any of `nodes` (`redis://host:port`).
    pub fn cluster(nodes: &[&str]) -> Result<Self, BackendError> {
        if nodes.is_empty() {
            return Err(BackendError::Redis(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "a cluster needs at least one node",
            ))));
        }
        let timeout = response_timeout();
        let client = ClusterClient::builder(nodes.iter().copied())
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(2)
            .build()?;
        let pubsub = nodes
            .iter()
            .map(|node| redis::Client::open(*node))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::with_target(
            Target::Cluster(Box::new(client)),
            pubsub,
            &nodes.join(","),
        ))
    }

    fn with_target(target: Target, pubsub: Vec<redis::Client>, url: &str) -> Self {
        Self {
            target,
            pubsub,
            url: url.to_owned(),
            prefix: DEFAULT_PREFIX.to_owned(),
            connections: PerRuntime::default(),
            timeout: response_timeout(),
        }
    }

    /// The built-in `"redis"` backend: a cluster when `REDIS_CLUSTER_NODES` lists nodes
    /// (comma-separated URLs), else `REDIS_URL` (default [`DEFAULT_URL`]); the prefix is
    /// `CACHE_REDIS_PREFIX` (default [`DEFAULT_PREFIX`]).
    pub fn from_env() -> Result<Self, BackendError> {
        let backend = match crate::config::redis_cluster_nodes() {
            Some(nodes) => Self::cluster(&nodes.iter().map(String::as_str).collect::<Vec<_>>())?,
            None => {
                let url = crate::config::redis_url();
                Self::open(url.as_deref().unwrap_or(DEFAULT_URL))?
            }
        };
        Ok(match crate::config::redis_prefix() {
            Some(prefix) => backend.with_prefix(&prefix),
            None => backend,
        })
    }

    /// Uses `prefix` before every key this backend writes.
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.prefix);
        self
    }

    /// The URL this backend connects to (the nodes, comma-separated, for a cluster).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Connects now (it otherwise happens on first use) and checks the server answers `PING`.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use cache_runtime::RedisBackend;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_runtime::BackendError> {
    /// // Fail fast at start-up rather than running every cached fn uncached.
    /// let backend = RedisBackend::from_env()?;
    /// match tokio::time::timeout(Duration::from_secs(1), backend.ping()).await {
    ///     Ok(Ok(())) => cache_runtime::register("redis", backend),
    ///     Ok(Err(error)) => eprintln!("{error}"), // names what to check
    ///     Err(_) => eprintln!("Redis at {} did not answer within 1 s", backend.url()),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn ping(&self) -> Result<(), BackendError> {
        let (slot, mut conn) = self.connection().await?;
        let pong = conn.query::<String>(&redis::cmd("PING")).await;
        self.checked(&slot, pong).map(drop)
    }

    /// The caller's runtime's connection, connecting on that runtime if there is none, with the
    /// slot it came from (to forget it if it turns out broken).
    async fn connection(&self) -> Result<(Slot, Connection), BackendError> {
        let slot = self.connections.current();
        if let Some(conn) = slot.get() {
            return Ok((slot, conn));
        }
        let target = self.target.clone();
        let timeout = self.timeout;
        let conn = slot
            .get_or_make(move || async move { Ok(connect(target, timeout).await?) })
            .await?;
        Ok((slot, conn))
    }

    /// After an operation that started at `started` timed out: forgets the caller's runtime's
    /// connection if it was made before then (it may be dead without an error), so the next
    /// operation there connects again. A connection still being made, or made since, stays.
    pub(crate) fn forget_connection_made_before(&self, started: std::time::Instant) {
        self.connections.forget_if_made_before(started);
    }

    /// Passes `result` on; a connection-level failure drops the connection it came from, so the
    /// next operation connects again.
    fn checked<T>(&self, slot: &Slot, result: redis::RedisResult<T>) -> Result<T, BackendError> {
        result.map_err(|error| {
            if error.is_connection_dropped()
                || error.is_unrecoverable_error()
                || error.is_io_error()
                || error.is_timeout()
            {
                self.connections.forget(slot);
            }
            BackendError::Redis(error)
        })
    }

    /// `{prefix}k:{key}`, in parts.
    fn entry_parts<'a>(&'a self, key: &'a str) -> [&'a str; 3] {
        [&self.prefix, "k:", key]
    }

    /// `{prefix}t:{key}` for a key's tombstone group, `{prefix}g:{group}` for any other, in parts.
    fn group_parts<'a>(&'a self, group: &'a str) -> [&'a str; 3] {
        match tombstone_key_of(group) {
            Some(key) => [&self.prefix, "t:", key],
            None => [&self.prefix, "g:", group],
        }
    }

    fn entry_key(&self, key: &str) -> String {
        self.entry_parts(key).concat()
    }

    fn group_key(&self, group: &str) -> String {
        self.group_parts(group).concat()
    }

    fn lock_key(&self, key: &str) -> String {
        [self.prefix.as_str(), "l:", key].concat()
    }

    /// [`entry_key`](Self::entry_key) as the next argument of `cmd`, written in place.
    fn push_entry_key(&self, cmd: &mut redis::Cmd, key: &str) {
        push_key(cmd, self.entry_parts(key));
    }

    /// [`group_key`](Self::group_key) as the next argument of `cmd`, written in place.
    fn push_group_key(&self, cmd: &mut redis::Cmd, group: &str) {
        push_key(cmd, self.group_parts(group));
    }

    /// The pub/sub channel on which invalidations are announced to in-process tiers.
    pub(crate) fn invalidation_channel(&self) -> String {
        format!("{}invalidations", self.prefix)
    }

    /// The clients to subscribe with, in the order to try them: one per configured node.
    pub(crate) fn pubsub_clients(&self) -> &[redis::Client] {
        &self.pubsub
    }

    /// A RESP3 client for `CLIENT TRACKING` on a single node; `None` for a cluster, where tracking
    /// only reports the keys of the node it is enabled on (see [`TieredBackend`](super::TieredBackend)).
    pub(crate) fn tracking_client(&self) -> Option<redis::Client> {
        let Target::Single(client) = &self.target else {
            return None;
        };
        let info = client.get_connection_info().clone();
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        redis::Client::open(info.set_redis_settings(resp3)).ok()
    }

    /// The key prefixes whose writes invalidate local copies: entries, generations, tombstones.
    pub(crate) fn tracked_prefixes(&self) -> [String; 3] {
        ["k:", "g:", "t:"].map(|kind| format!("{}{kind}", self.prefix))
    }

    /// The key prefix.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    fn announce(&self, invalidation: Invalidation<'_>) -> redis::Cmd {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(self.invalidation_channel())
            .arg(invalidation.encode());
        cmd
    }
}

/// When [`new_generation`] writes: always (a move), or only where there is none yet.
#[derive(Clone, Copy, PartialEq)]
enum Write {
    /// `SET`: the generation moves to a value it never had, whether it exists or not. One command
    /// that reads nothing: an `INCR` after a `SET NX` would start a generation evicted between
    /// the two (or a tombstone expiring there) at 1 every time, a value an entry may have
    /// recorded.
    Move,
    /// `SET NX`: creates a missing generation, leaves an existing one alone.
    IfMissing,
}

/// `SET key <random> [NX] [PX ttl]`: a generation at a random value (see [`random_generation`]);
/// with `ttl`, it expires that long after.
fn new_generation(generation_key: &str, ttl: Option<Duration>, write: Write) -> redis::Cmd {
    let mut set = redis::cmd("SET");
    set.arg(generation_key).arg(random_generation());
    if write == Write::IfMissing {
        set.arg("NX");
    }
    if let Some(ttl) = ttl {
        set.arg("PX").arg(super::clamp_ttl_ms(ttl));
    }
    set
}

/// How long a generation of `group` lives: a key's tombstone [`TOMBSTONE_TTL`] after it was
/// created or last moved, a group's for ever.
fn generation_ttl(group: &str) -> Option<Duration> {
    tombstone_key_of(group).map(|_| TOMBSTONE_TTL)
}

/// The concatenation of `parts` as the next argument of `cmd`, with no string of its own.
fn push_key(cmd: &mut redis::Cmd, parts: [&str; 3]) {
    use redis::RedisWrite;
    use std::io::Write as _;
    let mut arg = cmd.writer_for_next_arg();
    for part in parts {
        // Writes into the command's own buffer: they cannot fail.
        let _ = arg.write_all(part.as_bytes());
    }
}

/// Publishes on a cluster: to the node that owns the channel's slot, or, if that fails (the node
/// is lost), to every primary, succeeding if one took it (subscribers then may get it more than
/// once, which is harmless).
async fn publish_anywhere(
    conn: &mut ClusterConnection,
    announcement: redis::Cmd,
) -> redis::RedisResult<()> {
    use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
    if announcement.query_async::<redis::Value>(conn).await.is_ok() {
        return Ok(());
    }
    let everywhere = RoutingInfo::MultiNode((
        MultipleNodeRoutingInfo::AllMasters,
        Some(ResponsePolicy::OneSucceeded),
    ));
    conn.route_command(announcement, everywhere).await.map(drop)
}

/// How long connecting may take (it runs to the end on its runtime, whatever the caller's timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A reply slower than this fails the command and replaces the connection: below the runtime's
/// per-operation timeout, so a silently dead connection is noticed and replaced, not waited on.
fn response_timeout() -> Duration {
    (crate::config::backend_timeout() * 4 / 5).max(Duration::from_millis(10))
}

/// A generation's first value: random, far from both 0 and the top of Redis's integer range, so a
/// generation created again after an eviction never equals one recorded before (odds 2^-61).
fn random_generation() -> u64 {
    fastrand::u64(1 << 32..1 << 62)
}

fn parse_generation(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// Connects to `target`; run on the runtime the connection is for, where its driver then lives.
async fn connect(target: Target, timeout: Duration) -> redis::RedisResult<Connection> {
    match target {
        Target::Single(client) => {
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(timeout));
            let conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            Ok(Connection::Single(conn))
        }
        Target::Cluster(client) => Ok(Connection::Cluster(client.get_async_connection().await?)),
    }
}

/// An invalidation as announced on the invalidation channel.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Invalidation<'a> {
    Key(&'a str),
    Group(&'a str),
    All,
}

impl<'a> Invalidation<'a> {
    pub(crate) fn encode(&self) -> String {
        match self {
            Invalidation::Key(key) => format!("k:{key}"),
            Invalidation::Group(group) => format!("g:{group}"),
            Invalidation::All => "*".to_owned(),
        }
    }

    pub(crate) fn decode(message: &'a str) -> Option<Self> {
        match message.split_at_checked(2) {
            Some(("k:", key)) => Some(Invalidation::Key(key)),
            Some(("g:", group)) => Some(Invalidation::Group(group)),
            _ if message == "*" => Some(Invalidation::All),
            _ => None,
        }
    }
}

/// The invalidation a write to `redis_key` (reported by `CLIENT TRACKING`) stands for: an entry
/// or a key's tombstone invalidates that key, a generation its group; anything else is ignored.
pub(crate) fn tracked<'a>(prefix: &str, redis_key: &'a str) -> Option<Invalidation<'a>> {
    let rest = redis_key.strip_prefix(prefix)?;
    match rest.split_at_checked(2)? {
        ("k:" | "t:", key) => Some(Invalidation::Key(key)),
        ("g:", group) => Some(Invalidation::Group(group)),
        _ => None,
    }
}

/// Deletes a lock only if it still holds the caller's token, so a caller whose lock expired never
/// releases the lock another process took since.
static UNLOCK: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
    )
});

#[async_trait]
impl Backend for RedisBackend {
    fn tombstones(&self) -> bool {
        true
    }

    async fn get(&self, key: &str, groups: &[String]) -> Result<Lookup, BackendError> {
        let (slot, mut conn) = self.connection().await?;
        if groups.is_empty() {
            let mut get = redis::Cmd::with_capacity(2, 3 + self.prefix.len() + 2 + key.len());
            get.arg("GET");
            self.push_entry_key(&mut get, key);
            let value = conn.query(&get).await;
            return Ok(Lookup {
                value: self.checked(&slot, value)?,
                generations: Vec::new(),
            });
        }
        // Written in place: the keys are never strings of their own.
        let names: usize = groups.iter().map(String::len).sum::<usize>() + key.len();
        let mut cmd = redis::Cmd::with_capacity(
            2 + groups.len(),
            4 + (self.prefix.len() + 2) * (1 + groups.len()) + names,
        );
        cmd.arg("MGET");
        self.push_entry_key(&mut cmd, key);
        for group in groups {
            self.push_group_key(&mut cmd, group);
        }
        let replies = conn.query::<Vec<Option<Vec<u8>>>>(&cmd).await;
        let mut replies = self.checked(&slot, replies)?;
        if replies.len() != groups.len() + 1 {
            return Err(BackendError::Redis(redis::RedisError::from((
                redis::ErrorKind::Parse,
                "MGET returned a wrong number of values",
            ))));
        }
        let mut generations = Vec::with_capacity(groups.len());
        for (group, reply) in groups.iter().zip(replies.drain(1..)) {
            let generation = match reply.as_deref().and_then(parse_generation) {
                Some(generation) => generation,
                // Never used, expired or evicted: start it at a random value, so that no entry
                // recorded under an earlier generation can match it. Tombstones expire.
                None => {
                    let ttl = generation_ttl(group);
                    let started = conn.start_generation(self.group_key(group), ttl).await;
                    self.checked(&slot, started)?
                }
            };
            generations.push(generation);
        }
        Ok(Lookup {
            value: replies.pop().flatten(),
            generations,
        })
    }

    async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
        _groups: &[String],
    ) -> Result<(), BackendError> {
        let (slot, mut conn) = self.connection().await?;
        let ttl_ms = super::clamp_ttl_ms(ttl).max(1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.entry_key(key))
            .arg(value)
            .arg("PX")
            .arg(ttl_ms);
        let stored = conn.query::<()>(&cmd).await;
        self.checked(&slot, stored)
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        let (slot, mut conn) = self.connection().await?;
        let mut unlink = redis::cmd("UNLINK");
        unlink.arg(self.entry_key(key));
        let deleted = conn
            .query_then_announce(vec![unlink], self.announce(Invalidation::Key(key)))
            .await;
        self.checked(&slot, deleted)
    }

    async fn invalidate_group(&self, group: &str) -> Result<(), BackendError> {
        let (slot, mut conn) = self.connection().await?;
        let moved = new_generation(&self.group_key(group), generation_ttl(group), Write::Move);
        if tombstone_key_of(group).is_some() {
            // Moved with every key invalidation (which announces itself); expires in time.
            let moved = conn.query_all(vec![moved]).await;
            return self.checked(&slot, moved);
        }
        let moved = conn
            .query_then_announce(vec![moved], self.announce(Invalidation::Group(group)))
            .await;
        self.checked(&slot, moved)
    }

    async fn try_lock(&self, key: &str, token: u64, ttl: Duration) -> Result<bool, BackendError> {
        let (slot, mut conn) = self.connection().await?;
        let ttl_ms = super::clamp_ttl_ms(ttl).max(1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.lock_key(key))
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms);
        let reply = conn.query::<Option<String>>(&cmd).await;
        Ok(self.checked(&slot, reply)?.is_some())
    }

    async fn unlock(&self, key: &str, token: u64) -> Result<(), BackendError> {
        let (slot, mut conn) = self.connection().await?;
        let released = conn.unlock(self.lock_key(key), token).await;
        self.checked(&slot, released).map(drop)
    }

    async fn clear(&self) -> Result<(), BackendError> {
        let (slot, conn) = self.connection().await?;
        let cleared = self.clear_on(conn).await;
        self.checked(&slot, cleared)
    }
}

impl RedisBackend {
    async fn clear_on(&self, mut conn: Connection) -> redis::RedisResult<()> {
        if let Connection::Cluster(_) = conn {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "clear is not supported on a Redis Cluster (it would need a SCAN of every node); \
                 invalidate groups instead",
            )));
        }
        let pattern = format!("{}k:*", escape_glob(&self.prefix));
        let mut cursor: u64 = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            let (next, keys): (u64, Vec<String>) = conn.query(&scan).await?;
            if !keys.is_empty() {
                let _: i64 = conn.query(redis::cmd("UNLINK").arg(keys)).await?;
            }
            if next == 0 {
                let _: i64 = conn.query(&self.announce(Invalidation::All)).await?;
                return Ok(());
            }
            cursor = next;
        }
    }
}

/// Escapes glob characters so a prefix matches only itself in `SCAN MATCH`.
fn escape_glob(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_live_in_separate_namespaces() {
        let backend = RedisBackend::open(DEFAULT_URL).unwrap().with_prefix("app:");
        assert_eq!(backend.entry_key("users"), "app:k:users");
        assert_eq!(backend.group_key("users"), "app:g:users");
        let tombstone = crate::target::tombstone_group("users");
        assert_eq!(backend.group_key(&tombstone), "app:t:users");
    }

    #[test]
    fn keys_written_in_place_are_the_keys() {
        let backend = RedisBackend::open(DEFAULT_URL).unwrap().with_prefix("app:");
        let tombstone = crate::target::tombstone_group("users:é");
        let mut in_place = redis::Cmd::with_capacity(1, 4);
        in_place.arg("MGET");
        backend.push_entry_key(&mut in_place, "users:é");
        backend.push_group_key(&mut in_place, "users");
        backend.push_group_key(&mut in_place, &tombstone);
        let mut from_strings = redis::cmd("MGET");
        from_strings
            .arg(backend.entry_key("users:é"))
            .arg(backend.group_key("users"))
            .arg(backend.group_key(&tombstone));
        assert_eq!(
            in_place.get_packed_command(),
            from_strings.get_packed_command()
        );
        assert_eq!(backend.group_key(&tombstone), "app:t:users:é");
    }

    #[test]
    fn glob_characters_in_prefix_are_escaped() {
        assert_eq!(escape_glob("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn invalidation_messages_round_trip() {
        for message in [
            Invalidation::Key("user:1"),
            Invalidation::Group("g:x"),
            Invalidation::All,
        ] {
            assert_eq!(Invalidation::decode(&message.encode()), Some(message));
        }
        assert_eq!(Invalidation::decode("zz"), None);
    }

    #[test]
    fn tracked_keys_map_back_to_invalidations() {
        assert_eq!(
            tracked("app:", "app:k:user:1"),
            Some(Invalidation::Key("user:1"))
        );
        assert_eq!(
            tracked("app:", "app:t:user:1"),
            Some(Invalidation::Key("user:1"))
        );
        assert_eq!(
            tracked("app:", "app:g:users"),
            Some(Invalidation::Group("users"))
        );
        assert_eq!(tracked("app:", "app:l:user:1"), None);
        assert_eq!(tracked("app:", "other:k:user:1"), None);
        assert_eq!(tracked("app:", "app:"), None);
        assert_eq!(
            tracked("app:", "app:é"),
            None,
            "no panic inside a character"
        );
    }

    #[test]
    fn tracking_is_for_single_nodes() {
        let single = RedisBackend::open(DEFAULT_URL).unwrap();
        let client = single.tracking_client().expect("a single node tracks");
        assert_eq!(
            client.get_connection_info().redis_settings().protocol(),
            redis::ProtocolVersion::RESP3
        );
        let cluster =
            RedisBackend::cluster(&["redis://127.0.0.1:1", "redis://127.0.0.1:2"]).unwrap();
        assert!(cluster.tracking_client().is_none());
        assert_eq!(cluster.pubsub_clients().len(), 2);
    }

    #[test]
    fn bad_url_is_an_error_not_a_panic() {
        assert!(RedisBackend::open("not a url").is_err());
    }
}
