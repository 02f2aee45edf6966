//! The `#[cached]` attribute. Use it through `cache_runtime::cached`; the runtime crate documents it.
//!
//! This crate only parses and checks the attribute and emits calls into `cache_runtime::__private`.

use proc_macro::TokenStream;

mod args;
mod expand;
mod place;
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

/// On an impl block: expands the `#[cached]` and `#[cache_invalidate]` methods in it knowing the
/// impl. Needed on trait impls (native `async fn` or `#[async_trait]`, placed above it), where the
/// companions (`<fn>_key`, `<fn>_invalidate`, ...) go into an inherent impl of the type. See the
/// `cache_runtime` crate for the reference.
#[proc_macro_attribute]
pub fn cached_impl(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::cached_impl(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
