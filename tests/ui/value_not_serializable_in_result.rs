//! A `Result` caches its `Ok` value, which must be serializable: the error is on the return type.
use cache_runtime::cached;

#[derive(Clone, serde::Deserialize)]
struct User {
    id: u64,
}

#[derive(Debug)]
struct DbError;

#[cached(ttl = 60)]
async fn load(id: u64) -> Result<User, DbError> {
    Ok(User { id })
}

fn main() {}
