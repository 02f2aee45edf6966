//! `codec` and `version` on values and on HTTP handlers; must compile without warnings.
#![deny(warnings)]

use cache_runtime::cached;

#[cached(ttl = 60, backend = "redis", codec = "msgpack", version = 3)]
pub async fn packed(id: u64) -> Vec<u64> {
    vec![id]
}

#[cached(ttl = 60, codec = "json", version = 4_294_967_295u32)]
pub async fn readable(id: u64) -> String {
    id.to_string()
}

#[cached(http, ttl = 60, codec = "json", version = 1)]
pub async fn page() -> &'static str {
    "page"
}

fn main() {
    let _ = packed_key(1);
    let _ = readable_key(1);
}
