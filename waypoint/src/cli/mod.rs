//! Process entry: the command line (`waypoint run`, `waypoint authz eval|check`, `waypoint
//! analyze`, `waypoint migrate`) and what each subcommand does with it. `run` turns flags and
//! environment into the process [`Settings`](waypoint::settings::Settings) and hands them to the
//! app; the other tools run offline (or list a cluster once) and never start a listener.
//!
//! The offline tools share [`topology`] (who serves whom, and the one adapter to the bindings'
//! waypoint membership), [`placement`] (moving a policy from ztunnel to a waypoint) and
//! [`output`] (`-o text|json|yaml`).

pub(crate) mod analyze;
pub(crate) mod authz;
pub(crate) mod migrate;
pub(crate) mod output;
pub(crate) mod placement;
pub(crate) mod run;
pub(crate) mod topology;

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
    /// Find policy placed where ambient does not enforce it as meant (ztunnel vs waypoint,
    /// bypasses, ignored objects), with the YAML that fixes each; exit 3 on an error-level finding.
    Analyze(Box<AnalyzeArgs>),
    /// Rewrite sidecar-mode (selector) policies for waypoints: a YAML bundle of new policies with
    /// targetRefs, the waypoints and the "only from my waypoint" guards; originals untouched.
    Migrate(Box<MigrateArgs>),
}

/// Flags shared by the tools that suggest waypoint objects.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct MeshArgs {
    #[arg(long, default_value = "istio-system")]
    root_namespace: String,
    /// The mesh's trust domain: the waypoint's principal is `<trust domain>/ns/<ns>/sa/<sa>`.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// A principal (`cluster.local/ns/istio-system/sa/istio-ingressgateway`, no `spiffe://`)
    /// the "only from my waypoint" guard admits besides the waypoint; repeatable.
    #[arg(long = "trusted-source", value_name = "PRINCIPAL")]
    trusted_sources: Vec<String>,
    /// The name of a waypoint Gateway to deploy where none serves.
    #[arg(long = "waypoint", default_value = "waypoint", value_name = "NAME")]
    waypoint_name: String,
    /// The class of a waypoint Gateway to deploy (`istio-waypoint` for istiod's Envoy).
    #[arg(long, default_value = gateway_api_bindings::well_known::RUST_WAYPOINT_CLASS)]
    waypoint_class: String,
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["config", "kubernetes"])))]
pub(crate) struct AnalyzeArgs {
    /// A YAML file (multi-document) or a directory of them, holding Kubernetes objects.
    #[arg(long)]
    config: Option<PathBuf>,
    /// List the live cluster once instead (read-only): the kubeconfig's current context, or
    /// in-cluster.
    #[arg(long)]
    kubernetes: bool,
    /// The kubeconfig for --kubernetes (default: KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, requires = "kubernetes")]
    kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    mesh: MeshArgs,
    #[arg(short, long, value_enum, default_value_t = output::Format::Text)]
    output: output::Format,
    /// The lowest severity that makes the exit status 3.
    #[arg(long, value_enum, default_value_t = analyze::Severity::Error)]
    fail_on: analyze::Severity,
}

#[derive(clap::Args, Debug)]
pub(crate) struct MigrateArgs {
    /// The sidecar-mode configuration: a YAML file or a directory of them.
    #[arg(long)]
    config: PathBuf,
    /// Write the bundle as one file per namespace into this directory instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    mesh: MeshArgs,
}

impl MeshArgs {
    fn analyze_options(&self, live: bool) -> analyze::Options {
        analyze::Options {
            root_namespace: self.root_namespace.clone(),
            trust_domain: self.trust_domain.clone(),
            trusted_sources: self.trusted_sources.clone(),
            live,
            waypoint_name: self.waypoint_name.clone(),
            waypoint_class: self.waypoint_class.clone(),
        }
    }
}

#[derive(Subcommand, Debug)]
pub(crate) enum AuthzCommand {
    /// Decide requests against a config, at the waypoint and at the destination's ztunnel; prints
    /// one JSON line per request by default.
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
        /// `json`: one line per request; `text`: a table per request; `yaml`: one list.
        #[arg(short, long, value_enum, default_value_t = output::Format::Json)]
        output: output::Format,
    },
    /// Validate every AuthorizationPolicy and RequestAuthentication as Istio's webhook does and
    /// print the WaypointAccepted status istiod would set; exit 1 if any is invalid.
    Check {
        /// A YAML file (multi-document) or a directory of them, holding Kubernetes objects.
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value = "istio-system")]
        root_namespace: String,
        #[arg(short, long, value_enum, default_value_t = output::Format::Text)]
        output: output::Format,
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
                output,
            }) => authz::eval::run(
                &config,
                &request,
                &root_namespace,
                &path_normalization,
                output,
            ),
            Command::Authz(AuthzCommand::Check {
                config,
                root_namespace,
                output,
            }) => authz::check::run(&config, &root_namespace, output),
            Command::Analyze(a) => {
                let input = match a.config {
                    Some(path) => analyze::Input::Files(path),
                    None => analyze::Input::Kubernetes {
                        kubeconfig: a.kubeconfig,
                    },
                };
                let opts = a.mesh.analyze_options(a.kubernetes);
                analyze::run(input, &opts, a.output, a.fail_on)
            }
            Command::Migrate(m) => {
                migrate::run(&m.config, m.out.as_deref(), &m.mesh.analyze_options(false))
            }
        }
    }
}
