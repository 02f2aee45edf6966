//! Everything the attribute accepts, together; must compile without warnings.
#![deny(warnings)]

use cache_runtime::cached;
use serde::Serialize;

struct Pool;

#[derive(Serialize)]
struct Query {
    org: String,
    page: u32,
}

/// Documented, public, with a pool that the explicit key leaves out.
#[cached(ttl = "1h30m", backend = "redis", key = "q:{q.org}:{q.page}", group = "org:{q.org}", group = "queries")]
pub async fn search(pool: &Pool, q: &Query) -> Result<Vec<String>, std::io::Error> {
    let _ = pool;
    Ok(vec![q.org.clone()])
}

#[cached(ttl = 5, backend = "file", cache_none = false, name = "lookup_v2", spawn = false)]
pub(crate) async fn lookup<'a>(mut id: u64, label: &'a str) -> Option<String> {
    id += 1;
    Some(format!("{label}{id}"))
}

struct Service;

impl Service {
    #[cached(ttl = 10, cache_err = true)]
    async fn method(&self, n: u32) -> Result<u32, String> {
        Ok(n)
    }
}

fn main() {
    let _ = search_key(&Pool, &Query { org: "a".into(), page: 1 });
    let _ = lookup_key(1, "x");
    let _ = Service::method_key(1);
    let _ = Service.method(1);
    let _ = lookup_invalidate(1, "x");
}
