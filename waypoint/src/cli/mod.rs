//! Process entry: the command line (`waypoint run`, `waypoint authz eval|check`) and what each
//! subcommand does with it. `run` turns flags and environment into the process
//! [`Settings`](waypoint::settings::Settings) and hands them to the app; the `authz` tools run
//! offline and never start a listener.

pub(crate) mod authz;
pub(crate) mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "waypoint",
    version,
    about = "Envoy-free L7 waypoint proxy for Istio ambient mesh"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Run the waypoint: HBONE on :15008, policy from the config, HBONE to destination ztunnels.
    Run(Box<run::RunArgs>),
    /// Offline AuthorizationPolicy tools: see what a waypoint would decide, before applying.
    #[command(subcommand)]
    Authz(AuthzCommand),
}

#[derive(Subcommand, Debug)]
pub(crate) enum AuthzCommand {
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

impl Cli {
    /// Runs the subcommand; errors are the binary's to print.
    pub(crate) fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Run(args) => run::run(*args),
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
        }
    }
}
