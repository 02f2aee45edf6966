//! Where an attribute sits: at module (or block) level, in an inherent impl, in a trait impl, or in
//! a trait definition.
//!
//! An attribute on a fn cannot see the block around it, so this reads the source file the
//! attribute's span points into (`Span::local_file`, line and column) and scans it up to the
//! attribute: the header of the innermost `{ .. }` around it says what the block is. The scan is a
//! small lexer (comments, strings, raw strings, chars and lifetimes), not a parser. When anything
//! is unclear (no file on disk, the attribute comes from a macro's body, the text at the position is
//! not the attribute) the answer is [`Place::Unknown`], and callers fall back to what needs no
//! knowledge of the place.

use std::{
    cell::RefCell,
    collections::HashMap,
    path::{Path, PathBuf},
    rc::Rc,
    time::SystemTime,
};

/// The block a fn sits in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Place {
    /// A module or a block: the fn is a free fn.
    Free,
    /// `impl Type { .. }`.
    InherentImpl,
    /// `impl Trait for Type { .. }`: the header's text, for messages.
    TraitImpl(String),
    /// `trait Name { .. }`.
    TraitDef,
    /// Unknown (see the module docs).
    Unknown,
}

/// The place of the attribute being expanded.
pub(crate) fn of_call_site() -> Place {
    let span = proc_macro::Span::call_site();
    let Some(path) = span.local_file() else {
        return Place::Unknown;
    };
    let Some(text) = source(&path) else {
        return Place::Unknown;
    };
    match offset(&text, span.line(), span.column()) {
        Some(at) if text[at..].starts_with('#') => classify(&text, at),
        _ => Place::Unknown,
    }
}

/// The file's text, read once per compilation (keyed by length and modification time too, for
/// long-lived macro servers).
fn source(path: &Path) -> Option<Rc<str>> {
    type Cache = HashMap<PathBuf, (u64, Option<SystemTime>, Rc<str>)>;
    thread_local! {
        static FILES: RefCell<Cache> = RefCell::new(HashMap::new());
    }
    let metadata = std::fs::metadata(path).ok()?;
    let (len, modified) = (metadata.len(), metadata.modified().ok());
    FILES.with(|files| {
        let mut files = files.borrow_mut();
        if let Some((l, m, text)) = files.get(path) {
            if *l == len && *m == modified {
                return Some(Rc::clone(text));
            }
        }
        let text: Rc<str> = std::fs::read_to_string(path).ok()?.into();
        files.insert(path.to_owned(), (len, modified, Rc::clone(&text)));
        Some(text)
    })
}

/// The byte offset of a 1-based line and 1-based column (in characters).
fn offset(text: &str, line: usize, column: usize) -> Option<usize> {
    let start = if line <= 1 {
        0
    } else {
        text.match_indices('\n').nth(line - 2)?.0 + 1
    };
    let rest = &text[start..];
    let within = rest
        .char_indices()
        .nth(column.checked_sub(1)?)
        .map(|(at, _)| at)?;
    Some(start + within)
}

/// One token of a block header, as far as classifying it needs.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Punct(char),
    /// A delimited group, by its opening delimiter.
    Group(char),
    Literal,
}

/// An open delimiter.
struct Frame {
    open: char,
    /// For `{`: the tokens before it (what the block is); for `(` and `[`, unused.
    owner: Vec<Tok>,
    /// Tokens at this level since the last item or statement boundary.
    header: Vec<Tok>,
    /// A `{ .. }` inside a header (a const generic argument): it ends as a group, not an item.
    in_header: bool,
    /// Inside a macro invocation or definition: tokens there are not code yet.
    in_macro: bool,
}

/// The place of the position `at` in `text` (see [`Place`]).
fn classify(text: &str, at: usize) -> Place {
    let Some(frames) = scan(text, at) else {
        return Place::Unknown;
    };
    let innermost = frames.last().expect("the root frame stays");
    if innermost.in_macro {
        return Place::Unknown;
    }
    match innermost.open {
        '\0' => Place::Free,
        '{' => classify_header(&innermost.owner),
        _ => Place::Unknown, // an attribute inside parentheses or brackets: not an item
    }
}

fn classify_header(owner: &[Tok]) -> Place {
    let mut toks = owner;
    // Attributes, visibility and qualifiers before the keyword.
    loop {
        match toks {
            [Tok::Punct('#'), Tok::Punct('!'), Tok::Group('['), rest @ ..]
            | [Tok::Punct('#'), Tok::Group('['), rest @ ..] => toks = rest,
            [Tok::Ident(pub_), Tok::Group('('), rest @ ..] if pub_ == "pub" => toks = rest,
            [Tok::Ident(word), rest @ ..]
                if matches!(word.as_str(), "pub" | "unsafe" | "default" | "auto") =>
            {
                toks = rest
            }
            _ => break,
        }
    }
    match toks.first() {
        Some(Tok::Ident(word)) if word == "impl" => {
            if is_trait_impl(&toks[1..]) {
                Place::TraitImpl(header_text(toks))
            } else {
                Place::InherentImpl
            }
        }
        Some(Tok::Ident(word)) if word == "trait" => Place::TraitDef,
        Some(Tok::Ident(word)) if word == "extern" && !toks.contains(&Tok::Ident("fn".into())) => {
            Place::Unknown
        }
        // A module, a fn body, or any other block: items there are free.
        _ => Place::Free,
    }
}

/// Whether the rest of an `impl` header has `for Type` outside angle brackets, before `where`
/// (`for<'a>` is a higher-ranked bound, not that).
fn is_trait_impl(toks: &[Tok]) -> bool {
    let mut depth = 0usize;
    for (at, tok) in toks.iter().enumerate() {
        match tok {
            Tok::Punct('<') => depth += 1,
            Tok::Punct('>') if at > 0 && toks[at - 1] == Tok::Punct('-') => {} // `->`
            Tok::Punct('>') => depth = depth.saturating_sub(1),
            Tok::Ident(word) if depth == 0 && word == "where" => return false,
            Tok::Ident(word) if depth == 0 && word == "for" => {
                return toks.get(at + 1) != Some(&Tok::Punct('<'));
            }
            _ => {}
        }
    }
    false
}

/// A rough rendering of a header for messages: `impl<'a> Repo<'a> for Db`.
fn header_text(toks: &[Tok]) -> String {
    let mut out = String::new();
    for (at, tok) in toks.iter().enumerate() {
        let prev = at.checked_sub(1).map(|p| &toks[p]);
        let next = toks.get(at + 1);
        let path_colon = |t: Option<&Tok>| matches!(t, Some(Tok::Punct(':')));
        let (piece, space_before) = match tok {
            Tok::Ident(word) => (
                word.clone(),
                !matches!(prev, None | Some(Tok::Punct('<' | '&' | '!'))),
            ),
            Tok::Punct(':') if path_colon(next) || path_colon(prev) => (":".into(), false),
            Tok::Punct(c @ ('<' | '>' | ',' | ':' | '!')) => (c.to_string(), false),
            Tok::Punct(c) => (c.to_string(), true),
            Tok::Group('(') => ("(..)".into(), false),
            Tok::Group('[') => ("[..]".into(), false),
            Tok::Group(_) => ("{..}".into(), true),
            Tok::Literal => ("..".into(), true),
        };
        // `<` and `::` bind to what follows; `>` and `,` and `:` are followed by a space when a
        // word comes next.
        let after_path_colon =
            matches!(prev, Some(Tok::Punct(':'))) && at >= 2 && toks[at - 2] == Tok::Punct(':');
        if space_before && !out.is_empty() && !after_path_colon {
            out.push(' ');
        }
        out.push_str(&piece);
    }
    out
}

/// Scans `text` up to `at`: the delimiters open there, outermost first. `None` when the text does
/// not lex (an unterminated string or comment before `at`).
fn scan(text: &str, at: usize) -> Option<Vec<Frame>> {
    let bytes = text.as_bytes();
    let mut frames = vec![Frame {
        open: '\0',
        owner: Vec::new(),
        header: Vec::new(),
        in_header: false,
        in_macro: false,
    }];
    let mut i = 0;
    while i < at {
        let c = text[i..].chars().next()?;
        let len = c.len_utf8();
        let next = bytes.get(i + 1).copied();
        let top = frames.last_mut().expect("the root frame stays");
        match c {
            _ if c.is_whitespace() => i += len,
            '/' if next == Some(b'/') => {
                i = text[i..].find('\n').map_or(text.len(), |n| i + n);
            }
            '/' if next == Some(b'*') => i = skip_block_comment(bytes, i)?,
            '"' => {
                i = skip_string(bytes, i + 1)?;
                top.header.push(Tok::Literal);
            }
            '\'' => {
                let (end, tok) = quote(text, i)?;
                i = end;
                top.header.push(tok);
            }
            '{' | '(' | '[' => {
                let in_macro = top.in_macro || ends_macro_call(&top.header);
                let in_header = c == '{' && angle_depth(&top.header) > 0;
                let owner = if c == '{' && !in_header {
                    std::mem::take(&mut top.header)
                } else {
                    Vec::new()
                };
                frames.push(Frame {
                    open: c,
                    owner,
                    header: Vec::new(),
                    in_header,
                    in_macro,
                });
                i += 1;
            }
            '}' | ')' | ']' => {
                let closed = frames.pop()?;
                let parent = frames.last_mut()?;
                if closed.open == '{' && !closed.in_header && !matches!(parent.open, '(' | '[') {
                    parent.header.clear(); // an item or a statement ended
                } else {
                    parent.header.push(Tok::Group(closed.open));
                }
                i += 1;
            }
            ';' => {
                top.header.clear();
                i += 1;
            }
            _ if c.is_ascii_digit() => {
                let mut end = i + 1;
                while end < bytes.len()
                    && (bytes[end].is_ascii_alphanumeric()
                        || bytes[end] == b'_'
                        || (bytes[end] == b'.'
                            && bytes.get(end + 1).is_some_and(u8::is_ascii_digit)))
                {
                    end += 1;
                }
                i = end;
                top.header.push(Tok::Literal);
            }
            _ if c == '_' || c.is_alphabetic() => {
                // Raw strings (`r"..."`, `br#"..."#`, `cr".."`) and byte/C strings start like
                // identifiers.
                if let Some(end) = raw_or_prefixed_string(bytes, i) {
                    i = end?;
                    top.header.push(Tok::Literal);
                    continue;
                }
                let mut end = i;
                // `r#ident`
                if text[i..].starts_with("r#") {
                    end += 2;
                }
                for ch in text[end..].chars() {
                    if ch == '_' || ch.is_alphanumeric() {
                        end += ch.len_utf8();
                    } else {
                        break;
                    }
                }
                top.header
                    .push(Tok::Ident(text[i..end].trim_start_matches("r#").to_owned()));
                i = end;
            }
            _ => {
                top.header.push(Tok::Punct(c));
                i += len;
            }
        }
    }
    (i == at).then_some(frames)
}

/// Whether tokens end with `name!` (a macro call) or `macro_rules! name`.
fn ends_macro_call(header: &[Tok]) -> bool {
    match header {
        [.., Tok::Ident(_), Tok::Punct('!')] => true,
        [.., Tok::Ident(m), Tok::Punct('!'), Tok::Ident(_)] => m == "macro_rules",
        [.., Tok::Ident(m), Tok::Ident(_)] => m == "macro", // `macro name { .. }` (unstable)
        _ => false,
    }
}

/// How many `<` are open at the end of a header (`->` does not close one).
fn angle_depth(header: &[Tok]) -> usize {
    let mut depth = 0usize;
    for (at, tok) in header.iter().enumerate() {
        match tok {
            Tok::Punct('<') => depth += 1,
            Tok::Punct('>') if at > 0 && header[at - 1] == Tok::Punct('-') => {}
            Tok::Punct('>') => depth = depth.saturating_sub(1),
            // Comparisons and shifts only appear inside groups (const arguments are braced).
            _ => {}
        }
    }
    depth
}

/// After `/*` at `i`: the offset after the (nested) comment.
fn skip_block_comment(bytes: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// From just after an opening `"`: the offset after the closing one.
fn skip_string(bytes: &[u8], mut i: usize) -> Option<usize> {
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// A raw string (`r"..."`, `r#".."#`, with a `b` or `c` prefix) or a prefixed string (`b".."`,
/// `c".."`) starting at `i`: `Some(end)`, `Some(None)` when unterminated, `None` when there is none.
fn raw_or_prefixed_string(bytes: &[u8], i: usize) -> Option<Option<usize>> {
    let mut j = i;
    if matches!(bytes.get(j), Some(b'b' | b'c')) {
        j += 1;
    }
    if bytes.get(j) == Some(&b'"') && j > i {
        return Some(skip_string(bytes, j + 1));
    }
    if bytes.get(j) != Some(&b'r') {
        return None;
    }
    j += 1;
    let hashes = bytes[j..].iter().take_while(|b| **b == b'#').count();
    j += hashes;
    if bytes.get(j) != Some(&b'"') {
        return None; // `r#ident` or a plain identifier
    }
    j += 1;
    let closing: Vec<u8> = std::iter::once(b'"')
        .chain(std::iter::repeat_n(b'#', hashes))
        .collect();
    Some(
        bytes[j..]
            .windows(closing.len())
            .position(|w| w == closing.as_slice())
            .map(|p| j + p + closing.len()),
    )
}

/// A `'` at `i`: a char literal (`'a'`, `'\n'`, `'\u{1F600}'`, `'''` is invalid) or a lifetime or
/// label (`'a`, `'static`).
fn quote(text: &str, i: usize) -> Option<(usize, Tok)> {
    let rest = &text[i + 1..];
    let mut chars = rest.char_indices();
    let (_, first) = chars.next()?;
    if first == '\\' {
        // An escape: up to the closing quote.
        let close = rest[1..].find('\'')? + 2;
        return Some((i + 1 + close, Tok::Literal));
    }
    match chars.next() {
        Some((at, '\'')) => Some((i + 1 + at + 1, Tok::Literal)),
        _ => {
            // A lifetime: the quote and its identifier.
            let len: usize = rest
                .chars()
                .take_while(|c| *c == '_' || c.is_alphanumeric())
                .map(char::len_utf8)
                .sum();
            Some((i + 1 + len, Tok::Ident(format!("'{}", &rest[..len]))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The place of the first `#[cached` in `text`.
    fn place(text: &str) -> Place {
        let at = text.find("#[cached").expect("an attribute");
        classify(text, at)
    }

    #[test]
    fn blocks_are_told_apart() {
        assert_eq!(place("#[cached] async fn f() {}"), Place::Free);
        assert_eq!(
            place("mod m { fn g() { let s = \"}\"; } #[cached] async fn f() {} }"),
            Place::Free
        );
        assert_eq!(
            place("impl<T: Fn(u8) -> u8> X<T> where T: for<'a> Tr<'a> { #[cached] fn f() {} }"),
            Place::InherentImpl
        );
        assert_eq!(
            place("impl<'a, T> Tr<'a> for X<T> where T: Clone { #[cached] fn f() {} }"),
            Place::TraitImpl("impl<'a, T> Tr<'a> for X<T> where T: Clone".into())
        );
        assert!(
            place("#[async_trait] unsafe impl Tr for X { #[cached] fn f() {} }").is_trait_impl()
        );
        assert!(place("impl X<{ N }> for Y { #[cached] fn f() {} }").is_trait_impl());
        assert_eq!(
            place("impl X { fn a() { let c = '{'; let l: &'static str = r#\"}\"#; } #[cached] fn f() {} }"),
            Place::InherentImpl
        );
        assert_eq!(
            place("impl X { /* } /* nested } */ */ // }\n #[cached] fn f() {} }"),
            Place::InherentImpl
        );
        assert_eq!(
            place("pub trait T { #[cached] async fn f() {} }"),
            Place::TraitDef
        );
        assert_eq!(
            place("impl X { fn a() { #[cached] async fn inner() {} } }"),
            Place::Free
        );
        assert_eq!(
            place("macro_rules! m { () => { impl X { #[cached] fn f() {} } } }"),
            Place::Unknown
        );
        assert_eq!(place("gen! { #[cached] fn f() {} }"), Place::Unknown);
        assert_eq!(place("fn f(#[cached] x: u8) {}"), Place::Unknown);
    }

    impl Place {
        fn is_trait_impl(&self) -> bool {
            matches!(self, Place::TraitImpl(_))
        }
    }

    #[test]
    fn positions_are_lines_and_columns() {
        let text = "a\n  #[x]\néé#";
        assert_eq!(offset(text, 2, 3), Some(4));
        assert_eq!(&text[offset(text, 3, 3).unwrap()..], "#");
        assert_eq!(offset(text, 9, 1), None);
    }
}
