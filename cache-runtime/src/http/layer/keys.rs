//! The keys of a layer's entries: a request's base key, its `Vary` variants and side entries.
//!
//! A base key is `http:<name>:<target>` with both parts escaped (`:` among the escaped
//! characters). Side entries append `:v:<hash>` (a variant: the values of the `Vary` headers and
//! of the cookies the layer varies on) or `:g` (groups from a response header), which no base key
//! can end with: every key is addressed by one request shape only. Removing a base key removes
//! every variant of it.

use axum::{
    extract::OriginalUri,
    http::{header, request::Parts, HeaderMap, HeaderValue, Request, Uri},
};

use super::{CacheLayer, Cookies};
use crate::{
    http::cache_control::split_list,
    key::{escape_into, normalize_key, DefaultKey},
};

/// Whether the request's cookies make it bypass the cache.
pub(super) fn cookie_bypass(config: &CacheLayer, parts: &Parts) -> bool {
    config.cookies == Cookies::Bypass && parts.headers.contains_key(header::COOKIE)
}

/// Whether the request's host can go into its key: an authority (`host[:port]`, an IP literal),
/// with none of the characters that end one (`/`, `?`, `#`, `@`, spaces). A `Host` of
/// `example.test/admin` would otherwise file a response for `/products` under the key of
/// `example.test` + `/admin/products`: such requests pass the cache by. A layer with its own
/// [`cache_key`](CacheLayer::cache_key) puts no host in its keys.
pub(super) fn host_is_authority(config: &CacheLayer, parts: &Parts) -> bool {
    // A `Host` field that is not visible ASCII would key as no host at all.
    let readable = parts
        .headers
        .get(header::HOST)
        .is_none_or(|host| host.to_str().is_ok());
    config.cache_key.is_some()
        || readable
            && host(parts).bytes().all(|byte| {
                byte.is_ascii_alphanumeric()
                    || matches!(
                        byte,
                        b'-' | b'.'
                            | b'_'
                            | b'~'
                            | b'!'
                            | b'$'
                            | b'&'
                            | b'\''
                            | b'('
                            | b')'
                            | b'*'
                            | b'+'
                            | b','
                            | b';'
                            | b'='
                            | b':'
                            | b'%'
                            | b'['
                            | b']'
                    )
            })
}

/// What every base key of a layer starts with, `http:<name>:`: escaped once, when the layer is
/// applied.
pub(super) fn head(config: &CacheLayer) -> String {
    let mut head = String::from("http:");
    escape_into(&mut head, &config.name);
    head.push(':');
    head
}

/// The base key of a request (`head`: the layer's [`head`]).
pub(super) fn base(config: &CacheLayer, head: &str, parts: &Parts) -> String {
    let mut key = String::with_capacity(head.len() + 48);
    write_base(config, head, parts, &mut key);
    normalize_key(key)
}

/// Writes the base key of a request as [`base`] does, before a key too long is shortened.
pub(super) fn write_base(
    config: &CacheLayer,
    head: &str,
    parts: &Parts,
    key: &mut impl std::fmt::Write,
) {
    let _ = key.write_str(head);
    match &config.cache_key {
        Some(custom) => escape_into(key, &custom(parts)),
        None => {
            // The default target, `<host><path and query>`, escaped as one text (escaping is
            // per character).
            let uri = original_uri(parts);
            // Host names have no case (RFC 9110 §4.2.3): one key for every spelling.
            let host = host(parts);
            if host.bytes().any(|byte| byte.is_ascii_uppercase()) {
                escape_into(key, &host.to_ascii_lowercase());
            } else {
                escape_into(key, host);
            }
            escape_into(key, uri.path_and_query().map_or("/", |p| p.as_str()));
        }
    }
}

/// Whether the layer's entries are variants even without `Vary` (it varies on cookies).
pub(super) fn always_variants(config: &CacheLayer) -> bool {
    matches!(config.cookies, Cookies::VaryOn(_))
}

/// The base key of another URI on the request's host (a `Location` after a mutation).
pub(super) fn base_of(
    config: &CacheLayer,
    head: &str,
    request: &Parts,
    uri: &str,
) -> Option<String> {
    let path = if uri.starts_with('/') || uri.contains("://") {
        let uri: Uri = uri.parse().ok()?;
        if let Some(authority) = uri.authority() {
            if !authority.as_str().eq_ignore_ascii_case(host(request)) {
                return None; // another origin's URI is not this cache's to invalidate (§4.4)
            }
        }
        uri.path_and_query()?.as_str().to_owned()
    } else if uri.starts_with('?') {
        format!("{}{uri}", original_uri(request).path())
    } else {
        // A relative reference: resolved against the request's path.
        let own = original_uri(request).path();
        format!("{}{uri}", &own[..own.rfind('/').map_or(0, |at| at + 1)])
    };
    let mut builder = Request::builder().uri(path);
    for (name, value) in &request.headers {
        builder = builder.header(name, value);
    }
    // The host as the request's own key has it: its `Host` field, or (HTTP/2) its authority.
    if !request.headers.contains_key(header::HOST) {
        builder = builder.header(header::HOST, host(request));
    }
    let (parts, ()) = builder.body(()).ok()?.into_parts();
    Some(base(config, head, &parts))
}

/// The key of the variant of `base` for a request's values of the `Vary` header names and of the
/// cookies the layer varies on.
pub(super) fn variant(
    config: &CacheLayer,
    base: &str,
    nonce: u64,
    names: &[String],
    headers: &HeaderMap,
) -> String {
    let values: Vec<(&str, Vec<String>)> = names
        .iter()
        .map(|name| (name.as_str(), normalized_values(headers, name)))
        .collect();
    let cookies: Vec<Option<String>> = match &config.cookies {
        Cookies::VaryOn(names) => names.iter().map(|name| cookie(headers, name)).collect(),
        _ => Vec::new(),
    };
    let hash = DefaultKey::new()
        .arg(&nonce)
        .arg(&values)
        .arg(&cookies)
        .finish("vary", "v");
    normalize_key(format!("{base}:v:{}", hash.as_str()))
}

/// The key of the groups a response header named for `base`.
pub(super) fn groups(base: &str) -> String {
    normalize_key(format!("{base}:g"))
}

/// A header's values as a list: every field line, split on commas outside quotes, trimmed, so that
/// `a, b`, `a,b` and two lines `a` / `b` select the same variant (RFC 9110 §5.3).
/// `Accept-Language` tags are compared without case (`en, DE` = `EN, de`); their order stays (a
/// server may break ties between equal weights by it).
fn normalized_values(headers: &HeaderMap, name: &str) -> Vec<String> {
    let lines: Vec<String> = headers.get_all(name).iter().map(visible).collect();
    let mut values: Vec<String> = lines
        .iter()
        .flat_map(|line| split_list(line))
        .map(str::to_owned)
        .collect();
    if name == "accept-language" {
        values.iter_mut().for_each(|tag| tag.make_ascii_lowercase());
    }
    values
}

/// A field value as text, every byte kept: bytes outside visible ASCII (which `to_str` refuses)
/// are written `\xNN` and a backslash `\\`, so that distinct values stay distinct.
fn visible(value: &HeaderValue) -> String {
    let mut text = String::with_capacity(value.len());
    for &byte in value.as_bytes() {
        match byte {
            b'\\' => text.push_str("\\\\"),
            b' '..=b'~' | b'\t' => text.push(char::from(byte)),
            _ => text.push_str(&format!("\\x{byte:02x}")),
        }
    }
    text
}

fn host(parts: &Parts) -> &str {
    parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or("")
}

/// The URI as the client sent it, before a `Router::nest` stripped its prefix.
fn original_uri(parts: &Parts) -> &Uri {
    parts
        .extensions
        .get::<OriginalUri>()
        .map_or(&parts.uri, |original| &original.0)
}

/// The value of cookie `name` in the request's `Cookie` fields.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    let lines: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(visible)
        .collect();
    let found = lines
        .iter()
        .flat_map(|text| text.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| n.trim() == name)
        .map(|(_, v)| v.trim().to_owned());
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = Request::builder().uri(uri);
        for (n, v) in headers {
            builder = builder.header(*n, *v);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn base(layer: &CacheLayer, parts: &Parts) -> String {
        super::base(layer, &head(layer), parts)
    }

    fn base_of(layer: &CacheLayer, request: &Parts, uri: &str) -> Option<String> {
        super::base_of(layer, &head(layer), request, uri)
    }

    #[test]
    fn keys_differ_by_layer_uri_and_cookie_and_never_end_like_a_side_entry() {
        let a = CacheLayer::new().name("a");
        let b = CacheLayer::new().name("b");
        let host = [("host", "example.com")];
        let one = base(&a, &parts("/x?y=1", &host));
        assert_ne!(one, base(&b, &parts("/x?y=1", &host)));
        assert_ne!(one, base(&a, &parts("/x?y=2", &host)));
        // A path that looks like a side entry is escaped.
        let tricky = base(&a, &parts("/x?y=1:g", &host));
        assert_ne!(tricky, groups(&one));
        assert!(cookie_bypass(&a, &parts("/x", &[("cookie", "s=1")])));
        let lang = CacheLayer::new().name("a").vary_on_cookies(["lang"]);
        assert!(!cookie_bypass(&lang, &parts("/x", &[("cookie", "s=1")])));
        let variant_for = |cookie: &str| {
            let request = parts("/x", &[("cookie", cookie)]);
            variant(&lang, "k", 1, &[], &request.headers)
        };
        let fr = variant_for("lang=fr; s=1");
        assert_eq!(fr, variant_for("s=2; lang=fr"));
        assert_ne!(fr, variant_for("lang=de"));
        assert_ne!(fr, variant_for("s=2"));
    }

    #[test]
    fn locations_resolve_on_the_same_host_only() {
        let layer = CacheLayer::new().name("a");
        let request = parts("/items/1", &[("host", "example.com")]);
        let target = Some(base(&layer, &parts("/items/2", &[("host", "example.com")])));
        assert_eq!(base_of(&layer, &request, "/items/2"), target);
        assert_eq!(base_of(&layer, &request, "2"), target);
        let query = Some(base(
            &layer,
            &parts("/items/1?p=2", &[("host", "example.com")]),
        ));
        assert_eq!(base_of(&layer, &request, "?p=2"), query);
        assert_eq!(
            base_of(&layer, &request, "http://example.com/items/2"),
            target
        );
        assert_eq!(
            base_of(&layer, &request, "http://other.example/items/2"),
            None
        );
    }

    fn keys_variant(layer: &CacheLayer, names: &[String], headers: &HeaderMap) -> String {
        variant(layer, "k", 1, names, headers)
    }

    #[test]
    fn vary_values_are_compared_as_lists() {
        let mut one = HeaderMap::new();
        one.append("accept", "a, b".parse().unwrap());
        let mut two = HeaderMap::new();
        two.append("accept", "a".parse().unwrap());
        two.append("accept", "b".parse().unwrap());
        let names = ["accept".to_owned()];
        let layer = CacheLayer::new();
        let variant = |nonce, headers| variant(&layer, "k", nonce, &names, headers);
        assert_eq!(variant(1, &one), variant(1, &two));
        assert_ne!(variant(1, &one), variant(2, &one));
        let languages = ["accept-language".to_owned()];
        let mut en_de = HeaderMap::new();
        en_de.append("accept-language", "en, DE".parse().unwrap());
        let mut de_en = HeaderMap::new();
        de_en.append("accept-language", "de,en".parse().unwrap());
        let key = |headers| keys_variant(&layer, &languages, headers);
        assert_ne!(key(&en_de), key(&de_en), "order is kept");
        let mut upper = HeaderMap::new();
        upper.append("accept-language", "EN, de".parse().unwrap());
        assert_eq!(key(&en_de), key(&upper), "case is not");
        let names = ["x-tenant".to_owned()];
        let tenant = |bytes: &[u8]| {
            let mut headers = HeaderMap::new();
            headers.append("x-tenant", HeaderValue::from_bytes(bytes).unwrap());
            keys_variant(&layer, &names, &headers)
        };
        let cafe = tenant("café".as_bytes());
        assert_ne!(
            cafe,
            tenant("naïve".as_bytes()),
            "non-ASCII values stay distinct"
        );
        assert_ne!(cafe, keys_variant(&layer, &names, &HeaderMap::new()));
        assert_ne!(tenant(b"\\xc3"), tenant(&[0xc3]));
    }
}
