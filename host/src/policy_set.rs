//! The policy set: one immutable snapshot of every loaded policy, with its
//! generation. A request takes the current snapshot once and is answered
//! entirely by it; a reload builds a whole new snapshot and swaps it in.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::engine::PolicyEngine;
use crate::module::{self, CompiledModule};
use crate::policy::{LoadError, Policy};

/// One generation of policies. Never changed after it is built.
#[derive(Debug)]
pub struct PolicySet {
    pub generation: u64,
    pub loaded_at: SystemTime,
    /// In config order: the order mutations run in.
    policies: Vec<Arc<Policy>>,
}

/// The swappable current snapshot, shared by the server and the reloader.
pub type SharedPolicySet = Arc<ArcSwap<PolicySet>>;

/// A policy that failed to load, with its name and module path.
#[derive(Debug, thiserror::Error)]
#[error("policy {policy:?} (module {}): {error}", module.display())]
pub struct SetError {
    pub policy: String,
    pub module: PathBuf,
    pub error: LoadError,
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

    /// Loads every policy of `config`. Modules whose sha256 matches one in
    /// `reuse` are not recompiled. Either every policy loads or the set is
    /// not built.
    ///
    /// # Errors
    /// The first policy that failed, by name and path, with its cause.
    pub async fn build(
        engine: &Arc<PolicyEngine>,
        config: &Config,
        generation: u64,
        reuse: Option<&PolicySet>,
    ) -> Result<Self, SetError> {
        let mut compiled: HashMap<String, Arc<CompiledModule>> = reuse
            .map(|set| {
                set.policies
                    .iter()
                    .map(|p| (p.module.digest.clone(), p.module.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let fail = |index: usize, error: LoadError| {
            let policy = &config.policies[index];
            SetError {
                policy: policy.name.to_string(),
                module: policy.module.clone(),
                error,
            }
        };

        // Read every module, then compile each new digest once, all at once:
        // componentizing and Cranelift are CPU-bound, so they run on the
        // blocking pool, off the threads that serve requests.
        let mut digests = Vec::with_capacity(config.policies.len());
        let mut compiling = tokio::task::JoinSet::new();
        for (index, policy_config) in config.policies.iter().enumerate() {
            let bytes = tokio::fs::read(&policy_config.module)
                .await
                .map_err(|err| fail(index, LoadError::Read(err)))?;
            let digest = module::digest(&bytes);
            let first_use = !digests.contains(&digest);
            if first_use && !compiled.contains_key(&digest) {
                let engine = engine.clone();
                compiling.spawn_blocking(move || (index, CompiledModule::compile(&engine, &bytes)));
            }
            digests.push(digest);
        }
        while let Some(joined) = compiling.join_next().await {
            let (index, result) =
                joined.map_err(|err| fail(0, LoadError::Task(err.to_string())))?;
            let module = result.map_err(|err| fail(index, LoadError::Module(err)))?;
            compiled.insert(digests[index].clone(), Arc::new(module));
        }

        let mut policies = Vec::with_capacity(config.policies.len());
        for (index, policy_config) in config.policies.iter().enumerate() {
            let module = compiled.get(&digests[index]).cloned().ok_or_else(|| {
                fail(
                    index,
                    LoadError::Task("module missing after compile".into()),
                )
            })?;
            let policy = Policy::bind(policy_config, module)
                .await
                .map_err(|err| fail(index, err))?;
            policies.push(Arc::new(policy));
        }
        Ok(Self {
            generation,
            loaded_at: SystemTime::now(),
            policies,
        })
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
