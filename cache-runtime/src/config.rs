//! The environment, read in one place: every variable the library looks at, parsed the same way.
//! Builders (`Protection`, the backends' constructors) override these in code.

use std::{path::PathBuf, sync::OnceLock, time::Duration};

use crate::codec::Codec;

/// Default timeout of one backend operation; `CACHE_BACKEND_TIMEOUT_MS` overrides it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);

/// Default limit on the serialized size of one stored value; `CACHE_MAX_VALUE_BYTES` overrides it.
pub const DEFAULT_MAX_VALUE_BYTES: u64 = 8 * 1024 * 1024;

/// Default bound on how long a caller waits for another caller's computation of the same key
/// before it computes itself; `CACHE_FOLLOW_TIMEOUT_MS` overrides it.
pub const DEFAULT_FOLLOW_TIMEOUT: Duration = Duration::from_secs(30);

/// Default size above which a serialized payload is LZ4-compressed; `CACHE_COMPRESS_ABOVE`
/// overrides it (see BENCHMARKS.md for the measurements behind it).
pub const DEFAULT_COMPRESS_ABOVE: u64 = 4 * 1024;

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

/// `CACHE_CODEC`: the codec of serialized backends when neither the function nor the backend's
/// registration chose one (read once). Unset: `None`; an unknown name is logged and ignored.
pub(crate) fn codec() -> Option<Codec> {
    static CODEC: OnceLock<Option<Codec>> = OnceLock::new();
    *CODEC.get_or_init(|| {
        let name = text("CACHE_CODEC")?;
        let codec = Codec::from_name(&name);
        if codec.is_none() {
            tracing::error!(value = %name, "CACHE_CODEC is not \"json\" or \"msgpack\"; ignored");
        }
        codec
    })
}

/// `CACHE_COMPRESS_ABOVE`: payloads larger than this many bytes are compressed, unless the
/// backend's registration says otherwise (read once). `off` (or `never`) disables compression.
pub(crate) fn compress_above() -> u64 {
    static ABOVE: OnceLock<u64> = OnceLock::new();
    *ABOVE.get_or_init(|| {
        let Some(value) = text("CACHE_COMPRESS_ABOVE") else {
            return DEFAULT_COMPRESS_ABOVE;
        };
        parse_compress_above(&value).unwrap_or_else(|| {
            tracing::error!(%value, "CACHE_COMPRESS_ABOVE is not a byte count or \"off\"; using the default");
            DEFAULT_COMPRESS_ABOVE
        })
    })
}

fn parse_compress_above(value: &str) -> Option<u64> {
    let value = value.trim();
    if value.eq_ignore_ascii_case("off") || value.eq_ignore_ascii_case("never") {
        return Some(u64::MAX);
    }
    value.parse().ok()
}

/// `CACHE_KEY_VERSION`: the global schema version recorded in every stored entry (read once; 0
/// when unset). An entry written under another one is a miss.
pub(crate) fn key_version() -> u32 {
    static VERSION: OnceLock<u32> = OnceLock::new();
    *VERSION.get_or_init(|| {
        let Some(value) = text("CACHE_KEY_VERSION") else {
            return 0;
        };
        value.trim().parse().unwrap_or_else(|_| {
            tracing::error!(%value, "CACHE_KEY_VERSION is not a whole number (0 to 4294967295); using 0");
            0
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_settings_parse() {
        assert_eq!(parse_compress_above("off"), Some(u64::MAX));
        assert_eq!(parse_compress_above(" 2048 "), Some(2048));
        assert_eq!(parse_compress_above("2k"), None);
    }
}
