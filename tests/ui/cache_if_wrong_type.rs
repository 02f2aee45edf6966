use cache_runtime::cached;

fn by_value(n: u64) -> bool {
    n > 0
}

fn wrong_type(n: &String) -> bool {
    !n.is_empty()
}

#[cached(ttl = 60, cache_if = by_value)]
async fn load(id: u64) -> Result<u64, String> {
    Ok(id)
}

#[cached(ttl = 60, cache_if = wrong_type)]
async fn other(id: u64) -> u64 {
    id
}

fn main() {}
