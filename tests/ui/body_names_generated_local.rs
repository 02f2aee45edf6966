//! The generated code's locals are hidden from the fn's body: `__cache_key` and `__cache_shape`
//! here are no bindings (they were the generated key and return-type shape).
use cache_runtime::cached;

#[cached(ttl = 60)]
async fn load(id: u64) -> u64 {
    let _key = &__cache_key;
    let _shape = __cache_shape;
    id
}

fn main() {}
