//! What this replica serves, told to the cluster: each replica keeps a
//! `Lease` (`portcullis-replica-ID` in its namespace) renewed while it
//! lives, whose annotation reports, per policy resource, the generation
//! it enforces or why it refused the newest one. The controller reads the
//! leases of every replica to write honest status: a policy is Ready only
//! when every ready replica enforces its current spec.
//!
//! A lease, not the resource's status: replicas never write to the policy
//! resources, so N replicas do not fight over one status, and a replica
//! that dies stops renewing and is seen as gone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::listener::Phase;
use portcullis_engine::{PolicyStore, Report};

/// The label every replica lease carries (value `"true"`).
pub const REPLICA_LABEL: &str = "portcullis.dev/replica";
/// The annotation holding a [`ReplicaReport`] as JSON.
pub const REPORT_ANNOTATION: &str = "portcullis.dev/report";
/// Replica lease names: this prefix and the replica's id.
pub const LEASE_PREFIX: &str = "portcullis-replica-";

/// How a config file's policy is named in a report (policy resources are
/// named by [`crate::cluster_policies::PolicyKey`]).
pub const FILE_POLICY_PREFIX: &str = "ConfigFile/";

const FIELD_MANAGER: &str = "portcullis-replica";

/// What a replica does with each policy resource, by key, as the reloader
/// last published it.
pub type Reports = watch::Receiver<Arc<BTreeMap<String, PolicyReport>>>;

/// One replica's account of itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaReport {
    /// Serving and not stopping: the API server may be sent here.
    pub ready: bool,
    /// By [`crate::cluster_policies::PolicyKey`] (as text).
    #[serde(default)]
    pub policies: BTreeMap<String, PolicyReport>,
}

/// What a replica does with one policy resource.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyReport {
    /// The resource's uid: a resource deleted and made again under the
    /// same name is another resource.
    pub uid: String,
    /// The version enforcing, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served: Option<ServedVersion>,
    /// The newest generation it refused, and why; cleared once that
    /// generation or a newer one serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<Refusal>,
}

/// A version of a policy in service, and what the webhook configuration
/// must send it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServedVersion {
    /// The resource's `metadata.generation` this version was built from.
    pub generation: i64,
    /// The module's sha256.
    pub digest: String,
    /// The manifest digest of an `oci://` module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    pub mutates: bool,
    pub validates: bool,
    /// `CREATE`, ..., or `*`.
    pub operations: Vec<String>,
    /// Resource patterns (`pods`, `deployments.apps`, `*`).
    pub resources: Vec<String>,
    pub timeout_ms: u64,
    /// Whether a failure to reach the webhook should refuse the request:
    /// the policy enforces and does not allow on error.
    pub fail_closed: bool,
}

/// Why a generation of a policy resource is not in service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Refusal {
    pub generation: i64,
    /// A CamelCase reason, for the `Degraded` condition.
    pub reason: String,
    pub message: String,
}

/// Where and as whom this replica reports.
#[derive(Debug, Clone)]
pub struct ReplicaSettings {
    pub namespace: String,
    /// Unique among the replicas: the pod's name in a cluster.
    pub id: String,
    /// How long a report stands without renewal.
    pub lease_duration: Duration,
}

impl ReplicaSettings {
    /// The lease's name: a DNS subdomain whatever the id.
    pub fn lease_name(&self) -> String {
        let id: String = self
            .id
            .to_ascii_lowercase()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .take(200)
            .collect();
        format!("{LEASE_PREFIX}{}", id.trim_matches(['-', '.']))
    }
}

/// Keeps this replica's lease renewed and its report current until the
/// task is dropped: at once when the policies or the phase change, and
/// every third of the lease's duration.
pub async fn publish(
    client: kube::Client,
    settings: ReplicaSettings,
    store: Arc<PolicyStore>,
    mut reports: Reports,
    mut phase: watch::Receiver<Phase>,
) {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let name = settings.lease_name();
    let mut renew = tokio::time::interval(settings.lease_duration / 3);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        let report = ReplicaReport {
            ready: *phase.borrow() == Phase::Serving && store.current().generation > 0,
            policies: (**reports.borrow_and_update()).clone(),
        };
        // A hung request must not hold back the next renewal: by then the
        // report may have changed, and the lease must not lapse unseen.
        let written = tokio::time::timeout(
            settings.lease_duration / 3,
            write(&api, &name, &settings, &report),
        )
        .await
        .unwrap_or_else(|_| Err(WriteError::TimedOut));
        match written {
            Ok(()) if failing => {
                tracing::info!(lease = %name, "replica lease written again");
                failing = false;
            }
            Ok(()) => {}
            Err(error) if !failing => {
                tracing::warn!(lease = %name, error = %Report(&error), "cannot write the replica lease; retrying");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = renew.tick() => {}
            changed = reports.changed() => if changed.is_err() { return },
            changed = phase.changed() => if changed.is_err() { return },
        }
    }
}

/// Why the lease was not written.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("the API server did not answer within a third of the lease's duration")]
    TimedOut,
}

async fn write(
    api: &Api<Lease>,
    name: &str,
    settings: &ReplicaSettings,
    report: &ReplicaReport,
) -> Result<(), WriteError> {
    let report = serde_json::to_string(report).map_err(kube::Error::SerdeError)?;
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        k8s_openapi::jiff::Timestamp::now(),
    );
    let lease = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "labels": {
                REPLICA_LABEL: "true",
                "app.kubernetes.io/name": "portcullis",
            },
            "annotations": { REPORT_ANNOTATION: report },
        },
        "spec": {
            "holderIdentity": settings.id,
            "leaseDurationSeconds": settings.lease_duration.as_secs().max(1),
            "renewTime": now,
        },
    });
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(lease),
    )
    .await?;
    Ok(())
}

/// A replica as the controller sees it: its lease.
#[derive(Debug, Clone)]
pub struct ReplicaState {
    pub id: String,
    /// Ready, and its lease not expired.
    pub live: bool,
    pub report: ReplicaReport,
}

impl ReplicaState {
    /// Reads a lease; `None` if it is not a replica's.
    pub fn of(lease: &Lease, now: k8s_openapi::jiff::Timestamp) -> Option<Self> {
        let labels = lease.metadata.labels.as_ref()?;
        if labels.get(REPLICA_LABEL).map(String::as_str) != Some("true") {
            return None;
        }
        let spec = lease.spec.as_ref()?;
        let report: ReplicaReport = lease
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REPORT_ANNOTATION))
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_default();
        let expires = spec.renew_time.as_ref().and_then(|renewed| {
            let seconds = i64::from(spec.lease_duration_seconds.unwrap_or(0));
            renewed
                .0
                .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(seconds))
                .ok()
        });
        let fresh = expires.is_some_and(|at| at > now);
        Some(Self {
            id: spec.holder_identity.clone().unwrap_or_default(),
            live: fresh && report.ready,
            report,
        })
    }
}
