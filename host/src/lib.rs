//! Portcullis: a Kubernetes admission-webhook host that runs policies as
//! sandboxed WebAssembly components.
//!
//! # Layout
//! Dependencies point one way, down this list:
//! - `config`: the YAML config, typed and validated; no sockets, no modules.
//! - `matcher`: which policies apply to a request.
//! - `admission`: AdmissionReview in, AdmissionReview out; no wasmtime.
//! - `contract`: the WIT contract version and the check that a module fits.
//! - `engine`: the wasmtime engine, linker and epoch ticker; no HTTP.
//! - `sandbox`: what a call may use: memory cap, bounded log, empty WASI.
//! - `module`: componentize, compile, pre-instantiate one `.wasm`.
//! - `artifact_cache`: compiled modules on disk, checked before use.
//! - `invoke`: one call into a policy with a deadline; typed errors.
//! - `policy`: a module bound to its settings, limits and match rules.
//! - `policy_set`: the immutable snapshot of all policies, and the
//!   compiled-module cache that reloads share.
//! - `policy_store`: the snapshot in service (swapped whole) and reload status.
//! - `chain`: mutate chain and validation over a snapshot; modes, onError.
//! - `limits`: `?timeout=` deadlines, bounded evaluation, connection cap.
//! - `server`: routes and handlers; never names a wasmtime type.
//! - `reload`, `watch`: directory watch, debounce, build then swap.
//! - `metrics`: Prometheus metrics.
//! - `tls`, `certs`, `cert_reload`: the serving certificate and its rotation;
//!   generating CA and certificates.
//! - `offline`: the server's answer computed without a server (eval, test).
//! - `suite`: policy test suites (YAML cases and expectations).
//! - `testing`: a policy crate's tests against its built module.
//! - `scaffold`: the files of a new policy crate (`portcullis new policy`).
//! - `app`: wires engine -> reloader -> TLS -> server; owns the control loop.
//! - `cli`, `commands`: flags and subcommands; `main` maps errors to exit codes.

mod bindings;

pub mod admission;
pub mod app;
pub mod artifact_cache;
pub mod cert_reload;
pub mod certs;
pub mod chain;
pub mod cli;
pub mod commands;
pub mod config;
pub mod contract;
pub mod engine;
pub mod invoke;
pub mod limits;
pub mod matcher;
pub mod metrics;
pub mod module;
pub mod offline;
pub mod policy;
pub mod policy_set;
pub mod policy_store;
pub mod reload;
pub mod sandbox;
pub mod scaffold;
pub mod server;
pub mod shutdown;
pub mod suite;
pub mod telemetry;
pub mod testing;
pub mod tls;
pub mod watch;
