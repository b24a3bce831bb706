//! Policies declared in the cluster as `ClusterAdmissionPolicy` resources
//! (`deploy/kubernetes/crds`): a watcher keeps them in a store, every
//! change wakes the control loop, and a reload reads the store beside the
//! config file, through the same path (compile, validate-settings, atomic
//! swap, last good kept).

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt as _;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::sync::watch;

use portcullis_engine::{Config, ConfigError, RawDefaults, RawPolicy, Report};

/// The kind served here.
pub const KIND: &str = "ClusterAdmissionPolicy";
const GROUP: &str = "portcullis.dev";
const VERSION: &str = "v1alpha1";
const PLURAL: &str = "clusteradmissionpolicies";

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
        "the {KIND} resources were not listed within {seconds} s (is the CRD installed, and may this server list them?)"
    )]
    NotSynced { seconds: u64 },
    #[error(
        "the cluster's namespaces were not listed within {seconds} s (may this server list and watch namespaces?)"
    )]
    NamespacesNotSynced { seconds: u64 },
    #[error("{KIND} {name:?}: {message}")]
    Invalid { name: String, message: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The `ClusterAdmissionPolicy` resources, as the watcher last saw them.
pub struct ClusterPolicies {
    store: Store<DynamicObject>,
    changes: watch::Receiver<u64>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for ClusterPolicies {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// A client for the cluster: `kubeconfig`, else the pod's service account
/// or `$KUBECONFIG`. What every watch on the cluster shares.
///
/// # Errors
/// No cluster, or no client.
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

impl ClusterPolicies {
    /// Connects ([`connect`]), starts the watcher and waits for its first
    /// list.
    ///
    /// # Errors
    /// No cluster, no client, or no list within `sync_timeout`.
    pub async fn start(
        kubeconfig: Option<&Path>,
        sync_timeout: Duration,
    ) -> Result<Self, ClusterError> {
        Self::watch(connect(kubeconfig).await?, sync_timeout).await
    }

    /// Starts the watcher with `client` and waits for its first list.
    ///
    /// # Errors
    /// No list within `sync_timeout`.
    pub async fn watch(client: kube::Client, sync_timeout: Duration) -> Result<Self, ClusterError> {
        let gvk = GroupVersionKind::gvk(GROUP, VERSION, KIND);
        let resource = ApiResource::from_gvk_with_plural(&gvk, PLURAL);
        let api: Api<DynamicObject> = Api::all_with(client, &resource);
        let writer = reflector::store::Writer::new(resource);
        let store = writer.as_reader();
        let (notify, changes) = watch::channel(0u64);
        let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff();
        let watcher = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                    Ok(_) => {
                        notify.send_modify(|n| *n += 1);
                    }
                    Err(error) => {
                        tracing::warn!(error = %Report(&error), "watching {KIND} resources failed; retrying");
                    }
                }
            }
        });
        let policies = Self {
            store,
            changes,
            watcher,
        };
        tokio::time::timeout(sync_timeout, policies.store.wait_until_ready())
            .await
            .map_err(|_| ClusterError::NotSynced {
                seconds: sync_timeout.as_secs(),
            })?
            .map_err(|_| ClusterError::NotSynced {
                seconds: sync_timeout.as_secs(),
            })?;
        Ok(policies)
    }

    /// Wakes when a resource was added, changed or deleted.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// The resources as config entries, by name (the order mutating ones
    /// run in, after the config file's).
    ///
    /// # Errors
    /// A resource whose spec is not a policy entry, by name.
    pub fn config(&self) -> Result<Option<Config>, ClusterError> {
        let mut objects = self.store.state();
        if objects.is_empty() {
            return Ok(None);
        }
        objects.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let mut raws: Vec<RawPolicy> = Vec::with_capacity(objects.len());
        for object in objects {
            let name = object.metadata.name.clone().unwrap_or_default();
            let mut entry = object
                .data
                .get("spec")
                .cloned()
                .unwrap_or(serde_json::Value::Null);
            let Some(fields) = entry.as_object_mut() else {
                return Err(ClusterError::Invalid {
                    name,
                    message: "no spec".to_string(),
                });
            };
            fields.insert("name".to_string(), serde_json::Value::String(name.clone()));
            let raw = serde_json::from_value(entry).map_err(|err| ClusterError::Invalid {
                name: name.clone(),
                message: err.to_string(),
            })?;
            raws.push(raw);
        }
        Ok(Some(Config::from_parts(
            Path::new(PLURAL),
            RawDefaults::default(),
            raws,
        )?))
    }
}
