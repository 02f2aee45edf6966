use cache_runtime::cached;

#[cached(ttl = 60, spawn = "no")]
async fn f(n: u64) -> u64 {
    n
}

fn main() {}
