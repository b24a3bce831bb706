//! Policies declared in the cluster (`deploy/kubernetes/crds`):
//! `ClusterAdmissionPolicy` resources, and namespaced `AdmissionPolicy`
//! resources that only ever judge requests in their own namespace.
//! Watchers keep them in stores, every change wakes the control loop, and
//! a reload reads the stores beside the config file, through the same path
//! (compile, validate-settings, atomic swap, last good kept).
//!
//! Each resource is read on its own: one that is not a valid entry is
//! reported against that resource (and its last good version keeps
//! serving) instead of failing every other policy's reload.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt as _;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::sync::watch;

use portcullis_engine::{Config, PolicyConfig, PolicyName, RawDefaults, RawPolicy, Report};

/// The API group and version of the policy resources.
pub const GROUP: &str = "portcullis.dev";
pub const VERSION: &str = "v1alpha1";

/// One of the two policy kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyKind {
    /// `ClusterAdmissionPolicy`: cluster-wide.
    Cluster,
    /// `AdmissionPolicy`: confined to its namespace.
    Namespaced,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 2] = [PolicyKind::Cluster, PolicyKind::Namespaced];

    pub fn kind(self) -> &'static str {
        match self {
            Self::Cluster => "ClusterAdmissionPolicy",
            Self::Namespaced => "AdmissionPolicy",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Self::Cluster => "clusteradmissionpolicies",
            Self::Namespaced => "admissionpolicies",
        }
    }

    /// The dynamic API resource, for clients of either kind.
    pub fn api_resource(self) -> ApiResource {
        let gvk = GroupVersionKind::gvk(GROUP, VERSION, self.kind());
        ApiResource::from_gvk_with_plural(&gvk, self.plural())
    }
}

/// Which resource a policy came from: what its status is written to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    pub kind: PolicyKind,
    /// `None` for a `ClusterAdmissionPolicy`.
    pub namespace: Option<String>,
    pub name: String,
}

impl PolicyKey {
    /// The key of a watched object; `None` if it has no name.
    pub fn of(kind: PolicyKind, object: &DynamicObject) -> Option<Self> {
        Some(Self {
            kind,
            namespace: match kind {
                PolicyKind::Cluster => None,
                PolicyKind::Namespaced => Some(object.metadata.namespace.clone()?),
            },
            name: object.metadata.name.clone()?,
        })
    }
}

/// `ClusterAdmissionPolicy/NAME` or `AdmissionPolicy/NAMESPACE/NAME`: how
/// replicas name resources in their reports.
impl fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{}/{namespace}/{}", self.kind.kind(), self.name),
            None => write!(f, "{}/{}", self.kind.kind(), self.name),
        }
    }
}

/// One watched resource, read as a config entry.
#[derive(Debug, Clone)]
pub struct ClusterEntry {
    pub key: PolicyKey,
    pub uid: String,
    /// `metadata.generation`: moves with every spec change.
    pub generation: i64,
    /// The entry, or why the spec is not one.
    pub policy: Result<PolicyConfig, String>,
}

/// Why the cluster's policies cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read the kubeconfig {}", .path.display())]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("cannot find the cluster's API server (no kubeconfig, not in a pod)")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("cannot make a Kubernetes client")]
    Client(#[source] kube::Error),
    #[error(
        "the {what} were not listed within {seconds} s (may this server list and watch them? is their CRD installed?)"
    )]
    NotSynced { what: &'static str, seconds: u64 },
}

/// A client for the cluster: `kubeconfig`, else the pod's service account
/// or `$KUBECONFIG`.
///
/// # Errors
/// No cluster found, or no client could be made.
pub async fn connect(kubeconfig: Option<&Path>) -> Result<kube::Client, ClusterError> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                ClusterError::Kubeconfig {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|source| ClusterError::Kubeconfig {
                    path: path.to_path_buf(),
                    source,
                })?
        }
        None => kube::Config::infer().await.map_err(ClusterError::Infer)?,
    };
    portcullis_oci::install_crypto_provider();
    kube::Client::try_from(config).map_err(ClusterError::Client)
}

/// A reflector over `api`: its store, waiting for the first list, and a
/// task that bumps `notify` on every change after that.
pub struct Reflected<K: kube::Resource + Clone + 'static>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    pub store: Store<K>,
    task: tokio::task::JoinHandle<()>,
}

impl<K: kube::Resource + Clone + 'static> Drop for Reflected<K>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<K> Reflected<K>
where
    K: kube::Resource + Clone + fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone + Send + Sync,
{
    /// Starts watching; `what` names the resources in logs. `notify` is
    /// bumped on the changes `changes` says matter.
    pub fn start(
        api: Api<K>,
        dynamic: K::DynamicType,
        config: watcher::Config,
        notify: watch::Sender<u64>,
        changes: Changes,
        what: &'static str,
    ) -> Self {
        let writer = reflector::store::Writer::new(dynamic);
        let store = writer.as_reader();
        let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut seen = Generations::default();
            while let Some(event) = stream.next().await {
                match event {
                    Ok(event) => {
                        let matters = match changes {
                            Changes::Every => !matches!(
                                event,
                                watcher::Event::Init | watcher::Event::InitApply(_)
                            ),
                            Changes::Spec => seen.changed(&event),
                        };
                        if matters {
                            notify.send_modify(|n| *n += 1);
                        }
                    }
                    Err(error) => {
                        tracing::warn!(error = %Report(&error), "watching {what} failed; retrying");
                    }
                }
            }
        });
        Self { store, task }
    }

    /// Waits for the first list.
    ///
    /// # Errors
    /// No list within `timeout`.
    pub async fn synced(&self, what: &'static str, timeout: Duration) -> Result<(), ClusterError> {
        let not_synced = || ClusterError::NotSynced {
            what,
            seconds: timeout.as_secs(),
        };
        tokio::time::timeout(timeout, self.store.wait_until_ready())
            .await
            .map_err(|_| not_synced())?
            .map_err(|_| not_synced())
    }
}

/// Which changes of watched objects wake whoever waits on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changes {
    /// Every change after the first list.
    Every,
    /// Objects added or deleted, and spec changes (`metadata.generation`
    /// moved): not status writes, which would otherwise make every
    /// replica reload all policies each time the controller writes one
    /// status.
    Spec,
}

/// The generation of every object, by uid, as [`Changes::Spec`] last saw
/// it; and the generations of a relist while it is in progress.
#[derive(Default)]
struct Generations {
    seen: std::collections::HashMap<String, i64>,
    relist: Option<std::collections::HashMap<String, i64>>,
}

impl Generations {
    /// Records `event`; whether it changed what the objects say.
    fn changed<K: kube::Resource>(&mut self, event: &watcher::Event<K>) -> bool {
        let key = |object: &K| {
            let meta = object.meta();
            (
                meta.uid.clone().unwrap_or_default(),
                meta.generation.unwrap_or_default(),
            )
        };
        match event {
            watcher::Event::Init => {
                self.relist = Some(std::collections::HashMap::new());
                false
            }
            watcher::Event::InitApply(object) => {
                let (uid, generation) = key(object);
                self.relist
                    .get_or_insert_with(Default::default)
                    .insert(uid, generation);
                false
            }
            watcher::Event::InitDone => {
                let relisted = self.relist.take().unwrap_or_default();
                let changed = relisted != self.seen;
                self.seen = relisted;
                changed
            }
            watcher::Event::Apply(object) => {
                let (uid, generation) = key(object);
                self.seen.insert(uid, generation) != Some(generation)
            }
            watcher::Event::Delete(object) => {
                let (uid, _) = key(object);
                self.seen.remove(&uid);
                true
            }
        }
    }
}

/// The `ClusterAdmissionPolicy` and `AdmissionPolicy` resources, as the
/// watchers last saw them.
pub struct ClusterPolicies {
    kinds: Vec<(PolicyKind, Reflected<DynamicObject>)>,
    changes: watch::Receiver<u64>,
}

impl ClusterPolicies {
    /// Starts the watchers and waits for their first lists.
    ///
    /// # Errors
    /// No list within `sync_timeout`.
    pub async fn start(client: kube::Client, sync_timeout: Duration) -> Result<Self, ClusterError> {
        let (notify, changes) = watch::channel(0u64);
        let mut kinds = Vec::new();
        for kind in PolicyKind::ALL {
            let resource = kind.api_resource();
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
            let what = match kind {
                PolicyKind::Cluster => "ClusterAdmissionPolicy resources",
                PolicyKind::Namespaced => "AdmissionPolicy resources",
            };
            let reflected = Reflected::start(
                api,
                resource,
                watcher::Config::default(),
                notify.clone(),
                Changes::Spec,
                what,
            );
            reflected.synced(what, sync_timeout).await?;
            kinds.push((kind, reflected));
        }
        Ok(Self { kinds, changes })
    }

    /// Wakes when a resource was added, changed or deleted.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Every resource as a config entry: cluster-wide ones by name, then
    /// namespaced ones by namespace and name (the order mutating ones run
    /// in, after the config file's).
    pub fn entries(&self) -> Vec<ClusterEntry> {
        let mut entries: Vec<ClusterEntry> = self
            .kinds
            .iter()
            .flat_map(|(kind, reflected)| {
                reflected
                    .store
                    .state()
                    .into_iter()
                    .filter_map(move |object| entry(*kind, &object))
            })
            .collect();
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        entries
    }
}

fn entry(kind: PolicyKind, object: &DynamicObject) -> Option<ClusterEntry> {
    let key = PolicyKey::of(kind, object)?;
    Some(ClusterEntry {
        uid: object.metadata.uid.clone().unwrap_or_default(),
        generation: object.metadata.generation.unwrap_or_default(),
        policy: policy_config(&key, object.data.get("spec")),
        key,
    })
}

/// Reads a resource's spec as a config entry, with the same fields and
/// checks as a config file's (`RawPolicy`).
fn policy_config(
    key: &PolicyKey,
    spec: Option<&serde_json::Value>,
) -> Result<PolicyConfig, String> {
    let mut entry = spec.cloned().unwrap_or(serde_json::Value::Null);
    let Some(fields) = entry.as_object_mut() else {
        return Err("the resource has no spec".to_string());
    };
    // The name is the resource's; a namespaced one is renamed below.
    let placeholder = match key.namespace {
        Some(_) => "namespaced",
        None => key.name.as_str(),
    };
    fields.insert(
        "name".to_string(),
        serde_json::Value::String(placeholder.to_string()),
    );
    let mut raw: RawPolicy = serde_json::from_value(entry).map_err(|err| err.to_string())?;
    if let Some(namespace) = &key.namespace {
        raw.rename(PolicyName::namespaced(namespace, &key.name)?);
        raw.confine_to_namespace(namespace);
    }
    let config = Config::from_parts(
        Path::new(key.kind.plural()),
        RawDefaults::default(),
        vec![raw],
    )
    .map_err(|err| Report(&err).to_string())?;
    config
        .policies
        .into_iter()
        .next()
        .ok_or_else(|| "the resource makes no policy".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(uid: &str, generation: i64, status: &str) -> DynamicObject {
        let mut object = DynamicObject::new("p", &PolicyKind::Cluster.api_resource());
        object.metadata.uid = Some(uid.to_string());
        object.metadata.generation = Some(generation);
        object.data = serde_json::json!({ "status": { "servingSummary": status } });
        object
    }

    #[test]
    fn only_spec_changes_matter() {
        let mut seen = Generations::default();
        assert!(!seen.changed(&watcher::Event::<DynamicObject>::Init));
        assert!(!seen.changed(&watcher::Event::InitApply(object("a", 1, "0/1"))));
        assert!(
            seen.changed(&watcher::Event::<DynamicObject>::InitDone),
            "first list"
        );
        // The controller writing a status: no reload.
        assert!(!seen.changed(&watcher::Event::Apply(object("a", 1, "1/1"))));
        assert!(
            seen.changed(&watcher::Event::Apply(object("a", 2, "1/1"))),
            "spec edited"
        );
        assert!(
            seen.changed(&watcher::Event::Apply(object("b", 1, ""))),
            "added"
        );
        assert!(
            seen.changed(&watcher::Event::Delete(object("b", 1, ""))),
            "deleted"
        );
        // A relist that finds the same generations changes nothing; one
        // that misses a deletion does.
        assert!(!seen.changed(&watcher::Event::<DynamicObject>::Init));
        assert!(!seen.changed(&watcher::Event::InitApply(object("a", 2, "2/2"))));
        assert!(!seen.changed(&watcher::Event::<DynamicObject>::InitDone));
        assert!(!seen.changed(&watcher::Event::<DynamicObject>::Init));
        assert!(seen.changed(&watcher::Event::<DynamicObject>::InitDone));
    }
}
