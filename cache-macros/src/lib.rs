//! The `#[cached]` attribute. Use it through `cache_runtime::cached`; the runtime crate documents it.
//!
//! This crate only parses and checks the attribute and emits calls into `cache_runtime::__private`.

use proc_macro::TokenStream;

mod args;
mod expand;
mod signature;
mod template;
mod ttl;

/// Memoizes an `async fn` in a cache backend. See the `cache_runtime` crate for the reference.
#[proc_macro_attribute]
pub fn cached(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::cached(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Invalidates keys and groups after an `async fn` (or an axum handler, with `http`) succeeds.
/// See the `cache_runtime` crate for the reference.
#[proc_macro_attribute]
pub fn cache_invalidate(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::cache_invalidate(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
