use cache_runtime::{cached, cached_impl};

#[async_trait::async_trait]
pub trait Repo: Send + Sync {
    async fn load(&self, id: u64) -> u64;
}

pub struct Db;

// `#[async_trait]` first: it has boxed the future before `#[cached_impl]` runs.
#[async_trait::async_trait]
#[cached_impl]
impl Repo for Db {
    #[cached(ttl = 60)]
    async fn load(&self, id: u64) -> u64 {
        id
    }
}

pub struct Other;

// No `#[cached_impl]` at all.
#[async_trait::async_trait]
impl Repo for Other {
    #[cached(ttl = 60)]
    async fn load(&self, id: u64) -> u64 {
        id
    }
}

fn main() {}
