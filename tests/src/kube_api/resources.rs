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

/// What most entries of a kind of definition share; each entry names the rest.
const BUILTIN: Served = Served {
    group: "",
    versions: &["v1"],
    kind: "",
    plural: "",
    singular: "",
    namespaced: true,
    short_names: NONE,
    categories: NONE,
    subresources: NONE,
    crd: false,
};
const GATEWAY_API: Served = Served {
    group: "gateway.networking.k8s.io",
    versions: &["v1"],
    categories: &["gateway-api"],
    subresources: STATUS,
    crd: true,
    ..BUILTIN
};
const ISTIO_NETWORKING: Served = Served {
    group: "networking.istio.io",
    versions: &["v1", "v1alpha3", "v1beta1"],
    categories: &["istio-io", "networking-istio-io"],
    subresources: STATUS,
    crd: true,
    ..BUILTIN
};
const ISTIO_SECURITY: Served = Served {
    group: "security.istio.io",
    versions: &["v1", "v1beta1"],
    categories: &["istio-io", "security-istio-io"],
    ..ISTIO_NETWORKING
};

/// Everything the fake serves.
pub const SERVED: &[Served] = &[
    // Core (`/api/v1`).
    Served {
        kind: "ConfigMap",
        plural: "configmaps",
        singular: "configmap",
        short_names: &["cm"],
        ..BUILTIN
    },
    Served {
        kind: "Endpoints",
        plural: "endpoints",
        singular: "endpoints",
        short_names: &["ep"],
        ..BUILTIN
    },
    Served {
        kind: "Event",
        plural: "events",
        singular: "event",
        short_names: &["ev"],
        ..BUILTIN
    },
    Served {
        kind: "Namespace",
        plural: "namespaces",
        singular: "namespace",
        namespaced: false,
        short_names: &["ns"],
        subresources: &["finalize", "status"],
        ..BUILTIN
    },
    Served {
        kind: "Node",
        plural: "nodes",
        singular: "node",
        namespaced: false,
        short_names: &["no"],
        subresources: &["proxy", "status"],
        ..BUILTIN
    },
    Served {
        kind: "Pod",
        plural: "pods",
        singular: "pod",
        short_names: &["po"],
        categories: ALL_CATEGORY,
        subresources: &[
            "attach",
            "binding",
            "eviction",
            "exec",
            "log",
            "portforward",
            "proxy",
            "status",
        ],
        ..BUILTIN
    },
    Served {
        kind: "Secret",
        plural: "secrets",
        singular: "secret",
        ..BUILTIN
    },
    Served {
        kind: "ServiceAccount",
        plural: "serviceaccounts",
        singular: "serviceaccount",
        short_names: &["sa"],
        subresources: &["token"],
        ..BUILTIN
    },
    Served {
        kind: "Service",
        plural: "services",
        singular: "service",
        short_names: &["svc"],
        categories: ALL_CATEGORY,
        subresources: &["proxy", "status"],
        ..BUILTIN
    },
    // apps, autoscaling, policy.
    Served {
        group: "apps",
        kind: "Deployment",
        plural: "deployments",
        singular: "deployment",
        short_names: &["deploy"],
        categories: ALL_CATEGORY,
        subresources: &["scale", "status"],
        ..BUILTIN
    },
    Served {
        group: "apps",
        kind: "ReplicaSet",
        plural: "replicasets",
        singular: "replicaset",
        short_names: &["rs"],
        categories: ALL_CATEGORY,
        subresources: &["scale", "status"],
        ..BUILTIN
    },
    Served {
        group: "autoscaling",
        versions: &["v2", "v1"],
        kind: "HorizontalPodAutoscaler",
        plural: "horizontalpodautoscalers",
        singular: "horizontalpodautoscaler",
        short_names: &["hpa"],
        categories: ALL_CATEGORY,
        subresources: STATUS,
        ..BUILTIN
    },
    Served {
        group: "policy",
        kind: "PodDisruptionBudget",
        plural: "poddisruptionbudgets",
        singular: "poddisruptionbudget",
        short_names: &["pdb"],
        subresources: STATUS,
        ..BUILTIN
    },
    // discovery.k8s.io, coordination.k8s.io, rbac.authorization.k8s.io.
    Served {
        group: "discovery.k8s.io",
        kind: "EndpointSlice",
        plural: "endpointslices",
        singular: "endpointslice",
        ..BUILTIN
    },
    Served {
        group: "coordination.k8s.io",
        kind: "Lease",
        plural: "leases",
        singular: "lease",
        ..BUILTIN
    },
    Served {
        group: "rbac.authorization.k8s.io",
        kind: "ClusterRole",
        plural: "clusterroles",
        singular: "clusterrole",
        namespaced: false,
        ..BUILTIN
    },
    Served {
        group: "rbac.authorization.k8s.io",
        kind: "ClusterRoleBinding",
        plural: "clusterrolebindings",
        singular: "clusterrolebinding",
        namespaced: false,
        ..BUILTIN
    },
    Served {
        group: "rbac.authorization.k8s.io",
        kind: "Role",
        plural: "roles",
        singular: "role",
        ..BUILTIN
    },
    Served {
        group: "rbac.authorization.k8s.io",
        kind: "RoleBinding",
        plural: "rolebindings",
        singular: "rolebinding",
        ..BUILTIN
    },
    // Gateway API v1.5.1, standard channel.
    Served {
        versions: &["v1", "v1beta1"],
        kind: "GatewayClass",
        plural: "gatewayclasses",
        singular: "gatewayclass",
        namespaced: false,
        short_names: &["gc"],
        ..GATEWAY_API
    },
    Served {
        versions: &["v1", "v1beta1"],
        kind: "Gateway",
        plural: "gateways",
        singular: "gateway",
        short_names: &["gtw"],
        ..GATEWAY_API
    },
    Served {
        versions: &["v1", "v1beta1"],
        kind: "HTTPRoute",
        plural: "httproutes",
        singular: "httproute",
        ..GATEWAY_API
    },
    Served {
        kind: "GRPCRoute",
        plural: "grpcroutes",
        singular: "grpcroute",
        ..GATEWAY_API
    },
    Served {
        versions: &["v1", "v1beta1"],
        kind: "ReferenceGrant",
        plural: "referencegrants",
        singular: "referencegrant",
        short_names: &["refgrant"],
        subresources: NONE,
        ..GATEWAY_API
    },
    Served {
        kind: "BackendTLSPolicy",
        plural: "backendtlspolicies",
        singular: "backendtlspolicy",
        short_names: &["btlspolicy"],
        ..GATEWAY_API
    },
    Served {
        kind: "ListenerSet",
        plural: "listenersets",
        singular: "listenerset",
        short_names: &["lset"],
        ..GATEWAY_API
    },
    Served {
        kind: "TLSRoute",
        plural: "tlsroutes",
        singular: "tlsroute",
        ..GATEWAY_API
    },
    // Istio.
    Served {
        kind: "DestinationRule",
        plural: "destinationrules",
        singular: "destinationrule",
        short_names: &["dr"],
        ..ISTIO_NETWORKING
    },
    Served {
        versions: &["v1alpha3"],
        kind: "EnvoyFilter",
        plural: "envoyfilters",
        singular: "envoyfilter",
        ..ISTIO_NETWORKING
    },
    Served {
        kind: "Gateway",
        plural: "gateways",
        singular: "gateway",
        short_names: &["gw"],
        ..ISTIO_NETWORKING
    },
    Served {
        versions: &["v1beta1"],
        kind: "ProxyConfig",
        plural: "proxyconfigs",
        singular: "proxyconfig",
        ..ISTIO_NETWORKING
    },
    Served {
        kind: "ServiceEntry",
        plural: "serviceentries",
        singular: "serviceentry",
        short_names: &["se"],
        ..ISTIO_NETWORKING
    },
    Served {
        kind: "Sidecar",
        plural: "sidecars",
        singular: "sidecar",
        ..ISTIO_NETWORKING
    },
    Served {
        kind: "VirtualService",
        plural: "virtualservices",
        singular: "virtualservice",
        short_names: &["vs"],
        ..ISTIO_NETWORKING
    },
    Served {
        kind: "WorkloadEntry",
        plural: "workloadentries",
        singular: "workloadentry",
        short_names: &["we"],
        ..ISTIO_NETWORKING
    },
    Served {
        kind: "WorkloadGroup",
        plural: "workloadgroups",
        singular: "workloadgroup",
        short_names: &["wg"],
        ..ISTIO_NETWORKING
    },
    Served {
        kind: "AuthorizationPolicy",
        plural: "authorizationpolicies",
        singular: "authorizationpolicy",
        short_names: &["ap"],
        ..ISTIO_SECURITY
    },
    Served {
        kind: "PeerAuthentication",
        plural: "peerauthentications",
        singular: "peerauthentication",
        short_names: &["pa"],
        ..ISTIO_SECURITY
    },
    Served {
        kind: "RequestAuthentication",
        plural: "requestauthentications",
        singular: "requestauthentication",
        short_names: &["ra"],
        ..ISTIO_SECURITY
    },
    Served {
        group: "telemetry.istio.io",
        versions: &["v1", "v1alpha1"],
        kind: "Telemetry",
        plural: "telemetries",
        singular: "telemetry",
        short_names: &["telemetry"],
        categories: &["istio-io", "telemetry-istio-io"],
        ..ISTIO_NETWORKING
    },
    Served {
        group: "extensions.istio.io",
        versions: &["v1alpha1"],
        kind: "WasmPlugin",
        plural: "wasmplugins",
        singular: "wasmplugin",
        categories: &["istio-io", "extensions-istio-io"],
        ..ISTIO_NETWORKING
    },
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
