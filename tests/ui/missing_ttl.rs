use cache_runtime::cached;

#[cached(backend = "memory")]
async fn f(n: u64) -> u64 {
    n
}

fn main() {}
