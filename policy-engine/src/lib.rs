#![cfg_attr(test, allow(clippy::unwrap_used))]
//! Istio `AuthorizationPolicy`, compiled into an immutable evaluator that decides exactly as an
//! Envoy waypoint configured by istiod does.
//!
//! * [`spec`]: the input, a policy as plain data (the bindings crate converts Kubernetes objects).
//! * [`validate`]: Istio's admission checks, every finding naming its field.
//! * [`AuthorizerBuilder`] / [`Authorizer`]: compile once, evaluate many times, share freely.
//! * [`request`]: what a decision is made from; [`path`]: Envoy's path normalization and templates.
//!
//! # Semantics
//!
//! Matching follows istiod's RBAC generation value by value (`pilot/pkg/security/authz`): plain
//! strings are exact, `abc*` prefix, `*abc` suffix and `*` non-empty; principals are compared to the
//! full `spiffe://` URI; namespaces use Istio's `.*/ns/<ns>/.*` regex; hosts ignore case; paths drop
//! the query and support `{*}`/`{**}` templates. The decision order is CUSTOM, DENY, then ALLOW
//! (allow when no ALLOW policy applies), AUDIT only marks; `istio.io/dry-run` policies are evaluated
//! in shadow. On a TCP connection HTTP-only fields make an ALLOW rule never match and are ignored in
//! DENY/AUDIT rules. The deciding rule reported is the first match in Envoy's order (policies
//! sorted by `ns[..]-policy[..]-rule[..]`).
//!
//! Where this engine is stricter than Istio, it is on purpose and fail-closed:
//! * a matching CUSTOM policy denies, since no external authorizer can be consulted yet;
//! * unknown `when` keys and `experimental.envoy.filters.*` (Envoy metadata this waypoint does
//!   not have) are handled like HTTP-only fields on TCP: an ALLOW rule never matches, a DENY/AUDIT
//!   rule ignores the condition. istiod skips such a rule entirely, which fails open for DENY.
//!
//! # Cost
//!
//! Evaluation allocates nothing. Rules are indexed by the exact principals, namespaces, trust
//! domains, hosts, methods, paths, path prefixes and ports they require, so a request is checked
//! only against rules it could match. Figures (criterion, `cargo bench -p policy-engine`, 2-core
//! machine): see `docs/performance.md`.

pub mod authorizer;
pub(crate) mod compile;
pub(crate) mod matchers;
pub mod path;
pub mod request;
pub mod spec;
pub mod validate;

pub use authorizer::{
    Authorizer, AuthorizerBuilder, Binding, DENIED_BODY, Decision, Matched, PolicyMeta, Reason,
    Shadow,
};
pub use path::PathNormalization;
pub use request::{Claim, Headers, HttpRequest, JwtClaims, NoHeaders, PeerIdentity, Request};
pub use spec::{Action, ConditionSpec, OperationSpec, PolicySpec, RuleSpec, SourceSpec};
pub use validate::{FieldIssue, Findings, validate};
