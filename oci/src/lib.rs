//! Policy modules in OCI registries, the way policies ship between teams:
//! the Wasm OCI artifact layout (config `application/vnd.wasm.config.v0+json`,
//! one `application/wasm` layer), pulled by tag or digest into a content
//! store on disk, pushed with annotations, and signed in cosign's keyed
//! layout (ECDSA P-256 over a simple-signing payload, stored under the tag
//! `sha256-<digest>.sig`).
//!
//! Nothing here knows about policies' settings or wasmtime: the server asks
//! [`Registry::resolve`] for a reference and gets a verified file back.
//!
//! # Layout
//! - `reference`: `oci://` references, parsed and checked.
//! - `credentials`: Docker `config.json` (a `kubernetes.io/dockerconfigjson`
//!   Secret) to per-registry logins.
//! - `store`: blobs by digest on disk, and what each reference last resolved to.
//! - `artifact`: the Wasm artifact's media types, config and annotations.
//! - `signature`: keys, the simple-signing payload, signing and verifying.
//! - `registry`: the client: resolve, pull, push, sign.

mod artifact;
mod credentials;
mod reference;
mod registry;
mod signature;
mod store;

pub use artifact::{
    ANNOTATION_CONTRACT, ANNOTATION_POLICY, ANNOTATION_RESOURCES, ANNOTATION_TITLE,
    ANNOTATION_VERSION, CONFIG_MEDIA_TYPE, LAYER_MEDIA_TYPE, LEGACY_LAYER_MEDIA_TYPE,
};
pub use credentials::{Credentials, CredentialsError};
pub use reference::{PolicyRef, ReferenceError};
pub use registry::{Pulled, Registry, RegistryError, RegistryOptions, Resolved};
pub use signature::{KeyError, PublicKey, SigningKey, generate_key};
pub use store::{Store, StoreError};

/// Installs ring as the process's TLS provider if none is yet, so the
/// registry client shares the serving side's crypto.
pub fn install_crypto_provider() {
    // Err: a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
