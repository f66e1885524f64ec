//! Where each kind the waypoint reads or writes lives on the API server: group, version,
//! resource (the plural in request paths), scope, and whether objects have a `status`
//! subresource. Every list, watch, status patch and Lease request takes its names from here.
//!
//! * Kubernetes' own kinds come from `k8s-openapi`, Gateway API's from the `gateway-api` crate:
//!   both carry the names their API server serves.
//! * Istio's are written here once, read from Istio's CRDs (istio/istio,
//!   `manifests/charts/base/files/crd-all.gen.yaml`: each CRD's `spec.group`, `spec.names.plural`
//!   and `spec.scope`, and the version marked `storage: true`).
//!
//! A plural is never derived from a kind: the API server answers 404 to `authorizationpolicys`.
//! A kind defined by a CRD ([`KubeResource::crd`]) may be missing from a cluster; the Kubernetes
//! source then treats it as empty instead of waiting for it.

use std::sync::LazyLock;

use gateway_api::apis::standard::gatewayclasses::GatewayClass;
use gateway_api::apis::standard::gateways::Gateway;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Resource;

use crate::key::Kind;
use crate::well_known::{ISTIO_NETWORKING_GROUP, ISTIO_SECURITY_GROUP};

/// Whether objects live in a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Namespaced,
    Cluster,
}

/// One resource the waypoint talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeResource {
    /// `""` for the core group.
    pub group: String,
    pub version: String,
    pub kind: String,
    /// The resource name in request paths and RBAC rules.
    pub plural: String,
    pub scope: Scope,
    /// Has a `status` subresource (where the waypoint writes status).
    pub status: bool,
    /// Defined by a CustomResourceDefinition, so a cluster may not serve it at all.
    pub crd: bool,
}

impl KubeResource {
    /// `v1`, or `<group>/<version>`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The discovery document that lists this resource: `/api/v1` or `/apis/<group>/<version>`.
    pub fn group_version_path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }

    /// The collection: every namespace (`None`) or one.
    pub fn collection_path(&self, namespace: Option<&str>) -> String {
        match namespace.filter(|_| self.scope == Scope::Namespaced) {
            Some(ns) => format!(
                "{}/namespaces/{ns}/{}",
                self.group_version_path(),
                self.plural
            ),
            None => format!("{}/{}", self.group_version_path(), self.plural),
        }
    }

    /// One object (`namespace` is ignored for a cluster-scoped resource).
    pub fn object_path(&self, namespace: &str, name: &str) -> String {
        let ns = (!namespace.is_empty()).then_some(namespace);
        format!("{}/{name}", self.collection_path(ns))
    }

    /// `<plural>` or `<plural>.<group>`: how `kubectl` and the API server's messages name it.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The RBAC rule granting `verbs` on this resource (or on `<plural>/<subresource>`), as a
    /// Role or ClusterRole writes it: what a 403 tells the operator to add.
    pub fn rbac_rule(&self, subresource: Option<&str>, verbs: &[&str]) -> String {
        let resource = match subresource {
            Some(s) => format!("{}/{s}", self.plural),
            None => self.plural.clone(),
        };
        format!(
            "{{apiGroups: [\"{}\"], resources: [{resource}], verbs: [{}]}}",
            self.group,
            verbs.join(", ")
        )
    }

    /// From a type that knows its names (`k8s-openapi`, `gateway-api`).
    fn of<K>(status: bool, crd: bool) -> KubeResource
    where
        K: Resource<DynamicType = ()>,
        K::Scope: ScopeOf,
    {
        KubeResource {
            group: K::group(&()).into_owned(),
            version: K::version(&()).into_owned(),
            kind: K::kind(&()).into_owned(),
            plural: K::plural(&()).into_owned(),
            scope: <K::Scope as ScopeOf>::SCOPE,
            status,
            crd,
        }
    }

    /// An Istio CRD, as its definition names it.
    fn istio(group: &str, kind: &str, plural: &str) -> KubeResource {
        KubeResource {
            group: group.to_owned(),
            // The storage version of every Istio CRD the waypoint reads (served since Istio 1.22).
            version: "v1".to_owned(),
            kind: kind.to_owned(),
            plural: plural.to_owned(),
            scope: Scope::Namespaced,
            status: true,
            crd: true,
        }
    }
}

/// The scope `k8s-openapi` gives a type, as a value.
trait ScopeOf {
    const SCOPE: Scope;
}

impl ScopeOf for k8s_openapi::NamespaceResourceScope {
    const SCOPE: Scope = Scope::Namespaced;
}

impl ScopeOf for k8s_openapi::ClusterResourceScope {
    const SCOPE: Scope = Scope::Cluster;
}

/// Every resource, in [`Kind::ALL`] order, then the mesh ConfigMap and the Lease.
static TABLE: LazyLock<[KubeResource; 12]> = LazyLock::new(|| {
    [
        KubeResource::of::<Gateway>(true, true),
        KubeResource::of::<GatewayClass>(true, true),
        KubeResource::of::<Service>(false, false),
        KubeResource::of::<Namespace>(false, false),
        KubeResource::istio(ISTIO_NETWORKING_GROUP, "ServiceEntry", "serviceentries"),
        KubeResource::istio(ISTIO_NETWORKING_GROUP, "WorkloadEntry", "workloadentries"),
        KubeResource::istio(
            ISTIO_SECURITY_GROUP,
            "AuthorizationPolicy",
            "authorizationpolicies",
        ),
        KubeResource::istio(
            ISTIO_SECURITY_GROUP,
            "RequestAuthentication",
            "requestauthentications",
        ),
        KubeResource::of::<EndpointSlice>(false, false),
        KubeResource::of::<Pod>(false, false),
        KubeResource::of::<ConfigMap>(false, false),
        KubeResource::of::<Lease>(false, false),
    ]
});

/// PeerAuthentication: read by the advisor (`waypoint analyze --kubernetes`), never by the
/// running waypoint, so it is not in [`all`].
static PEER_AUTHENTICATION: LazyLock<KubeResource> = LazyLock::new(|| {
    KubeResource::istio(
        ISTIO_SECURITY_GROUP,
        "PeerAuthentication",
        "peerauthentications",
    )
});

impl Kind {
    /// Where this kind lives on the API server.
    pub fn api(self) -> &'static KubeResource {
        match Kind::ALL.iter().position(|k| *k == self) {
            Some(i) => &TABLE[i],
            None => {
                // The only kind read but not watched (`Kind::READ` less `Kind::ALL`).
                debug_assert_eq!(self, Kind::PeerAuthentication);
                &PEER_AUTHENTICATION
            }
        }
    }
}

/// Istio's mesh ConfigMap (`v1` `configmaps`).
pub fn config_map() -> &'static KubeResource {
    &TABLE[Kind::ALL.len()]
}

/// The Lease that elects the status writer (`coordination.k8s.io/v1` `leases`).
pub fn lease() -> &'static KubeResource {
    &TABLE[Kind::ALL.len() + 1]
}

/// Every resource the waypoint requests.
pub fn all() -> &'static [KubeResource] {
    &TABLE[..]
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_kind_read_has_its_own_resource() {
        let mut plurals: Vec<&str> = Kind::READ.iter().map(|k| k.api().plural.as_str()).collect();
        assert_eq!(Kind::PeerAuthentication.api().plural, "peerauthentications");
        plurals.sort_unstable();
        plurals.dedup();
        assert_eq!(plurals.len(), Kind::READ.len());
    }

    use kube::CustomResourceExt;

    use super::*;

    /// `(group, kind, plural, scope, versions served, storage version)`.
    type Fact = (
        &'static str,
        &'static str,
        &'static str,
        Scope,
        &'static [&'static str],
        &'static str,
    );

    /// The facts, read from each definition: Istio's from `crd-all.gen.yaml` (istio/istio
    /// master 86c9f01f), Gateway API's from its v1.5.1 standard CRDs, Kubernetes' from its v1.32
    /// discovery.
    const FACTS: &[Fact] = &[
        (
            "gateway.networking.k8s.io",
            "Gateway",
            "gateways",
            Scope::Namespaced,
            &["v1", "v1beta1"],
            "v1",
        ),
        (
            "gateway.networking.k8s.io",
            "GatewayClass",
            "gatewayclasses",
            Scope::Cluster,
            &["v1", "v1beta1"],
            "v1",
        ),
        ("", "Service", "services", Scope::Namespaced, &["v1"], "v1"),
        ("", "Namespace", "namespaces", Scope::Cluster, &["v1"], "v1"),
        (
            "networking.istio.io",
            "ServiceEntry",
            "serviceentries",
            Scope::Namespaced,
            &["v1", "v1alpha3", "v1beta1"],
            "v1",
        ),
        (
            "networking.istio.io",
            "WorkloadEntry",
            "workloadentries",
            Scope::Namespaced,
            &["v1", "v1alpha3", "v1beta1"],
            "v1",
        ),
        (
            "security.istio.io",
            "AuthorizationPolicy",
            "authorizationpolicies",
            Scope::Namespaced,
            &["v1", "v1beta1"],
            "v1",
        ),
        (
            "security.istio.io",
            "RequestAuthentication",
            "requestauthentications",
            Scope::Namespaced,
            &["v1", "v1beta1"],
            "v1",
        ),
        (
            "discovery.k8s.io",
            "EndpointSlice",
            "endpointslices",
            Scope::Namespaced,
            &["v1"],
            "v1",
        ),
        ("", "Pod", "pods", Scope::Namespaced, &["v1"], "v1"),
        (
            "",
            "ConfigMap",
            "configmaps",
            Scope::Namespaced,
            &["v1"],
            "v1",
        ),
        (
            "coordination.k8s.io",
            "Lease",
            "leases",
            Scope::Namespaced,
            &["v1"],
            "v1",
        ),
    ];

    #[test]
    fn the_table_says_what_the_definitions_say() {
        assert_eq!(all().len(), FACTS.len());
        for (r, (group, kind, plural, scope, served, storage)) in all().iter().zip(FACTS) {
            assert_eq!(
                (
                    r.group.as_str(),
                    r.kind.as_str(),
                    r.plural.as_str(),
                    r.scope
                ),
                (*group, *kind, *plural, *scope),
                "{r:?}"
            );
            assert!(served.contains(&r.version.as_str()), "{r:?} not served");
            assert_eq!(r.version, *storage, "{r:?}: not the storage version");
            assert_eq!(
                r.crd,
                r.group.ends_with("istio.io") || r.group.starts_with("gateway.")
            );
        }
        for kind in Kind::ALL {
            assert_eq!(
                kind.group_kind(),
                (kind.api().group.as_str(), kind.api().kind.as_str())
            );
        }
    }

    #[test]
    fn plurals_are_never_kind_plus_s() {
        let p = |k: Kind| k.api().plural.as_str();
        assert_eq!(p(Kind::AuthorizationPolicy), "authorizationpolicies");
        assert_eq!(p(Kind::ServiceEntry), "serviceentries");
        assert_eq!(p(Kind::WorkloadEntry), "workloadentries");
        assert_eq!(p(Kind::GatewayClass), "gatewayclasses");
    }

    /// The Istio types' own derive (kube guesses a plural when none is given) and the Gateway
    /// API crate's CRDs agree with the table.
    #[test]
    fn the_crate_types_agree() {
        use crate::istio::{
            AuthorizationPolicy, RequestAuthentication, ServiceEntry, WorkloadEntry,
        };
        for (kind, plural) in [
            (Kind::AuthorizationPolicy, AuthorizationPolicy::plural(&())),
            (
                Kind::RequestAuthentication,
                RequestAuthentication::plural(&()),
            ),
            (Kind::ServiceEntry, ServiceEntry::plural(&())),
            (Kind::WorkloadEntry, WorkloadEntry::plural(&())),
        ] {
            assert_eq!(kind.api().plural, plural, "{kind}");
        }
        for (kind, crd) in [
            (Kind::Gateway, Gateway::crd()),
            (Kind::GatewayClass, GatewayClass::crd()),
        ] {
            let r = kind.api();
            assert_eq!(crd.spec.names.plural, r.plural);
            assert_eq!(crd.spec.group, r.group);
            let scope = if r.scope == Scope::Namespaced {
                "Namespaced"
            } else {
                "Cluster"
            };
            assert_eq!(crd.spec.scope, scope);
            let v = crd
                .spec
                .versions
                .iter()
                .find(|v| v.name == r.version)
                .unwrap();
            assert!(v.subresources.as_ref().is_some_and(|s| s.status.is_some()));
        }
    }

    #[test]
    fn paths() {
        let ap = Kind::AuthorizationPolicy.api();
        assert_eq!(
            ap.collection_path(None),
            "/apis/security.istio.io/v1/authorizationpolicies"
        );
        assert_eq!(
            ap.object_path("demo", "deny"),
            "/apis/security.istio.io/v1/namespaces/demo/authorizationpolicies/deny"
        );
        assert_eq!(ap.qualified(), "authorizationpolicies.security.istio.io");
        assert_eq!(
            ap.rbac_rule(Some("status"), &["patch"]),
            "{apiGroups: [\"security.istio.io\"], resources: [authorizationpolicies/status], verbs: [patch]}"
        );
        assert_eq!(
            config_map().collection_path(Some("istio-system")),
            "/api/v1/namespaces/istio-system/configmaps"
        );
        assert_eq!(
            Kind::GatewayClass.api().object_path("", "c"),
            "/apis/gateway.networking.k8s.io/v1/gatewayclasses/c"
        );
        assert_eq!(
            Kind::Namespace.api().collection_path(Some("x")),
            "/api/v1/namespaces"
        );
        assert_eq!(lease().api_version(), "coordination.k8s.io/v1");
    }
}
