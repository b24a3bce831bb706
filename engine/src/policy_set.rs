//! The policy set: one immutable snapshot of every loaded policy, with its
//! generation. A request takes the current snapshot once and is answered
//! entirely by it; a reload builds a whole new snapshot and swaps it in.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::{Config, ModuleSource, ModuleSpec};
use crate::engine::PolicyEngine;
use crate::files;
use crate::module::{self, CompiledModule, ModuleError};
use crate::policy::{LoadError, Policy};

/// One generation of policies. Never changed after it is built.
#[derive(Debug)]
pub struct PolicySet {
    pub generation: u64,
    pub loaded_at: SystemTime,
    /// In config order: the order mutations run in.
    policies: Vec<Arc<Policy>>,
}

/// A policy that failed to load, with its name and where its module came
/// from (a path or a registry reference).
#[derive(Debug, thiserror::Error)]
#[error(
    "policy {policy:?}{} (module {module})",
    if *candidate { ", its shadow candidate" } else { "" }
)]
pub struct SetError {
    pub policy: String,
    pub module: ModuleSource,
    /// Whether it is the policy's shadow candidate that failed.
    pub candidate: bool,
    #[source]
    pub error: LoadError,
}

/// One module a config names: a policy's (by index), or its candidate's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
struct ModuleRef {
    policy: usize,
    candidate: bool,
}

impl PolicySet {
    /// A set with no policies (everything is allowed).
    pub fn empty(generation: u64) -> Self {
        Self {
            generation,
            loaded_at: SystemTime::now(),
            policies: Vec::new(),
        }
    }

    /// Loads every policy of `config`. Modules whose sha256 is in `cache`
    /// are not recompiled; new ones are compiled and added to it. Either
    /// every policy loads or the set is not built.
    ///
    /// # Errors
    /// The first policy that failed, by name and path, with its cause.
    pub async fn build(
        engine: &Arc<PolicyEngine>,
        config: &Config,
        generation: u64,
        cache: &mut ModuleCache,
    ) -> Result<(Self, BuildStats), SetError> {
        let fail = |module: ModuleRef, error: LoadError| {
            let policy = &config.policies[module.policy];
            let (spec, candidate) = match (module.candidate, &policy.shadow) {
                (true, Some(shadow)) => (shadow.module.clone(), true),
                _ => (policy.live_module(), false),
            };
            SetError {
                policy: policy.name.to_string(),
                module: spec.source,
                candidate,
                error,
            }
        };
        let mut stats = BuildStats::default();

        // Every module to load: each policy's, then its candidate's.
        let modules: Vec<(ModuleRef, ModuleSpec)> = config
            .policies
            .iter()
            .enumerate()
            .flat_map(|(policy, policy_config)| {
                let live = (
                    ModuleRef {
                        policy,
                        candidate: false,
                    },
                    policy_config.live_module(),
                );
                let candidate = policy_config.shadow.as_ref().map(|shadow| {
                    let module = ModuleRef {
                        policy,
                        candidate: true,
                    };
                    (module, shadow.module.clone())
                });
                std::iter::once(live).chain(candidate)
            })
            .collect();

        // Read every module, then compile each new digest once, all at once:
        // componentizing and Cranelift are CPU-bound, so they run on the
        // blocking pool, off the threads that serve requests.
        let mut digests: HashMap<ModuleRef, String> = HashMap::with_capacity(modules.len());
        let mut compiling = tokio::task::JoinSet::new();
        for (module, spec) in &modules {
            let module = *module;
            let (bytes, digest) = read_module(spec).await.map_err(|err| fail(module, err))?;
            if !digests.values().any(|seen| *seen == digest) {
                if cache.contains(&digest) {
                    stats.reused += 1;
                } else {
                    let engine = engine.clone();
                    compiling.spawn_blocking(move || (module, compile_guarded(&engine, &bytes)));
                }
            }
            digests.insert(module, digest);
        }
        while let Some(joined) = compiling.join_next().await {
            // A task that died cannot say whose module it had: name the
            // first policy's, as before.
            let (module, result) =
                joined.map_err(|err| fail(ModuleRef::default(), LoadError::Task(err)))?;
            let compiled = result.map_err(|err| fail(module, LoadError::Module(err)))?;
            if compiled.from_disk_cache {
                stats.from_disk += 1;
            } else {
                stats.compiled += 1;
            }
            let digest = digests.get(&module).cloned().unwrap_or_default();
            cache.insert(digest, Arc::new(compiled), generation);
        }

        let mut bound = |module: ModuleRef| {
            digests
                .get(&module)
                .and_then(|digest| cache.get(digest, generation))
                .ok_or_else(|| fail(module, LoadError::Missing))
        };
        let mut policies = Vec::with_capacity(config.policies.len());
        for (index, policy_config) in config.policies.iter().enumerate() {
            let live = ModuleRef {
                policy: index,
                candidate: false,
            };
            let mut policy = Policy::bind(policy_config, bound(live)?)
                .await
                .map_err(|err| fail(live, err))?;
            if let Some(candidate_config) = policy_config.candidate() {
                let shadow = ModuleRef {
                    policy: index,
                    candidate: true,
                };
                let candidate = Policy::bind(&candidate_config, bound(shadow)?)
                    .await
                    .map_err(|err| fail(shadow, err))?;
                policy = policy
                    .with_shadow(candidate)
                    .map_err(|err| fail(shadow, err))?;
            }
            policies.push(Arc::new(policy));
        }
        Ok((
            Self {
                generation,
                loaded_at: SystemTime::now(),
                policies,
            },
            stats,
        ))
    }

    /// Whether `other` would answer every request exactly as this set does:
    /// the same policies in the same order, with the same module digests,
    /// settings, limits, modes and match rules.
    pub fn same_policies(&self, other: &PolicySet) -> bool {
        self.policies.len() == other.policies.len()
            && self
                .policies
                .iter()
                .zip(&other.policies)
                .all(|(a, b)| a.same_as(b))
    }

    /// Digests of the modules this set uses, candidates' included.
    pub fn digests(&self) -> HashSet<String> {
        self.policies
            .iter()
            .flat_map(|p| std::iter::once(p).chain(&p.shadow))
            .map(|p| p.module.digest.clone())
            .collect()
    }

    /// Whether any policy has a shadow candidate.
    pub fn has_shadows(&self) -> bool {
        self.policies.iter().any(|p| p.shadow.is_some())
    }

    /// Every policy, in config order.
    pub fn policies(&self) -> &[Arc<Policy>] {
        &self.policies
    }

    /// The policy of that name.
    pub fn get(&self, name: &str) -> Option<&Arc<Policy>> {
        self.policies.iter().find(|p| &*p.name == name)
    }

    /// Mutating policies, in config order.
    pub fn mutators(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.policies.iter().filter(|p| p.metadata.mutates)
    }

    /// Validating policies, in config order.
    pub fn validators(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.policies.iter().filter(|p| p.metadata.validates)
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }
}

/// What building a set cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BuildStats {
    /// Modules componentized and compiled.
    pub compiled: u64,
    /// Modules deserialized from the on-disk cache.
    pub from_disk: u64,
    /// Modules taken from the in-memory cache.
    pub reused: u64,
}

/// Compiled modules by sha256, kept across reloads so that a module that
/// did not change, or that comes back (a rollback), is not recompiled.
/// Holds the modules of the set in service plus up to `spare` others,
/// least recently used first out.
#[derive(Debug)]
pub struct ModuleCache {
    entries: HashMap<String, CachedModule>,
    spare: usize,
}

#[derive(Debug)]
struct CachedModule {
    module: Arc<CompiledModule>,
    /// The newest generation that asked for it.
    last_used: u64,
}

impl ModuleCache {
    /// A cache keeping up to `spare` modules beyond those in service.
    pub fn new(spare: usize) -> Self {
        Self {
            entries: HashMap::new(),
            spare,
        }
    }

    pub fn contains(&self, digest: &str) -> bool {
        self.entries.contains_key(digest)
    }

    fn get(&mut self, digest: &str, generation: u64) -> Option<Arc<CompiledModule>> {
        let entry = self.entries.get_mut(digest)?;
        entry.last_used = entry.last_used.max(generation);
        Some(entry.module.clone())
    }

    fn insert(&mut self, digest: String, module: Arc<CompiledModule>, generation: u64) {
        self.entries.insert(
            digest,
            CachedModule {
                module,
                last_used: generation,
            },
        );
    }

    /// Drops the least recently used modules not in `in_use` beyond the
    /// spare capacity.
    pub fn prune(&mut self, in_use: &HashSet<String>) {
        let mut spares: Vec<(u64, String)> = self
            .entries
            .iter()
            .filter(|(digest, _)| !in_use.contains(*digest))
            .map(|(digest, entry)| (entry.last_used, digest.clone()))
            .collect();
        if spares.len() <= self.spare {
            return;
        }
        spares.sort();
        let excess = spares.len() - self.spare;
        for (_, digest) in spares.into_iter().take(excess) {
            self.entries.remove(&digest);
        }
    }

    /// Modules held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Reads a module's bytes off the async threads. The one way a policy's
/// module (live or candidate) is read.
/// Reads a module's bytes and their digest, checking a registry module's
/// against the digest its manifest gave.
async fn read_module(spec: &ModuleSpec) -> Result<(Vec<u8>, String), LoadError> {
    if matches!(spec.source, ModuleSource::Registry(_)) && spec.expected_digest.is_none() {
        return Err(LoadError::Unresolved);
    }
    let path = spec.module.clone();
    let bytes =
        tokio::task::spawn_blocking(move || files::read_bounded(&path, files::MAX_MODULE_BYTES))
            .await
            .map_err(LoadError::Task)?
            .map_err(LoadError::Read)?;
    let digest = module::digest(&bytes);
    if let Some(expected) = &spec.expected_digest
        && *expected != digest
    {
        return Err(LoadError::DigestMismatch {
            expected: expected.clone(),
            actual: digest,
        });
    }
    Ok((bytes, digest))
}

/// Compiles a module; a panic inside the toolchain (componentizing,
/// Cranelift) becomes this module's error, so the failure names the policy
/// whose module caused it.
fn compile_guarded(
    engine: &Arc<PolicyEngine>,
    bytes: &[u8],
) -> Result<CompiledModule, ModuleError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        CompiledModule::compile(engine, bytes)
    }))
    .unwrap_or_else(|panic| {
        Err(ModuleError::Compile(format!(
            "the compiler failed: {}",
            crate::componentize::panic_text(&*panic)
        )))
    })
}
