//! Reloading: build a complete new policy set off the request path, then
//! swap it in whole. A set that fails to build is never swapped in; the old
//! one keeps serving and the failure is recorded until a later success.
//!
//! Start-up uses the same path: the first reload.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use std::collections::{BTreeMap, HashMap};

use tokio::sync::watch;

use crate::cluster_policies::{ClusterEntry, ClusterPolicies, PolicyKey};
use crate::metrics::Metrics;
use crate::registry::{ModuleResolver, ResolveError, TrackedTag};
use crate::replica::{FILE_POLICY_PREFIX, PolicyReport, Refusal, Reports, ServedVersion};
use crate::watch::Fingerprint;
use portcullis_engine::{Config, ConfigError, Report};
use portcullis_engine::{LoadError, Mode, OnError, Policy, PolicyConfig, PolicyEngine};
use portcullis_engine::{LoadFailure, PolicyStore};
use portcullis_engine::{ModuleCache, PolicySet, SetError};

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
    /// The newest version of each cluster policy resource that built: what
    /// serves while a newer one is refused.
    last_good: HashMap<PolicyKey, Chosen>,
    /// What each cluster policy resource has in service, by key, for the
    /// replica's lease.
    reports: watch::Sender<Arc<BTreeMap<String, PolicyReport>>>,
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
            last_good: HashMap::new(),
            reports: watch::Sender::new(Arc::default()),
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

    /// What each cluster policy resource has in service, updated by every
    /// reload that gets as far as building.
    pub fn reports(&self) -> Reports {
        self.reports.subscribe()
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
                            ReloadError::Config(_) => None,
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
        let config = match Config::load(&self.config_path) {
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
        // run in that order). Each is tried on its own: one that does not
        // build is refused and its last good version kept, without holding
        // back the others.
        let entries = self
            .cluster
            .as_ref()
            .map(ClusterPolicies::entries)
            .unwrap_or_default();
        let mut refused: HashMap<PolicyKey, Refusal> = HashMap::new();
        let mut chosen: Vec<Chosen> = Vec::with_capacity(entries.len());
        for entry in &entries {
            let name_taken = |name: &str| config.policies.iter().any(|p| p.name.as_str() == name);
            match &entry.policy {
                Ok(policy) if name_taken(policy.name.as_str()) => {
                    refused.insert(
                        entry.key.clone(),
                        refusal(
                            entry.generation,
                            "NameConflict",
                            format!(
                                "a policy named {:?} is already declared in the config file {}",
                                policy.name.as_str(),
                                self.config_path.display()
                            ),
                        ),
                    );
                }
                Ok(policy) => chosen.push(Chosen {
                    key: entry.key.clone(),
                    uid: entry.uid.clone(),
                    generation: entry.generation,
                    config: policy.clone(),
                }),
                Err(message) => {
                    refused.insert(
                        entry.key.clone(),
                        refusal(entry.generation, "InvalidSpec", message.clone()),
                    );
                    if let Some(last) = self.last_good.get(&entry.key)
                        && last.uid == entry.uid
                    {
                        chosen.push(last.clone());
                    }
                }
            }
        }
        let (tags, set, stats) = loop {
            let mut attempt = config.clone();
            attempt
                .policies
                .extend(chosen.iter().map(|c| c.config.clone()));
            let failed = match self.resolver.resolve(&mut attempt).await {
                Ok(tags) => {
                    let generation = self.store.current().generation + 1;
                    match PolicySet::build(&self.engine, &attempt, generation, &mut self.cache)
                        .await
                    {
                        Ok((set, stats)) => break (tags, set, stats),
                        Err(error) => match position(&chosen, Some(&error.policy)) {
                            Some(at) => (at, refusal_reason(&error), Report(&error).to_string()),
                            None => return Err(error.into()),
                        },
                    }
                }
                Err(error) => match position(&chosen, error.policy()) {
                    Some(at) => {
                        let reason = if error.is_transient() {
                            "RegistryUnreachable"
                        } else {
                            "ModuleRefused"
                        };
                        (at, reason, Report(&error).to_string())
                    }
                    None => return Err(error.into()),
                },
            };
            let (at, reason, message) = failed;
            let failing = chosen.remove(at);
            tracing::error!(
                policy = %failing.key,
                generation = failing.generation,
                reason,
                error = %message,
                "policy resource refused; its last good version keeps serving"
            );
            let current = entries
                .iter()
                .any(|e| e.key == failing.key && e.generation == failing.generation);
            if current {
                refused.insert(
                    failing.key.clone(),
                    refusal(failing.generation, reason, message),
                );
                if let Some(last) = self.last_good.get(&failing.key)
                    && last.uid == failing.uid
                    && last.generation != failing.generation
                {
                    chosen.insert(at, last.clone());
                }
            }
        };
        let current = self.store.current();
        let generation = current.generation + 1;
        let reports = self.cluster_reports(&config, &entries, &chosen, &set, refused);
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
            self.reports.send_replace(reports);
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
        self.reports.send_replace(reports);
        self.cache.prune(&in_use);
        Ok(ReloadOutcome::Swapped { generation })
    }

    /// What each cluster policy resource now has in service, or why its
    /// newest generation is not, for the replica's lease; remembers the
    /// versions that built as the last good ones.
    fn cluster_reports(
        &mut self,
        file: &Config,
        entries: &[ClusterEntry],
        chosen: &[Chosen],
        set: &PolicySet,
        mut refused: HashMap<PolicyKey, Refusal>,
    ) -> Arc<BTreeMap<String, PolicyReport>> {
        self.last_good
            .retain(|key, last| entries.iter().any(|e| &e.key == key && e.uid == last.uid));
        for chosen in chosen {
            self.last_good.insert(chosen.key.clone(), chosen.clone());
        }
        // The config file's policies too: the controller's webhook rules
        // must send them requests as well.
        let files = file.policies.iter().filter_map(|config| {
            let policy = set.get(config.name.as_str())?;
            let report = PolicyReport {
                served: Some(served_version(0, policy)),
                ..PolicyReport::default()
            };
            Some((format!("{FILE_POLICY_PREFIX}{}", config.name), report))
        });
        let reports = entries
            .iter()
            .map(|entry| {
                let served = chosen
                    .iter()
                    .find(|c| c.key == entry.key)
                    .and_then(|c| Some((c, set.get(c.config.name.as_str())?)))
                    .map(|(chosen, policy)| served_version(chosen.generation, policy));
                let refused = refused
                    .remove(&entry.key)
                    .filter(|r| served.as_ref().is_none_or(|s| s.generation < r.generation));
                let report = PolicyReport {
                    uid: entry.uid.clone(),
                    served,
                    refused,
                };
                (entry.key.to_string(), report)
            })
            .chain(files)
            .collect::<BTreeMap<String, PolicyReport>>();
        let refused = reports.values().filter(|r| r.refused.is_some()).count();
        self.metrics
            .cluster_policies_refused
            .set(i64::try_from(refused).unwrap_or(i64::MAX));
        Arc::new(reports)
    }
}

/// A version of a policy resource tried in a reload.
#[derive(Debug, Clone)]
struct Chosen {
    key: PolicyKey,
    uid: String,
    generation: i64,
    config: PolicyConfig,
}

/// Which of the resources tried is the policy an error names.
fn position(chosen: &[Chosen], policy: Option<&str>) -> Option<usize> {
    let policy = policy?;
    chosen.iter().position(|c| c.config.name.as_str() == policy)
}

fn refusal(generation: i64, reason: &str, message: String) -> Refusal {
    Refusal {
        generation,
        reason: reason.to_string(),
        message,
    }
}

/// The `Degraded` reason for a policy that did not build.
fn refusal_reason(error: &SetError) -> &'static str {
    match &error.error {
        LoadError::SettingsRejected(_) | LoadError::SettingsCall(_) | LoadError::Prepare(_) => {
            "SettingsRejected"
        }
        LoadError::Read(_) => "ModuleUnreadable",
        LoadError::OverBudget { .. } => "LimitsInvalid",
        LoadError::DigestMismatch { .. } | LoadError::Unresolved => "ModuleRefused",
        _ => "ModuleInvalid",
    }
}

/// How a policy in service is reported: its version, and what the webhook
/// configuration must send it.
fn served_version(generation: i64, policy: &Policy) -> ServedVersion {
    let operations = match &policy.matcher.operations {
        Some(operations) => operations.iter().map(|o| o.as_str().to_string()).collect(),
        None => vec!["*".to_string()],
    };
    let resources = match &policy.matcher.resources {
        Some(resources) => resources.iter().cloned().map(String::from).collect(),
        None => vec!["*".to_string()],
    };
    ServedVersion {
        generation,
        digest: policy.module.digest.clone(),
        manifest: policy.origin.as_ref().map(|o| o.manifest.clone()),
        mutates: policy.metadata.mutates,
        validates: policy.metadata.validates,
        operations,
        resources,
        timeout_ms: u64::try_from(policy.limits.timeout.as_millis()).unwrap_or(u64::MAX),
        fail_closed: policy.mode == Mode::Enforce && policy.on_error != OnError::Allow,
    }
}
