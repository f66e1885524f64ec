#![cfg_attr(test, allow(clippy::unwrap_used))]
//! The local mesh harness: ztunnel-like peers that speak HBONE as `docs/hbone.md`
//! describes, demo backends, and a whole demo mesh around a waypoint. Used by the end-to-end
//! tests and by the `demo-mesh` binary.
//!
//! * [`net`]: unique loopback addresses per mesh, so meshes in one process do not collide.
//! * [`pki`]: a mesh CA and workload certificates on disk.
//! * [`http1`]: a small HTTP/1.1 client for driving requests through tunnels.
//! * [`backend`]: an HTTP/1.1 app that echoes what it received, and a TCP echo.
//! * [`ztunnel`]: the inbound shim (HBONE terminator for a destination pod), the outbound shim
//!   (plain TCP for a source workload -> HBONE to the waypoint) and the HBONE client both use.
//! * [`mesh`]: a waypoint with pods, services, shims and policies, ready to take requests.
//! * [`kube_api`]: an in-process Kubernetes API server (list/watch/status/leases over HTTPS).
//! * [`mesh_ca`]: an in-process Istio CA (CreateCertificate over gRPC and TLS).
//! * [`spire_agent`]: an in-process SPIFFE Workload API server on a Unix socket.

pub mod backend;
pub mod http1;
pub mod jwt;
pub mod kube_api;
pub mod mesh;
pub mod mesh_ca;
pub mod net;
pub mod pki;
pub mod spire_agent;
pub mod ztunnel;

/// The `waypoint` binary `cargo test --workspace` built. Integration tests run from
/// `target/<profile>/deps`; the workspace's binaries sit one level up.
pub fn waypoint_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's own path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("waypoint"))
        .unwrap_or_default();
    assert!(
        bin.exists(),
        "{} missing: run `cargo test --workspace`, which builds it",
        bin.display()
    );
    bin
}
