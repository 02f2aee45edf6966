//! Cache keys: escaping of template values, the default key of a call, and the hashing of long keys.
//!
//! A key is plain text. Literal parts come from the program (the `key`/`group` templates); values that
//! come from arguments are escaped so that no value can spell a separator or a pattern character, so a
//! value can never address another key or group. Keys longer than [`MAX_KEY_LEN`] bytes keep a readable
//! head and end in a hash of the whole key.
//!
//! # How a template value is rendered
//!
//! Rendering is injective for a fixed template: two different argument tuples never give the same
//! key. The rule:
//!
//! - A value is its text: a string as it is, any other value as its compact JSON (`42`, `true`,
//!   `[1,2]`). A top-level JSON `null` (`None`, `()`) is the token `%N` instead.
//! - The text is percent-escaped: every UTF-8 byte of an escaped character becomes `%XX` (upper-case
//!   hex). Always escaped: `%`, `:`, `*`, `?`, `[`, `]`, `{`, `}`, `\`, `"`, `'`, `#`, whitespace and
//!   control characters.
//! - What follows the value in the template ([`Follow`]) adds to that:
//!   - the end of the template: nothing more;
//!   - literal text whose first character `c` is not `%`: every `c` in the value is escaped too, so
//!     the value ends at the first bare `c` (`c` may be a letter or a digit: `1` becomes `%31`);
//!   - another placeholder, or literal text starting with `%`: the value is followed by the
//!     terminator token `%~`.
//!
//! Reading a key back is therefore unambiguous: a `%` always starts a token (`%XX`, `%N` or `%~`),
//! a value's own `%` is always followed by two hex digits, so `%N` and `%~` never come from a value's
//! text, and each value ends where its context says. Keys whose values need none of this read as
//! before: `user:{id}` with `42` is `user:42`, `repo:{owner}/{name}` with `a/b` and `c` is
//! `repo:a%2Fb/c`, `{a}{b}` with `x` and `y` is `x%~y`.
//!
//! (As for every type, two values of one type that serialize to the same JSON render the same; a
//! type whose values serialize either as a string or as a number, such as `serde_json::Value`, can
//! render the string `"5"` and the number `5` alike.)

use serde::Serialize;
use std::hash::BuildHasher;

use sha2::{Digest, Sha256};

/// Marks a key built from a value that failed to serialize: such calls run uncached (escaping
/// never lets this byte through from a value).
pub const UNKEYABLE: u8 = 0;

/// Longest key stored as it is; longer ones are shortened by [`normalize_key`].
pub const MAX_KEY_LEN: usize = 200;

/// How many bytes of the original a shortened key keeps before its hash.
const KEPT_HEAD: usize = 64;

/// Longest key kept on the stack while it is built; longer keys move to the heap.
const INLINE_KEY: usize = 128;

/// A key (or group name) under construction: on the stack while it is short, which is most keys,
/// so that building the key of a cache hit allocates nothing.
///
/// ```
/// use cache_runtime::key::KeyBuf;
/// let mut key = KeyBuf::new();
/// key.push_str("user:");
/// cache_runtime::key::push_value(&mut key, &"a:b c");
/// assert_eq!(key.as_str(), "user:a%3Ab%20c");
/// assert_eq!(key.into_string(), "user:a%3Ab%20c");
/// ```
#[derive(Debug, Clone, Default)]
pub struct KeyBuf {
    text: KeyText,
    /// A value failed to serialize: the call runs uncached.
    unkeyable: bool,
}

#[derive(Debug, Clone)]
enum KeyText {
    Inline(arrayvec::ArrayString<INLINE_KEY>),
    Heap(String),
}

impl Default for KeyText {
    fn default() -> Self {
        Self::Inline(arrayvec::ArrayString::new())
    }
}

impl KeyBuf {
    /// An empty key.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends literal text (not escaped).
    pub fn push_str(&mut self, text: &str) {
        match &mut self.text {
            KeyText::Inline(inline) => {
                if inline.try_push_str(text).is_err() {
                    let mut heap = String::with_capacity(inline.len() + text.len() + 32);
                    heap.push_str(inline);
                    heap.push_str(text);
                    self.text = KeyText::Heap(heap);
                }
            }
            KeyText::Heap(heap) => heap.push_str(text),
        }
    }

    /// The key as built so far.
    pub fn as_str(&self) -> &str {
        match &self.text {
            KeyText::Inline(inline) => inline,
            KeyText::Heap(heap) => heap,
        }
    }

    /// Whether every value in the key could be serialized (if not, the call runs uncached).
    pub fn is_keyable(&self) -> bool {
        !self.unkeyable
    }

    /// The key as a `String`; a key with a value that failed to serialize becomes the
    /// [`UNKEYABLE`] marker.
    pub fn into_string(self) -> String {
        if self.unkeyable {
            return unkeyable();
        }
        match self.text {
            KeyText::Inline(inline) => inline.as_str().to_owned(),
            KeyText::Heap(heap) => heap,
        }
    }

    pub(crate) fn mark_unkeyable(&mut self) {
        self.unkeyable = true;
    }
}

impl std::fmt::Write for KeyBuf {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        self.push_str(text);
        Ok(())
    }
}

/// What follows a value in its template: decides what the value escapes besides the base set (see
/// the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// The value ends the template.
    End,
    /// Literal text starting with this character (not `%`): the value escapes it too.
    Char(char),
    /// Another placeholder, or literal text starting with `%`: the value is followed by `%~`.
    Terminator,
}

impl Follow {
    /// The context of a value followed by `text` (empty: the end of the template; `None`: another
    /// placeholder).
    pub fn before(text: Option<&str>) -> Self {
        match text.map(|t| t.chars().next()) {
            None => Self::Terminator,
            Some(None) => Self::End,
            Some(Some('%')) => Self::Terminator,
            Some(Some(c)) => Self::Char(c),
        }
    }
}

/// The terminator token that ends a value followed by a placeholder or by a literal `%`.
pub const TERMINATOR: &str = "%~";

/// The token a top-level JSON `null` (`None`, `()`) renders as.
pub const NULL: &str = "%N";

/// Appends `value`, escaped, to a key under construction, as the last part of its template.
///
/// Strings are written as they are (escaped); numbers, booleans and other values as their compact JSON;
/// `None` as `%N`. A value that cannot be serialized marks the key unkeyable, and the call then runs
/// uncached.
///
/// ```
/// let mut key = cache_runtime::key::KeyBuf::new();
/// cache_runtime::key::push_value(&mut key, &"a:b c");
/// cache_runtime::key::push_value(&mut key, &[1, 2]);
/// assert_eq!(key.as_str(), "a%3Ab%20c%5B1,2%5D");
/// ```
pub fn push_value<T: Serialize + ?Sized>(key: &mut KeyBuf, value: &T) {
    push_value_before(key, value, Follow::End);
}

/// Appends `value`, escaped for what follows it in the template (see the [module docs](self)).
///
/// ```
/// use cache_runtime::key::{push_value_before, Follow, KeyBuf};
/// let mut key = KeyBuf::new();
/// push_value_before(&mut key, &"a/b", Follow::Char('/'));
/// key.push_str("/");
/// push_value_before(&mut key, &Option::<String>::None, Follow::Terminator);
/// push_value_before(&mut key, &-5, Follow::End);
/// assert_eq!(key.as_str(), "a%2Fb/%N%~-5");
/// ```
pub fn push_value_before<T: Serialize + ?Sized>(key: &mut KeyBuf, value: &T, follow: Follow) {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => escape_before(key, &text, follow),
        Ok(serde_json::Value::Null) => {
            key.push_str(NULL);
            end_value(key, follow);
        }
        Ok(other) => escape_before(key, &other.to_string(), follow),
        Err(_) => key.mark_unkeyable(),
    }
}

/// Escapes `text` for its context and ends the value.
fn escape_before(key: &mut KeyBuf, text: &str, follow: Follow) {
    match follow {
        Follow::Char(stop) => escape_with(key, text, |ch| ch == stop || needs_escape(ch)),
        Follow::End | Follow::Terminator => escape_with(key, text, needs_escape),
    }
    end_value(key, follow);
}

fn end_value(key: &mut KeyBuf, follow: Follow) {
    if follow == Follow::Terminator {
        key.push_str(TERMINATOR);
    }
}

/// Template values that render without serde: integers, booleans, characters and strings, the
/// common key parts, written exactly as [`push_value_before`] would write them but without allocating.
pub trait PlainKeyValue {
    /// Appends the value, escaped for what follows it.
    fn push_plain_before(&self, key: &mut KeyBuf, follow: Follow);

    /// Appends the value, escaped, as the last part of its template.
    fn push_plain(&self, key: &mut KeyBuf) {
        self.push_plain_before(key, Follow::End);
    }
}

macro_rules! plain_integers {
    ($($ty:ty),*) => {$(
        impl PlainKeyValue for $ty {
            fn push_plain_before(&self, key: &mut KeyBuf, follow: Follow) {
                escape_before(key, itoa::Buffer::new().format(*self), follow);
            }
        }
    )*};
}

plain_integers!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);

impl PlainKeyValue for bool {
    fn push_plain_before(&self, key: &mut KeyBuf, follow: Follow) {
        escape_before(key, if *self { "true" } else { "false" }, follow);
    }
}

impl PlainKeyValue for char {
    fn push_plain_before(&self, key: &mut KeyBuf, follow: Follow) {
        escape_before(key, self.encode_utf8(&mut [0u8; 4]), follow);
    }
}

impl PlainKeyValue for str {
    fn push_plain_before(&self, key: &mut KeyBuf, follow: Follow) {
        escape_before(key, self, follow);
    }
}

impl PlainKeyValue for String {
    fn push_plain_before(&self, key: &mut KeyBuf, follow: Follow) {
        escape_before(key, self, follow);
    }
}

impl<T: PlainKeyValue + ?Sized> PlainKeyValue for &T {
    fn push_plain_before(&self, key: &mut KeyBuf, follow: Follow) {
        (**self).push_plain_before(key, follow);
    }
}

/// Picks [`PlainKeyValue`] when the value has it, [`push_value_before`] otherwise (autoref
/// specialization in the generated code: `(&KeyValueProbe(&value)).push_to(&mut key, follow)`).
#[doc(hidden)]
pub struct KeyValueProbe<'a, T: ?Sized>(pub &'a T);

#[doc(hidden)]
pub trait ViaPlain {
    fn push_to(&self, key: &mut KeyBuf, follow: Follow);
}

impl<T: PlainKeyValue + ?Sized> ViaPlain for KeyValueProbe<'_, T> {
    fn push_to(&self, key: &mut KeyBuf, follow: Follow) {
        self.0.push_plain_before(key, follow);
    }
}

#[doc(hidden)]
pub trait ViaSerde {
    fn push_to(&self, key: &mut KeyBuf, follow: Follow);
}

impl<T: Serialize + ?Sized> ViaSerde for &KeyValueProbe<'_, T> {
    fn push_to(&self, key: &mut KeyBuf, follow: Follow) {
        push_value_before(key, self.0, follow);
    }
}

/// Percent-escapes the characters that could change what a key addresses.
///
/// ```
/// let mut out = String::new();
/// cache_runtime::key::escape_into(&mut out, "50%*{x}\n");
/// assert_eq!(out, "50%25%2A%7Bx%7D%0A");
/// ```
pub fn escape_into(out: &mut impl std::fmt::Write, text: &str) {
    escape_with(out, text, needs_escape);
}

fn escape_with(out: &mut impl std::fmt::Write, text: &str, escaped: impl Fn(char) -> bool) {
    let mut rest = text;
    while let Some(at) = rest.find(&escaped) {
        let _ = out.write_str(&rest[..at]);
        let ch = rest[at..].chars().next().unwrap_or_default();
        let mut buf = [0u8; 4];
        for byte in ch.encode_utf8(&mut buf).bytes() {
            let escaped = [
                b'%',
                HEX_UPPER[usize::from(byte >> 4)],
                HEX_UPPER[usize::from(byte & 0xf)],
            ];
            let _ = out.write_str(std::str::from_utf8(&escaped).unwrap_or_default());
        }
        rest = &rest[at + ch.len_utf8()..];
    }
    let _ = out.write_str(rest);
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn needs_escape(ch: char) -> bool {
    matches!(
        ch,
        '%' | ':' | '*' | '?' | '[' | ']' | '{' | '}' | '\\' | '"' | '\'' | '#'
    ) || ch.is_whitespace()
        || ch.is_control()
}

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
    if serde_json::to_writer(&mut json, args).is_err() {
        return unkeyable();
    }
    let mut key = KeyBuf::new();
    push_prefix(&mut key, module, function);
    json.push_digest(&mut key);
    key.into_string()
}

fn unkeyable() -> String {
    char::from(UNKEYABLE).to_string()
}

/// `"{module}::{function}:"`, the head of a default key.
fn push_prefix(key: &mut KeyBuf, module: &str, function: &str) {
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

/// Whether the parent of a default key's head (`"{parent}::{function}:"`) is a generic impl whose
/// parameters the type name leaves out (`app::Store<_>`): its instantiations cannot be told apart.
///
/// ```
/// use cache_runtime::__private::generic_parent;
/// assert!(generic_parent("app::Store<_>::size:", "size"));
/// assert!(!generic_parent("app::Store::size:", "size"));
/// ```
#[doc(hidden)]
pub fn generic_parent(prefix: &str, function: &str) -> bool {
    let parent_len = prefix.len().saturating_sub(function.len() + 3);
    prefix
        .get(..parent_len)
        .is_some_and(|parent| parent.contains("<_"))
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
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one argument.
    #[allow(private_bounds)]
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
    pub fn finish_prefixed(self, prefix: &str) -> KeyBuf {
        self.finish_with(|key| key.push_str(prefix))
    }

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
        serde_json::to_writer(out, self)
    }
}

/// Shortens keys longer than [`MAX_KEY_LEN`] to a readable head plus a hash of the whole key;
/// shorter keys are returned unchanged. Every backend sees keys in this form.
///
/// ```
/// use cache_runtime::key::{normalize_key, MAX_KEY_LEN};
/// assert_eq!(normalize_key("user:1".to_string()), "user:1");
/// let long = normalize_key("x".repeat(10_000));
/// assert!(long.len() <= MAX_KEY_LEN);
/// assert_ne!(long, normalize_key("x".repeat(10_001)));
/// ```
pub fn normalize_key(key: String) -> String {
    if key.len() <= MAX_KEY_LEN {
        return key;
    }
    let mut head = KEPT_HEAD;
    while !key.is_char_boundary(head) {
        head -= 1;
    }
    let mut short = String::with_capacity(head + 2 + 64);
    short.push_str(&key[..head]);
    short.push_str("#~");
    push_hex(&mut short, &Sha256::digest(key.as_bytes()));
    short
}

/// The SHA-256 of `bytes` in lower-case hex (used for file names).
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(64);
    push_hex(&mut out, &Sha256::digest(bytes));
    out
}

/// The first 8 bytes of the SHA-256 of `text`, as a number.
pub(crate) fn fingerprint(text: &str) -> u64 {
    let digest = Sha256::digest(text.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// Lower-case hex through a lookup table into a stack buffer, then one copy (on the hot path).
fn push_hex(out: &mut impl std::fmt::Write, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buffer = [0u8; 64];
    let mut written = 0;
    for chunk in bytes.chunks(32) {
        for (i, byte) in chunk.iter().enumerate() {
            buffer[2 * i] = DIGITS[usize::from(byte >> 4)];
            buffer[2 * i + 1] = DIGITS[usize::from(byte & 0xf)];
            written = 2 * (i + 1);
        }
        // Only ASCII hex digits were written.
        let _ = out.write_str(std::str::from_utf8(&buffer[..written]).unwrap_or_default());
    }
}

/// Longest JSON argument list kept whole (whose digest can be remembered); longer lists are
/// hashed as they are written.
const SHORT_ARGS: usize = 64;

/// How many digests of short argument lists each thread remembers.
const REMEMBERED_DIGESTS: usize = 512;

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
            Self::Short(json) => key.push_str(&short_digest_hex(&json)),
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

/// The hex digest of a short argument list: SHA-256 is a third of a memory hit, and hot keys
/// recur, so each thread remembers the digests of the argument lists it saw last (a small two-way
/// table compared on the whole JSON: a slot holding other arguments is never taken for these).
fn short_digest_hex(json: &[u8]) -> arrayvec::ArrayString<32> {
    type Slot = Option<(
        arrayvec::ArrayVec<u8, SHORT_ARGS>,
        arrayvec::ArrayString<32>,
    )>;
    thread_local! {
        static DIGESTS: std::cell::RefCell<Vec<Slot>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let compute = || {
        let mut hex = arrayvec::ArrayString::new();
        push_hex(&mut hex, &Sha256::digest(json)[..16]);
        hex
    };
    let hash = foldhash::fast::FixedState::with_seed(0).hash_one(json) as usize;
    let first = (hash % (REMEMBERED_DIGESTS / 2)) * 2;
    DIGESTS
        .try_with(|table| {
            let mut table = table.borrow_mut();
            if table.is_empty() {
                table.resize(REMEMBERED_DIGESTS, None);
            }
            let ways = &mut table[first..first + 2];
            for (seen, hex) in ways.iter().flatten() {
                if seen.as_slice() == json {
                    return *hex;
                }
            }
            let hex = compute();
            // The newest goes first; the one it displaces takes the second way.
            ways.swap(0, 1);
            ways[0] = arrayvec::ArrayVec::try_from(json)
                .ok()
                .map(|seen| (seen, hex));
            hex
        })
        .unwrap_or_else(|_| compute())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered<T: Serialize + ?Sized>(value: &T) -> String {
        let mut key = KeyBuf::new();
        push_value(&mut key, value);
        key.into_string()
    }

    fn plain<T: PlainKeyValue + ?Sized>(value: &T) -> String {
        let mut key = KeyBuf::new();
        value.push_plain(&mut key);
        key.into_string()
    }

    #[test]
    fn values_cannot_forge_separators_or_patterns() {
        assert_ne!(
            format!("user:{}", rendered("1:admin")),
            format!("user:1:{}", rendered("admin"))
        );
        for hostile in ["*", "{id}", "a b", "line\nbreak", "x?y", "[a]", "50%"] {
            let k = rendered(hostile);
            assert!(
                !k.contains(|c: char| ":*?[]{} \n".contains(c)),
                "{hostile:?} escaped to {k:?}"
            );
        }
    }

    #[test]
    fn escaping_is_injective_on_percent() {
        assert_ne!(rendered("%3A"), rendered(":"));
    }

    #[test]
    fn numbers_and_structs_render_compactly() {
        let mut k = KeyBuf::new();
        push_value(&mut k, &42u64);
        push_value(&mut k, &true);
        push_value(&mut k, &Option::<u8>::None);
        assert_eq!(k.as_str(), "42true%N");
    }

    #[test]
    fn plain_values_render_as_serde_does() {
        for n in [0i64, -1, 42, i64::MIN, i64::MAX] {
            assert_eq!(plain(&n), rendered(&n));
        }
        assert_eq!(plain(&u64::MAX), rendered(&u64::MAX));
        assert_eq!(plain(&true), rendered(&true));
        for text in ["", "plain", "a:b c", "é{x}\n", "50%", &"x".repeat(500)] {
            assert_eq!(plain(text), rendered(text));
            assert_eq!(plain(&text.to_string()), rendered(text));
            assert_eq!(plain(&&text), rendered(text));
        }
        for ch in ['a', ':', 'é', '\n'] {
            assert_eq!(plain(&ch), rendered(&ch));
        }
    }

    #[test]
    fn context_escapes_the_following_character_or_terminates() {
        let before = |value: &dyn Fn(&mut KeyBuf, Follow), follow| {
            let mut key = KeyBuf::new();
            value(&mut key, follow);
            key.into_string()
        };
        let text = |t: &'static str| move |k: &mut KeyBuf, f| push_value_before(k, t, f);
        assert_eq!(before(&text("a/b"), Follow::Char('/')), "a%2Fb");
        assert_eq!(before(&text("a/b"), Follow::End), "a/b");
        assert_eq!(before(&text("1x1"), Follow::Char('1')), "%31x%31");
        assert_eq!(before(&text("ab"), Follow::Terminator), "ab%~");
        assert_eq!(before(&text(""), Follow::Terminator), "%~");
        let none = |k: &mut KeyBuf, f| push_value_before(k, &Option::<String>::None, f);
        assert_eq!(before(&none, Follow::End), "%N");
        assert_eq!(before(&none, Follow::Terminator), "%N%~");
        assert_eq!(before(&text("null"), Follow::End), "null");
        for follow in [
            Follow::End,
            Follow::Terminator,
            Follow::Char('-'),
            Follow::Char('1'),
            Follow::Char('e'),
            Follow::Char('é'),
        ] {
            for n in [0i64, -5, 15, i64::MIN] {
                let plain = before(&|k: &mut KeyBuf, f| n.push_plain_before(k, f), follow);
                assert_eq!(
                    plain,
                    before(&|k: &mut KeyBuf, f| push_value_before(k, &n, f), follow)
                );
            }
            for t in ["", "a-1", "é:e", "true"] {
                let plain = before(&|k: &mut KeyBuf, f| t.push_plain_before(k, f), follow);
                assert_eq!(plain, before(&text(t), follow));
            }
            let plain = before(&|k: &mut KeyBuf, f| true.push_plain_before(k, f), follow);
            assert_eq!(
                plain,
                before(&|k: &mut KeyBuf, f| push_value_before(k, &true, f), follow)
            );
        }
        assert_eq!(
            before(
                &|k: &mut KeyBuf, f| (-5i64).push_plain_before(k, f),
                Follow::Char('-')
            ),
            "%2D5"
        );
        assert_eq!(Follow::before(Some("")), Follow::End);
        assert_eq!(Follow::before(None), Follow::Terminator);
        assert_eq!(Follow::before(Some("%x")), Follow::Terminator);
        assert_eq!(Follow::before(Some("/x")), Follow::Char('/'));
    }

    #[test]
    fn long_keys_spill_to_the_heap_unchanged() {
        let mut key = KeyBuf::new();
        let part = "0123456789".repeat(7);
        for _ in 0..5 {
            key.push_str(&part);
        }
        assert_eq!(key.as_str(), part.repeat(5));
        assert_eq!(key.into_string(), part.repeat(5));
    }

    #[test]
    fn unserializable_values_make_the_key_unkeyable() {
        struct Fails;
        impl Serialize for Fails {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("no"))
            }
        }
        let mut key = KeyBuf::new();
        push_value(&mut key, &Fails);
        assert!(!key.is_keyable());
        assert_eq!(key.into_string().as_bytes(), [UNKEYABLE]);
        let key = DefaultKey::new().arg(&Fails).finish("m", "f");
        assert!(!key.is_keyable());
    }

    #[test]
    fn short_and_long_argument_lists_hash_as_one_stream() {
        for arg in [
            "x".to_string(),
            "y".repeat(63),
            "z".repeat(64),
            "w".repeat(5_000),
        ] {
            let expected = default_key("m", "f", &(7u64, &arg));
            // Twice: the second time the digest of a short list comes from the thread's table.
            for _ in 0..2 {
                let key = DefaultKey::new().arg(&7u64).arg(&arg).finish("m", "f");
                assert_eq!(key.as_str(), expected);
            }
        }
    }

    #[test]
    fn remembered_digests_never_answer_for_other_arguments() {
        let keys: Vec<String> = (0..(4 * REMEMBERED_DIGESTS as u64))
            .map(|n| DefaultKey::new().arg(&n).finish("m", "f").into_string())
            .collect();
        for (n, key) in keys.iter().enumerate() {
            let reference = &sha256_hex(format!("[{n}]").as_bytes())[..32];
            assert_eq!(key, &format!("m::f:{reference}"));
            assert_eq!(
                DefaultKey::new().arg(&(n as u64)).finish("m", "f").as_str(),
                key
            );
        }
    }

    #[test]
    fn default_key_is_stable_and_documented() {
        // Pinned value: a change here breaks sharing between deployed versions.
        assert_eq!(
            default_key("m", "f", &(1u64, "a")),
            format!("m::f:{}", &sha256_hex(br#"[1,"a"]"#)[..32])
        );
        assert_eq!(
            default_key("m", "f", &(1u64, "a")),
            "m::f:2010945388e2de98f5651051478912aa"
        );
    }

    #[test]
    fn long_keys_are_hashed_and_distinct() {
        let a = normalize_key("é".repeat(500));
        let b = normalize_key(format!("{}x", "é".repeat(500)));
        assert!(a.len() <= MAX_KEY_LEN && b.len() <= MAX_KEY_LEN);
        assert_ne!(a, b);
        assert!(a.starts_with("éé"));
    }
}
