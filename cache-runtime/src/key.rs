//! Cache keys: escaping of template values, the default key of a call, and the hashing of long keys.
//!
//! A key is plain text. Literal parts come from the program (the `key`/`group` templates); values that
//! come from arguments are escaped so that no value can spell a separator or a pattern character, so a
//! value can never address another key or group. Keys longer than [`MAX_KEY_LEN`] bytes keep a readable
//! head and end in a hash of the whole key.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// Marks a key built from a value that failed to serialize: such calls run uncached (escaping
/// never lets this byte through from a value).
pub const UNKEYABLE: u8 = 0;

/// Longest key stored as it is; longer ones are shortened by [`normalize_key`].
pub const MAX_KEY_LEN: usize = 200;

/// How many bytes of the original a shortened key keeps before its hash.
const KEPT_HEAD: usize = 64;

/// Appends `value`, escaped, to a key under construction.
///
/// Strings are written as they are (escaped); numbers, booleans and other values as their compact JSON.
/// A value that cannot be serialized writes [`UNKEYABLE`], and the call then runs uncached.
///
/// ```
/// let mut key = String::from("user:");
/// cache_runtime::key::push_value(&mut key, &"a:b c");
/// assert_eq!(key, "user:a%3Ab%20c");
/// ```
pub fn push_value<T: Serialize + ?Sized>(key: &mut String, value: &T) {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => escape_into(key, &text),
        Ok(other) => escape_into(key, &other.to_string()),
        Err(_) => key.push(char::from(UNKEYABLE)),
    }
}

/// Percent-escapes the characters that could change what a key addresses.
///
/// ```
/// let mut out = String::new();
/// cache_runtime::key::escape_into(&mut out, "50%*{x}\n");
/// assert_eq!(out, "50%25%2A%7Bx%7D%0A");
/// ```
pub fn escape_into(out: &mut String, text: &str) {
    for ch in text.chars() {
        if needs_escape(ch) {
            let mut buf = [0u8; 4];
            for byte in ch.encode_utf8(&mut buf).bytes() {
                out.push('%');
                out.push(hex_digit(byte >> 4).to_ascii_uppercase());
                out.push(hex_digit(byte & 0xf).to_ascii_uppercase());
            }
        } else {
            out.push(ch);
        }
    }
}

fn needs_escape(ch: char) -> bool {
    matches!(
        ch,
        '%' | ':' | '*' | '?' | '[' | ']' | '{' | '}' | '\\' | '"' | '\'' | '#'
    ) || ch.is_whitespace()
        || ch.is_control()
}

fn hex_digit(nibble: u8) -> char {
    char::from_digit(u32::from(nibble), 16).unwrap_or('0')
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
    let mut hasher = Sha256::new();
    if serde_json::to_writer(HashWriter(&mut hasher), args).is_err() {
        return unkeyable();
    }
    finish_key(hasher, module, function)
}

fn unkeyable() -> String {
    char::from(UNKEYABLE).to_string()
}

fn finish_key(hasher: Sha256, module: &str, function: &str) -> String {
    let digest = hasher.finalize();
    let mut key = String::with_capacity(module.len() + function.len() + 35);
    key.push_str(module);
    key.push_str("::");
    key.push_str(function);
    key.push(':');
    push_hex(&mut key, &digest[..16]);
    key
}

/// Builds a [`default_key`] one argument at a time, with the same result as passing the arguments
/// as a tuple. The generated code uses it so that an argument that cannot be serialized is reported
/// on that argument.
///
/// ```
/// use cache_runtime::key::{default_key, DefaultKey};
/// let key = DefaultKey::new().arg(&1u64).arg("a").finish("m", "f");
/// assert_eq!(key, default_key("m", "f", &(1u64, "a")));
/// ```
#[derive(Debug, Clone, Default)]
pub struct DefaultKey {
    hasher: Sha256,
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
        self.hasher.update(if self.args == 0 { b"[" } else { b"," });
        self.args += 1;
        if value.write_json(&mut HashWriter(&mut self.hasher)).is_err() {
            self.failed = true;
        }
        self
    }

    /// The key of a call of `module::function` with the arguments added.
    /// Keys of arguments that failed to serialize contain [`UNKEYABLE`].
    pub fn finish(mut self, module: &str, function: &str) -> String {
        if self.failed {
            return unkeyable();
        }
        let closing: &[u8] = if self.args == 0 { b"[]" } else { b"]" };
        self.hasher.update(closing);
        finish_key(self.hasher, module, function)
    }
}

/// Implemented by every type that can be part of a cache key: every `serde::Serialize` type.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be part of a cache key: it does not implement `serde::Serialize`",
    label = "this argument is part of the default key",
    note = "derive or implement `Serialize` for it, or give the attribute a `key = \"...\"` template that leaves it out"
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
fn push_hex(out: &mut String, bytes: &[u8]) {
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
        out.push_str(std::str::from_utf8(&buffer[..written]).unwrap_or_default());
    }
}

struct HashWriter<'a>(&'a mut Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_cannot_forge_separators_or_patterns() {
        let mut a = String::from("user:");
        push_value(&mut a, &"1:admin");
        let mut b = String::from("user:1:");
        push_value(&mut b, &"admin");
        assert_ne!(a, b);
        for hostile in ["*", "{id}", "a b", "line\nbreak", "x?y", "[a]", "50%"] {
            let mut k = String::new();
            push_value(&mut k, &hostile);
            assert!(
                !k.contains(|c: char| ":*?[]{} \n".contains(c)),
                "{hostile:?} escaped to {k:?}"
            );
        }
    }

    #[test]
    fn escaping_is_injective_on_percent() {
        let mut a = String::new();
        push_value(&mut a, &"%3A");
        let mut b = String::new();
        push_value(&mut b, &":");
        assert_ne!(a, b);
    }

    #[test]
    fn numbers_and_structs_render_compactly() {
        let mut k = String::new();
        push_value(&mut k, &42u64);
        push_value(&mut k, &true);
        push_value(&mut k, &Option::<u8>::None);
        assert_eq!(k, "42truenull");
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
