//! What an invalidation is about (a key or a group), and how key tombstones are named.

/// What an invalidation is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Target {
    Key(String),
    Group(String),
}

/// How a key's *tombstone* group is named: every memoized call on a shared backend belongs to the
/// tombstone group of its key, and a key invalidation moves it, so a value computed before the
/// invalidation (in any process) and stored after it is stale.
const TOMBSTONE: &str = "\u{0}t:";

/// The tombstone group of `key`.
pub(crate) fn tombstone_group(key: &str) -> String {
    let mut group = String::with_capacity(TOMBSTONE.len() + key.len());
    group.push_str(TOMBSTONE);
    group.push_str(key);
    group
}

/// The key a tombstone group stands for, if `group` is one.
pub(crate) fn tombstone_key_of(group: &str) -> Option<&str> {
    group.strip_prefix(TOMBSTONE)
}
