//! A cached value must be serializable: the error is on the return type.
use cache_runtime::cached;

#[derive(Clone, serde::Deserialize)]
struct User {
    id: u64,
}

#[cached(ttl = 60)]
async fn load(id: u64) -> User {
    User { id }
}

fn main() {}
