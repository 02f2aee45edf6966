use cache_runtime::cached;

#[cached(http, ttl = 60, force_refresh = true)]
async fn page() -> String {
    String::new()
}

fn keep(_: &String) -> bool {
    true
}

#[cached(http, ttl = 60, cache_if = keep)]
async fn other() -> String {
    String::new()
}

fn main() {}
