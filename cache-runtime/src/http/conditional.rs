//! Entity tags and `If-None-Match` (RFC 9110 §8.8.3, §13.1.2).

use axum::http::HeaderValue;

use super::cache_control::split_list;
use sha2::{Digest, Sha256};

/// A strong entity tag for a representation: the SHA-256 of the headers that identify the
/// representation and of the body, quoted. The same content gives the same tag in every process.
pub(crate) fn strong_etag(representation: &[(&str, &[u8])], body: &[u8]) -> String {
    let mut hasher = Sha256::new();
    for (name, value) in representation {
        hasher.update(name.as_bytes());
        hasher.update(b":");
        hasher.update(value);
        hasher.update(b"\n");
    }
    hasher.update(body);
    let digest = hasher.finalize();
    let mut tag = String::with_capacity(34);
    tag.push('"');
    for byte in &digest[..16] {
        tag.push_str(&format!("{byte:02x}"));
    }
    tag.push('"');
    tag
}

/// Whether `If-None-Match` (all of its fields) matches `etag` with the weak comparison that RFC 9110
/// prescribes for this header: `*` matches any tag, `W/` prefixes are ignored.
pub(crate) fn none_match(if_none_match: &[HeaderValue], etag: &str) -> bool {
    let ours = opaque(etag.trim());
    if_none_match.iter().any(|value| {
        let Ok(text) = value.to_str() else {
            return false;
        };
        if text.trim() == "*" {
            return true;
        }
        !ours.is_empty() && split_list(text).into_iter().any(|tag| opaque(tag) == ours)
    })
}

/// The opaque part of an entity tag: without `W/`, quotes kept.
fn opaque(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inm(values: &[&str]) -> Vec<HeaderValue> {
        values.iter().map(|v| v.parse().unwrap()).collect()
    }

    #[test]
    fn matches_exact_weak_listed_and_star() {
        let etag = "\"abc\"";
        assert!(none_match(&inm(&["\"abc\""]), etag));
        assert!(none_match(&inm(&["W/\"abc\""]), etag));
        assert!(none_match(&inm(&["\"x\", W/\"abc\""]), etag));
        assert!(none_match(&inm(&["\"x\"", "\"abc\""]), etag));
        assert!(none_match(&inm(&["*"]), etag));
        assert!(!none_match(&inm(&["\"abd\""]), etag));
        assert!(!none_match(&inm(&["abc"]), etag));
        assert!(!none_match(&inm(&[]), etag));
        assert!(!none_match(&inm(&["\"a,bc\""]), etag));
        assert!(none_match(&inm(&["\"a,bc\""]), "\"a,bc\""));
    }

    #[test]
    fn etags_depend_on_body_and_representation() {
        let a = strong_etag(&[("content-type", b"text/plain")], b"hi");
        assert_eq!(a, strong_etag(&[("content-type", b"text/plain")], b"hi"));
        assert_ne!(a, strong_etag(&[("content-type", b"text/html")], b"hi"));
        assert_ne!(a, strong_etag(&[("content-type", b"text/plain")], b"ho"));
        assert!(a.starts_with('"') && a.ends_with('"') && a.len() == 34);
    }
}
