//! What the macro needs to know about the function's signature.

use syn::{
    spanned::Spanned, visit_mut::VisitMut, FnArg, GenericParam, Pat, PatType, ReturnType,
    Signature, Type,
};

/// One argument that can enter the key: its bound names and the span to report problems on.
pub(crate) struct KeyArg {
    pub(crate) names: Vec<syn::Ident>,
    pub(crate) span: proc_macro2::Span,
}

/// The checked signature.
pub(crate) struct Checked {
    pub(crate) has_receiver: bool,
    pub(crate) key_args: Vec<KeyArg>,
    /// Inputs without the receiver and without `mut`, for the generated helper fns.
    pub(crate) helper_inputs: Vec<PatType>,
    /// No receiver, no lifetime parameter, and no reference or lifetime in any argument type: the
    /// body may be `'static` and can then run in a task of its own. (Whether it is `Send` is left to
    /// the type system; lifetimes cannot be, so they are decided here.)
    pub(crate) may_be_static: bool,
}

impl Checked {
    /// Every name a template may use.
    pub(crate) fn names(&self) -> Vec<String> {
        self.key_args
            .iter()
            .flat_map(|a| a.names.iter().map(ToString::to_string))
            .collect()
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

pub(crate) fn check(sig: &Signature, needs: Needs) -> syn::Result<Checked> {
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(
            sig.fn_token.span(),
            "#[cached] works on `async fn` only: add `async`",
        ));
    }
    for param in &sig.generics.params {
        match param {
            GenericParam::Lifetime(_) => {}
            other => {
                return Err(syn::Error::new(
                    other.span(),
                    "#[cached] fns cannot have type or const parameters: each instantiation would \
                     need its own key and value type; cache a non-generic wrapper instead",
                ))
            }
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
        }
    }
    let mut has_receiver = false;
    let mut key_args = Vec::new();
    let mut helper_inputs = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) if needs.handler => {
                return Err(syn::Error::new(
                    receiver.span(),
                    "`http` handlers cannot take `self`: axum handlers are free functions",
                ))
            }
            FnArg::Receiver(_) => has_receiver = true,
            FnArg::Typed(arg) => {
                reject_impl_trait(&arg.ty, "argument type")?;
                let mut helper = arg.clone();
                helper.attrs.clear();
                StripMut.visit_pat_mut(&mut helper.pat);
                helper_inputs.push(helper);
                if is_state(&arg.ty) {
                    continue;
                }
                let mut names = Vec::new();
                bound_names(&arg.pat, &mut names);
                key_args.push(KeyArg {
                    names,
                    span: arg.pat.span(),
                });
            }
        }
    }
    let may_be_static = !has_receiver
        && sig.generics.lifetimes().next().is_none()
        && helper_inputs.iter().all(|input| !borrows(&input.ty));
    Ok(Checked {
        has_receiver,
        key_args,
        helper_inputs,
        may_be_static,
    })
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
