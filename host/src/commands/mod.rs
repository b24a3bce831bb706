//! The subcommands.

pub mod certs;
pub mod eval;
pub mod new;
pub mod promote;
pub mod registry;
pub mod serve;
pub mod test;

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::registry::RegistrySettings;

/// How a command failed, and the exit code that says so.
#[derive(Debug)]
pub struct CliError {
    /// 1: a failure found or a runtime error; 2: usage or config error.
    pub code: u8,
    pub error: anyhow::Error,
}

impl CliError {
    /// A usage or configuration error (exit code 2).
    pub fn usage(error: impl Into<anyhow::Error>) -> Self {
        Self {
            code: 2,
            error: error.into(),
        }
    }

    /// A runtime failure (exit code 1).
    pub fn failure(error: impl Into<anyhow::Error>) -> Self {
        Self {
            code: 1,
            error: error.into(),
        }
    }
}

/// Where compiled modules are kept between runs; shared by the commands
/// that load policies, so `serve`, `eval` and `test` reuse each other's
/// compilations.
#[derive(Debug, Clone, Default, Args)]
pub struct ModuleCacheArgs {
    /// Where compiled policy modules are kept across runs, starts and
    /// reloads (default: `$XDG_CACHE_HOME/portcullis/modules` or
    /// `~/.cache/portcullis/modules`). Created owner-only; a directory
    /// others can write to is not used.
    #[arg(long, env = portcullis_testing::CACHE_DIR_ENV, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Compile every module; use no cache directory.
    #[arg(long, env = portcullis_testing::NO_MODULE_CACHE_ENV, conflicts_with = "cache_dir")]
    pub no_module_cache: bool,
}

impl ModuleCacheArgs {
    /// The cache directory to use, if any.
    pub fn dir(&self) -> Option<PathBuf> {
        if self.no_module_cache {
            None
        } else {
            self.cache_dir
                .clone()
                .or_else(portcullis_engine::default_cache_dir)
        }
    }
}

/// How registries are reached; shared by `serve`, `push`, `pull` and
/// `sign`.
#[derive(Debug, Clone, Default, Args)]
pub struct RegistryArgs {
    /// Registry logins: a Docker `config.json` (the `.dockerconfigjson` of
    /// a `kubernetes.io/dockerconfigjson` Secret). Read again at every
    /// reload. Registries it does not name are used anonymously, and so
    /// are all while the file does not exist (an optional Secret).
    #[arg(long, env = "PORTCULLIS_REGISTRY_AUTH", value_name = "FILE")]
    pub registry_auth: Option<PathBuf>,

    /// PEM certificates to trust for registries, besides the system's.
    #[arg(long, env = "PORTCULLIS_REGISTRY_CA", value_name = "FILE")]
    pub registry_ca: Option<PathBuf>,

    /// Speak plain HTTP (no TLS) to this registry (`host:port`);
    /// repeatable. Only for registries on a trusted network.
    #[arg(
        long,
        env = "PORTCULLIS_REGISTRY_PLAIN_HTTP",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    pub registry_plain_http: Vec<String>,

    /// Longest one registry request may take, in seconds.
    #[arg(long, env = "PORTCULLIS_REGISTRY_TIMEOUT", default_value_t = 30)]
    pub registry_timeout: u64,

    /// Where pulled modules are kept by digest, so a restart or a registry
    /// outage needs no network for a digest already pulled (default:
    /// `$XDG_CACHE_HOME/portcullis/registry` or
    /// `~/.cache/portcullis/registry`).
    #[arg(long, env = "PORTCULLIS_REGISTRY_STORE", value_name = "DIR")]
    pub registry_store: Option<PathBuf>,
}

impl RegistryArgs {
    /// The settings these flags give, with `poll_interval` for `serve`.
    pub fn settings(&self, poll_interval: Option<Duration>) -> RegistrySettings {
        RegistrySettings {
            store_dir: self
                .registry_store
                .clone()
                .unwrap_or_else(crate::registry::default_store_dir),
            credentials: self.registry_auth.clone(),
            ca_bundle: self.registry_ca.clone(),
            plain_http: self.registry_plain_http.clone(),
            timeout: Duration::from_secs(self.registry_timeout.max(1)),
            poll_interval,
        }
    }
}
