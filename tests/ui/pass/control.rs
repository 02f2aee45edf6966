//! Per-call control and generic fns together; must compile without warnings.
#![deny(warnings)]

use cache_runtime::cached;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

pub struct Pool;

#[derive(Clone, Serialize, Deserialize)]
pub struct Row {
    pub id: u64,
    pub complete: bool,
}

fn complete(row: &Row) -> bool {
    row.complete
}

/// Every control argument at once.
#[cached(ttl = 60, skip = [pool, fresh], force_refresh = fresh, cache_if = complete, group = "rows")]
pub async fn row(pool: &Pool, id: u64, fresh: bool) -> Result<Row, String> {
    let _ = pool;
    Ok(Row { id, complete: true })
}

#[cached(ttl = 60, cache_none = false, cache_if = |n: &u64| *n > 0)]
pub async fn positive(n: i64) -> Option<u64> {
    u64::try_from(n).ok()
}

/// An argument named `value`: prime's value is then `cached_value`.
#[cached(ttl = 60)]
pub async fn echo(value: String) -> String {
    value
}

/// A generic fn with type, const and lifetime parameters and a where clause.
#[cached(ttl = 60, key = "g:{T}:{N}:{label}")]
pub async fn generic<'a, T, const N: usize>(label: &'a str) -> Vec<T>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let _ = label;
    Vec::with_capacity(N)
}

#[cached(ttl = 60, backend = "redis")]
pub async fn pair<A: Serialize + Send + Sync + 'static, B: Serialize + Send + Sync + 'static>(
    a: A,
    b: B,
) -> usize {
    let _ = (a, b);
    2
}

struct Service;

impl Service {
    #[cached(ttl = 60, skip = [tag])]
    async fn method(&mut self, n: u32, tag: &str) -> u32 {
        let _ = tag;
        n
    }

    #[cached(ttl = 60)]
    async fn associated(n: u32) -> u32 {
        n
    }
}

fn main() {
    let _ = row_key(&Pool, 1, false);
    let _ = row_refresh(&Pool, 1, false);
    let _ = row_prime(&Pool, 1, false, Ok(Row { id: 1, complete: true }));
    let _ = row_peek(&Pool, 1, false);
    let _ = positive_prime(1, Some(1));
    let _ = echo_prime("a".into(), "b".into());
    let _ = generic_key::<Row, 2>("x");
    let _ = generic_refresh::<Row, 2>("x");
    let _ = pair_peek(1u8, "b");
    let mut service = Service;
    let _ = Service::method_key(1, "t");
    let _ = service.method_refresh(1, "t");
    let _ = Service::associated_refresh(1);
}

// Fns made by `macro_rules!`: the attribute cannot see where it is (free fn or associated fn), so
// fns without `self` get no `<fn>_refresh` there, and everything else still compiles.
macro_rules! make_repo {
    ($name:ident) => {
        pub struct $name;

        impl $name {
            #[cached(ttl = 60)]
            pub async fn all() -> u64 {
                1
            }
        }
    };
}

make_repo!(Generated);

macro_rules! make_free {
    () => {
        #[cached(ttl = 60)]
        pub async fn generated_free() -> u64 {
            1
        }
    };
}

make_free!();

pub fn generated() {
    let _ = Generated::all_key();
    let _ = Generated::all_peek();
    let _ = generated_free_key();
    let _ = cache_runtime::refresh(generated_free());
}
