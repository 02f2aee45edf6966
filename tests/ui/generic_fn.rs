use cache_runtime::cached;

#[cached(ttl = 60)]
async fn f<T: Clone>(value: T) -> u64 {
    1
}

fn main() {}
