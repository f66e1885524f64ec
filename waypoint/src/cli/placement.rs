//! Moving a policy from ztunnel to a waypoint, shared by `analyze` (its fixes) and `migrate`:
//! which Services a selector covers, the policy rewritten with `targetRefs`, and the objects that
//! make a waypoint serve a namespace.

use std::collections::BTreeMap;

use gateway_api_bindings::pod::PodInfo;
use gateway_api_bindings::waypoint::Target;
use gateway_api_bindings::well_known::{GATEWAY_GROUP, USE_WAYPOINT, WAYPOINT_FOR};
use gateway_api_bindings::{ObjectKey, Store};
use serde_json::{Value, json};

use super::topology::{ServicePods, is_waypoint, pods_in, selects, waypoint_of_service};

/// The Services a workload selector covers.
#[derive(Debug, Default)]
pub(crate) struct Coverage {
    /// Every pod of these Services is selected: `targetRefs` to them reach the same pods.
    pub(crate) services: Vec<ObjectKey>,
    /// Services some but not all of whose pods are selected, with why that is known.
    pub(crate) partial: Vec<(ObjectKey, String)>,
    /// Selected pods that no Service selects: no `targetRefs` reaches them.
    pub(crate) orphans: Vec<ObjectKey>,
}

/// What `selector` (in `namespace`, or in every namespace when `None`) covers. With pods in the
/// config the pods decide; without, a Service is covered when its own selector implies the
/// policy's (every pod it selects carries the policy's labels too).
pub(crate) fn coverage(
    store: &Store,
    service_pods: &ServicePods<'_>,
    namespace: Option<&str>,
    selector: &BTreeMap<String, String>,
) -> Coverage {
    let mut out = Coverage::default();
    for (key, svc_sel, pods) in service_pods.services(namespace) {
        if pods.is_empty() {
            let implied = selects(selector, svc_sel);
            let compatible = selector
                .iter()
                .all(|(k, v)| svc_sel.get(k).is_none_or(|sv| sv == v));
            if implied {
                out.services.push(key.clone());
            } else if compatible {
                out.partial.push((
                    key.clone(),
                    format!(
                        "its selector {} does not imply the policy's {}, and the config holds none of its pods to tell",
                        labels_text(svc_sel),
                        labels_text(selector)
                    ),
                ));
            }
            continue;
        }
        let chosen: Vec<&&PodInfo> = pods
            .iter()
            .filter(|p| selects(selector, &p.labels))
            .collect();
        if chosen.len() == pods.len() {
            out.services.push(key.clone());
        } else if !chosen.is_empty() {
            out.partial.push((
                key.clone(),
                format!(
                    "the selector covers {} of its {} pods",
                    chosen.len(),
                    pods.len()
                ),
            ));
        }
    }
    let pods: Box<dyn Iterator<Item = &PodInfo>> = match namespace {
        Some(n) => Box::new(pods_in(store, n)),
        None => Box::new(store.pods.values().map(|p| &p.object)),
    };
    for p in pods {
        if selects(selector, &p.labels) && !service_pods.is_served(&p.key) {
            out.orphans.push(p.key.clone());
        }
    }
    out
}

fn labels_text(l: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", pairs.join(","))
}

/// A `targetRefs` entry naming a Service.
pub(crate) fn service_ref(name: &str) -> Value {
    json!({"group": "", "kind": "Service", "name": name})
}

/// A `targetRefs` entry naming a waypoint Gateway.
pub(crate) fn gateway_ref(name: &str) -> Value {
    json!({"group": GATEWAY_GROUP, "kind": "Gateway", "name": name})
}

/// A `targetRefs` entry naming a GatewayClass (valid from the root namespace only).
pub(crate) fn gateway_class_ref(name: &str) -> Value {
    json!({"group": GATEWAY_GROUP, "kind": "GatewayClass", "name": name})
}

/// The object as a user would apply it: kind, apiVersion, the metadata that identifies and
/// describes it, and its spec; no status and nothing the API server manages. `jwtRules` lose the
/// empty lists and `false` the types write out (the defaults they stand for).
pub(crate) fn as_applied(object: &impl serde::Serialize) -> Value {
    let mut v = serde_json::to_value(object).unwrap_or(Value::Null);
    if let Some(Value::Array(rules)) = v.get_mut("spec").and_then(|s| s.get_mut("jwtRules")) {
        for r in rules.iter_mut().filter_map(Value::as_object_mut) {
            r.retain(|_, x| {
                !matches!(x, Value::Array(a) if a.is_empty()) && *x != Value::Bool(false)
            });
        }
    }
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
        if let Some(Value::Object(m)) = o.get_mut("metadata") {
            m.retain(|k, _| matches!(k.as_str(), "name" | "namespace" | "labels" | "annotations"));
            if let Some(Value::Object(a)) = m.get_mut("annotations") {
                a.remove("kubectl.kubernetes.io/last-applied-configuration");
                if a.is_empty() {
                    m.remove("annotations");
                }
            }
        }
    }
    v
}

/// `policy` (an AuthorizationPolicy or RequestAuthentication as applied) bound to a waypoint:
/// `selector` (and any old `targetRef`) replaced by `targetRefs`, renamed into `namespace`.
/// Bare `serviceAccounts` keep meaning the original namespace when the policy moves.
pub(crate) fn waypoint_form(
    policy: &Value,
    name: &str,
    namespace: &str,
    refs: Vec<Value>,
    origin: Option<&str>,
) -> Value {
    let mut v = policy.clone();
    let from_ns = v["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_owned();
    v["metadata"]["name"] = json!(name);
    v["metadata"]["namespace"] = json!(namespace);
    if let Some(origin) = origin {
        v["metadata"]["annotations"][MIGRATED_FROM] = json!(origin);
    }
    if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("selector");
        spec.remove("targetRef");
        spec.insert("targetRefs".into(), Value::Array(refs));
        if from_ns != namespace {
            qualify_service_accounts(spec, &from_ns);
        }
    }
    v
}

/// The annotation naming the object a migrated policy was made from.
pub(crate) const MIGRATED_FROM: &str = "rust-waypoint.io/migrated-from";

fn qualify_service_accounts(spec: &mut serde_json::Map<String, Value>, ns: &str) {
    let Some(Value::Array(rules)) = spec.get_mut("rules") else {
        return;
    };
    for rule in rules {
        let Some(Value::Array(from)) = rule.get_mut("from") else {
            continue;
        };
        for f in from {
            for field in ["serviceAccounts", "notServiceAccounts"] {
                if let Some(Value::Array(sas)) = f.get_mut("source").and_then(|s| s.get_mut(field))
                {
                    for sa in sas {
                        if let Some(s) = sa.as_str().filter(|s| !s.contains('/')) {
                            *sa = json!(format!("{ns}/{s}"));
                        }
                    }
                }
            }
        }
    }
}

/// A waypoint Gateway for Services (listener `mesh`, HBONE on 15008), as our chart makes it.
pub(crate) fn waypoint_gateway(namespace: &str, name: &str, class: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": namespace, "labels": {WAYPOINT_FOR: "service"}},
        "spec": {
            "gatewayClassName": class,
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    })
}

/// The Namespace (its labels as the config has them) with `istio.io/use-waypoint: <name>`.
pub(crate) fn namespace_using(store: &Store, namespace: &str, waypoint: &str) -> Value {
    let mut labels: BTreeMap<String, String> = store
        .namespaces
        .get(namespace)
        .and_then(|n| n.object.metadata.labels.clone())
        .unwrap_or_default();
    labels.insert(USE_WAYPOINT.into(), waypoint.into());
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": namespace, "labels": labels},
    })
}

/// The ztunnel policy that admits only the waypoint (and `trusted` principals) to the workloads
/// `selector` picks in `namespace` (every workload of it when `None`).
pub(crate) fn only_from_waypoint(
    namespace: &str,
    name: &str,
    selector: Option<&BTreeMap<String, String>>,
    principals: &[String],
) -> Value {
    let mut spec = json!({
        "action": "ALLOW",
        "rules": [{"from": [{"source": {"principals": principals}}]}],
    });
    if let Some(sel) = selector {
        spec["selector"] = json!({"matchLabels": sel});
    }
    json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    })
}

/// An ALLOW policy without rules (deny everything not allowed elsewhere) bound by `refs`.
pub(crate) fn waypoint_default_deny(namespace: &str, name: &str, refs: Vec<Value>) -> Value {
    json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"targetRefs": refs},
    })
}

/// The waypoint the covered Services of `namespace` should use, and the objects that make it
/// serve them when they do not: a waypoint Gateway named `name` (unless the namespace already
/// has a waypoint Gateway) and the namespace labelled to use it. Empty when every Service is
/// already served.
pub(crate) fn serve_with_waypoint(
    store: &Store,
    namespace: &str,
    services: &[ObjectKey],
    name: &str,
    class: &str,
) -> Vec<Value> {
    let unserved = services.iter().any(|k| {
        store
            .services
            .get(k)
            .is_none_or(|s| waypoint_of_service(store, Target::Service(&s.object)).is_none())
    });
    if !unserved {
        return Vec::new();
    }
    let existing = store
        .gateways
        .keys()
        .filter(|k| k.namespace == namespace)
        .find(|k| is_waypoint(store, k))
        .cloned();
    let mut out = Vec::new();
    let gw = match existing {
        Some(k) => k.name,
        None => {
            out.push(waypoint_gateway(namespace, name, class));
            name.to_owned()
        }
    };
    out.push(namespace_using(store, namespace, &gw));
    out
}

/// `objects` as one multi-document YAML text.
pub(crate) fn to_yaml(objects: &[Value]) -> String {
    objects
        .iter()
        .map(|o| serde_yaml::to_string(o).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("---\n")
}
