//! Resolving a CONNECT authority against the current snapshot.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use gateway_api_bindings::destinations::{Endpoint, Protocol, ServiceDestination, Workload};

use crate::state::Snapshot;

/// Where a tunnel is going.
#[derive(Debug, Clone)]
pub(crate) enum Destination {
    /// `VIP:port` of a Service this waypoint serves.
    Service(Arc<ServiceDestination>),
    /// `podIP:port` of a workload this waypoint serves.
    Workload(Arc<Workload>, u16),
}

impl Destination {
    pub(crate) fn resolve(snapshot: &Snapshot, target: SocketAddr) -> Option<Destination> {
        if let Some(s) = snapshot.destinations.services.get(&target) {
            return Some(Destination::Service(s.clone()));
        }
        snapshot
            .destinations
            .workloads
            .get(&target.ip())
            .map(|w| Destination::Workload(w.clone(), target.port()))
    }

    /// The engine's key for `targetRefs` to a Service.
    pub(crate) fn policy_target(&self) -> Option<&str> {
        match self {
            Destination::Service(s) => Some(&s.target),
            Destination::Workload(..) => None,
        }
    }

    pub(crate) fn protocol(&self) -> Protocol {
        match self {
            Destination::Service(s) => s.protocol,
            Destination::Workload(..) => Protocol::Unknown,
        }
    }

    /// Round-robin over ready endpoints, skipping those already tried for this request.
    pub(crate) fn pick(&self, tried: &[SocketAddr]) -> Option<Endpoint> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        match self {
            Destination::Service(s) => {
                let n = s.endpoints.len();
                if n == 0 {
                    return None;
                }
                let start = NEXT.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|i| &s.endpoints[(start + i) % n])
                    .find(|e| !tried.contains(&e.address))
                    .cloned()
            }
            Destination::Workload(w, port) => {
                let address = SocketAddr::new(w.ip, *port);
                (!tried.contains(&address)).then(|| Endpoint {
                    address,
                    identity: w.identity.clone(),
                    pod: Some(w.pod.clone()),
                })
            }
        }
    }

    /// Whether any endpoint satisfies `f` (each is offered once, in order, until one does).
    pub(crate) fn any_endpoint(&self, mut f: impl FnMut(&Endpoint) -> bool) -> bool {
        match self {
            Destination::Service(s) => s.endpoints.iter().any(f),
            Destination::Workload(w, port) => f(&Endpoint {
                address: SocketAddr::new(w.ip, *port),
                identity: w.identity.clone(),
                pod: Some(w.pod.clone()),
            }),
        }
    }

    pub(crate) fn endpoint_count(&self) -> usize {
        match self {
            Destination::Service(s) => s.endpoints.len(),
            Destination::Workload(..) => 1,
        }
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Service(s) => write!(f, "Service {}:{}", s.service, s.port),
            Destination::Workload(w, port) => write!(f, "Pod {}:{port}", w.pod),
        }
    }
}
