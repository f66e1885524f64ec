//! `demo-mesh`: the waypoint on a file config (no API server) with a local demo mesh around it.
//!
//! Starts the waypoint, two httpbin pods and a tcp-echo pod behind ztunnel-like inbound shims,
//! and outbound shims that let plain `curl`/`oha` on this machine play client workloads:
//!
//! * `127.0.0.1:15101`: workload `sleep` -> httpbin (allowed for GET, writes denied)
//! * `127.0.0.1:15102`: workload `curl`  -> httpbin (denied: not an allowed principal)
//! * `127.0.0.1:15103`: workload `sleep` -> tcp-echo (denied at L4 by the default-deny policy)
//!
//! It checks those outcomes itself, prints them, and serves until Ctrl-C (or SIGTERM). With
//! `--check` it stops after the self-check instead, exiting 0 only when every answer is the
//! expected one (CI runs it so; the shims then take free ports, so it can run beside a demo).
//!
//! The screen stays readable: the logs of the waypoint and of the harness go to a file whose path
//! is printed (`--verbose` sends them to the terminal instead; `RUST_LOG` sets their level), and
//! no colour codes are written where the output is not a terminal.
//! `benches/load.sh` runs it with the waypoint as a separate process and nginx as the app.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use waypoint_tests::mesh::{HTTPBIN_VIP, Mesh, MeshOptions, TCP_ECHO_VIP};
use waypoint_tests::net::Block;
use waypoint_tests::ztunnel::{self, OutboundShim};

#[derive(Parser, Debug)]
#[command(about = "The waypoint inside a local demo mesh")]
struct Args {
    /// Run the self-check and exit: 0 when every answer is the expected one, 1 otherwise.
    #[arg(long)]
    check: bool,
    /// Write the logs to the terminal (stderr) instead of a log file.
    #[arg(long)]
    verbose: bool,
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
/// How long `--check` may take from start to verdict, the mesh's start-up included.
const CHECK_DEADLINE: Duration = Duration::from_secs(60);
/// How long one probe waits for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let check = args.check;
    let log_file = match init_logging(args.verbose) {
        Ok(path) => path,
        Err(e) => {
            eprintln!("demo-mesh: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = if check {
        match tokio::time::timeout(CHECK_DEADLINE, run(args, log_file.as_deref())).await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!(
                "the self-check did not finish within {} s",
                CHECK_DEADLINE.as_secs()
            )),
        }
    } else {
        run(args, log_file.as_deref()).await
    };
    match result {
        Ok(true) => {
            // A passing check leaves nothing behind; a failing one, or a demo, keeps its log.
            if let (true, Some(path)) = (check, &log_file) {
                let _ = std::fs::remove_file(path);
            }
            ExitCode::SUCCESS
        }
        Ok(false) => {
            if let Some(path) = &log_file {
                eprintln!("logs:     {}", path.display());
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("demo-mesh: {e:#}");
            if let Some(path) = &log_file {
                eprintln!("logs:     {}", path.display());
            }
            ExitCode::FAILURE
        }
    }
}

/// Logs at `RUST_LOG` (default `info`, Pingora at `warn`): to the terminal with `--verbose`, else
/// to a new file in the temp dir, whose path is returned. Colour only on a terminal.
fn init_logging(verbose: bool) -> anyhow::Result<Option<PathBuf>> {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "info,pingora=warn".into())
    };
    if verbose {
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_filter(filter()),
            )
            .init();
        return Ok(None);
    }
    let path = std::env::temp_dir().join(format!("waypoint-demo-mesh-{}.log", std::process::id()));
    let file = std::fs::File::create(&path)
        .with_context(|| format!("creating the log file {}", path.display()))?;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(Arc::new(file))
                .with_ansi(false)
                .with_filter(filter()),
        )
        .init();
    Ok(Some(path))
}

/// One line of the self-check: what was asked, what came back, and whether that is the answer
/// the example policies call for.
struct Probe {
    label: &'static str,
    answer: String,
    expected: &'static str,
    ok: bool,
}

impl Probe {
    fn print(&self) {
        if self.ok {
            eprintln!("  {}: {}", self.label, self.answer);
        } else {
            eprintln!(
                "  {}: {}   <- MISMATCH, expected {}",
                self.label, self.answer, self.expected
            );
        }
    }
}

/// One HTTP/1.1 request through an outbound shim; the status line and the body.
async fn http(addr: SocketAddr, method: &str) -> anyhow::Result<(String, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("{method} /get HTTP/1.1\r\nhost: httpbin\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    tokio::time::timeout(PROBE_TIMEOUT, s.read_to_string(&mut out))
        .await
        .with_context(|| format!("no answer within {} s", PROBE_TIMEOUT.as_secs()))??;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .lines()
        .next()
        .filter(|l| !l.is_empty())
        .unwrap_or("(connection closed without a response)");
    Ok((status.to_owned(), body.to_owned()))
}

async fn http_probe(
    label: &'static str,
    addr: SocketAddr,
    method: &str,
    allowed: bool,
) -> anyhow::Result<Probe> {
    let (status, body) = http(addr, method).await?;
    // An allowed request must have reached an httpbin pod (its body names it); a denied one
    // must carry the waypoint's RBAC body, not some other 403.
    let (expected, ok) = if allowed {
        (
            "HTTP/1.1 200 OK from an httpbin pod",
            status == "HTTP/1.1 200 OK" && body.starts_with("httpbin-"),
        )
    } else {
        (
            "HTTP/1.1 403 Forbidden with body \"RBAC: access denied\"",
            status == "HTTP/1.1 403 Forbidden" && body == "RBAC: access denied",
        )
    };
    Ok(Probe {
        label,
        answer: status,
        expected,
        ok,
    })
}

/// `waypoint_tcp_connections_denied_total` from the waypoint's `/metrics`.
async fn tcp_denied(metrics: SocketAddr) -> anyhow::Result<u64> {
    let mut s = tokio::net::TcpStream::connect(metrics)
        .await
        .with_context(|| format!("connecting to the waypoint's metrics at {metrics}"))?;
    let r = tokio::time::timeout(
        PROBE_TIMEOUT,
        waypoint_tests::http1::request(&mut s, "GET", "/metrics", &[], ""),
    )
    .await
    .context("no metrics within the probe timeout")??
    .context("the metrics listener closed without answering")?;
    r.body
        .lines()
        .find_map(|l| l.strip_prefix("waypoint_tcp_connections_denied_total "))
        .and_then(|v| v.trim().parse().ok())
        .context("no waypoint_tcp_connections_denied_total in /metrics")
}

/// Opaque TCP to tcp-echo: the default-deny policy must close it without a byte, and the
/// waypoint must count it as denied (a broken echo app would also echo nothing).
async fn tcp_probe(addr: SocketAddr, metrics: SocketAddr) -> anyhow::Result<Probe> {
    let before = tcp_denied(metrics).await?;
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let _ = s.write_all(b"hello\n").await;
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(PROBE_TIMEOUT, s.read_to_end(&mut buf))
        .await
        .is_ok();
    // The waypoint counts the denial before it closes the tunnel.
    let denied = tcp_denied(metrics).await? > before;
    let mut answer = format!("{} bytes echoed", buf.len());
    if !closed {
        answer.push_str(&format!(
            " (still open after {} s)",
            PROBE_TIMEOUT.as_secs()
        ));
    } else if denied {
        answer.push_str(" (the default-deny policy closes it)");
    } else {
        answer.push_str(" (closed, but the waypoint counted no denial)");
    }
    Ok(Probe {
        label: "sleep TCP  -> tcp-echo",
        answer,
        expected: "0 bytes echoed and a denial counted in waypoint_tcp_connections_denied_total",
        ok: buf.is_empty() && closed && denied,
    })
}

/// Starts the mesh, runs the self-check and, unless `--check`, serves until a signal. Returns
/// whether every answer was the expected one.
async fn run(args: Args, log_file: Option<&Path>) -> anyhow::Result<bool> {
    let started = Instant::now();
    let mut opts = MeshOptions {
        waypoint_bin: args.waypoint_bin,
        apps: !args.no_apps,
        dir: args.dir,
        ..MeshOptions::default()
    };
    if args.check {
        // Nothing is in flight once the check is done: do not wait the default grace.
        opts.drain_grace = Duration::from_secs(1);
    }
    if let Some(p) = &args.policies {
        opts.policies =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
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
    // The demo's ports are fixed so that the "try it" lines work; the check takes free ones.
    let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], if args.check { 0 } else { port }));
    let shim = |port, who, target: &str| {
        let target: SocketAddr = target.parse().expect("VIP constant");
        let listen = local(port);
        let config = mesh.client_config(who);
        async move {
            ztunnel::outbound(
                listen,
                wp,
                config,
                target,
                SocketAddr::from(([10, 244, 0, 7], 40000)),
                Some("httpbin.ambient-demo.svc.cluster.local".into()),
            )
            .await
            .with_context(|| format!("listening on {listen}"))
        }
    };
    let sleep: OutboundShim = shim(SLEEP_PORT, &mesh.sleep, HTTPBIN_VIP).await?;
    let curl: OutboundShim = shim(CURL_PORT, &mesh.curl, HTTPBIN_VIP).await?;
    let tcp: OutboundShim = shim(SLEEP_TCP_PORT, &mesh.sleep, TCP_ECHO_VIP).await?;
    let metrics = match &mesh.waypoint {
        Some(running) => {
            eprintln!(
                "\nwaypoint: HBONE {wp}, metrics http://{}/metrics, config dump http://{}/config_dump",
                running.metrics_addr, running.admin_addr
            );
            running.metrics_addr
        }
        None => {
            eprintln!(
                "\nwaypoint: process {}, HBONE {wp}, metrics http://{}:15020/metrics, config dump http://{}:15000/config_dump",
                mesh.child.as_ref().map_or(0, std::process::Child::id),
                wp.ip(),
                wp.ip()
            );
            SocketAddr::new(wp.ip(), 15020)
        }
    };
    if !args.check {
        eprintln!(
            "config:   {} (edit policies.yaml there; changes apply live)",
            mesh.config_dir().display()
        );
        if let Some(path) = log_file {
            eprintln!(
                "logs:     {} (every decision; `tail -f` it while you try)",
                path.display()
            );
        }
    }
    eprintln!("\nself-check:");
    let probes = [
        http_probe("sleep GET  -> httpbin ", sleep.addr, "GET", true).await?,
        http_probe("sleep POST -> httpbin ", sleep.addr, "POST", false).await?,
        http_probe("curl  GET  -> httpbin ", curl.addr, "GET", false).await?,
        tcp_probe(tcp.addr, metrics).await?,
    ];
    for p in &probes {
        p.print();
    }
    let all_ok = probes.iter().all(|p| p.ok);
    let mut mesh = mesh;
    if args.check {
        let n_bad = probes.iter().filter(|p| !p.ok).count();
        if all_ok {
            eprintln!(
                "\nself-check passed in {:.1} s (mesh start included)",
                started.elapsed().as_secs_f64()
            );
        } else {
            eprintln!(
                "\nself-check FAILED: {n_bad} of {} answers differ",
                probes.len()
            );
        }
        mesh.shutdown().await;
        return Ok(all_ok);
    }
    if !all_ok {
        eprintln!(
            "\nthe self-check found answers the example policies do not call for (see above)"
        );
    }
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
    mesh.shutdown().await;
    drop((sleep, curl, tcp));
    Ok(true)
}
