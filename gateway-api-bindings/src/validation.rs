//! The checks istiod's validating webhook makes on AuthorizationPolicy and RequestAuthentication,
//! as findings naming each field. A file source has no webhook in front of it: it refuses a
//! config holding such an object, as the webhook would refuse applying those files. A cluster
//! can hold one all the same (the webhook was down, or the object is older than it): istiod
//! compiles it anyway, and so does the Kubernetes source (see `crate::translate`); these
//! findings are what its status reports.

use kube::ResourceExt;
use policy_engine::{Action, FieldIssue, Findings, validate};

use crate::attachment::Targeting;
use crate::istio::{AuthorizationPolicy, RequestAuthentication};
use crate::translate;
use crate::well_known::{
    DRY_RUN_ANNOTATION, GATEWAY_GROUP, ISTIO_NETWORKING_GROUP, canonical_group,
};

/// What the webhook would say about `ap`: its targetRefs, then its rules.
pub(crate) fn authorization_policy(ap: &AuthorizationPolicy) -> Findings {
    let mut errors = target_ref_errors(&Targeting::of_authorization_policy(ap));
    let mut warnings = Vec::new();
    match translate::policy_spec(ap) {
        Ok(spec) => {
            errors.extend(dry_run_error(ap, spec.action()));
            let f = validate(&spec);
            errors.extend(f.errors);
            warnings.extend(f.warnings);
        }
        Err(e) => errors.push(FieldIssue {
            field: "spec.action".into(),
            message: e.to_string(),
        }),
    }
    Findings { errors, warnings }
}

/// The webhook's `checkDryRunAnnotation`: a value Go's `ParseBool` reads, on ALLOW or DENY only.
fn dry_run_error(ap: &AuthorizationPolicy, action: Action) -> Option<FieldIssue> {
    let value = ap.annotations().get(DRY_RUN_ANNOTATION)?;
    let message = match action {
        Action::Allow | Action::Deny if translate::parse_go_bool(value).is_none() => format!(
            "invalid value \"{}\": expected true or false (Go's ParseBool spellings); istiod \
             enforces the policy",
            crate::limits::shown(value)
        ),
        Action::Allow | Action::Deny => return None,
        Action::Audit | Action::Custom => {
            format!("only supported with action ALLOW or DENY, found {action}")
        }
    };
    Some(FieldIssue {
        field: format!("metadata.annotations[{DRY_RUN_ANNOTATION}]"),
        message,
    })
}

/// What the webhook would say about `ra`: its targetRefs, then its `jwtRules`.
pub(crate) fn request_authentication(ra: &RequestAuthentication) -> Findings {
    let mut errors = target_ref_errors(&Targeting::of_request_authentication(ra));
    errors.extend(jwt_rule_errors(ra));
    Findings {
        errors,
        warnings: Vec::new(),
    }
}

/// The checks istiod's webhook makes on `jwtRules` that matter before tokens are validated.
fn jwt_rule_errors(ra: &RequestAuthentication) -> Vec<FieldIssue> {
    let mut out = Vec::new();
    let mut issue = |field: String, message: &str| {
        out.push(FieldIssue {
            field,
            message: message.into(),
        })
    };
    for (i, r) in ra.spec.jwt_rules.iter().enumerate() {
        let f = format!("spec.jwtRules[{i}]");
        if r.issuer.is_empty() && r.jwks_uri.as_deref().is_none_or(str::is_empty) {
            issue(
                format!("{f}.issuer"),
                "issuer or jwksUri must be a non-empty string",
            );
        }
        if r.audiences.iter().any(String::is_empty) {
            issue(format!("{f}.audiences"), "audience must be non-empty");
        }
        if let Some(uri) = &r.jwks_uri {
            let ok = ["https://", "http://"].iter().any(|s| {
                uri.strip_prefix(s)
                    .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
            });
            if !ok {
                issue(
                    format!("{f}.jwksUri"),
                    "jwksUri must be an http or https URL with a host",
                );
            }
        }
        if let Some(jwks) = &r.jwks
            && serde_json::from_str::<serde_json::Value>(jwks)
                .ok()
                .and_then(|v| v.get("keys").cloned())
                .is_none_or(|k| !k.is_array())
        {
            issue(
                format!("{f}.jwks"),
                "jwks must be a JSON Web Key Set with a keys array",
            );
        }
        for (j, h) in r.from_headers.iter().enumerate() {
            if h.name.is_empty() {
                issue(
                    format!("{f}.fromHeaders[{j}].name"),
                    "header name must be set",
                );
            }
        }
        for (j, p) in r.from_params.iter().enumerate() {
            if p.is_empty() {
                issue(
                    format!("{f}.fromParams[{j}]"),
                    "location query must be a non-empty string",
                );
            }
        }
        for (j, c) in r.from_cookies.iter().enumerate() {
            if c.is_empty() {
                issue(
                    format!("{f}.fromCookies[{j}]"),
                    "cookie name must be a non-empty string",
                );
            }
        }
        if let Some(t) = &r.timeout
            && crate::istio::parse_duration(t).is_none()
        {
            issue(
                format!("{f}.timeout"),
                "timeout must be a positive duration such as 5s",
            );
        }
        let header_ok = |h: &str| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        if let Some(h) = &r.output_payload_to_header
            && !header_ok(h)
        {
            issue(
                format!("{f}.outputPayloadToHeader"),
                "must be a valid header name",
            );
        }
        for (j, c) in r.output_claim_to_headers.iter().enumerate() {
            if !header_ok(&c.header) || c.claim.is_empty() {
                issue(
                    format!("{f}.outputClaimToHeaders[{j}]"),
                    "header must be a valid header name and claim must be set",
                );
            }
        }
    }
    out
}

fn target_ref_errors(s: &Targeting<'_>) -> Vec<FieldIssue> {
    let mut out = Vec::new();
    let set = usize::from(s.selector)
        + usize::from(s.target_ref.is_some())
        + usize::from(!s.target_refs.is_empty());
    if set > 1 {
        out.push(FieldIssue {
            field: if s.selector {
                "spec.selector".into()
            } else {
                "spec.targetRef".into()
            },
            message: "only one of targetRefs or workloadSelector can be set".into(),
        });
    }
    if s.target_refs.len() > 16 {
        out.push(FieldIssue {
            field: "spec.targetRefs".into(),
            message: "must have at most 16 items".into(),
        });
    }
    let refs = s
        .target_ref
        .into_iter()
        .map(|r| ("spec.targetRef".to_owned(), r));
    let refs = refs.chain(
        s.target_refs
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("spec.targetRefs[{i}]"), r)),
    );
    for (field, r) in refs {
        if r.name.is_empty() {
            out.push(FieldIssue {
                field: format!("{field}.name"),
                message: "targetRef name must be set".into(),
            });
        }
        if r.namespace.as_deref().is_some_and(|n| !n.is_empty()) {
            out.push(FieldIssue {
                field: format!("{field}.namespace"),
                message: "targetRef namespace must not be set; cross namespace referencing is not supported".into(),
            });
        }
        let allowed = matches!(
            (canonical_group(&r.group), r.kind.as_str()),
            ("core", "Service")
                | (ISTIO_NETWORKING_GROUP, "ServiceEntry")
                | (GATEWAY_GROUP, "Gateway" | "GatewayClass")
        );
        if !allowed {
            out.push(FieldIssue {
                field: format!("{field}.kind"),
                message: format!(
                    "targetRef must be to one of Service (core), ServiceEntry (networking.istio.io), Gateway or \
                     GatewayClass (gateway.networking.k8s.io) but was {}/{}",
                    r.group, r.kind
                ),
            });
        }
    }
    out
}
