use cache_runtime::cached;

#[cached(ttl = 60)]
async fn load(id: u64) -> Result<String, std::io::Error> {
    Ok(id.to_string())
}

fn main() {
    // `prime` takes what the fn returns: `Ok(..)` here.
    let _ = load_prime(1, "one".to_string());
}
