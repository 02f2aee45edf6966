use cache_runtime::cached;

#[cached(ttl = 60, version = "2")]
async fn quoted(id: u64) -> u64 {
    id
}

#[cached(ttl = 60, version = -1)]
async fn negative(id: u64) -> u64 {
    id
}

#[cached(ttl = 60, version = 4294967296)]
async fn too_large(id: u64) -> u64 {
    id
}

#[cached(ttl = 60, version = 1.5)]
async fn fractional(id: u64) -> u64 {
    id
}

#[cached(ttl = 60, version = 2u8)]
async fn other_type(id: u64) -> u64 {
    id
}

fn main() {}
