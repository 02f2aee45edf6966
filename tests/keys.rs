//! Template keys are injective: for a fixed template, two different argument tuples never render
//! the same key, whatever separators the values contain. Checked through the `<fn>_key` companions
//! that `#[cached]` generates, on random tuples rich in separators (a fixed seed, so every run checks
//! the same cases).

use std::collections::HashMap;
use std::fmt::Debug;

use cache_runtime::cached;

/// SplitMix64: small, deterministic, good enough to spread the cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A string of up to four pieces: separators, letters and digits that templates use, and the
    /// escape tokens themselves.
    fn text(&mut self) -> String {
        const PIECES: &[&str] = &[
            "/", "-", ".", ",", "|", "=", "&", ":", "%", "~", "N", "x", "1", "p", "a", "%~", "%N",
            "%25", "%2F", "null", "", " ", "é", "{", "}", "5",
        ];
        let len = self.below(5);
        (0..len).map(|_| PIECES[self.below(PIECES.len())]).collect()
    }

    fn maybe_text(&mut self) -> Option<String> {
        if self.below(4) == 0 {
            None
        } else {
            Some(self.text())
        }
    }

    fn number(&mut self) -> i64 {
        const NUMBERS: &[i64] = &[0, 1, -1, 5, -5, 10, -10, 11, 51, -51, 111];
        NUMBERS[self.below(NUMBERS.len())]
    }
}

const CASES: usize = 5_000;

/// Renders `CASES` random tuples and fails on the first two distinct tuples with one key.
fn assert_injective<A: Clone + PartialEq + Debug>(
    template: &str,
    seed: u64,
    mut make: impl FnMut(&mut Rng) -> A,
    key: impl Fn(A) -> String,
) {
    let mut rng = Rng(seed);
    let mut seen: HashMap<String, A> = HashMap::new();
    for _ in 0..CASES {
        let args = make(&mut rng);
        let rendered = key(args.clone());
        if let Some(earlier) = seen.get(&rendered) {
            assert_eq!(
                earlier, &args,
                "template {template:?}: {earlier:?} and {args:?} both render {rendered:?}"
            );
        }
        seen.insert(rendered, args);
    }
    assert!(
        seen.len() > 100,
        "template {template:?}: too few distinct cases"
    );
}

#[cached(ttl = 60, key = "repo:{a}/{b}")]
async fn slash(a: String, b: String) -> u8 {
    let _ = (a, b);
    0
}

#[cached(ttl = 60, key = "{a}{b}")]
async fn adjacent(a: String, b: String) -> u8 {
    let _ = (a, b);
    0
}

#[cached(ttl = 60, key = "{a}x{b}")]
async fn letter(a: String, b: String) -> u8 {
    let _ = (a, b);
    0
}

#[cached(ttl = 60, key = "{a}%{b}")]
async fn percent(a: String, b: String) -> u8 {
    let _ = (a, b);
    0
}

#[cached(ttl = 60, key = "{a}-{b}-{c}")]
async fn dashes(a: String, b: String, c: String) -> u8 {
    let _ = (a, b, c);
    0
}

#[cached(ttl = 60, key = "{a}")]
async fn alone(a: Option<String>) -> u8 {
    let _ = a;
    0
}

#[cached(ttl = 60, key = "p{a}1{b}")]
async fn digit(a: String, b: String) -> u8 {
    let _ = (a, b);
    0
}

#[cached(ttl = 60, key = "o:{a}/{b}")]
async fn optional(a: Option<String>, b: Option<String>) -> u8 {
    let _ = (a, b);
    0
}

#[cached(ttl = 60, key = "{a}{b}.{c}")]
async fn optional_adjacent(a: Option<String>, b: Option<String>, c: Option<String>) -> u8 {
    let _ = (a, b, c);
    0
}

#[cached(ttl = 60, key = "n{a}-{b}1{c}{d}")]
async fn numbers(a: i64, b: i64, c: String, d: i64) -> u8 {
    let _ = (a, b, c, d);
    0
}

#[test]
fn string_templates_are_injective() {
    assert_injective(
        "repo:{a}/{b}",
        1,
        |r| (r.text(), r.text()),
        |(a, b)| slash_key(a, b),
    );
    assert_injective(
        "{a}{b}",
        2,
        |r| (r.text(), r.text()),
        |(a, b)| adjacent_key(a, b),
    );
    assert_injective(
        "{a}x{b}",
        3,
        |r| (r.text(), r.text()),
        |(a, b)| letter_key(a, b),
    );
    assert_injective(
        "{a}%{b}",
        4,
        |r| (r.text(), r.text()),
        |(a, b)| percent_key(a, b),
    );
    assert_injective(
        "{a}-{b}-{c}",
        5,
        |r| (r.text(), r.text(), r.text()),
        |(a, b, c)| dashes_key(a, b, c),
    );
    assert_injective(
        "p{a}1{b}",
        6,
        |r| (r.text(), r.text()),
        |(a, b)| digit_key(a, b),
    );
}

#[test]
fn option_templates_are_injective() {
    assert_injective("{a}", 7, |r| r.maybe_text(), alone_key);
    assert_injective(
        "o:{a}/{b}",
        8,
        |r| (r.maybe_text(), r.maybe_text()),
        |(a, b)| optional_key(a, b),
    );
    assert_injective(
        "{a}{b}.{c}",
        9,
        |r| (r.maybe_text(), r.maybe_text(), r.maybe_text()),
        |(a, b, c)| optional_adjacent_key(a, b, c),
    );
}

#[test]
fn number_templates_are_injective() {
    assert_injective(
        "n{a}-{b}1{c}{d}",
        10,
        |r| (r.number(), r.number(), r.text(), r.number()),
        |(a, b, c, d)| numbers_key(a, b, c, d),
    );
}

#[test]
fn known_collisions_are_gone() {
    assert_ne!(
        slash_key("a/b".into(), "c".into()),
        slash_key("a".into(), "b/c".into())
    );
    assert_ne!(
        adjacent_key("ab".into(), "".into()),
        adjacent_key("a".into(), "b".into())
    );
    assert_ne!(alone_key(None), alone_key(Some("null".into())));
    assert_eq!(alone_key(None), "%N");
    assert_eq!(alone_key(Some("null".into())), "null");
}

#[test]
fn readable_keys_stay_as_they_were() {
    assert_eq!(slash_key("owner".into(), "name".into()), "repo:owner/name");
    assert_eq!(slash_key("a/b".into(), "c".into()), "repo:a%2Fb/c");
    assert_eq!(dashes_key("a-b".into(), "".into(), "c".into()), "a%2Db--c");
    assert_eq!(adjacent_key("a".into(), "b".into()), "a%~b");
    assert_eq!(percent_key("a".into(), "b".into()), "a%~%b");
    assert_eq!(digit_key("1".into(), "1".into()), "p%3111");
    assert_eq!(numbers_key(-5, 5, "".into(), 1), "n%2D5-51%~1");
}

mod accounts {
    use cache_runtime::cached;
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub static RUNS: AtomicUsize = AtomicUsize::new(0);

    pub struct Users;
    pub struct Admins;

    impl Users {
        #[cached(ttl = 60)]
        pub async fn all() -> Vec<u8> {
            RUNS.fetch_add(1, Ordering::SeqCst);
            vec![1]
        }
    }

    impl Admins {
        #[cached(ttl = 60)]
        pub async fn all() -> Vec<u8> {
            vec![2]
        }
    }

    #[cached(ttl = 60)]
    pub async fn free(n: u64) -> u64 {
        RUNS.fetch_add(100, Ordering::SeqCst);
        n
    }
}

/// Runs of `Users::all` (1 each) and `free` (100 each); the tests that call them share this lock.
fn runs() -> usize {
    accounts::RUNS.load(std::sync::atomic::Ordering::SeqCst)
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn associated_fns_of_two_impls_have_their_own_keys() {
    let _serial = SERIAL.lock().await;
    assert_eq!(accounts::Users::all().await, vec![1]);
    assert_eq!(accounts::Admins::all().await, vec![2]);
    assert_eq!(accounts::Users::all().await, vec![1]);
    assert_eq!(accounts::Admins::all().await, vec![2]);
    let (users, admins) = (accounts::Users::all_key(), accounts::Admins::all_key());
    assert_ne!(users, admins);
    assert!(users.starts_with("keys::accounts::Users::all:"), "{users}");
    assert!(
        admins.starts_with("keys::accounts::Admins::all:"),
        "{admins}"
    );

    // The companions address the entries the fns really use.
    let before = runs();
    accounts::Users::all_invalidate().await.unwrap();
    assert_eq!(accounts::Admins::all().await, vec![2]);
    assert_eq!(accounts::Users::all().await, vec![1]);
    assert_eq!(
        runs(),
        before + 1,
        "Users::all_invalidate removed the entry"
    );
    cache_runtime::invalidate_key(&users).await.unwrap();
    assert_eq!(accounts::Users::all().await, vec![1]);
    assert_eq!(runs(), before + 2, "Users::all_key is the entry's key");
}

#[tokio::test]
async fn free_fn_default_keys_are_unchanged() {
    let _serial = SERIAL.lock().await;
    // Pinned: the module path, the name, and the digest of the JSON arguments.
    assert_eq!(
        accounts::free_key(1),
        cache_runtime::key::default_key("keys::accounts", "free", &(1u64,))
    );
    assert_eq!(
        accounts::free_key(1),
        "keys::accounts::free:080a9ed428559ef602668b4c00f114f1"
    );
    // And the fn stores its value under that key.
    let before = runs();
    assert_eq!(accounts::free(1).await, 1);
    assert_eq!(accounts::free(1).await, 1);
    assert_eq!(runs(), before + 100);
    cache_runtime::invalidate_key("keys::accounts::free:080a9ed428559ef602668b4c00f114f1")
        .await
        .unwrap();
    assert_eq!(accounts::free(1).await, 1);
    assert_eq!(runs(), before + 200);
}

/// A value whose serialization always fails.
#[derive(Debug, Clone)]
struct Fails;

impl serde::Serialize for Fails {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("no key for this"))
    }
}

static GROUPED_RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[cached(ttl = 60, key = "grouped:{id}", group = "tags:{tag}")]
async fn grouped(id: u64, tag: Fails) -> u64 {
    let _ = tag;
    GROUPED_RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    id
}

#[tokio::test]
async fn a_group_that_cannot_be_built_makes_the_call_run_uncached() {
    assert_eq!(grouped(1, Fails).await, 1);
    assert_eq!(grouped(1, Fails).await, 1);
    assert_eq!(
        GROUPED_RUNS.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "a call whose group cannot be built is not cached (nothing could invalidate it)"
    );
}

#[cached(ttl = 60, key = "k:{tag}")]
async fn keyed(tag: Fails) -> u64 {
    let _ = tag;
    1
}

#[cached(ttl = 60)]
async fn default_keyed(tag: Fails) -> u64 {
    let _ = tag;
    1
}

#[tokio::test]
async fn invalidating_a_key_that_cannot_be_built_is_an_error() {
    let result = keyed_invalidate(Fails).await;
    assert!(
        matches!(&result, Err(cache_runtime::CacheError::Unkeyable { target }) if target == "key `k:{tag}` of `keyed`"),
        "keyed_invalidate: {result:?}"
    );
    let result = default_keyed_invalidate(Fails).await;
    assert!(
        matches!(&result, Err(cache_runtime::CacheError::Unkeyable { target }) if target == "the default key of `default_keyed`"),
        "default_keyed_invalidate: {result:?}"
    );
    assert_eq!(
        result.unwrap_err().to_string(),
        "cannot invalidate the default key of `default_keyed`: a value in it failed to serialize, \
         so the key cannot be built (check the Serialize impls of the values it names; maps need \
         string keys)"
    );
}

static TOUCHED_RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[cached(ttl = 60, key = "touched:{id}")]
async fn touched(id: u64) -> u64 {
    TOUCHED_RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    id
}

/// One target cannot be built (logged at error level); the others are still invalidated.
#[cache_runtime::cache_invalidate(key = "touched:{id}", group = "tags:{tag}")]
async fn touch(id: u64, tag: Fails) -> Result<(), ()> {
    let _ = (id, tag);
    Ok(())
}

#[tokio::test]
async fn cache_invalidate_still_removes_the_targets_it_can_build() {
    touched(3).await;
    touched(3).await;
    touch(3, Fails).await.unwrap();
    touched(3).await;
    assert_eq!(TOUCHED_RUNS.load(std::sync::atomic::Ordering::SeqCst), 2);
}

static FLOAT_RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[cached(ttl = 60)]
async fn scaled(x: f64, factor: Option<f64>) -> String {
    FLOAT_RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("{}", x * factor.unwrap_or(1.0))
}

#[cached(ttl = 60, key = "scaled:{x}")]
async fn scaled_template(x: f64) -> String {
    FLOAT_RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("{x}")
}

/// `NaN`, `inf` and `-inf` have no JSON of their own (serde_json writes `null` for each, as for
/// `None`): a call with one runs uncached instead of sharing an entry with the others.
#[tokio::test]
async fn non_finite_floats_never_share_an_entry() {
    use std::sync::atomic::Ordering;
    let inf = scaled(f64::INFINITY, None).await;
    assert_eq!(inf, "inf");
    assert_eq!(scaled(f64::NEG_INFINITY, None).await, "-inf");
    assert_eq!(scaled(f64::NAN, None).await, "NaN");
    assert_eq!(scaled(2.0, Some(f64::INFINITY)).await, "inf");
    assert_eq!(scaled(2.0, None).await, "2");
    assert_eq!(scaled(2.0, Some(f64::NEG_INFINITY)).await, "-inf");
    assert_eq!(scaled_template(f64::INFINITY).await, "inf");
    assert_eq!(scaled_template(f64::NEG_INFINITY).await, "-inf");
    let key = |x: f64| cache_runtime::key::default_key("m", "f", &(x,));
    assert!(key(1.5).starts_with("m::f:"));
    assert!(!key(f64::NAN).starts_with("m::f:"), "no key for NaN");
    let before = FLOAT_RUNS.load(Ordering::SeqCst);
    assert_eq!(scaled(2.0, None).await, "2");
    assert_eq!(scaled(2.5, Some(2.0)).await, "5");
    assert_eq!(scaled(2.5, Some(2.0)).await, "5");
    assert_eq!(
        FLOAT_RUNS.load(Ordering::SeqCst),
        before + 1,
        "finite floats are cached as before"
    );
}

static INTS_RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Integer arguments only: in process, entries are filed under a compact call text.
#[cached(ttl = 60)]
async fn ints(a: i32, b: u128) -> String {
    INTS_RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("{a}/{b}")
}

/// Calls whose arguments are integers (compact call texts in process, JSON ones past 24 bytes)
/// never share an entry, keep the documented key, and are invalidated by their key string.
#[tokio::test]
async fn integer_calls_keep_their_key_and_their_entries_apart() {
    let runs = || INTS_RUNS.load(std::sync::atomic::Ordering::SeqCst);
    let calls = [
        (0, 0),
        (-1, 1),
        (1, 1),
        (1, 11),
        (11, 1),
        (-64, 64),
        (i32::MIN, u128::MAX),
    ];
    for (a, b) in calls {
        assert_eq!(ints(a, b).await, format!("{a}/{b}"));
    }
    let before = runs();
    for (a, b) in calls {
        assert_eq!(ints(a, b).await, format!("{a}/{b}"), "a hit");
        let expected = cache_runtime::key::default_key(module_path!(), "ints", &(a, b));
        assert_eq!(ints_key(a, b), expected, "the key of ({a}, {b})");
    }
    assert_eq!(runs(), before, "every call was a hit");
    for (a, b) in calls {
        cache_runtime::invalidate_key(&ints_key(a, b))
            .await
            .unwrap();
        assert_eq!(ints(a, b).await, format!("{a}/{b}"));
    }
    assert_eq!(
        runs(),
        before + calls.len(),
        "each ran again once invalidated"
    );
}

static NAMED_RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[cached(ttl = 60, name = "shared_name")]
async fn named_int(id: u64) -> String {
    NAMED_RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("user {id}")
}

#[cached(ttl = 60, name = "shared_name")]
async fn named_option(id: Option<u64>) -> u64 {
    id.unwrap_or_default()
}

/// Two fns pinned to one `name` share their keys: whichever stored last, an invalidation of the
/// key reaches what either of them stored.
#[tokio::test]
async fn fns_sharing_a_name_are_invalidated_by_their_shared_key() {
    let runs = || NAMED_RUNS.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(named_int(1).await, "user 1");
    assert_eq!(named_option(Some(1)).await, 1);
    assert_eq!(named_int_key(1), named_option_key(Some(1)), "one key");
    let before = runs();
    cache_runtime::invalidate_key(&named_int_key(1))
        .await
        .unwrap();
    assert_eq!(named_int(1).await, "user 1");
    assert_eq!(
        runs(),
        before + 1,
        "the body ran again after the invalidation"
    );
}
