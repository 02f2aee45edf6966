use cache_runtime::cached;

struct S;

impl S {
    #[cached(http, ttl = 60)]
    async fn handler(&self) -> String {
        String::new()
    }
}

fn main() {}
