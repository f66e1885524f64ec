//! The status this waypoint writes as the controller of its own Gateway and GatewayClass
//! ([`RUST_WAYPOINT_CLASS`]), computed as istiod computes it for the Gateways it controls
//! (`pilot/pkg/config/kube/gateway/conversion.go` `reportGatewayStatus`,
//! `gatewaycommon/conversion.go` `SetProgrammedCondition`, `gatewaycommon/gatewayclass.go`).
//!
//! istiod treats a Gateway as a waypoint, and points ztunnel at it, as soon as its
//! `status.addresses` is non-empty. So addresses are published only once the Gateway's Service
//! exists and one of its pods is Ready, and once published they are never removed: an empty list
//! would send the mesh's traffic nowhere. [`addresses_to_publish`] is that rule for the writer.
//!
//! Everything here is pure: the writer passes what it read and stamps `lastTransitionTime`.

use gateway_api::apis::standard::gatewayclasses::GatewayClass;
use gateway_api::apis::standard::gateways::{Gateway, GatewayStatusAddresses};
use k8s_openapi::api::core::v1::Service;

use crate::key::ObjectKey;
use crate::store::Store;
use crate::waypoint::has_ready_pod;
use crate::well_known::{RUST_WAYPOINT_CLASS, RUST_WAYPOINT_CONTROLLER};

/// Gateway API condition types and reasons used here, spelled as the API spells them.
pub const ACCEPTED: &str = "Accepted";
pub const PROGRAMMED: &str = "Programmed";
/// The Service exists but no pod of the waypoint is Ready yet.
pub const ADDRESS_NOT_ASSIGNED: &str = "AddressNotAssigned";
/// The Service the address would come from does not exist.
pub const ADDRESS_NOT_USABLE: &str = "AddressNotUsable";
/// `status.addresses[].type` values.
pub const HOSTNAME_ADDRESS: &str = "Hostname";
pub const IP_ADDRESS: &str = "IPAddress";

/// One Gateway API condition as this waypoint wants it (no `lastTransitionTime`: the writer
/// keeps the one on the object while the status is unchanged, and stamps a new one otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayCondition {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
    pub observed_generation: Option<i64>,
}

/// What our Gateway's status should say now.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredGatewayStatus {
    /// `Accepted`, then `Programmed`.
    pub conditions: Vec<GatewayCondition>,
    /// Empty until the Service exists and a pod is Ready. Pass through [`addresses_to_publish`]
    /// before writing.
    pub addresses: Vec<GatewayStatusAddresses>,
}

/// `<name>.<namespace>.svc.<cluster domain>`: the Service named like the Gateway, in its
/// namespace, as istiod names the Service of a Gateway it deploys (and our chart does).
pub fn service_hostname(gateway: &ObjectKey, cluster_domain: &str) -> String {
    format!(
        "{}.{}.svc.{cluster_domain}",
        gateway.name, gateway.namespace
    )
}

/// The status of `gateway` given its Service (named like the Gateway, in its namespace),
/// whether one of its pods is Ready, and the cluster domain (`cluster.local`).
pub fn gateway_status(
    gateway: &Gateway,
    service: Option<&Service>,
    pod_ready: bool,
    cluster_domain: &str,
) -> DesiredGatewayStatus {
    let key = ObjectKey::new(
        gateway.metadata.namespace.as_deref().unwrap_or("default"),
        gateway.metadata.name.as_deref().unwrap_or_default(),
    );
    let generation = gateway.metadata.generation;
    let host = service_hostname(&key, cluster_domain);
    let accepted = GatewayCondition {
        type_: ACCEPTED,
        status: true,
        reason: ACCEPTED,
        message: "Resource accepted".into(),
        observed_generation: generation,
    };
    // istiod's wording: "Failed to assign to any requested addresses: <warning>", with the
    // warning of ResolveGatewayInstances for a missing Service and for one without instances.
    let (programmed, addresses) = match service {
        None => (
            GatewayCondition {
                type_: PROGRAMMED,
                status: false,
                reason: ADDRESS_NOT_USABLE,
                message: format!(
                    "Failed to assign to any requested addresses: hostname {host:?} not found"
                ),
                observed_generation: generation,
            },
            Vec::new(),
        ),
        Some(_) if !pod_ready => (
            GatewayCondition {
                type_: PROGRAMMED,
                status: false,
                reason: ADDRESS_NOT_ASSIGNED,
                message: format!(
                    "Failed to assign to any requested addresses: no instances found for hostname {host:?}"
                ),
                observed_generation: generation,
            },
            Vec::new(),
        ),
        Some(svc) => {
            let mut ports: Vec<i32> = gateway.spec.listeners.iter().map(|l| l.port).collect();
            ports.sort_unstable();
            ports.dedup();
            let assigned: Vec<String> = ports.iter().map(|p| format!("{host}:{p}")).collect();
            let message = if assigned.is_empty() {
                "Resource programmed".to_owned()
            } else {
                format!(
                    "Resource programmed, assigned to service(s) {}",
                    human_join(&assigned)
                )
            };
            let mut addresses = vec![address(HOSTNAME_ADDRESS, host.clone())];
            addresses.extend(
                cluster_ips(svc)
                    .into_iter()
                    .map(|ip| address(IP_ADDRESS, ip.to_owned())),
            );
            (
                GatewayCondition {
                    type_: PROGRAMMED,
                    status: true,
                    reason: PROGRAMMED,
                    message,
                    observed_generation: generation,
                },
                addresses,
            )
        }
    };
    DesiredGatewayStatus {
        conditions: vec![accepted, programmed],
        addresses,
    }
}

/// [`gateway_status`] from what `store` holds, or `None` when it does not hold the Gateway.
pub fn gateway_status_in(
    store: &Store,
    gateway: &ObjectKey,
    cluster_domain: &str,
) -> Option<DesiredGatewayStatus> {
    let gw = store.gateways.get(gateway)?;
    let service = store.services.get(gateway).map(|s| &s.object);
    Some(gateway_status(
        &gw.object,
        service,
        has_ready_pod(store, gateway),
        cluster_domain,
    ))
}

/// The addresses to write, given those the Gateway shows now: addresses once published are
/// never removed (a Service deleted for a moment, pods restarting, the waypoint shutting down),
/// since an empty list makes ztunnel send the waypoint's traffic nowhere. A new non-empty list
/// replaces the old one, as istiod does (a recreated Service has a new ClusterIP).
pub fn addresses_to_publish(
    published: &[GatewayStatusAddresses],
    desired: &[GatewayStatusAddresses],
) -> Vec<GatewayStatusAddresses> {
    if desired.is_empty() {
        published.to_vec()
    } else {
        desired.to_vec()
    }
}

/// `Accepted` for a GatewayClass whose controller is ours, `None` for any other class (another
/// controller owns its status).
pub fn gateway_class_status(class: &GatewayClass) -> Option<GatewayCondition> {
    (class.spec.controller_name == RUST_WAYPOINT_CONTROLLER).then(|| GatewayCondition {
        type_: ACCEPTED,
        status: true,
        reason: ACCEPTED,
        message: format!("Handled by {RUST_WAYPOINT_CLASS} controller"),
        observed_generation: class.metadata.generation,
    })
}

fn address(type_: &str, value: String) -> GatewayStatusAddresses {
    GatewayStatusAddresses {
        r#type: Some(type_.to_owned()),
        value,
    }
}

/// `spec.clusterIPs` (`spec.clusterIP` is its first entry), without `None` (a headless Service)
/// and repeats.
fn cluster_ips(svc: &Service) -> Vec<&str> {
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    let mut out: Vec<&str> = Vec::new();
    let listed = spec.cluster_ips.iter().flatten().map(String::as_str);
    for ip in listed.chain(spec.cluster_ip.as_deref()) {
        if !ip.is_empty() && ip != "None" && !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// `a`, `a and b`, `a, b, and c`: istiod's `HumanReadableJoin`.
fn human_join(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [a, b] => format!("{a} and {b}"),
        [init @ .., last] => format!("{}, and {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GATEWAY: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop, generation: 4}
spec:
  gatewayClassName: rust-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
";
    const SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata: {name: waypoint, namespace: shop}
spec:
  clusterIP: 10.96.0.7
  clusterIPs: [10.96.0.7, 'fd00::7']
  ports: [{name: mesh, port: 15008, appProtocol: hbone}]
";
    const POD: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-5d8f7c
  namespace: shop
  labels: {gateway.networking.k8s.io/gateway-name: waypoint}
spec: {containers: [{name: istio-proxy}]}
status: {podIP: 10.1.0.3, conditions: [{type: Ready, status: 'READY'}]}
";

    fn store(docs: &[&str]) -> Store {
        let mut s = Store::default();
        let errs = s.load_str(&docs.join("---\n"), None);
        assert!(errs.is_empty(), "{errs:?}");
        s
    }

    fn status(docs: &[&str]) -> DesiredGatewayStatus {
        gateway_status_in(
            &store(docs),
            &ObjectKey::new("shop", "waypoint"),
            "cluster.local",
        )
        .expect("gateway")
    }

    fn programmed(s: &DesiredGatewayStatus) -> (&str, bool, &str, &str) {
        let c = &s.conditions[1];
        (c.type_, c.status, c.reason, c.message.as_str())
    }

    #[test]
    fn addresses_wait_for_the_service_and_a_ready_pod() {
        let ready = POD.replace("READY", "True");
        let unready = POD.replace("READY", "False");

        let none = status(&[GATEWAY]);
        assert_eq!(
            programmed(&none),
            (
                "Programmed",
                false,
                "AddressNotUsable",
                "Failed to assign to any requested addresses: hostname \"waypoint.shop.svc.cluster.local\" not found"
            )
        );
        assert!(none.addresses.is_empty());

        let waiting = status(&[GATEWAY, SERVICE, &unready]);
        assert_eq!(
            programmed(&waiting),
            (
                "Programmed",
                false,
                "AddressNotAssigned",
                "Failed to assign to any requested addresses: no instances found for hostname \"waypoint.shop.svc.cluster.local\""
            )
        );
        assert!(waiting.addresses.is_empty());
        assert!(
            status(&[GATEWAY, &ready]).addresses.is_empty(),
            "no Service"
        );
        let other_gateway = ready.replace("gateway-name: waypoint", "gateway-name: other");
        assert!(
            status(&[GATEWAY, SERVICE, &other_gateway])
                .addresses
                .is_empty(),
            "another Gateway's pod"
        );

        let done = status(&[GATEWAY, SERVICE, &ready]);
        assert_eq!(
            done.conditions[0],
            GatewayCondition {
                type_: "Accepted",
                status: true,
                reason: "Accepted",
                message: "Resource accepted".into(),
                observed_generation: Some(4),
            }
        );
        assert_eq!(
            programmed(&done),
            (
                "Programmed",
                true,
                "Programmed",
                "Resource programmed, assigned to service(s) waypoint.shop.svc.cluster.local:15008"
            )
        );
        assert_eq!(done.conditions[1].observed_generation, Some(4));
        let addrs: Vec<(Option<&str>, &str)> = done
            .addresses
            .iter()
            .map(|a| (a.r#type.as_deref(), a.value.as_str()))
            .collect();
        assert_eq!(
            addrs,
            [
                (Some("Hostname"), "waypoint.shop.svc.cluster.local"),
                (Some("IPAddress"), "10.96.0.7"),
                (Some("IPAddress"), "fd00::7"),
            ]
        );
    }

    #[test]
    fn published_addresses_are_never_removed() {
        let published = vec![address(HOSTNAME_ADDRESS, "w.ns.svc.cluster.local".into())];
        assert_eq!(addresses_to_publish(&published, &[]), published);
        let newer = vec![
            address(HOSTNAME_ADDRESS, "w.ns.svc.cluster.local".into()),
            address(IP_ADDRESS, "10.96.0.9".into()),
        ];
        assert_eq!(addresses_to_publish(&published, &newer), newer);
        assert!(addresses_to_publish(&[], &[]).is_empty());
    }

    #[test]
    fn only_our_class_is_accepted() {
        let class = |controller: &str| -> GatewayClass {
            serde_yaml::from_str(&format!(
                "metadata: {{name: c, generation: 2}}\nspec: {{controllerName: {controller}}}\n"
            ))
            .unwrap()
        };
        assert_eq!(
            gateway_class_status(&class("rust-waypoint.io/controller")),
            Some(GatewayCondition {
                type_: "Accepted",
                status: true,
                reason: "Accepted",
                message: "Handled by rust-waypoint controller".into(),
                observed_generation: Some(2),
            })
        );
        assert_eq!(
            gateway_class_status(&class("istio.io/mesh-controller")),
            None
        );
    }

    #[test]
    fn human_join_follows_istiod() {
        let s = |v: &[&str]| human_join(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(s(&["a"]), "a");
        assert_eq!(s(&["a", "b"]), "a and b");
        assert_eq!(s(&["a", "b", "c"]), "a, b, and c");
    }
}
