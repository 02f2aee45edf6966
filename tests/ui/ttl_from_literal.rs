use cache_runtime::cached;

#[cached(ttl = 60, ttl_from = 30)]
async fn load(id: u64) -> u64 {
    id
}

fn main() {}
