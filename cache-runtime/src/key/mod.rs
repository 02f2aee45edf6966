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

mod buf;
mod call;
mod compact;
mod default;
mod escape;
mod finite;
mod hash;

pub use buf::KeyBuf;
pub use call::{CallKeyBuilder, IntegerProbe, ViaInteger, ViaKeyArg};
pub use compact::{prefix_id, CallPrefix};
pub(crate) use default::fn_prefix;
pub use default::{default_key, generic_parent, marker_prefix, DefaultKey, KeyArg};
pub use escape::{
    escape_into, push_value, push_value_before, Follow, KeyValueProbe, PlainKeyValue, ViaPlain,
    ViaSerde, NULL, TERMINATOR,
};
pub use hash::normalize_key;
pub(crate) use hash::{fingerprint, sha256_hex};

/// Marks a key built from a value that failed to serialize: such calls run uncached (escaping
/// never lets this byte through from a value).
pub const UNKEYABLE: u8 = 0;

/// Longest key stored as it is; longer ones are shortened by [`normalize_key`].
pub const MAX_KEY_LEN: usize = 200;

#[cfg(test)]
mod tests {
    use serde::Serialize;

    use super::{default::REMEMBERED_DIGESTS, *};

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
    fn plain_integers_escape_as_serde_does_before_any_text() {
        let follows = [
            Follow::End,
            Follow::Terminator,
            Follow::Char(':'),
            Follow::Char('-'),
            Follow::Char('0'),
            Follow::Char('7'),
            Follow::Char('x'),
        ];
        for follow in follows {
            for n in [0i64, -1, -70, 7, 707, i64::MIN, i64::MAX] {
                let mut plain = KeyBuf::new();
                n.push_plain_before(&mut plain, follow);
                let mut serde = KeyBuf::new();
                push_value_before(&mut serde, &n, follow);
                assert_eq!(plain.as_str(), serde.as_str(), "{n} before {follow:?}");
            }
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
    fn hot_argument_lists_are_all_remembered() {
        use super::default::DIGESTS_COMPUTED;
        // 64 hot lists take an eighth of the table: none may be pushed out by another.
        for (stride, start) in [(1u64, 0u64), (7_919, 0), (1, 1_000_000)] {
            let hot = |n: u64| {
                DefaultKey::new()
                    .arg(&(start + n * stride))
                    .finish("m", "f")
            };
            for round in 0..3 {
                let before = DIGESTS_COMPUTED.with(|n| n.get());
                for n in 0..64u64 {
                    hot(n);
                }
                let computed = DIGESTS_COMPUTED.with(|n| n.get()) - before;
                if round > 0 {
                    assert_eq!(
                        computed, 0,
                        "64 hot argument lists (every {stride} from {start})"
                    );
                }
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
