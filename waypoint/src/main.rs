//! `waypoint`: an Envoy-free L7 waypoint proxy for Istio ambient mesh.
//!
//! This binary is the edge where errors become messages for operators (`anyhow`); the libraries
//! below it (`policy-engine`, `gateway-api-bindings`) return typed errors.

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour for a person at a terminal; plain text for files, pipes and pod logs.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                let default = if matches!(std::env::args().nth(1).as_deref(), Some("run")) {
                    "info"
                } else {
                    "warn"
                };
                default.into()
            }),
        )
        .init();
    let result = cli::Cli::parse().run();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
