//! The arguments of `#[cached(...)]`, parsed and checked.

use proc_macro2::Span;
use syn::{
    parse::Parser, punctuated::Punctuated, spanned::Spanned, Expr, ExprLit, Lit, LitStr, Meta,
    Token,
};

use crate::{template::Template, ttl::parse_duration_ms};

/// Everything the attribute said.
pub(crate) struct CacheArgs {
    pub(crate) ttl_ms: u64,
    pub(crate) backend: LitStr,
    pub(crate) key: Option<Template>,
    pub(crate) groups: Vec<Template>,
    pub(crate) name: Option<LitStr>,
    pub(crate) cache_none: bool,
    pub(crate) cache_err: bool,
    /// `Some(visibility)` for axum handlers.
    pub(crate) http: Option<String>,
    pub(crate) stale_ms: u64,
    pub(crate) stale_if_error_ms: u64,
    pub(crate) lock_ms: u64,
    /// `spawn = false`: the body always runs in the caller's task.
    pub(crate) spawn: bool,
    /// `force_refresh = <expr>`: a bool over the arguments; when true the call recomputes.
    pub(crate) force_refresh: Option<Expr>,
    /// `cache_if = path`: `fn(&V) -> bool` deciding whether a value is stored.
    pub(crate) cache_if: Option<Expr>,
    /// `skip = [a, b]`: arguments left out of the default key.
    pub(crate) skip: Vec<syn::Ident>,
    /// `ttl_from = path`: `fn(&V) -> Duration`, each value's own TTL (at most `ttl`).
    pub(crate) ttl_from: Option<Expr>,
    /// `codec = "json" | "msgpack"`: the runtime's `Codec` variant name, if given.
    pub(crate) codec: Option<&'static str>,
    /// `version = N`: the schema version of the stored values (0 unless given).
    pub(crate) version: u32,
    /// `crate = "path"`: where the runtime is (a re-export), instead of `::cache_runtime`.
    pub(crate) krate: Option<syn::Path>,
}

/// Lock TTL when `lock` is given without a duration.
const DEFAULT_LOCK_MS: u64 = 5_000;

const KNOWN: &str = "ttl, backend, key, group, name, cache_none, cache_err, stale, stale_if_error, lock, spawn, force_refresh, cache_if, ttl_from, skip, http, visibility, codec, version, crate";

impl CacheArgs {
    /// The arguments of the attribute being expanded.
    pub(crate) fn parse(tokens: proc_macro2::TokenStream) -> syn::Result<Self> {
        Self::parse_at(tokens, Span::call_site())
    }

    /// The arguments of an attribute at `attr` (errors about the attribute as a whole go there).
    pub(crate) fn parse_at(tokens: proc_macro2::TokenStream, attr: Span) -> syn::Result<Self> {
        let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(tokens)?;
        let mut ttl_ms = None;
        let mut backend = None;
        let mut key = None;
        let mut groups = Vec::new();
        let mut name = None;
        let mut cache_none = None;
        let mut cache_err = None;
        let mut http = None;
        let mut visibility: Option<LitStr> = None;
        let mut stale_ms = None;
        let mut stale_if_error_ms = None;
        let mut lock_ms = None;
        let mut spawn = None;
        let mut force_refresh = None;
        let mut cache_if = None;
        let mut skip: Option<Vec<syn::Ident>> = None;
        let mut ttl_from = None;
        let mut krate = None;
        let mut codec = None;
        let mut version = None;
        for meta in metas {
            let ident = meta
                .path()
                .get_ident()
                .ok_or_else(|| {
                    syn::Error::new(
                        meta.path().span(),
                        format!("unknown argument; expected one of: {KNOWN}"),
                    )
                })?
                .clone();
            let label = ident.to_string();
            match label.as_str() {
                "ttl" => set_once(
                    &mut ttl_ms,
                    &ident,
                    parse_duration(value_of(&meta)?, "ttl")?,
                )?,
                "stale" => set_once(
                    &mut stale_ms,
                    &ident,
                    parse_duration(value_of(&meta)?, "stale")?,
                )?,
                "stale_if_error" => set_once(
                    &mut stale_if_error_ms,
                    &ident,
                    parse_duration(value_of(&meta)?, "stale_if_error")?,
                )?,
                "lock" => {
                    let ms = match &meta {
                        Meta::Path(_) => DEFAULT_LOCK_MS,
                        _ => parse_duration(value_of(&meta)?, "lock")?,
                    };
                    set_once(&mut lock_ms, &ident, ms)?
                }
                "backend" => {
                    let lit = string_value(value_of(&meta)?, "backend")?;
                    if lit.value().trim().is_empty() {
                        return Err(syn::Error::new(
                            lit.span(),
                            "backend name must not be empty",
                        ));
                    }
                    set_once(&mut backend, &ident, lit)?;
                }
                "key" => {
                    let template = Template::parse(string_value(value_of(&meta)?, "key")?)?;
                    set_once(&mut key, &ident, template)?;
                }
                "group" => groups.push(Template::parse(string_value(value_of(&meta)?, "group")?)?),
                "name" => {
                    let lit = string_value(value_of(&meta)?, "name")?;
                    if lit.value().trim().is_empty() {
                        return Err(syn::Error::new(lit.span(), "name must not be empty"));
                    }
                    set_once(&mut name, &ident, lit)?;
                }
                "cache_none" => set_once(&mut cache_none, &ident, flag(&meta)?)?,
                "cache_err" => set_once(&mut cache_err, &ident, flag(&meta)?)?,
                "spawn" => set_once(&mut spawn, &ident, flag(&meta)?)?,
                "force_refresh" => set_once(&mut force_refresh, &ident, value_of(&meta)?.clone())?,
                "cache_if" => {
                    let keep = value_of(&meta)?;
                    if matches!(keep, Expr::Lit(_)) {
                        return Err(syn::Error::new(
                            keep.span(),
                            "`cache_if` takes a function `fn(&V) -> bool` (a path or a closure), \
                             e.g. `cache_if = is_complete`",
                        ));
                    }
                    set_once(&mut cache_if, &ident, keep.clone())?
                }
                "ttl_from" => {
                    let ttl_of = value_of(&meta)?;
                    if matches!(ttl_of, Expr::Lit(_)) {
                        return Err(syn::Error::new(
                            ttl_of.span(),
                            "`ttl_from` takes a function `fn(&V) -> Duration` (a path or a \
                             closure) giving each value's TTL, e.g. `ttl_from = token_lifetime`; \
                             for a fixed TTL use `ttl`",
                        ));
                    }
                    set_once(&mut ttl_from, &ident, ttl_of.clone())?
                }
                "skip" => set_once(&mut skip, &ident, skip_list(value_of(&meta)?)?)?,
                "crate" => set_once(&mut krate, &ident, runtime_path(value_of(&meta)?)?)?,
                "codec" => set_once(&mut codec, &ident, codec_name(value_of(&meta)?)?)?,
                "version" => set_once(&mut version, &ident, schema_version(value_of(&meta)?)?)?,
                "http" => set_once(&mut http, &ident, flag(&meta)?)?,
                "visibility" => {
                    let lit = string_value(value_of(&meta)?, "visibility")?;
                    if !matches!(lit.value().as_str(), "public" | "private") {
                        return Err(syn::Error::new(
                            lit.span(),
                            "`visibility` is \"public\" or \"private\"",
                        ));
                    }
                    set_once(&mut visibility, &ident, lit)?;
                }
                _ => {
                    return Err(syn::Error::new(
                        ident.span(),
                        format!("unknown argument `{label}`; expected one of: {KNOWN}"),
                    ))
                }
            }
        }
        let ttl_ms = ttl_ms.ok_or_else(|| {
            syn::Error::new(
                attr,
                "missing `ttl`: say how long results live, e.g. `ttl = 60` (seconds) or `ttl = \"5m\"`",
            )
        })?;
        let http = match (http.unwrap_or(false), visibility) {
            (true, visibility) => {
                Some(visibility.map_or_else(|| "public".to_owned(), |v| v.value()))
            }
            (false, Some(visibility)) => {
                return Err(syn::Error::new(
                    visibility.span(),
                    "`visibility` applies to HTTP handlers: add `http`",
                ))
            }
            (false, None) => None,
        };
        if let (Some(_), Some(first)) = (&key, skip.as_ref().and_then(|s| s.first())) {
            return Err(syn::Error::new(
                first.span(),
                "`skip` leaves arguments out of the default key; with `key = \"...\"` the \
                 template already says what is in the key: drop `skip`",
            ));
        }
        if http.is_some() {
            for (given, name) in [
                (&force_refresh, "force_refresh"),
                (&cache_if, "cache_if"),
                (&ttl_from, "ttl_from"),
            ] {
                if let Some(expr) = given {
                    return Err(syn::Error::new(
                        expr.span(),
                        format!("`{name}` is not supported on `http` handlers"),
                    ));
                }
            }
        }
        Ok(Self {
            force_refresh,
            cache_if,
            ttl_from,
            krate,
            skip: skip.unwrap_or_default(),
            codec,
            version: version.unwrap_or(0),
            http,
            stale_ms: stale_ms.unwrap_or(0),
            stale_if_error_ms: stale_if_error_ms.unwrap_or(0),
            lock_ms: lock_ms.unwrap_or(0),
            spawn: spawn.unwrap_or(true),
            ttl_ms,
            backend: backend.unwrap_or_else(|| LitStr::new("memory", Span::call_site())),
            key,
            groups,
            name,
            cache_none: cache_none.unwrap_or(true),
            cache_err: cache_err.unwrap_or(false),
        })
    }
}

/// `codec = "json"` or `"msgpack"`: the name of the runtime's `Codec` variant.
fn codec_name(expr: &Expr) -> syn::Result<&'static str> {
    let lit = string_value(expr, "codec")?;
    match lit.value().as_str() {
        "json" => Ok("Json"),
        "msgpack" => Ok("MessagePack"),
        other => Err(syn::Error::new(
            lit.span(),
            format!("unknown codec {other:?}; expected \"json\" or \"msgpack\""),
        )),
    }
}

/// `version = 3`: a whole number that fits in a `u32`.
fn schema_version(expr: &Expr) -> syn::Result<u32> {
    let message = "`version` takes a whole number from 0 to 4294967295, e.g. `version = 2`";
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) if int.suffix().is_empty() || int.suffix() == "u32" => int
            .base10_parse::<u32>()
            .map_err(|_| syn::Error::new(int.span(), message)),
        other => Err(syn::Error::new(other.span(), message)),
    }
}

/// `skip = [a, b]` (or `skip = a`): argument names, each once.
fn skip_list(expr: &Expr) -> syn::Result<Vec<syn::Ident>> {
    let elems: Vec<&Expr> = match expr {
        Expr::Array(array) => array.elems.iter().collect(),
        single => vec![single],
    };
    let mut names: Vec<syn::Ident> = Vec::new();
    for elem in elems {
        let name = match elem {
            Expr::Path(p) if p.qself.is_none() && p.attrs.is_empty() => p.path.get_ident().cloned(),
            _ => None,
        };
        let Some(name) = name else {
            return Err(syn::Error::new(
                elem.span(),
                "`skip` takes argument names: `skip = [db, client]`",
            ));
        };
        if names.contains(&name) {
            return Err(syn::Error::new(
                name.span(),
                format!("`{name}` is skipped twice"),
            ));
        }
        names.push(name);
    }
    if names.is_empty() {
        return Err(syn::Error::new(
            expr.span(),
            "`skip` needs at least one argument name",
        ));
    }
    Ok(names)
}

fn set_once<T>(slot: &mut Option<T>, ident: &syn::Ident, value: T) -> syn::Result<()> {
    if slot.is_some() {
        return Err(syn::Error::new(
            ident.span(),
            format!("duplicate argument `{ident}`"),
        ));
    }
    *slot = Some(value);
    Ok(())
}

fn value_of(meta: &Meta) -> syn::Result<&Expr> {
    match meta {
        Meta::NameValue(nv) => Ok(&nv.value),
        other => Err(syn::Error::new(
            other.span(),
            format!(
                "`{}` needs a value, e.g. `{} = ...`",
                path_text(other.path()),
                path_text(other.path())
            ),
        )),
    }
}

fn path_text(path: &syn::Path) -> String {
    path.get_ident()
        .map(ToString::to_string)
        .unwrap_or_default()
}

fn string_value(expr: &Expr, what: &str) -> syn::Result<LitStr> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => Ok(lit.clone()),
        other => Err(syn::Error::new(
            other.span(),
            format!("`{what}` takes a string literal"),
        )),
    }
}

/// `flag` alone means true; `flag = true/false` is explicit.
fn flag(meta: &Meta) -> syn::Result<bool> {
    match meta {
        Meta::Path(_) => Ok(true),
        Meta::NameValue(nv) => match &nv.value {
            Expr::Lit(ExprLit {
                lit: Lit::Bool(b), ..
            }) => Ok(b.value),
            other => Err(syn::Error::new(other.span(), "expected `true` or `false`")),
        },
        Meta::List(list) => Err(syn::Error::new(list.span(), "expected `true` or `false`")),
    }
}

/// A duration argument: whole seconds (`60`) or a duration string (`"1h30m"`), in milliseconds.
fn parse_duration(expr: &Expr, what: &str) -> syn::Result<u64> {
    let ms = match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) if int.base10_digits().starts_with('-') => {
            return Err(syn::Error::new(int.span(), format!("`{what}` must be positive")))
        }
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) => {
            let seconds: u64 = int.base10_parse().map_err(|_| {
                syn::Error::new(int.span(), format!("`{what}` must be a whole number of seconds"))
            })?;
            seconds
                .checked_mul(1000)
                .ok_or_else(|| syn::Error::new(int.span(), format!("`{what}` is too long")))?
        }
        Expr::Lit(ExprLit {
            lit: Lit::Str(text),
            ..
        }) => parse_duration_ms(&text.value()).map_err(|message| {
            syn::Error::new(
                text.span(),
                format!("invalid `{what}` {:?}: {message}", text.value()),
            )
        })?,
        Expr::Unary(unary) if matches!(unary.op, syn::UnOp::Neg(_)) => {
            return Err(syn::Error::new(unary.span(), format!("`{what}` must be positive")))
        }
        other => {
            return Err(syn::Error::new(
                other.span(),
                format!("`{what}` takes seconds (`{what} = 60`) or a duration string (`{what} = \"1h30m\"`)"),
            ))
        }
    };
    if ms == 0 {
        return Err(syn::Error::new(
            expr.span(),
            format!("`{what}` must be greater than zero"),
        ));
    }
    Ok(ms)
}

/// Everything `#[cached_impl(...)]` said.
pub(crate) struct ImplArgs {
    /// `companions = false`: no `<fn>_key`, `<fn>_invalidate`... for the impl's methods.
    pub(crate) companions: bool,
    /// `vis = "pub(crate)"`: the companions' visibility (default: `pub` in trait impls, the
    /// method's own in inherent impls).
    pub(crate) vis: Option<syn::Visibility>,
}

impl ImplArgs {
    pub(crate) fn parse(tokens: proc_macro2::TokenStream) -> syn::Result<Self> {
        let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(tokens)?;
        let mut companions = None;
        let mut vis = None;
        for meta in metas {
            let ident = meta.path().get_ident().cloned();
            match ident.as_ref().map(ToString::to_string).as_deref() {
                Some("companions") => {
                    let ident = ident.expect("matched");
                    set_once(&mut companions, &ident, flag(&meta)?)?
                }
                Some("vis") => {
                    let ident = ident.expect("matched");
                    let lit = string_value(value_of(&meta)?, "vis")?;
                    let parsed: syn::Visibility = lit.parse().map_err(|_| {
                        syn::Error::new(
                            lit.span(),
                            "`vis` is a visibility: \"pub\", \"pub(crate)\", \"pub(super)\"...",
                        )
                    })?;
                    set_once(&mut vis, &ident, parsed)?
                }
                _ => {
                    return Err(syn::Error::new(
                        meta.path().span(),
                        "unknown argument; expected one of: companions, vis",
                    ))
                }
            }
        }
        Ok(Self {
            companions: companions.unwrap_or(true),
            vis,
        })
    }
}

/// Everything `#[cache_invalidate(...)]` said.
pub(crate) struct InvalidateArgs {
    pub(crate) keys: Vec<Template>,
    pub(crate) groups: Vec<Template>,
    pub(crate) http: bool,
    /// `crate = "path"`, as for `#[cached]`.
    pub(crate) krate: Option<syn::Path>,
}

impl InvalidateArgs {
    pub(crate) fn parse(tokens: proc_macro2::TokenStream) -> syn::Result<Self> {
        Self::parse_at(tokens, Span::call_site())
    }

    /// The arguments of an attribute at `attr` (errors about the attribute as a whole go there).
    pub(crate) fn parse_at(tokens: proc_macro2::TokenStream, attr: Span) -> syn::Result<Self> {
        let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(tokens)?;
        let mut keys = Vec::new();
        let mut groups = Vec::new();
        let mut http = None;
        let mut krate = None;
        for meta in metas {
            let label = meta.path().get_ident().map(ToString::to_string);
            match label.as_deref() {
                Some("key") => keys.push(Template::parse(string_value(value_of(&meta)?, "key")?)?),
                Some("group") => {
                    groups.push(Template::parse(string_value(value_of(&meta)?, "group")?)?)
                }
                Some("http") => {
                    let ident = meta
                        .path()
                        .get_ident()
                        .cloned()
                        .unwrap_or_else(|| syn::Ident::new("http", meta.path().span()));
                    set_once(&mut http, &ident, flag(&meta)?)?
                }
                Some("crate") => {
                    let path = runtime_path(value_of(&meta)?)?;
                    if krate.replace(path).is_some() {
                        return Err(syn::Error::new(meta.path().span(), "`crate` given twice"));
                    }
                }
                _ => {
                    return Err(syn::Error::new(
                        meta.path().span(),
                        "unknown argument; expected one of: key, group, http, crate",
                    ))
                }
            }
        }
        if keys.is_empty() && groups.is_empty() {
            return Err(syn::Error::new(
                attr,
                "#[cache_invalidate] needs at least one `key = \"...\"` or `group = \"...\"`",
            ));
        }
        Ok(Self {
            keys,
            groups,
            http: http.unwrap_or(false),
            krate,
        })
    }
}

/// `crate = "path"`: a path to the runtime crate (a re-export), e.g. `"my_app::deps::cache_runtime"`.
fn runtime_path(value: &Expr) -> syn::Result<syn::Path> {
    let lit = string_value(value, "crate")?;
    lit.parse::<syn::Path>().map_err(|_| {
        syn::Error::new(
            lit.span(),
            "`crate` is the path of the runtime crate as a string, e.g. `crate = \"my_app::cache_runtime\"`",
        )
    })
}
