use std::time::Duration;

use cache_runtime::cached;

fn seconds(n: &u64) -> u64 {
    *n
}

#[cached(ttl = 60, ttl_from = seconds)]
async fn load(id: u64) -> Result<u64, String> {
    Ok(id)
}

fn by_string(_: &String) -> Duration {
    Duration::from_secs(1)
}

#[cached(ttl = 60, ttl_from = by_string)]
async fn other(id: u64) -> u64 {
    id
}

fn main() {}
