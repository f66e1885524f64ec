//! Bounded YAML reading: Kubernetes manifests in, JSON values out, as the API server stores them.
//!
//! Config files are attacker-reachable input (a live config directory is reloaded while the
//! waypoint serves), so reading one must cost at most a located error. Kubernetes reads a
//! manifest by converting YAML to JSON and decoding the JSON; this module does the same from the
//! events of `saphyr-parser` (a pure-Rust YAML 1.2 parser), with these limits:
//!
//! * the text is at most [`MAX_BYTES`] (checked by the caller before parsing; see [`check_size`]);
//! * nesting is at most [`MAX_DEPTH`] collections deep. The check runs on the parser's event
//!   stream, before any node is built, and reading stops at the first event past the limit, so a
//!   file of `[[[[...` costs the parser at most [`MAX_DEPTH`] open levels;
//! * anchors and aliases are refused, not expanded: objects stored by the API server are JSON and
//!   never carry them, and refusing them makes expansion bombs ("billion laughs") impossible
//!   rather than merely capped. A manifest that uses them is rejected with the line to expand;
//! * tags other than the YAML core schema's are refused; `!!str` forces a string;
//! * mapping keys must be scalars and unique (Kubernetes' strict decoding also refuses
//!   duplicate fields);
//! * the first syntax error ends the text: it is reported once, with its line and column, and
//!   nothing after it is read.

use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag};
use serde_json::{Map, Number, Value};

/// Kubernetes' object size bound: etcd's default request limit (`--max-request-bytes`,
/// 1.5 MiB), which every object the API server stores fits in.
pub const MAX_BYTES: usize = 1_572_864;

/// Deepest nesting of collections accepted. Kubernetes and Istio objects nest about 10 deep
/// (`spec.affinity.nodeAffinity...matchExpressions[].values[]` is 8).
pub const MAX_DEPTH: usize = 64;

/// A YAML document read into a JSON value.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Zero-based index of the document within the text.
    pub index: usize,
    /// `Value::Null` for an empty document.
    pub value: Value,
}

/// Why a text could not be read, with where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} at line {line} column {column}")]
pub struct YamlError {
    /// Zero-based index of the document the error is in.
    pub document: usize,
    /// One-based.
    pub line: usize,
    /// One-based.
    pub column: usize,
    pub message: String,
}

/// Refuses a text over [`MAX_BYTES`].
pub fn check_size(len: usize) -> Result<(), String> {
    if len > MAX_BYTES {
        return Err(format!(
            "{len} bytes is over the {MAX_BYTES}-byte (1.5 MiB) limit Kubernetes puts on an object; split the file"
        ));
    }
    Ok(())
}

/// Reads every document of `text` up to the first error. The documents before the error are
/// returned with it; nothing after it is read.
pub fn documents(text: &str) -> (Vec<Document>, Option<YamlError>) {
    let mut out = Vec::new();
    let mut builder = Builder::default();
    for event in Parser::new_from_str(text) {
        let step = match event {
            Ok((event, span)) => builder.event(event, span),
            Err(e) => Err(located(
                builder.document,
                e.marker().line(),
                e.marker().col(),
                e.info().to_owned(),
            )),
        };
        match step {
            Ok(Some(doc)) => out.push(doc),
            Ok(None) => {}
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

/// Reads a text that holds at most one document (`Value::Null` when empty).
pub fn single(text: &str) -> Result<Value, YamlError> {
    check_size(text.len()).map_err(|m| located(0, 1, 0, m))?;
    match documents(text) {
        (_, Some(e)) => Err(e),
        (docs, None) if docs.len() > 1 => Err(located(
            1,
            1,
            0,
            "expected a single YAML document, found several".into(),
        )),
        (mut docs, None) => Ok(docs.pop().map_or(Value::Null, |d| d.value)),
    }
}

fn located(document: usize, line: usize, col: usize, message: String) -> YamlError {
    YamlError {
        document,
        line,
        column: col + 1,
        message,
    }
}

/// A collection being built.
enum Frame {
    Seq(Vec<Value>),
    Map(Map<String, Value>, Option<String>),
}

#[derive(Default)]
struct Builder {
    /// Index of the current (or next) document.
    document: usize,
    stack: Vec<Frame>,
    root: Option<Value>,
}

impl Builder {
    /// Takes one event; returns a document when one ends.
    fn event(&mut self, event: Event<'_>, span: Span) -> Result<Option<Document>, YamlError> {
        let document = self.document;
        let at = |message: String| located(document, span.start.line(), span.start.col(), message);
        match event {
            Event::StreamStart | Event::StreamEnd | Event::Nothing => Ok(None),
            Event::DocumentStart(_) => {
                self.stack.clear();
                self.root = None;
                Ok(None)
            }
            Event::DocumentEnd => {
                let doc = Document {
                    index: self.document,
                    value: self.root.take().unwrap_or(Value::Null),
                };
                self.document += 1;
                Ok(Some(doc))
            }
            Event::Alias(_) => Err(at(
                "YAML aliases (*name) are not accepted: Kubernetes objects never carry them; write the value out"
                    .into(),
            )),
            Event::Scalar(text, style, anchor, tag) => {
                no_anchor(anchor).map_err(at)?;
                let value = scalar(&text, style, tag.as_deref()).map_err(at)?;
                self.complete(value).map_err(at)?;
                Ok(None)
            }
            Event::SequenceStart(anchor, tag) => {
                self.open(Frame::Seq(Vec::new()), anchor, tag.as_deref())
                    .map_err(at)?;
                Ok(None)
            }
            Event::MappingStart(anchor, tag) => {
                self.open(Frame::Map(Map::new(), None), anchor, tag.as_deref())
                    .map_err(at)?;
                Ok(None)
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let value = match self.stack.pop() {
                    Some(Frame::Seq(items)) => Value::Array(items),
                    Some(Frame::Map(map, _)) => Value::Object(map),
                    None => return Err(at("unbalanced collection end".into())),
                };
                self.complete(value).map_err(at)?;
                Ok(None)
            }
        }
    }

    fn open(&mut self, frame: Frame, anchor: usize, tag: Option<&Tag>) -> Result<(), String> {
        no_anchor(anchor)?;
        if let Some(tag) = tag {
            collection_tag(tag)?;
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(format!(
                "nesting deeper than {MAX_DEPTH} levels is not accepted"
            ));
        }
        if let Some(Frame::Map(_, None)) = self.stack.last() {
            return Err("a mapping key must be a scalar (Kubernetes objects are JSON)".into());
        }
        self.stack.push(frame);
        Ok(())
    }

    /// Attaches a finished node to its parent (or makes it the document's root).
    fn complete(&mut self, value: Value) -> Result<(), String> {
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame::Seq(items)) => items.push(value),
            Some(Frame::Map(map, pending)) => match pending.take() {
                Some(key) => {
                    map.insert(key, value);
                }
                None => {
                    let key = match value {
                        Value::String(s) => s,
                        Value::Null => "null".to_owned(),
                        Value::Bool(b) => b.to_string(),
                        Value::Number(n) => n.to_string(),
                        Value::Array(_) | Value::Object(_) => {
                            return Err(
                                "a mapping key must be a scalar (Kubernetes objects are JSON)"
                                    .into(),
                            );
                        }
                    };
                    if map.contains_key(&key) {
                        return Err(format!(
                            "duplicate key {:?} in one mapping",
                            crate::limits::shown(&key)
                        ));
                    }
                    *pending = Some(key);
                }
            },
        }
        Ok(())
    }
}

fn no_anchor(anchor: usize) -> Result<(), String> {
    if anchor != 0 {
        return Err(
            "YAML anchors (&name) are not accepted: Kubernetes objects never carry them; write the value out"
                .into(),
        );
    }
    Ok(())
}

fn collection_tag(tag: &Tag) -> Result<(), String> {
    if tag.is_yaml_core_schema() && matches!(tag.suffix.as_str(), "map" | "seq") {
        return Ok(());
    }
    Err(format!(
        "the YAML tag {} is not accepted (Kubernetes objects are JSON)",
        crate::limits::shown(&tag.to_string())
    ))
}

/// Resolves a scalar as YAML 1.2's core schema does (what the JSON conversion of a Kubernetes
/// manifest yields).
fn scalar(text: &str, style: ScalarStyle, tag: Option<&Tag>) -> Result<Value, String> {
    if let Some(tag) = tag {
        if !tag.is_yaml_core_schema() {
            return Err(format!(
                "the YAML tag {} is not accepted (Kubernetes objects are JSON)",
                crate::limits::shown(&tag.to_string())
            ));
        }
        if tag.suffix == "str" {
            return Ok(Value::String(text.to_owned()));
        }
        let resolved = plain(text);
        let fits = match (tag.suffix.as_str(), &resolved) {
            ("null", Value::Null) | ("bool", Value::Bool(_)) => true,
            ("int", Value::Number(n)) => !n.is_f64(),
            ("float", Value::Number(_)) => true,
            _ => false,
        };
        if !fits {
            return Err(format!(
                "{} is not a valid !!{}",
                crate::limits::shown(text),
                crate::limits::shown(&tag.suffix)
            ));
        }
        return Ok(resolved);
    }
    Ok(match style {
        ScalarStyle::Plain => plain(text),
        _ => Value::String(text.to_owned()),
    })
}

fn plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Some(n) = integer(text) {
        return Value::Number(n);
    }
    if is_float(text)
        && let Ok(f) = text.parse::<f64>()
        && let Some(n) = Number::from_f64(f)
    {
        return Value::Number(n);
    }
    // `.inf` and `.nan` have no JSON form; like every other text they stay strings.
    Value::String(text.to_owned())
}

fn integer(text: &str) -> Option<Number> {
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (radix, digits) = if let Some(h) = text.strip_prefix("0x") {
        (16, h)
    } else if let Some(o) = text.strip_prefix("0o") {
        (8, o)
    } else {
        (10, digits)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = u64::from_str_radix(digits, radix).ok()?;
    if negative {
        let v = i64::try_from(magnitude).ok()?;
        Some(Number::from(-v))
    } else {
        Some(Number::from(magnitude))
    }
}

/// `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`
fn is_float(text: &str) -> bool {
    let s = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some(("", frac)) => digits(frac),
        Some((int, frac)) => digits(int) && (frac.is_empty() || digits(frac)),
        None => digits(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix(['-', '+']).unwrap_or(e)));
    mantissa_ok && exponent_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_documents_as_json() {
        let (docs, err) =
            documents("a: 1\nb: [x, \"2\", 3.5, true, ~]\nc: {d: -4}\n---\n---\nlit: |\n  x\n");
        assert!(err.is_none(), "{err:?}");
        assert_eq!(docs.len(), 3);
        assert_eq!(
            docs[0].value,
            json!({"a": 1, "b": ["x", "2", 3.5, true, null], "c": {"d": -4}})
        );
        assert_eq!(docs[1].value, Value::Null);
        assert_eq!(docs[2].value, json!({"lit": "x\n"}));
    }

    #[test]
    fn a_syntax_error_is_one_located_error_and_ends_reading() {
        let (docs, err) = documents("a: 1\n---\nb:\n  c: 1\n   d: 2\n---\ne: 3\n");
        assert_eq!(docs.len(), 1);
        let err = err.expect("an error");
        assert_eq!((err.document, err.line), (1, 5), "{err}");
    }

    #[test]
    fn anchors_aliases_and_foreign_tags_are_refused() {
        for text in [
            "a: &x 1\nb: 2\n",
            "a: &x [1]\nb: *x\n",
            "a: !custom 1\n",
            "a: !!binary aGk=\n",
        ] {
            let (_, err) = documents(text);
            assert!(err.is_some(), "{text:?}");
        }
        assert_eq!(documents("a: !!str 80\n").0[0].value, json!({"a": "80"}));
    }

    #[test]
    fn nesting_stops_at_the_limit() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(documents(&ok).1.is_none());
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        let err = documents(&deep).1.expect("too deep");
        assert_eq!(err.column, MAX_DEPTH + 1, "{err}");
    }

    #[test]
    fn keys_are_scalars_and_unique() {
        assert!(documents("? [a]\n: 1\n").1.is_some());
        assert!(documents("a: 1\na: 2\n").1.is_some());
        assert_eq!(
            documents("80: x\ntrue: y\n").0[0].value,
            json!({"80": "x", "true": "y"})
        );
    }
}
