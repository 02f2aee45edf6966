use cache_runtime::cache_invalidate;

#[cache_invalidate(group = "user:{user}")]
async fn update(id: u64) -> Result<(), String> {
    let _ = id;
    Ok(())
}

fn main() {}
