//! What the server says about itself: liveness, readiness, metrics, and
//! the policies in service with their reload status.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::{ServerState, json, plain};
use crate::listener::Phase;

pub(super) async fn healthz() -> Response {
    plain(StatusCode::OK, "ok")
}

pub(super) async fn readyz(State(state): State<ServerState>) -> Response {
    if *state.phase.borrow() >= Phase::Draining {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "not ready: shutting down");
    }
    let set = state.policies.current();
    if set.generation == 0 {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no policy set loaded yet",
        );
    }
    plain(
        StatusCode::OK,
        format!(
            "ready: generation {} with {} policies",
            set.generation,
            set.policies().len()
        ),
    )
}

pub(super) async fn metrics(State(state): State<ServerState>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        state.metrics.encode(),
    )
        .into_response()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PolicyView {
    name: String,
    /// The file, or the `oci://` reference as configured.
    module: String,
    /// For a registry module: the manifest in service.
    #[serde(skip_serializing_if = "Option::is_none")]
    registry: Option<RegistryView>,
    /// sha256 of the module's bytes (for a registry module, its layer).
    digest: String,
    size_bytes: usize,
    format: portcullis_engine::ModuleFormat,
    contract: String,
    /// Served from a copy snapshotted after the policy's `prepare` with
    /// these settings.
    pre_initialized: bool,
    version: String,
    validates: bool,
    mutates: bool,
    mode: portcullis_engine::Mode,
    on_error: portcullis_engine::OnError,
    timeout_ms: u128,
    memory_limit_bytes: u64,
    /// The newest reload's error for this policy; the version listed here
    /// keeps serving meanwhile.
    last_load_error: Option<String>,
    /// The candidate evaluated beside it, and what it found.
    #[serde(skip_serializing_if = "Option::is_none")]
    shadow: Option<crate::shadow::ShadowView>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RegistryView {
    manifest: String,
    /// Fingerprint of the key its signature verified with; absent when no
    /// signature was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    signed_by: Option<String>,
    /// The registry could not be reached and the tag was taken as it
    /// resolved last.
    stale: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FailureView {
    at: String,
    policy: Option<String>,
    message: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReloadView {
    last_attempt: Option<String>,
    last_error: Option<FailureView>,
    succeeded: u64,
    failed: u64,
    unchanged: u64,
    modules_compiled: u64,
    modules_reused: u64,
    modules_from_disk_cache: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PoliciesView {
    generation: u64,
    loaded_at: String,
    policies: Vec<PolicyView>,
    reload: ReloadView,
    /// With `--cluster-policies`: each policy resource by
    /// `KIND/[NAMESPACE/]NAME`, the generation in service here or why the
    /// newest was refused (what this replica's lease reports).
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_policies: Option<std::collections::BTreeMap<String, crate::replica::PolicyReport>>,
}

pub(super) async fn policies(State(state): State<ServerState>) -> Response {
    let set = state.policies.current();
    let status = state.policies.status();
    let rfc3339 = crate::telemetry::rfc3339;
    let error_of = |name: &str| {
        status
            .last_error
            .as_ref()
            .filter(|failure| failure.policy.as_deref() == Some(name))
            .map(|failure| failure.message.clone())
    };
    let view = PoliciesView {
        generation: set.generation,
        loaded_at: rfc3339(set.loaded_at),
        policies: set
            .policies()
            .iter()
            .map(|p| PolicyView {
                name: p.name.to_string(),
                module: p.source.to_string(),
                registry: p.origin.as_ref().map(|origin| RegistryView {
                    manifest: origin.manifest.clone(),
                    signed_by: origin.signed_by.clone(),
                    stale: origin.stale,
                }),
                digest: p.module.digest.clone(),
                size_bytes: p.module.size,
                format: p.module.format,
                contract: p.module.contract.to_string(),
                pre_initialized: p.module.prepared,
                version: p.metadata.version.clone(),
                validates: p.metadata.validates,
                mutates: p.metadata.mutates,
                mode: p.mode,
                on_error: p.on_error,
                timeout_ms: p.limits.timeout.as_millis(),
                memory_limit_bytes: p.limits.memory,
                last_load_error: error_of(&p.name),
                shadow: p
                    .shadow
                    .as_ref()
                    .map(|candidate| state.shadows.view(candidate, &p.name)),
            })
            .collect(),
        reload: ReloadView {
            last_attempt: status.last_attempt.map(rfc3339),
            last_error: status.last_error.as_ref().map(|failure| FailureView {
                at: rfc3339(failure.at),
                policy: failure.policy.clone(),
                message: failure.message.clone(),
            }),
            succeeded: status.succeeded,
            failed: status.failed,
            unchanged: status.unchanged,
            modules_compiled: status.modules_compiled,
            modules_reused: status.modules_reused,
            modules_from_disk_cache: status.modules_from_disk_cache,
        },
        cluster_policies: state
            .cluster_reports
            .as_ref()
            .map(|reports| (**reports.borrow()).clone()),
    };
    match serde_json::to_vec(&view) {
        Ok(body) => json(body),
        Err(error) => {
            tracing::error!(%error, "cannot serialize /policies");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot serialize the policy list: {error}"),
            )
        }
    }
}
