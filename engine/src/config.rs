//! The configuration file: which policies to serve, with what settings,
//! limits and failure semantics. Parsed and validated here without touching
//! modules or sockets.
//!
//! ```yaml
//! defaults: { timeoutMs: 250, memoryLimit: 32Mi, onError: deny, mode: enforce }
//! policies:
//!   - name: allowed-images
//!     module: allowed_images.wasm      # relative to this file
//!     match:
//!       operations: [CREATE, UPDATE]
//!       resources: [pods, deployments.apps]
//!       namespaces: { exclude: [kube-system] }
//!       namespaceSelector: { matchLabels: { team: a } }     # as a webhook's
//!       objectSelector: { matchExpressions: [{ key: skip, operator: DoesNotExist }] }
//!       matchConditions:                                  # CEL, all must be true
//!         - { name: not-dry-run, expression: "!request.dryRun" }
//!     settings: { allowed: ["registry.k8s.io/"] }
//!     shadow:                          # optional: a candidate evaluated beside it
//!       settings: { allowed: ["registry.k8s.io/", "quay.io/"] }
//!   - name: labels
//!     module: oci://registry.example:5000/policies/required-labels:v1
//!     verify: { keys: [keys/policies.pub] }   # cosign-style signature
//! ```

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use portcullis_kube::quantity;

use crate::conditions::{MatchConditions, RawMatchCondition};
use crate::matcher::{Matcher, Operation, ResourcePattern};
use crate::selector::{LabelSelector, RawLabelSelector};

/// Default deadline of one policy call.
pub const DEFAULT_TIMEOUT_MS: u64 = 250;
/// Default memory cap of one policy call.
pub const DEFAULT_MEMORY: u64 = 32 << 20;
/// Longest deadline a policy may be given: the API server waits 30 s at most.
const MAX_TIMEOUT_MS: u64 = 30_000;
/// Smallest memory cap: a componentized Rust policy needs a few MiB.
const MIN_MEMORY: u64 = 2 << 20;

/// Why the configuration was refused. The message names the file and,
/// where the parser knows it, the line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (or is not a file, or too large).
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: crate::files::ReadError,
    },
    /// The YAML is malformed or does not fit the schema.
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// The YAML parsed but a value is not acceptable.
    #[error("invalid config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// What a denial from this policy means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    /// A deny denies.
    #[default]
    Enforce,
    /// A deny is turned into an allow with the message as a warning.
    Warn,
    /// A deny is allowed and recorded in audit annotations and logs.
    Audit,
}

/// What a policy error (trap, deadline, memory, bad output) means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum OnError {
    /// Deny the request, naming the policy and the error.
    #[default]
    Deny,
    /// Allow the request with a warning saying the policy failed.
    Allow,
    /// Answer HTTP 500 so the API server applies the webhook's failurePolicy.
    Fail,
}

/// The largest memory a policy may be given (pooling slots are sized for it).
pub const MAX_POLICY_MEMORY: u64 = 1 << 30;

/// Per-call limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock deadline of one call, instantiation included.
    pub timeout: Duration,
    /// Largest linear memory the policy may grow to, in bytes.
    pub memory: u64,
}

/// A memory size as Kubernetes writes quantities: `32Mi`, `1.5Gi`, `512Ki`,
/// `64M`, or plain bytes (the API's grammar, shared with the SDK).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity(pub u64);

impl Quantity {
    /// Parses a quantity.
    ///
    /// # Errors
    /// A message saying what was expected.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if quantity::parse(text).is_some_and(|value| value < 0.0) {
            return Err(format!("memory quantity {text:?} is negative"));
        }
        quantity::bytes(text).map(Quantity).ok_or_else(|| {
            if quantity::parse(text).is_some() {
                format!("memory quantity {text:?} is too large")
            } else {
                format!(
                    "invalid memory quantity {text:?}: expected a number with an optional \
                     suffix Ki, Mi, Gi, Ti, k, M or G (e.g. 32Mi or 1.5Gi)"
                )
            }
        })
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(bytes) => Ok(Quantity(bytes)),
            Raw::Text(text) => Quantity::parse(&text).map_err(serde::de::Error::custom),
        }
    }
}

/// A policy name: a DNS label, since it appears in URL paths, metrics and
/// audit annotation keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PolicyName(String);

impl PolicyName {
    /// Checks a name.
    ///
    /// # Errors
    /// A message saying what a name may contain.
    pub fn parse(name: &str) -> Result<Self, String> {
        let valid = !name.is_empty()
            && name.len() <= 50
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if valid {
            Ok(Self(name.to_string()))
        } else {
            Err(format!(
                "invalid policy name {name:?}: use 1 to 50 lowercase letters, digits and '-', \
                 starting and ending with a letter or digit"
            ))
        }
    }

    /// The name of a namespaced policy resource: `NAMESPACE.NAME`. Both
    /// parts are DNS labels, so the first dot separates them and the name
    /// can never be taken by a cluster-wide policy (whose names have no
    /// dot). At most 63 characters: the API server's limit for the name
    /// part of an audit annotation key.
    ///
    /// # Errors
    /// A message saying what the parts may contain.
    pub fn namespaced(namespace: &str, name: &str) -> Result<Self, String> {
        let label = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !s.starts_with('-')
                && !s.ends_with('-')
        };
        let full = format!("{namespace}.{name}");
        if label(namespace) && label(name) && full.len() <= 63 {
            Ok(Self(full))
        } else {
            Err(format!(
                "invalid namespaced policy name {full:?}: namespace and name must be DNS labels \
                 (lowercase letters, digits and '-') of at most 62 characters together"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for PolicyName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        PolicyName::parse(&name).map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for PolicyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawDefaults {
    timeout_ms: Option<u64>,
    memory_limit: Option<Quantity>,
    on_error: Option<OnError>,
    mode: Option<Mode>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawNamespaces {
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawMatch {
    operations: Option<Vec<Operation>>,
    resources: Option<Vec<ResourcePattern>>,
    #[serde(default)]
    namespaces: RawNamespaces,
    namespace_selector: Option<RawLabelSelector>,
    object_selector: Option<RawLabelSelector>,
    match_conditions: Option<Vec<RawMatchCondition>>,
}

/// Public keys a registry module's signature must verify with.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawVerify {
    keys: Vec<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawPolicy {
    name: PolicyName,
    module: String,
    verify: Option<RawVerify>,
    mode: Option<Mode>,
    on_error: Option<OnError>,
    timeout_ms: Option<u64>,
    memory_limit: Option<Quantity>,
    #[serde(rename = "match", default)]
    matching: Option<RawMatch>,
    #[serde(default)]
    settings: Option<serde_json::Value>,
    #[serde(default)]
    shadow: Option<RawShadow>,
    /// Set by the host, never read from a file: see
    /// [`RawPolicy::confine_to_namespace`].
    #[serde(skip)]
    only_namespace: Option<String>,
}

impl RawPolicy {
    /// Confines the policy to requests in `namespace`: a namespaced policy
    /// resource (`AdmissionPolicy`) must never see another namespace's
    /// requests, nor cluster-scoped ones (Namespace objects included),
    /// whatever its `match` says. Call it before [`Config::from_parts`].
    pub fn confine_to_namespace(&mut self, namespace: &str) {
        self.only_namespace = Some(namespace.to_string());
    }

    /// Gives the entry another name: how a namespaced policy resource gets
    /// its `NAMESPACE.NAME` ([`PolicyName::namespaced`]), which no config
    /// file can spell.
    pub fn rename(&mut self, name: PolicyName) {
        self.name = name;
    }
}

/// A policy's shadow candidate as written: what differs from the live
/// version; everything left out is the live version's.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawShadow {
    module: Option<String>,
    settings: Option<serde_json::Value>,
    timeout_ms: Option<u64>,
    memory_limit: Option<Quantity>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    defaults: RawDefaults,
    /// Keys every registry module must be signed with, unless its policy
    /// names its own.
    verify: Option<RawVerify>,
    policies: Vec<RawPolicy>,
}

/// The scheme of a module kept in an OCI registry.
pub const REGISTRY_SCHEME: &str = "oci://";

/// What a registry module resolved to when the set was built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryOrigin {
    /// The manifest digest in service.
    pub manifest: String,
    /// Fingerprint of the key its signature verified with.
    pub signed_by: Option<String>,
    /// The registry was unreachable and the tag was taken as it resolved
    /// last.
    pub stale: bool,
}

/// Where a policy's module comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ModuleSource {
    /// A file (absolute, or resolved against the config's directory).
    File(PathBuf),
    /// An OCI artifact: `oci://REGISTRY/REPOSITORY:TAG` or
    /// `oci://REGISTRY/REPOSITORY@sha256:...`, as written. The server
    /// pulls it into its content store before the policy set is built.
    Registry(String),
}

impl std::fmt::Display for ModuleSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Registry(reference) => f.write_str(reference),
        }
    }
}

/// One policy as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    pub name: PolicyName,
    /// Where the module comes from, as configured.
    pub source: ModuleSource,
    /// The local file the module's bytes are read from: the configured file,
    /// or for a registry module the blob in the content store (empty until
    /// the server has resolved it).
    pub module: PathBuf,
    /// The sha256 the bytes must have: a registry module's layer digest.
    pub expected_digest: Option<String>,
    /// Public keys (PEM files) the registry module's signature must verify
    /// with; empty: no signature required.
    pub verify_keys: Vec<PathBuf>,
    /// What a registry module resolved to, filled in by the server.
    pub origin: Option<RegistryOrigin>,
    pub mode: Mode,
    pub on_error: OnError,
    pub limits: Limits,
    /// The `match` block; `None` resources mean "what the policy's metadata
    /// says it is written for".
    pub matcher: Matcher,
    /// Settings as JSON text (`{}` when none were given).
    pub settings: String,
    /// A candidate version evaluated beside this one, off the response
    /// path, whose verdicts never change an answer.
    pub shadow: Option<ShadowConfig>,
}

/// A module as configured and, once the server has resolved it, where its
/// bytes are: the same fields as a policy's own.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleSpec {
    pub source: ModuleSource,
    /// The local file its bytes are read from (empty for a registry module
    /// until resolved).
    pub module: PathBuf,
    pub expected_digest: Option<String>,
    pub verify_keys: Vec<PathBuf>,
    pub origin: Option<RegistryOrigin>,
}

impl ModuleSpec {
    fn new(source: ModuleSource, verify_keys: Vec<PathBuf>) -> Self {
        let module = match &source {
            ModuleSource::File(path) => path.clone(),
            ModuleSource::Registry(_) => PathBuf::new(),
        };
        Self {
            source,
            module,
            expected_digest: None,
            verify_keys,
            origin: None,
        }
    }
}

/// A policy's shadow candidate, resolved: the live version's module,
/// settings and limits wherever the config left them out.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowConfig {
    /// Resolved like the live module (relative to the config file, or
    /// pulled from a registry).
    pub module: ModuleSpec,
    /// Settings as JSON text.
    pub settings: String,
    pub limits: Limits,
}

impl PolicyConfig {
    /// The live module's spec.
    pub fn live_module(&self) -> ModuleSpec {
        ModuleSpec {
            source: self.source.clone(),
            module: self.module.clone(),
            expected_digest: self.expected_digest.clone(),
            verify_keys: self.verify_keys.clone(),
            origin: self.origin.clone(),
        }
    }

    /// Files whose change changes what this policy loads: module files
    /// (the live one and the candidate's) and verification keys. Registry
    /// modules are content-addressed and followed by the registry poll.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        let mut add = |source: &ModuleSource, keys: &[PathBuf]| {
            if let ModuleSource::File(path) = source {
                files.push(path.clone());
            }
            files.extend(keys.iter().cloned());
        };
        add(&self.source, &self.verify_keys);
        if let Some(shadow) = &self.shadow {
            add(&shadow.module.source, &shadow.module.verify_keys);
        }
        files
    }

    /// The candidate as a policy config of its own: the live version's
    /// name, mode, onError and match rules with the candidate's module,
    /// settings and limits. What the engine binds the candidate from.
    pub fn candidate(&self) -> Option<PolicyConfig> {
        let shadow = self.shadow.as_ref()?;
        let module = shadow.module.clone();
        Some(PolicyConfig {
            name: self.name.clone(),
            source: module.source,
            module: module.module,
            expected_digest: module.expected_digest,
            verify_keys: module.verify_keys,
            origin: module.origin,
            mode: self.mode,
            on_error: self.on_error,
            limits: shadow.limits,
            matcher: self.matcher.clone(),
            settings: shadow.settings.clone(),
            shadow: None,
        })
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    pub policies: Vec<PolicyConfig>,
}

impl Config {
    /// Reads and validates a config file.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file and what was wrong.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = crate::files::read_text_bounded(path, crate::files::MAX_CONFIG_BYTES).map_err(
            |source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            },
        )?;
        Self::parse(path, &text)
    }

    /// Parses and validates config text; `path` resolves module paths and
    /// names the file in errors.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file and what was wrong.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = serde_yaml_ng::from_str(text).map_err(|err| ConfigError::Parse {
            path: path.to_path_buf(),
            message: err.to_string(),
        })?;
        Self::from_raw(path, raw)
    }

    /// Validates `defaults` and `policies` read from `path` (a config file,
    /// or a test suite that carries its own policies).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file and what was wrong.
    pub fn from_parts(
        path: &Path,
        defaults: RawDefaults,
        policies: Vec<RawPolicy>,
    ) -> Result<Self, ConfigError> {
        Self::from_raw(
            path,
            RawConfig {
                defaults,
                verify: None,
                policies,
            },
        )
    }

    fn from_raw(path: &Path, raw: RawConfig) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let defaults = &raw.defaults;
        let default_timeout = defaults.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        check_timeout(default_timeout).map_err(|m| invalid(format!("defaults.timeoutMs: {m}")))?;
        let default_memory = defaults.memory_limit.map_or(DEFAULT_MEMORY, |q| q.0);
        check_memory(default_memory).map_err(|m| invalid(format!("defaults.memoryLimit: {m}")))?;

        let global_keys: Vec<PathBuf> = match &raw.verify {
            None => Vec::new(),
            Some(verify) if verify.keys.is_empty() => {
                return Err(invalid(
                    "verify.keys: name at least one public key file".to_string(),
                ));
            }
            Some(verify) => verify.keys.iter().map(|key| base.join(key)).collect(),
        };
        let mut seen = HashSet::new();
        let mut policies = Vec::with_capacity(raw.policies.len());
        for (index, policy) in raw.policies.into_iter().enumerate() {
            let at = format!("policies[{index}] ({})", policy.name);
            if !seen.insert(policy.name.clone()) {
                return Err(invalid(format!("{at}: duplicate policy name")));
            }
            let timeout = policy.timeout_ms.unwrap_or(default_timeout);
            check_timeout(timeout).map_err(|m| invalid(format!("{at}.timeoutMs: {m}")))?;
            let memory = policy.memory_limit.map_or(default_memory, |q| q.0);
            check_memory(memory).map_err(|m| invalid(format!("{at}.memoryLimit: {m}")))?;
            let settings = settings_text(policy.settings);
            let limits = Limits {
                timeout: Duration::from_millis(timeout),
                memory,
            };
            let matcher = matcher(policy.matching.unwrap_or_default(), policy.only_namespace)
                .map_err(|m| invalid(format!("{at}.match.{m}")))?;
            let source = module_source(base, &policy.module)
                .map_err(|m| invalid(format!("{at}.module: {m}")))?;
            // The keys a registry module of this policy (the live one or
            // its candidate) must be signed with.
            let registry_keys: Vec<PathBuf> = match &policy.verify {
                Some(verify) => verify.keys.iter().map(|key| base.join(key)).collect(),
                None => global_keys.clone(),
            };
            let verify_keys = match (&source, policy.verify) {
                (ModuleSource::File(_), Some(_)) => {
                    return Err(invalid(format!(
                        "{at}.verify: signatures are checked for {REGISTRY_SCHEME} modules only; \
                         a file is trusted as the file system delivers it"
                    )));
                }
                (ModuleSource::File(_), None) => Vec::new(),
                (ModuleSource::Registry(_), Some(verify)) => {
                    if verify.keys.is_empty() {
                        return Err(invalid(format!(
                            "{at}.verify.keys: name at least one public key file"
                        )));
                    }
                    verify.keys.iter().map(|key| base.join(key)).collect()
                }
                (ModuleSource::Registry(_), None) => global_keys.clone(),
            };
            let live = ShadowConfig {
                module: ModuleSpec::new(source, verify_keys),
                settings: settings.clone(),
                limits,
            };
            let shadow = policy
                .shadow
                .map(|raw| shadow_config(raw, base, &live, &registry_keys))
                .transpose()
                .map_err(|m| invalid(format!("{at}.shadow: {m}")))?;
            let ModuleSpec {
                source,
                module,
                expected_digest,
                verify_keys,
                origin,
            } = live.module;
            policies.push(PolicyConfig {
                name: policy.name,
                source,
                module,
                expected_digest,
                verify_keys,
                origin,
                mode: policy.mode.or(defaults.mode).unwrap_or_default(),
                on_error: policy.on_error.or(defaults.on_error).unwrap_or_default(),
                limits,
                matcher,
                settings,
                shadow,
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            policies,
        })
    }
}

/// Checks a `match` block: its selectors as the API server checks a
/// webhook's, its conditions parsed. Empty selectors and condition lists
/// select everything, so they are left out (and need nothing).
fn matcher(raw: RawMatch, only_namespace: Option<String>) -> Result<Matcher, String> {
    let selector = |field: &str, raw: Option<RawLabelSelector>| {
        raw.map(LabelSelector::parse)
            .transpose()
            .map(|selector| selector.filter(|s| !s.is_empty()))
            .map_err(|m| format!("{field}.{m}"))
    };
    let match_conditions = raw
        .match_conditions
        .filter(|conditions| !conditions.is_empty())
        .map(MatchConditions::compile)
        .transpose()
        .map_err(|m| {
            if m.starts_with('[') {
                format!("matchConditions{m}")
            } else {
                format!("matchConditions: {m}")
            }
        })?
        .map(Arc::new);
    Ok(Matcher {
        operations: raw.operations,
        resources: raw.resources,
        include_namespaces: raw.namespaces.include,
        exclude_namespaces: raw.namespaces.exclude,
        only_namespace,
        object_selector: selector("objectSelector", raw.object_selector)?,
        namespace_selector: selector("namespaceSelector", raw.namespace_selector)?,
        match_conditions,
    })
}

/// Reads a `module` value: a registry reference, or a path resolved against
/// the config's directory.
fn module_source(base: &Path, module: &str) -> Result<ModuleSource, String> {
    if let Some(rest) = module.strip_prefix(REGISTRY_SCHEME) {
        // The full grammar is checked where the reference is resolved; here
        // only what makes it unusable whatever the registry says.
        if rest.is_empty() || !rest.contains('/') || rest.chars().any(char::is_whitespace) {
            return Err(format!(
                "invalid registry reference {module:?}: expected \
                 {REGISTRY_SCHEME}REGISTRY/REPOSITORY:TAG or {REGISTRY_SCHEME}REGISTRY/REPOSITORY@sha256:DIGEST"
            ));
        }
        return Ok(ModuleSource::Registry(module.to_string()));
    }
    if module.contains("://") {
        return Err(format!(
            "unsupported module location {module:?}: use a file path or {REGISTRY_SCHEME}..."
        ));
    }
    if module.is_empty() {
        return Err("empty module path".to_string());
    }
    Ok(ModuleSource::File(base.join(module)))
}

/// Settings as the JSON text passed to the policy (`{}` when none).
fn settings_text(settings: Option<serde_json::Value>) -> String {
    match settings {
        None | Some(serde_json::Value::Null) => "{}".to_string(),
        Some(value) => value.to_string(),
    }
}

/// Resolves a shadow candidate against its live version (`live`: the
/// live module, settings and limits; `registry_keys`: what a registry
/// module of this policy must be signed with).
fn shadow_config(
    raw: RawShadow,
    base: &Path,
    live: &ShadowConfig,
    registry_keys: &[PathBuf],
) -> Result<ShadowConfig, String> {
    let limits = live.limits;
    if raw.module.is_none() && raw.settings.is_none() {
        return Err("a shadow candidate needs a `module`, `settings` or both: \
                    without either it would be the live version itself"
            .to_string());
    }
    let timeout = match raw.timeout_ms {
        Some(ms) => {
            check_timeout(ms).map_err(|m| format!("timeoutMs: {m}"))?;
            Duration::from_millis(ms)
        }
        None => limits.timeout,
    };
    let memory = match raw.memory_limit {
        Some(quantity) => {
            check_memory(quantity.0).map_err(|m| format!("memoryLimit: {m}"))?;
            quantity.0
        }
        None => limits.memory,
    };
    Ok(ShadowConfig {
        module: match raw.module {
            None => live.module.clone(),
            Some(module) => {
                let source = module_source(base, &module).map_err(|m| format!("module: {m}"))?;
                let keys = match source {
                    ModuleSource::File(_) => Vec::new(),
                    ModuleSource::Registry(_) => registry_keys.to_vec(),
                };
                ModuleSpec::new(source, keys)
            }
        },
        settings: match raw.settings {
            Some(value) => settings_text(Some(value)),
            None => live.settings.clone(),
        },
        limits: Limits { timeout, memory },
    })
}

fn check_timeout(ms: u64) -> Result<(), String> {
    if (1..=MAX_TIMEOUT_MS).contains(&ms) {
        Ok(())
    } else {
        Err(format!(
            "{ms} is out of range: expected 1 to {MAX_TIMEOUT_MS} milliseconds"
        ))
    }
}

fn check_memory(bytes: u64) -> Result<(), String> {
    if (MIN_MEMORY..=MAX_POLICY_MEMORY).contains(&bytes) {
        Ok(())
    } else {
        Err(format!(
            "{bytes} bytes is out of range: expected 2Mi to {}Mi",
            MAX_POLICY_MEMORY >> 20
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/portcullis/config.yaml"), text)
    }

    #[test]
    fn parses_a_full_config_with_defaults_applied() {
        let config = parse(
            r#"
defaults: { timeoutMs: 100, memoryLimit: 16Mi, onError: allow }
policies:
  - name: allowed-images
    module: allowed_images.wasm
    mode: warn
    match:
      operations: [CREATE, UPDATE]
      resources: [pods, deployments.apps]
      namespaces: { exclude: [kube-system] }
    settings: { allowed: ["registry.k8s.io/"] }
  - name: labels
    module: /abs/labels.wasm
    timeoutMs: 20
    memoryLimit: 64Mi
    onError: fail
"#,
        )
        .expect("valid config");
        let first = &config.policies[0];
        assert_eq!(first.name.as_str(), "allowed-images");
        assert_eq!(
            first.module,
            Path::new("/etc/portcullis/allowed_images.wasm")
        );
        assert_eq!(first.mode, Mode::Warn);
        assert_eq!(first.on_error, OnError::Allow);
        assert_eq!(first.limits.timeout, Duration::from_millis(100));
        assert_eq!(first.limits.memory, 16 << 20);
        assert_eq!(first.settings, r#"{"allowed":["registry.k8s.io/"]}"#);
        assert_eq!(first.matcher.exclude_namespaces, vec!["kube-system"]);
        let second = &config.policies[1];
        assert_eq!(second.module, Path::new("/abs/labels.wasm"));
        assert_eq!(second.on_error, OnError::Fail);
        assert_eq!(second.mode, Mode::Enforce);
        assert_eq!(second.limits.timeout, Duration::from_millis(20));
        assert_eq!(second.limits.memory, 64 << 20);
        assert_eq!(second.settings, "{}");
    }

    #[test]
    fn unknown_keys_are_rejected_with_file_and_line() {
        let err = parse("policies:\n  - name: a\n    module: a.wasm\n    colour: blue\n")
            .expect_err("unknown key");
        let message = err.to_string();
        assert!(message.contains("/etc/portcullis/config.yaml"), "{message}");
        assert!(message.contains("unknown field `colour`"), "{message}");
        assert!(message.contains("line 4"), "{message}");
    }

    #[test]
    fn bad_values_name_what_was_expected_and_where() {
        let err = parse("policies:\n  - name: a\n    module: a.wasm\n    mode: loud\n")
            .expect_err("bad mode");
        let message = err.to_string();
        assert!(message.contains("unknown variant `loud`"), "{message}");
        assert!(message.contains("enforce"), "{message}");
        assert!(message.contains("line 4"), "{message}");

        let err =
            parse("policies:\n  - name: Bad_Name\n    module: a.wasm\n").expect_err("bad name");
        assert!(
            err.to_string().contains("invalid policy name \"Bad_Name\""),
            "{err}"
        );
        assert!(err.to_string().contains("line 2"), "{err}");

        let err =
            parse("policies:\n  - name: a\n    module: a.wasm\n    memoryLimit: 12 parsecs\n")
                .expect_err("bad quantity");
        assert!(err.to_string().contains("invalid memory quantity"), "{err}");

        let err = parse(
            "policies:\n  - name: a\n    module: a.wasm\n    match: { operations: [EXPLODE] }\n",
        )
        .expect_err("bad operation");
        assert!(
            err.to_string().contains("unknown variant `EXPLODE`"),
            "{err}"
        );
    }

    #[test]
    fn out_of_range_limits_and_duplicates_are_rejected() {
        let err = parse("policies:\n  - name: a\n    module: a.wasm\n    timeoutMs: 0\n")
            .expect_err("zero timeout");
        assert!(
            err.to_string().contains("policies[0] (a).timeoutMs"),
            "{err}"
        );
        let err = parse("policies:\n  - name: a\n    module: a.wasm\n    memoryLimit: 2Gi\n")
            .expect_err("too much memory");
        assert!(err.to_string().contains("memoryLimit"), "{err}");
        let err =
            parse("policies:\n  - {name: a, module: a.wasm}\n  - {name: a, module: b.wasm}\n")
                .expect_err("duplicate");
        assert!(
            err.to_string()
                .contains("policies[1] (a): duplicate policy name"),
            "{err}"
        );
    }

    #[test]
    fn a_shadow_defaults_to_the_live_module_settings_and_limits() {
        let config = parse(
            r#"
defaults: { timeoutMs: 100 }
policies:
  - name: images
    module: images.wasm
    memoryLimit: 16Mi
    settings: { allowed: ["a/"] }
    shadow: { settings: { allowed: ["a/", "b/"] } }
  - name: labels
    module: labels.wasm
    settings: { labels: { app: null } }
    shadow: { module: v2/labels.wasm, timeoutMs: 500, memoryLimit: 64Mi }
  - name: plain
    module: plain.wasm
"#,
        )
        .expect("valid config");
        let images = config.policies[0].shadow.as_ref().expect("a candidate");
        assert_eq!(
            images.module.module,
            Path::new("/etc/portcullis/images.wasm")
        );
        assert_eq!(images.settings, r#"{"allowed":["a/","b/"]}"#);
        assert_eq!(images.limits, config.policies[0].limits);
        let labels = config.policies[1].shadow.as_ref().expect("a candidate");
        assert_eq!(
            labels.module.module,
            Path::new("/etc/portcullis/v2/labels.wasm")
        );
        assert_eq!(labels.settings, r#"{"labels":{"app":null}}"#);
        assert_eq!(labels.limits.timeout, Duration::from_millis(500));
        assert_eq!(labels.limits.memory, 64 << 20);
        assert!(config.policies[2].shadow.is_none());

        let candidate = config.policies[1].candidate().expect("a candidate");
        assert_eq!(candidate.name, config.policies[1].name);
        assert_eq!(candidate.module, labels.module.module);
        assert_eq!(candidate.source, labels.module.source);
        assert_eq!(candidate.settings, labels.settings);
        assert_eq!(candidate.limits, labels.limits);
        assert!(candidate.shadow.is_none());
        assert_eq!(
            config.policies[1].watched_files(),
            [
                PathBuf::from("/etc/portcullis/labels.wasm"),
                PathBuf::from("/etc/portcullis/v2/labels.wasm")
            ]
        );
    }

    #[test]
    fn a_shadow_must_differ_and_fit_the_schema() {
        let err =
            parse("policies:\n  - name: a\n    module: a.wasm\n    shadow: { timeoutMs: 10 }\n")
                .expect_err("a shadow that is the live version");
        let message = err.to_string();
        assert!(message.contains("policies[0] (a).shadow"), "{message}");
        assert!(
            message.contains("needs a `module`, `settings` or both"),
            "{message}"
        );

        let err = parse("policies:\n  - name: a\n    module: a.wasm\n    shadow: { settings: {}, mode: warn }\n")
            .expect_err("unknown key");
        assert!(err.to_string().contains("unknown field `mode`"), "{err}");
        assert!(err.to_string().contains("line 4"), "{err}");

        let err = parse(
            "policies:\n  - name: a\n    module: a.wasm\n    shadow: { settings: {}, timeoutMs: 0 }\n",
        )
        .expect_err("zero timeout");
        assert!(
            err.to_string()
                .contains("policies[0] (a).shadow: timeoutMs"),
            "{err}"
        );
        let err = parse(
            "policies:\n  - name: a\n    module: a.wasm\n    shadow: { module: b.wasm, memoryLimit: 2Gi }\n",
        )
        .expect_err("too much memory");
        assert!(
            err.to_string()
                .contains("policies[0] (a).shadow: memoryLimit"),
            "{err}"
        );
    }

    #[test]
    fn selectors_and_conditions_are_read_and_checked() {
        let config = parse(
            r#"
policies:
  - name: a
    module: a.wasm
    match:
      namespaceSelector:
        matchLabels: { team: a }
        matchExpressions: [{ key: env, operator: NotIn, values: [prod] }]
      objectSelector: { matchExpressions: [{ key: skip, operator: DoesNotExist }] }
      matchConditions:
        - { name: not-dry-run, expression: "!request.dryRun" }
        - { name: example.com/pods, expression: "request.resource.resource == 'pods'" }
  - name: empty
    module: b.wasm
    match: { namespaceSelector: {}, objectSelector: { matchLabels: {} }, matchConditions: [] }
"#,
        )
        .expect("valid config");
        let a = &config.policies[0].matcher;
        assert!(a.namespace_selector.is_some());
        assert!(a.object_selector.is_some());
        assert!(a.match_conditions.is_some());
        assert_eq!(a.only_namespace, None);
        // Empty selectors and lists select everything: nothing to check.
        let empty = &config.policies[1].matcher;
        assert_eq!(empty, &Matcher::default());
    }

    #[test]
    fn bad_selectors_and_conditions_are_refused_with_where_and_why() {
        let policy = |block: &str| {
            format!("policies:\n  - name: a\n    module: a.wasm\n    match:\n      {block}\n")
        };
        for (block, expected) in [
            (
                "objectSelector: { matchExpressions: [{ key: env, operator: In }] }",
                "invalid config file /etc/portcullis/config.yaml: policies[0] (a).match.objectSelector.\
                 matchExpressions[0].values: must be specified when `operator` is In or NotIn",
            ),
            (
                "namespaceSelector: { matchExpressions: [{ key: env, operator: Exists, values: [a] }] }",
                "policies[0] (a).match.namespaceSelector.matchExpressions[0].values: \
                 may not be specified when `operator` is Exists or DoesNotExist",
            ),
            (
                "namespaceSelector: { matchLabels: { \"bad key\": a } }",
                "policies[0] (a).match.namespaceSelector.matchLabels: key \"bad key\": \
                 name part must consist of",
            ),
            (
                "objectSelector: { matchExpressions: [{ key: env, operator: Is, values: [a] }] }",
                "unknown variant `Is`, expected one of `In`, `NotIn`, `Exists`, `DoesNotExist` at line 5",
            ),
            (
                "objectSelector: { matchLabel: { a: b } }",
                "unknown field `matchLabel`",
            ),
            (
                "matchConditions: [{ name: broken, expression: \"object.metadata.name ==\" }]",
                "policies[0] (a).match.matchConditions[0] (broken).expression: syntax error at 1:",
            ),
            (
                "matchConditions: [{ name: rbac, expression: \"authorizer.requestResource.check('get').allowed()\" }]",
                "policies[0] (a).match.matchConditions[0] (rbac).expression: `authorizer` is not supported",
            ),
            (
                "matchConditions: [{ name: a, expression: \"true\" }, { name: a, expression: \"true\" }]",
                "policies[0] (a).match.matchConditions[1].name: \"a\" is used twice",
            ),
            (
                "matchConditions: [{ name: \"Not Qualified\", expression: \"true\" }]",
                "policies[0] (a).match.matchConditions[0].name: \"Not Qualified\": name part",
            ),
            (
                "matchConditions: [{ name: a }]",
                "missing field `expression`",
            ),
        ] {
            let text = policy(block);
            let err = parse(&text).expect_err(block).to_string();
            assert!(err.contains(expected), "{block}:\n{err}");
        }
        let many: Vec<String> = (0..65)
            .map(|i| format!("{{ name: c{i}, expression: \"true\" }}"))
            .collect();
        let err = parse(&policy(&format!("matchConditions: [{}]", many.join(", "))))
            .expect_err("65 conditions")
            .to_string();
        assert!(
            err.contains(
                "policies[0] (a).match.matchConditions: at most 64 conditions are allowed, not 65"
            ),
            "{err}"
        );
    }

    #[test]
    fn confinement_is_set_by_the_host_not_the_file() {
        let err = parse("policies:\n  - name: a\n    module: a.wasm\n    onlyNamespace: x\n")
            .expect_err("not a config key");
        assert!(
            err.to_string().contains("unknown field `onlyNamespace`"),
            "{err}"
        );
        let mut raw: RawPolicy = serde_json::from_value(serde_json::json!({
            "name": "tenant-policy", "module": "a.wasm",
            "match": { "namespaces": { "include": ["other"] } }
        }))
        .expect("valid entry");
        raw.confine_to_namespace("tenant");
        let config = Config::from_parts(
            Path::new("admissionpolicies"),
            RawDefaults::default(),
            vec![raw],
        )
        .expect("valid");
        let matcher = &config.policies[0].matcher;
        assert_eq!(matcher.only_namespace.as_deref(), Some("tenant"));
        assert_eq!(matcher.include_namespaces, vec!["other"]);
    }

    #[test]
    fn quantities() {
        assert_eq!(Quantity::parse("32Mi"), Ok(Quantity(32 << 20)));
        assert_eq!(Quantity::parse("1Gi"), Ok(Quantity(1 << 30)));
        assert_eq!(Quantity::parse("64M"), Ok(Quantity(64_000_000)));
        assert_eq!(Quantity::parse("4096"), Ok(Quantity(4096)));
        assert_eq!(Quantity::parse("1.5Gi"), Ok(Quantity(3 << 29)));
        assert_eq!(Quantity::parse("1Ti"), Ok(Quantity(1 << 40)));
        assert!(Quantity::parse("Mi").is_err());
        assert!(Quantity::parse("-1Mi").is_err());
        assert!(Quantity::parse("99999999999999999999Gi").is_err());
    }

    #[test]
    fn registry_modules_and_their_keys() {
        let config = parse(
            "verify: { keys: [keys/all.pub] }\npolicies:\n\
             - { name: a, module: a.wasm }\n\
             - { name: b, module: \"oci://registry.example:5000/p/b:v1\" }\n\
             - { name: c, module: \"oci://registry.example/p/c@sha256:00\", verify: { keys: [/k/c.pub] } }\n",
        )
        .expect("valid config");
        let [a, b, c] = &config.policies[..] else {
            panic!("three policies")
        };
        assert_eq!(
            a.source,
            ModuleSource::File(PathBuf::from("/etc/portcullis/a.wasm"))
        );
        assert!(a.verify_keys.is_empty(), "files are not verified");
        assert_eq!(
            b.source,
            ModuleSource::Registry("oci://registry.example:5000/p/b:v1".to_string())
        );
        assert_eq!(b.module, PathBuf::new(), "resolved by the server");
        assert_eq!(
            b.verify_keys,
            vec![PathBuf::from("/etc/portcullis/keys/all.pub")]
        );
        assert_eq!(c.verify_keys, vec![PathBuf::from("/k/c.pub")]);
        assert_eq!(b.source.to_string(), "oci://registry.example:5000/p/b:v1");
    }

    #[test]
    fn bad_module_locations_and_verify_blocks_are_refused() {
        for (text, expected) in [
            (
                "policies:\n  - { name: a, module: \"oci://\" }\n",
                "invalid registry reference",
            ),
            (
                "policies:\n  - { name: a, module: \"oci://nohost\" }\n",
                "invalid registry reference",
            ),
            (
                "policies:\n  - { name: a, module: \"https://x/y.wasm\" }\n",
                "unsupported module location",
            ),
            (
                "policies:\n  - { name: a, module: \"\" }\n",
                "empty module path",
            ),
            (
                "policies:\n  - { name: a, module: a.wasm, verify: { keys: [k.pub] } }\n",
                "signatures are checked for oci:// modules only",
            ),
            (
                "policies:\n  - { name: a, module: \"oci://r.example/a:v1\", verify: { keys: [] } }\n",
                "name at least one public key file",
            ),
            ("verify: { keys: [] }\npolicies: []\n", "verify.keys"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.to_string().contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn empty_and_missing_files_are_errors() {
        assert!(parse("").is_err());
        let err = Config::load(Path::new("/nonexistent/portcullis.yaml")).expect_err("missing");
        assert!(
            err.to_string().contains("/nonexistent/portcullis.yaml"),
            "{err}"
        );
    }
}
