//! Request path normalization and `{*}` / `{**}` path templates, as Envoy applies them before RBAC.
//!
//! Normalization follows Envoy's snapshot of Chromium's path canonicalizer (`normalize_path`),
//! optionally preceded by unescaping `%2F`/`%5C` and followed by merging slashes, which is what
//! Istio's mesh setting `pathNormalization` selects. The query is never touched.

use std::borrow::Cow;

/// Istio's `meshConfig.pathNormalization.normalization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathNormalization {
    /// No normalization at all.
    None,
    /// RFC 3986 normalization: dot segments removed, `\` to `/`, percent-escapes of unreserved
    /// characters decoded, characters that must be escaped escaped. Istio's default.
    #[default]
    Base,
    /// `Base`, then runs of `/` merged.
    MergeSlashes,
    /// `%2F`/`%5C` decoded first, then `MergeSlashes`.
    DecodeAndMergeSlashes,
}

impl PathNormalization {
    pub fn parse(s: &str) -> Option<PathNormalization> {
        match s {
            "NONE" => Some(PathNormalization::None),
            "" | "DEFAULT" | "BASE" => Some(PathNormalization::Base),
            "MERGE_SLASHES" => Some(PathNormalization::MergeSlashes),
            "DECODE_AND_MERGE_SLASHES" => Some(PathNormalization::DecodeAndMergeSlashes),
            _ => None,
        }
    }
}

/// Envoy answers `400` to a path its canonicalizer rejects (a NUL byte, or `%00`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("path rejected by normalization: it contains a NUL byte or an escaped NUL")]
pub struct InvalidPath;

/// Normalizes `raw` (path plus optional query). Borrows when nothing changes.
pub fn normalize(raw: &str, mode: PathNormalization) -> Result<Cow<'_, str>, InvalidPath> {
    if mode == PathNormalization::None {
        return Ok(Cow::Borrowed(raw));
    }
    let (path, query) = match raw.find('?') {
        Some(i) => raw.split_at(i),
        None => (raw, ""),
    };
    let decoded: Cow<'_, str> = if mode == PathNormalization::DecodeAndMergeSlashes {
        unescape_slashes(path)
    } else {
        Cow::Borrowed(path)
    };
    let mut out = canonicalize(&decoded)?;
    if matches!(
        mode,
        PathNormalization::MergeSlashes | PathNormalization::DecodeAndMergeSlashes
    ) {
        out.dedup_by(|a, b| *a == b'/' && *b == b'/');
    }
    if out.as_slice() == path.as_bytes() {
        return Ok(Cow::Borrowed(raw));
    }
    out.extend_from_slice(query.as_bytes());
    // Every byte the canonicalizer emits for non-ASCII input is escaped, and ASCII input stays
    // ASCII, so the output is always valid UTF-8.
    Ok(Cow::Owned(String::from_utf8(out).map_err(|_| InvalidPath)?))
}

fn unescape_slashes(path: &str) -> Cow<'_, str> {
    let b = path.as_bytes();
    let escaped_slash = |i: usize| -> Option<char> {
        if b[i] != b'%' || i + 2 >= b.len() {
            return None;
        }
        match (b[i + 1], b[i + 2]) {
            (b'2', b'f' | b'F') => Some('/'),
            (b'5', b'c' | b'C') => Some('\\'),
            _ => None,
        }
    };
    if !(0..b.len()).any(|i| escaped_slash(i).is_some()) {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if let Some(c) = escaped_slash(i) {
            out.push(c);
            i += 3;
        } else {
            let ch_len = utf8_len(b[i]);
            out.push_str(&path[i..i + ch_len]);
            i += ch_len;
        }
    }
    Cow::Owned(out)
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Pass,
    Special,
    Escape,
    Unescape,
    Invalid,
}

/// Chromium's `kPathCharLookup` as Envoy ships it.
fn class(c: u8) -> Class {
    match c {
        0 => Class::Invalid,
        0x01..=0x20
        | b'"'
        | b'#'
        | b'<'
        | b'>'
        | b'?'
        | b'^'
        | b'`'
        | b'{'
        | b'|'
        | b'}'
        | 0x7f.. => Class::Escape,
        b'%' => Class::Escape,
        b'.' | b'/' | b'\\' => Class::Special,
        b'0'..=b'9' | b'A'..=b'Z' | b'a'..=b'z' | b'-' | b'_' | b'~' => Class::Unescape,
        _ => Class::Pass,
    }
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn decode_escape(b: &[u8], i: usize) -> Option<u8> {
    if b.get(i) != Some(&b'%') {
        return None;
    }
    Some(hex(*b.get(i + 1)?)? << 4 | hex(*b.get(i + 2)?)?)
}

/// Length of a dot at `i`: `.` is 1, `%2e` is 3, anything else 0.
fn dot_len(b: &[u8], i: usize) -> usize {
    match b.get(i) {
        Some(b'.') => 1,
        Some(b'%') if decode_escape(b, i) == Some(b'.') => 3,
        _ => 0,
    }
}

fn is_slash(c: u8) -> bool {
    c == b'/' || c == b'\\'
}

fn push_escaped(out: &mut Vec<u8>, c: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[b'%', HEX[usize::from(c >> 4)], HEX[usize::from(c & 0xf)]]);
}

/// Rewinds `out` (which ends in `/`) to the previous `/`, never above the first one.
fn back_up_to_previous_slash(out: &mut Vec<u8>) {
    let mut i = out.len() - 1;
    if i == 0 {
        return;
    }
    i -= 1;
    while out[i] != b'/' && i > 0 {
        i -= 1;
    }
    out.truncate(i + 1);
}

fn canonicalize(path: &str) -> Result<Vec<u8>, InvalidPath> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len() + 1);
    if b.is_empty() {
        out.push(b'/');
        return Ok(out);
    }
    if !is_slash(b[0]) {
        out.push(b'/');
    }
    let mut valid = true;
    // Index in `out` of a `%` that did not start a valid escape: a later unescape could complete it
    // into one ("%%30" -> "%0"), which Chromium defuses by rewriting it as "%25".
    let mut last_invalid_percent: Option<usize> = None;
    let end = b.len();
    let mut i = 0;
    while i < end {
        let c = b[i];
        let cls = class(c);
        let dl = dot_len(b, i);
        if dl > 0 {
            if out.last() == Some(&b'/') {
                let after = i + dl;
                let (disposition, consumed) = classify_after_dot(b, after);
                match disposition {
                    Dot::NotDirectory => {
                        out.push(b'.');
                        i += dl;
                    }
                    Dot::Current => i += dl + consumed,
                    Dot::Up => {
                        back_up_to_previous_slash(&mut out);
                        i += dl + consumed;
                    }
                }
            } else {
                out.push(b'.');
                i += dl;
            }
            continue;
        }
        match cls {
            Class::Pass | Class::Unescape => out.push(c),
            Class::Special if c == b'\\' => out.push(b'/'),
            Class::Special => out.push(c),
            _ if c == b'%' => match decode_escape(b, i) {
                Some(v) => {
                    let vc = class(v);
                    if vc == Class::Unescape {
                        out.push(v);
                        if let Some(p) = last_invalid_percent.filter(|&p| p + 3 >= out.len()) {
                            check_nested_escapes(b, i + 3, p, &mut out);
                        }
                    } else {
                        out.extend_from_slice(&b[i..i + 3]);
                        if vc == Class::Invalid {
                            valid = false;
                        }
                    }
                    i += 2;
                }
                None => {
                    last_invalid_percent = Some(out.len());
                    out.push(b'%');
                }
            },
            Class::Invalid => {
                push_escaped(&mut out, c);
                valid = false;
            }
            _ => push_escaped(&mut out, c),
        }
        i += 1;
    }
    if valid { Ok(out) } else { Err(InvalidPath) }
}

fn check_nested_escapes(b: &[u8], next: usize, pct: usize, out: &mut Vec<u8>) {
    let len = out.len();
    let last = out[len - 1];
    let append_next = pct + 2 == len;
    if append_next {
        match b.get(next) {
            Some(&n) if n < 0x80 => out.push(n),
            _ => return,
        }
    }
    if decode_escape(out, pct).is_some() {
        if !append_next {
            let c = out[pct + 1];
            out.push(c);
        }
        out[pct + 1] = b'2';
        out[pct + 2] = b'5';
        out.push(last);
    } else if append_next {
        out.truncate(len);
    }
}

enum Dot {
    NotDirectory,
    Current,
    Up,
}

fn classify_after_dot(b: &[u8], after: usize) -> (Dot, usize) {
    if after == b.len() {
        return (Dot::Current, 0);
    }
    if is_slash(b[after]) {
        return (Dot::Current, 1);
    }
    let second = dot_len(b, after);
    if second > 0 {
        let after2 = after + second;
        if after2 == b.len() {
            return (Dot::Up, second);
        }
        if is_slash(b[after2]) {
            return (Dot::Up, second + 1);
        }
    }
    (Dot::NotDirectory, 0)
}

/// The path without query or fragment: what Envoy's `url_path` matcher sees.
pub fn strip_query(path: &str) -> &str {
    match path.find(['?', '#']) {
        Some(i) => &path[..i],
        None => path,
    }
}

/// A validated Istio path template (`/api/{*}/items/{**}`), matched like Envoy's `uri_template`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    /// Segments before `{**}`; each is a literal or `{*}`.
    head: Vec<Segment>,
    /// `Some(suffix)` when the template has `{**}`: the literal text that must follow it.
    glob_tail: Option<Box<str>>,
    /// Whether the template ends with `/` (only without `{**}`).
    trailing_slash: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    One,
}

/// Envoy's `kLiteral`: RFC 3986 pchar without `*` and `/`.
fn is_pchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@=".contains(&c)
}

/// Why a path template is refused, in Istio's and Envoy's terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("a path template must start with '/'")]
    NoLeadingSlash,
    #[error("{{**}} is not the last operator")]
    GlobNotLast,
    #[error("contains '{{' or '}}' beyond a supported path template")]
    StrayBrace,
    #[error("contains segment {0:?} with an invalid literal (allowed: RFC 3986 pchar without '*')")]
    InvalidLiteral(String),
    #[error("contains an empty segment ('//')")]
    EmptySegment,
}

/// True when `path` uses `{*}` or `{**}` and is therefore a template (Istio's rule).
pub fn is_template(path: &str) -> bool {
    path.contains("{*}") || path.contains("{**}")
}

impl PathTemplate {
    pub fn parse(template: &str) -> Result<PathTemplate, TemplateError> {
        let body = template
            .strip_prefix('/')
            .ok_or(TemplateError::NoLeadingSlash)?;
        let trailing_slash = body.ends_with('/') && !body.is_empty();
        let body = body.strip_suffix('/').unwrap_or(body);
        let mut head = Vec::new();
        let mut glob_tail: Option<String> = None;
        for seg in body.split('/') {
            if let Some(tail) = glob_tail.as_mut() {
                if seg == "{*}" || seg == "{**}" {
                    return Err(TemplateError::GlobNotLast);
                }
                check_literal(seg)?;
                tail.push('/');
                tail.push_str(seg);
                continue;
            }
            match seg {
                "{*}" => head.push(Segment::One),
                "{**}" => glob_tail = Some(String::new()),
                _ => {
                    check_literal(seg)?;
                    head.push(Segment::Literal(seg.into()));
                }
            }
        }
        if let (Some(tail), true) = (glob_tail.as_mut(), trailing_slash) {
            tail.push('/');
        }
        Ok(PathTemplate {
            head,
            trailing_slash: trailing_slash && glob_tail.is_none(),
            glob_tail: glob_tail.map(String::into_boxed_str),
        })
    }

    /// The literal text every matching path starts with, for indexing.
    pub fn literal_prefix(&self) -> String {
        let mut p = String::from("/");
        for seg in &self.head {
            match seg {
                Segment::Literal(l) => {
                    p.push_str(l);
                    p.push('/');
                }
                Segment::One => break,
            }
        }
        p
    }

    /// Matches a path without query, exactly like the regex Envoy builds from the template.
    pub fn matches(&self, path: &str) -> bool {
        let Some(mut rest) = path.strip_prefix('/') else {
            return false;
        };
        let n = self.head.len();
        for (idx, seg) in self.head.iter().enumerate() {
            let is_last_head = idx + 1 == n;
            let (part, after) = match rest.find('/') {
                Some(i) => (&rest[..i], Some(&rest[i + 1..])),
                None => (rest, None),
            };
            match seg {
                Segment::Literal(l) if part != &**l => return false,
                Segment::One if part.is_empty() || !part.bytes().all(is_pchar) => return false,
                _ => {}
            }
            match after {
                Some(a) => rest = a,
                None => {
                    // The path ended inside the head: only a template ending right here matches.
                    return is_last_head && self.glob_tail.is_none() && !self.trailing_slash;
                }
            }
            if is_last_head && self.glob_tail.is_none() {
                // A '/' followed this segment: the template must end with '/' and nothing follow.
                return self.trailing_slash && rest.is_empty();
            }
        }
        match &self.glob_tail {
            None => n == 0 && rest.is_empty() && !self.trailing_slash,
            Some(tail) => {
                // `{**}` is `[pchar/]*`, then the literal tail.
                let Some(glob) = rest.strip_suffix(&**tail) else {
                    return false;
                };
                glob.bytes().all(|c| is_pchar(c) || c == b'/')
            }
        }
    }
}

fn check_literal(seg: &str) -> Result<(), TemplateError> {
    if seg.is_empty() {
        return Err(TemplateError::EmptySegment);
    }
    if seg.contains(['{', '}']) {
        return Err(TemplateError::StrayBrace);
    }
    if !seg.bytes().all(is_pchar) {
        return Err(TemplateError::InvalidLiteral(seg.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(p: &str) -> String {
        normalize(p, PathNormalization::Base)
            .map(Cow::into_owned)
            .unwrap_or_else(|_| "<400>".into())
    }

    #[test]
    fn base_normalization_matches_envoy() {
        // Cases from Envoy's path_utility_test (canonicalPath).
        for (input, want) in [
            ("/", "/"),
            ("", "/"),
            ("/a/b/../c", "/a/c"),
            ("/a/./b", "/a/b"),
            ("/../a", "/a"),
            ("/a/..", "/"),
            ("/a/b/.", "/a/b/"),
            ("/a/%2e%2E/b", "/b"),
            ("/a\\b", "/a/b"),
            ("/%41%62", "/Ab"),
            ("/a%2Fb", "/a%2Fb"),
            ("/a%2fb", "/a%2fb"),
            ("/a b", "/a%20b"),
            ("/a//b", "/a//b"),
            ("/x?a=/../b", "/x?a=/../b"),
            ("/..a/b", "/..a/b"),
            ("a/b", "/a/b"),
            ("/%%30%30", "/%2500"),
        ] {
            assert_eq!(base(input), want, "input {input:?}");
        }
        assert_eq!(base("/a%00"), "<400>");
    }

    #[test]
    fn slash_modes() {
        let m = |p, mode| normalize(p, mode).unwrap().into_owned();
        assert_eq!(m("/a//b///c", PathNormalization::MergeSlashes), "/a/b/c");
        assert_eq!(m("/a%2F%2fb", PathNormalization::MergeSlashes), "/a%2F%2fb");
        assert_eq!(
            m("/a%2F%2fb%5Cc", PathNormalization::DecodeAndMergeSlashes),
            "/a/b/c"
        );
        assert_eq!(m("/a/../b", PathNormalization::None), "/a/../b");
        assert_eq!(
            m("/admin%2F..%2Fx", PathNormalization::DecodeAndMergeSlashes),
            "/x"
        );
    }

    #[test]
    fn templates() {
        let t = |p: &str| PathTemplate::parse(p).unwrap();
        assert!(t("/foo/{*}").matches("/foo/bar"));
        assert!(!t("/foo/{*}").matches("/foo/bar/baz"));
        assert!(!t("/foo/{*}").matches("/foo/"));
        assert!(!t("/foo/{*}").matches("/foo"));
        assert!(t("/foo/{**}").matches("/foo/"));
        assert!(t("/foo/{**}").matches("/foo/a/b"));
        assert!(!t("/foo/{**}").matches("/foo"));
        assert!(!t("/foo/{**}").matches("/foobar"));
        assert!(t("/{*}/x/{*}").matches("/a/x/b"));
        assert!(!t("/{*}/x/{*}").matches("/a/y/b"));
        assert!(t("/a/{**}/z").matches("/a/b/c/z"));
        assert!(t("/a/{**}/z").matches("/a//z"));
        assert!(!t("/a/{**}/z").matches("/a/z"));
        assert!(t("/a/{*}/").matches("/a/b/"));
        assert!(!t("/a/{*}/").matches("/a/b"));
        assert!(!t("/foo/{*}").matches("/foo/b*r"));
        assert_eq!(
            PathTemplate::parse("/a/{**}/{*}"),
            Err(TemplateError::GlobNotLast)
        );
        assert_eq!(
            PathTemplate::parse("/a/{*}.html"),
            Err(TemplateError::StrayBrace)
        );
        assert_eq!(
            PathTemplate::parse("a/{*}"),
            Err(TemplateError::NoLeadingSlash)
        );
        assert_eq!(
            PathTemplate::parse("/a/{x}/{*}"),
            Err(TemplateError::StrayBrace)
        );
        assert_eq!(t("/api/v1/{*}/x").literal_prefix(), "/api/v1/");
    }
}
