//! Code generation for `#[cached]` and `#[cache_invalidate]`.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::{ItemFn, ReturnType};

use crate::{
    args::{CacheArgs, InvalidateArgs},
    signature::{self, is_state, Checked, Needs},
    template::Template,
};

fn runtime() -> TokenStream {
    quote!(::cache_runtime)
}

pub(crate) fn cached(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let args = CacheArgs::parse(attr)?;
    let function: ItemFn = syn::parse2(item)?;
    let needs = Needs {
        handler: args.http.is_some(),
        value: true,
    };
    let checked = signature::check(&function.sig, needs)?;
    let names = checked.names();
    if let Some(key) = &args.key {
        key.check_names(&names, "key")?;
    }
    for group in &args.groups {
        group.check_names(&names, "group")?;
    }
    Ok(match &args.http {
        Some(visibility) => cached_handler(&args, visibility, &function, &checked),
        None => cached_fn(&args, &function, &checked),
    })
}

pub(crate) fn cache_invalidate(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let args = InvalidateArgs::parse(attr)?;
    let function: ItemFn = syn::parse2(item)?;
    let needs = Needs {
        handler: args.http,
        value: false,
    };
    let checked = signature::check(&function.sig, needs)?;
    let names = checked.names();
    for key in &args.keys {
        key.check_names(&names, "key")?;
    }
    for group in &args.groups {
        group.check_names(&names, "group")?;
    }
    Ok(if args.http {
        invalidate_handler(&args, &function, &checked)
    } else {
        invalidate_fn(&args, &function)
    })
}

/// `#[cached]` on a plain async fn or method.
fn cached_fn(args: &CacheArgs, function: &ItemFn, checked: &Checked) -> TokenStream {
    let rt = runtime();
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = function;
    let function_name = function_name(args, function);
    let site = site(args, &function_name);
    let key_expr = key_expr(args, checked, &function_name, false, &sig.ident);
    let groups = render_groups(&args.groups);
    let ReturnType::Type(_, ret) = &sig.output else {
        unreachable!("signature::check rejects fns without a return type")
    };
    let call = quote! {
        #rt::__private::memoize(&__CACHE_SITE, __cache_key, __cache_groups, __cache_run, __cache_errors)
    };
    // A body that calls its own fn cannot be probed for `Send` (the compiler would need the fn's
    // future type while defining it): it runs in place, as with `spawn = false`.
    let spawn_probe = spawn_probe(checked, args.spawn && !calls_itself(block, &sig.ident));
    let errors = quote! {
        let __cache_errors = {
            use #rt::__private::{ViaClone as _, ViaNoClone as _};
            let __cache_probe = #rt::__private::ErrorProbe::of(&__cache_body);
            let __cache_sharing = (&__cache_probe).sharing();
            __cache_sharing
        };
        #spawn_probe
    };
    // The return type's shape (Result: only `Ok` cached; Option: `None` not cached when told;
    // anything else: the value), chosen by the type, not its spelling.
    let shape = shape_probe(ret, !args.cache_err, !args.cache_none);
    let inputs = &checked.helper_inputs;
    let helpers = helper_fns(
        args,
        function,
        quote!(#(#inputs),*),
        TokenStream::new(),
        |generated| self::key_expr(args, checked, &function_name, false, generated),
    );
    quote! {
        #(#attrs)*
        #vis #sig {
            #site
            let __cache_shape = #shape;
            #[allow(unused_mut)]
            let mut __cache_key: #rt::__private::KeyBuf = #key_expr;
            if let ::core::option::Option::Some(__cache_hit) =
                #rt::__private::fresh_hit(&__CACHE_SITE, &__cache_key)
            {
                return __cache_shape.hit(__cache_hit);
            }
            let __cache_groups: ::std::vec::Vec<::std::string::String> = #groups;
            // The user's block in an async block of its own, so that a `return` in it returns the
            // fn's type; the shape's split happens outside it.
            let __cache_body = async move {
                let __cache_out: #ret = async move {
                    let __cache_out: #ret = #block;
                    #[allow(unreachable_code)]
                    __cache_out
                }
                .await;
                __cache_shape.split(__cache_out)
            };
            #errors
            __cache_shape.join(#call.await)
        }
        #helpers
    }
}

/// `#[cached(http)]` on an axum handler.
fn cached_handler(
    args: &CacheArgs,
    visibility: &str,
    function: &ItemFn,
    checked: &Checked,
) -> TokenStream {
    let rt = runtime();
    let parts = HandlerParts::new(function, checked);
    let HandlerParts {
        outer_inputs,
        arg_idents,
        bindings,
        inner_fn,
    } = &parts;
    let ItemFn {
        attrs, vis, sig, ..
    } = function;
    let ident = &sig.ident;
    let (impl_generics, _, where_clause) = sig.generics.split_for_impl();
    let function_name = function_name(args, function);
    let site = site(args, &function_name);
    let key_expr = key_expr(args, checked, &function_name, true, ident);
    let groups = render_groups(&args.groups);
    let helpers = helper_fns(
        args,
        function,
        outer_inputs.clone(),
        bindings.clone(),
        |generated| self::key_expr(args, checked, &function_name, true, generated),
    );
    let spawn_probe = spawn_probe(checked, args.spawn);
    quote! {
            #(#attrs)*
            #vis async fn #ident #impl_generics (
                __cache_http: #rt::http::RequestInfo,
                #outer_inputs
            ) -> #rt::http::Response #where_clause {
                #inner_fn
                #site
                let (__cache_key, __cache_groups): (
                    #rt::__private::KeyBuf,
                    ::std::vec::Vec<::std::string::String>,
                ) = {
                    #bindings
                    #[allow(unused_mut)]
                    let mut __cache_key: #rt::__private::KeyBuf = #key_expr;
                    let __cache_groups: ::std::vec::Vec<::std::string::String> = #groups;
                    (__cache_key, __cache_groups)
                };
    let __cache_body = #rt::http::outcome(
                    &__CACHE_SITE,
                    __cache_http.cacheable_method(),
                    async move {
                        #rt::http::IntoResponse::into_response(__cache_handler(#(#arg_idents),*).await)
                    },
                );
                #spawn_probe
                #rt::http::serve(&__CACHE_SITE, __cache_http, __cache_key, __cache_groups, #visibility, __cache_run)
                    .await
            }
            #helpers
        }
}

/// `#[cache_invalidate]` on a plain async fn or method.
fn invalidate_fn(args: &InvalidateArgs, function: &ItemFn) -> TokenStream {
    let rt = runtime();
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = function;
    let ret = match &sig.output {
        ReturnType::Default => quote!(()),
        ReturnType::Type(_, ty) => quote!(#ty),
    };
    let targets = render_targets(&args.keys, &args.groups);
    let shape = shape_probe(&ret, true, false);
    quote! {
        #(#attrs)*
        #vis #sig {
            let __cache_targets: #rt::__private::Targets = #targets;
            let __cache_out: #ret = async move {
                let __cache_out: #ret = #block;
                #[allow(unreachable_code)]
                __cache_out
            }
            .await;
            if #shape.succeeded(&__cache_out) {
                __cache_targets.after_success().await;
            }
            __cache_out
        }
    }
}

/// `#[cache_invalidate(http)]` on an axum handler: invalidates after a 2xx response.
fn invalidate_handler(args: &InvalidateArgs, function: &ItemFn, checked: &Checked) -> TokenStream {
    let rt = runtime();
    let HandlerParts {
        outer_inputs,
        arg_idents,
        bindings,
        inner_fn,
    } = HandlerParts::new(function, checked);
    let ItemFn {
        attrs, vis, sig, ..
    } = function;
    let ident = &sig.ident;
    let (impl_generics, _, where_clause) = sig.generics.split_for_impl();
    let targets = render_targets(&args.keys, &args.groups);
    quote! {
        #(#attrs)*
        #vis async fn #ident #impl_generics (#outer_inputs) -> #rt::http::Response #where_clause {
            #inner_fn
            let (__cache_keys, __cache_groups): (
                ::std::vec::Vec<::std::string::String>,
                ::std::vec::Vec<::std::string::String>,
            ) = {
                #bindings
                #targets.into_lists()
            };
            let __cache_response =
                #rt::http::IntoResponse::into_response(__cache_handler(#(#arg_idents),*).await);
            #rt::http::after_mutation(__cache_response, __cache_keys, __cache_groups).await
        }
    }
}

/// The pieces every handler rewrite shares: the handler's own body kept as an inner fn with the
/// original signature, outer arguments with plain names, and `let` bindings of the names the
/// original patterns bind (by reference) for templates and keys.
struct HandlerParts {
    outer_inputs: TokenStream,
    arg_idents: Vec<syn::Ident>,
    bindings: TokenStream,
    inner_fn: TokenStream,
}

impl HandlerParts {
    fn new(function: &ItemFn, checked: &Checked) -> Self {
        let ItemFn { sig, block, .. } = function;
        let arg_idents: Vec<syn::Ident> = (0..checked.helper_inputs.len())
            .map(|i| format_ident!("__cache_arg{}", i))
            .collect();
        let types = checked.helper_inputs.iter().map(|input| &input.ty);
        let outer_inputs = quote!(#(#arg_idents: #types),*);
        let bindings = checked
            .helper_inputs
            .iter()
            .zip(&arg_idents)
            .filter(|(input, _)| !is_state(&input.ty))
            .map(|(input, ident)| {
                let pat = &input.pat;
                quote!(#[allow(unused_variables)] let #pat = &#ident;)
            })
            .collect();
        let inputs = &sig.inputs;
        let output = &sig.output;
        let (impl_generics, _, where_clause) = sig.generics.split_for_impl();
        let inner_fn = quote! {
            #[allow(clippy::too_many_arguments)]
            async fn __cache_handler #impl_generics (#inputs) #output #where_clause #block
        };
        Self {
            outer_inputs,
            arg_idents,
            bindings,
            inner_fn,
        }
    }
}

/// The shape of the return type `ret`, picked by autoref specialization over the type (see
/// `cache_runtime::shape`): `result`: a `Result` caches only `Ok`; `option`: an `Option` caches only
/// `Some`.
fn shape_probe(ret: &impl quote::ToTokens, result: bool, option: bool) -> TokenStream {
    let rt = runtime();
    quote!({
        #[allow(unused_imports)]
        use #rt::__private::{ShapeViaOption as _, ShapeViaPlain as _, ShapeViaResult as _};
        #[allow(clippy::needless_borrow)]
        let __cache_shape = (&&&#rt::__private::ShapeProbe::<#ret, #result, #option>::new()).shape();
        __cache_shape
    })
}

/// Turns the future `__cache_body` into `__cache_run`, a `Body` that runs in a task of its own when
/// the future is `Send + 'static` (autoref specialization on `Send`; the probe is dropped before any
/// await). Bodies that borrow run in place: specialization cannot see lifetimes; so do all bodies
/// with `spawn = false` (`spawn` false).
fn spawn_probe(checked: &Checked, spawn: bool) -> TokenStream {
    let rt = runtime();
    if !spawn || !checked.may_be_static {
        return quote! {
            let __cache_run = #rt::__private::Body::Local(__cache_body);
        };
    }
    quote! {
        let __cache_run = {
            use #rt::__private::{ViaLocal as _, ViaSpawn as _};
            let __cache_probe = #rt::__private::SpawnProbe::new(__cache_body);
            let __cache_run = (&__cache_probe).body();
            __cache_run
        };
    }
}

/// Whether `block` calls a fn named `ident`: `ident(..)`, `Self::ident(..)`, `path::ident(..)` or
/// `self.ident(..)`, but not a method of another value (`client.ident(..)`).
fn calls_itself(block: &syn::Block, ident: &syn::Ident) -> bool {
    use proc_macro2::{Delimiter, TokenTree};
    fn scan(tokens: TokenStream, ident: &syn::Ident) -> bool {
        let trees: Vec<TokenTree> = tokens.into_iter().collect();
        for (at, tree) in trees.iter().enumerate() {
            let TokenTree::Group(group) = tree else {
                continue;
            };
            if scan(group.stream(), ident) {
                return true;
            }
            let named = at >= 1 && matches!(&trees[at - 1], TokenTree::Ident(i) if i == ident);
            if group.delimiter() != Delimiter::Parenthesis || !named {
                continue;
            }
            // What stands before the name: a method call on something other than `self` is not
            // this fn.
            let method_of_other = at >= 2
                && matches!(&trees[at - 2], TokenTree::Punct(p) if p.as_char() == '.')
                && !(at >= 3 && matches!(&trees[at - 3], TokenTree::Ident(i) if i == "self"));
            if !method_of_other {
                return true;
            }
        }
        false
    }
    scan(quote!(#block), ident)
}

fn function_name(args: &CacheArgs, function: &ItemFn) -> String {
    args.name
        .as_ref()
        .map_or_else(|| function.sig.ident.to_string(), syn::LitStr::value)
}

fn site(args: &CacheArgs, function_name: &str) -> TokenStream {
    let rt = runtime();
    let backend = &args.backend;
    let (ttl_ms, stale_ms, stale_if_error_ms, lock_ms) = (
        args.ttl_ms,
        args.stale_ms,
        args.stale_if_error_ms,
        args.lock_ms,
    );
    quote! {
        static __CACHE_SITE: #rt::__private::Site = #rt::__private::Site::new(
            ::core::module_path!(),
            #function_name,
            #backend,
            #rt::Policy {
                ttl_ms: #ttl_ms,
                stale_ms: #stale_ms,
                stale_if_error_ms: #stale_if_error_ms,
                lock_ms: #lock_ms,
            },
        );
    }
}

/// The call's group names; a group that cannot be built makes `__cache_key` unkeyable (the call
/// runs uncached).
fn render_groups(templates: &[Template]) -> TokenStream {
    let rt = runtime();
    let count = templates.len();
    let pushes = templates.iter().map(|t| {
        let rendered = t.render(&rt);
        quote!(#rt::__private::push_group(&mut __cache_key, &mut __cache_names, #rendered);)
    });
    quote!({
        let mut __cache_names = ::std::vec::Vec::with_capacity(#count);
        #(#pushes)*
        __cache_names
    })
}

/// The targets of `#[cache_invalidate]`, with each template's text for the error log of a target
/// that cannot be built.
fn render_targets(keys: &[Template], groups: &[Template]) -> TokenStream {
    let rt = runtime();
    let keys = keys.iter().map(|t| {
        let (rendered, text) = (t.render(&rt), t.literal.value());
        quote!(.key(#rendered, #text))
    });
    let groups = groups.iter().map(|t| {
        let (rendered, text) = (t.render(&rt), t.literal.value());
        quote!(.group(#rendered, #text))
    });
    quote!(#rt::__private::Targets::new() #(#keys)* #(#groups)*)
}

/// `<fn>_key` and `<fn>_invalidate`, taking `inputs` and running `bindings` before the key.
fn helper_fns(
    args: &CacheArgs,
    function: &ItemFn,
    inputs: TokenStream,
    bindings: TokenStream,
    key_expr: impl Fn(&syn::Ident) -> TokenStream,
) -> TokenStream {
    let rt = runtime();
    let ItemFn { vis, sig, .. } = function;
    let ident = &sig.ident;
    let backend = &args.backend;
    let (impl_generics, _, where_clause) = sig.generics.split_for_impl();
    let key_fn = format_ident!("{}_key", ident);
    let invalidate_fn = format_ident!("{}_invalidate", ident);
    let (key_fn_key, invalidate_fn_key) = (key_expr(&key_fn), key_expr(&invalidate_fn));
    let target = match &args.key {
        Some(template) => format!("key `{}` of `{ident}`", template.literal.value()),
        None => format!("the default key of `{ident}`"),
    };
    let key_doc = format!("The cache key of one call of [`{ident}`] with these arguments.");
    let invalidate_doc = format!(
        "Removes the cached result of one call of [`{ident}`] with these arguments from its backend."
    );
    quote! {
        #[doc = #key_doc]
        #[allow(unused_variables, clippy::needless_pass_by_value)]
        #vis fn #key_fn #impl_generics (#inputs) -> ::std::string::String #where_clause {
            #bindings
            let __cache_key: #rt::__private::KeyBuf = #key_fn_key;
            #rt::key::normalize_key(__cache_key.into_string())
        }

        #[doc = #invalidate_doc]
        #[allow(unused_variables, clippy::needless_pass_by_value)]
        #vis async fn #invalidate_fn #impl_generics (#inputs)
            -> ::core::result::Result<(), #rt::CacheError> #where_clause
        {
            let __cache_key: #rt::__private::KeyBuf = {
                #bindings
                #invalidate_fn_key
            };
            if !__cache_key.is_keyable() {
                return ::core::result::Result::Err(#rt::__private::unkeyable(#target));
            }
            #rt::__private::invalidate_entry(#backend, __cache_key.into_string()).await
        }
    }
}

/// The expression computing a call's key: the `key` template, or the default key. In handlers the
/// bound names are references and request metadata (`HeaderMap`, `Uri`, `Method`) may enter the key.
/// `generated` is the fn the expression is placed in (the fn itself or a companion): default keys of
/// fns without `self` take their parent path (module, or type for associated fns) from the type name
/// of a marker fn nested in it, computed once.
fn key_expr(
    args: &CacheArgs,
    checked: &Checked,
    function_name: &str,
    handler: bool,
    generated: &syn::Ident,
) -> TokenStream {
    let rt = runtime();
    if let Some(template) = &args.key {
        return template.render(&rt);
    }
    let (prefix, finish) = if checked.has_receiver && args.name.is_none() {
        (
            TokenStream::new(),
            quote!(finish(::std::any::type_name::<Self>(), #function_name)),
        )
    } else if args.name.is_some() {
        // A `name` pins the key to the module path and that name.
        (
            TokenStream::new(),
            quote!(finish_prefixed(
                ::core::concat!(::core::module_path!(), "::", #function_name, ":")
            )),
        )
    } else {
        let generated = generated.to_string();
        (
            quote! {
                fn __cache_marker() {}
                static __CACHE_PREFIX: ::std::sync::OnceLock<::std::string::String> =
                    ::std::sync::OnceLock::new();
                let __cache_prefix: &str = __CACHE_PREFIX.get_or_init(|| {
                    #rt::__private::marker_prefix(
                        ::std::any::type_name_of_val(&__cache_marker),
                        #generated,
                        #function_name,
                    )
                });
            },
            quote!(finish_prefixed(__cache_prefix)),
        )
    };
    let named = checked
        .key_args
        .iter()
        .flat_map(|arg| arg.names.iter().map(move |name| (arg.span, name)));
    if handler {
        let steps = named.map(|(span, name)| {
            quote_spanned!(span=> let __cache_k = (&#rt::http::HttpKeyArg(&*#name)).add_to(__cache_k);)
        });
        let span = Span::call_site();
        quote_spanned! {span=> {
            #[allow(unused_imports)]
            use #rt::http::{HttpKeyViaHeaders as _, HttpKeyViaSerialize as _};
            #prefix
            let __cache_k = #rt::__private::DefaultKey::new();
            #(#steps)*
            __cache_k.#finish
        }}
    } else {
        let parts = named.map(|(span, name)| quote_spanned!(span=> .arg(&#name)));
        quote!({
            #prefix
            #rt::__private::DefaultKey::new() #(#parts)* .#finish
        })
    }
}

#[cfg(test)]
mod tests {
    use super::calls_itself;

    fn calls(body: &str) -> bool {
        let block: syn::Block = syn::parse_str(body).unwrap();
        calls_itself(&block, &syn::parse_str("load").unwrap())
    }

    #[test]
    fn self_calls_are_told_from_methods_of_other_values() {
        assert!(calls("{ Box::pin(load(1)).await }"));
        assert!(calls("{ Self::load(1).await }"));
        assert!(calls("{ self.load(1).await }"));
        assert!(calls("{ if x { crate::a::load(2).await } else { 0 } }"));
        assert!(!calls("{ client.load(1).await }"));
        assert!(!calls("{ self.db.load(1).await }"));
        assert!(!calls("{ let load = 1; load }"));
    }
}
