//! Where the waypoint itself listens, so that no destination can lead back into it.
//!
//! Istio never gives a waypoint a waypoint and never routes one to itself; a config that does
//! (a ServiceEntry listing the waypoint's IP, its own pod as a workload) would make each CONNECT
//! open another tunnel into the same process, without end. Every upstream path (HBONE, plain TCP,
//! HTTP through the relay) asks [`OwnAddresses`] before connecting.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Our listeners and pod IPs.
#[derive(Debug, Clone, Default)]
pub(crate) struct OwnAddresses {
    /// Every address we accept connections on (HBONE, readiness, metrics, admin).
    pub(crate) listeners: Vec<SocketAddr>,
    /// The pod's own IPs (`--pod-ip`, Istio's `INSTANCE_IP`), for listeners bound to `[::]`.
    pub(crate) pod_ips: Vec<IpAddr>,
}

/// Why an upstream address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("{0} is one of this waypoint's own listeners")]
    Ours(SocketAddr),
    #[error("{0} is a reserved port (ztunnel's or this waypoint's)")]
    Reserved(SocketAddr),
}

impl OwnAddresses {
    /// Whether `addr` reaches one of our listeners.
    pub(crate) fn is_ours(&self, addr: SocketAddr) -> bool {
        self.listeners.iter().any(|l| {
            l.port() == addr.port()
                && (l.ip() == addr.ip() || (l.ip().is_unspecified() && self.is_local(addr.ip())))
        })
    }

    /// Whether `ip` is an address of this host: a pod IP, loopback, or one we could bind.
    fn is_local(&self, ip: IpAddr) -> bool {
        self.pod_ips.contains(&ip)
            || ip.is_loopback()
            || ip.is_unspecified()
            // Binding succeeds only for addresses of a local interface. One syscall per new
            // upstream connection to a port we also listen on, never per request.
            || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
    }

    /// Ports no upstream connection may target: ztunnel's own (a tunnel to them is a self-call
    /// ztunnel refuses) and ours (readiness, metrics, admin, HBONE), on any address.
    pub(crate) fn is_reserved_port(&self, port: u16) -> bool {
        crate::hbone::RESERVED_PORTS.contains(&port)
            || self.listeners.iter().any(|l| l.port() == port)
    }

    /// Checks an upstream connection: `endpoint` (the app address the tunnel or TCP connection
    /// is for) and `dial` (the address actually connected to: the endpoint itself for plain TCP,
    /// its ztunnel's HBONE port otherwise).
    pub(crate) fn check(&self, endpoint: SocketAddr, dial: SocketAddr) -> Result<(), Refusal> {
        if self.is_ours(dial) || self.is_ours(endpoint) {
            return Err(Refusal::Ours(dial));
        }
        if self.is_reserved_port(endpoint.port()) {
            return Err(Refusal::Reserved(endpoint));
        }
        Ok(())
    }
}

/// Logs a refusal at most once every ten seconds (a looping config would otherwise log once per
/// request), saying how many were not logged.
pub(crate) fn log_refused(what: &str, refusal: &Refusal) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST.load(Ordering::Relaxed);
    if now >= last + 10
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let suppressed = SUPPRESSED.swap(0, Ordering::Relaxed);
        tracing::warn!(%refusal, suppressed, "{what}: destination leads back to the waypoint or a reserved port");
    } else {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_listeners_and_reserved_ports() {
        let own = OwnAddresses {
            listeners: vec![
                "10.1.0.5:15008".parse().unwrap(),
                "[::]:15021".parse().unwrap(),
            ],
            pod_ips: vec!["10.1.0.5".parse().unwrap()],
        };
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(own.is_ours(sa("10.1.0.5:15008")));
        assert!(
            own.is_ours(sa("10.1.0.5:15021")),
            "pod IP on a wildcard listener"
        );
        assert!(
            own.is_ours(sa("127.0.0.1:15021")),
            "loopback on a wildcard listener"
        );
        assert!(!own.is_ours(sa("10.1.0.6:15008")), "another pod's ztunnel");
        assert_eq!(
            own.check(sa("10.1.0.5:8080"), sa("10.1.0.5:15008")),
            Err(Refusal::Ours(sa("10.1.0.5:15008")))
        );
        assert_eq!(
            own.check(sa("10.1.0.9:15001"), sa("10.1.0.9:15001")),
            Err(Refusal::Reserved(sa("10.1.0.9:15001")))
        );
        assert_eq!(
            own.check(sa("10.1.0.9:15021"), sa("10.1.0.9:15008")),
            Err(Refusal::Reserved(sa("10.1.0.9:15021")))
        );
        assert_eq!(own.check(sa("10.1.0.9:8080"), sa("10.1.0.9:15008")), Ok(()));
    }
}
