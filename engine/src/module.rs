//! One policy module, compiled: componentized if it was a wasip1 core
//! module, checked against the contract, compiled and pre-instantiated.
//!
//! A `CompiledModule` is independent of any policy's settings, so a reload
//! that changes only settings reuses it (keyed by the module's sha256).

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::bindings::AdmissionPolicyPre;
use crate::componentize::{ComponentizeError, ModuleFormat, componentize};
use crate::contract::{self, ContractError, Version};
use crate::engine::PolicyEngine;
use crate::sandbox::StoreState;

/// Why a module could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// Not WebAssembly, or a core module that is not a component in waiting.
    #[error(transparent)]
    Componentize(#[from] ComponentizeError),
    /// Cranelift refused the component.
    #[error("cannot compile the component: {0}")]
    Compile(String),
    /// Built for another contract, or not a policy.
    #[error(transparent)]
    Contract(#[from] ContractError),
    /// The component imports something this host does not provide.
    #[error("cannot link the component: {0}")]
    Link(String),
}

/// A compiled, pre-instantiated policy module. Instantiating it is cheap
/// (tens of microseconds), so each call gets a fresh instance.
pub struct CompiledModule {
    /// `sha256:<hex>` of the file as shipped.
    pub digest: String,
    /// Size of the file as shipped.
    pub size: usize,
    pub format: ModuleFormat,
    /// The contract version the module was built against.
    pub contract: Version,
    /// Whether it was deserialized from the on-disk cache rather than
    /// compiled.
    pub from_disk_cache: bool,
    /// Whether it exports the optional `prepare` (pre-initialization).
    pub prepares: bool,
    /// Whether this is a pre-initialized copy (its memory starts where
    /// `prepare` left it for one policy's settings).
    pub prepared: bool,
    /// The file as shipped, kept only for a module that prepares: a
    /// pre-initialized copy is made from it per settings.
    pub(crate) shipped: Option<Arc<[u8]>>,
    pub(crate) pre: AdmissionPolicyPre<StoreState>,
    pub(crate) engine: Arc<PolicyEngine>,
}

impl std::fmt::Debug for CompiledModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledModule")
            .field("digest", &self.digest)
            .field("size", &self.size)
            .field("format", &self.format)
            .field("contract", &self.contract)
            .finish_non_exhaustive()
    }
}

/// `sha256:<hex>` of some bytes: the identity of a module.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl CompiledModule {
    /// Componentizes (if needed), compiles and pre-instantiates `bytes`.
    /// CPU-heavy (tens of milliseconds): call it off the async runtime.
    ///
    /// # Errors
    /// See [`ModuleError`].
    pub fn compile(engine: &Arc<PolicyEngine>, bytes: &[u8]) -> Result<Self, ModuleError> {
        let digest = digest(bytes);
        let cache = engine.artifact_cache();
        let (component, format, from_disk_cache) =
            match cache.and_then(|cache| cache.load(engine.engine(), &digest)) {
                Some(cached) => (cached.component, cached.format, true),
                None => {
                    let (component_bytes, format) = componentize(bytes)?;
                    let component = engine
                        .compile(&component_bytes)
                        .map_err(|err| ModuleError::Compile(format!("{err:#}")))?;
                    (component, format, false)
                }
            };
        let mut module = Self::link(engine, &component, digest.clone(), bytes.len(), format)?;
        module.from_disk_cache = from_disk_cache;
        if module.prepares {
            module.shipped = Some(bytes.into());
        }
        // Only a module that passed every check is cached.
        if let (Some(cache), false) = (cache, from_disk_cache) {
            cache.store(&digest, &component, format);
        }
        Ok(module)
    }

    /// Checks a compiled component against the contract and links it.
    pub(crate) fn link(
        engine: &Arc<PolicyEngine>,
        component: &wasmtime::component::Component,
        digest: String,
        size: usize,
        format: ModuleFormat,
    ) -> Result<Self, ModuleError> {
        let contract = contract::check(component, engine.engine())?;
        let prepares = component
            .get_export_index(None, crate::prepare::PREPARE_INTERFACE)
            .is_some();
        let pre = engine
            .linker()
            .instantiate_pre(component)
            .map_err(|err| ModuleError::Link(format!("{err:#}")))?;
        let pre =
            AdmissionPolicyPre::new(pre).map_err(|err| ModuleError::Link(format!("{err:#}")))?;
        Ok(Self {
            digest,
            size,
            format,
            contract,
            from_disk_cache: false,
            prepares,
            prepared: false,
            shipped: None,
            pre,
            engine: engine.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_core_module_without_the_contract_is_not_a_policy() {
        // The smallest valid core module: magic + version, no sections. It
        // componentizes into an empty component, which the contract refuses.
        let empty = b"\0asm\x01\0\0\0";
        let engine = PolicyEngine::new().expect("engine");
        let err = CompiledModule::compile(&engine, empty).expect_err("not a policy");
        assert!(
            matches!(err, ModuleError::Contract(ContractError::NotAPolicy { .. })),
            "{err}"
        );
        assert!(
            err.to_string().contains("it is not a Portcullis policy"),
            "{err}"
        );
    }

    #[test]
    fn digest_is_sha256_hex() {
        assert_eq!(
            digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
