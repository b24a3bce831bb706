//! The policy library (`policies/`) through the real server: each policy's
//! built `.wasm`, loaded from `tests/library/<policy>.yaml`, answering
//! realistic reviews on its own path (`/validate/<name>`, `/mutate/<name>`).
//!
//! One test binary and one server for the whole library (see
//! `portcullis_e2e::with_library`); one module per policy.

mod blocked_images;
mod component;
mod container_defaults;
mod field_rules;
mod image_digests;
mod namespace_reservation;
mod pod_security;
mod python;
mod sidecar_injector;
mod standard;
