use cache_runtime::cached;

struct Db;

#[cached(ttl = 60, skip = [dbs])]
async fn load(db: &Db, id: u64) -> u64 {
    let _ = db;
    id
}

struct Service;

impl Service {
    #[cached(ttl = 60, skip = [self])]
    async fn get(&self, id: u64) -> u64 {
        id
    }
}

fn main() {}
