//! `demo-mesh`: the waypoint on the embedded file config with a local demo mesh around it.
//!
//! Starts the waypoint, two httpbin pods and a tcp-echo pod behind ztunnel-like inbound shims,
//! and outbound shims that let plain `curl`/`oha` on this machine play client workloads:
//!
//! * `127.0.0.1:15101`: workload `sleep` -> httpbin (allowed for GET, writes denied)
//! * `127.0.0.1:15102`: workload `curl`  -> httpbin (denied: not an allowed principal)
//! * `127.0.0.1:15103`: workload `sleep` -> tcp-echo (denied at L4 by the default-deny policy)
//!
//! It checks those three outcomes itself, prints them, and serves until Ctrl-C (or SIGTERM).
//! `benches/load.sh` runs it with the waypoint as a separate process and nginx as the app.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use waypoint_tests::mesh::{HTTPBIN_VIP, Mesh, MeshOptions, TCP_ECHO_VIP};
use waypoint_tests::net::Block;
use waypoint_tests::ztunnel;

#[derive(Parser, Debug)]
#[command(about = "The waypoint inside a local demo mesh")]
struct Args {
    /// Run this `waypoint` binary as a child process instead of in-process.
    #[arg(long)]
    waypoint_bin: Option<PathBuf>,
    /// Use loopback block 127.A.B.0/24 (`A.B`); pods are .11/.12 (httpbin), .21, .31.
    #[arg(long)]
    block: Option<String>,
    /// Do not start the httpbin apps (something else listens on the pod IPs, port 8080).
    #[arg(long)]
    no_apps: bool,
    /// Write config and certificates here and keep them.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Policies to use instead of examples/policies (a YAML file).
    #[arg(long)]
    policies: Option<PathBuf>,
}

const SLEEP_PORT: u16 = 15101;
const CURL_PORT: u16 = 15102;
const SLEEP_TCP_PORT: u16 = 15103;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,pingora=warn".into()),
        )
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo-mesh: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn get(addr: SocketAddr, method: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("{method} /get HTTP/1.1\r\nhost: httpbin\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        s.read_to_string(&mut out),
    )
    .await??;
    Ok(out
        .lines()
        .next()
        .unwrap_or("(connection closed without a response)")
        .to_owned())
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut opts = MeshOptions {
        waypoint_bin: args.waypoint_bin,
        apps: !args.no_apps,
        dir: args.dir,
        ..MeshOptions::default()
    };
    if let Some(p) = &args.policies {
        opts.policies = std::fs::read_to_string(p)?;
    }
    if let Some(b) = &args.block {
        let (a, b) = b
            .split_once('.')
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            .ok_or_else(|| anyhow::anyhow!("--block wants A.B, got {b:?}"))?;
        opts.block = Some(Block::fixed(a, b));
    }
    let mesh = Mesh::start(opts).await?;
    let wp = mesh.waypoint_addr();
    let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let shim = |port, who, target: &str| {
        ztunnel::outbound(
            local(port),
            wp,
            mesh.client_config(who),
            target.parse().expect("VIP constant"),
            SocketAddr::from(([10, 244, 0, 7], 40000)),
            Some("httpbin.ambient-demo.svc.cluster.local".into()),
        )
    };
    let _sleep = shim(SLEEP_PORT, &mesh.sleep, HTTPBIN_VIP).await?;
    let _curl = shim(CURL_PORT, &mesh.curl, HTTPBIN_VIP).await?;
    let _tcp = shim(SLEEP_TCP_PORT, &mesh.sleep, TCP_ECHO_VIP).await?;
    match &mesh.waypoint {
        Some(running) => eprintln!(
            "\nwaypoint: HBONE {wp}, metrics http://{}/metrics, config dump http://{}/config_dump",
            running.metrics_addr, running.admin_addr
        ),
        None => eprintln!(
            "\nwaypoint: process {}, HBONE {wp}, metrics http://{}:15020/metrics, config dump http://{}:15000/config_dump",
            mesh.child.as_ref().map_or(0, std::process::Child::id),
            wp.ip(),
            wp.ip()
        ),
    }
    eprintln!(
        "config:   {} (edit policies.yaml there; changes apply live)\n",
        mesh.config_dir().display()
    );
    eprintln!("self-check:");
    eprintln!(
        "  sleep GET  -> httpbin : {}",
        get(local(SLEEP_PORT), "GET").await?
    );
    eprintln!(
        "  sleep POST -> httpbin : {}",
        get(local(SLEEP_PORT), "POST").await?
    );
    eprintln!(
        "  curl  GET  -> httpbin : {}",
        get(local(CURL_PORT), "GET").await?
    );
    let mut s = tokio::net::TcpStream::connect(local(SLEEP_TCP_PORT)).await?;
    let _ = s.write_all(b"hello\n").await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    eprintln!(
        "  sleep TCP  -> tcp-echo: {} bytes echoed (the default-deny policy closes it)",
        buf.len()
    );
    eprintln!("\ntry it:");
    eprintln!("  curl -s http://127.0.0.1:{SLEEP_PORT}/get              # 200 from httpbin");
    eprintln!("  curl -s -X POST http://127.0.0.1:{SLEEP_PORT}/post     # 403 RBAC: access denied");
    eprintln!("  curl -s http://127.0.0.1:{CURL_PORT}/get              # 403: curl is not allowed");
    eprintln!("  oha -z 10s http://127.0.0.1:{SLEEP_PORT}/get");
    eprintln!("\nCtrl-C to stop.");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    let mut mesh = mesh;
    mesh.shutdown().await;
    Ok(())
}
