#![allow(async_fn_in_trait)]
use cache_runtime::{cached, cached_impl};

pub trait Size {
    async fn size(&self) -> usize;
}

#[cached_impl]
impl<T: AsRef<str>> Size for T {
    #[cached(ttl = 60, key = "size")]
    async fn size(&self) -> usize {
        self.as_ref().len()
    }
}

fn main() {}
