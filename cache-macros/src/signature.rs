//! What the macro needs to know about the function's signature.

use syn::{
    spanned::Spanned, visit_mut::VisitMut, FnArg, GenericParam, Pat, PatType, ReturnType,
    Signature, Type,
};

/// One argument that can enter the key: its bound names and the span to report problems on.
pub(crate) struct KeyArg {
    pub(crate) names: Vec<syn::Ident>,
    pub(crate) span: proc_macro2::Span,
    /// A plain name of a primitive integer type: its JSON is its digits, written without serde.
    pub(crate) integer: bool,
}

/// The checked signature.
pub(crate) struct Checked {
    pub(crate) has_receiver: bool,
    /// The receiver as the refresh companion takes it (no attributes, no `mut` on `self`).
    pub(crate) receiver: Option<syn::Receiver>,
    pub(crate) key_args: Vec<KeyArg>,
    /// Inputs without the receiver and without `mut`, for the generated helper fns.
    pub(crate) helper_inputs: Vec<PatType>,
    /// One plain name per helper input, for companions that pass the arguments on: the argument's
    /// own name when its pattern is a plain name, else `__cache_argN` (a generated local, hidden from
    /// the user's names).
    pub(crate) forward: Vec<syn::Ident>,
    /// Type and const parameters (lifetimes aside), in order: generic fns key each instantiation
    /// apart.
    pub(crate) type_params: Vec<syn::Ident>,
    pub(crate) const_params: Vec<syn::Ident>,
    /// Names bound by `State<..>` arguments, which never enter a key.
    pub(crate) state_names: Vec<syn::Ident>,
    /// No receiver, no lifetime parameter, and no reference or lifetime in any argument type: the
    /// body may be `'static` and can then run in a task of its own. (Whether it is `Send` is left to
    /// the type system; lifetimes cannot be, so they are decided here.)
    pub(crate) may_be_static: bool,
}

impl Checked {
    /// Every name a template may use as a value: the arguments' bindings and const parameters.
    pub(crate) fn names(&self) -> Vec<String> {
        self.key_args
            .iter()
            .flat_map(|a| a.names.iter().map(ToString::to_string))
            .chain(self.const_params.iter().map(ToString::to_string))
            .collect()
    }

    /// Type parameters a template may name (`{T}` renders `std::any::type_name::<T>()`), unless an
    /// argument has the same name.
    pub(crate) fn template_types(&self) -> Vec<String> {
        let names = self.names();
        self.type_params
            .iter()
            .map(ToString::to_string)
            .filter(|t| !names.contains(t))
            .collect()
    }

    /// Type and const parameters as a turbofish (`::<T, N>`), or nothing.
    pub(crate) fn turbofish(&self) -> proc_macro2::TokenStream {
        if self.type_params.is_empty() && self.const_params.is_empty() {
            return proc_macro2::TokenStream::new();
        }
        let params = self.type_params.iter().chain(&self.const_params);
        quote::quote!(::<#(#params),*>)
    }
}

/// What the attribute needs from the signature.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Needs {
    /// An axum handler: any `IntoResponse` return type (even `impl Trait`), no receiver.
    pub(crate) handler: bool,
    /// The fn must return a value (it is cached).
    pub(crate) value: bool,
}

/// What makes a fn generic, for messages.
const GENERIC_HANDLER: &str = "generic `http` handlers are not supported: axum needs one concrete \
     handler per route; cache a non-generic handler that calls the generic code";

pub(crate) fn check(sig: &Signature, needs: Needs) -> syn::Result<Checked> {
    let boxed = match &sig.output {
        ReturnType::Type(_, ty) if sig.asyncness.is_none() => boxed_future(ty),
        _ => None,
    };
    if let Some(future) = boxed {
        return Err(syn::Error::new(
            future,
            "this fn returns a boxed future: #[async_trait] rewrote it before the cache attribute \
             ran. On an `#[async_trait]` impl, put `#[cache_runtime::cached_impl]` on the impl \
             block, above `#[async_trait]`, so that the cache attributes run first",
        ));
    }
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(
            sig.fn_token.span(),
            "#[cached] works on `async fn` only: add `async`",
        ));
    }
    let mut type_params = Vec::new();
    let mut const_params = Vec::new();
    for param in &sig.generics.params {
        match param {
            GenericParam::Lifetime(_) => {}
            other if needs.handler => return Err(syn::Error::new(other.span(), GENERIC_HANDLER)),
            GenericParam::Type(t) => type_params.push(t.ident.clone()),
            GenericParam::Const(c) => const_params.push(c.ident.clone()),
        }
    }
    // What is cached of the return value (its shape) is decided by its type, in the generated
    // code (`cache_runtime::shape`): aliases of `Result` and `Option` count as those types.
    match &sig.output {
        ReturnType::Default if needs.value => {
            return Err(syn::Error::new(
                sig.ident.span(),
                "a #[cached] fn must return the value to cache",
            ))
        }
        ReturnType::Default => {}
        ReturnType::Type(_, ty) => {
            if !needs.handler {
                reject_impl_trait(ty, "return type")?;
            }
            if needs.value && !needs.handler {
                reject_borrowed(ty)?;
            }
        }
    }
    let mut has_receiver = false;
    let mut receiver = None;
    let mut key_args = Vec::new();
    let mut helper_inputs = Vec::new();
    let mut forward = Vec::new();
    let mut state_names = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) if needs.handler => {
                return Err(syn::Error::new(
                    receiver.span(),
                    "`http` handlers cannot take `self`: axum handlers are free functions",
                ))
            }
            FnArg::Receiver(r) => {
                has_receiver = true;
                let mut r = r.clone();
                r.attrs.clear();
                if r.reference.is_none() {
                    r.mutability = None;
                }
                receiver = Some(r);
            }
            FnArg::Typed(arg) => {
                reject_impl_trait(&arg.ty, "argument type")?;
                let mut helper = arg.clone();
                helper.attrs.clear();
                StripMut.visit_pat_mut(&mut helper.pat);
                forward.push(match &*helper.pat {
                    Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => p.ident.clone(),
                    _ => crate::expand::local(&format!("__cache_arg{}", helper_inputs.len())),
                });
                helper_inputs.push(helper);
                let mut names = Vec::new();
                bound_names(&arg.pat, &mut names);
                if is_state(&arg.ty) {
                    state_names.extend(names);
                    continue;
                }
                key_args.push(KeyArg {
                    integer: matches!(&*arg.pat, Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none())
                        && is_integer(&arg.ty),
                    names,
                    span: arg.pat.span(),
                });
            }
        }
    }
    // Type parameters may be borrowed types unless they are declared `'static` (autoref
    // specialization cannot see lifetimes, so a body of a non-`'static` type would be picked for a
    // task of its own and then fail to borrow-check).
    let may_be_static = !has_receiver
        && sig.generics.lifetimes().next().is_none()
        && helper_inputs.iter().all(|input| !borrows(&input.ty))
        && type_params
            .iter()
            .all(|t| declared_static(&sig.generics, t));
    Ok(Checked {
        has_receiver,
        receiver,
        key_args,
        helper_inputs,
        forward,
        may_be_static,
        type_params,
        const_params,
        state_names,
    })
}

/// Whether type parameter `param` is bounded by `'static`, in its declaration or a where clause.
fn declared_static(generics: &syn::Generics, param: &syn::Ident) -> bool {
    let is_static = |bound: &syn::TypeParamBound| matches!(bound, syn::TypeParamBound::Lifetime(l) if l.ident == "static");
    let declared = generics
        .type_params()
        .any(|t| &t.ident == param && t.bounds.iter().any(is_static));
    let in_where = generics
        .where_clause
        .iter()
        .flat_map(|w| &w.predicates)
        .any(|p| {
            matches!(p, syn::WherePredicate::Type(t)
            if matches!(&t.bounded_ty, Type::Path(path) if path.path.is_ident(param))
                && t.bounds.iter().any(is_static))
        });
    declared || in_where
}

/// A cached value must be owned: a reference or a lifetime other than `'static` in the return type
/// is an error on it.
fn reject_borrowed(ty: &Type) -> syn::Result<()> {
    struct Find(Option<proc_macro2::Span>);
    impl syn::visit::Visit<'_> for Find {
        fn visit_type_reference(&mut self, node: &syn::TypeReference) {
            self.0.get_or_insert(node.span());
        }
        fn visit_lifetime(&mut self, node: &syn::Lifetime) {
            if node.ident != "static" {
                self.0.get_or_insert(node.span());
            }
        }
    }
    let mut find = Find(None);
    syn::visit::Visit::visit_type(&mut find, ty);
    match find.0 {
        Some(span) => Err(syn::Error::new(
            span,
            "#[cached] values are stored and handed to later calls: the return type cannot borrow \
             (no references, no lifetimes but `'static`); return an owned value (`String`, \
             `Vec<T>`, `Arc<T>`)",
        )),
        None => Ok(()),
    }
}

/// `Pin<Box<dyn Future<..> ..>>` (what `#[async_trait]` makes of an `async fn`): the span of the
/// future type.
fn boxed_future(ty: &Type) -> Option<proc_macro2::Span> {
    let last = |ty: &Type| match ty {
        Type::Path(p) => p.path.segments.last().cloned(),
        _ => None,
    };
    let only_arg = |segment: &syn::PathSegment| match &segment.arguments {
        syn::PathArguments::AngleBracketed(a) => a.args.iter().find_map(|arg| match arg {
            syn::GenericArgument::Type(t) => Some(t.clone()),
            _ => None,
        }),
        _ => None,
    };
    let pin = last(ty).filter(|s| s.ident == "Pin")?;
    let boxed = only_arg(&pin)?;
    let boxed_segment = last(&boxed).filter(|s| s.ident == "Box")?;
    let Type::TraitObject(object) = only_arg(&boxed_segment)? else {
        return None;
    };
    object
        .bounds
        .iter()
        .any(|b| matches!(b, syn::TypeParamBound::Trait(t) if t.path.segments.last().is_some_and(|s| s.ident == "Future")))
        .then(|| object.span())
}

/// `State<..>` (axum's application state) never enters a key. Only the generic form counts, so a
/// user type that happens to be called `State` is keyed like any other.
pub(crate) fn is_state(ty: &Type) -> bool {
    matches!(ty, Type::Path(p) if p.path.segments.last().is_some_and(|s| {
        s.ident == "State" && matches!(s.arguments, syn::PathArguments::AngleBracketed(_))
    }))
}

fn reject_impl_trait(ty: &Type, what: &str) -> syn::Result<()> {
    struct Find(Option<proc_macro2::Span>);
    impl syn::visit::Visit<'_> for Find {
        fn visit_type_impl_trait(&mut self, node: &syn::TypeImplTrait) {
            self.0.get_or_insert(node.span());
        }
    }
    let mut find = Find(None);
    syn::visit::Visit::visit_type(&mut find, ty);
    match find.0 {
        Some(span) if what == "argument type" => Err(syn::Error::new(
            span,
            "#[cached] needs a named argument type, not `impl Trait` (an anonymous type parameter \
             that the key could not name): write a type parameter, `fn f<T: Trait>(x: T)`",
        )),
        Some(span) => Err(syn::Error::new(
            span,
            format!("#[cached] needs a concrete {what}, not `impl Trait`"),
        )),
        None => Ok(()),
    }
}

/// Whether a type mentions a reference or a lifetime.
fn borrows(ty: &Type) -> bool {
    struct Find(bool);
    impl syn::visit::Visit<'_> for Find {
        fn visit_type_reference(&mut self, _: &syn::TypeReference) {
            self.0 = true;
        }
        fn visit_lifetime(&mut self, _: &syn::Lifetime) {
            self.0 = true;
        }
    }
    let mut find = Find(false);
    syn::visit::Visit::visit_type(&mut find, ty);
    find.0
}

fn bound_names(pat: &Pat, out: &mut Vec<syn::Ident>) {
    match pat {
        Pat::Ident(p) => {
            out.push(p.ident.clone());
            if let Some((_, sub)) = &p.subpat {
                bound_names(sub, out);
            }
        }
        Pat::TupleStruct(p) => p.elems.iter().for_each(|e| bound_names(e, out)),
        Pat::Tuple(p) => p.elems.iter().for_each(|e| bound_names(e, out)),
        Pat::Slice(p) => p.elems.iter().for_each(|e| bound_names(e, out)),
        Pat::Struct(p) => p.fields.iter().for_each(|f| bound_names(&f.pat, out)),
        Pat::Reference(p) => bound_names(&p.pat, out),
        Pat::Paren(p) => bound_names(&p.pat, out),
        Pat::Type(p) => bound_names(&p.pat, out),
        _ => {}
    }
}

struct StripMut;

impl VisitMut for StripMut {
    fn visit_pat_ident_mut(&mut self, node: &mut syn::PatIdent) {
        node.mutability = None;
        syn::visit_mut::visit_pat_ident_mut(self, node);
    }
}

/// Whether `ty` names a primitive integer type (`u64`, `i32`, ..) as it is.
fn is_integer(ty: &syn::Type) -> bool {
    const INTEGERS: [&str; 12] = [
        "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128", "isize",
    ];
    match ty {
        syn::Type::Path(path) if path.qself.is_none() => path
            .path
            .get_ident()
            .is_some_and(|ident| INTEGERS.iter().any(|int| ident == int)),
        syn::Type::Group(group) => is_integer(&group.elem),
        syn::Type::Paren(paren) => is_integer(&paren.elem),
        _ => false,
    }
}
