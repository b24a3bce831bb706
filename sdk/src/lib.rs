//! Write Portcullis admission policies in Rust.
//!
//! A policy is a type implementing [`Policy`], exported with
//! [`export_policy!`]. The SDK hides the WIT contract (`wit/policy.wit`):
//! it parses the AdmissionRequest and the settings from the JSON text the
//! host passes, calls the policy, and turns its [`Verdict`] or
//! [`Mutation`] into the contract's records.
//!
//! ```
//! use portcullis_sdk::{Metadata, Policy, Request, Verdict};
//!
//! pub struct NoLatest;
//!
//! impl Policy for NoLatest {
//!     type Settings = serde_json::Value;
//!     const METADATA: Metadata = Metadata {
//!         name: "no-latest",
//!         version: env!("CARGO_PKG_VERSION"),
//!         resources: &["pods"],
//!         validates: true,
//!         mutates: false,
//!     };
//!     fn validate(request: &Request, _: &Self::Settings) -> Result<Verdict, String> {
//!         Ok(Verdict::allow())
//!     }
//! }
//!
//! portcullis_sdk::export_policy!(NoLatest);
//! ```
//!
//! Build with `cargo build --target wasm32-wasip1`; the same crate also
//! compiles natively so the policy's logic can have plain unit tests.

#![warn(missing_docs)]

pub use portcullis_kube::glob;
pub mod image;
#[cfg(feature = "k8s")]
pub mod k8s;
pub mod log;
pub mod object;
pub mod pods;
pub use portcullis_kube::quantity;
pub mod testing;

mod guest;
mod policy;
mod request;
mod settings;
mod verdict;

pub use policy::{Metadata, Policy};
pub use request::{GroupVersionKind, GroupVersionResource, Operation, Request, UserInfo};
pub use settings::parse_settings;
pub use verdict::{Mutation, Verdict};

/// Guest bindings generated from `wit/policy.wit`. Not a stable API: use
/// [`export_policy!`] and the SDK's own types instead.
#[doc(hidden)]
#[allow(unsafe_code, missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "admission-policy-preparable",
        path: "../wit",
        pub_export_macro: true,
        default_bindings_module: "portcullis_sdk::bindings",
        export_macro_name: "export",
    });
}

/// What [`export_policy!`] expands to; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::guest::Exports;
}

/// Exports a [`Policy`] as the module's implementation of the contract.
///
/// Use it once per policy crate, at the crate root:
/// `portcullis_sdk::export_policy!(MyPolicy);`.
///
/// The exports exist only when compiling for `wasm32`: natively the macro
/// just checks that the type implements [`Policy`], so a policy crate can
/// be an `rlib` in unit tests (and several policies can be linked into one
/// test binary without clashing export symbols).
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        const _: fn() = || {
            fn assert_policy<P: $crate::Policy>() {}
            assert_policy::<$policy>();
        };

        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        const _: () = {
            type PortcullisExports = $crate::__private::Exports<$policy>;
    $crate::bindings::export!(PortcullisExports with_types_in $crate::bindings);
        };
    };
}
