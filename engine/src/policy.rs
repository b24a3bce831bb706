//! One configured policy: a compiled module plus the settings, limits,
//! match rules and failure semantics the config gives it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::breaker::Breaker;
use crate::config::Limits;
use crate::config::{Mode, ModuleSource, OnError, PolicyConfig, RegistryOrigin};
use crate::invoke::{Metadata, MutationOutput, PolicyError, Verdict};
use crate::matcher::{MatchInput, Matcher, RequestFacts};
use crate::module::{CompiledModule, ModuleError};

/// Why one policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The module file could not be read (or is not a file, or too large).
    #[error(transparent)]
    Read(#[from] crate::files::ReadError),
    /// The module could not be compiled or does not fit the contract.
    #[error(transparent)]
    Module(#[from] ModuleError),
    /// Calling `metadata` failed.
    #[error("metadata call failed")]
    Metadata(#[source] PolicyError),
    /// The module neither validates nor mutates.
    #[error("module says it neither validates nor mutates")]
    NoCapability,
    /// The module names resources that are not valid patterns.
    #[error("module metadata declares an invalid resource: {0}")]
    Resources(String),
    /// `validate-settings` rejected the settings.
    #[error("settings rejected: {0}")]
    SettingsRejected(String),
    /// Calling `validate-settings` failed.
    #[error("validate-settings call failed")]
    SettingsCall(#[source] PolicyError),
    /// The compile task died (a panic inside the compiler).
    #[error("compilation task failed")]
    Task(#[source] tokio::task::JoinError),
    /// The policy's memory cap is larger than all running calls together
    /// may hold: it could never run.
    #[error(
        "memoryLimit of {limit} bytes is larger than the server's memory budget of {budget} bytes \
         (--memory-budget)"
    )]
    OverBudget { limit: u64, budget: u64 },
    /// The module's `prepare` rejected the settings, or pre-initializing it
    /// failed.
    #[error(transparent)]
    Prepare(#[from] crate::prepare::PrepareError),
    /// The module's bytes are not those its registry manifest names: the
    /// stored copy was altered or the registry served other bytes.
    #[error("the module's digest is {actual}, not {expected} as its manifest says")]
    DigestMismatch { expected: String, actual: String },
    /// A registry module was not pulled before the set was built.
    #[error(
        "registry modules are pulled by the server before loading; this command reads files only"
    )]
    Unresolved,
    /// A compiled module went missing between compiling and binding (a bug).
    #[error("the compiled module went missing")]
    Missing,
    /// The shadow candidate cannot stand in for the live version: it does
    /// not do what the live version does (validate, mutate).
    #[error("the shadow candidate does not {0}, but the live version does")]
    CandidateLacks(&'static str),
    /// The policy has a namespaceSelector and nothing follows the
    /// cluster's namespaces.
    #[error(
        "match.namespaceSelector needs the cluster's namespaces, which only \
         `serve --cluster-policies` follows"
    )]
    NoNamespaces,
}

/// A policy ready to serve.
#[derive(Debug)]
pub struct Policy {
    pub name: Arc<str>,
    /// Where the module came from, as configured.
    pub source: ModuleSource,
    /// The file its bytes were read from.
    pub module_path: PathBuf,
    /// What its registry reference resolved to.
    pub origin: Option<RegistryOrigin>,
    pub module: Arc<CompiledModule>,
    pub metadata: Metadata,
    pub mode: Mode,
    pub on_error: OnError,
    pub limits: Limits,
    pub matcher: Matcher,
    /// Settings as JSON text, passed on every call.
    pub settings: String,
    /// The candidate evaluated beside this version, off the response
    /// path (`shadow:` in the config); never has a candidate of its own.
    pub shadow: Option<Arc<Policy>>,
    /// Fails calls fast while the policy keeps hogging its limits.
    breaker: Breaker,
}

impl Policy {
    /// Binds a compiled module to its config: asks for its metadata and
    /// has it check its settings. A policy that rejects its settings is
    /// never returned.
    ///
    /// # Errors
    /// A [`LoadError`] saying which step failed.
    pub async fn bind(
        config: &PolicyConfig,
        module: Arc<CompiledModule>,
    ) -> Result<Self, LoadError> {
        if config.matcher.namespace_selector.is_some() && module.engine.namespace_labels().is_none()
        {
            return Err(LoadError::NoNamespaces);
        }
        let budget = module.engine.memory_budget();
        if config.limits.memory > budget {
            return Err(LoadError::OverBudget {
                limit: config.limits.memory,
                budget,
            });
        }
        let name: Arc<str> = config.name.as_str().into();
        let metadata = module
            .metadata(&name, config.limits)
            .await
            .map_err(LoadError::Metadata)?;
        if !metadata.validates && !metadata.mutates {
            return Err(LoadError::NoCapability);
        }
        let matcher = config
            .matcher
            .clone()
            .with_default_resources(&metadata.resources)
            .map_err(LoadError::Resources)?;
        module
            .validate_settings(&name, config.limits, &config.settings)
            .await
            .map_err(LoadError::SettingsCall)?
            .map_err(LoadError::SettingsRejected)?;
        // A module that prepares serves from a copy pre-initialized for
        // these settings.
        let module = crate::prepare::prepared(&module, &name, config.limits, &config.settings)
            .await?
            .unwrap_or(module);
        Ok(Self {
            name,
            source: config.source.clone(),
            module_path: config.module.clone(),
            origin: config.origin.clone(),
            module,
            metadata,
            mode: config.mode,
            on_error: config.on_error,
            limits: config.limits,
            matcher,
            settings: config.settings.clone(),
            shadow: None,
            breaker: Breaker::default(),
        })
    }

    /// Attaches a bound candidate. It must do everything the live version
    /// does, since it is evaluated wherever the live version is. Its name
    /// says it is the candidate in its log lines and breaker messages.
    ///
    /// # Errors
    /// [`LoadError::CandidateLacks`] when it does not validate or mutate
    /// where the live version does.
    pub fn with_shadow(mut self, mut candidate: Policy) -> Result<Self, LoadError> {
        if self.metadata.validates && !candidate.metadata.validates {
            return Err(LoadError::CandidateLacks("validate"));
        }
        if self.metadata.mutates && !candidate.metadata.mutates {
            return Err(LoadError::CandidateLacks("mutate"));
        }
        candidate.name = format!("{}/shadow", self.name).into();
        self.shadow = Some(Arc::new(candidate));
        Ok(self)
    }

    /// Whether `other` is the same policy with the same code and config.
    pub fn same_as(&self, other: &Policy) -> bool {
        self.name == other.name
            && self.source == other.source
            && self.module_path == other.module_path
            && self.origin == other.origin
            && self.module.digest == other.module.digest
            && self.mode == other.mode
            && self.on_error == other.on_error
            && self.limits == other.limits
            && self.matcher == other.matcher
            && self.settings == other.settings
            && match (&self.shadow, &other.shadow) {
                (None, None) => true,
                (Some(a), Some(b)) => a.same_as(b),
                _ => false,
            }
    }

    /// Whether this policy applies to a request by its operation,
    /// resource and namespace; see [`Matcher::matches`].
    pub fn matches(&self, request: &RequestFacts<'_>) -> bool {
        self.matcher.matches(request)
    }

    /// For a request [`Policy::matches`] matched: whether its selectors
    /// and match conditions select it too. Free for a policy without them.
    ///
    /// # Errors
    /// A [`PolicyError::Match`] when that cannot be decided.
    pub(crate) fn selects(&self, input: &MatchInput<'_>) -> Result<bool, PolicyError> {
        if !self.needs_match_input() {
            return Ok(true);
        }
        Ok(self
            .matcher
            .selects(input, self.module.engine.namespace_labels())?)
    }

    /// Whether it has selectors or match conditions to check before it
    /// runs.
    pub(crate) fn needs_match_input(&self) -> bool {
        self.matcher.needs_input()
    }

    /// The policy's limits, its deadline shortened to the review's.
    fn limits_before(&self, deadline: Option<Instant>) -> Result<Limits, PolicyError> {
        let Some(deadline) = deadline else {
            return Ok(self.limits);
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(PolicyError::NoTimeLeft);
        }
        Ok(Limits {
            timeout: self.limits.timeout.min(remaining),
            ..self.limits
        })
    }

    /// Runs `validate` on a request (JSON text), finishing by `deadline`.
    ///
    /// # Errors
    /// A [`PolicyError`] when the call fails.
    pub async fn validate(
        &self,
        request: &str,
        deadline: Option<Instant>,
    ) -> Result<Verdict, PolicyError> {
        let limits = self.limits_before(deadline)?;
        let breaker = self.module.engine.breaker();
        self.breaker.admit(breaker)?;
        let result = self
            .module
            .validate(&self.name, limits, request, &self.settings)
            .await;
        self.breaker.record(breaker, &self.name, &result);
        result
    }

    /// Runs `mutate` on a request (JSON text), finishing by `deadline`.
    ///
    /// # Errors
    /// A [`PolicyError`] when the call fails.
    pub async fn mutate(
        &self,
        request: &str,
        deadline: Option<Instant>,
    ) -> Result<MutationOutput, PolicyError> {
        let limits = self.limits_before(deadline)?;
        let breaker = self.module.engine.breaker();
        self.breaker.admit(breaker)?;
        let result = self
            .module
            .mutate(&self.name, limits, request, &self.settings)
            .await;
        self.breaker.record(breaker, &self.name, &result);
        result
    }
}
