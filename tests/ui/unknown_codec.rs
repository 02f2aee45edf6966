use cache_runtime::cached;

#[cached(ttl = 60, codec = "postcard")]
async fn load(id: u64) -> u64 {
    id
}

#[cached(ttl = 60, codec = json)]
async fn load_ident(id: u64) -> u64 {
    id
}

fn main() {}
