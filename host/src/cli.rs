//! Command-line interface: one subcommand per file under `commands/`.
//! Every flag can also be set through a `PORTCULLIS_*` environment variable.

use clap::{Parser, Subcommand};

use crate::commands::{
    certs::CertsCommand,
    eval::EvalCommand,
    new::NewCommand,
    promote::PromoteCommand,
    registry::{KeygenCommand, PullCommand, PushCommand, SignCommand},
    serve::ServeCommand,
    test::TestCommand,
};
use crate::telemetry::LogFormat;

/// Portcullis: Kubernetes admission policies as sandboxed WebAssembly.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about)]
pub struct Cli {
    /// Log line format.
    #[arg(
        long,
        global = true,
        env = "PORTCULLIS_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Log filter, e.g. `info` or `portcullis=debug,info` (default: `info`;
    /// `error` for `test`, whose report is its output).
    #[arg(long, global = true, env = "PORTCULLIS_LOG_LEVEL")]
    pub log_level: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the admission webhook over HTTPS.
    Serve(Box<ServeCommand>),
    /// Generate a CA and a server certificate for the webhook.
    Certs(CertsCommand),
    /// Run the mutate and validate chains on one review, offline.
    Eval(EvalCommand),
    /// Run policy test suites (YAML) with the server's engine.
    Test(TestCommand),
    /// Scaffold a policy crate: `portcullis new policy NAME [--mutating]`.
    New(NewCommand),
    /// Push a module to an OCI registry (Wasm artifact layout, annotated
    /// from the module's metadata).
    Push(PushCommand),
    /// Pull a module from an OCI registry, optionally checking its signature.
    Pull(PullCommand),
    /// Sign a module in an OCI registry (cosign's keyed layout).
    Sign(SignCommand),
    /// Make an ECDSA P-256 key pair for `sign` and `verify`.
    Keygen(KeygenCommand),
    /// Make a policy's shadow candidate its enforcing version (rewrites
    /// the config file; comments are not kept).
    Promote(PromoteCommand),
}

impl Cli {
    /// The log filter: the one given, else the command's default.
    pub fn log_filter(&self) -> &str {
        match (&self.log_level, &self.command) {
            (Some(level), _) => level,
            // Policy errors a suite expects would interleave warnings with
            // the report.
            (None, Command::Test(_)) => "error",
            (None, _) => "info",
        }
    }
}
