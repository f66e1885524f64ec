#![cfg_attr(test, allow(clippy::unwrap_used))]
//! Istio `AuthorizationPolicy`, compiled into an immutable evaluator that decides exactly as an
//! Envoy waypoint configured by istiod does.
//!
//! * [`spec`]: the input, a policy as plain data (the bindings crate converts Kubernetes objects).
//! * [`mod@validate`]: Istio's admission checks, every finding naming its field.
//! * [`AuthorizerBuilder`] / [`Authorizer`]: compile once, evaluate many times, share freely.
//! * [`request`]: what a decision is made from; [`path`]: Envoy's path normalization and templates.
//!
//! # Semantics
//!
//! Matching follows istiod 1.30's RBAC generation value by value (`pilot/pkg/security/authz`).
//! Every policy string is a literal: `abc*` prefix, `*abc` suffix and `*` presence are the only
//! wildcards, and no value is ever turned into a regular expression (istiod did that for
//! `principals` suffixes and `namespaces` before 1.30; see the `matchers` module).
//! Principals are compared to the full `spiffe://` URI; namespaces to the `/ns/<ns>/` segment;
//! hosts ignore ASCII case; paths drop the query and support `{*}`/`{**}` templates. The decision
//! order is CUSTOM, DENY, then ALLOW (allow when no ALLOW policy applies), AUDIT only marks;
//! `istio.io/dry-run` policies are evaluated in shadow. On a TCP connection HTTP-only fields make
//! an ALLOW rule never match and are ignored in DENY/AUDIT rules. The deciding rule reported is
//! the first match in Envoy's order (policies sorted by `ns[..]-policy[..]-rule[..]`).
//!
//! # Differences from Istio
//!
//! Deliberate, and kept in step with the operator's list in `docs/authz.md`:
//! * `namespaces`: a `*` matches inside the namespace segment only; istiod's regex lets it run
//!   across `/` (`*sa` matches every `/ns/<any>/sa/<sa>` identity). A value holding `/` never
//!   matches (validation warns). For values without `*` or `/` the two agree.
//! * `principals` suffixes and `trustDomains` wildcards are compared as strings; istiod's RE2
//!   regexes do not let `.` match a line feed, which a valid URI (RFC 3986) cannot contain.
//! * the waypoint's HTTP view of a request (repeated fields, Host, request-target forms) refuses
//!   with 400 some ambiguous requests Envoy would decide; `docs/authz.md` lists them;
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
