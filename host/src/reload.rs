//! Reloading: build a complete new policy set off the request path, then
//! swap it in whole. A set that fails to build is never swapped in; the old
//! one keeps serving and the failure is recorded until a later success.
//!
//! Start-up uses the same path: the first reload.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::cluster_policies::{ClusterError, ClusterPolicies};
use crate::metrics::Metrics;
use crate::registry::{ModuleResolver, ResolveError, TrackedTag};
use crate::watch::Fingerprint;
use portcullis_engine::{Config, ConfigError, Report};
use portcullis_engine::{LoadFailure, PolicyStore};
use portcullis_engine::{ModuleCache, PolicySet, SetError};
use portcullis_engine::{PolicyConfig, PolicyEngine};

/// Compiled modules kept beyond those in service, for rollbacks.
const SPARE_MODULES: usize = 16;

/// Most registry polls skipped between retries of a refused module.
const MAX_POLL_BACKOFF: u32 = 16;

/// The registry check's memory of the tags it last reloaded for.
#[derive(Debug)]
struct Polled {
    manifests: Vec<String>,
    /// The reload it asked for failed.
    failed: bool,
    /// Polls to skip before trying the same refused module again, and the
    /// pause it grows from.
    skip: u32,
    backoff: u32,
}

/// Why a reload did not swap.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Policies(#[from] SetError),
    #[error(transparent)]
    Registry(#[from] ResolveError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("policy {0:?} is declared both in the config file and as a ClusterAdmissionPolicy")]
    Duplicate(String),
}

/// What a successful reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// A new generation is in service.
    Swapped { generation: u64 },
    /// The files changed but the policies did not; nothing was swapped.
    Unchanged { generation: u64 },
}

/// Builds and swaps policy sets. One per server; reloads never overlap
/// because only its control loop calls [`Reloader::reload`].
pub struct Reloader {
    engine: Arc<PolicyEngine>,
    config_path: PathBuf,
    store: Arc<PolicyStore>,
    metrics: Arc<Metrics>,
    cache: ModuleCache,
    resolver: ModuleResolver,
    /// The cluster's `ClusterAdmissionPolicy` resources, when watched.
    cluster: Option<ClusterPolicies>,
    /// Registry tags the newest successful reload resolved.
    tags: Vec<TrackedTag>,
    /// The newest reload failed for a reason that may pass (a registry
    /// that could not be reached): the registry check retries it.
    retry_registry: bool,
    /// What the tags named when the registry check last asked for a
    /// reload, and how that went.
    polled: Option<Polled>,
    /// Files whose change should trigger a reload: the config and every
    /// module the newest parsable config names (even if it failed to load,
    /// so that fixing a missing file is noticed).
    watched: Vec<PathBuf>,
    /// The watched files as they were just before the newest reload read
    /// them.
    read_fingerprint: Fingerprint,
}

impl Reloader {
    pub fn new(
        engine: Arc<PolicyEngine>,
        config_path: PathBuf,
        store: Arc<PolicyStore>,
        metrics: Arc<Metrics>,
        resolver: ModuleResolver,
        cluster: Option<ClusterPolicies>,
    ) -> Self {
        let watched = vec![config_path.clone()];
        Self {
            engine,
            config_path,
            store,
            metrics,
            cache: ModuleCache::new(SPARE_MODULES),
            resolver,
            cluster,
            tags: Vec::new(),
            retry_registry: false,
            polled: None,
            watched,
            read_fingerprint: Fingerprint::default(),
        }
    }

    /// The files to watch.
    pub fn watched(&self) -> &[PathBuf] {
        &self.watched
    }

    /// Whether a watched file changed since the newest reload read it: a
    /// change made while the reload ran (before its new directories were
    /// watched) would otherwise be lost.
    pub fn changed_since_read(&self) -> bool {
        Fingerprint::of(&self.watched) != self.read_fingerprint
    }

    /// Wakes when the cluster's policy resources change; `None` when they
    /// are not watched.
    pub fn cluster_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.cluster.as_ref().map(ClusterPolicies::changes)
    }

    /// How often registry tags are checked; `None`: never.
    pub fn registry_poll_interval(&self) -> Option<std::time::Duration> {
        self.resolver.poll_interval()
    }

    /// Whether a reload is due because of the registry: a tag in service
    /// moved, or the newest reload could not reach a registry.
    pub async fn registry_changed(&mut self) -> bool {
        if self.retry_registry {
            return true;
        }
        let Some(now) = self.resolver.tags_moved(&self.tags).await else {
            return false;
        };
        if let Some(polled) = &mut self.polled
            && polled.manifests == now
            && polled.failed
        {
            // The same refused module (unsigned, broken): try again with
            // a growing pause, so a signature added after the push is
            // still found but the log is not flooded.
            if polled.skip > 0 {
                polled.skip -= 1;
                return false;
            }
            polled.backoff = (polled.backoff * 2).clamp(1, MAX_POLL_BACKOFF);
            polled.skip = polled.backoff;
        } else {
            self.polled = Some(Polled {
                manifests: now.clone(),
                failed: false,
                backoff: 0,
                skip: 0,
            });
        }
        tracing::info!(manifests = %now.join(","), "registry tags moved; reloading");
        true
    }

    /// Reads the config and every module, builds a complete new set and,
    /// if it differs from the one in service, swaps it in.
    ///
    /// # Errors
    /// A [`ReloadError`]; the set in service is then untouched.
    pub async fn reload(&mut self) -> Result<ReloadOutcome, ReloadError> {
        let started = Instant::now();
        let result = self.try_reload().await;
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        let now = SystemTime::now();
        match &result {
            Ok(ReloadOutcome::Swapped { generation }) => {
                tracing::info!(generation, elapsed_ms, "policy set swapped in");
                self.metrics.reload("success");
            }
            Ok(ReloadOutcome::Unchanged { generation }) => {
                tracing::info!(generation, elapsed_ms, "files changed but policies did not");
                self.metrics.reload("unchanged");
            }
            Err(error) => {
                tracing::error!(error = %Report(error), elapsed_ms, "reload failed; the previous policy set keeps serving");
                self.metrics.reload("failure");
            }
        }
        self.metrics
            .last_reload_failed
            .set(i64::from(result.is_err()));
        self.retry_registry =
            matches!(&result, Err(ReloadError::Registry(error)) if error.is_transient());
        if let Some(polled) = &mut self.polled {
            polled.failed = result.is_err();
        }
        self.store.update_status(|status| {
            status.last_attempt = Some(now);
            match &result {
                Ok(ReloadOutcome::Swapped { .. }) => {
                    status.succeeded += 1;
                    status.last_error = None;
                }
                Ok(ReloadOutcome::Unchanged { .. }) => {
                    status.unchanged += 1;
                    status.last_error = None;
                }
                Err(error) => {
                    status.failed += 1;
                    status.last_error = Some(LoadFailure {
                        at: now,
                        policy: match error {
                            ReloadError::Policies(set) => Some(set.policy.clone()),
                            ReloadError::Registry(resolve) => resolve.policy().map(str::to_string),
                            ReloadError::Duplicate(name) => Some(name.clone()),
                            ReloadError::Config(_) | ReloadError::Cluster(_) => None,
                        },
                        message: Report(error).to_string(),
                    });
                }
            }
        });
        result
    }

    async fn try_reload(&mut self) -> Result<ReloadOutcome, ReloadError> {
        // Stat before reading: whatever changes after this is caught by the
        // fingerprint check, even if no event reports it.
        let config_fingerprint = Fingerprint::of(std::slice::from_ref(&self.config_path));
        let mut config = match Config::load(&self.config_path) {
            Ok(config) => config,
            Err(error) => {
                self.read_fingerprint = Fingerprint::of(&self.watched);
                return Err(error.into());
            }
        };
        // Module files and verification keys are watched; registry
        // modules are content-addressed and checked by the registry poll.
        self.watched = std::iter::once(self.config_path.clone())
            .chain(config.policies.iter().flat_map(PolicyConfig::watched_files))
            .collect();
        let modules_fingerprint = Fingerprint::of(&self.watched[1..]);
        self.read_fingerprint = config_fingerprint.then(modules_fingerprint);
        // The cluster's resources follow the file's policies (mutators
        // run in that order).
        if let Some(cluster) = self
            .cluster
            .as_ref()
            .map(ClusterPolicies::config)
            .transpose()?
            .flatten()
        {
            for policy in cluster.policies {
                if config.policies.iter().any(|p| p.name == policy.name) {
                    return Err(ReloadError::Duplicate(policy.name.to_string()));
                }
                config.policies.push(policy);
            }
        }
        let tags = self.resolver.resolve(&mut config).await?;
        let current = self.store.current();
        let generation = current.generation + 1;
        let (set, stats) =
            PolicySet::build(&self.engine, &config, generation, &mut self.cache).await?;
        self.metrics.module_compilations.inc_by(stats.compiled);
        self.metrics.module_reuses.inc_by(stats.reused);
        self.metrics.module_disk_cache_hits.inc_by(stats.from_disk);
        self.store.update_status(|status| {
            status.modules_compiled += stats.compiled;
            status.modules_reused += stats.reused;
            status.modules_from_disk_cache += stats.from_disk;
        });
        // A first load always swaps, even an empty set: it makes the
        // server ready.
        self.tags = tags;
        if current.generation > 0 && current.same_policies(&set) {
            self.cache.prune(&current.digests());
            return Ok(ReloadOutcome::Unchanged {
                generation: current.generation,
            });
        }
        for policy in set.policies() {
            tracing::info!(
                generation,
                policy = %policy.name,
                module = %policy.source,
                digest = %policy.module.digest,
                validates = policy.metadata.validates,
                mutates = policy.metadata.mutates,
                from_disk_cache = policy.module.from_disk_cache,
                "policy loaded"
            );
        }
        let removed: Vec<&str> = current
            .policies()
            .iter()
            .map(|p| &*p.name)
            .filter(|name| set.get(name).is_none())
            .collect();
        if current.generation > 0 && !removed.is_empty() {
            // Removing policies is a reason to look twice: a config written
            // in place and read half-done looks exactly like this.
            tracing::warn!(
                generation,
                removed = %removed.join(","),
                "the new config removes policies; they no longer judge any request"
            );
        }
        let in_use = set.digests();
        self.metrics.generation.set(generation as i64);
        self.metrics
            .policies_loaded
            .set(set.policies().len() as i64);
        self.store.swap(set);
        self.cache.prune(&in_use);
        Ok(ReloadOutcome::Swapped { generation })
    }
}
