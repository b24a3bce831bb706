//! The Portcullis policy engine: everything that turns a config and module
//! bytes into admission decisions. No HTTP, TLS, file watching or CLI: the
//! server (`portcullis`), the offline commands, the policy test harness
//! (`portcullis-testing`), the fuzz targets and the benchmarks all drive
//! it the same way.
//!
//! # The path of one review
//! ```text
//! Review::parse(body)                      admission: AdmissionReview in (raw pass-through)
//!   -> PolicyStore::current()              policy_store: one immutable PolicySet per request
//!   -> mutate(..) / validate(..)           chain: match, mutate in order, then validate
//!        -> Policy::{mutate, validate}     policy: a module bound to settings, limits, match
//!        -> invoke                         invoke: one sandboxed call with a deadline
//!   -> admission_response(.., &Decision)   admission: AdmissionReview out (uid, patch, warnings)
//! ```
//!
//! # Layout
//! Each module imports only modules above it in this list:
//! - `config`: the YAML config, typed and validated; per-call [`Limits`].
//! - `selector`: label selectors (`namespaceSelector`, `objectSelector`)
//!   and the Kubernetes name grammar they use.
//! - `conditions`: CEL `matchConditions`, parsed at load, evaluated on
//!   the request's JSON.
//! - `matcher`: which policies apply to a request; the namespace labels
//!   a host provides.
//! - `admission`: AdmissionReview parsing and response building.
//! - `contract`: the WIT contract version and the check that a module fits.
//! - `bindings`: host bindings generated from `wit/`.
//! - `sandbox`: a call's store state: memory cap, bounded log, empty WASI.
//! - `componentize`: core module or component in, component out.
//! - `artifact_cache`: compiled modules on disk, checked before use.
//! - `engine`: the wasmtime engine, linker and epoch ticker.
//! - `module`: compile (or load from the cache) and pre-instantiate.
//! - `invoke`: one call into a policy with a deadline; typed errors.
//! - `policy`: a module bound to its settings, limits and match rules.
//! - `policy_set`: the immutable snapshot of all policies, and the
//!   compiled-module cache that reloads share.
//! - `shadow`: a policy's candidate version run on the live version's
//!   input, and the two verdicts compared.
//! - `policy_store`: the snapshot in service (swapped whole) and reload
//!   status.
//! - `chain`: the mutate chain and validation over a snapshot; modes and
//!   onError.
//! - `offline`: the server's answer to a review, computed without a server.
//! - `pool`: the threads policy evaluations run on, apart from the network.
//! - `report`: an error with its causes, on one line.
//!
//! Modules are private; what other crates use is re-exported here.

mod admission;
mod artifact_cache;
mod bindings;
mod breaker;
mod chain;
mod componentize;
mod conditions;
mod config;
mod contract;
mod engine;
mod files;
mod invoke;
mod log_text;
mod matcher;
mod module;
mod offline;
mod policy;
mod policy_set;
mod policy_store;
mod pool;
mod prepare;
mod report;
mod sandbox;
mod selector;
mod shadow;

pub use admission::{
    ApiVersion, DENIED_CODE, Decision, Review, ReviewError, request_with_object,
    response as admission_response,
};
pub use artifact_cache::{ArtifactCache, CacheError, default_dir as default_cache_dir};
pub use breaker::BreakerSettings;
pub use chain::{ChainFailure, Evaluation, Selection, mutate, validate};
pub use componentize::{ComponentizeError, ModuleFormat};
pub use conditions::{ConditionError, MAX_CONDITIONS, MatchConditions, RawMatchCondition};
pub use config::{
    Config, ConfigError, DEFAULT_MEMORY, DEFAULT_TIMEOUT_MS, Limits, MAX_POLICY_MEMORY, Mode,
    ModuleSource, ModuleSpec, OnError, PolicyConfig, PolicyName, Quantity, REGISTRY_SCHEME,
    RawDefaults, RawPolicy, RawShadow, RegistryOrigin, ShadowConfig,
};
pub use contract::{ContractError, VERSION as CONTRACT_VERSION, Version};
pub use engine::{DEFAULT_MEMORY_BUDGET, EPOCH_TICK, EngineError, EngineOptions, PolicyEngine};
pub use files::{MAX_CONFIG_BYTES, MAX_MODULE_BYTES, ReadError, read_bounded, read_text_bounded};
pub use invoke::{Metadata, MutationOutput, PolicyError, Verdict};
pub use log_text::{LogText, MAX_LOG_TEXT};
pub use matcher::{MatchError, Matcher, NamespaceLabels, Operation, ResourcePattern};
pub use module::{CompiledModule, ModuleError, digest as module_digest};
pub use offline::{Answer, OfflineError, PatchError, as_review, evaluate};
pub use policy::{LoadError, Policy};
pub use policy_set::{BuildStats, ModuleCache, PolicySet, SetError};
pub use policy_store::{LoadFailure, PolicyStore, ReloadStatus};
pub use pool::{EvalPool, Evaluating, PoolError, TaskError};
pub use report::Report;
pub use selector::{LabelSelector, Labels, RawLabelSelector};
pub use shadow::{Comparison, Said, ShadowCall, ShadowResult};
