//! The resources the fake API server serves, written from their published definitions and
//! never computed from a kind, nor taken from the waypoint's own table (the two must agree by
//! being right, not by sharing a mistake):
//!
//! * Kubernetes' built-in resources as a v1.32 API server lists them in discovery
//!   (`kubectl api-resources`): plural, singular, short names, scope, subresources, verbs.
//! * Gateway API from its v1.5.1 standard-channel CRDs (`config/crd/standard/*.yaml`).
//! * Istio from `manifests/charts/base/files/crd-all.gen.yaml` (istio/istio master 86c9f01f):
//!   each CRD's `spec.group`, `spec.names` (kind, plural, singular, shortNames, categories),
//!   `spec.scope`, its served versions and their `subresources`.
//!
//! Versions are listed in the order discovery prefers them (the first is the preferred one).

use serde_json::{Value, json};

/// One resource, as its definition declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    pub group: &'static str,
    /// Served versions, preferred first.
    pub versions: &'static [&'static str],
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Subresources (`status`, `scale`, ...).
    pub subresources: &'static [&'static str],
    /// Defined by a CRD: tests may uninstall it.
    pub crd: bool,
}

const NONE: &[&str] = &[];
const ALL_CATEGORY: &[&str] = &["all"];
const STATUS: &[&str] = &["status"];
const GATEWAY_API: &[&str] = &["gateway-api"];
const ISTIO_NETWORKING: &[&str] = &["istio-io", "networking-istio-io"];
const ISTIO_SECURITY: &[&str] = &["istio-io", "security-istio-io"];
const ISTIO_V1_3: &[&str] = &["v1", "v1alpha3", "v1beta1"];
const ISTIO_V1_BETA: &[&str] = &["v1", "v1beta1"];

const fn builtin(
    group: &'static str,
    versions: &'static [&'static str],
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [&'static str],
) -> Served {
    Served {
        group,
        versions,
        kind,
        plural,
        singular,
        namespaced,
        short_names,
        categories,
        subresources,
        crd: false,
    }
}

const fn crd(
    group: &'static str,
    versions: &'static [&'static str],
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [&'static str],
) -> Served {
    Served {
        group,
        versions,
        kind,
        plural,
        singular,
        namespaced: true,
        short_names,
        categories,
        subresources,
        crd: true,
    }
}

/// Everything the fake serves.
pub const SERVED: &[Served] = &[
    // Core (`/api/v1`).
    builtin(
        "",
        &["v1"],
        "ConfigMap",
        "configmaps",
        "configmap",
        true,
        &["cm"],
        NONE,
        NONE,
    ),
    builtin(
        "",
        &["v1"],
        "Endpoints",
        "endpoints",
        "endpoints",
        true,
        &["ep"],
        NONE,
        NONE,
    ),
    builtin(
        "",
        &["v1"],
        "Event",
        "events",
        "event",
        true,
        &["ev"],
        NONE,
        NONE,
    ),
    builtin(
        "",
        &["v1"],
        "Namespace",
        "namespaces",
        "namespace",
        false,
        &["ns"],
        NONE,
        &["finalize", "status"],
    ),
    builtin(
        "",
        &["v1"],
        "Node",
        "nodes",
        "node",
        false,
        &["no"],
        NONE,
        &["proxy", "status"],
    ),
    builtin(
        "",
        &["v1"],
        "Pod",
        "pods",
        "pod",
        true,
        &["po"],
        ALL_CATEGORY,
        &[
            "attach",
            "binding",
            "eviction",
            "exec",
            "log",
            "portforward",
            "proxy",
            "status",
        ],
    ),
    builtin(
        "",
        &["v1"],
        "Secret",
        "secrets",
        "secret",
        true,
        NONE,
        NONE,
        NONE,
    ),
    builtin(
        "",
        &["v1"],
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        true,
        &["sa"],
        NONE,
        &["token"],
    ),
    builtin(
        "",
        &["v1"],
        "Service",
        "services",
        "service",
        true,
        &["svc"],
        ALL_CATEGORY,
        &["proxy", "status"],
    ),
    // apps/v1, autoscaling, policy.
    builtin(
        "apps",
        &["v1"],
        "Deployment",
        "deployments",
        "deployment",
        true,
        &["deploy"],
        ALL_CATEGORY,
        &["scale", "status"],
    ),
    builtin(
        "apps",
        &["v1"],
        "ReplicaSet",
        "replicasets",
        "replicaset",
        true,
        &["rs"],
        ALL_CATEGORY,
        &["scale", "status"],
    ),
    builtin(
        "autoscaling",
        &["v2", "v1"],
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        true,
        &["hpa"],
        ALL_CATEGORY,
        STATUS,
    ),
    builtin(
        "policy",
        &["v1"],
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        true,
        &["pdb"],
        NONE,
        STATUS,
    ),
    // discovery.k8s.io, coordination.k8s.io, rbac.authorization.k8s.io.
    builtin(
        "discovery.k8s.io",
        &["v1"],
        "EndpointSlice",
        "endpointslices",
        "endpointslice",
        true,
        NONE,
        NONE,
        NONE,
    ),
    builtin(
        "coordination.k8s.io",
        &["v1"],
        "Lease",
        "leases",
        "lease",
        true,
        NONE,
        NONE,
        NONE,
    ),
    builtin(
        "rbac.authorization.k8s.io",
        &["v1"],
        "ClusterRole",
        "clusterroles",
        "clusterrole",
        false,
        NONE,
        NONE,
        NONE,
    ),
    builtin(
        "rbac.authorization.k8s.io",
        &["v1"],
        "ClusterRoleBinding",
        "clusterrolebindings",
        "clusterrolebinding",
        false,
        NONE,
        NONE,
        NONE,
    ),
    builtin(
        "rbac.authorization.k8s.io",
        &["v1"],
        "Role",
        "roles",
        "role",
        true,
        NONE,
        NONE,
        NONE,
    ),
    builtin(
        "rbac.authorization.k8s.io",
        &["v1"],
        "RoleBinding",
        "rolebindings",
        "rolebinding",
        true,
        NONE,
        NONE,
        NONE,
    ),
    // Gateway API v1.5.1, standard channel.
    Served {
        namespaced: false,
        ..crd(
            "gateway.networking.k8s.io",
            &["v1", "v1beta1"],
            "GatewayClass",
            "gatewayclasses",
            "gatewayclass",
            &["gc"],
            GATEWAY_API,
            STATUS,
        )
    },
    crd(
        "gateway.networking.k8s.io",
        &["v1", "v1beta1"],
        "Gateway",
        "gateways",
        "gateway",
        &["gtw"],
        GATEWAY_API,
        STATUS,
    ),
    crd(
        "gateway.networking.k8s.io",
        &["v1", "v1beta1"],
        "HTTPRoute",
        "httproutes",
        "httproute",
        NONE,
        GATEWAY_API,
        STATUS,
    ),
    crd(
        "gateway.networking.k8s.io",
        &["v1"],
        "GRPCRoute",
        "grpcroutes",
        "grpcroute",
        NONE,
        GATEWAY_API,
        STATUS,
    ),
    crd(
        "gateway.networking.k8s.io",
        &["v1", "v1beta1"],
        "ReferenceGrant",
        "referencegrants",
        "referencegrant",
        &["refgrant"],
        GATEWAY_API,
        NONE,
    ),
    crd(
        "gateway.networking.k8s.io",
        &["v1"],
        "BackendTLSPolicy",
        "backendtlspolicies",
        "backendtlspolicy",
        &["btlspolicy"],
        GATEWAY_API,
        STATUS,
    ),
    crd(
        "gateway.networking.k8s.io",
        &["v1"],
        "ListenerSet",
        "listenersets",
        "listenerset",
        &["lset"],
        GATEWAY_API,
        STATUS,
    ),
    crd(
        "gateway.networking.k8s.io",
        &["v1"],
        "TLSRoute",
        "tlsroutes",
        "tlsroute",
        NONE,
        GATEWAY_API,
        STATUS,
    ),
    // Istio.
    crd(
        "networking.istio.io",
        ISTIO_V1_3,
        "DestinationRule",
        "destinationrules",
        "destinationrule",
        &["dr"],
        ISTIO_NETWORKING,
        STATUS,
    ),
    crd(
        "networking.istio.io",
        &["v1alpha3"],
        "EnvoyFilter",
        "envoyfilters",
        "envoyfilter",
        NONE,
        ISTIO_NETWORKING,
        STATUS,
    ),
    crd(
        "networking.istio.io",
        ISTIO_V1_3,
        "Gateway",
        "gateways",
        "gateway",
        &["gw"],
        ISTIO_NETWORKING,
        STATUS,
    ),
    crd(
        "networking.istio.io",
        &["v1beta1"],
        "ProxyConfig",
        "proxyconfigs",
        "proxyconfig",
        NONE,
        ISTIO_NETWORKING,
        STATUS,
    ),
    crd(
        "networking.istio.io",
        ISTIO_V1_3,
        "ServiceEntry",
        "serviceentries",
        "serviceentry",
        &["se"],
        ISTIO_NETWORKING,
        STATUS,
    ),
    crd(
        "networking.istio.io",
        ISTIO_V1_3,
        "Sidecar",
        "sidecars",
        "sidecar",
        NONE,
        ISTIO_NETWORKING,
        STATUS,
    ),
    crd(
        "networking.istio.io",
        ISTIO_V1_3,
        "VirtualService",
        "virtualservices",
        "virtualservice",
        &["vs"],
        ISTIO_NETWORKING,
        STATUS,
    ),
    crd(
        "networking.istio.io",
        ISTIO_V1_3,
        "WorkloadEntry",
        "workloadentries",
        "workloadentry",
        &["we"],
        ISTIO_NETWORKING,
        STATUS,
    ),
    crd(
        "networking.istio.io",
        ISTIO_V1_3,
        "WorkloadGroup",
        "workloadgroups",
        "workloadgroup",
        &["wg"],
        ISTIO_NETWORKING,
        STATUS,
    ),
    crd(
        "security.istio.io",
        ISTIO_V1_BETA,
        "AuthorizationPolicy",
        "authorizationpolicies",
        "authorizationpolicy",
        &["ap"],
        ISTIO_SECURITY,
        STATUS,
    ),
    crd(
        "security.istio.io",
        ISTIO_V1_BETA,
        "PeerAuthentication",
        "peerauthentications",
        "peerauthentication",
        &["pa"],
        ISTIO_SECURITY,
        STATUS,
    ),
    crd(
        "security.istio.io",
        ISTIO_V1_BETA,
        "RequestAuthentication",
        "requestauthentications",
        "requestauthentication",
        &["ra"],
        ISTIO_SECURITY,
        STATUS,
    ),
    crd(
        "telemetry.istio.io",
        &["v1", "v1alpha1"],
        "Telemetry",
        "telemetries",
        "telemetry",
        &["telemetry"],
        &["istio-io", "telemetry-istio-io"],
        STATUS,
    ),
    crd(
        "extensions.istio.io",
        &["v1alpha1"],
        "WasmPlugin",
        "wasmplugins",
        "wasmplugin",
        NONE,
        &["istio-io", "extensions-istio-io"],
        STATUS,
    ),
];

/// The resource `kind` of `group` is stored under.
pub fn by_kind(group: &str, kind: &str) -> Option<&'static Served> {
    SERVED.iter().find(|s| s.group == group && s.kind == kind)
}

/// The resource `plural` of `group`, if it is defined at all.
pub fn by_plural(group: &str, plural: &str) -> Option<&'static Served> {
    SERVED
        .iter()
        .find(|s| s.group == group && s.plural == plural)
}

impl Served {
    pub fn group_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_owned()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    /// The verbs discovery lists for the resource itself.
    fn verbs(&self) -> Value {
        if self.plural == "namespaces" {
            json!([
                "create", "delete", "get", "list", "patch", "update", "watch"
            ])
        } else {
            json!([
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch"
            ])
        }
    }
}

/// `/api`.
pub fn core_versions(server: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}],
    })
}

fn group_doc(name: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({
        "name": name,
        "versions": vs,
        "preferredVersion": vs.first().cloned().unwrap_or(Value::Null),
    })
}

/// The named groups and their versions, in table order, from the installed resources.
fn groups<'a>(installed: impl Iterator<Item = &'a Served>) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for s in installed.filter(|s| !s.group.is_empty()) {
        let i = match out.iter().position(|(g, _)| g == s.group) {
            Some(i) => i,
            None => {
                out.push((s.group.to_owned(), Vec::new()));
                out.len() - 1
            }
        };
        for v in s.versions {
            if !out[i].1.iter().any(|x| x == v) {
                out[i].1.push((*v).to_owned());
            }
        }
    }
    out
}

/// `/apis`.
pub fn group_list<'a>(installed: impl Iterator<Item = &'a Served>) -> Value {
    let gs: Vec<Value> = groups(installed)
        .iter()
        .map(|(g, vs)| group_doc(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": gs})
}

/// `/apis/<group>`, if any installed resource is in it.
pub fn group<'a>(installed: impl Iterator<Item = &'a Served>, name: &str) -> Option<Value> {
    let (g, vs) = groups(installed).into_iter().find(|(g, _)| g == name)?;
    let mut doc = group_doc(&g, &vs);
    doc["kind"] = "APIGroup".into();
    doc["apiVersion"] = "v1".into();
    Some(doc)
}

/// `/api/v1` or `/apis/<group>/<version>`, if any installed resource is served there.
pub fn resource_list<'a>(
    installed: impl Iterator<Item = &'a Served>,
    group: &str,
    version: &str,
) -> Option<Value> {
    let mut resources = Vec::new();
    for s in installed.filter(|s| s.group == group && s.versions.contains(&version)) {
        resources.push(json!({
            "name": s.plural,
            "singularName": s.singular,
            "namespaced": s.namespaced,
            "kind": s.kind,
            "verbs": s.verbs(),
            "shortNames": s.short_names,
            "categories": s.categories,
        }));
        for sub in s.subresources {
            resources.push(json!({
                "name": format!("{}/{sub}", s.plural),
                "singularName": "",
                "namespaced": s.namespaced,
                "kind": s.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    (!resources.is_empty()).then(|| {
        json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") },
            "resources": resources,
        })
    })
}

/// The group versions the installed resources are served at: `("", "v1")`, `("apps", "v1")`, ...
fn group_versions<'a>(installed: impl Iterator<Item = &'a Served>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for s in installed {
        for v in s.versions {
            let gv = (s.group.to_owned(), (*v).to_owned());
            if !out.contains(&gv) {
                out.push(gv);
            }
        }
    }
    out
}

fn openapi_key(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: where each group version's OpenAPI document is.
pub fn openapi_index<'a>(installed: impl Iterator<Item = &'a Served>) -> Value {
    let paths: serde_json::Map<String, Value> = group_versions(installed)
        .into_iter()
        .map(|(g, v)| {
            let key = openapi_key(&g, &v);
            let url = json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash=fake")});
            (key, url)
        })
        .collect();
    json!({"paths": paths})
}

/// `/openapi/v3/api/v1` or `/openapi/v3/apis/<group>/<version>`, cut down to what clients ask
/// of it: each object's PATCH operation, tagged with its group/version/kind, and its
/// `fieldValidation` parameter (so kubectl leaves validation to the server, which a 1.32 API
/// server does; no schemas are served).
pub fn openapi_group_version<'a>(
    installed: impl Iterator<Item = &'a Served>,
    group: &str,
    version: &str,
) -> Option<Value> {
    let mut paths = serde_json::Map::new();
    for s in installed.filter(|s| s.group == group && s.versions.contains(&version)) {
        let base = format!("/{}", openapi_key(group, version));
        let path = if s.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", s.plural)
        } else {
            format!("{base}/{}/{{name}}", s.plural)
        };
        paths.insert(
            path,
            json!({"patch": {
                "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": s.kind},
                "parameters": [
                    {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
                    {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                    {"name": "force", "in": "query", "schema": {"type": "boolean"}},
                ],
                "responses": {"200": {"description": "OK"}},
            }}),
        );
    }
    (!paths.is_empty()).then(|| {
        json!({
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": "v1.32.4"},
            "paths": paths,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_resource_is_defined_once_and_the_plurals_are_the_published_ones() {
        for (i, a) in SERVED.iter().enumerate() {
            for b in &SERVED[i + 1..] {
                assert!(
                    !(a.group == b.group && (a.plural == b.plural || a.kind == b.kind)),
                    "{a:?} twice"
                );
            }
        }
        let plural = |g, k| by_kind(g, k).unwrap().plural;
        assert_eq!(
            plural("security.istio.io", "AuthorizationPolicy"),
            "authorizationpolicies"
        );
        assert_eq!(
            plural("networking.istio.io", "ServiceEntry"),
            "serviceentries"
        );
        assert_eq!(
            plural("networking.istio.io", "WorkloadEntry"),
            "workloadentries"
        );
        assert_eq!(
            plural("gateway.networking.k8s.io", "GatewayClass"),
            "gatewayclasses"
        );
        // Istio's Gateway and Gateway API's share a kind and a plural, not a group.
        assert_ne!(
            by_kind("networking.istio.io", "Gateway"),
            by_kind("gateway.networking.k8s.io", "Gateway")
        );
        assert!(by_plural("security.istio.io", "authorizationpolicys").is_none());
    }

    #[test]
    fn discovery_lists_only_what_is_installed() {
        let without_se = || SERVED.iter().filter(|s| s.plural != "serviceentries");
        let list = resource_list(without_se(), "networking.istio.io", "v1").unwrap();
        let names: Vec<&str> = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"workloadentries") && names.contains(&"workloadentries/status"));
        assert!(!names.iter().any(|n| n.starts_with("serviceentries")));
        let only_se = || SERVED.iter().filter(|s| s.plural == "serviceentries");
        assert!(resource_list(only_se(), "security.istio.io", "v1").is_none());
        let g = group(SERVED.iter(), "security.istio.io").unwrap();
        assert_eq!(g["preferredVersion"]["version"], "v1");
        assert_eq!(group_list(SERVED.iter())["groups"][0]["name"], "apps");
    }
}
