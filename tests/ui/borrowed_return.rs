use cache_runtime::cached;

#[cached(ttl = 60)]
async fn first<'a>(items: &'a [String]) -> &'a str {
    &items[0]
}

#[cached(ttl = 60)]
async fn parsed<'a>(text: &'a str) -> Vec<std::borrow::Cow<'a, str>> {
    vec![text.into()]
}

fn main() {}
