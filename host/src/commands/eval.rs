//! `portcullis eval`: the server's chains, offline, on one review.

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::{Context as _, anyhow};
use clap::Args;

use crate::commands::CliError;
use crate::registry::ModuleResolver;
use portcullis_engine::Config;
use portcullis_engine::OfflineError;
use portcullis_engine::PolicyEngine;
use portcullis_engine::{ModuleCache, PolicySet};

#[derive(Debug, Args)]
pub struct EvalCommand {
    /// The policy config file (YAML).
    #[arg(long, env = "PORTCULLIS_CONFIG")]
    pub config: PathBuf,

    /// The AdmissionReview (or a bare AdmissionRequest) as JSON; `-` reads
    /// standard input.
    #[arg(long)]
    pub review: PathBuf,

    #[command(flatten)]
    pub module_cache: super::ModuleCacheArgs,

    /// For `oci://` modules: pulled (or taken from the store) as the
    /// server does.
    #[command(flatten)]
    pub registry: super::RegistryArgs,

    /// Run only this policy of the config (as `/mutate/{policy}` and
    /// `/validate/{policy}` do).
    #[arg(long)]
    pub policy: Option<String>,

    /// What to print: the response AdmissionReview, or the object after
    /// the mutation chain.
    #[arg(long, value_enum, default_value_t = Print::Response)]
    pub print: Print,

    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Json)]
    pub output: Format,
}

/// What `eval` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Print {
    /// The AdmissionReview the server would answer (its patch base64).
    Response,
    /// The request's object with the mutation applied.
    Patched,
}

/// How `eval` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Json,
    Yaml,
}

impl EvalCommand {
    /// Runs mutate, then validate on the mutated object, and prints the
    /// response AdmissionReview (or the mutated object).
    ///
    /// # Errors
    /// Exit 2 for a bad config, policies or review; 1 for a policy whose
    /// `onError: fail` fired.
    pub fn execute(self) -> Result<(), CliError> {
        let body = read_review(&self.review).map_err(CliError::usage)?;
        let mut config = Config::load(&self.config).map_err(CliError::usage)?;
        let runtime = tokio::runtime::Runtime::new().map_err(CliError::failure)?;
        let answer = runtime.block_on(async {
            ModuleResolver::new(self.registry.settings(None))
                .resolve(&mut config)
                .await
                .map_err(CliError::usage)?;
            let engine = PolicyEngine::with_cache(self.module_cache.dir().as_deref())
                .map_err(CliError::failure)?;
            let (set, _) = PolicySet::build(&engine, &config, 1, &mut ModuleCache::new(0))
                .await
                .map_err(CliError::usage)?;
            portcullis_engine::evaluate(&set, body, self.policy.as_deref())
                .await
                .map_err(|err| match err {
                    OfflineError::Failed(_) | OfflineError::Patch(_) => CliError::failure(err),
                    OfflineError::Review(_) | OfflineError::UnknownPolicy(_) => {
                        CliError::usage(err)
                    }
                })
        })?;
        let value = match self.print {
            Print::Response => answer.response().map_err(CliError::failure)?,
            Print::Patched => answer.object.clone().ok_or_else(|| {
                CliError::usage(anyhow!(
                    "the review has no object to print (e.g. a DELETE); use --print response"
                ))
            })?,
        };
        let text = match self.output {
            Format::Json => serde_json::to_string_pretty(&value).map_err(CliError::failure)?,
            Format::Yaml => serde_yaml_ng::to_string(&value).map_err(CliError::failure)?,
        };
        println!("{}", text.trim_end());
        Ok(())
    }
}

fn read_review(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut body = Vec::new();
        std::io::stdin()
            .read_to_end(&mut body)
            .context("reading the review from standard input")?;
        return Ok(body);
    }
    std::fs::read(path).with_context(|| format!("cannot read review file {}", path.display()))
}
