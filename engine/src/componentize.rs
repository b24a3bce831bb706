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
    /// The bytes start like WebAssembly but do not parse (e.g. a file cut
    /// short by an interrupted copy).
    #[error("not a valid WebAssembly module: {0} (is the file complete?)")]
    Malformed(String),
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
    // The encoder assumes well-formed input and can panic on a truncated
    // module: check the module's structure first (a cheap parse, not a
    // full validation, which the encoder does itself)...
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        payload.map_err(|err| ComponentizeError::Malformed(err.to_string()))?;
    }
    // ...and still never let an encoder panic take the host down.
    std::panic::catch_unwind(|| encode(bytes))
        .map_err(|panic| {
            ComponentizeError::Encode(format!("the encoder failed: {}", panic_text(&*panic)))
        })?
        .map(|component| (component.into(), ModuleFormat::CoreModule))
}

/// The text of a caught panic.
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// A wasip1 core module and the reactor adapter, encoded as a component.
fn encode(bytes: &[u8]) -> Result<Vec<u8>, ComponentizeError> {
    wit_component::ComponentEncoder::default()
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
        .map_err(|err| ComponentizeError::Encode(format!("{err:#}")))
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
    fn refuses_a_truncated_module_without_panicking() {
        // A valid module (magic, version, an empty type section) cut in the
        // middle of a section: the size says 5 bytes, 1 follows.
        let truncated = b"\0asm\x01\0\0\0\x01\x05\x01";
        let err = componentize(truncated).expect_err("truncated");
        assert!(matches!(err, ComponentizeError::Malformed(_)), "{err}");
        assert!(err.to_string().contains("is the file complete?"), "{err}");
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
