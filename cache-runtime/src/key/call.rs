//! [`CallKeyBuilder`]: the default key of a generated call, written as its call text.

use sha2::{Digest, Sha256};

use super::{
    compact::{CallPrefix, CompactText},
    default::{KeyArg, CALL_OPENING, SHORT_ARGS},
    hash::push_hex,
    KeyBuf,
};

/// Builds the default key of one call in place, as the generated code does: the prefix, then
/// the arguments' JSON written straight after it, so that the result is the call text
/// `"{prefix}\0{json}"` (see [`KeyBuf::call_text`]) with no digest computed. An argument list
/// longer than 64 bytes of JSON is hashed as it is written, and the result is the key itself.
///
/// Either way the key is the one [`DefaultKey`](super::DefaultKey) builds from the same
/// arguments: the JSON bytes are the same, and so is their digest.
///
/// ```
/// use cache_runtime::key::{CallKeyBuilder, DefaultKey};
/// let mut call = CallKeyBuilder::new("app::f:");
/// call.arg_int(7u64);
/// call.arg("a\"b");
/// let built = DefaultKey::new().arg(&7u64).arg("a\"b").finish_prefixed("app::f:");
/// assert_eq!(call.finish().into_string(), built.into_string());
/// ```
#[doc(hidden)]
#[derive(Debug)]
pub struct CallKeyBuilder {
    key: KeyBuf,
    /// Where the JSON starts in `key` (after the separator).
    json_at: usize,
    /// The argument list so far, once it is too long to keep: `key` then holds the prefix only.
    /// (Boxed: the builder stays small, and a list that long costs a SHA-256 anyway.)
    long: Option<Box<Sha256>>,
    args: usize,
    failed: bool,
    /// The compact call text so far and its prefix, while the call is written as one (`key` is
    /// empty then; see `compact.rs`).
    compact: Option<(CompactText, &'static str)>,
}

impl CallKeyBuilder {
    /// A call of the fn whose keys start with `prefix` (`"{parent}::{function}:"`).
    #[inline]
    pub fn new(prefix: &str) -> Self {
        let mut call = Self::empty();
        call.key.push_str(prefix);
        call.open();
        call
    }

    /// A call of `module::function`.
    #[inline]
    pub fn new_of(module: &str, function: &str) -> Self {
        let mut call = Self::empty();
        super::default::push_prefix(&mut call.key, module, function);
        call.open();
        call
    }

    /// A call of the fn whose prefix has the id `prefix` ([`prefix_id`](super::prefix_id)),
    /// written as a compact call text while its arguments are integers and it stays short (the
    /// same key, see `compact.rs`); otherwise as the JSON call text [`new`](Self::new) writes.
    ///
    /// ```
    /// use cache_runtime::key::CallKeyBuilder;
    /// use cache_runtime::__private::prefix_id;
    /// let mut compact = CallKeyBuilder::compact(prefix_id("app::f:"));
    /// compact.arg_int(7u64);
    /// compact.arg_int(-2i32);
    /// let mut json = CallKeyBuilder::new("app::f:");
    /// json.arg_int(7u64);
    /// json.arg_int(-2i32);
    /// assert_eq!(compact.finish().into_string(), json.finish().into_string());
    /// ```
    #[inline]
    pub fn compact(prefix: CallPrefix) -> Self {
        let mut call = Self::empty();
        call.compact = Some((CompactText::new(prefix.id), prefix.text));
        call
    }

    #[inline]
    fn empty() -> Self {
        Self {
            key: KeyBuf::new(),
            json_at: 0,
            long: None,
            args: 0,
            failed: false,
            compact: None,
        }
    }

    /// Rewrites a compact call text so far as its JSON call text, to go on in JSON.
    #[cold]
    fn leave_compact(&mut self) {
        let Some((text, prefix)) = self.compact.take() else {
            return;
        };
        self.key = KeyBuf::new();
        self.key.push_str(prefix);
        self.open();
        text.write_elements(|json| self.push_json(json));
    }

    /// Ends the prefix: the separator and the list's opening bracket, in one go.
    #[inline]
    fn open(&mut self) {
        self.key.push_str(CALL_OPENING);
        self.json_at = self.key.len() - 1;
    }

    #[inline]
    fn next_arg(&mut self) {
        if self.args > 0 {
            self.push_json(",");
        }
        self.args += 1;
    }

    /// Adds one argument, as serde_json writes it.
    #[allow(private_bounds)]
    #[inline]
    pub fn arg<T: KeyArg + ?Sized>(&mut self, value: &T) {
        if self.compact.is_some() {
            self.leave_compact();
        }
        self.next_arg();
        if value.write_json(&mut JsonSink(self)).is_err() {
            self.failed = true;
        }
    }

    /// Adds an integer argument: its digits, as serde_json writes them, without serde.
    #[allow(private_bounds)]
    #[inline]
    pub fn arg_int<I: IntegerArg>(&mut self, value: I) {
        if let Some((text, _)) = &mut self.compact {
            let before = *text;
            let (negative, magnitude) = value.sign_and_magnitude();
            if text.push_int(negative, magnitude) {
                self.args += 1;
                return;
            }
            // Too long for a compact text: this argument and the rest go in JSON.
            *text = before;
            self.leave_compact();
        }
        self.next_arg();
        self.push_json(itoa::Buffer::new().format(value));
    }

    /// Makes the key unkeyable when `refuse` holds (the call then runs uncached).
    #[inline]
    pub fn refuse_if(&mut self, refuse: bool) {
        self.failed |= refuse;
    }

    /// The call text, or for a long argument list the key itself.
    #[inline]
    pub fn finish(&mut self) -> KeyBuf {
        if self.failed {
            let mut key = KeyBuf::new();
            key.mark_unkeyable();
            return key;
        }
        if let Some((text, _)) = &self.compact {
            let mut key = KeyBuf::new();
            key.push_str(text.as_str());
            key.mark_call();
            return key;
        }
        self.push_json("]");
        match self.long.take() {
            Some(hasher) => push_hex(&mut self.key, &hasher.finalize()[..16]),
            None => self.key.mark_call(),
        }
        std::mem::take(&mut self.key)
    }

    #[inline]
    fn push_json(&mut self, json: &str) {
        match &mut self.long {
            Some(hasher) => hasher.update(json),
            None if self.key.len() - self.json_at + json.len() <= SHORT_ARGS => {
                self.key.push_str(json);
            }
            None => self.hash_from_now_on(json.as_bytes()),
        }
    }

    /// The list no longer fits: from here on it is hashed as it is written.
    #[cold]
    fn hash_from_now_on(&mut self, more: &[u8]) {
        let mut hasher = Sha256::new();
        hasher.update(&self.key.as_bytes()[self.json_at..]);
        hasher.update(more);
        self.key.truncate(self.json_at - 1); // the prefix, without the separator
        self.long = Some(Box::new(hasher));
    }
}

/// Writes serde_json's output into the call text.
struct JsonSink<'a>(&'a mut CallKeyBuilder);

impl std::io::Write for JsonSink<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let call = &mut *self.0;
        match &mut call.long {
            Some(hasher) => hasher.update(bytes),
            None => match std::str::from_utf8(bytes) {
                Ok(json) => call.push_json(json),
                // serde_json writes whole characters; bytes that are not text are hashed all the same.
                Err(_) => call.hash_from_now_on(bytes),
            },
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The integer types [`CallKeyBuilder::arg_int`] takes: serde_json writes them as their digits.
pub(crate) trait IntegerArg: itoa::Integer {
    /// Whether the value is negative, and its absolute value.
    fn sign_and_magnitude(self) -> (bool, u128);
}

/// Adds an argument through [`CallKeyBuilder::arg_int`] when its type is a primitive integer, and
/// through [`CallKeyBuilder::arg`] otherwise (autoref specialization in the generated code,
/// `(&IntegerProbe(&value)).add_to(&mut call)`, used where the argument's type is spelled as an
/// integer type: a type alias or parameter of that name still works).
#[doc(hidden)]
pub struct IntegerProbe<'a, T: ?Sized>(pub &'a T);

#[doc(hidden)]
pub trait ViaInteger {
    fn add_to(&self, call: &mut CallKeyBuilder);
}

#[allow(private_bounds)]
impl<T: IntegerArg> ViaInteger for IntegerProbe<'_, T> {
    #[inline]
    fn add_to(&self, call: &mut CallKeyBuilder) {
        call.arg_int(*self.0);
    }
}

#[doc(hidden)]
pub trait ViaKeyArg {
    fn add_to(&self, call: &mut CallKeyBuilder);
}

#[allow(private_bounds)]
impl<T: KeyArg + ?Sized> ViaKeyArg for &IntegerProbe<'_, T> {
    #[inline]
    fn add_to(&self, call: &mut CallKeyBuilder) {
        call.arg(self.0);
    }
}

macro_rules! unsigned_args {
    ($($ty:ty),*) => {$(
        impl IntegerArg for $ty {
            #[inline]
            fn sign_and_magnitude(self) -> (bool, u128) {
                (false, self as u128)
            }
        }
    )*};
}

macro_rules! signed_args {
    ($($ty:ty),*) => {$(
        impl IntegerArg for $ty {
            #[inline]
            fn sign_and_magnitude(self) -> (bool, u128) {
                (self < 0, self.unsigned_abs() as u128)
            }
        }
    )*};
}

unsigned_args!(u8, u16, u32, u64, u128, usize);
signed_args!(i8, i16, i32, i64, i128, isize);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::DefaultKey;

    /// Both builders, on the same arguments (`ints` through `arg_int`, then `texts`).
    fn both(ints: &[i64], texts: &[&str]) -> (String, String) {
        let mut call = CallKeyBuilder::new("m::f:");
        let mut built = DefaultKey::new();
        for n in ints {
            call.arg_int(*n);
            built = built.arg(n);
        }
        for text in texts {
            call.arg(*text);
            built = built.arg(*text);
        }
        let built = built.finish_prefixed("m::f:").into_string();
        (call.finish().into_string(), built)
    }

    #[test]
    fn call_texts_name_the_same_key_as_the_default_key() {
        let long = "x".repeat(100);
        let unicode = "é日本\u{1F600}\"\\\n\u{1}\u{7f}";
        let cases: [(&[i64], &[&str]); 7] = [
            (&[], &[]),
            (&[0, -1, i64::MAX, i64::MIN], &[]),
            (&[], &["", "a:b", unicode]),
            (&[42], &[&long]),
            (&[1; 20], &[]),
            (&[7], &["exactly at the limit...........................!"]),
            (&[], &[&"é".repeat(40)]),
        ];
        for (ints, texts) in cases {
            let (call, built) = both(ints, texts);
            assert_eq!(call, built, "{ints:?} {texts:?}");
        }
    }

    #[test]
    fn short_lists_stay_call_texts_and_long_ones_are_hashed() {
        let mut short = CallKeyBuilder::new("m::f:");
        short.arg_int(12u64);
        short.arg("ab");
        let short = short.finish();
        assert_eq!(short.call_text(), Some("m::f:\0[12,\"ab\"]"));
        let mut long = CallKeyBuilder::new("m::f:");
        long.arg(&"y".repeat(70));
        let long = long.finish();
        assert_eq!(long.call_text(), None);
        assert_eq!(long.as_str().len(), "m::f:".len() + 32);
    }

    #[test]
    fn a_prefix_with_a_nul_byte_names_the_same_key() {
        let mut call = CallKeyBuilder::new("m::a\0b:");
        call.arg_int(1u8);
        let built = DefaultKey::new().arg(&1u8).finish_prefixed("m::a\0b:");
        assert_eq!(call.finish().into_string(), built.into_string());
    }

    /// The compact builder names the same key as the JSON one, for every integer width and sign,
    /// past its length limit and when a non-integer argument follows.
    #[test]
    fn compact_call_texts_name_the_same_key_as_json_ones() {
        let id = super::super::prefix_id("m::compact:");
        let cases: [&[i128]; 7] = [
            &[],
            &[0],
            &[-1, 1, 63, 64, -64, 4096],
            &[i128::MIN, i128::MAX],
            &[i64::MIN as i128, u32::MAX as i128, 7],
            &[1; 12],
            &[123_456_789_012; 3],
        ];
        for ints in cases {
            for text in [None, Some("a\"b")] {
                let mut compact = CallKeyBuilder::compact(id);
                let mut json = CallKeyBuilder::new("m::compact:");
                for n in ints {
                    compact.arg_int(*n);
                    json.arg_int(*n);
                }
                if let Some(text) = text {
                    compact.arg(text);
                    json.arg(text);
                }
                let (compact, json) = (compact.finish(), json.finish());
                let call = compact.call_text().map(str::to_owned);
                if let Some(call) = &call {
                    if call.starts_with('\0') {
                        assert!(call.len() <= super::super::compact::MAX_COMPACT, "{call:?}");
                    }
                }
                assert_eq!(
                    compact.into_string(),
                    json.into_string(),
                    "{ints:?} {text:?}"
                );
            }
        }
        let mut u = CallKeyBuilder::compact(id);
        u.arg_int(u128::MAX);
        let built = DefaultKey::new()
            .arg(&u128::MAX)
            .finish_prefixed("m::compact:");
        assert_eq!(u.finish().into_string(), built.into_string());
    }

    #[test]
    fn compact_texts_are_short_and_differ_by_prefix_and_arguments() {
        let (f, g) = (
            super::super::prefix_id("m::cf:"),
            super::super::prefix_id("m::cg:"),
        );
        let text = |id: CallPrefix, args: &[i64]| {
            let mut call = CallKeyBuilder::compact(id);
            args.iter().for_each(|n| call.arg_int(*n));
            call.finish().call_text().unwrap().to_owned()
        };
        assert!(text(f, &[42]).starts_with('\0'));
        assert!(text(f, &[i64::MAX]).len() <= super::super::compact::MAX_COMPACT);
        let all = [
            text(f, &[1]),
            text(g, &[1]),
            text(f, &[-1]),
            text(f, &[1, 1]),
            text(f, &[11]),
            text(f, &[]),
            text(f, &[64]),
            text(f, &[0, 64]),
        ];
        let distinct: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), all.len(), "{all:?}");
    }

    #[test]
    fn a_refused_or_failed_call_is_unkeyable() {
        let mut refused = CallKeyBuilder::new_of("m", "f");
        refused.arg_int(1u8);
        refused.refuse_if(true);
        assert!(!refused.finish().is_keyable());
    }
}
