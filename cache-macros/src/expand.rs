//! Code generation for `#[cached]`, `#[cache_invalidate]` and `#[cached_impl]`.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::{spanned::Spanned, ImplItem, ItemFn, ItemImpl, ReturnType, Visibility};

use crate::{
    args::{CacheArgs, ImplArgs, InvalidateArgs},
    place::{self, Place},
    signature::{self, is_state, Checked, Needs},
    template::Template,
};

/// The identifier of a local of the generated code (or of a generated fn's own argument), spanned
/// `Span::mixed_site()`: the user's code (the fn's body, its arguments, template values) neither
/// sees it nor is shadowed by it, whatever names it uses. Items (`__CACHE_SITE`, the companions)
/// are not locals: they keep the call site's span, so that the code that names them finds them.
pub(crate) fn local(name: &str) -> syn::Ident {
    syn::Ident::new(name, Span::mixed_site())
}

/// `locals!(__cache_key, ..)` binds each name to its [`local`] identifier, so that templates write
/// `#__cache_key` where they mean the generated local.
macro_rules! locals {
    ($($name:ident),* $(,)?) => {
        $(let $name = local(stringify!($name));)*
    };
}

fn runtime() -> TokenStream {
    RUNTIME.with(|path| match &*path.borrow() {
        Some(path) => quote!(#path),
        None => quote!(::cache_runtime),
    })
}

/// [`runtime`], spanned `span` when it is the default path (`::cache_runtime`, which resolves
/// anywhere). A path given with `crate = ".."` keeps its own span: were it unknown, it is reported
/// once, on the attribute.
fn runtime_at(span: Span) -> TokenStream {
    RUNTIME.with(|path| match &*path.borrow() {
        Some(path) => quote!(#path),
        None => quote_spanned!(span=> ::cache_runtime),
    })
}

thread_local! {
    /// The runtime's path for the attribute being expanded (`crate = ".."`; `::cache_runtime`
    /// when not given). Expansions run one at a time on the compiler's thread.
    static RUNTIME: std::cell::RefCell<Option<syn::Path>> = const { std::cell::RefCell::new(None) };
}

/// Runs `expand` with `path` as the runtime's path, then restores the previous one.
fn with_runtime<R>(path: Option<&syn::Path>, expand: impl FnOnce() -> R) -> R {
    let previous = RUNTIME.with(|current| current.replace(path.cloned()));
    let expanded = expand();
    RUNTIME.with(|current| current.replace(previous));
    expanded
}

/// What the macro knows about where a fn sits.
#[derive(Clone)]
pub(crate) struct Context {
    /// The trait of a trait impl (known from `#[cached_impl]`).
    trait_path: Option<syn::Path>,
    /// Whether the fn is in an impl (so a fn without `self` is an associated fn); `None`: unknown.
    in_impl: Option<bool>,
    /// Whether to generate `<fn>_key`, `<fn>_invalidate`, ...
    companions: bool,
    /// The companions' visibility, when not the fn's own.
    vis: Option<Visibility>,
    /// The impl's type and const parameters: what depends on `Self` is not cached in statics, and
    /// keys that cannot name `Self` hash them.
    impl_types: Vec<syn::Ident>,
    impl_consts: Vec<syn::Ident>,
}

impl Context {
    /// The attribute on its own, where `place` says.
    fn plain(place: &Place) -> Self {
        Self {
            trait_path: None,
            in_impl: match place {
                Place::Free => Some(false),
                Place::InherentImpl => Some(true),
                _ => None,
            },
            companions: true,
            vis: None,
            impl_types: Vec::new(),
            impl_consts: Vec::new(),
        }
    }
}

/// A fn's rewrite and its companions.
pub(crate) struct Expansion {
    item: TokenStream,
    companions: TokenStream,
}

/// The arguments `#[cached_impl]` leaves on the methods it expanded (see [`cached_impl`]).
fn expanded_mark(attr: &TokenStream) -> bool {
    let mut tokens = attr.clone().into_iter();
    matches!((tokens.next(), tokens.next()), (Some(proc_macro2::TokenTree::Ident(i)), None) if i == "__cache_expanded")
}

pub(crate) fn cached(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    if expanded_mark(&attr) {
        return Ok(item);
    }
    let args = CacheArgs::parse(attr)?;
    let function: ItemFn = syn::parse2(item)?;
    let place = place::of_call_site();
    let misplaced = match &place {
        Place::TraitImpl(header) => Some(syn::Error::new(
                Span::call_site(),
                format!(
                    "#[cached] on a method of `{header}`: a trait impl holds only the trait's items, \
                     so the companions of `{name}` (`{name}_key`, `{name}_invalidate`, ...) cannot be \
                     placed beside it. Put `#[cache_runtime::cached_impl]` on the impl block (above \
                     `#[async_trait]` if there is one): it places them in an inherent impl of the \
                     type (or write `#[cached_impl(companions = false)]` for none)",
                    name = function.sig.ident
                ),
            )),
        Place::TraitDef => Some(syn::Error::new(
            Span::call_site(),
            "#[cached] does not work on a trait's provided methods: put it on the method in each \
             `impl`, with `#[cache_runtime::cached_impl]` on the impl block",
        )),
        _ => None,
    };
    if let Some(error) = misplaced {
        // The fn as written, so that this is the only error.
        let error = error.into_compile_error();
        return Ok(quote!(#error #function));
    }
    let Expansion { item, companions } = cached_with(&args, &function, &Context::plain(&place))?;
    Ok(quote!(#item #companions))
}

/// `#[cached]` on `function`, with what is known of its place.
fn cached_with(args: &CacheArgs, function: &ItemFn, context: &Context) -> syn::Result<Expansion> {
    with_runtime(args.krate.as_ref(), || cached_in(args, function, context))
}

fn cached_in(args: &CacheArgs, function: &ItemFn, context: &Context) -> syn::Result<Expansion> {
    let needs = Needs {
        handler: args.http.is_some(),
        value: true,
    };
    let checked = signature::check(&function.sig, needs)?;
    let names = checked.names();
    let types = checked.template_types();
    if let Some(key) = &args.key {
        key.check_names(&names, &types, "key")?;
    }
    for group in &args.groups {
        group.check_names(&names, &types, "group")?;
    }
    check_skip(args, &checked)?;
    check_force_refresh(args, &checked)?;
    Ok(match &args.http {
        Some(_) if context.trait_path.is_some() => {
            return Err(syn::Error::new(
                function.sig.ident.span(),
                "`http` handlers are free fns, not trait methods",
            ))
        }
        Some(visibility) => cached_handler(args, visibility, function, &checked, context),
        None => cached_fn(args, function, &checked, context),
    })
}

/// Every name in `skip` is an argument's (and not `self`).
fn check_skip(args: &CacheArgs, checked: &Checked) -> syn::Result<()> {
    let keyed: Vec<String> = checked
        .key_args
        .iter()
        .flat_map(|a| a.names.iter().map(ToString::to_string))
        .collect();
    for name in &args.skip {
        if name == "self" {
            return Err(syn::Error::new(
                name.span(),
                "`self` is never part of the key: no need to skip it",
            ));
        }
        let state = checked.state_names.iter().any(|s| s == name);
        if !state && !keyed.iter().any(|k| name == k) {
            let listed = if keyed.is_empty() {
                "the function has no arguments in its key".to_owned()
            } else {
                format!("arguments: {}", keyed.join(", "))
            };
            return Err(syn::Error::new(
                name.span(),
                format!("`skip` names `{name}`, which is not an argument ({listed})"),
            ));
        }
    }
    Ok(())
}

/// A `force_refresh` expression must not read what is in the key: a forced call would store under
/// another key than the calls it is meant to refresh.
fn check_force_refresh(args: &CacheArgs, checked: &Checked) -> syn::Result<()> {
    struct Names(Vec<syn::Ident>);
    impl syn::visit::Visit<'_> for Names {
        fn visit_expr_path(&mut self, node: &syn::ExprPath) {
            if let Some(ident) = node.path.get_ident() {
                self.0.push(ident.clone());
            }
        }
    }
    let Some(force) = &args.force_refresh else {
        return Ok(());
    };
    let mut read = Names(Vec::new());
    syn::visit::Visit::visit_expr(&mut read, force);
    let in_key: Vec<String> = match &args.key {
        Some(template) => template.roots().map(str::to_owned).collect(),
        None => checked
            .key_args
            .iter()
            .flat_map(|a| &a.names)
            .filter(|n| !args.skip.contains(n))
            .map(ToString::to_string)
            .collect(),
    };
    match read.0.iter().find(|n| in_key.iter().any(|k| *n == k)) {
        Some(name) => {
            let fix = match &args.key {
                Some(_) => format!("leave `{{{name}}}` out of the key template"),
                None => format!("leave it out of the default key: `skip = [{name}]`"),
            };
            Err(syn::Error::new(
                name.span(),
                format!(
                    "`force_refresh` reads `{name}`, which is part of the key: a forced call would \
                     store its value under another key than the calls it refreshes; {fix}"
                ),
            ))
        }
        None => Ok(()),
    }
}

pub(crate) fn cache_invalidate(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    if expanded_mark(&attr) {
        return Ok(item);
    }
    let args = InvalidateArgs::parse(attr)?;
    let function: ItemFn = syn::parse2(item)?;
    cache_invalidate_with(&args, &function)
}

fn cache_invalidate_with(args: &InvalidateArgs, function: &ItemFn) -> syn::Result<TokenStream> {
    with_runtime(args.krate.as_ref(), || cache_invalidate_in(args, function))
}

fn cache_invalidate_in(args: &InvalidateArgs, function: &ItemFn) -> syn::Result<TokenStream> {
    let needs = Needs {
        handler: args.http,
        value: false,
    };
    let checked = signature::check(&function.sig, needs)?;
    let names = checked.names();
    let types = checked.template_types();
    for key in &args.keys {
        key.check_names(&names, &types, "key")?;
    }
    for group in &args.groups {
        group.check_names(&names, &types, "group")?;
    }
    Ok(if args.http {
        invalidate_handler(args, function, &checked)
    } else {
        invalidate_fn(args, function, &checked)
    })
}

/// `#[cached_impl]` on an impl block: expands the `#[cached]` and `#[cache_invalidate]` methods in
/// it, knowing the impl; in a trait impl the companions go into an inherent impl of the type.
pub(crate) fn cached_impl(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let impl_args = ImplArgs::parse(attr)?;
    let mut block: ItemImpl = syn::parse2(item)?;
    if let Some((Some(bang), _, _)) = &block.trait_ {
        return Err(syn::Error::new(
            bang.span(),
            "#[cached_impl] on a negative impl has nothing to cache",
        ));
    }
    let trait_path = block.trait_.as_ref().map(|(_, path, _)| path.clone());
    let mut context = Context {
        in_impl: Some(true),
        companions: impl_args.companions,
        vis: match (&impl_args.vis, &trait_path) {
            (Some(vis), _) => Some(vis.clone()),
            (None, Some(_)) => Some(syn::parse_quote!(pub)),
            (None, None) => None,
        },
        impl_types: block
            .generics
            .type_params()
            .map(|t| t.ident.clone())
            .collect(),
        impl_consts: block
            .generics
            .const_params()
            .map(|c| c.ident.clone())
            .collect(),
        trait_path,
    };
    let mut errors: Option<syn::Error> = None;
    let any_cached = block.items.iter().any(|item| {
        matches!(item, ImplItem::Fn(method)
            if method.attrs.iter().any(|a| matches!(ours(a), Some(Ours::Cached))))
    });
    if context.trait_path.is_some() && context.companions && any_cached {
        if let Err(error) = companions_placeable(&block) {
            // Reported once; the methods are still expanded (without companions), so that no
            // other error follows from this one.
            errors = Some(error);
            context.companions = false;
        }
    }
    let mut companions = TokenStream::new();
    for item in &mut block.items {
        let ImplItem::Fn(method) = item else {
            continue;
        };
        let Some((at, kind)) = method
            .attrs
            .iter()
            .enumerate()
            .find_map(|(at, a)| ours(a).map(|kind| (at, kind)))
        else {
            continue;
        };
        let attr = method.attrs.remove(at);
        let function = ItemFn {
            attrs: method.attrs.clone(),
            vis: method.vis.clone(),
            sig: method.sig.clone(),
            block: Box::new(method.block.clone()),
        };
        let expanded = attr_tokens(&attr).and_then(|tokens| match kind {
            Ours::Cached => {
                let args = CacheArgs::parse_at(tokens, attr.span())?;
                cached_with(&args, &function, &context)
            }
            Ours::Invalidate => {
                let args = InvalidateArgs::parse_at(tokens, attr.span())?;
                cache_invalidate_with(&args, &function).map(|item| Expansion {
                    item,
                    companions: TokenStream::new(),
                })
            }
        });
        // The attribute stays as an inert mark, so that its import counts as used.
        let path = attr.path();
        let mark = quote!(#[#path(__cache_expanded)]);
        match expanded {
            Ok(Expansion {
                item: expanded,
                companions: own,
            }) => {
                let expanded = quote!(#mark #expanded);
                if context.trait_path.is_some() {
                    *item = ImplItem::Verbatim(expanded);
                    companions.extend(own);
                } else {
                    *item = ImplItem::Verbatim(quote!(#expanded #own));
                }
            }
            // The method stays as written, without the attribute: only this error is reported.
            Err(error) => match &mut errors {
                Some(first) => first.combine(error),
                None => errors = Some(error),
            },
        }
    }
    let errors = errors.map(syn::Error::into_compile_error);
    let inherent = (!companions.is_empty()).then(|| {
        let (impl_generics, _, where_clause) = block.generics.split_for_impl();
        let self_ty = &block.self_ty;
        quote! {
            #[automatically_derived]
            impl #impl_generics #self_ty #where_clause {
                #companions
            }
        }
    });
    Ok(quote!(#errors #block #inherent))
}

enum Ours {
    Cached,
    Invalidate,
}

/// `#[cached(..)]` / `#[cache_invalidate(..)]`, alone or as `cache_runtime::..`.
fn ours(attr: &syn::Attribute) -> Option<Ours> {
    let path = attr.path();
    let last = path.segments.last()?;
    let first = path.segments.first()?;
    let ours_path =
        path.segments.len() == 1 || first.ident == "cache_runtime" || first.ident == "cache_macros";
    match last.ident.to_string().as_str() {
        "cached" if ours_path => Some(Ours::Cached),
        "cache_invalidate" if ours_path => Some(Ours::Invalidate),
        _ => None,
    }
}

fn attr_tokens(attr: &syn::Attribute) -> syn::Result<TokenStream> {
    match &attr.meta {
        syn::Meta::Path(_) => Ok(TokenStream::new()),
        syn::Meta::List(list) => Ok(list.tokens.clone()),
        syn::Meta::NameValue(nv) => Err(syn::Error::new(
            nv.eq_token.span(),
            "expected `#[cached(...)]`",
        )),
    }
}

/// The companions of a trait impl's methods go into `impl<..> Type { .. }`: Rust allows that for
/// a named type of this crate whose impl parameters all appear in it.
fn companions_placeable(block: &ItemImpl) -> syn::Result<()> {
    let fix = "add `#[cached_impl(companions = false)]` (and use `cache_runtime::refresh`, \
               `cache_runtime::invalidate_key` with a `key` template instead of the companions)";
    let syn::Type::Path(path) = &*block.self_ty else {
        return Err(syn::Error::new(
            block.self_ty.span(),
            format!(
                "the companions of these methods go into an inherent impl of the type, which Rust \
                 allows only for named types of this crate; {fix}"
            ),
        ));
    };
    let mentioned = path.to_token_stream().to_string();
    let mentions = |ident: &syn::Ident| {
        mentioned
            .split(|c: char| !(c == '_' || c.is_alphanumeric()))
            .any(|word| ident == word)
    };
    let params = block
        .generics
        .type_params()
        .map(|t| &t.ident)
        .chain(block.generics.const_params().map(|c| &c.ident));
    for param in params {
        if path.qself.is_none() && path.path.is_ident(param) {
            return Err(syn::Error::new(
                block.self_ty.span(),
                format!(
                    "a blanket impl (`for {param}`) has no type to place the companions of its \
                     methods in; {fix}"
                ),
            ));
        }
        if !mentions(param) {
            return Err(syn::Error::new(
                param.span(),
                format!(
                    "`{param}` appears only in the trait, so the inherent impl that would hold the \
                     companions of these methods cannot have it; {fix}"
                ),
            ));
        }
    }
    Ok(())
}

/// `#[cached]` on a plain async fn or method.
fn cached_fn(
    args: &CacheArgs,
    function: &ItemFn,
    checked: &Checked,
    context: &Context,
) -> Expansion {
    let rt = runtime();
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = function;
    locals!(
        __cache_shape,
        __cache_refresh,
        __cache_key,
        __cache_hit,
        __cache_groups,
        __cache_body,
        __cache_out,
        __cache_errors,
        __cache_probe,
        __cache_sharing,
        __cache_run,
        __cache_result,
        __cache_force,
    );
    let ident = &sig.ident;
    let function_name = function_name(args, function);
    let site = site(args, &function_name);
    let types = checked.template_types();
    let key = |generated: &syn::Ident| {
        key_expr(
            args,
            checked,
            context,
            &function_name,
            false,
            generated,
            ident,
        )
    };
    let key_expr = key(ident);
    let groups = render_groups(&args.groups, &types);
    let ReturnType::Type(_, ret) = &sig.output else {
        unreachable!("signature::check rejects fns without a return type")
    };
    let kept = args.cache_if.is_some();
    let fresh_hit = value_call(ret, "fresh_hit", &quote!(&__CACHE_SITE, &#__cache_key));
    // A body that calls its own fn cannot be probed for `Send` (the compiler would need the fn's
    // future type while defining it): it runs in place, as with `spawn = false`.
    let spawn_probe = spawn_probe(checked, args.spawn && !calls_itself(block, ident));
    let errors = quote! {
        let #__cache_errors = {
            use #rt::__private::{ViaClone as _, ViaNoClone as _};
            let #__cache_probe = #rt::__private::ErrorProbe::of(&#__cache_body);
            let #__cache_sharing = (&#__cache_probe).sharing();
            #__cache_sharing
        };
        #spawn_probe
    };
    // The return type's shape (Result: only `Ok` cached; Option: `None` not cached when told;
    // anything else: the value), chosen by the type, not its spelling.
    let shape = shape_probe(ret, !args.cache_err, !args.cache_none);
    let cacheable = assert_cacheable(ret, !args.cache_err, !args.cache_none);
    let split = split_kept(args, quote!(#__cache_shape.split(#__cache_out)));
    let joined = if kept {
        quote!(#__cache_shape.join(#rt::__private::kept(#__cache_result)))
    } else {
        quote!(#__cache_shape.join(#__cache_result))
    };
    let token = refresh_token(ident);
    let ttl_from = ttl_from(args);
    let call_args = quote! {
        &__CACHE_SITE, #__cache_key, #__cache_groups, #__cache_run, #__cache_errors, #ttl_from,
    };
    let memoize = if kept { "memoize_kept" } else { "memoize" };
    let memoize = value_await(ret, memoize, &call_args, true);
    let refresh_call = value_await(ret, "refresh_call", &call_args, true);
    let force = args.force_refresh.as_ref().map(|force| {
        quote_spanned! {force.span()=>
            || {
                let #__cache_force: bool = #force;
                #__cache_force
            }
        }
    });
    let item = quote! {
        #(#attrs)*
        #vis #sig {
            #site
            let #__cache_shape = #shape;
            #cacheable
            let #__cache_refresh: bool = #rt::__private::take_refresh(#token) #force;
            #[allow(unused_mut)]
            let mut #__cache_key: #rt::__private::KeyBuf = #key_expr;
            if !#__cache_refresh {
                if let ::core::option::Option::Some(#__cache_hit) =
                    #fresh_hit
                {
                    return #__cache_shape.hit(#__cache_hit);
                }
            }
            let #__cache_groups: ::std::vec::Vec<::std::string::String> = #groups;
            // The user's block in an async block of its own, so that a `return` in it returns the
            // fn's type; the shape's split happens outside it.
            let #__cache_body = async move {
                let #__cache_out: #ret = async move {
                    let #__cache_out: #ret = #block;
                    #[allow(unreachable_code)]
                    #__cache_out
                }
                .await;
                #split
            };
            #errors
            // The slow path, boxed: the fn's own future stays a few hundred bytes (what a hit
            // builds and moves), not the size of the whole call machinery.
            let #__cache_result = if #__cache_refresh {
                #refresh_call
            } else {
                #memoize
            };
            #joined
        }
    };
    if !context.companions {
        return Expansion {
            item,
            companions: TokenStream::new(),
        };
    }
    let inputs = &checked.helper_inputs;
    let mut companions = helper_fns(
        args,
        function,
        context,
        quote!(#(#inputs),*),
        TokenStream::new(),
        &key,
    );
    companions.extend(control_fns(args, function, checked, context, ret, &key));
    if let (Some(trait_path), None) = (&context.trait_path, &args.name) {
        companions.extend(trait_prefix_fn(
            trait_path,
            function,
            checked,
            &function_name,
        ));
    }
    Expansion { item, companions }
}

/// The head of the default keys of a trait impl's method, `"<Type as Trait>::method:"`, as a fn
/// of the inherent impl that holds the companions.
fn trait_prefix_fn(
    trait_path: &syn::Path,
    function: &ItemFn,
    checked: &Checked,
    function_name: &str,
) -> TokenStream {
    let rt = runtime();
    let method = &function.sig.ident;
    let helper = format_ident!("__cache_{}", companion_ident(method, "prefix").to_string());
    let (impl_generics, _, where_clause) = function.sig.generics.split_for_impl();
    let turbofish = checked.turbofish();
    quote! {
        #[doc(hidden)]
        fn #helper #impl_generics () -> ::std::string::String #where_clause {
            #rt::__private::fn_item_prefix(
                ::std::any::type_name_of_val(&<Self as #trait_path>::#method #turbofish),
                #function_name,
            )
        }
    }
}

/// `Some(<the ttl_from fn>)` as the fn pointer the runtime takes, or `None`.
fn ttl_from(args: &CacheArgs) -> TokenStream {
    match &args.ttl_from {
        Some(ttl_of) => quote_spanned! {ttl_of.span()=> ::core::option::Option::Some(#ttl_of)},
        None => quote!(::core::option::Option::None),
    }
}

/// The body's value as what `memoize` caches the `Ok` of, filtered by `cache_if`.
fn split_kept(args: &CacheArgs, split: TokenStream) -> TokenStream {
    let rt = runtime();
    match &args.cache_if {
        Some(keep) => quote_spanned! {keep.span()=>
            #rt::__private::keep_if(#split, #keep)
        },
        None => split,
    }
}

/// What identifies a fn to `take_refresh`.
fn refresh_token(ident: &syn::Ident) -> TokenStream {
    let name = ident.to_string();
    quote!(::core::concat!(::core::module_path!(), "::", #name))
}

/// `<fn>_refresh`, `<fn>_prime` and `<fn>_peek`.
fn control_fns(
    args: &CacheArgs,
    function: &ItemFn,
    checked: &Checked,
    context: &Context,
    ret: &syn::Type,
    key_expr: &dyn Fn(&syn::Ident) -> TokenStream,
) -> TokenStream {
    let rt = runtime();
    locals!(
        __cache_key,
        __cache_groups,
        __cache_shape,
        __cache_value,
        __cache_hit
    );
    let ItemFn { vis, sig, .. } = function;
    let vis = context.vis.as_ref().unwrap_or(vis);
    let ident = &sig.ident;
    let (impl_generics, _, where_clause) = sig.generics.split_for_impl();
    let function_name = function_name(args, function);
    let types = checked.template_types();
    let (refresh_fn, prime_fn, peek_fn) = (
        companion_ident(ident, "refresh"),
        companion_ident(ident, "prime"),
        companion_ident(ident, "peek"),
    );
    let turbofish = checked.turbofish();
    // How the companion calls the fn: what a fn without `self` is depends on where it is.
    let path = match (&context.trait_path, checked.has_receiver, context.in_impl) {
        (Some(trait_path), _, _) => Some(quote!(<Self as #trait_path>::#ident #turbofish)),
        (None, true, _) | (None, false, Some(true)) => Some(quote!(Self::#ident #turbofish)),
        (None, false, Some(false)) => Some(quote!(#ident #turbofish)),
        (None, false, None) => None,
    };
    let refresh = path.map(|path| {
        let receiver = checked.receiver.iter();
        let self_arg = checked.receiver.iter().map(|_| quote!(self));
        let forward = &checked.forward;
        let types = checked.helper_inputs.iter().map(|input| &input.ty);
        let token = refresh_token(ident);
        let doc = format!(
            "Runs [`{ident}`] now and stores its value, whatever is cached: the entry of these \
             arguments is invalidated first (in every process sharing the backend), the body runs \
             (calls that miss meanwhile in this process wait for it), and its value is returned."
        );
        quote! {
            #[doc = #doc]
            #[allow(clippy::too_many_arguments)]
            #vis async fn #refresh_fn #impl_generics (#(#receiver,)* #(#forward: #types),*) -> #ret
                #where_clause
            {
                #rt::__private::forced(#token, #path(#(#self_arg,)* #(#forward),*)).await
            }
        }
    });
    let inputs = &checked.helper_inputs;
    let site = site(args, &function_name);
    let shape = shape_probe(ret, !args.cache_err, !args.cache_none);
    let cacheable = assert_cacheable(ret, !args.cache_err, !args.cache_none);
    let groups = render_groups(&args.groups, &types);
    let (prime_key, peek_key) = (key_expr(&prime_fn), key_expr(&peek_fn));
    // The key and groups of one call, as both companions build them.
    let key_and_groups = |key: &TokenStream| {
        quote! {
            let (#__cache_key, #__cache_groups) = {
                #[allow(unused_mut)]
                let mut #__cache_key: #rt::__private::KeyBuf = #key;
                let #__cache_groups: ::std::vec::Vec<::std::string::String> = #groups;
                (#__cache_key, #__cache_groups)
            };
        }
    };
    let (prime_call, peek_call) = (key_and_groups(&prime_key), key_and_groups(&peek_key));
    // The value's argument is hidden from the fn's own arguments (it cannot collide with them);
    // its name still shows in the docs, where it should not read like one of them.
    let value = if checked.names().iter().any(|n| n == "value") {
        local("cached_value")
    } else {
        local("value")
    };
    let split = split_kept(args, quote!(#__cache_shape.split(#value)));
    let ttl_from = ttl_from(args);
    let target = match &args.key {
        Some(template) => format!("key `{}` of `{ident}`", template.literal.value()),
        None => format!("the default key of `{ident}`"),
    };
    let prime = quote! {
        &__CACHE_SITE, #__cache_key, #__cache_groups, #__cache_value, #target, #ttl_from,
    };
    let prime = value_await(ret, "prime", &prime, false);
    let peek = quote!(&__CACHE_SITE, #__cache_key, #__cache_groups);
    let peek = value_await(ret, "peek", &peek, false);
    let prime_doc = format!(
        "Stores `{value}` as the result of [`{ident}`] with these arguments, as if the call had \
         just returned it (write-through after an update). The entry is invalidated first, so \
         that no computation that started before overwrites it; a value the fn would not cache \
         (an `Err`, an uncached `None`, one `cache_if` rejects) only removes the entry. An \
         invalidation made after this call started wins over the value."
    );
    let peek_doc = format!(
        "The value a call of [`{ident}`] with these arguments would return from the cache now, \
         if a fresh one is stored; never runs the body."
    );
    quote! {
        #refresh

        #[doc = #prime_doc]
        #[allow(unused_variables, clippy::needless_pass_by_value, clippy::too_many_arguments)]
        #vis async fn #prime_fn #impl_generics (#(#inputs,)* #value: #ret)
            -> ::core::result::Result<(), #rt::CacheError> #where_clause
        {
            #site
            let #__cache_shape = #shape;
            #cacheable
            #prime_call
            let #__cache_value = #split;
            #prime
        }

        #[doc = #peek_doc]
        #[allow(unused_variables, clippy::needless_pass_by_value, clippy::too_many_arguments)]
        #vis async fn #peek_fn #impl_generics (#(#inputs),*) -> ::core::option::Option<#ret>
            #where_clause
        {
            #site
            let #__cache_shape = #shape;
            #cacheable
            #peek_call
            #peek.map(|#__cache_hit| #__cache_shape.hit(#__cache_hit))
        }
    }
}

/// `<fn>_<what>`, spanned on the fn's name.
fn companion_ident(ident: &syn::Ident, what: &str) -> syn::Ident {
    format_ident!("{}_{}", ident, what)
}

/// `#[cached(http)]` on an axum handler.
fn cached_handler(
    args: &CacheArgs,
    visibility: &str,
    function: &ItemFn,
    checked: &Checked,
    context: &Context,
) -> Expansion {
    let rt = runtime();
    let parts = HandlerParts::new(function, checked);
    locals!(
        __cache_http,
        __cache_key,
        __cache_reply,
        __cache_groups,
        __cache_body,
        __cache_run,
    );
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
    let key = |generated: &syn::Ident| {
        key_expr(
            args,
            checked,
            context,
            &function_name,
            true,
            generated,
            ident,
        )
    };
    let key_expr = key(ident);
    let groups = render_groups(&args.groups, &[]);
    let companions = if context.companions {
        helper_fns(
            args,
            function,
            context,
            outer_inputs.clone(),
            bindings.clone(),
            &key,
        )
    } else {
        TokenStream::new()
    };
    let spawn_probe = spawn_probe(checked, args.spawn);
    let item = quote! {
        #(#attrs)*
        #vis async fn #ident #impl_generics (
            #__cache_http: #rt::http::RequestInfo,
            #outer_inputs
        ) -> #rt::http::Response #where_clause {
            #inner_fn
            #site
            // `mut`: a group value that cannot be serialized marks the key (the call runs uncached).
            #[allow(unused_mut)]
            let mut #__cache_key: #rt::__private::KeyBuf = {
                #bindings
                #key_expr
            };
            // The hot path: a fresh in-process response, answered before anything else is built.
            if let ::core::option::Option::Some(#__cache_reply) =
                #rt::http::fresh_reply(&__CACHE_SITE, &#__cache_http, &#__cache_key, #visibility)
            {
                return #__cache_reply;
            }
            let #__cache_groups: ::std::vec::Vec<::std::string::String> = {
                #bindings
                #groups
            };
            let #__cache_body = #rt::http::outcome(
                &__CACHE_SITE,
                #__cache_http.cacheable_method(),
                async move {
                    #rt::http::IntoResponse::into_response(__cache_handler(#(#arg_idents),*).await)
                },
            );
            #spawn_probe
            // Boxed: the handler's own future stays the size of what a hit needs.
            ::std::boxed::Box::pin(#rt::http::serve(
                &__CACHE_SITE, #__cache_http, #__cache_key, #__cache_groups, #visibility, #__cache_run,
            ))
            .await
        }
    };
    Expansion { item, companions }
}

/// `#[cache_invalidate]` on a plain async fn or method.
fn invalidate_fn(args: &InvalidateArgs, function: &ItemFn, checked: &Checked) -> TokenStream {
    let rt = runtime();
    locals!(__cache_targets, __cache_out);
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
    let targets = render_targets(&args.keys, &args.groups, &checked.template_types());
    let shape = shape_probe(&ret, true, false);
    quote! {
        #(#attrs)*
        #vis #sig {
            let #__cache_targets: #rt::__private::Targets = #targets;
            let #__cache_out: #ret = async move {
                let #__cache_out: #ret = #block;
                #[allow(unreachable_code)]
                #__cache_out
            }
            .await;
            if #shape.succeeded(&#__cache_out) {
                #__cache_targets.after_success().await;
            }
            #__cache_out
        }
    }
}

/// `#[cache_invalidate(http)]` on an axum handler: invalidates after a 2xx response.
fn invalidate_handler(args: &InvalidateArgs, function: &ItemFn, checked: &Checked) -> TokenStream {
    let rt = runtime();
    locals!(__cache_keys, __cache_groups, __cache_response);
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
    let targets = render_targets(&args.keys, &args.groups, &[]);
    quote! {
        #(#attrs)*
        #vis async fn #ident #impl_generics (#outer_inputs) -> #rt::http::Response #where_clause {
            #inner_fn
            let (#__cache_keys, #__cache_groups): (
                ::std::vec::Vec<::std::string::String>,
                ::std::vec::Vec<::std::string::String>,
            ) = {
                #bindings
                #targets.into_lists()
            };
            let #__cache_response =
                #rt::http::IntoResponse::into_response(__cache_handler(#(#arg_idents),*).await);
            #rt::http::after_mutation(#__cache_response, #__cache_keys, #__cache_groups).await
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
            .map(|i| local(&format!("__cache_arg{i}")))
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
    locals!(__cache_shape);
    quote!({
        #[allow(unused_imports)]
        use #rt::__private::{ShapeViaOption as _, ShapeViaPlain as _, ShapeViaResult as _};
        #[allow(clippy::needless_borrow)]
        let #__cache_shape = (&&&#rt::__private::ShapeProbe::<#ret, #result, #option>::new()).shape();
        #__cache_shape
    })
}

/// Asserts that the value the return type's shape caches (see [`shape_probe`]; `result` and
/// `option` as there) is a `CacheValue`, spanned on the return type `ret`: a value type that cannot
/// be cached is reported there, with the runtime's message (see
/// `cache_runtime::__private::CacheValue`). The shape is probed again rather than taken from the
/// generated local: the compiler would point at that local, whose span is the attribute's.
///
/// (The span is the return type's first token: a span joined over the whole type would need
/// tokens spanned on its last one too, and the compiler then reports the runtime's bounds on
/// several spans, no longer as repeats of this error.)
fn assert_cacheable(ret: &syn::Type, result: bool, option: bool) -> TokenStream {
    let rt = runtime();
    let probe = quote!(#rt::__private::ShapeProbe::<#ret, #result, #option>::new());
    quote_spanned! {ret.span()=>
        {
            #[allow(unused_imports)]
            use #rt::__private::{ShapeViaOption as _, ShapeViaPlain as _, ShapeViaResult as _};
            #[allow(clippy::needless_borrow)]
            (&&&#probe).shape().cached_value_is_cacheable();
        }
    }
}

/// `#rt::__private::#name(#args)`, every token but the arguments spanned on the return type `ret`:
/// a call of one of the runtime's fns whose bounds are a cached value's. When the value type falls
/// short, their errors are reported where [`assert_cacheable`] reports its own, and the compiler
/// drops most of them as repeats of that one. (With a `crate = ".."` path, which keeps its own span
/// (see [`runtime_at`]), they are reported on the attribute, after the assertion's.)
fn value_call(ret: &syn::Type, name: &str, args: &TokenStream) -> TokenStream {
    let span = ret.span();
    let rt = runtime_at(span);
    let name = syn::Ident::new(name, span);
    quote_spanned!(span=> #rt::__private::#name(#args))
}

/// [`value_call`] awaited (boxed first when `boxed`), spanned on the return type too: the bounds of
/// the fn's future and of its `.await` are reported there.
fn value_await(ret: &syn::Type, name: &str, args: &TokenStream, boxed: bool) -> TokenStream {
    let call = value_call(ret, name, args);
    if boxed {
        quote_spanned!(ret.span()=> ::std::boxed::Box::pin(#call).await)
    } else {
        quote_spanned!(ret.span()=> #call.await)
    }
}

/// Turns the future `__cache_body` into `__cache_run`, a `Body` that runs in a task of its own when
/// the future is `Send + 'static` (autoref specialization on `Send`; the probe is dropped before any
/// await). Bodies that borrow run in place: specialization cannot see lifetimes; so do all bodies
/// with `spawn = false` (`spawn` false).
fn spawn_probe(checked: &Checked, spawn: bool) -> TokenStream {
    let rt = runtime();
    locals!(__cache_run, __cache_body, __cache_probe);
    if !spawn || !checked.may_be_static {
        return quote! {
            let #__cache_run = #rt::__private::Body::Local(#__cache_body);
        };
    }
    quote! {
        let #__cache_run = {
            use #rt::__private::{ViaLocal as _, ViaSpawn as _};
            let #__cache_probe = #rt::__private::SpawnProbe::new(#__cache_body);
            let #__cache_run = (&#__cache_probe).body();
            #__cache_run
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
    let codec = match args.codec {
        Some(variant) => {
            let variant = format_ident!("{variant}");
            quote!(::core::option::Option::Some(#rt::Codec::#variant))
        }
        None => quote!(::core::option::Option::None),
    };
    // Responses default to a binary codec: their bodies are stored as raw bytes.
    let default_codec = if args.http.is_some() {
        quote!(#rt::Codec::MessagePack)
    } else {
        quote!(#rt::Codec::Json)
    };
    let version = args.version;
    quote! {
        static __CACHE_SITE: #rt::__private::Site = #rt::__private::Site::new(
            ::core::module_path!(),
            #function_name,
            #backend,
                        #rt::__private::Policy {
                ttl_ms: #ttl_ms,
                stale_ms: #stale_ms,
                stale_if_error_ms: #stale_if_error_ms,
                lock_ms: #lock_ms,
                codec: #codec,
                default_codec: #default_codec,
                version: #version,
            },
        );
    }
}

/// The call's group names; a group that cannot be built makes `__cache_key` unkeyable (the call
/// runs uncached).
fn render_groups(templates: &[Template], types: &[String]) -> TokenStream {
    let rt = runtime();
    locals!(__cache_key, __cache_names);
    let count = templates.len();
    let pushes = templates.iter().map(|t| {
        let rendered = t.render(&rt, types);
        quote!(#rt::__private::push_group(&mut #__cache_key, &mut #__cache_names, #rendered);)
    });
    quote!({
        let mut #__cache_names = ::std::vec::Vec::with_capacity(#count);
        #(#pushes)*
        #__cache_names
    })
}

/// The targets of `#[cache_invalidate]`, with each template's text for the error log of a target
/// that cannot be built.
fn render_targets(keys: &[Template], groups: &[Template], types: &[String]) -> TokenStream {
    let rt = runtime();
    let keys = keys.iter().map(|t| {
        let (rendered, text) = (t.render(&rt, types), t.literal.value());
        quote!(.key(#rendered, #text))
    });
    let groups = groups.iter().map(|t| {
        let (rendered, text) = (t.render(&rt, types), t.literal.value());
        quote!(.group(#rendered, #text))
    });
    quote!(#rt::__private::Targets::new() #(#keys)* #(#groups)*)
}

/// `<fn>_key` and `<fn>_invalidate`, taking `inputs` and running `bindings` before the key.
fn helper_fns(
    args: &CacheArgs,
    function: &ItemFn,
    context: &Context,
    inputs: TokenStream,
    bindings: TokenStream,
    key_expr: &dyn Fn(&syn::Ident) -> TokenStream,
) -> TokenStream {
    let rt = runtime();
    locals!(__cache_key);
    let ItemFn { vis, sig, .. } = function;
    let vis = context.vis.as_ref().unwrap_or(vis);
    let ident = &sig.ident;
    let backend = &args.backend;
    let (impl_generics, _, where_clause) = sig.generics.split_for_impl();
    let key_fn = companion_ident(ident, "key");
    let invalidate_fn = companion_ident(ident, "invalidate");
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
        #[allow(unused_variables, clippy::needless_pass_by_value, clippy::too_many_arguments)]
        #vis fn #key_fn #impl_generics (#inputs) -> ::std::string::String #where_clause {
            #bindings
            let #__cache_key: #rt::__private::KeyBuf = #key_fn_key;
            #rt::key::normalize_key(#__cache_key.into_string())
        }

        #[doc = #invalidate_doc]
        #[allow(unused_variables, clippy::needless_pass_by_value, clippy::too_many_arguments)]
        #vis async fn #invalidate_fn #impl_generics (#inputs)
            -> ::core::result::Result<(), #rt::CacheError> #where_clause
        {
            let #__cache_key: #rt::__private::KeyBuf = {
                #bindings
                #invalidate_fn_key
            };
            if !#__cache_key.is_keyable() {
                return ::core::result::Result::Err(#rt::__private::unkeyable(#target));
            }
            #rt::__private::invalidate_entry(#backend, #__cache_key.into_string()).await
        }
    }
}

/// The expression computing a call's key: the `key` template, or the default key. In handlers the
/// bound names are references and request metadata (`HeaderMap`, `Uri`, `Method`) may enter the key.
///
/// `generated` is the fn the expression is placed in (the fn itself or a companion), `method` the
/// cached fn. Default keys of fns without `self` take their parent path (module, or type for
/// associated fns) from the type name of a marker fn nested in `generated`, computed once; in a
/// trait impl the parent is `<Type as Trait>`, from the type name of the method's fn item. Generic
/// fns add the type name of each type parameter, and each const parameter, before the arguments.
fn key_expr(
    args: &CacheArgs,
    checked: &Checked,
    context: &Context,
    function_name: &str,
    handler: bool,
    generated: &syn::Ident,
    method: &syn::Ident,
) -> TokenStream {
    let rt = runtime();
    locals!(__cache_prefix, __cache_prefix_owned, __cache_k);
    if let Some(template) = &args.key {
        return template.render(&rt, &checked.template_types());
    }
    let (mut impl_types, mut impl_consts): (&[syn::Ident], &[syn::Ident]) = (&[], &[]);
    // More key parts: the receiver's type for a `name`d method, or the refusal of a key whose
    // parent is a generic impl of unknown parameters.
    let mut extra = TokenStream::new();
    // Whether `extra` only refuses generic parents (adds no key part).
    let mut extra_refuses_only = true;
    let (prefix, head) =
        if let (Some(_), None, true) = (&context.trait_path, &args.name, context.companions) {
            // `<Type as Trait>::method`, from the type name of the method's fn item, which a fn
            // inherent to the type computes (inside the method itself, naming its own fn item would
            // need the auto traits of its own future).
            let helper = companion_ident(method, "prefix").to_string();
            let helper = format_ident!("__cache_{}", helper);
            let turbofish = checked.turbofish();
            let prefix = quote!(Self::#helper #turbofish ());
            // A static is shared by every instantiation: only a non-generic prefix is kept in one.
            let generic = !context.impl_types.is_empty()
                || !context.impl_consts.is_empty()
                || !checked.type_params.is_empty()
                || !checked.const_params.is_empty();
            let prefix = if generic {
                quote! {
                    let #__cache_prefix_owned: ::std::string::String = #prefix;
                    let #__cache_prefix: &str = &#__cache_prefix_owned;
                }
            } else {
                quote! {
                    static __CACHE_PREFIX: ::std::sync::OnceLock<::std::string::String> =
                        ::std::sync::OnceLock::new();
                    let #__cache_prefix: &str = __CACHE_PREFIX.get_or_init(|| #prefix);
                }
            };
            (prefix, Head::Prefix(quote!(#__cache_prefix)))
        } else if checked.has_receiver && args.name.is_none() && context.trait_path.is_none() {
            (
                TokenStream::new(),
                Head::Of(quote!(::std::any::type_name::<Self>(), #function_name)),
            )
        } else if args.name.is_some() {
            // A `name` pins the key to the module path and that name; the impl's parameters (and
            // the receiver's type) still tell instantiations apart.
            (impl_types, impl_consts) = (&context.impl_types, &context.impl_consts);
            let mut prefix = TokenStream::new();
            if checked.has_receiver {
                extra = quote!(.arg(::std::any::type_name::<Self>()));
                extra_refuses_only = false;
            } else if impl_types.is_empty() && impl_consts.is_empty() {
                // No receiver and no `#[cached_impl]`: as below, a generic parent (told by the
                // marker) would let its instantiations share one entry; such calls run uncached.
                let __cache_generic = local("__cache_generic");
                let marker_prefix = marker_prefix(generated, function_name);
                extra = quote!(.refuse_if(#__cache_generic));
                prefix = quote! {
                    fn __cache_marker() {}
                    static __CACHE_GENERIC: ::std::sync::OnceLock<bool> =
                        ::std::sync::OnceLock::new();
                    let #__cache_generic: bool = *__CACHE_GENERIC.get_or_init(|| {
                        let prefix = #marker_prefix;
                        #rt::__private::generic_parent(&prefix, #function_name)
                    });
                };
            }
            (
                prefix,
                Head::Prefix(quote!(::core::concat!(
                    ::core::module_path!(),
                    "::",
                    #function_name,
                    ":"
                ))),
            )
        } else {
            // `Type<_>` or `<Type<_> as Trait>` from the marker: the impl's parameters go into the
            // hash. Where they are unknown (no `#[cached_impl]`), a generic parent would let every
            // instantiation share one entry: such calls run uncached instead.
            (impl_types, impl_consts) = (&context.impl_types, &context.impl_consts);
            // Whether the parent is generic is decided once, with the prefix (not on every call).
            let __cache_generic = local("__cache_generic");
            if impl_types.is_empty() && impl_consts.is_empty() {
                extra = quote!(.refuse_if(#__cache_generic));
            }
            let marker_prefix = marker_prefix(generated, function_name);
            (
                quote! {
                    fn __cache_marker() {}
                    static __CACHE_PREFIX: ::std::sync::OnceLock<(::std::string::String, bool)> =
                        ::std::sync::OnceLock::new();
                    let (#__cache_prefix, #__cache_generic): (&str, bool) = {
                        let (prefix, generic) = __CACHE_PREFIX.get_or_init(|| {
                            let prefix = #marker_prefix;
                            let generic = #rt::__private::generic_parent(&prefix, #function_name);
                            (prefix, generic)
                        });
                        (prefix.as_str(), *generic)
                    };
                    let _ = #__cache_generic;
                },
                Head::Prefix(quote!(#__cache_prefix)),
            )
        };
    let type_names = impl_types
        .iter()
        .chain(&checked.type_params)
        .map(|t| quote!(.arg(::std::any::type_name::<#t>())));
    let consts = impl_consts
        .iter()
        .chain(&checked.const_params)
        .map(|c| quote!(.arg(&#c)));
    let generics: Vec<TokenStream> = type_names
        .chain(consts)
        .chain((!extra.is_empty()).then_some(extra))
        .collect();
    let named = checked
        .key_args
        .iter()
        .flat_map(|arg| {
            arg.names
                .iter()
                .map(move |name| (arg.span, name, arg.integer))
        })
        .filter(|(_, name, _)| !args.skip.contains(name));
    let named: Vec<_> = named.collect();
    // A compact call text (see the runtime's `key/compact.rs`) where the prefix is the same for
    // every call of this site and every key part is an integer argument.
    let not_generic = context.impl_types.is_empty()
        && context.impl_consts.is_empty()
        && checked.type_params.is_empty()
        && checked.const_params.is_empty();
    // Not with `name = ..`: two fns may share that prefix, and a key must name one call text.
    let compact = !handler
        && args.name.is_none()
        && not_generic
        && extra_refuses_only
        && named.iter().all(|(_, _, integer)| *integer);
    // Written in place: the call text, with no digest (see `CallKeyBuilder`).
    let start = match head {
        Head::Prefix(prefix) if compact => quote! {
            compact({
                static __CACHE_PREFIX_ID: ::std::sync::OnceLock<#rt::__private::CallPrefix> =
                    ::std::sync::OnceLock::new();
                *__CACHE_PREFIX_ID.get_or_init(|| #rt::__private::prefix_id(#prefix))
            })
        },
        Head::Prefix(prefix) => quote!(new(#prefix)),
        Head::Of(of) => quote!(new_of(#of)),
    };
    let steps: Vec<TokenStream> = named
        .into_iter()
        .map(|(span, name, integer)| match (handler, integer) {
            (true, _) => quote_spanned! {span=>
                (&#rt::http::HttpKeyArg(&*#name)).add_to(&mut #__cache_k);
            },
            (false, true) => quote_spanned! {span=>
                (&#rt::__private::IntegerProbe(&#name)).add_to(&mut #__cache_k);
            },
            (false, false) => quote_spanned!(span=> #__cache_k.arg(&#name);),
        })
        .collect();
    let probes = if handler {
        quote!(use #rt::http::{HttpKeyViaHeaders as _, HttpKeyViaSerialize as _};)
    } else {
        quote!(use #rt::__private::{ViaInteger as _, ViaKeyArg as _};)
    };
    let span = Span::call_site();
    quote_spanned! {span=> {
        #prefix
        #[allow(unused_imports)]
        #probes
        let mut #__cache_k = #rt::__private::CallKeyBuilder::#start;
        #(#__cache_k #generics;)*
        #(#steps)*
        #__cache_k.finish()
    }}
}

/// The head of a default key from the type name of the `__cache_marker` fn the generated code
/// nests in the fn (see the runtime's `marker_prefix`).
fn marker_prefix(generated: &syn::Ident, function_name: &str) -> TokenStream {
    let rt = runtime();
    let generated = generated.to_string();
    quote! {
        #rt::__private::marker_prefix(
            ::std::any::type_name_of_val(&__cache_marker),
            #generated,
            #function_name,
        )
    }
}

/// How a default key's head is given: whole (`"{parent}::{function}:"`), or as module and name.
enum Head {
    Prefix(TokenStream),
    Of(TokenStream),
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
