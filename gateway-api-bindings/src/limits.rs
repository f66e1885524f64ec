//! The shape limits Kubernetes, Istio and Gateway API put on the objects the waypoint reads,
//! checked on the JSON form before an object is decoded, plus bounded display of untrusted text.
//!
//! An object the API server would have refused is refused here too, naming the field: a file
//! source must not accept what a cluster cannot hold (10,000 rules, a 10 MB name, a name with a
//! newline that forges an output line).

use std::borrow::Cow;

use serde_json::Value;

use crate::key::Kind;

/// Longest piece of untrusted text (a name, a value) echoed in an error.
pub const MAX_SHOWN: usize = 128;

/// Errors reported for one object; the rest are counted.
pub const MAX_ERRORS_PER_OBJECT: usize = 8;

/// `text` made safe to print on one line: control characters (newline, NUL, escape, ...)
/// escaped, at most [`MAX_SHOWN`] characters kept.
pub fn shown(text: &str) -> Cow<'_, str> {
    shown_max(text, MAX_SHOWN)
}

/// [`shown`] with another length bound (in characters).
pub fn shown_max(text: &str, max: usize) -> Cow<'_, str> {
    let plain = text.len() <= max && !text.chars().any(needs_escape);
    if plain {
        return Cow::Borrowed(text);
    }
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max {
            out.push_str(&format!("...({} bytes in all)", text.len()));
            break;
        }
        if needs_escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    // Unicode line and paragraph separators end a line in some terminals and log viewers.
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// One refused field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// `metadata.name`, `spec.rules`, `spec.rules[3].from`.
    pub field: String,
    pub message: String,
}

/// Which naming rule a kind's `metadata.name` follows in Kubernetes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NameRule {
    /// RFC 1123 subdomain: at most 253 characters of `[a-z0-9.-]`, alphanumeric at both ends
    /// (Pods, EndpointSlices, and custom resources: the API server validates CR names so).
    Subdomain,
    /// RFC 1123 label: at most 63 characters of `[a-z0-9-]`, alphanumeric at both ends
    /// (Namespaces).
    Label,
    /// RFC 1035 label: an RFC 1123 label that starts with a letter (Services).
    Rfc1035Label,
}

fn name_rule(kind: Kind) -> NameRule {
    match kind {
        Kind::Namespace => NameRule::Label,
        Kind::Service => NameRule::Rfc1035Label,
        _ => NameRule::Subdomain,
    }
}

/// Why `name` breaks `rule`, if it does.
fn name_problem(name: &str, rule: NameRule) -> Option<String> {
    let (max, what) = match rule {
        NameRule::Subdomain => (253, "an RFC 1123 subdomain"),
        NameRule::Label => (63, "an RFC 1123 label"),
        NameRule::Rfc1035Label => (63, "an RFC 1035 label"),
    };
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if name.len() > max {
        return Some(format!(
            "is {} characters long; {what} has at most {max}",
            name.len()
        ));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let ok = match rule {
        // Kubernetes bounds the whole name, not each label (IsDNS1123Subdomain).
        NameRule::Subdomain => name.split('.').all(label_ok),
        NameRule::Label => label_ok(name),
        NameRule::Rfc1035Label => label_ok(name) && name.as_bytes()[0].is_ascii_lowercase(),
    };
    (!ok).then(|| {
        format!(
            "'{}' is not {what} (lowercase letters, digits{}, '-'; alphanumeric at both ends{})",
            shown(name),
            if rule == NameRule::Subdomain {
                ", '.'"
            } else {
                ""
            },
            if rule == NameRule::Rfc1035Label {
                "; a letter first"
            } else {
                ""
            }
        )
    })
}

/// A step in a field path.
#[derive(Clone, Copy)]
enum Seg {
    Key(&'static str),
    Each,
}

use Seg::{Each, Key};

#[derive(Clone, Copy)]
enum Bound {
    Items(usize),
    Properties(usize),
    Length(usize),
}

use Bound::{Items, Length, Properties};

/// `maxItems` / `maxProperties` / `maxLength` the CRDs declare. Sources:
/// * Istio: `kubernetes/customresourcedefinitions.gen.yaml` in istio/api (v1 schemas of
///   AuthorizationPolicy, RequestAuthentication, ServiceEntry, WorkloadEntry). The
///   AuthorizationPolicy schema bounds `rules` and `from` (512 each) but declares no bound on
///   `to` or `when`; those are bounded by the object size alone, as in a cluster.
/// * Gateway API: `config/crd/standard/gateway.networking.k8s.io_gateways.yaml` (v1).
/// * EndpointSlice: Kubernetes' `pkg/apis/discovery/validation` (1000 endpoints, 100 addresses
///   per endpoint).
const RULES: &[(Kind, &[Seg], Bound)] = &[
    (
        Kind::AuthorizationPolicy,
        &[Key("spec"), Key("rules")],
        Items(512),
    ),
    (
        Kind::AuthorizationPolicy,
        &[Key("spec"), Key("rules"), Each, Key("from")],
        Items(512),
    ),
    (
        Kind::AuthorizationPolicy,
        &[
            Key("spec"),
            Key("rules"),
            Each,
            Key("from"),
            Each,
            Key("source"),
            Key("serviceAccounts"),
        ],
        Items(16),
    ),
    (
        Kind::AuthorizationPolicy,
        &[
            Key("spec"),
            Key("rules"),
            Each,
            Key("from"),
            Each,
            Key("source"),
            Key("notServiceAccounts"),
        ],
        Items(16),
    ),
    (
        Kind::AuthorizationPolicy,
        &[Key("spec"), Key("targetRefs")],
        Items(16),
    ),
    (
        Kind::AuthorizationPolicy,
        &[Key("spec"), Key("targetRefs"), Each, Key("name")],
        Length(253),
    ),
    (
        Kind::AuthorizationPolicy,
        &[Key("spec"), Key("targetRef"), Key("name")],
        Length(253),
    ),
    (
        Kind::AuthorizationPolicy,
        &[Key("spec"), Key("selector"), Key("matchLabels")],
        Properties(4096),
    ),
    (
        Kind::RequestAuthentication,
        &[Key("spec"), Key("jwtRules")],
        Items(4096),
    ),
    (
        Kind::RequestAuthentication,
        &[
            Key("spec"),
            Key("jwtRules"),
            Each,
            Key("spaceDelimitedClaims"),
        ],
        Items(64),
    ),
    (
        Kind::RequestAuthentication,
        &[Key("spec"), Key("jwtRules"), Each, Key("jwksUri")],
        Length(2048),
    ),
    (
        Kind::RequestAuthentication,
        &[Key("spec"), Key("targetRefs")],
        Items(16),
    ),
    (
        Kind::RequestAuthentication,
        &[Key("spec"), Key("targetRefs"), Each, Key("name")],
        Length(253),
    ),
    (
        Kind::RequestAuthentication,
        &[Key("spec"), Key("targetRef"), Key("name")],
        Length(253),
    ),
    (
        Kind::RequestAuthentication,
        &[Key("spec"), Key("selector"), Key("matchLabels")],
        Properties(4096),
    ),
    (Kind::ServiceEntry, &[Key("spec"), Key("hosts")], Items(256)),
    (
        Kind::ServiceEntry,
        &[Key("spec"), Key("addresses")],
        Items(256),
    ),
    (Kind::ServiceEntry, &[Key("spec"), Key("ports")], Items(256)),
    (
        Kind::ServiceEntry,
        &[Key("spec"), Key("endpoints")],
        Items(4096),
    ),
    (
        Kind::ServiceEntry,
        &[Key("spec"), Key("endpoints"), Each, Key("labels")],
        Properties(256),
    ),
    (
        Kind::ServiceEntry,
        &[Key("spec"), Key("endpoints"), Each, Key("ports")],
        Properties(128),
    ),
    (
        Kind::ServiceEntry,
        &[Key("spec"), Key("workloadSelector"), Key("labels")],
        Properties(256),
    ),
    (
        Kind::WorkloadEntry,
        &[Key("spec"), Key("labels")],
        Properties(256),
    ),
    (
        Kind::WorkloadEntry,
        &[Key("spec"), Key("ports")],
        Properties(128),
    ),
    (
        Kind::WorkloadEntry,
        &[Key("spec"), Key("address")],
        Length(256),
    ),
    (Kind::Gateway, &[Key("spec"), Key("listeners")], Items(64)),
    (Kind::Gateway, &[Key("spec"), Key("addresses")], Items(16)),
    (
        Kind::Gateway,
        &[
            Key("spec"),
            Key("listeners"),
            Each,
            Key("allowedRoutes"),
            Key("kinds"),
        ],
        Items(8),
    ),
    (
        Kind::Gateway,
        &[
            Key("spec"),
            Key("listeners"),
            Each,
            Key("tls"),
            Key("certificateRefs"),
        ],
        Items(64),
    ),
    (
        Kind::Gateway,
        &[Key("spec"), Key("listeners"), Each, Key("hostname")],
        Length(253),
    ),
    (Kind::EndpointSlice, &[Key("endpoints")], Items(1000)),
    (
        Kind::EndpointSlice,
        &[Key("endpoints"), Each, Key("addresses")],
        Items(100),
    ),
];

/// Every limit `value` (an object of `kind`) breaks, at most [`MAX_ERRORS_PER_OBJECT`] of them
/// plus a count of the rest.
pub fn check(kind: Kind, value: &Value) -> Vec<Violation> {
    let mut found = Vec::new();
    let meta = value.get("metadata");
    match meta.and_then(|m| m.get("name")) {
        Some(Value::String(name)) => {
            if let Some(problem) = name_problem(name, name_rule(kind)) {
                found.push(violation("metadata.name", problem));
            }
        }
        Some(_) => found.push(violation("metadata.name", "must be a string".into())),
        None => found.push(violation("metadata.name", "is required".into())),
    }
    if !kind.cluster_scoped() {
        match meta.and_then(|m| m.get("namespace")) {
            // Absent: the object lands in `default`, as `kubectl apply` without `-n` would.
            None | Some(Value::Null) => {}
            Some(Value::String(ns)) => {
                if let Some(problem) = name_problem(ns, NameRule::Label) {
                    found.push(violation("metadata.namespace", problem));
                }
            }
            Some(_) => found.push(violation("metadata.namespace", "must be a string".into())),
        }
    }
    for (k, path, bound) in RULES {
        if *k == kind {
            walk(value, path, &mut String::new(), *bound, &mut found);
        }
    }
    if found.len() > MAX_ERRORS_PER_OBJECT {
        let more = found.len() - MAX_ERRORS_PER_OBJECT;
        found.truncate(MAX_ERRORS_PER_OBJECT);
        found.push(violation(
            "",
            format!("and {more} more violation(s) in this object"),
        ));
    }
    found
}

fn violation(field: &str, message: String) -> Violation {
    Violation {
        field: field.to_owned(),
        message,
    }
}

fn walk(value: &Value, path: &[Seg], at: &mut String, bound: Bound, found: &mut Vec<Violation>) {
    // Stop early: a 512-rule policy with an oversized field in each rule needs one line, not 512.
    if found.len() > MAX_ERRORS_PER_OBJECT {
        return;
    }
    let Some((first, rest)) = path.split_first() else {
        let (size, max, unit) = match (bound, value) {
            (Items(max), Value::Array(a)) => (a.len(), max, "items"),
            (Properties(max), Value::Object(o)) => (o.len(), max, "entries"),
            (Length(max), Value::String(s)) => (s.chars().count(), max, "characters"),
            // A wrong type is reported by decoding, with the field.
            _ => return,
        };
        if size > max {
            found.push(violation(
                at,
                format!("has {size} {unit}; the CRD allows at most {max}"),
            ));
        }
        return;
    };
    let len = at.len();
    match (first, value) {
        (Key(k), Value::Object(o)) => {
            if let Some(v) = o.get(*k) {
                if !at.is_empty() {
                    at.push('.');
                }
                at.push_str(k);
                walk(v, rest, at, bound, found);
            }
        }
        (Each, Value::Array(items)) => {
            for (i, v) in items.iter().enumerate() {
                at.push_str(&format!("[{i}]"));
                walk(v, rest, at, bound, found);
                at.truncate(len);
            }
        }
        _ => {}
    }
    at.truncate(len);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_follow_the_kinds_rule() {
        let named = |kind, name: &str| {
            check(
                kind,
                &json!({"metadata": {"name": name, "namespace": "ns"}}),
            )
        };
        assert!(named(Kind::AuthorizationPolicy, "a.b-c").is_empty());
        assert!(
            named(Kind::Service, "1abc").len() == 1,
            "Services start with a letter"
        );
        assert!(named(Kind::Pod, "1abc").is_empty());
        assert!(named(Kind::Namespace, "a.b").len() == 1);
        assert!(named(Kind::AuthorizationPolicy, &"a".repeat(254)).len() == 1);
        assert!(named(Kind::Service, &"a".repeat(64)).len() == 1);
        let v = named(Kind::AuthorizationPolicy, "x\nforged: Accepted");
        assert_eq!(v.len(), 1);
        assert!(!v[0].message.contains('\n'), "{}", v[0].message);
    }

    #[test]
    fn crd_bounds_name_the_field_and_are_capped() {
        let rules: Vec<_> = (0..513).map(|_| json!({"from": []})).collect();
        let v = check(
            Kind::AuthorizationPolicy,
            &json!({"metadata": {"name": "p"}, "spec": {"rules": rules}}),
        );
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].field, "spec.rules");
        assert!(v[0].message.contains("513"), "{}", v[0].message);
        let many_from: Vec<_> = (0..513).map(|_| json!({})).collect();
        let rules: Vec<_> = (0..20).map(|_| json!({"from": many_from})).collect();
        let v = check(
            Kind::AuthorizationPolicy,
            &json!({"metadata": {"name": "p"}, "spec": {"rules": rules}}),
        );
        assert_eq!(v.len(), MAX_ERRORS_PER_OBJECT + 1);
        assert_eq!(v[3].field, "spec.rules[3].from");
    }

    #[test]
    fn shown_is_one_bounded_line() {
        assert_eq!(shown("plain"), "plain");
        assert_eq!(shown("a\nb\0c"), "a\\nb\\u{0}c");
        let long = shown(&"x".repeat(10_000)).into_owned();
        assert!(long.len() < MAX_SHOWN + 40, "{}", long.len());
    }
}
