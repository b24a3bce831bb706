//! The WebAssembly engine: one wasmtime `Engine` for the process, the linker
//! every policy is instantiated against, and the epoch ticker that enforces
//! call deadlines.
//!
//! This layer knows nothing of HTTP or AdmissionReview envelopes: it turns
//! bytes into compiled components and hands out sandboxed stores.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

use crate::artifact_cache::ArtifactCache;
use crate::bindings::AdmissionPolicy;
use crate::breaker::BreakerSettings;
use crate::config::MAX_POLICY_MEMORY;
use crate::matcher::NamespaceLabels;
use crate::report::Report;
use crate::sandbox::StoreState;

/// How often the epoch advances. Deadlines are checked on every tick, so
/// this is the resolution of a policy's deadline.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Set to `1` to write a perf map of compiled policy code, so that
/// `perf report` names the functions of a policy (for profiling only).
pub const PERF_MAP_ENV: &str = "PORTCULLIS_PERF_MAP";

/// How many policy instances may be alive at once across all requests.
/// Each request instantiates its policies fresh, so this bounds concurrent
/// evaluations, not loaded policies.
const POOLED_INSTANCES: u32 = 512;

/// Errors building the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// wasmtime refused the configuration.
    #[error("cannot create the WebAssembly engine: {0}")]
    Create(wasmtime::Error),
    /// The host functions could not be linked.
    #[error("cannot set up host functions for policies: {0}")]
    Link(wasmtime::Error),
    /// The epoch ticker thread could not be started.
    #[error("cannot start the epoch ticker thread: {0}")]
    Ticker(std::io::Error),
}

/// Default total of the memory caps of policy calls running at once.
pub const DEFAULT_MEMORY_BUDGET: u64 = 1 << 30;

/// What the engine is built with beyond its cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// The total of the memory caps of the calls running at once.
    pub memory_budget: u64,
    /// When a policy that keeps hogging its limits starts failing fast.
    pub breaker: BreakerSettings,
    /// Whether modules that export `prepare` are pre-initialized with
    /// their settings (off: every call does that work itself; for
    /// measuring what pre-initialization saves, and as a way out).
    pub pre_initialize: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            memory_budget: DEFAULT_MEMORY_BUDGET,
            breaker: BreakerSettings::default(),
            pre_initialize: true,
        }
    }
}

/// The memory every running call may hold at most, summed: each call
/// reserves its cap before it starts and returns it when it ends, so a
/// burst of memory-hungry calls waits instead of taking the process past
/// its pod's memory limit. Counted in MiB.
struct MemoryBudget {
    mib: tokio::sync::Semaphore,
    bytes: u64,
}

/// A call's share of the memory budget, returned when dropped.
pub(crate) struct MemoryReservation<'a>(#[allow(dead_code)] tokio::sync::SemaphorePermit<'a>);

/// The budget had no room for a call's memory cap in time.
#[derive(Debug, thiserror::Error)]
#[error("the memory budget of {budget} bytes had no room for its {wanted} bytes in time")]
pub(crate) struct BudgetExhausted {
    pub budget: u64,
    pub wanted: u64,
}

/// The process-wide engine, linker and epoch ticker. Cheap to share: clone
/// the `Arc`.
pub struct PolicyEngine {
    engine: wasmtime::Engine,
    /// Compiled modules on disk, when a cache directory is in use.
    artifacts: Option<ArtifactCache>,
    linker: Linker<StoreState>,
    ticker: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    pooling: bool,
    memory: MemoryBudget,
    breaker: BreakerSettings,
    pre_initialize: bool,
    /// The cluster's namespaces, for namespaceSelector; set once by a
    /// server that follows them.
    namespaces: OnceLock<Arc<dyn NamespaceLabels>>,
}

impl PolicyEngine {
    /// Builds the engine. Tries the pooling allocator first (fresh instances
    /// are then ~2x cheaper); falls back to on-demand allocation where the
    /// address space cannot be reserved (e.g. under `ulimit -v`).
    ///
    /// # Errors
    /// When wasmtime rejects the configuration or the ticker cannot start.
    pub fn new() -> Result<Arc<Self>, EngineError> {
        Self::with_cache(None)
    }

    /// Builds the engine with compiled modules cached in `cache_dir`. A
    /// directory that cannot be used is logged and no cache is used: the
    /// cache only saves time.
    ///
    /// # Errors
    /// When wasmtime rejects the configuration or the ticker cannot start.
    pub fn with_cache(cache_dir: Option<&Path>) -> Result<Arc<Self>, EngineError> {
        Self::with_options(cache_dir, EngineOptions::default())
    }

    /// [`PolicyEngine::with_cache`] with [`EngineOptions`]: the memory
    /// budget of the calls running at once (clamped to what a semaphore
    /// counts) and when a policy's calls start failing fast.
    ///
    /// # Errors
    /// When wasmtime rejects the configuration or the ticker cannot start.
    pub fn with_options(
        cache_dir: Option<&Path>,
        options: EngineOptions,
    ) -> Result<Arc<Self>, EngineError> {
        let memory_budget = options.memory_budget;
        let (engine, pooling) = match wasmtime::Engine::new(&engine_config(true)) {
            Ok(engine) => (engine, true),
            Err(error) => {
                tracing::warn!(%error, "pooling allocator unavailable; using on-demand allocation");
                let engine =
                    wasmtime::Engine::new(&engine_config(false)).map_err(EngineError::Create)?;
                (engine, false)
            }
        };
        let linker = build_linker(&engine)?;
        let artifacts = cache_dir.and_then(|dir| match ArtifactCache::open(dir, &engine) {
            Ok(cache) => Some(cache),
            Err(error) => {
                tracing::warn!(error = %Report(&error), "compiling every module at start and on reload");
                None
            }
        });
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = spawn_ticker(engine.clone(), stop.clone())?;
        let mib = usize::try_from(memory_budget >> 20)
            .unwrap_or(usize::MAX)
            .clamp(2, tokio::sync::Semaphore::MAX_PERMITS);
        Ok(Arc::new(Self {
            engine,
            artifacts,
            linker,
            ticker: Some(ticker),
            stop,
            pooling,
            memory: MemoryBudget {
                mib: tokio::sync::Semaphore::new(mib),
                bytes: (mib as u64) << 20,
            },
            breaker: options.breaker,
            pre_initialize: options.pre_initialize,
            namespaces: OnceLock::new(),
        }))
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &wasmtime::Engine {
        &self.engine
    }

    /// The linker holding the host functions a policy may import.
    pub fn linker(&self) -> &Linker<StoreState> {
        &self.linker
    }

    /// The on-disk cache of compiled modules, if one is in use.
    pub fn artifact_cache(&self) -> Option<&ArtifactCache> {
        self.artifacts.as_ref()
    }

    /// Whether instances come from the pooling allocator.
    pub fn is_pooling(&self) -> bool {
        self.pooling
    }

    /// When a policy's calls start failing fast.
    pub fn breaker(&self) -> BreakerSettings {
        self.breaker
    }

    /// Whether modules that export `prepare` are pre-initialized.
    pub fn pre_initializes(&self) -> bool {
        self.pre_initialize
    }

    /// Gives policies' `namespaceSelector` the cluster's namespaces. Set
    /// once, before the policies that need it are loaded: a policy with a
    /// namespaceSelector does not load without it. Matching asks it only
    /// for such a policy, and only once its cheaper checks matched.
    ///
    /// # Errors
    /// The provider back when one was set already.
    pub fn set_namespace_labels(
        &self,
        provider: Arc<dyn NamespaceLabels>,
    ) -> Result<(), Arc<dyn NamespaceLabels>> {
        self.namespaces.set(provider)
    }

    /// The namespace labels given with [`PolicyEngine::set_namespace_labels`].
    pub fn namespace_labels(&self) -> Option<&dyn NamespaceLabels> {
        self.namespaces.get().map(|provider| &**provider)
    }

    /// The total of the memory caps of calls running at once, in bytes.
    pub fn memory_budget(&self) -> u64 {
        self.memory.bytes
    }

    /// Reserves `bytes` (a call's memory cap) of the budget, waiting at
    /// most `wait` for room; calls get room in the order they asked.
    pub(crate) async fn reserve_memory(
        &self,
        bytes: u64,
        wait: Duration,
    ) -> Result<MemoryReservation<'_>, BudgetExhausted> {
        let exhausted = || BudgetExhausted {
            budget: self.memory.bytes,
            wanted: bytes,
        };
        let mib = u32::try_from(bytes.div_ceil(1 << 20)).map_err(|_| exhausted())?;
        match tokio::time::timeout(wait, self.memory.mib.acquire_many(mib)).await {
            Ok(Ok(permit)) => Ok(MemoryReservation(permit)),
            // Closed never happens (the engine owns the semaphore); a
            // timeout means no room in time.
            Ok(Err(_)) | Err(_) => Err(exhausted()),
        }
    }

    /// Compiles a component (already componentized) with Cranelift.
    ///
    /// # Errors
    /// When the bytes are not a valid component.
    pub fn compile(&self, component: &[u8]) -> wasmtime::Result<Component> {
        Component::from_binary(&self.engine, component)
    }
}

impl Drop for PolicyEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(ticker) = self.ticker.take() {
            // The ticker sleeps one tick at a time, so this returns promptly.
            let _ = ticker.join();
        }
    }
}

fn engine_config(pooling: bool) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.cranelift_opt_level(OptLevel::Speed);
    // Deep recursion in a policy must trap, not overflow the host's stack.
    config.max_wasm_stack(512 * 1024);
    config.async_stack_size(1024 * 1024);
    if std::env::var_os(PERF_MAP_ENV).is_some_and(|v| v == "1") {
        // Names for compiled policy code in `perf report`
        // (/tmp/perf-PID.map); off by default: it writes a file per process.
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    if pooling {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(POOLED_INSTANCES);
        // A componentized wasip1 module is several core instances (the
        // policy, the WASI adapter and shims), each with a memory or table.
        pool.max_core_instances_per_component(16);
        pool.total_core_instances(POOLED_INSTANCES * 8);
        pool.max_memories_per_component(4);
        pool.total_memories(POOLED_INSTANCES * 2);
        pool.total_tables(POOLED_INSTANCES * 4);
        pool.total_stacks(POOLED_INSTANCES);
        pool.max_memory_size(MAX_POLICY_MEMORY as usize);
        // Keeping a few MiB of each slot resident is what lets fresh
        // instances scale across cores: without it every drop unmaps memory
        // and the cores fight over TLB shootdowns.
        pool.linear_memory_keep_resident(4 << 20);
        pool.table_keep_resident(64 << 10);
        pool.pagemap_scan(wasmtime::Enabled::Auto);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

fn build_linker(engine: &wasmtime::Engine) -> Result<Linker<StoreState>, EngineError> {
    let mut linker = Linker::new(engine);
    // WASI is linked so that modules built for wasip1/wasip2 instantiate, but
    // each store's WasiCtx grants nothing (see `sandbox::wasi_context`).
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(EngineError::Link)?;
    AdmissionPolicy::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
        .map_err(EngineError::Link)?;
    Ok(linker)
}

fn spawn_ticker(
    engine: wasmtime::Engine,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, EngineError> {
    std::thread::Builder::new()
        .name("portcullis-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        })
        .map_err(EngineError::Ticker)
}
