use cache_runtime::cached;

#[cached(ttl = 0)]
async fn f(n: u64) -> u64 {
    n
}

fn main() {}
