#![allow(async_fn_in_trait)]
use cache_runtime::cached;

pub trait Repo {
    async fn load(&self, id: u64) -> u64;
}

pub struct Db;

impl Repo for Db {
    #[cached(ttl = 60)]
    async fn load(&self, id: u64) -> u64 {
        id
    }
}

fn main() {}
