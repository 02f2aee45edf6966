//! The default key of a call: the fn's path and a digest of its serialized arguments.

use std::hash::BuildHasher;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{buf::unkeyable, hash::push_hex, KeyBuf};

/// The default key of a call: `"{module}::{function}:{hash}"`, where the hash is the first 128 bits
/// of the SHA-256 of the arguments serialized as one compact JSON array, in lower-case hex.
///
/// The same arguments give the same key in every process and every build of the same code.
///
/// ```
/// let a = cache_runtime::key::default_key("app::users", "load_user", &(42u64,));
/// let b = cache_runtime::key::default_key("app::users", "load_user", &(42u64,));
/// assert_eq!(a, b);
/// assert!(a.starts_with("app::users::load_user:"));
/// assert_ne!(a, cache_runtime::key::default_key("app::users", "load_user", &(43u64,)));
/// ```
pub fn default_key<A: Serialize + ?Sized>(module: &str, function: &str, args: &A) -> String {
    let mut json = ArgsJson::default();
    if args.write_json(&mut json).is_err() {
        return unkeyable();
    }
    let mut key = KeyBuf::new();
    push_prefix(&mut key, module, function);
    json.push_digest(&mut key);
    key.into_string()
}

/// `"{module}::{function}:"`, the head of a default key.
pub(super) fn push_prefix(key: &mut KeyBuf, module: &str, function: &str) {
    key.push_str(module);
    key.push_str("::");
    key.push_str(function);
    key.push_str(":");
}

/// The head of a default key, `"{parent}::{function}:"`, from the type name of a marker fn nested in
/// the generated fn `generated`: `type_name_of_val(&__cache_marker)` is
/// `"{parent}::{generated}::__cache_marker"`, where `parent` is the module path for a free fn and
/// the type (`app::Users`, `<app::Users as app::Tr>`, `app::Repo<_>`) for an associated fn. Inside an
/// `async fn` the body adds `::{{closure}}` segments before the marker; they are dropped.
///
/// ```
/// use cache_runtime::key::marker_prefix;
/// assert_eq!(marker_prefix("app::users::free::__cache_marker", "free", "free"), "app::users::free:");
/// assert_eq!(
///     marker_prefix("app::Users::all_key::__cache_marker", "all_key", "all"),
///     "app::Users::all:"
/// );
/// assert_eq!(
///     marker_prefix("app::Users::all::{{closure}}::__cache_marker", "all", "all"),
///     "app::Users::all:"
/// );
/// ```
#[doc(hidden)]
pub fn marker_prefix(marker: &str, generated: &str, function: &str) -> String {
    let mut parent = marker.strip_suffix("::__cache_marker").unwrap_or(marker);
    while let Some(outer) = parent.strip_suffix("::{{closure}}") {
        parent = outer;
    }
    let parent = parent
        .strip_suffix(generated)
        .and_then(|rest| rest.strip_suffix("::"))
        .unwrap_or(parent);
    fn_prefix(parent, function)
}

/// Whether the parent of a default key's head (`"{parent}::{function}:"`) is an impl with
/// parameters, which the type name does not tell apart: a type parameter prints as `_`
/// (`Store<_>`, `Pair<u8, _>`, `Wrap<(_, u8)>`, `Foo<fn() -> _>`) and a const parameter as its
/// bare name (`Buf<N>`). Every word from the first `<` on is read; only what is certainly
/// concrete passes: paths (`app::User`), primitives (`u8`), literals (`4`, `-1`, `'x'`, `true`),
/// lifetimes, operators (`->`, `+`) and the keywords of type syntax where they are used as such
/// (`fn(`, `dyn `, `impl `, `as `, `mut `, `const `). Anything else counts as a parameter, so an
/// unusual name costs caching, never a shared entry. (A const parameter named like a primitive,
/// `impl<const u8: usize>`, prints like the type and is not seen.)
///
/// ```
/// use cache_runtime::__private::generic_parent;
/// assert!(generic_parent("app::Store<_>::size:", "size"));
/// assert!(generic_parent("app::Buf<N>::cap:", "cap"));
/// assert!(!generic_parent("app::Store::size:", "size"));
/// assert!(!generic_parent("app::Foo<u8>::make:", "make"));
/// assert!(!generic_parent("<app::Bar as app::Tr<app::User>>::m:", "m"));
/// ```
#[doc(hidden)]
pub fn generic_parent(prefix: &str, function: &str) -> bool {
    let parent_len = prefix.len().saturating_sub(function.len() + 3);
    let Some(parent) = prefix.get(..parent_len) else {
        return true;
    };
    // The path before the first `<` is the module's and the type's.
    let Some(open) = parent.find('<') else {
        return false;
    };
    let start = open + 1;
    let mut word_at = start;
    let ends = parent[start..]
        .char_indices()
        .map(move |(at, c)| (start + at, c))
        .chain([(parent.len(), ' ')]);
    for (at, c) in ends {
        if !"<>,()[];&* ".contains(c) {
            continue;
        }
        if may_be_parameter(&parent[word_at..at], c) {
            return true;
        }
        word_at = at + c.len_utf8();
    }
    false
}

/// Whether a word of a printed type name (followed by `next`) may stand for a parameter.
fn may_be_parameter(word: &str, next: char) -> bool {
    const PRIMITIVES: [&str; 19] = [
        "bool", "char", "str", "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32",
        "i64", "i128", "isize", "f32", "f64", "true", "false",
    ];
    let Some(first) = word.chars().next() else {
        return false;
    };
    let literal = first.is_ascii_digit()
        || matches!(first, '\'' | '"')
        || (first == '-' && word[1..].starts_with(|c: char| c.is_ascii_digit()));
    let operator = word.chars().all(|c| !c.is_alphanumeric() && c != '_');
    if word.contains("::") || literal || operator || PRIMITIVES.contains(&word) {
        return false;
    }
    match word {
        "fn" => next != '(',
        "dyn" | "impl" | "as" | "mut" | "const" | "unsafe" | "extern" => next != ' ',
        _ => true,
    }
}

/// `"{parent}::{function}:"`, the head of a default key.
pub(crate) fn fn_prefix(parent: &str, function: &str) -> String {
    let mut prefix = String::with_capacity(parent.len() + function.len() + 3);
    prefix.push_str(parent);
    prefix.push_str("::");
    prefix.push_str(function);
    prefix.push(':');
    prefix
}

/// Builds a [`default_key`] one argument at a time, with the same result as passing the arguments
/// as a tuple. The generated code uses it so that an argument that cannot be serialized is reported
/// on that argument.
///
/// ```
/// use cache_runtime::key::{default_key, DefaultKey};
/// let key = DefaultKey::new().arg(&1u64).arg("a").finish("m", "f");
/// assert_eq!(key.as_str(), default_key("m", "f", &(1u64, "a")));
/// ```
#[derive(Debug, Clone, Default)]
pub struct DefaultKey {
    json: ArgsJson,
    args: usize,
    failed: bool,
}

impl DefaultKey {
    /// An empty argument list.
    #[inline]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one argument.
    #[allow(private_bounds)]
    #[inline]
    pub fn arg<T: KeyArg + ?Sized>(mut self, value: &T) -> Self {
        self.json.append(if self.args == 0 { b"[" } else { b"," });
        self.args += 1;
        if value.write_json(&mut self.json).is_err() {
            self.failed = true;
        }
        self
    }

    /// Makes the key unkeyable when `refuse` holds (the call then runs uncached).
    #[doc(hidden)]
    pub fn refuse_if(mut self, refuse: bool) -> Self {
        self.failed |= refuse;
        self
    }

    /// The key of a call of `module::function` with the arguments added.
    /// The key of a call with an argument that failed to serialize is not [keyable](KeyBuf::is_keyable).
    pub fn finish(self, module: &str, function: &str) -> KeyBuf {
        self.finish_with(|key| push_prefix(key, module, function))
    }

    /// As [`finish`](Self::finish), with `"{module}::{function}:"` given whole (the generated code
    /// passes a `concat!` of constants).
    ///
    /// ```
    /// use cache_runtime::key::DefaultKey;
    /// let key = DefaultKey::new().arg(&1u64).finish_prefixed("m::f:");
    /// assert_eq!(key.as_str(), DefaultKey::new().arg(&1u64).finish("m", "f").as_str());
    /// ```
    #[inline]
    pub fn finish_prefixed(self, prefix: &str) -> KeyBuf {
        self.finish_with(|key| key.push_str(prefix))
    }

    #[inline]
    fn finish_with(mut self, prefix: impl FnOnce(&mut KeyBuf)) -> KeyBuf {
        let mut key = KeyBuf::new();
        if self.failed {
            key.mark_unkeyable();
            return key;
        }
        let closing: &[u8] = if self.args == 0 { b"[]" } else { b"]" };
        self.json.append(closing);
        prefix(&mut key);
        self.json.push_digest(&mut key);
        key
    }
}

/// Separates the prefix of a call text from its JSON (compact JSON never holds a NUL byte).
const CALL_SEPARATOR: &str = "\0";

/// The separator and the opening of the argument list, pushed at once.
pub(super) const CALL_OPENING: &str = "\0[";

/// Appends the key a call text (`"{prefix}\0{json}"`) stands for: the prefix and the digest of
/// the JSON.
pub(super) fn push_call_key(call: &str, key: &mut KeyBuf) {
    if call.starts_with(super::compact::COMPACT_MARK) {
        // A compact call text (see `compact.rs`); this process wrote it, so it decodes.
        let Some((prefix, json)) = super::compact::decode(call) else {
            key.mark_unkeyable();
            return;
        };
        key.push_str(prefix);
        return match json.len() <= SHORT_ARGS {
            true => push_short_digest(json.as_bytes(), key),
            false => push_hex(key, &Sha256::digest(json.as_bytes())[..16]),
        };
    }
    // The last NUL: compact JSON never holds one, a prefix might (a `name` spelled with one).
    let (prefix, json) = call.rsplit_once(CALL_SEPARATOR).unwrap_or((call, "[]"));
    key.push_str(prefix);
    push_short_digest(json.as_bytes(), key);
}

/// Implemented by every type that can be part of a cache key: every `serde::Serialize` type.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be part of a cache key: it does not implement `serde::Serialize`",
    label = "this argument is part of the default key",
    note = "derive or implement `Serialize` for it, leave it out of the default key with `skip = [name]`, or give the attribute a `key = \"...\"` template that leaves it out"
)]
pub trait KeyArg {
    /// Writes the value as compact JSON.
    fn write_json(&self, out: &mut dyn std::io::Write) -> serde_json::Result<()>;
}

impl<T: Serialize + ?Sized> KeyArg for T {
    fn write_json(&self, out: &mut dyn std::io::Write) -> serde_json::Result<()> {
        let mut watched = super::finite::NullWatch {
            out,
            saw_null: false,
        };
        serde_json::to_writer(&mut watched, self)?;
        // `NaN`, `inf` and `-inf` are all written `null` (as is `None`): such a value cannot be
        // told apart from the others, so it makes the key unkeyable.
        if watched.saw_null && super::finite::has_non_finite(self) {
            return Err(serde::ser::Error::custom("a non-finite float has no JSON"));
        }
        Ok(())
    }
}

/// Longest JSON argument list kept whole (whose digest can be remembered); longer lists are
/// hashed as they are written.
pub(super) const SHORT_ARGS: usize = 64;

/// How many digests of short argument lists each thread remembers.
pub(super) const REMEMBERED_DIGESTS: usize = 512;

/// The JSON of a call's arguments: kept while short, else fed to SHA-256 as it is written.
#[derive(Debug, Clone)]
enum ArgsJson {
    Short(arrayvec::ArrayVec<u8, SHORT_ARGS>),
    Long(Sha256),
}

impl Default for ArgsJson {
    fn default() -> Self {
        Self::Short(arrayvec::ArrayVec::new())
    }
}

impl ArgsJson {
    #[inline]
    fn append(&mut self, bytes: &[u8]) {
        match self {
            Self::Short(json) => {
                if json.try_extend_from_slice(bytes).is_err() {
                    let mut hasher = Sha256::new();
                    hasher.update(json.as_slice());
                    hasher.update(bytes);
                    *self = Self::Long(hasher);
                }
            }
            Self::Long(hasher) => hasher.update(bytes),
        }
    }

    /// Appends the first 128 bits of the SHA-256 of the JSON, in lower-case hex.
    fn push_digest(self, key: &mut KeyBuf) {
        match self {
            Self::Short(json) => push_short_digest(&json, key),
            Self::Long(hasher) => push_hex(key, &hasher.finalize()[..16]),
        }
    }
}

impl std::io::Write for ArgsJson {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
thread_local! {
    /// How many short digests this thread computed (the table's misses).
    pub(super) static DIGESTS_COMPUTED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Ways of each set of the table of remembered digests.
const WAYS: usize = 4;

/// A remembered digest: the argument list it is the digest of (its hash first, to skip the
/// comparison of lists that differ), and the digest in hex.
#[derive(Clone)]
struct Remembered {
    hash: u64,
    json: arrayvec::ArrayVec<u8, SHORT_ARGS>,
    hex: arrayvec::ArrayString<32>,
}

/// Appends the hex digest of a short argument list: SHA-256 costs as much as the rest of a memory
/// hit, and hot keys recur, so each thread remembers the digests of the argument lists it saw
/// last (a small table of [`WAYS`]-way sets compared on the whole JSON: a slot holding other
/// arguments is never taken for these).
fn push_short_digest(json: &[u8], key: &mut KeyBuf) {
    thread_local! {
        static DIGESTS: std::cell::RefCell<Vec<Option<Remembered>>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    let compute = || {
        #[cfg(test)]
        DIGESTS_COMPUTED.with(|n| n.set(n.get() + 1));
        let mut hex = arrayvec::ArrayString::new();
        push_hex(&mut hex, &Sha256::digest(json)[..16]);
        hex
    };
    let hash = foldhash::fast::FixedState::with_seed(0).hash_one(json);
    // The hash's high bits pick the set (its low bits vary little between short lists).
    let first = ((hash >> 32) as usize % (REMEMBERED_DIGESTS / WAYS)) * WAYS;
    let remembered = DIGESTS.try_with(|table| {
        let mut table = table.borrow_mut();
        if table.is_empty() {
            table.resize(REMEMBERED_DIGESTS, None);
        }
        let set = &mut table[first..first + WAYS];
        for seen in set.iter().flatten() {
            if seen.hash == hash && seen.json.as_slice() == json {
                key.push_str(&seen.hex);
                return;
            }
        }
        let hex = compute();
        key.push_str(&hex);
        // The newest goes first; the oldest leaves.
        set.rotate_right(1);
        set[0] = arrayvec::ArrayVec::try_from(json)
            .ok()
            .map(|json| Remembered { hash, json, hex });
    });
    if remembered.is_err() {
        key.push_str(&compute());
    }
}

#[cfg(test)]
mod tests {
    use super::generic_parent;

    /// What rustc 1.95 prints for the marker of an associated fn in each kind of impl.
    #[test]
    fn generic_parents_are_told_from_concrete_ones() {
        let generic = [
            "main::Foo<fn() -> _>",
            "main::Foo<(fn(u8) -> u8, _)>",
            "main::Q<alloc::boxed::Box<dyn core::ops::function::Fn() -> u8>, _>",
            "<fn() -> _ as main::Tr>",
            "main::P<'>', _>",
            "main::Buf<X\u{301}>",
            "main::B3<N\u{203f}M>",
            "main::B2<fn>",
            "main::B<dyn>",
            "app::Store<_>",
            "app::Buf<N>",
            "app::Pair<u8, _>",
            "app::Wrap<(_, u8)>",
            "app::Wrap<[_; 2]>",
            "app::Foo<&_>",
            "<app::Bar as app::Tr<_>>",
            "app::other::<impl app::Foo<_>>",
        ];
        let concrete = [
            "app",
            "app::Store",
            "app::Foo<u8>",
            "app::Buf<4>",
            "app::Foo<app::User>",
            "<app::Bar as app::Tr<u8>>",
            "<app::Bar as app::Tr>",
            "app::other::<impl app::Foo<u16>>",
            "app::Wrap<(u8, bool)>",
            "app::Wrap<[u8; 2]>",
            "app::Foo<&str>",
            "app::Foo<dyn app::Tr>",
            "app::Foo<dyn app::Tr + core::marker::Send>",
            "app::Foo<fn(u8) -> u8>",
            "app::Foo<extern \"C\" fn(u8)>",
            "app::Foo<*const u8>",
            "app::C<'x'>",
            "app::B<-1>",
            "app::Flag<true>",
            "app::Foo<&'static str>",
        ];
        for parent in generic {
            assert!(generic_parent(&format!("{parent}::f:"), "f"), "{parent}");
        }
        for parent in concrete {
            assert!(!generic_parent(&format!("{parent}::f:"), "f"), "{parent}");
        }
    }
}
