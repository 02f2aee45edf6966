use std::time::Duration;

use cache_runtime::cached;

fn lifetime(_: &String) -> Duration {
    Duration::from_secs(1)
}

#[cached(http, ttl = 60, ttl_from = lifetime)]
async fn page() -> String {
    "page".into()
}

fn main() {}
