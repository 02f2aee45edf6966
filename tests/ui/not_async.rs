use cache_runtime::cached;

#[cached(ttl = 60)]
fn f(n: u64) -> u64 {
    n
}

fn main() {}
