//! Escaping of template values (see the [module docs](super) for the rule).

use serde::Serialize;

use super::KeyBuf;

/// What follows a value in its template: decides what the value escapes besides the base set (see
/// the [module docs](super)).
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

/// Appends `value`, escaped for what follows it in the template (see the [module docs](super)).
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
    let rendered = serde_json::to_value(value);
    // `NaN`, `inf` and `-inf` render as `null`, like `None`: a value holding one is unkeyable.
    if rendered.as_ref().is_ok_and(holds_null) && super::finite::has_non_finite(value) {
        key.mark_unkeyable();
        return;
    }
    match rendered {
        Ok(serde_json::Value::String(text)) => escape_before(key, &text, follow),
        Ok(serde_json::Value::Null) => {
            key.push_str(NULL);
            end_value(key, follow);
        }
        Ok(other) => escape_before(key, &other.to_string(), follow),
        Err(_) => key.mark_unkeyable(),
    }
}

/// Whether a rendered value is or holds a `null`.
fn holds_null(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Null => true,
        serde_json::Value::Array(items) => items.iter().any(holds_null),
        serde_json::Value::Object(fields) => fields.values().any(holds_null),
        _ => false,
    }
}

/// Escapes `text` for its context and ends the value.
fn escape_before(key: &mut KeyBuf, text: &str, follow: Follow) {
    match follow {
        Follow::Char(stop) => escape_with(key, text, Some(stop)),
        Follow::End | Follow::Terminator => escape_with(key, text, None),
    }
    end_value(key, follow);
}

fn end_value(key: &mut KeyBuf, follow: Follow) {
    if follow == Follow::Terminator {
        key.push_str(TERMINATOR);
    }
}

/// Appends an integer's digits (and sign): no escaping unless the text that follows starts with
/// a digit or `-` (the same output as [`escape_before`], without a scan for characters to escape).
fn push_digits_before(key: &mut KeyBuf, digits: &str, follow: Follow) {
    match follow {
        Follow::Char(stop) if stop.is_ascii_digit() || stop == '-' => {
            escape_before(key, digits, follow);
        }
        _ => {
            key.push_str(digits);
            end_value(key, follow);
        }
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
                push_digits_before(key, itoa::Buffer::new().format(*self), follow);
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
    escape_with(out, text, None);
}

fn escape_with(out: &mut impl std::fmt::Write, text: &str, stop: Option<char>) {
    let bytes = text.as_bytes();
    // Runs of characters kept as they are are written in one piece; ASCII is decided by a
    // table, other characters by `needs_escape`.
    let (mut kept_from, mut at) = (0, 0);
    while at < bytes.len() {
        let byte = bytes[at];
        let (ch, len, escaped) = if byte.is_ascii() {
            (char::from(byte), 1, ASCII_ESCAPED[usize::from(byte)])
        } else {
            let ch = text[at..].chars().next().unwrap_or_default();
            (ch, ch.len_utf8(), needs_escape(ch))
        };
        if escaped || stop == Some(ch) {
            let _ = out.write_str(&text[kept_from..at]);
            for byte in &bytes[at..at + len] {
                let escaped = [
                    b'%',
                    HEX_UPPER[usize::from(byte >> 4)],
                    HEX_UPPER[usize::from(byte & 0xf)],
                ];
                let _ = out.write_str(std::str::from_utf8(&escaped).unwrap_or_default());
            }
            kept_from = at + len;
        }
        at += len;
    }
    let _ = out.write_str(&text[kept_from..]);
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// [`needs_escape`] of every ASCII character: the listed ones, space and the controls.
const ASCII_ESCAPED: [bool; 128] = {
    let mut table = [false; 128];
    let mut byte = 0;
    while byte < 128 {
        table[byte] = matches!(
            byte as u8,
            b'%' | b':'
                | b'*'
                | b'?'
                | b'['
                | b']'
                | b'{'
                | b'}'
                | b'\\'
                | b'"'
                | b'\''
                | b'#'
                | b' '
                | 0..=0x1f | 0x7f
        );
        byte += 1;
    }
    table
};

fn needs_escape(ch: char) -> bool {
    matches!(
        ch,
        '%' | ':' | '*' | '?' | '[' | ']' | '{' | '}' | '\\' | '"' | '\'' | '#'
    ) || ch.is_whitespace()
        || ch.is_control()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `escape_with` writes, one character at a time.
    fn escaped_char_by_char(text: &str, stop: Option<char>) -> String {
        let mut out = String::new();
        for ch in text.chars() {
            if stop == Some(ch) || needs_escape(ch) {
                let mut buf = [0u8; 4];
                for byte in ch.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{byte:02X}"));
                }
            } else {
                out.push(ch);
            }
        }
        out
    }

    #[test]
    fn the_ascii_table_agrees_with_the_rule() {
        for byte in 0u8..128 {
            assert_eq!(
                ASCII_ESCAPED[usize::from(byte)],
                needs_escape(char::from(byte)),
                "byte {byte:#x}"
            );
        }
    }

    #[test]
    fn escaping_matches_the_rule_character_by_character() {
        let alphabet: Vec<char> =
            "aZ09-_./:%*?[]{}\\\"'# \t\n\r\x00\x7f~éß€😀\u{85}\u{a0}\u{2028}\u{3000}\u{200b}"
                .chars()
                .collect();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let len = (next() % 12) as usize;
            let text: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let stop = match next() % 4 {
                0 => None,
                _ => Some(alphabet[(next() % alphabet.len() as u64) as usize]),
            };
            let mut out = String::new();
            escape_with(&mut out, &text, stop);
            assert_eq!(
                out,
                escaped_char_by_char(&text, stop),
                "{text:?} stop {stop:?}"
            );
        }
    }
}
