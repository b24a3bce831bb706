//! What both sides of Portcullis need to know of Kubernetes, in one place:
//! the host (config, suites, end-to-end tests) and the guest (the SDK that
//! policies are written against) parse and build these the same way.
//!
//! # Layout
//! - [`quantity`]: resource quantities (`100m`, `1.5Gi`, `1e3`), the API's
//!   grammar.
//! - [`glob`]: `*` wildcards for allow-lists.
//! - [`review`]: the resource a kind is served as (kube-apiserver's plural
//!   rules) and the one AdmissionReview builder that suites, tests and the
//!   SDK's test helpers share.
//!
//! No I/O and no platform code: it builds for `wasm32-wasip1` as well as
//! for the host.

pub mod glob;
pub mod quantity;
pub mod review;
