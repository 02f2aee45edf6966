use cache_runtime::cached;

struct Pool;

#[cached(ttl = 60, key = "pool:{pool}")]
async fn f(pool: &Pool, id: u64) -> u64 {
    id
}

fn main() {}
