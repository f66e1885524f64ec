//! `hbone-idle`: opens N idle HBONE connections (mTLS + HTTP/2, no streams) to a waypoint and
//! holds them, for measuring the waypoint's memory per connection (`benches/load.sh`).
//!
//! Usage: `hbone-idle <waypoint addr> <connections> <pki dir>`; the pki dir is what `demo-mesh
//! --dir D` writes under `D/pki`. Prints `open N` when all are up, then waits for SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use waypoint_tests::ztunnel::{HboneClient, client_config_files};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hbone-idle: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(n), Some(dir)) = (args.next(), args.next(), args.next()) else {
        anyhow::bail!("usage: hbone-idle <waypoint addr> <connections> <pki dir>");
    };
    let addr = addr.parse()?;
    let n: usize = n.parse()?;
    let dir = PathBuf::from(dir);
    let config = client_config_files(
        &dir.join("root-cert.pem"),
        &dir.join("sleep.pem"),
        &dir.join("sleep-key.pem"),
    )?;
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(HboneClient::connect(addr, config.clone()).await?);
    }
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        writeln!(out, "open {}", conns.len())?;
        out.flush()?;
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    term.recv().await;
    drop(conns);
    Ok(())
}
