//! Compact call texts: what in-process stores file the entries of integer-argument calls under.
//!
//! A default key's call text is normally `"{prefix}\0{json}"` (see [`KeyBuf::call_text`]), longer
//! than the 24 bytes a store keeps inline for most fns. When every argument is a primitive integer
//! and the prefix is the same for every call of the site, the call text is instead
//!
//! ```text
//! "\0" id (sign magnitude)*
//! ```
//!
//! where `id` numbers the prefix in this process ([`prefix_id`]), each argument is a sign byte
//! (`+` or `-`) and its magnitude, and numbers are written six bits per byte, least significant
//! first, with `0x40` set on every byte but the last. Every byte is ASCII, so the text is a `str`;
//! it starts with a NUL byte, which no other call text or key does (prefixes never start with
//! one; keys holding one run uncached). It names the same call as the JSON form and no other: the
//! encoding is injective, and decodes back to the prefix and the JSON that serde writes for the
//! same integers ([`decode`]), from which the key's digest is computed as for any call text.
//!
//! The text is process-local (ids are handed out in first-use order): only in-process stores see
//! it; shared backends see the digest key.

use std::{
    collections::HashMap,
    sync::{Mutex, RwLock},
};

/// Longest compact call text: a store keeps keys up to this length inline. Longer argument lists
/// are written as JSON call texts.
pub(super) const MAX_COMPACT: usize = 24;

/// What starts a compact call text.
pub(super) const COMPACT_MARK: char = '\0';

/// The prefixes numbered so far, by id, and their ids.
static PREFIXES: RwLock<Vec<&'static str>> = RwLock::new(Vec::new());
static IDS: Mutex<Option<HashMap<&'static str, u32>>> = Mutex::new(None);

/// A default key's prefix (`"{parent}::{function}:"`) and its number in this process: the same
/// for the same text. The generated code asks once per site and keeps it.
///
/// ```
/// use cache_runtime::__private::prefix_id;
/// assert_eq!(prefix_id("app::f:").id, prefix_id("app::f:").id);
/// assert_ne!(prefix_id("app::f:").id, prefix_id("app::g:").id);
/// assert_eq!(prefix_id("app::f:").text, "app::f:");
/// ```
#[doc(hidden)]
pub fn prefix_id(prefix: &str) -> CallPrefix {
    let mut ids = IDS.lock().unwrap_or_else(|p| p.into_inner());
    let ids = ids.get_or_insert_with(HashMap::new);
    if let Some((text, id)) = ids.get_key_value(prefix) {
        return CallPrefix { id: *id, text };
    }
    let mut prefixes = PREFIXES.write().unwrap_or_else(|p| p.into_inner());
    let id = u32::try_from(prefixes.len()).expect("fewer than 2^32 cached fns");
    // One per cached fn: kept for the life of the process.
    let text: &'static str = Box::leak(prefix.into());
    prefixes.push(text);
    ids.insert(text, id);
    CallPrefix { id, text }
}

/// A numbered prefix (see [`prefix_id`]).
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct CallPrefix {
    /// Its number in this process.
    pub id: u32,
    /// The prefix itself.
    pub text: &'static str,
}

fn prefix_of(id: u32) -> Option<&'static str> {
    let prefixes = PREFIXES.read().unwrap_or_else(|p| p.into_inner());
    prefixes.get(usize::try_from(id).ok()?).copied()
}

/// A compact call text being written (at most [`MAX_COMPACT`] bytes, all ASCII).
#[derive(Debug, Clone, Copy)]
pub(super) struct CompactText {
    bytes: [u8; MAX_COMPACT],
    len: usize,
}

impl CompactText {
    /// The text of a call of the prefix numbered `id`, before its arguments.
    #[inline]
    pub(super) fn new(id: u32) -> Self {
        let mut text = Self {
            bytes: [0; MAX_COMPACT],
            len: 1, // the mark, a NUL byte
        };
        text.push_number(u128::from(id));
        text
    }

    /// Appends an integer argument; `false` when the text would grow past [`MAX_COMPACT`] (it
    /// is then unusable).
    #[inline]
    pub(super) fn push_int(&mut self, negative: bool, magnitude: u128) -> bool {
        self.push_byte(if negative { b'-' } else { b'+' }) && self.push_number(magnitude)
    }

    #[inline]
    fn push_byte(&mut self, byte: u8) -> bool {
        let Some(slot) = self.bytes.get_mut(self.len) else {
            return false;
        };
        *slot = byte;
        self.len += 1;
        true
    }

    /// Appends `value`, six bits per byte.
    #[inline]
    fn push_number(&mut self, value: u128) -> bool {
        let mut rest = value;
        loop {
            let low = (rest as u8) & 0x3F;
            rest >>= 6;
            if rest == 0 {
                return self.push_byte(low);
            }
            if !self.push_byte(low | 0x40) {
                return false;
            }
        }
    }

    /// Writes the integer arguments so far as the elements of serde's JSON list (no brackets),
    /// through `push`.
    pub(super) fn write_elements(&self, push: impl FnMut(&str)) {
        let _ = write_elements(&self.bytes[1..self.len], push);
    }

    /// The text (ASCII by construction).
    #[inline]
    pub(super) fn as_str(&self) -> &str {
        let bytes = &self.bytes[..self.len];
        debug_assert!(bytes.is_ascii());
        // SAFETY: every byte written is below 0x80 (the NUL mark, `+`, `-`, and six bits with at
        // most 0x40 set), so the bytes are ASCII, hence UTF-8. (Checking costs as much as the
        // rest of writing the text.)
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }
}

/// Reads a number written by [`push_number`] from the front of `bytes`.
fn read_number(bytes: &mut &[u8]) -> Option<u128> {
    let mut value: u128 = 0;
    for shift in (0..132).step_by(6) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u128::from(byte & 0x3F).checked_shl(shift)?;
        if byte & 0x40 == 0 {
            return Some(value);
        }
    }
    None
}

/// Reads a compact call text after its mark: returns the prefix's id, and writes the integers as
/// the elements of serde's JSON list (commas, signs, digits; no brackets) through `push`. `None`
/// when the text is malformed.
fn write_elements(mut bytes: &[u8], mut push: impl FnMut(&str)) -> Option<u32> {
    let id = u32::try_from(read_number(&mut bytes)?).ok()?;
    let mut first = true;
    while let Some((&sign, rest)) = bytes.split_first() {
        bytes = rest;
        let magnitude = read_number(&mut bytes)?;
        if !std::mem::take(&mut first) {
            push(",");
        }
        match sign {
            b'+' => {}
            b'-' => push("-"),
            _ => return None,
        }
        push(itoa::Buffer::new().format(magnitude));
    }
    Some(id)
}

/// The prefix and the JSON argument list a compact call text stands for (`None` if `call` is
/// not one this process wrote).
pub(super) fn decode(call: &str) -> Option<(&'static str, String)> {
    let bytes = call.strip_prefix(COMPACT_MARK)?.as_bytes();
    let mut json = String::from("[");
    let id = write_elements(bytes, |part| json.push_str(part))?;
    json.push(']');
    Some((prefix_of(id)?, json))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_back_at_every_width() {
        for value in [
            0,
            1,
            63,
            64,
            4095,
            4096,
            u128::from(u64::MAX),
            u128::MAX >> 4,
        ] {
            let mut text = CompactText::new(0);
            assert!(text.push_int(false, value));
            assert!(text.as_str().is_ascii());
            let mut bytes = &text.as_str().as_bytes()[3..]; // the mark, the id, the sign
            assert_eq!(read_number(&mut bytes), Some(value));
            assert!(bytes.is_empty());
        }
    }

    #[test]
    fn texts_decode_to_the_json_serde_writes() {
        let mut text = CompactText::new(prefix_id("compact::tests::f:").id);
        for (negative, magnitude) in [(false, 7), (true, 1u128 << 63), (false, 0)] {
            assert!(text.push_int(negative, magnitude));
        }
        let (prefix, json) = decode(text.as_str()).unwrap();
        assert_eq!(prefix, "compact::tests::f:");
        assert_eq!(json, serde_json::to_string(&(7u8, i64::MIN, 0u64)).unwrap());
    }

    #[test]
    fn a_text_never_grows_past_its_bound() {
        let mut text = CompactText::new(prefix_id("compact::tests::h:").id);
        assert!(text.push_int(false, u128::from(u64::MAX))); // 12 bytes
        assert!(!text.push_int(false, u128::from(u64::MAX)), "past 24 bytes");
    }

    #[test]
    fn texts_this_process_did_not_write_do_not_decode() {
        assert_eq!(decode("app::f:\0[1]"), None);
        assert_eq!(decode("\0\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}\u{3f}"), None);
        let mut text = CompactText::new(prefix_id("compact::tests::g:").id);
        assert!(text.push_byte(b'*'));
        assert_eq!(
            decode(text.as_str()),
            None,
            "a sign byte that is neither + nor -"
        );
    }
}
