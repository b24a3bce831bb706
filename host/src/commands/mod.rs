//! The subcommands.

pub mod certs;
pub mod eval;
pub mod new;
pub mod promote;
pub mod serve;
pub mod test;

use std::path::PathBuf;

use clap::Args;

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
