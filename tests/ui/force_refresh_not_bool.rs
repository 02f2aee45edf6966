use cache_runtime::cached;

#[cached(ttl = 60, skip = [fresh], force_refresh = fresh)]
async fn load(id: u64, fresh: u8) -> u64 {
    let _ = fresh;
    id
}

fn main() {}
