//! The controller: keeps the cluster in step with the policy resources.
//! One replica leads at a time (a Lease); the leader writes the two
//! webhook configurations (the union of the policies' rules) and every
//! policy's status (from the replicas' leases, [`crate::replica`]).
//!
//! It runs beside the server in the same process (`serve --controller`);
//! the others wait as candidates and take over when the leader's lease
//! expires or is released.

mod leader;
mod status;
mod webhooks;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::future::Future;

use futures_util::FutureExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::cluster_policies::{Changes, PolicyKey, PolicyKind, Reflected};
use crate::metrics::Metrics;
use crate::replica::{FILE_POLICY_PREFIX, LEASE_PREFIX, REPLICA_LABEL, ReplicaState};
use portcullis_engine::Report;

pub use leader::{LeaderElector, Leadership};
use webhooks::PolicyRules;
pub use webhooks::{WebhookSettings, WebhookTarget};

/// The leader-election lease's name.
pub const LEADER_LEASE: &str = "portcullis-controller";
const FIELD_MANAGER: &str = "portcullis-controller";
/// Replica leases expired this many durations ago are deleted: the replica
/// is gone for good (scaled down, rescheduled under another name).
const FORGET_AFTER_DURATIONS: i64 = 10;
/// The webhook configurations are written again at least this often, in
/// case someone edited or deleted them.
const REAPPLY_EVERY: Duration = Duration::from_secs(300);

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct ControllerSettings {
    pub webhooks: WebhookSettings,
    /// This candidate's identity (the replica's id).
    pub identity: String,
    /// The leader lease's duration; candidates retry every third of it.
    pub lease_duration: Duration,
    /// The Secret (in the namespace) whose `ca.crt`, else `tls.crt`, is
    /// the webhooks' caBundle.
    pub ca_secret: String,
}

/// Runs as a candidate until `shutdown` resolves; leads when elected.
/// Renewing the lease runs apart from reconciling, so a slow pass (many
/// statuses to write, a slow API server) never lets the lease lapse.
pub async fn run(
    client: kube::Client,
    settings: ControllerSettings,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let elector = LeaderElector::new(
        Api::namespaced(client.clone(), &settings.webhooks.namespace),
        LEADER_LEASE,
        &settings.identity,
        settings.lease_duration,
    );
    let leadership = elector.leadership();
    tokio::select! {
        () = elect(elector, settings.lease_duration / 3, shutdown) => {}
        () = lead(client, settings, leadership, &metrics) => {}
    }
    metrics.controller_leader.set(0);
}

/// Takes or renews the lease every `retry` until `shutdown`, then
/// releases it.
async fn elect(mut elector: LeaderElector, retry: Duration, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        // A hung request must not hold up the next try.
        match tokio::time::timeout(retry, elector.try_acquire_or_renew()).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::warn!(error = %Report(&error), "cannot reach the controller lease");
            }
            Err(_) => tracing::warn!("the controller lease did not answer in time"),
        }
        tokio::select! {
            () = &mut shutdown => {
                elector.release().await;
                return;
            }
            () = tokio::time::sleep(retry) => {}
        }
    }
}

/// Reconciles while this candidate leads: at once on every change it
/// watches, and every third of the lease's duration (expired replica
/// leases change nothing it watches).
async fn lead(
    client: kube::Client,
    settings: ControllerSettings,
    leadership: Leadership,
    metrics: &Metrics,
) {
    let retry = settings.lease_duration / 3;
    let mut leading: Option<Reconciler> = None;
    loop {
        match (leadership.is_leader(), leading.is_some()) {
            (true, false) => {
                tracing::info!(identity = %settings.identity, "leading the controller");
                leading = Some(Reconciler::start(client.clone(), settings.clone()));
                metrics.controller_leader.set(1);
            }
            (false, true) => {
                tracing::warn!(identity = %settings.identity, "no longer leading the controller");
                leading = None;
                metrics.controller_leader.set(0);
            }
            _ => {}
        }
        if let Some(reconciler) = &mut leading {
            reconciler.reconcile(&leadership).await;
        }
        let changes = async {
            match &mut leading {
                Some(reconciler) => reconciler.changed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = tokio::time::sleep(retry) => {}
            () = changes => {}
        }
    }
}

/// The leader's view of the cluster and what it last wrote.
struct Reconciler {
    client: kube::Client,
    settings: ControllerSettings,
    policies: Vec<(PolicyKind, Reflected<DynamicObject>)>,
    leases: Reflected<Lease>,
    changes: watch::Receiver<u64>,
    /// The configurations last written, and when.
    applied: Option<(webhooks::Desired, Instant)>,
    /// Why the configurations could not be written, while they cannot.
    blocked: Option<String>,
    /// The caBundle as last read, and when: read again after a third of
    /// the lease's duration, not on every pass (each replica's renewal is
    /// a pass).
    ca: Option<(Result<Vec<u8>, String>, Instant)>,
}

impl Reconciler {
    fn start(client: kube::Client, settings: ControllerSettings) -> Self {
        let (notify, changes) = watch::channel(0u64);
        let policies = PolicyKind::ALL
            .into_iter()
            .map(|kind| {
                let resource = kind.api_resource();
                let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
                let reflected = Reflected::start(
                    api,
                    resource,
                    watcher::Config::default(),
                    notify.clone(),
                    // Its own status writes need no pass.
                    Changes::Spec,
                    "policy resources (controller)",
                );
                (kind, reflected)
            })
            .collect();
        let leases = Reflected::start(
            Api::namespaced(client.clone(), &settings.webhooks.namespace),
            (),
            watcher::Config::default().labels(&format!("{REPLICA_LABEL}=true")),
            notify,
            Changes::Every,
            "replica leases",
        );
        Self {
            client,
            settings,
            policies,
            leases,
            changes,
            applied: None,
            blocked: None,
            ca: None,
        }
    }

    async fn changed(&mut self) {
        if self.changes.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Writes the webhook configurations and statuses the cluster should
    /// have. Failures are logged and retried on the next pass.
    async fn reconcile(&mut self, leadership: &Leadership) {
        if !self.synced() {
            return;
        }
        let now = k8s_openapi::jiff::Timestamp::now();
        let replicas = self.replicas(now).await;
        let objects: Vec<(PolicyKind, Arc<DynamicObject>)> = self
            .policies
            .iter()
            .flat_map(|(kind, r)| r.store.state().into_iter().map(move |o| (*kind, o)))
            .collect();
        let mut rules: BTreeMap<PolicyKey, PolicyRules> = BTreeMap::new();
        for (kind, object) in &objects {
            if let Some(key) = PolicyKey::of(*kind, object) {
                let uid = object.metadata.uid.clone().unwrap_or_default();
                rules.insert(key.clone(), policy_rules(&key, &uid, object, &replicas));
            }
        }
        // What the replicas' config files serve needs requests too.
        let files = file_policy_rules(&replicas);
        if !leadership.is_leader() {
            return;
        }
        let covered = self.write_webhooks(&rules, &files).await;
        for (kind, object) in &objects {
            // A pass can outlast the lease: stop writing once another
            // candidate may lead.
            if !leadership.is_leader() {
                return;
            }
            let Some(key) = PolicyKey::of(*kind, object) else {
                continue;
            };
            let key_text = key.to_string();
            let uncovered_because = match &self.blocked {
                Some(reason) => reason.clone(),
                None => {
                    "waiting for a replica to load the module and report the resources it judges"
                        .to_string()
                }
            };
            let observed = status::Observed {
                key: &key_text,
                uid: object.metadata.uid.as_deref().unwrap_or_default(),
                generation: object.metadata.generation.unwrap_or_default(),
                covered: covered.contains(&key),
                uncovered_because: &uncovered_because,
            };
            let desired = status::desired(&observed, &replicas);
            if let Err(error) = self.write_status(*kind, object, &desired, now).await {
                tracing::warn!(policy = %key, error = %Report(&error), "cannot write the policy's status");
            }
        }
    }

    fn synced(&self) -> bool {
        // A store that has not listed yet would read as "no policies" and
        // strip the webhook configurations.
        let listed = |store: &kube::runtime::reflector::Store<DynamicObject>| {
            store.wait_until_ready().now_or_never().is_some()
        };
        self.policies.iter().all(|(_, r)| listed(&r.store))
            && self
                .leases
                .store
                .wait_until_ready()
                .now_or_never()
                .is_some()
    }

    /// The replicas, as their leases say; deletes those long gone.
    async fn replicas(&self, now: k8s_openapi::jiff::Timestamp) -> Vec<ReplicaState> {
        let api: Api<Lease> =
            Api::namespaced(self.client.clone(), &self.settings.webhooks.namespace);
        let mut replicas = Vec::new();
        for lease in self.leases.store.state() {
            let name = lease.metadata.name.clone().unwrap_or_default();
            if !name.starts_with(LEASE_PREFIX) {
                continue;
            }
            if long_expired(&lease, now) {
                tracing::info!(lease = %name, "forgetting a replica whose lease expired long ago");
                if let Err(error) = api.delete(&name, &DeleteParams::default()).await {
                    tracing::warn!(lease = %name, error = %Report(&error), "cannot delete the replica lease");
                }
                continue;
            }
            if let Some(state) = ReplicaState::of(&lease, now) {
                replicas.push(state);
            }
        }
        replicas.sort_by(|a, b| a.id.cmp(&b.id));
        replicas
    }

    /// Writes both configurations when they differ from what was last
    /// written (or it is time to repair drift); returns the policies they
    /// cover.
    async fn write_webhooks(
        &mut self,
        rules: &BTreeMap<PolicyKey, PolicyRules>,
        files: &[PolicyRules],
    ) -> BTreeSet<PolicyKey> {
        let ca = match self.ca_bundle_cached().await {
            Ok(ca) => ca,
            Err(reason) => {
                if self.blocked.as_deref() != Some(reason.as_str()) {
                    tracing::warn!(reason = %reason, "not writing the webhook configurations");
                }
                self.blocked = Some(reason);
                return BTreeSet::new();
            }
        };
        let desired = webhooks::desired(&self.settings.webhooks, &ca, rules, files);
        let fresh = self
            .applied
            .as_ref()
            .is_some_and(|(applied, at)| applied == &desired && at.elapsed() < REAPPLY_EVERY);
        if fresh {
            return desired.covered;
        }
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let name = &self.settings.webhooks.name;
        let mut written = Ok(());
        for (plural, body) in [
            ("mutatingwebhookconfigurations", &desired.mutating),
            ("validatingwebhookconfigurations", &desired.validating),
        ] {
            let resource = kube::api::ApiResource {
                group: "admissionregistration.k8s.io".into(),
                version: "v1".into(),
                api_version: "admissionregistration.k8s.io/v1".into(),
                kind: body["kind"].as_str().unwrap_or_default().to_string(),
                plural: plural.into(),
            };
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &resource);
            if let Err(error) = api.patch(name, &params, &Patch::Apply(body)).await {
                written = Err(format!(
                    "cannot write the {} {name}: {}",
                    resource.kind,
                    Report(&error)
                ));
                break;
            }
        }
        match written {
            Ok(()) => {
                let rules: usize = desired.validating["webhooks"]
                    .as_array()
                    .into_iter()
                    .chain(desired.mutating["webhooks"].as_array())
                    .flatten()
                    .map(|w| w["rules"].as_array().map_or(0, Vec::len))
                    .sum();
                tracing::info!(
                    rules,
                    policies = desired.covered.len(),
                    "webhook configurations written"
                );
                self.blocked = None;
                let covered = desired.covered.clone();
                self.applied = Some((desired, Instant::now()));
                covered
            }
            Err(reason) => {
                tracing::warn!(reason = %reason, "webhook configurations not written");
                self.blocked = Some(reason);
                self.applied = None;
                BTreeSet::new()
            }
        }
    }

    /// [`Reconciler::ca_bundle`], read again once a third of the lease's
    /// duration has passed.
    async fn ca_bundle_cached(&mut self) -> Result<Vec<u8>, String> {
        let fresh = self
            .ca
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() < self.settings.lease_duration / 3);
        if !fresh {
            self.ca = Some((self.ca_bundle().await, Instant::now()));
        }
        match &self.ca {
            Some((ca, _)) => ca.clone(),
            None => Err("the caBundle was not read".to_string()),
        }
    }

    /// The CA the API server must trust: the serving certificate's Secret.
    async fn ca_bundle(&self) -> Result<Vec<u8>, String> {
        let namespace = &self.settings.webhooks.namespace;
        let name = &self.settings.ca_secret;
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let secret = api
            .get_opt(name)
            .await
            .map_err(|error| {
                format!(
                    "cannot read the Secret {namespace}/{name}: {}",
                    Report(&error)
                )
            })?
            .ok_or_else(|| {
                format!("the Secret {namespace}/{name} (the caBundle) does not exist")
            })?;
        let data = secret.data.unwrap_or_default();
        data.get("ca.crt")
            .or_else(|| data.get("tls.crt"))
            .filter(|bytes| !bytes.0.is_empty())
            .map(|bytes| bytes.0.clone())
            .ok_or_else(|| format!("the Secret {namespace}/{name} has no ca.crt or tls.crt"))
    }

    async fn write_status(
        &self,
        kind: PolicyKind,
        object: &DynamicObject,
        desired: &status::Desired,
        now: k8s_openapi::jiff::Timestamp,
    ) -> Result<(), kube::Error> {
        let current = object.data.get("status");
        let now = now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let status = status::to_json(desired, current, &now);
        if current == Some(&status) {
            return Ok(());
        }
        let resource = kind.api_resource();
        let api: Api<DynamicObject> = match (&kind, &object.metadata.namespace) {
            (PolicyKind::Namespaced, Some(namespace)) => {
                Api::namespaced_with(self.client.clone(), namespace, &resource)
            }
            _ => Api::all_with(self.client.clone(), &resource),
        };
        let name = object.metadata.name.clone().unwrap_or_default();
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .map(drop)
    }
}

/// What a policy needs the webhooks to send it: what its spec's `match`
/// names, and what the replicas that loaded it say it judges (its
/// module's resources when the spec names none). Both, while a new
/// version rolls out.
fn policy_rules(
    key: &PolicyKey,
    uid: &str,
    object: &DynamicObject,
    replicas: &[ReplicaState],
) -> PolicyRules {
    let spec = object.data.get("spec").cloned().unwrap_or(Value::Null);
    let strings = |value: &Value| -> Vec<String> {
        value
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    let key_text = key.to_string();
    let served: Vec<_> = replicas
        .iter()
        .filter_map(|r| r.report.policies.get(&key_text))
        .filter(|p| p.uid == uid)
        .filter_map(|p| p.served.clone())
        .collect();
    let mut rules = PolicyRules::default();
    let spec_operations = strings(&spec["match"]["operations"]);
    let spec_resources = strings(&spec["match"]["resources"]);
    rules.operations.extend(spec_operations.iter().cloned());
    rules.resources.extend(spec_resources.iter().cloned());
    if spec_operations.is_empty() && served.is_empty() {
        rules.operations.insert("*".to_string());
    }
    for version in &served {
        rules.add(version);
    }
    if served.is_empty() {
        // Not loaded anywhere yet: what it does is not known, so both
        // webhooks send it requests, with what its spec says of failures.
        rules.mutates = true;
        rules.validates = true;
        rules.timeout_ms = spec["timeoutMs"]
            .as_u64()
            .unwrap_or(portcullis_engine::DEFAULT_TIMEOUT_MS);
        rules.fail_closed = spec["mode"].as_str().unwrap_or("enforce") == "enforce"
            && spec["onError"].as_str() != Some("allow");
    }
    rules
}

/// The rules of the policies the live replicas' config files serve.
fn file_policy_rules(replicas: &[ReplicaState]) -> Vec<PolicyRules> {
    replicas
        .iter()
        .filter(|r| r.live)
        .flat_map(|r| r.report.policies.iter())
        .filter(|(key, _)| key.starts_with(FILE_POLICY_PREFIX))
        .filter_map(|(_, report)| report.served.as_ref())
        .map(PolicyRules::from)
        .collect()
}

fn long_expired(lease: &Lease, now: k8s_openapi::jiff::Timestamp) -> bool {
    let Some(spec) = &lease.spec else {
        return false;
    };
    let (Some(renewed), Some(seconds)) = (&spec.renew_time, spec.lease_duration_seconds) else {
        return false;
    };
    let forget = k8s_openapi::jiff::SignedDuration::from_secs(
        i64::from(seconds).saturating_mul(FORGET_AFTER_DURATIONS),
    );
    renewed
        .0
        .checked_add(forget)
        .is_ok_and(|deadline| deadline < now)
}
