//! `#[cached_impl]` on trait impls (native `async fn`, `#[async_trait]`, generic, without
//! companions, with another visibility); must compile without warnings.
#![deny(warnings)]
#![allow(async_fn_in_trait)]

use cache_runtime::{cache_invalidate, cached, cached_impl};

pub trait Repo {
    async fn load(&self, id: u64) -> Result<String, std::io::Error>;
    async fn all() -> Vec<u64>;
    async fn save(&self, id: u64) -> Result<(), std::io::Error>;
}

pub struct Db;

#[cached_impl]
impl Repo for Db {
    #[cached(ttl = 60, key = "load:{id}", group = "loads", stale = "5s")]
    async fn load(&self, id: u64) -> Result<String, std::io::Error> {
        Ok(id.to_string())
    }

    #[cached(ttl = 60)]
    async fn all() -> Vec<u64> {
        vec![1]
    }

    #[cache_invalidate(key = "load:{id}")]
    async fn save(&self, id: u64) -> Result<(), std::io::Error> {
        let _ = id;
        Ok(())
    }
}

#[async_trait::async_trait]
pub trait Remote: Send + Sync {
    async fn fetch(&self, id: u64) -> u64;
}

pub struct Client;

#[cached_impl(vis = "pub(crate)")]
#[async_trait::async_trait]
impl Remote for Client {
    #[cached(ttl = 60, backend = "redis", lock)]
    async fn fetch(&self, id: u64) -> u64 {
        id
    }
}

/// A blanket impl: no type to put companions in.
pub trait Blanket {
    async fn size(&self) -> usize;
}

#[cached_impl(companions = false)]
impl<T: AsRef<str> + Sync> Blanket for T {
    #[cached(ttl = 60, key = "size")]
    async fn size(&self) -> usize {
        self.as_ref().len()
    }
}

pub struct Wrapper<T>(pub T);

#[cached_impl]
impl<T: Send + Sync + 'static> Repo for Wrapper<T> {
    #[cached(ttl = 60)]
    async fn load(&self, id: u64) -> Result<String, std::io::Error> {
        Ok(format!("{}{id}", std::any::type_name::<T>()))
    }

    #[cached(ttl = 60, name = "wrapper_all")]
    async fn all() -> Vec<u64> {
        Vec::new()
    }

    async fn save(&self, id: u64) -> Result<(), std::io::Error> {
        let _ = id;
        Ok(())
    }
}

/// `#[cached_impl]` on an inherent impl is allowed (and not needed).
pub struct Plain;

#[cached_impl]
impl Plain {
    #[cached(ttl = 60)]
    pub async fn get(&self, id: u64) -> u64 {
        id
    }
}

fn main() {
    let _ = Db::load_key(1);
    let _ = Db::all_key();
    let _ = Db::load_peek(1);
    let _ = Db::load_prime(1, Ok("x".into()));
    let _ = Db.load_refresh(1);
    let _ = Db::all_refresh();
    let _ = Client::fetch_invalidate(1);
    let _ = Client.fetch_refresh(1);
    let _ = Wrapper::<u8>::load_key(1);
    let _ = Wrapper::<u8>::all_peek();
    let _ = Plain::get_key(1);
    let _ = Plain.get_refresh(1);
    let _ = "x".size();
    let _ = cache_runtime::refresh("x".size());
    let _ = Db.save(1);
}
