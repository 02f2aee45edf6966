use cache_runtime::cached;

struct Db;
struct Client;

// `client` is not skipped: it is still part of the default key.
#[cached(ttl = 60, skip = [db])]
async fn load(db: &Db, client: &Client, id: u64) -> u64 {
    let _ = (db, client);
    id
}

fn main() {}
