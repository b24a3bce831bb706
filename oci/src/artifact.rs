//! The Wasm OCI artifact: what a pushed policy looks like in a registry.
//!
//! The layout is the CNCF Wasm OCI artifact convention: a config of media
//! type `application/vnd.wasm.config.v0+json` and one layer of
//! `application/wasm` holding the module. Modules pushed by other tools in
//! the older `application/vnd.wasm.content.layer.v1+wasm` layout are read
//! too.

use std::collections::BTreeMap;

use serde::Serialize;

/// Config media type of a Wasm artifact.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// Layer media type of the module.
pub const LAYER_MEDIA_TYPE: &str = "application/wasm";
/// The layer media type of earlier Wasm artifacts, still read.
pub const LEGACY_LAYER_MEDIA_TYPE: &str = "application/vnd.wasm.content.layer.v1+wasm";

/// Standard annotation: the file the module was pushed from.
pub const ANNOTATION_TITLE: &str = "org.opencontainers.image.title";
/// Standard annotation: the policy's own version.
pub const ANNOTATION_VERSION: &str = "org.opencontainers.image.version";
/// The policy's name as its metadata gives it.
pub const ANNOTATION_POLICY: &str = "dev.portcullis.policy.name";
/// The WIT contract version the module was built against.
pub const ANNOTATION_CONTRACT: &str = "dev.portcullis.policy.contract";
/// The resources the policy declares it is written for, comma-separated.
pub const ANNOTATION_RESOURCES: &str = "dev.portcullis.policy.resources";
const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";

/// Whether a layer of this media type holds a module.
pub fn is_module_layer(media_type: &str) -> bool {
    media_type == LAYER_MEDIA_TYPE || media_type == LEGACY_LAYER_MEDIA_TYPE
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WasmConfig<'a> {
    created: &'a str,
    architecture: &'static str,
    os: &'static str,
    layer_digests: [&'a str; 1],
}

/// The config blob of a module: `os` is `wasip2` for a component and
/// `wasip1` for a core module.
pub(crate) fn config(created: &str, layer_digest: &str, component: bool) -> Vec<u8> {
    let config = WasmConfig {
        created,
        architecture: "wasm",
        os: if component { "wasip2" } else { "wasip1" },
        layer_digests: [layer_digest],
    };
    serde_json::to_vec(&config).unwrap_or_default()
}

/// The manifest annotations: the caller's, plus the creation time.
pub(crate) fn annotations(
    mut given: BTreeMap<String, String>,
    created: &str,
) -> BTreeMap<String, String> {
    given
        .entry(ANNOTATION_CREATED.to_string())
        .or_insert_with(|| created.to_string());
    given
}

/// Whether `bytes` are a component (rather than a core module): the
/// binary header's layer field.
pub(crate) fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_the_layer_and_the_target() {
        let config = config("2026-12-05T00:00:00Z", "sha256:ab", true);
        let value: serde_json::Value = serde_json::from_slice(&config).expect("json");
        assert_eq!(value["os"], "wasip2");
        assert_eq!(value["architecture"], "wasm");
        assert_eq!(value["layerDigests"][0], "sha256:ab");
    }

    #[test]
    fn components_are_told_from_core_modules() {
        assert!(is_component(b"\0asm\x0d\0\x01\0"));
        assert!(!is_component(b"\0asm\x01\0\0\0"));
        assert!(!is_component(b"\0as"));
        assert!(is_module_layer(LAYER_MEDIA_TYPE) && is_module_layer(LEGACY_LAYER_MEDIA_TYPE));
        assert!(!is_module_layer("application/vnd.oci.image.layer.v1.tar"));
    }
}
