//! Portcullis, the server: a Kubernetes admission webhook over HTTPS that
//! runs policies through `portcullis-engine`. This crate has the network,
//! the files and the command line; it names no wasmtime type.
//!
//! # Layout
//! The path of a review, top to bottom, then what runs beside it:
//! - `tls`: the serving identity (rustls), optional client certificates.
//! - `listener`: the accept loop, the connection cap, idle deadlines and
//!   the graceful end of each connection.
//! - `server`: routes, the review body extractor, handlers; `limits`:
//!   `?timeout=` deadlines, bounded evaluation.
//! - `shadow`: candidate evaluations after the answer, their budget, and
//!   what they found.
//! - `metrics`: Prometheus metrics; `telemetry`: logs; `throttle`:
//!   warnings a flood could multiply.
//! - `reload`: build a new policy set and swap it in; `cert_reload`: the
//!   same for the certificate; `watch`: file watching at directory level.
//! - `namespaces`: the cluster's namespaces and their labels, for
//!   policies' `namespaceSelector` (with `--cluster-policies`).
//! - `registry`: `oci://` modules resolved to verified files before a
//!   reload builds its set, and the check for moved tags.
//! - `control`: the one control loop that file events, reload requests
//!   and the registry poll feed.
//! - `app`: start-up, the tasks, the drain that joins them
//!   ([`app::start`], [`app::Server::wait`]).
//! - `certs`: generating a CA and serving certificates.
//! - `cli`, `commands`, `signals`: the binary's flags, subcommands and
//!   process signals; `main` maps errors to exit codes.

pub mod app;
mod cert_reload;
pub mod certs;
pub mod cli;
pub mod cluster_policies;
pub mod commands;
pub mod control;
pub mod controller;
mod limits;
mod listener;
mod metrics;
mod namespaces;
pub mod registry;
mod reload;
pub mod replica;
pub mod server;
mod shadow;
mod signals;
mod telemetry;
mod throttle;
mod tls;
mod watch;

pub use telemetry::{LogFormat, init as init_logs};
