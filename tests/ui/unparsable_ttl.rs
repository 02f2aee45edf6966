use cache_runtime::cached;

#[cached(ttl = "5 minutes")]
async fn f(n: u64) -> u64 {
    n
}

fn main() {}
