use cache_runtime::cached;

#[cached(ttl = 60, crate = "not_the_runtime")]
async fn load(id: u64) -> u64 {
    id
}

#[cached(ttl = 60, crate = "1 + 2")]
async fn other(id: u64) -> u64 {
    id
}

fn main() {}
