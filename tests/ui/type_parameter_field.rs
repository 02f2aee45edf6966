use cache_runtime::cached;

#[cached(ttl = 60, key = "row:{T.name}")]
async fn row<T: serde::Serialize + serde::de::DeserializeOwned + Clone + Default + Send + Sync + 'static>() -> T {
    T::default()
}

fn main() {}
