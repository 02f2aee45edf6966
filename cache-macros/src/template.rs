//! Key and group templates: `"user:{id}"`, `"org:{user.org_id}"`, `{{`/`}}` for literal braces.

use proc_macro2::TokenStream;
use quote::{format_ident, quote_spanned};
use syn::LitStr;

/// One piece of a template.
#[derive(Debug, PartialEq)]
pub(crate) enum Part {
    Text(String),
    /// An argument name followed by field names or tuple indices.
    Value(String, Vec<String>),
}

/// A parsed template and the literal it came from.
pub(crate) struct Template {
    pub(crate) literal: LitStr,
    pub(crate) parts: Vec<Part>,
}

impl Template {
    pub(crate) fn parse(literal: LitStr) -> syn::Result<Self> {
        let parts = parse_parts(&literal.value())
            .map_err(|message| syn::Error::new(literal.span(), message))?;
        Ok(Self { literal, parts })
    }

    /// Checks that every value names one of `known` (the function's argument bindings and const
    /// parameters) or, without fields, one of `types` (type parameters).
    pub(crate) fn check_names(
        &self,
        known: &[String],
        types: &[String],
        what: &str,
    ) -> syn::Result<()> {
        for part in &self.parts {
            if let Part::Value(root, fields) = part {
                if types.iter().any(|t| t == root) {
                    if let Some(field) = fields.first() {
                        return Err(syn::Error::new(
                            self.literal.span(),
                            format!(
                                "{what} template: `{{{root}}}` is a type parameter (its type name); \
                                 it has no field `{field}`"
                            ),
                        ));
                    }
                    continue;
                }
                if !known.iter().any(|k| k == root) {
                    let listed = if known.is_empty() {
                        "the function has no usable arguments".to_owned()
                    } else {
                        format!("arguments: {}", known.join(", "))
                    };
                    return Err(syn::Error::new(
                        self.literal.span(),
                        format!(
                            "{what} template names `{root}`, which is not an argument ({listed})"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every argument (or const parameter) name the template uses.
    pub(crate) fn roots(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|part| match part {
            Part::Value(root, _) => Some(root.as_str()),
            Part::Text(_) => None,
        })
    }

    /// An expression building the rendered key (a `KeyBuf`). Each value is escaped for what
    /// follows it (`cache_runtime::key::Follow`), which keeps rendering injective. A value naming
    /// one of `types` renders that type parameter's `std::any::type_name`.
    pub(crate) fn render(&self, runtime: &TokenStream, types: &[String]) -> TokenStream {
        let span = self.literal.span();
        // The buffer is a generated local (hidden from the fn's names, which the values are),
        // reported at the template.
        let buf = syn::Ident::new(
            "__cache_text",
            proc_macro2::Span::mixed_site().located_at(span),
        );
        let pushes = self.parts.iter().enumerate().map(|(at, part)| match part {
            Part::Text(text) => {
                quote_spanned!(span=> #runtime::__private::push_text(&mut #buf, #text);)
            }
            Part::Value(root, _) if types.contains(root) => {
                let ty = format_ident!("{}", root, span = span);
                let follow = follow(self.parts.get(at + 1), runtime, span);
                quote_spanned!(span=>
                    (&#runtime::__private::KeyValueProbe(::std::any::type_name::<#ty>()))
                        .push_to(&mut #buf, #follow);
                )
            }
            Part::Value(root, fields) => {
                let root = format_ident!("{}", root, span = span);
                let fields = fields.iter().map(|f| match f.parse::<u32>() {
                    Ok(index) => {
                        let index = syn::Index { index, span };
                        quote_spanned!(span=> .#index)
                    }
                    Err(_) => {
                        let field = format_ident!("{}", f, span = span);
                        quote_spanned!(span=> .#field)
                    }
                });
                let follow = follow(self.parts.get(at + 1), runtime, span);
                quote_spanned!(span=>
                    (&#runtime::__private::KeyValueProbe(&(#root #(#fields)*)))
                        .push_to(&mut #buf, #follow);
                )
            }
        });
        quote_spanned!(span=> {
            #[allow(unused_imports)]
            use #runtime::__private::{ViaPlain as _, ViaSerde as _};
            let mut #buf = #runtime::__private::KeyBuf::new();
            #(#pushes)*
            #buf
        })
    }
}

/// What follows a value: the end of the template, a literal character the value must escape, or
/// (another placeholder, a literal `%`) the terminator token.
fn follow(next: Option<&Part>, runtime: &TokenStream, span: proc_macro2::Span) -> TokenStream {
    match next.map(|part| match part {
        Part::Text(text) => text.chars().next(),
        Part::Value(..) => Some('%'),
    }) {
        None | Some(None) => quote_spanned!(span=> #runtime::__private::Follow::End),
        Some(Some('%')) => quote_spanned!(span=> #runtime::__private::Follow::Terminator),
        Some(Some(c)) => quote_spanned!(span=> #runtime::__private::Follow::Char(#c)),
    }
}

fn parse_parts(text: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut chars = text.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                literal.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                literal.push('}');
            }
            '}' => return Err("unmatched `}` in template (write `}}` for a literal brace)".into()),
            '{' => {
                let mut inner = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => inner.push(c),
                        None => return Err("unclosed `{` in template".into()),
                    }
                }
                if !literal.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut literal)));
                }
                parts.push(parse_path(inner.trim())?);
            }
            other => literal.push(other),
        }
    }
    if !literal.is_empty() {
        parts.push(Part::Text(literal));
    }
    if parts.is_empty() {
        return Err("empty template".into());
    }
    Ok(parts)
}

fn parse_path(path: &str) -> Result<Part, String> {
    let mut segments = path.split('.');
    let root = segments.next().unwrap_or_default();
    if syn::parse_str::<syn::Ident>(root).is_err() {
        return Err(format!(
            "`{{{path}}}` is not an argument name (expected `{{name}}` or `{{name.field}}`)"
        ));
    }
    let mut fields = Vec::new();
    for field in segments {
        let valid = syn::parse_str::<syn::Ident>(field).is_ok() || field.parse::<u32>().is_ok();
        if !valid {
            return Err(format!("`{field}` in `{{{path}}}` is not a field name"));
        }
        fields.push(field.to_owned());
    }
    Ok(Part::Value(root.to_owned(), fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_text_values_fields_and_escapes() {
        assert_eq!(
            parse_parts("u:{id}:{user.org.0}{{x}}").unwrap(),
            vec![
                Part::Text("u:".into()),
                Part::Value("id".into(), vec![]),
                Part::Text(":".into()),
                Part::Value("user".into(), vec!["org".into(), "0".into()]),
                Part::Text("{x}".into()),
            ]
        );
    }

    #[test]
    fn rejects_malformed_templates() {
        for bad in [
            "",
            "{",
            "a}",
            "{}",
            "{1a}",
            "{a.}",
            "{a b}",
            "{a.b-c}",
            "{a.99999999999}",
        ] {
            assert!(parse_parts(bad).is_err(), "{bad:?} accepted");
        }
    }
}
