//! The environment, read in one place: every variable the library looks at, parsed the same way.
//! Builders (`Protection`, the backends' constructors) override these in code.

use std::{path::PathBuf, sync::OnceLock, time::Duration};

/// Default timeout of one backend operation; `CACHE_BACKEND_TIMEOUT_MS` overrides it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);

/// Default limit on the serialized size of one stored value; `CACHE_MAX_VALUE_BYTES` overrides it.
pub const DEFAULT_MAX_VALUE_BYTES: u64 = 8 * 1024 * 1024;

/// Default bound on how long a caller waits for another caller's computation of the same key
/// before it computes itself; `CACHE_FOLLOW_TIMEOUT_MS` overrides it.
pub const DEFAULT_FOLLOW_TIMEOUT: Duration = Duration::from_secs(30);

/// A number from `name`, if it is set and parses (surrounding spaces allowed).
fn number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok()?.trim().parse().ok()
}

/// A non-empty value of `name`.
fn text(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// `CACHE_BACKEND_TIMEOUT_MS`: the default timeout of one backend operation.
pub(crate) fn backend_timeout() -> Duration {
    number("CACHE_BACKEND_TIMEOUT_MS").map_or(DEFAULT_TIMEOUT, Duration::from_millis)
}

/// `CACHE_FOLLOW_TIMEOUT_MS`: how long a caller waits for another caller's computation (read once).
pub(crate) fn follow_timeout() -> Duration {
    static LIMIT: OnceLock<Duration> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        number("CACHE_FOLLOW_TIMEOUT_MS").map_or(DEFAULT_FOLLOW_TIMEOUT, Duration::from_millis)
    })
}

/// `CACHE_MAX_VALUE_BYTES`: the largest serialized value stored (read once).
pub(crate) fn max_value_bytes() -> u64 {
    static LIMIT: OnceLock<u64> = OnceLock::new();
    *LIMIT.get_or_init(|| number("CACHE_MAX_VALUE_BYTES").unwrap_or(DEFAULT_MAX_VALUE_BYTES))
}

/// `CACHE_MEMORY_MAX_ENTRIES` and `CACHE_MEMORY_MAX_BYTES`, each with its default.
pub(crate) fn memory_limits(default_entries: u64, default_bytes: u64) -> (u64, u64) {
    (
        number("CACHE_MEMORY_MAX_ENTRIES").unwrap_or(default_entries),
        number("CACHE_MEMORY_MAX_BYTES").unwrap_or(default_bytes),
    )
}

/// `REDIS_CLUSTER_NODES`: the cluster's node URLs (comma-separated), if any.
pub(crate) fn redis_cluster_nodes() -> Option<Vec<String>> {
    let nodes = text("REDIS_CLUSTER_NODES")?;
    Some(nodes.split(',').map(|n| n.trim().to_owned()).collect())
}

/// `REDIS_URL`, if set.
pub(crate) fn redis_url() -> Option<String> {
    std::env::var("REDIS_URL").ok()
}

/// `CACHE_REDIS_PREFIX`, if set (an empty prefix is a prefix).
pub(crate) fn redis_prefix() -> Option<String> {
    std::env::var("CACHE_REDIS_PREFIX").ok()
}

/// `CACHE_DIR`, if set.
pub(crate) fn cache_dir() -> Option<PathBuf> {
    std::env::var_os("CACHE_DIR").map(PathBuf::from)
}

/// Whether Redis is configured (`REDIS_URL` or `REDIS_CLUSTER_NODES`), and the file backend
/// (`CACHE_DIR`): those count for invalidation even before first use.
pub(crate) fn configured_backends() -> (bool, bool) {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    (
        set("REDIS_URL") || set("REDIS_CLUSTER_NODES"),
        set("CACHE_DIR"),
    )
}

/// The three secret settings, as set: `CACHE_SECRET`, `CACHE_SECRET_PREVIOUS`, `CACHE_ENCRYPT`.
pub(crate) type SecretSettings = (Option<String>, Option<String>, Option<String>);

/// `CACHE_SECRET`, `CACHE_SECRET_PREVIOUS` and `CACHE_ENCRYPT` as set (parsed and validated by
/// the sealing module, which decides what an invalid value means); `Err(name)`: that variable is
/// set but not UTF-8.
pub(crate) fn secret_env() -> Result<SecretSettings, &'static str> {
    let raw = |name: &'static str| match std::env::var(name) {
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(name),
    };
    Ok((
        raw("CACHE_SECRET")?,
        raw("CACHE_SECRET_PREVIOUS")?,
        raw("CACHE_ENCRYPT")?,
    ))
}
