use cache_runtime::cached;

#[cached(ttl = 60, force_refresh = fresh)]
async fn load(id: u64, fresh: bool) -> u64 {
    let _ = fresh;
    id
}

#[cached(ttl = 60, key = "user:{id}:{fresh}", force_refresh = fresh)]
async fn templated(id: u64, fresh: bool) -> u64 {
    id
}

fn main() {}
