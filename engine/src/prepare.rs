//! Pre-initialization: a module that exports the optional `prepare` does
//! its once-per-settings work (parsing expressions, compiling patterns) in
//! one instance at load; that instance's memories and globals become the
//! starting state of every later call with those settings. Wasmtime's
//! wizer instruments the component so its state can be read, and rewrites
//! it with that state as its data.
//!
//! Every call still gets a fresh instance (nothing a call does carries to
//! the next); it only starts from the prepared state instead of the
//! module's initial one. The copy is per (module, settings): cached on
//! disk under the digest of both, so a restart deserializes it.

use std::sync::Arc;

use wasmtime::Store;
use wasmtime::component::{Component, Instance, Lift, WasmList};
use wasmtime_wizer::{ComponentInstanceState, Wizer};

use crate::componentize::componentize;
use crate::config::Limits;
use crate::invoke::{PolicyError, prepare_and_snapshot};
use crate::module::{CompiledModule, ModuleError, digest};
use crate::sandbox::StoreState;

/// The export a module offers to be pre-initialized through.
pub const PREPARE_INTERFACE: &str = "portcullis:policy/prepare@0.1.0";

/// Why a module could not be pre-initialized.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The policy rejected its settings in `prepare`.
    #[error("the policy rejected its settings in prepare: {0}")]
    Rejected(String),
    /// The `prepare` call failed (trap, deadline, memory).
    #[error("prepare {0}")]
    Call(#[source] PolicyError),
    /// The module could not be instrumented or rewritten.
    #[error("cannot pre-initialize the module: {0}")]
    Wizer(String),
    /// The instrumented or pre-initialized copy did not compile or link.
    #[error("the pre-initialized module: {0}")]
    Module(#[source] ModuleError),
}

/// `module` pre-initialized for `settings`; `None` when the module does
/// not prepare, or has nothing to prepare for these settings.
///
/// Runs as a task of its own: a panic in the toolchain (wizer's rewrite,
/// Cranelift) fails this policy's load, never the reload that asked.
///
/// # Errors
/// See [`PrepareError`]. CPU-heavy (two compilations on a cache miss).
pub async fn prepared(
    module: &Arc<CompiledModule>,
    policy: &Arc<str>,
    limits: Limits,
    settings: &str,
) -> Result<Option<Arc<CompiledModule>>, PrepareError> {
    let (module, policy, settings) = (module.clone(), policy.clone(), settings.to_owned());
    tokio::spawn(async move { prepare_now(&module, &policy, limits, &settings).await })
        .await
        .map_err(|e| PrepareError::Wizer(format!("pre-initialization failed: {e}")))?
}

async fn prepare_now(
    module: &Arc<CompiledModule>,
    policy: &Arc<str>,
    limits: Limits,
    settings: &str,
) -> Result<Option<Arc<CompiledModule>>, PrepareError> {
    let engine = module.engine.clone();
    let Some(shipped) = module.shipped.clone().filter(|_| engine.pre_initializes()) else {
        return Ok(None);
    };
    let key = digest(format!("prepared\n{}\n{settings}", module.digest).as_bytes());
    let cache = engine.artifact_cache();
    if let Some(cached) = cache.and_then(|cache| cache.load(engine.engine(), &key)) {
        return link_copy(module, &cached.component, true).map(Some);
    }
    // Cheap first: whether there is anything to prepare at all.
    match module
        .prepare(policy, limits, settings)
        .await
        .map_err(PrepareError::Call)?
    {
        Ok(true) => {}
        Ok(false) => return Ok(None),
        Err(reason) => return Err(PrepareError::Rejected(reason)),
    }

    let component_bytes = componentize(&shipped)
        .map_err(|e| PrepareError::Wizer(e.to_string()))?
        .0
        .into_owned();
    let mut wizer = Wizer::new();
    // `prepare` stays exported: the host calls it by name, never through
    // wizer's own initialization function.
    wizer.keep_init_func(true);
    let (context, instrumented) = wizer
        .instrument_component(&component_bytes)
        .map_err(|e| PrepareError::Wizer(format!("{e:#}")))?;
    // The instrumented copy depends on the module alone: cached, so a
    // change of settings costs one compilation, not two.
    let instrumented_key = digest(format!("instrumented\n{}", module.digest).as_bytes());
    let instrumented = match cache.and_then(|cache| cache.load(engine.engine(), &instrumented_key))
    {
        Some(cached) => cached.component,
        None => {
            let component = compile(&engine, instrumented).await?;
            if let Some(cache) = cache {
                cache.store(&instrumented_key, &component, module.format);
            }
            component
        }
    };
    let snapshot = prepare_and_snapshot(
        module,
        &instrumented,
        policy,
        limits,
        settings,
        async |store: &mut Store<StoreState>, instance: Instance| {
            let mut state = Snapshotting {
                store,
                instance,
                failed: None,
            };
            let bytes = wizer
                .snapshot_component(&context, &mut state)
                .await
                .map_err(|e| PolicyError::InvalidOutput(format!("snapshot: {e:#}")))?;
            match state.failed {
                Some(error) => Err(PolicyError::InvalidOutput(format!("snapshot: {error}"))),
                None => Ok(bytes),
            }
        },
    )
    .await
    .map_err(|error| match error {
        PolicyError::Reported(reason) => PrepareError::Rejected(reason),
        other => PrepareError::Call(other),
    })?;
    let component = compile(&engine, snapshot).await?;
    let copy = link_copy(module, &component, false)?;
    if let Some(cache) = cache {
        cache.store(&key, &component, module.format);
    }
    Ok(Some(copy))
}

/// Compiles `bytes` off the async runtime.
async fn compile(
    engine: &Arc<crate::engine::PolicyEngine>,
    bytes: Vec<u8>,
) -> Result<Component, PrepareError> {
    let engine = engine.clone();
    tokio::task::spawn_blocking(move || engine.compile(&bytes))
        .await
        .map_err(|e| PrepareError::Wizer(format!("the compilation task failed: {e}")))?
        .map_err(|e| PrepareError::Module(ModuleError::Compile(format!("{e:#}"))))
}

/// The pre-initialized copy of `module`, under the module's own identity.
fn link_copy(
    module: &CompiledModule,
    component: &Component,
    from_disk_cache: bool,
) -> Result<Arc<CompiledModule>, PrepareError> {
    let mut copy = CompiledModule::link(
        &module.engine,
        component,
        module.digest.clone(),
        module.size,
        module.format,
    )
    .map_err(PrepareError::Module)?;
    copy.prepared = true;
    copy.from_disk_cache = from_disk_cache;
    Ok(Arc::new(copy))
}

/// Reads an instrumented instance's state for wizer. The trait's calls
/// cannot fail, so the first error is kept and reported afterwards.
struct Snapshotting<'a> {
    store: &'a mut Store<StoreState>,
    instance: Instance,
    failed: Option<String>,
}

impl Snapshotting<'_> {
    async fn call<R, T>(
        &mut self,
        instance: &str,
        func: &str,
        fallback: T,
        use_result: impl FnOnce(&mut Store<StoreState>, R) -> T,
    ) -> T
    where
        R: Lift + Send + Sync + 'static,
    {
        match self.try_call::<R>(instance, func).await {
            Ok(result) => use_result(self.store, result),
            Err(error) => {
                self.failed.get_or_insert(error);
                fallback
            }
        }
    }

    async fn try_call<R>(&mut self, instance: &str, func: &str) -> Result<R, String>
    where
        R: Lift + Send + Sync + 'static,
    {
        let missing = || format!("the instrumented module has no {instance}#{func}");
        let interface = self
            .instance
            .get_export_index(&mut *self.store, None, instance)
            .ok_or_else(missing)?;
        let export = self
            .instance
            .get_export_index(&mut *self.store, Some(&interface), func)
            .ok_or_else(missing)?;
        let typed = self
            .instance
            .get_typed_func::<(), (R,)>(&mut *self.store, &export)
            .map_err(|e| format!("{instance}#{func}: {e:#}"))?;
        let (result,) = typed
            .call_async(&mut *self.store, ())
            .await
            .map_err(|e| format!("{instance}#{func}: {e:#}"))?;
        Ok(result)
    }
}

impl ComponentInstanceState for Snapshotting<'_> {
    async fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) {
        // `contents` must be called exactly when the read worked; an empty
        // slice stands in otherwise (and `failed` says why).
        let mut contents = Some(contents);
        let read = self
            .call(instance, func, false, |store, list: WasmList<u8>| {
                if let Some(contents) = contents.take() {
                    contents(list.as_le_slice(&*store));
                }
                true
            })
            .await;
        if !read && let Some(contents) = contents.take() {
            contents(&[]);
        }
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.call(instance, func, 0, |_, value| value).await
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.call(instance, func, 0, |_, value| value).await
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.call(instance, func, 0, |_, value: f32| value.to_bits())
            .await
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.call(instance, func, 0, |_, value: f64| value.to_bits())
            .await
    }
}
