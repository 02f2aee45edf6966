use cache_runtime::cached;

#[cached(ttl = 60)]
async fn f(value: impl serde::Serialize) -> u64 {
    let _ = value;
    1
}

fn main() {}
