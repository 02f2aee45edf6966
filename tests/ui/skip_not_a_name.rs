use cache_runtime::cached;

#[cached(ttl = 60, skip = ["db"])]
async fn load(db: u64, id: u64) -> u64 {
    db + id
}

#[cached(ttl = 60, skip = [id, id])]
async fn twice(id: u64) -> u64 {
    id
}

fn main() {}
