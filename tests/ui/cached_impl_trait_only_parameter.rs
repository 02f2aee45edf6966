#![allow(async_fn_in_trait)]
use cache_runtime::{cached, cached_impl};

pub trait Load<T> {
    async fn load(&self, id: u64) -> u64;
}

pub struct Db;

#[cached_impl]
impl<T> Load<T> for Db {
    #[cached(ttl = 60)]
    async fn load(&self, id: u64) -> u64 {
        id
    }
}

fn main() {}
