use cache_runtime::cached;

#[cached(ttl = 60)]
async fn echo<T: serde::Serialize + Clone + Send + Sync + 'static>(value: T) -> T {
    value
}

fn main() {}
