//! Testing Portcullis policies without a cluster.
//!
//! # Layout
//! - `harness`: a policy crate's `cargo test` against its built `.wasm`,
//!   loaded and evaluated exactly as `portcullis serve` would
//!   ([`TestPolicy`]).
//! - `suite`: YAML test suites (`portcullis test`): cases, expectations,
//!   reviews wrapped from bare objects by [`portcullis_kube::review`], the
//!   one AdmissionReview builder suites, end-to-end tests and the SDK share.
//! - `scaffold`: the files of a new policy crate (`portcullis new policy`).
//!
//! Everything here drives `portcullis-engine`; nothing here serves HTTP.

mod harness;
pub mod scaffold;
mod suite;

pub use harness::{
    CACHE_DIR_ENV, NO_MODULE_CACHE_ENV, Outcome, PROFILE, TARGET, TestPolicy, TestingError,
    built_module, fixture, module_cache_dir_from_env,
};
pub use suite::{Case, Expect, Suite, SuiteError};
