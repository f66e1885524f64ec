//! Where a JWKS fetch may connect.
//!
//! A `jwksUri` (or an issuer, for OIDC discovery) is written by whoever may create a
//! RequestAuthentication, often a tenant, and the waypoint fetches it from inside the mesh. As
//! istiod does for the fetches it makes (`jwksBlockedIP` in pilot/pkg/model/jwks_resolver.go,
//! istio/istio#61230), every connection is checked against the address it is about to reach,
//! after DNS resolution and on every connect: a hostname that resolves to a blocked address, a
//! name re-pointed between two fetches (DNS rebinding) and a discovery document's `jwks_uri`
//! are all caught at the same place. Redirects are never followed (see `jwks.rs`).
//!
//! Always blocked, as istiod blocks them:
//! - link-local addresses, 169.254.0.0/16 and fe80::/10 (and link-local multicast,
//!   224.0.0.0/24 and ffX2::/16, as Go's `IsLinkLocalMulticast`): every cloud's instance
//!   metadata service at 169.254.169.254, ECS task metadata at 169.254.170.2, and nothing a
//!   JWKS could legitimately be served from;
//! - the metadata addresses outside link-local: Alibaba Cloud's 100.100.100.200 and AWS's IPv6
//!   IMDS range fd00:ec2::/32.
//!
//! Blocked here beyond istiod, each with no legitimate JWKS behind it:
//! - Azure's host endpoint (WireServer) 168.63.129.16;
//! - an IPv4-mapped IPv6 address (`::ffff:169.254.169.254`) or a NAT64 address of the
//!   well-known prefix 64:ff9b::/96 is judged by the IPv4 address it reaches;
//! - the unspecified address (0.0.0.0, `::`), which a Linux connect reaches as the local host,
//!   is judged as loopback too, so blocking 127.0.0.0/8 cannot be side-stepped with it.
//!
//! Loopback and private ranges stay reachable by default, as in istiod (in-cluster identity
//! providers such as Keycloak live in private space); operators block them with extra ranges
//! ([`FetchGuard::new`], istiod's `BLOCKED_CIDRS_IN_JWKS_URIS`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use tokio::net::TcpStream;

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Blocked {
    #[error("resolved IP {0} is link-local")]
    LinkLocal(IpAddr),
    #[error("resolved IP {0} is a known cloud metadata address")]
    Metadata(IpAddr),
    #[error("resolved IP {0} is in blocked CIDR range {1}")]
    Configured(IpAddr, IpNet),
}

/// Metadata services outside the link-local range (which is blocked whole).
const METADATA: [&str; 3] = [
    // Alibaba Cloud, in RFC 6598 shared address space.
    "100.100.100.200/32",
    // Azure's WireServer: the platform's host endpoint, reachable from every VM.
    "168.63.129.16/32",
    // AWS's IPv6 instance metadata (fd00:ec2::254) and the rest of its reserved range.
    "fd00:ec2::/32",
];

/// The addresses no JWKS fetch may connect to.
#[derive(Debug, Clone)]
pub struct FetchGuard {
    metadata: Vec<IpNet>,
    /// The operator's extra ranges.
    blocked: Vec<IpNet>,
}

impl Default for FetchGuard {
    fn default() -> Self {
        FetchGuard::new(Vec::new())
    }
}

impl FetchGuard {
    /// The built-in blocks plus `blocked`.
    pub fn new(blocked: Vec<IpNet>) -> FetchGuard {
        FetchGuard {
            metadata: METADATA.iter().filter_map(|c| c.parse().ok()).collect(),
            blocked: blocked.into_iter().map(|n| n.trunc()).collect(),
        }
    }

    /// Whether a connection to `ip` is allowed.
    pub fn check(&self, ip: IpAddr) -> Result<(), Blocked> {
        for reached in reaches(ip) {
            if is_link_local(reached) {
                return Err(Blocked::LinkLocal(ip));
            }
            if self.metadata.iter().any(|n| n.contains(&reached)) {
                return Err(Blocked::Metadata(ip));
            }
            if let Some(n) = self.blocked.iter().find(|n| n.contains(&reached)) {
                return Err(Blocked::Configured(ip, *n));
            }
        }
        Ok(())
    }

    /// Connects to `host:port`: an IP literal as is, a name through the system's resolver. Each
    /// resolved address is checked just before it is dialled and a blocked one is skipped (as
    /// Go's dialer does when its `Control` hook refuses an address); the error names every
    /// address that was refused and why.
    pub async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, String> {
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| format!("resolving {host}: {e}"))?
                .collect(),
        };
        let mut failures = Vec::new();
        for addr in addrs {
            if let Err(b) = self.check(addr.ip()) {
                failures.push(format!("connection blocked: {b}"));
                continue;
            }
            // The address just checked is the one dialled: nothing is resolved again.
            match TcpStream::connect(addr).await {
                Ok(tcp) => return Ok(tcp),
                Err(e) => failures.push(format!("connect {addr}: {e}")),
            }
        }
        if failures.is_empty() {
            return Err(format!("{host} resolved to no address"));
        }
        Err(failures.join("; "))
    }
}

/// The addresses a connection to `ip` reaches, each of which must be allowed.
fn reaches(ip: IpAddr) -> Vec<IpAddr> {
    let mut out = vec![ip];
    if let IpAddr::V6(v6) = ip {
        if let Some(v4) = v6.to_ipv4_mapped() {
            out.push(IpAddr::V4(v4));
        }
        let s = v6.segments();
        // RFC 6052's well-known NAT64 prefix: the last 32 bits are the IPv4 destination.
        if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
            let [a, b] = s[6].to_be_bytes();
            let [c, d] = s[7].to_be_bytes();
            out.push(IpAddr::V4(Ipv4Addr::new(a, b, c, d)));
        }
    }
    // Linux connects to the unspecified address as to the local host.
    if out.iter().any(IpAddr::is_unspecified) {
        out.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
        out.push(IpAddr::V6(Ipv6Addr::LOCALHOST));
    }
    out
}

/// Go's `IsLinkLocalUnicast() || IsLinkLocalMulticast()`, which istiod's `IsLinkLocal` is.
fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_link_local() || (o[0] == 224 && o[1] == 0 && o[2] == 0)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            (s[0] & 0xffc0) == 0xfe80 || (s[0] & 0xff0f) == 0xff02
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_what_istiod_blocks_and_the_ways_around_it() {
        let g = FetchGuard::default();
        for (addr, why) in [
            ("169.254.169.254", "link-local"),
            ("169.254.170.2", "link-local"),
            ("169.254.0.1", "link-local"),
            ("224.0.0.251", "link-local"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("ff02::1", "link-local"),
            ("ff12::1", "link-local"),
            ("100.100.100.200", "metadata"),
            ("168.63.129.16", "metadata"),
            ("fd00:ec2::254", "metadata"),
            ("fd00:ec2:1::1", "metadata"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::ffff:100.100.100.200", "metadata"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
        ] {
            let got = g.check(ip(addr));
            let ok = match why {
                "link-local" => matches!(got, Err(Blocked::LinkLocal(_))),
                _ => matches!(got, Err(Blocked::Metadata(_))),
            };
            assert!(ok, "{addr}: {got:?}");
        }
        for addr in [
            "127.0.0.1",
            "::1",
            "0.0.0.0",
            "::",
            "10.0.0.1",
            "192.168.1.1",
            "100.100.100.201",
            "169.253.255.255",
            "169.255.0.0",
            "224.0.1.1",
            "fec0::1",
            "fd00:ec3::1",
            "8.8.8.8",
            "2001:db8::1",
        ] {
            assert_eq!(g.check(ip(addr)), Ok(()), "{addr} stays reachable");
        }
    }

    #[test]
    fn configured_ranges_also_catch_mapped_and_unspecified_forms() {
        let g = FetchGuard::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
            "10.1.2.3/8".parse().unwrap(),
        ]);
        for addr in [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
            "::",
            "10.200.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(
                matches!(g.check(ip(addr)), Err(Blocked::Configured(..))),
                "{addr}"
            );
        }
        assert_eq!(
            g.check(ip("10.200.0.1")).unwrap_err().to_string(),
            "resolved IP 10.200.0.1 is in blocked CIDR range 10.0.0.0/8"
        );
        assert_eq!(g.check(ip("11.0.0.1")), Ok(()));
    }

    #[tokio::test]
    async fn connect_checks_the_resolved_address_and_never_dials_a_blocked_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let g = FetchGuard::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ]);
        // A name that resolves to a blocked address is refused after resolution.
        let e = g.connect("localhost", port).await.unwrap_err();
        assert!(e.contains("connection blocked: resolved IP"), "{e}");
        let e = g.connect("127.0.0.1", port).await.unwrap_err();
        assert!(e.contains("127.0.0.0/8"), "{e}");
        // Nothing reached the listener.
        let accepted =
            tokio::time::timeout(std::time::Duration::from_millis(50), listener.accept()).await;
        assert!(accepted.is_err(), "a blocked address was dialled");
        // Numeric spellings the system resolver turns into the metadata address (inet_aton's
        // hex and 32-bit forms) are judged by the address they resolve to.
        for spelled in [
            "0xa9fea9fe",
            "2852039166",
            "169.254.43518",
            "0251.0376.0251.0376",
        ] {
            let e = FetchGuard::default()
                .connect(spelled, 80)
                .await
                .unwrap_err();
            assert!(
                e.contains("169.254.169.254 is link-local") || e.starts_with("resolving"),
                "{spelled}: {e}"
            );
        }
        // The same listener without the extra ranges: reachable.
        assert!(
            FetchGuard::default()
                .connect("localhost", port)
                .await
                .is_ok()
        );
    }
}
