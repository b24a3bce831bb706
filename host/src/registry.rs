//! Registry modules: before a policy set is built, every `oci://` module
//! of the config is resolved to a verified file in the content store (see
//! the `portcullis-oci` crate), and the control loop asks the registry now
//! and then whether a tag has moved.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use portcullis_engine::{Config, ModuleSource, ModuleSpec, RegistryOrigin, Report};
use portcullis_oci::{
    Credentials, CredentialsError, KeyError, PolicyRef, PublicKey, ReferenceError, Registry,
    RegistryError, RegistryOptions, Resolved,
};

/// How the server reaches registries.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// Blobs and resolutions kept across starts.
    pub store_dir: PathBuf,
    /// A Docker `config.json`; read at every reload, so a rotated Secret
    /// is picked up.
    pub credentials: Option<PathBuf>,
    /// PEM certificates to trust besides the system's.
    pub ca_bundle: Option<PathBuf>,
    /// Registries spoken to over plain HTTP.
    pub plain_http: Vec<String>,
    pub timeout: Duration,
    /// How often tags are asked for again; `None`: never.
    pub poll_interval: Option<Duration>,
}

impl Default for RegistrySettings {
    /// The default store, anonymous HTTPS with the system's roots, 30 s
    /// per request, no polling.
    fn default() -> Self {
        Self {
            store_dir: default_store_dir(),
            credentials: None,
            ca_bundle: None,
            plain_http: Vec::new(),
            timeout: Duration::from_secs(30),
            poll_interval: None,
        }
    }
}

/// Why a registry module could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("policy {policy:?}: invalid module reference")]
    Reference {
        policy: String,
        #[source]
        source: ReferenceError,
    },
    #[error("policy {policy:?}: cannot use the verification key")]
    Key {
        policy: String,
        #[source]
        source: KeyError,
    },
    #[error("policy {policy:?}: cannot pull its module")]
    Registry {
        policy: String,
        #[source]
        source: RegistryError,
    },
    #[error("cannot use the registry settings")]
    Credentials(#[source] CredentialsError),
    #[error("cannot read the registry CA bundle {}", .path.display())]
    CaBundle {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ResolveError {
    /// The policy it concerns, if one.
    pub fn policy(&self) -> Option<&str> {
        match self {
            Self::Reference { policy, .. }
            | Self::Key { policy, .. }
            | Self::Registry { policy, .. } => Some(policy),
            Self::Credentials(_) | Self::CaBundle { .. } => None,
        }
    }

    /// Whether trying again later may succeed without a config change.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Registry {
                source: RegistryError::Unreachable { .. } | RegistryError::TimedOut { .. },
                ..
            }
        )
    }
}

/// A tag in service and the manifest it resolved to.
#[derive(Debug, Clone)]
pub struct TrackedTag {
    pub reference: PolicyRef,
    pub manifest: String,
    /// It was taken from the store because the registry was unreachable.
    pub stale: bool,
}

/// Resolves registry modules with the settings.
#[derive(Debug, Clone)]
pub struct ModuleResolver {
    settings: RegistrySettings,
}

impl ModuleResolver {
    pub fn new(settings: RegistrySettings) -> Self {
        Self { settings }
    }

    pub fn poll_interval(&self) -> Option<Duration> {
        self.settings.poll_interval
    }

    /// A client with the current credentials and CA bundle.
    ///
    /// # Errors
    /// When the credentials or the CA bundle cannot be read.
    pub fn registry(&self) -> Result<Registry, ResolveError> {
        let credentials = match &self.settings.credentials {
            // An optional Secret that does not exist: no logins.
            Some(path) if !path.exists() => Credentials::anonymous(),
            Some(path) => Credentials::load(path).map_err(ResolveError::Credentials)?,
            None => Credentials::anonymous(),
        };
        let ca_bundle =
            match &self.settings.ca_bundle {
                Some(path) => Some(portcullis_engine::read_bounded(path, 1 << 20).map_err(
                    |err| ResolveError::CaBundle {
                        path: path.clone(),
                        source: std::io::Error::other(Report(&err).to_string()),
                    },
                )?),
                None => None,
            };
        Ok(Registry::new(RegistryOptions {
            store_dir: self.settings.store_dir.clone(),
            credentials,
            ca_bundle,
            plain_http: self.settings.plain_http.clone(),
            timeout: self.settings.timeout,
            max_module_bytes: portcullis_engine::MAX_MODULE_BYTES,
        }))
    }

    /// Pulls (or finds in the store) every registry module of `config` (a
    /// policy's and its shadow candidate's) and points it at the verified
    /// file. Returns the tags resolved.
    ///
    /// # Errors
    /// The first policy whose module could not be resolved.
    pub async fn resolve(&self, config: &mut Config) -> Result<Vec<TrackedTag>, ResolveError> {
        let is_registry = |spec: &ModuleSpec| matches!(spec.source, ModuleSource::Registry(_));
        let any = config.policies.iter().any(|p| {
            is_registry(&p.live_module())
                || p.shadow.as_ref().is_some_and(|s| is_registry(&s.module))
        });
        if !any {
            return Ok(Vec::new());
        }
        let mut run = Resolution {
            registry: self.registry()?,
            resolved: HashMap::new(),
            tags: Vec::new(),
        };
        for policy in &mut config.policies {
            let name = policy.name.to_string();
            let mut live = policy.live_module();
            run.resolve(&name, &mut live).await?;
            policy.module = live.module;
            policy.expected_digest = live.expected_digest;
            policy.origin = live.origin;
            if let Some(shadow) = &mut policy.shadow {
                run.resolve(&name, &mut shadow.module).await?;
            }
        }
        Ok(run.tags)
    }

    /// What the tags in service name now, if any moved (or a stale tag's
    /// registry answers again); `None` when nothing changed. A registry
    /// that cannot be asked counts as unchanged (it is logged).
    pub async fn tags_moved(&self, tags: &[TrackedTag]) -> Option<Vec<String>> {
        if tags.is_empty() {
            return None;
        }
        let registry = match self.registry() {
            Ok(registry) => registry,
            Err(error) => {
                tracing::warn!(error = %Report(&error), "cannot check registry tags");
                return None;
            }
        };
        let mut now = Vec::with_capacity(tags.len());
        let mut moved = false;
        for tag in tags {
            match registry.current_digest(&tag.reference).await {
                Ok(digest) => {
                    if digest != tag.manifest || tag.stale {
                        tracing::debug!(
                            reference = %tag.reference,
                            from = %tag.manifest,
                            to = %digest,
                            "registry tag moved"
                        );
                        moved = true;
                    }
                    now.push(digest);
                }
                Err(error) => {
                    tracing::warn!(reference = %tag.reference, error = %Report(&error), "cannot check a registry tag; the module in service stays");
                    return None;
                }
            }
        }
        moved.then_some(now)
    }
}

/// One reload's resolutions: each reference (with its keys) is asked for
/// once, however many policies name it.
struct Resolution {
    registry: Registry,
    resolved: HashMap<(String, Vec<PathBuf>), Resolved>,
    tags: Vec<TrackedTag>,
}

impl Resolution {
    /// Points `spec`, if it is a registry module, at its verified file.
    async fn resolve(&mut self, policy: &str, spec: &mut ModuleSpec) -> Result<(), ResolveError> {
        let ModuleSource::Registry(text) = &spec.source else {
            return Ok(());
        };
        let reference: PolicyRef = text.parse().map_err(|source| ResolveError::Reference {
            policy: policy.to_string(),
            source,
        })?;
        let key = (text.clone(), spec.verify_keys.clone());
        let result = match self.resolved.get(&key) {
            Some(result) => result.clone(),
            None => {
                let keys = spec
                    .verify_keys
                    .iter()
                    .map(|path| PublicKey::load(path))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|source| ResolveError::Key {
                        policy: policy.to_string(),
                        source,
                    })?;
                let started = std::time::Instant::now();
                let result = self
                    .registry
                    .resolve(&reference, &keys)
                    .await
                    .map_err(|source| ResolveError::Registry {
                        policy: policy.to_string(),
                        source,
                    })?;
                tracing::info!(
                    policy,
                    reference = %reference,
                    manifest = %result.manifest,
                    signed_by = result.verified_with.as_deref().unwrap_or("-"),
                    contacted_registry = result.contacted_registry,
                    stale = result.stale,
                    elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "registry module resolved"
                );
                if reference.tag().is_some() {
                    self.tags.push(TrackedTag {
                        reference: reference.clone(),
                        manifest: result.manifest.clone(),
                        stale: result.stale,
                    });
                }
                self.resolved.insert(key, result.clone());
                result
            }
        };
        spec.module = result.path.clone();
        spec.expected_digest = Some(result.layer.clone());
        spec.origin = Some(RegistryOrigin {
            manifest: result.manifest.clone(),
            signed_by: result.verified_with.clone(),
            stale: result.stale,
        });
        Ok(())
    }
}

/// The default content store: `$XDG_CACHE_HOME/portcullis/registry`, else
/// `$HOME/.cache/portcullis/registry`, else under the temporary directory.
pub fn default_store_dir() -> PathBuf {
    portcullis_engine::default_cache_dir()
        .and_then(|modules| modules.parent().map(|base| base.join("registry")))
        .unwrap_or_else(|| std::env::temp_dir().join("portcullis-registry"))
}
