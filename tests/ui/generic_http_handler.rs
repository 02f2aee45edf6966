use cache_runtime::cached;

#[cached(http, ttl = 60)]
async fn page<T: serde::Serialize>() -> String {
    String::new()
}

fn main() {}
