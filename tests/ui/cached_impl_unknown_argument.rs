use cache_runtime::cached_impl;

pub struct Db;

#[cached_impl(companion = false)]
impl Db {}

#[cached_impl(vis = "public")]
impl Db {}

fn main() {}
