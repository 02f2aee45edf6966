use cache_runtime::cached;

#[cached(ttl = 60, group = "org:{org}")]
async fn f(id: u64) -> u64 {
    id
}

fn main() {}
