use cache_runtime::cache_invalidate;

#[cache_invalidate(http)]
async fn update() -> &'static str {
    "ok"
}

fn main() {}
