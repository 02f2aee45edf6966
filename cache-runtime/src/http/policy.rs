//! The rules of RFC 9111 for a shared cache: how old a response is (§4.2.3), how long it is fresh
//! (§4.2.1, §4.2.2), and whether a stored response may answer a request as it is, stale, or only
//! after revalidation (§4.2.4, §4.3, RFC 5861). Pure functions of headers and times.

use axum::http::{header, HeaderMap, HeaderName};
use serde::{Deserialize, Serialize};

use super::cache_control::{delta_seconds, CacheControl};

/// Statuses that are heuristically cacheable (RFC 9110 §15.1): without explicit freshness, only
/// these may be given a heuristic (or default) lifetime.
pub(crate) fn heuristically_cacheable(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Statuses defined by RFC 9110 and the registry (whose caching rules this cache knows).
pub(crate) fn understood(status: u16) -> bool {
    matches!(
        status,
        200..=208 | 226 | 300..=308 | 400..=418 | 421..=426 | 428 | 429 | 431 | 451 | 500..=508 | 510 | 511
    )
}

/// The first `name` field as an HTTP date (IMF-fixdate, RFC 850 or asctime, RFC 9110 §5.6.7), in
/// seconds since the Unix epoch. `Err(())` when present but not a date.
pub(crate) fn date_field(headers: &HeaderMap, name: &HeaderName) -> Option<Result<u64, ()>> {
    let value = headers.get(name)?;
    Some(value.to_str().ok().and_then(parse_date).ok_or(()))
}

/// An HTTP date in seconds since the Unix epoch. Names in the wrong case (`THU`, `aug`, `gmt`),
/// which some senders produce, are read as well (RFC 9110 §5.6.7 asks recipients to be lenient).
pub(crate) fn parse_date(text: &str) -> Option<u64> {
    let text = text.trim();
    let seconds = |text: &str| {
        let time = httpdate::parse_http_date(text).ok()?;
        Some(time.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs())
    };
    seconds(text).or_else(|| seconds(&canonical_case(text)))
}

/// `Thu`, `Aug`, `GMT`: day and month names capitalised, the zone in capitals.
fn canonical_case(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word_start = true;
    for ch in text.chars() {
        if ch.is_ascii_alphabetic() {
            out.push(if word_start {
                ch.to_ascii_uppercase()
            } else {
                ch.to_ascii_lowercase()
            });
            word_start = false;
        } else {
            out.push(ch);
            word_start = true;
        }
    }
    out.replace("Gmt", "GMT")
}

/// `secs` since the Unix epoch as an IMF-fixdate.
pub(crate) fn format_date(secs: u64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// When a request went to the origin and when its response arrived (ms since the Unix epoch).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exchange {
    pub(crate) request_ms: u64,
    pub(crate) response_ms: u64,
}

impl Exchange {
    /// The corrected initial age of a response (RFC 9111 §4.2.3), in ms: the larger of its
    /// apparent age (by its `Date`) and its `Age` plus the time the exchange took. The response
    /// time is taken in whole seconds for the apparent age, as `Date` is, so that a response
    /// made a fraction of a second after its `Date` second does not start out older.
    pub(crate) fn initial_age_ms(&self, headers: &HeaderMap) -> u64 {
        let apparent = match date_field(headers, &header::DATE) {
            Some(Ok(date)) => (self.response_ms / 1000).saturating_sub(date) * 1000,
            _ => 0,
        };
        // One delta-seconds; of a list (`7200, 0`) the first counts, the oldest claim.
        let age_value = headers
            .get(header::AGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|text| delta_seconds(text.split(',').next().unwrap_or("").trim()))
            .unwrap_or(0);
        let delay = self.response_ms.saturating_sub(self.request_ms);
        let corrected = age_value.saturating_mul(1000).saturating_add(delay);
        apparent.max(corrected)
    }
}

/// Where a lifetime comes from when the response states none.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Heuristic {
    /// The app's own routes: the layer's TTL, for `200`, `203` and `204` only: an error or
    /// redirect of the app is not kept on a guess.
    Ttl(u64),
    /// In front of another origin: 10 % of the time since `Last-Modified` (RFC 9111 §4.2.2),
    /// at most this many seconds.
    LastModified { cap_secs: u64 },
}

/// The freshness lifetime of a response in ms (RFC 9111 §4.2.1), `None` when it has none at all
/// (no explicit freshness and no heuristic applies). `cc` are the directives this cache follows
/// (`Cache-Control`, or a targeted field), `expires` whether `Expires` counts.
pub(crate) fn lifetime_ms(
    status: u16,
    headers: &HeaderMap,
    cc: &CacheControl,
    expires: bool,
    response_ms: u64,
    heuristic: Heuristic,
) -> Option<u64> {
    if let Some(seconds) = cc.s_maxage.or(cc.max_age) {
        return Some(seconds.saturating_mul(1000));
    }
    let date = match date_field(headers, &header::DATE) {
        Some(Ok(date)) => date,
        _ => response_ms / 1000,
    };
    if expires {
        match date_field(headers, &header::EXPIRES) {
            // An invalid date, such as "0", means already expired (RFC 9111 §5.3).
            Some(Err(())) => return Some(0),
            Some(Ok(at)) => return Some(at.saturating_sub(date).saturating_mul(1000)),
            None => {}
        }
    }
    if !(heuristically_cacheable(status) || cc.public) {
        return None;
    }
    match heuristic {
        Heuristic::Ttl(0) => None,
        Heuristic::Ttl(_) if !matches!(status, 200 | 203 | 204) => None,
        Heuristic::Ttl(secs) => Some(secs.saturating_mul(1000)),
        Heuristic::LastModified { cap_secs } => match date_field(headers, &header::LAST_MODIFIED) {
            Some(Ok(modified)) if modified < date => {
                Some(((date - modified) / 10).min(cap_secs).saturating_mul(1000))
            }
            _ => None,
        },
    }
}

/// What a stored response says about its own reuse, kept with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Rules {
    /// `no-cache`: every reuse is validated first.
    #[serde(default)]
    pub(crate) no_cache: bool,
    /// `must-revalidate`, `proxy-revalidate` or `s-maxage`: never served stale.
    #[serde(default)]
    pub(crate) must_revalidate: bool,
    /// RFC 5861 windows past freshness, in seconds.
    #[serde(default)]
    pub(crate) stale_while_revalidate: u64,
    #[serde(default)]
    pub(crate) stale_if_error: u64,
}

impl Rules {
    pub(crate) fn of(cc: &CacheControl) -> Self {
        Self {
            no_cache: cc.no_cache,
            must_revalidate: cc.must_revalidate || cc.s_maxage.is_some(),
            stale_while_revalidate: cc.stale_while_revalidate.unwrap_or(0),
            stale_if_error: cc.stale_if_error.unwrap_or(0),
        }
    }
}

/// How a stored response may answer a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reuse {
    /// Fresh enough for the request: serve it.
    Fresh,
    /// Stale, but the request accepts it (`max-stale`): serve it.
    StaleAccepted,
    /// Stale within its stale-while-revalidate window: serve it and revalidate in the background.
    StaleWhileRevalidate,
    /// Validate it with the origin first (or fetch anew when it has no validator).
    Revalidate,
}

/// The layer's own stale windows (added to the response's directives, the larger wins).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Windows {
    pub(crate) stale_while_revalidate_ms: u64,
    pub(crate) stale_if_error_ms: u64,
    /// Past freshness, how long a response stands in for an origin that cannot be reached.
    pub(crate) unreachable_ms: u64,
}

/// Whether a stored response `age_ms` old with `lifetime_ms` of freshness may answer a request
/// with directives `request` (RFC 9111 §4.2.4, §5.2.1; RFC 5861 §3).
pub(crate) fn reuse(
    age_ms: u64,
    lifetime_ms: u64,
    rules: Rules,
    request: &CacheControl,
    windows: Windows,
) -> Reuse {
    if rules.no_cache || request.no_cache {
        return Reuse::Revalidate;
    }
    let fresh = age_ms < lifetime_ms;
    let too_old = request
        .max_age
        .is_some_and(|max| age_ms > max.saturating_mul(1000));
    let too_close = request
        .min_fresh
        .is_some_and(|min| lifetime_ms.saturating_sub(age_ms) < min.saturating_mul(1000));
    if fresh && !too_old && !too_close {
        return Reuse::Fresh;
    }
    if rules.must_revalidate {
        return Reuse::Revalidate;
    }
    let staleness = age_ms.saturating_sub(lifetime_ms);
    if !fresh && !too_old {
        let accepted = match request.max_stale {
            Some(None) => true,
            Some(Some(max)) => staleness <= max.saturating_mul(1000),
            None => false,
        };
        if accepted {
            return Reuse::StaleAccepted;
        }
    }
    let window =
        (rules.stale_while_revalidate.saturating_mul(1000)).max(windows.stale_while_revalidate_ms);
    if !fresh && staleness < window && request.max_age.is_none() && request.min_fresh.is_none() {
        return Reuse::StaleWhileRevalidate;
    }
    Reuse::Revalidate
}

/// Whether a stale response may stand in for an origin that failed: within a `stale-if-error`
/// window (RFC 5861 §4: the response's, the request's or the layer's), or, when the origin could
/// not be reached (`unreachable`), within the layer's window for that (RFC 9111 §4.2.4) if the
/// response was ever fresh. Never against the response's `must-revalidate` / `no-cache` or the
/// request's `no-cache`, `min-fresh` or a `max-age` it is older than.
pub(crate) fn stale_if_error(
    age_ms: u64,
    lifetime_ms: u64,
    rules: Rules,
    request: &CacheControl,
    windows: Windows,
    unreachable: bool,
) -> bool {
    if rules.must_revalidate || rules.no_cache || request.no_cache || request.min_fresh.is_some() {
        return false;
    }
    if request
        .max_age
        .is_some_and(|max| age_ms > max.saturating_mul(1000))
    {
        return false;
    }
    let mut window = (rules.stale_if_error.saturating_mul(1000))
        .max(windows.stale_if_error_ms)
        .max(request.stale_if_error.unwrap_or(0).saturating_mul(1000));
    if unreachable && lifetime_ms > 0 {
        window = window.max(windows.unreachable_ms);
    }
    age_ms.saturating_sub(lifetime_ms) < window
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn initial_age_counts_the_received_age_and_the_date() {
        let exchange = Exchange {
            request_ms: NOW * 1000,
            response_ms: NOW * 1000 + 200,
        };
        let h = headers(&[("age", "7200")]);
        assert_eq!(exchange.initial_age_ms(&h), 7_200_200);
        let h = headers(&[("date", &format_date(NOW - 10))]);
        assert_eq!(exchange.initial_age_ms(&h), 10_000);
        let h = headers(&[("date", &format_date(NOW))]);
        assert_eq!(
            exchange.initial_age_ms(&h),
            200,
            "a fraction of the Date second"
        );
    }

    #[test]
    fn lifetimes_explicit_expires_and_heuristic() {
        let life = |pairs: &[(&'static str, &str)], status, heuristic| {
            let h = headers(pairs);
            lifetime_ms(
                status,
                &h,
                &CacheControl::of(&h),
                true,
                NOW * 1000,
                heuristic,
            )
        };
        let proxy = Heuristic::LastModified { cap_secs: 86_400 };
        assert_eq!(
            life(&[("cache-control", "max-age=5, s-maxage=9")], 200, proxy),
            Some(9_000)
        );
        let expires = format_date(NOW + 60);
        assert_eq!(life(&[("expires", &expires)], 200, proxy), Some(60_000));
        assert_eq!(life(&[("expires", "0")], 200, proxy), Some(0));
        assert_eq!(life(&[], 200, proxy), None);
        assert_eq!(life(&[], 200, Heuristic::Ttl(30)), Some(30_000));
        assert_eq!(
            life(&[], 201, Heuristic::Ttl(30)),
            None,
            "201 is not heuristic"
        );
        let modified = format_date(NOW - 1000);
        assert_eq!(
            life(&[("last-modified", &modified)], 200, proxy),
            Some(100_000)
        );
        assert_eq!(life(&[("last-modified", &modified)], 500, proxy), None);
    }

    #[test]
    fn reuse_follows_request_and_response_directives() {
        let req = |text: &str| CacheControl::of(&headers(&[("cache-control", text)]));
        let none = CacheControl::default();
        let rules = Rules::default();
        let w = Windows::default();
        assert_eq!(reuse(1_000, 10_000, rules, &none, w), Reuse::Fresh);
        assert_eq!(reuse(11_000, 10_000, rules, &none, w), Reuse::Revalidate);
        assert_eq!(
            reuse(1_000, 10_000, rules, &req("max-age=0"), w),
            Reuse::Revalidate
        );
        assert_eq!(
            reuse(1_000, 10_000, rules, &req("min-fresh=20"), w),
            Reuse::Revalidate
        );
        assert_eq!(
            reuse(11_000, 10_000, rules, &req("max-stale"), w),
            Reuse::StaleAccepted
        );
        assert_eq!(
            reuse(11_000, 10_000, rules, &req("max-stale=0"), w),
            Reuse::Revalidate
        );
        let strict = Rules {
            must_revalidate: true,
            ..rules
        };
        assert_eq!(
            reuse(11_000, 10_000, strict, &req("max-stale"), w),
            Reuse::Revalidate
        );
        let swr = Rules {
            stale_while_revalidate: 30,
            ..rules
        };
        assert_eq!(
            reuse(11_000, 10_000, swr, &none, w),
            Reuse::StaleWhileRevalidate
        );
        assert_eq!(reuse(41_000, 10_000, swr, &none, w), Reuse::Revalidate);
        let no_cache = Rules {
            no_cache: true,
            ..rules
        };
        assert_eq!(reuse(0, 10_000, no_cache, &none, w), Reuse::Revalidate);
        assert!(stale_if_error(
            11_000,
            10_000,
            rules,
            &req("stale-if-error=5"),
            w,
            false
        ));
        assert!(!stale_if_error(
            11_000,
            10_000,
            strict,
            &req("stale-if-error=5"),
            w,
            false
        ));
        let unreachable = Windows {
            unreachable_ms: 60_000,
            ..w
        };
        assert!(stale_if_error(
            11_000,
            10_000,
            rules,
            &none,
            unreachable,
            true
        ));
        assert!(
            !stale_if_error(11_000, 10_000, rules, &none, unreachable, false),
            "a 503 answered"
        );
        assert!(
            !stale_if_error(1_000, 0, rules, &none, unreachable, true),
            "never fresh"
        );
        assert!(!stale_if_error(
            11_000,
            10_000,
            rules,
            &req("no-cache"),
            unreachable,
            true
        ));
        assert!(!stale_if_error(
            11_000,
            10_000,
            rules,
            &req("max-age=5"),
            unreachable,
            true
        ));
    }
}
