//! A type parameter that is not `Serialize` cannot enter the default key: an error on the argument.
use cache_runtime::cached;

#[cached(ttl = 60)]
async fn f<T: Clone>(value: T) -> u64 {
    1
}

fn main() {}
