//! `waypoint`: an Envoy-free L7 waypoint proxy for Istio ambient mesh.
//!
//! This binary is the edge where errors become messages for operators (`anyhow`); the libraries
//! below it (`policy-engine`, `gateway-api-bindings`) return typed errors.

mod authz;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "waypoint",
    version,
    about = "Envoy-free L7 waypoint proxy for Istio ambient mesh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the waypoint: HBONE on :15008, policy from the config, HBONE to destination ztunnels.
    Run(Box<serve::RunArgs>),
    /// Offline AuthorizationPolicy tools: see what a waypoint would decide, before applying.
    #[command(subcommand)]
    Authz(AuthzCommand),
}

#[derive(Subcommand, Debug)]
enum AuthzCommand {
    /// Decide requests against a config; prints one JSON line per request.
    Eval {
        /// A YAML file (multi-document) or a directory of them, holding Kubernetes objects.
        #[arg(long)]
        config: PathBuf,
        /// A YAML file of one or more request documents.
        #[arg(long)]
        request: PathBuf,
        #[arg(long, default_value = "istio-system")]
        root_namespace: String,
        /// Mesh `pathNormalization`: NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES.
        #[arg(long, default_value = "BASE")]
        path_normalization: String,
    },
    /// Validate every AuthorizationPolicy and RequestAuthentication as Istio's webhook does and
    /// print the WaypointAccepted status istiod would set; exit 1 if any is invalid.
    Check {
        /// A YAML file (multi-document) or a directory of them, holding Kubernetes objects.
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value = "istio-system")]
        root_namespace: String,
    },
}

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
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => serve::run(*args),
        Command::Authz(AuthzCommand::Eval {
            config,
            request,
            root_namespace,
            path_normalization,
        }) => authz::eval::run(&config, &request, &root_namespace, &path_normalization),
        Command::Authz(AuthzCommand::Check {
            config,
            root_namespace,
        }) => authz::check::run(&config, &root_namespace),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
