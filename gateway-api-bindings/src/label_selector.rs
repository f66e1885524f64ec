//! Kubernetes label selectors (`matchLabels` and `matchExpressions`), with the semantics of
//! apimachinery's `metav1.LabelSelectorAsSelector`: no selector matches nothing, an empty one
//! matches everything, and the requirements are ANDed. A Gateway listener's
//! `allowedRoutes.namespaces.selector` and the mesh config's `serviceEntryVisibility` namespace
//! selectors are both read through [`Selector`].
//!
//! A selector Kubernetes would refuse (an unknown operator, `In` without values, a malformed key)
//! is an error here; callers fail closed on it (a selector that cannot be read admits nobody).

use std::collections::BTreeMap;
use std::fmt;

use gateway_api::apis::standard::gateways::GatewayListenersAllowedRoutesNamespacesSelector;
use serde::Deserialize;

/// A label selector as written in an object (`metav1.LabelSelector`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<Expression>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Expression {
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
}

impl From<&GatewayListenersAllowedRoutesNamespacesSelector> for LabelSelector {
    fn from(s: &GatewayListenersAllowedRoutesNamespacesSelector) -> LabelSelector {
        LabelSelector {
            match_labels: s.match_labels.clone().unwrap_or_default(),
            match_expressions: s
                .match_expressions
                .iter()
                .flatten()
                .map(|e| Expression {
                    key: e.key.clone(),
                    operator: e.operator.clone(),
                    values: e.values.clone().unwrap_or_default(),
                })
                .collect(),
        }
    }
}

/// Why a selector cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("{0:?} is not a valid label selector operator")]
    Operator(String),
    #[error("operator {operator} on key {key:?}: {why}")]
    Values {
        key: String,
        operator: &'static str,
        why: &'static str,
    },
    #[error("invalid label key {0:?}")]
    Key(String),
    #[error("invalid label value {0:?}")]
    Value(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
    values: Vec<String>,
}

/// A compiled selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector(Inner);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Inner {
    /// No selector at all.
    Nothing,
    /// Every requirement must hold (none: everything matches).
    All(Vec<Requirement>),
}

impl Selector {
    /// `metav1.LabelSelectorAsSelector`: `None` matches nothing, `{}` everything.
    pub fn compile(selector: Option<&LabelSelector>) -> Result<Selector, SelectorError> {
        let Some(s) = selector else {
            return Ok(Selector(Inner::Nothing));
        };
        let mut reqs = Vec::with_capacity(s.match_labels.len() + s.match_expressions.len());
        for (k, v) in &s.match_labels {
            check_key(k)?;
            check_value(v)?;
            reqs.push(Requirement {
                key: k.clone(),
                op: Op::In,
                values: vec![v.clone()],
            });
        }
        for e in &s.match_expressions {
            let op = match e.operator.as_str() {
                "In" => Op::In,
                "NotIn" => Op::NotIn,
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::DoesNotExist,
                other => return Err(SelectorError::Operator(other.to_owned())),
            };
            check_key(&e.key)?;
            let values_error = |operator, why| SelectorError::Values {
                key: e.key.clone(),
                operator,
                why,
            };
            match op {
                Op::In | Op::NotIn if e.values.is_empty() => {
                    let name = if op == Op::In { "In" } else { "NotIn" };
                    return Err(values_error(name, "needs at least one value"));
                }
                Op::Exists | Op::DoesNotExist if !e.values.is_empty() => {
                    let name = if op == Op::Exists {
                        "Exists"
                    } else {
                        "DoesNotExist"
                    };
                    return Err(values_error(name, "takes no values"));
                }
                _ => {}
            }
            for v in &e.values {
                check_value(v)?;
            }
            reqs.push(Requirement {
                key: e.key.clone(),
                op,
                values: e.values.clone(),
            });
        }
        Ok(Selector(Inner::All(reqs)))
    }

    /// Whether an object with `labels` is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match &self.0 {
            Inner::Nothing => false,
            Inner::All(reqs) => reqs.iter().all(|r| {
                let v = labels.get(&r.key);
                match r.op {
                    Op::In => v.is_some_and(|v| r.values.contains(v)),
                    Op::NotIn => v.is_none_or(|v| !r.values.contains(v)),
                    Op::Exists => v.is_some(),
                    Op::DoesNotExist => v.is_none(),
                }
            }),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Inner::Nothing => f.write_str("<nothing>"),
            Inner::All(reqs) if reqs.is_empty() => f.write_str("<everything>"),
            Inner::All(reqs) => {
                for (i, r) in reqs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    match r.op {
                        Op::In if r.values.len() == 1 => write!(f, "{}={}", r.key, r.values[0])?,
                        Op::In => write!(f, "{} in ({})", r.key, r.values.join(","))?,
                        Op::NotIn => write!(f, "{} notin ({})", r.key, r.values.join(","))?,
                        Op::Exists => write!(f, "{}", r.key)?,
                        Op::DoesNotExist => write!(f, "!{}", r.key)?,
                    }
                }
                Ok(())
            }
        }
    }
}

/// A qualified name: `[A-Za-z0-9]([-_.A-Za-z0-9]*[A-Za-z0-9])?`, at most 63 characters.
fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A DNS-1123 subdomain: lowercase alphanumerics, `-` and `.`, at most 253 characters.
fn is_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

fn check_key(k: &str) -> Result<(), SelectorError> {
    let ok = match k.split_once('/') {
        Some((prefix, name)) => is_subdomain(prefix) && is_name(name),
        None => is_name(k),
    };
    if ok {
        Ok(())
    } else {
        Err(SelectorError::Key(k.to_owned()))
    }
}

fn check_value(v: &str) -> Result<(), SelectorError> {
    if v.is_empty() || is_name(v) {
        Ok(())
    } else {
        Err(SelectorError::Value(v.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn sel(yaml: &str) -> Result<Selector, SelectorError> {
        let s: LabelSelector = serde_yaml::from_str(yaml).unwrap();
        Selector::compile(Some(&s))
    }

    #[test]
    fn none_matches_nothing_and_empty_everything() {
        let l = labels(&[("team", "a")]);
        assert!(!Selector::compile(None).unwrap().matches(&l));
        assert!(sel("{}").unwrap().matches(&l));
        assert!(sel("{}").unwrap().matches(&BTreeMap::new()));
    }

    #[test]
    fn requirements_are_anded_as_kubernetes_does() {
        let s = sel(
            "{matchLabels: {team: a}, matchExpressions: [{key: env, operator: NotIn, values: [prod]}, {key: shared, operator: Exists}]}",
        )
        .unwrap();
        assert!(s.matches(&labels(&[("team", "a"), ("shared", "")])));
        assert!(
            s.matches(&labels(&[("team", "a"), ("shared", "y"), ("env", "dev")])),
            "NotIn holds for another value"
        );
        assert!(!s.matches(&labels(&[("team", "a"), ("shared", "y"), ("env", "prod")])));
        assert!(!s.matches(&labels(&[("team", "b"), ("shared", "y")])));
        assert!(!s.matches(&labels(&[("team", "a")])), "Exists");
        let s = sel("{matchExpressions: [{key: team, operator: In, values: [a, b]}, {key: x, operator: DoesNotExist}]}").unwrap();
        assert!(s.matches(&labels(&[("team", "b")])));
        assert!(!s.matches(&labels(&[("team", "b"), ("x", "")])));
        assert!(!s.matches(&labels(&[])), "In needs the key");
        assert_eq!(s.to_string(), "team in (a,b),!x");
    }

    #[test]
    fn what_kubernetes_refuses_is_an_error() {
        for bad in [
            "{matchExpressions: [{key: a, operator: Equals, values: [b]}]}",
            "{matchExpressions: [{key: a, operator: In}]}",
            "{matchExpressions: [{key: a, operator: NotIn, values: []}]}",
            "{matchExpressions: [{key: a, operator: Exists, values: [b]}]}",
            "{matchLabels: {'bad key': a}}",
            "{matchLabels: {'-a': b}}",
            "{matchLabels: {'Example.com/a': b}}",
            "{matchLabels: {a: 'spaced value'}}",
            "{matchLabels: {a: 'ünï'}}",
        ] {
            assert!(sel(bad).is_err(), "{bad}");
        }
        let long = "a".repeat(64);
        assert!(sel(&format!("{{matchLabels: {{{long}: b}}}}")).is_err());
        assert!(sel("{matchLabels: {kubernetes.io/metadata.name: tenant-b, a: ''}}").is_ok());
    }
}
