use cache_runtime::cached;

struct Db;

#[cached(ttl = 60, key = "user:{id}", skip = [db])]
async fn load(db: &Db, id: u64) -> u64 {
    let _ = db;
    id
}

fn main() {}
