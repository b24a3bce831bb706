//! The subcommands.

pub mod certs;
pub mod eval;
pub mod new;
pub mod serve;
pub mod test;

use std::path::PathBuf;

use clap::Args;

/// Where compiled modules are kept between runs; shared by the commands
/// that load policies, so `serve`, `eval` and `test` reuse each other's
/// compilations.
#[derive(Debug, Clone, Default, Args)]
pub struct ModuleCacheArgs {
    /// Where compiled policy modules are kept across runs, starts and
    /// reloads (default: `$XDG_CACHE_HOME/portcullis/modules` or
    /// `~/.cache/portcullis/modules`). Created owner-only; a directory
    /// others can write to is not used.
    #[arg(long, env = "PORTCULLIS_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Compile every module; use no cache directory.
    #[arg(long, env = "PORTCULLIS_NO_MODULE_CACHE", conflicts_with = "cache_dir")]
    pub no_module_cache: bool,
}

/// The cache flags alone, so a caller without a command line (the
/// `testing` harness) reads their environment variables exactly as the CLI.
#[derive(Debug, clap::Parser)]
struct CacheEnv {
    #[command(flatten)]
    cache: ModuleCacheArgs,
}

impl ModuleCacheArgs {
    /// The settings `PORTCULLIS_CACHE_DIR` and `PORTCULLIS_NO_MODULE_CACHE`
    /// give, as they would for `serve`, `eval` or `test`.
    ///
    /// # Errors
    /// The CLI's message for a value it would refuse.
    pub fn from_env() -> Result<Self, String> {
        use clap::Parser as _;
        CacheEnv::try_parse_from(["portcullis"])
            .map(|env| env.cache)
            .map_err(|err| err.to_string())
    }

    /// The cache directory to use, if any.
    pub fn dir(&self) -> Option<PathBuf> {
        if self.no_module_cache {
            None
        } else {
            self.cache_dir
                .clone()
                .or_else(crate::artifact_cache::default_dir)
        }
    }
}
