use cache_runtime::cached;

#[cached(ttl = 60, cache_if = true)]
async fn load(id: u64) -> u64 {
    id
}

fn main() {}
