//! What arrives as a policy: a ready-made component, or a wasip1 core module
//! carrying its component type, which becomes a component here with the
//! WASI reactor adapter. Knows nothing of compiling or caching.

use std::borrow::Cow;

use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};

/// How the module arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ModuleFormat {
    /// A wasip1 core module with an embedded component type (turned into a
    /// component at load time with the WASI reactor adapter).
    CoreModule,
    /// A ready-made component (wasm32-wasip2 or another language's toolchain).
    Component,
}

/// Why bytes could not become a component.
#[derive(Debug, thiserror::Error)]
pub enum ComponentizeError {
    /// The bytes are not WebAssembly at all.
    #[error("not a WebAssembly module or component (bad magic number)")]
    NotWasm,
    /// A core module that could not be turned into a component.
    #[error(
        "cannot turn the core module into a component: {0} \
         (was it built with portcullis-sdk for wasm32-wasip1?)"
    )]
    Encode(String),
}

/// Turns a wasip1 core module into a component; passes a component through.
///
/// # Errors
/// See [`ComponentizeError`].
pub fn componentize(bytes: &[u8]) -> Result<(Cow<'_, [u8]>, ModuleFormat), ComponentizeError> {
    if wasmparser::Parser::is_component(bytes) {
        return Ok((bytes.into(), ModuleFormat::Component));
    }
    if !wasmparser::Parser::is_core_wasm(bytes) {
        return Err(ComponentizeError::NotWasm);
    }
    let component = wit_component::ComponentEncoder::default()
        .validate(true)
        .module(bytes)
        .and_then(|encoder| {
            encoder.adapter(
                WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )
        })
        .and_then(|mut encoder| encoder.encode())
        // wit-component's errors are `anyhow` chains: keep the whole chain.
        .map_err(|err| ComponentizeError::Encode(format!("{err:#}")))?;
    Ok((component.into(), ModuleFormat::CoreModule))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bytes_that_are_not_wasm() {
        assert!(matches!(
            componentize(b"hello"),
            Err(ComponentizeError::NotWasm)
        ));
    }

    #[test]
    fn passes_components_through() {
        // A component's preamble: magic, then layer 1 / version 0x0d.
        let component = b"\0asm\x0d\0\x01\0";
        let (bytes, format) = componentize(component).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(format, ModuleFormat::Component);
        assert_eq!(&*bytes, component);
    }
}
