//! `Cache-Control` directives (RFC 9111 §5.2, RFC 5861) as far as a server-side cache needs them.

use axum::http::{header::CACHE_CONTROL, HeaderMap, HeaderName};

/// The directives of every `Cache-Control` field of a message (request or response). A directive
/// given twice counts by its first occurrence (RFC 9111 §4.2.1 allows it).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct CacheControl {
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) private: bool,
    pub(crate) public: bool,
    /// `must-revalidate`, or `proxy-revalidate` (this is a shared cache).
    pub(crate) must_revalidate: bool,
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
    /// RFC 5861, response.
    pub(crate) stale_while_revalidate: Option<u64>,
    /// RFC 5861, response and request.
    pub(crate) stale_if_error: Option<u64>,
    /// `must-understand`: a status this cache understands is stored despite `no-store`.
    pub(crate) must_understand: bool,
    /// Request: `max-stale` (`Some(None)`: any staleness), `min-fresh`, `only-if-cached`.
    pub(crate) max_stale: Option<Option<u64>>,
    pub(crate) min_fresh: Option<u64>,
    pub(crate) only_if_cached: bool,
}

impl CacheControl {
    /// The directives of the `Cache-Control` fields.
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let mut cc = Self::default();
        for value in headers.get_all(CACHE_CONTROL) {
            let Ok(text) = value.to_str() else {
                continue;
            };
            for directive in split_list(text) {
                let (name, argument) = match directive.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (directive.trim(), None),
                };
                let seconds = argument.and_then(delta_seconds);
                // A malformed or absent argument reads as 0: stale (RFC 9111 §4.2.1).
                let first = |slot: &mut Option<u64>| {
                    slot.get_or_insert(seconds.unwrap_or(0));
                };
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => cc.no_store = true,
                    "no-cache" => cc.no_cache = true,
                    "private" => cc.private = true,
                    "public" => cc.public = true,
                    "must-revalidate" | "proxy-revalidate" => cc.must_revalidate = true,
                    "max-age" => first(&mut cc.max_age),
                    "s-maxage" => first(&mut cc.s_maxage),
                    "min-fresh" => first(&mut cc.min_fresh),
                    "stale-while-revalidate" => first(&mut cc.stale_while_revalidate),
                    "stale-if-error" => first(&mut cc.stale_if_error),
                    "max-stale" => {
                        cc.max_stale
                            .get_or_insert(argument.map(|_| seconds.unwrap_or(0)));
                    }
                    "only-if-cached" => cc.only_if_cached = true,
                    "must-understand" => cc.must_understand = true,
                    _ => {}
                }
            }
        }
        cc
    }
}

impl CacheControl {
    /// The directives of a targeted field such as `CDN-Cache-Control` (RFC 9213): a Structured
    /// Fields Dictionary (RFC 9651). `None` when the field is absent, is not a valid Dictionary, or
    /// gives a directive a value of the wrong type: the cache then ignores the field.
    pub(crate) fn of_targeted(headers: &HeaderMap, field: &HeaderName) -> Option<Self> {
        let lines = headers
            .get_all(field)
            .iter()
            .map(|value| value.to_str().ok())
            .collect::<Option<Vec<&str>>>()?;
        if lines.is_empty() {
            return None;
        }
        let dictionary: sfv::Dictionary = sfv::Parser::new(&lines.join(", ")).parse().ok()?;
        let mut cc = Self::default();
        for (key, entry) in &dictionary {
            let sfv::ListEntry::Item(item) = entry else {
                continue; // an inner list: no directive this cache reads takes one
            };
            let flag = || match item.bare_item {
                sfv::BareItem::Boolean(set) => Some(set),
                _ => None,
            };
            let seconds = || {
                let value = i64::from(item.bare_item.as_integer()?);
                let value = u64::try_from(value).ok()?;
                Some(value.min(crate::backend::MAX_TTL.as_secs()))
            };
            match key.as_str() {
                "no-store" => cc.no_store = flag()?,
                "no-cache" => cc.no_cache = flag()?,
                "private" => cc.private = flag()?,
                "public" => cc.public = flag()?,
                "must-revalidate" | "proxy-revalidate" => cc.must_revalidate |= flag()?,
                "max-age" => cc.max_age = Some(seconds()?),
                "s-maxage" => cc.s_maxage = Some(seconds()?),
                "stale-while-revalidate" => cc.stale_while_revalidate = Some(seconds()?),
                "stale-if-error" => cc.stale_if_error = Some(seconds()?),
                _ => {}
            }
        }
        Some(cc)
    }
}

/// Parses delta-seconds (RFC 9111 §1.2.2): one or more digits. A value past 2^31 s, however many
/// digits it has (even more than a `u64` holds), reads as 2^31 s, as the RFC asks; anything else
/// is `None` (malformed).
pub(crate) fn delta_seconds(text: &str) -> Option<u64> {
    const MAX: u64 = crate::backend::MAX_TTL.as_secs();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // All digits: the only way parsing fails is overflow.
    Some(text.parse::<u64>().map_or(MAX, |seconds| seconds.min(MAX)))
}

/// Splits a header list on commas outside quoted strings, trimmed, without empty elements
/// (RFC 9110 §5.6.1); quoted strings may hold commas (`private="a, b"`, `"a,b"` entity tags).
pub(crate) fn split_list(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, ch) in text.char_indices() {
        match ch {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(values: &[&str]) -> CacheControl {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(CACHE_CONTROL, v.parse().unwrap());
        }
        CacheControl::of(&headers)
    }

    #[test]
    fn reads_directives_across_fields_and_cases() {
        let cc = parse(&["Public, max-age=60", "S-MaxAge=\"120\""]);
        assert!(cc.public && !cc.private && !cc.no_store);
        assert_eq!((cc.max_age, cc.s_maxage), (Some(60), Some(120)));
        let cc = parse(&["private=\"set-cookie, x\", no-store"]);
        assert!(cc.private && cc.no_store);
        assert_eq!(parse(&["max-age=abc"]).max_age, Some(0));
        assert_eq!(
            parse(&["max-age=5, max-age=1"]).max_age,
            Some(5),
            "first wins"
        );
        let cc = parse(&["max-stale, min-fresh=3, only-if-cached, stale-if-error=9"]);
        assert_eq!(cc.max_stale, Some(None));
        assert_eq!((cc.min_fresh, cc.stale_if_error), (Some(3), Some(9)));
        assert!(cc.only_if_cached);
        assert_eq!(parse(&["max-stale=7"]).max_stale, Some(Some(7)));
        let cc = parse(&["max-age=1, stale-while-revalidate=30, proxy-revalidate"]);
        assert_eq!(cc.stale_while_revalidate, Some(30));
        assert!(cc.must_revalidate);
    }

    #[test]
    fn targeted_fields_are_structured_dictionaries() {
        let field = HeaderName::from_static("cdn-cache-control");
        let targeted = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(&field, value.parse().unwrap());
            CacheControl::of_targeted(&headers, &field)
        };
        let cc = targeted("max-age=60, stale-if-error=5, must-revalidate").unwrap();
        assert_eq!((cc.max_age, cc.stale_if_error), (Some(60), Some(5)));
        assert!(cc.must_revalidate);
        assert!(targeted("no-store").unwrap().no_store);
        assert_eq!(targeted("max-age=10000, &&&&&"), None, "not a dictionary");
        assert_eq!(
            targeted("max-age=\"10000\""),
            None,
            "a string where an integer goes"
        );
        assert_eq!(targeted("max-age=-1"), None);
        assert!(CacheControl::of_targeted(&HeaderMap::new(), &field).is_none());
    }

    #[test]
    fn huge_delta_seconds_read_as_two_to_the_31() {
        const MAX: u64 = 2_147_483_648;
        assert_eq!(parse(&["max-age=99999999999"]).max_age, Some(MAX));
        assert_eq!(parse(&["max-age=99999999999999999999"]).max_age, Some(MAX));
        assert_eq!(parse(&["s-maxage=2147483649"]).s_maxage, Some(MAX));
        assert_eq!(parse(&["max-age=2147483647"]).max_age, Some(MAX - 1));
        assert_eq!(parse(&["max-age=+5"]).max_age, Some(0), "not delta-seconds");
        assert_eq!(parse(&["max-age="]).max_age, Some(0));
    }
}
