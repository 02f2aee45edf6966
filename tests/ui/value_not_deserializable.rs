//! A cached value is read back from its backend: it must be deserializable. The error is on the
//! return type.
use cache_runtime::cached;

#[derive(Clone, serde::Serialize)]
struct User {
    id: u64,
}

#[cached(ttl = 60)]
async fn load(id: u64) -> User {
    User { id }
}

fn main() {}
