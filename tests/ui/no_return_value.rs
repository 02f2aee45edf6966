use cache_runtime::cached;

#[cached(ttl = 60)]
async fn f(n: u64) {
    let _ = n;
}

fn main() {}
