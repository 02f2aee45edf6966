use cache_runtime::cached;

#[cached(ttl = 60, ttl_secs = 5)]
async fn f(n: u64) -> u64 {
    n
}

fn main() {}
