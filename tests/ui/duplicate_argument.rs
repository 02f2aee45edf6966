use cache_runtime::cached;

#[cached(ttl = 60, backend = "redis", backend = "memory")]
async fn f(n: u64) -> u64 {
    n
}

fn main() {}
