//! Which policies bind to a waypoint, following istiod (`pilot/pkg/model/policyattachment.go`).
//!
//! Only `targetRefs` (or the legacy `targetRef`, used when `targetRefs` is empty) bind; selector and
//! namespace-wide policies belong to ztunnel. Per ref: a `Gateway` in the policy's namespace named
//! like the waypoint; a `GatewayClass` named like the waypoint's class, only from the root
//! namespace; a `Service` or `ServiceEntry` in the policy's namespace, for traffic to it. A ref
//! naming another namespace never matches.

use kube::ResourceExt;
use policy_engine::{Authorizer, AuthorizerBuilder, Binding};

use crate::istio::{AuthorizationPolicy, PolicyTargetReference, RequestAuthentication};
use crate::key::ObjectKey;
use crate::store::Store;
use crate::translate;
use crate::waypoint::WaypointIdentity;
use crate::well_known::{GATEWAY_GROUP, ISTIO_NETWORKING_GROUP, canonical_group};

/// What binds a policy: the part AuthorizationPolicy and RequestAuthentication share.
#[derive(Debug)]
pub struct Targeting<'a> {
    pub namespace: String,
    pub generation: Option<i64>,
    pub selector: bool,
    pub target_ref: Option<&'a PolicyTargetReference>,
    pub target_refs: &'a [PolicyTargetReference],
}

impl<'a> Targeting<'a> {
    pub fn of_authorization_policy(ap: &'a AuthorizationPolicy) -> Targeting<'a> {
        Targeting {
            namespace: ap.namespace().unwrap_or_else(|| "default".into()),
            generation: ap.metadata.generation,
            selector: ap.spec.selector.is_some(),
            target_ref: ap.spec.target_ref.as_ref(),
            target_refs: &ap.spec.target_refs,
        }
    }

    pub fn of_request_authentication(ra: &'a RequestAuthentication) -> Targeting<'a> {
        Targeting {
            namespace: ra.namespace().unwrap_or_else(|| "default".into()),
            generation: ra.metadata.generation,
            selector: ra.spec.selector.is_some(),
            target_ref: ra.spec.target_ref.as_ref(),
            target_refs: &ra.spec.target_refs,
        }
    }

    /// `targetRefs`, or `[targetRef]` when `targetRefs` is empty.
    pub fn refs(&self) -> Vec<&'a PolicyTargetReference> {
        refs_or_ref(self.target_refs, self.target_ref)
    }
}

/// `targetRefs`, or `[targetRef]` when `targetRefs` is empty.
pub fn target_refs(ap: &AuthorizationPolicy) -> Vec<&PolicyTargetReference> {
    refs_or_ref(&ap.spec.target_refs, ap.spec.target_ref.as_ref())
}

fn refs_or_ref<'a>(
    refs: &'a [PolicyTargetReference],
    legacy: Option<&'a PolicyTargetReference>,
) -> Vec<&'a PolicyTargetReference> {
    if refs.is_empty() {
        legacy.into_iter().collect()
    } else {
        refs.iter().collect()
    }
}

/// The engine target key for traffic addressed to a Service.
pub fn service_target(key: &ObjectKey) -> String {
    format!("Service/{key}")
}

/// The engine target key for traffic addressed to a ServiceEntry.
pub fn service_entry_target(key: &ObjectKey) -> String {
    format!("ServiceEntry/{key}")
}

/// How `ap` binds to `waypoint`, or `None` when it does not.
pub fn binding(
    ap: &AuthorizationPolicy,
    policy_ns: &str,
    waypoint: &WaypointIdentity,
) -> Option<Binding> {
    binding_of_refs(target_refs(ap), policy_ns, waypoint)
}

/// How `ra` binds to `waypoint`: by the same rules as an AuthorizationPolicy.
pub fn request_authentication_binding(
    ra: &RequestAuthentication,
    policy_ns: &str,
    waypoint: &WaypointIdentity,
) -> Option<Binding> {
    let refs = refs_or_ref(&ra.spec.target_refs, ra.spec.target_ref.as_ref());
    binding_of_refs(refs, policy_ns, waypoint)
}

fn binding_of_refs(
    refs: Vec<&PolicyTargetReference>,
    policy_ns: &str,
    waypoint: &WaypointIdentity,
) -> Option<Binding> {
    let mut targets = Vec::new();
    for r in refs {
        if r.namespace
            .as_deref()
            .is_some_and(|n| !n.is_empty() && n != policy_ns)
        {
            continue;
        }
        let key = ObjectKey::new(policy_ns, r.name.clone());
        match (canonical_group(&r.group), r.kind.as_str()) {
            (GATEWAY_GROUP, "Gateway") if key == waypoint.gateway => {
                return Some(Binding::Waypoint);
            }
            (GATEWAY_GROUP, "GatewayClass")
                if policy_ns == waypoint.root_namespace && r.name == waypoint.class =>
            {
                return Some(Binding::Waypoint);
            }
            ("core", "Service") => targets.push(service_target(&key)),
            (ISTIO_NETWORKING_GROUP, "ServiceEntry") => targets.push(service_entry_target(&key)),
            _ => {}
        }
    }
    (!targets.is_empty()).then_some(Binding::Targets(targets))
}

/// Compiles every policy of `store` that binds to `waypoint`. Policies whose action is not one
/// Istio knows are left out (their status says why).
pub fn authorizer_for(store: &Store, waypoint: &WaypointIdentity) -> Authorizer {
    let mut b = AuthorizerBuilder::new();
    for (key, ap) in &store.authorization_policies {
        let Some(binding) = binding(&ap.object, &key.namespace, waypoint) else {
            continue;
        };
        match translate::policy_spec(&ap.object) {
            Ok(spec) => {
                b.add(spec, binding);
            }
            Err(e) => tracing::warn!(policy = %key, origin = %ap.origin, "policy left out: {e}"),
        }
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::well_known::{RUST_WAYPOINT_CLASS, WAYPOINT_CLASS};

    fn ap(ns: &str, refs: &str) -> AuthorizationPolicy {
        let mut s = Store::default();
        let errs = s.load_str(
            &format!(
                "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: {ns}}}\nspec: {refs}\n"
            ),
            None,
        );
        assert!(errs.is_empty(), "{errs:?}");
        s.authorization_policies
            .into_values()
            .next()
            .map(|s| s.object)
            .expect("one policy")
    }

    fn wp() -> WaypointIdentity {
        WaypointIdentity {
            gateway: ObjectKey::new("foo", "waypoint"),
            class: WAYPOINT_CLASS.into(),
            root_namespace: "istio-system".into(),
        }
    }

    #[test]
    fn refs_bind_as_istio_does() {
        let gw =
            "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]}";
        assert_eq!(
            binding(&ap("foo", gw), "foo", &wp()),
            Some(Binding::Waypoint)
        );
        assert_eq!(
            binding(&ap("bar", gw), "bar", &wp()),
            None,
            "Gateway refs never cross namespaces"
        );
        let cross = "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint, namespace: bar}]}";
        assert_eq!(binding(&ap("foo", cross), "foo", &wp()), None);
        let class = "{targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]}";
        assert_eq!(
            binding(&ap("istio-system", class), "istio-system", &wp()),
            Some(Binding::Waypoint)
        );
        assert_eq!(
            binding(&ap("foo", class), "foo", &wp()),
            None,
            "GatewayClass only from the root namespace"
        );
        let svc = "{targetRefs: [{kind: Service, group: '', name: httpbin}, {kind: Service, group: core, name: b}]}";
        assert_eq!(
            binding(&ap("foo", svc), "foo", &wp()),
            Some(Binding::Targets(vec![
                "Service/foo/httpbin".into(),
                "Service/foo/b".into()
            ]))
        );
        let se = "{targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: ext}]}";
        assert_eq!(
            binding(&ap("foo", se), "foo", &wp()),
            Some(Binding::Targets(vec!["ServiceEntry/foo/ext".into()]))
        );
        let legacy =
            "{targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}";
        assert_eq!(
            binding(&ap("foo", legacy), "foo", &wp()),
            Some(Binding::Waypoint)
        );
        assert_eq!(
            binding(
                &ap("foo", "{selector: {matchLabels: {app: a}}}"),
                "foo",
                &wp()
            ),
            None
        );
        assert_eq!(
            binding(&ap("foo", "{}"), "foo", &wp()),
            None,
            "namespace-wide policies are ztunnel's"
        );
        let wrong_group = "{targetRefs: [{kind: Gateway, group: '', name: waypoint}]}";
        assert_eq!(binding(&ap("foo", wrong_group), "foo", &wp()), None);
    }

    #[test]
    fn our_class_binds_from_the_root_namespace_only() {
        let ours = WaypointIdentity {
            class: RUST_WAYPOINT_CLASS.into(),
            ..wp()
        };
        let class = "{targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: rust-waypoint}]}";
        for kind in ["AuthorizationPolicy", "RequestAuthentication"] {
            let bound = |ns: &str| {
                let mut s = Store::default();
                let errs = s.load_str(
                    &format!(
                        "apiVersion: security.istio.io/v1\nkind: {kind}\nmetadata: {{name: p, namespace: {ns}}}\nspec: {class}\n"
                    ),
                    None,
                );
                assert!(errs.is_empty(), "{errs:?}");
                match kind {
                    "AuthorizationPolicy" => binding(
                        &s.authorization_policies[&ObjectKey::new(ns, "p")].object,
                        ns,
                        &ours,
                    ),
                    _ => request_authentication_binding(
                        &s.request_authentications[&ObjectKey::new(ns, "p")].object,
                        ns,
                        &ours,
                    ),
                }
            };
            assert_eq!(bound("istio-system"), Some(Binding::Waypoint), "{kind}");
            assert_eq!(
                bound("foo"),
                None,
                "{kind}: GatewayClass only from the root namespace"
            );
        }
        let istio_class = "{targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]}";
        assert_eq!(
            binding(&ap("istio-system", istio_class), "istio-system", &ours),
            None,
            "another class's policy does not bind to our waypoints"
        );
    }
}
