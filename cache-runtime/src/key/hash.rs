//! Long keys, hashed to a readable head plus a digest, and the other digests keys use.

use sha2::{Digest, Sha256};

use super::MAX_KEY_LEN;

/// How many bytes of the original a shortened key keeps before its hash.
const KEPT_HEAD: usize = 64;

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
pub(super) fn push_hex(out: &mut impl std::fmt::Write, bytes: &[u8]) {
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
