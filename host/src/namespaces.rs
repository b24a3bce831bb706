//! The cluster's namespaces and their labels, for policies'
//! `namespaceSelector`: a kube-rs reflector keeps every `Namespace` in a
//! store, and the engine asks it for a namespace's labels
//! ([`NamespaceLabels`]) only for a policy with a namespaceSelector whose
//! cheaper checks matched.
//!
//! A namespace created a moment ago may not be in the store yet: the
//! engine treats an unknown namespace as a policy error (the policy's
//! `onError`), never as a silent skip.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};

use portcullis_engine::{NamespaceLabels, Report};

use crate::cluster_policies::ClusterError;

/// The namespaces, as the watcher last saw them. The watch stops when this
/// is dropped.
pub struct Namespaces {
    store: Store<Namespace>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl Namespaces {
    /// Starts watching the namespaces with `client` and waits for the
    /// first list.
    ///
    /// # Errors
    /// No list within `sync_timeout` (e.g. this server may not list
    /// namespaces).
    pub async fn start(client: kube::Client, sync_timeout: Duration) -> Result<Self, ClusterError> {
        let api: Api<Namespace> = Api::all(client);
        let writer = reflector::store::Writer::default();
        let store = writer.as_reader();
        let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff();
        let watcher = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                if let Err(error) = event {
                    tracing::warn!(error = %Report(&error), "watching namespaces failed; retrying");
                }
            }
        });
        let namespaces = Self { store, watcher };
        let not_synced = || ClusterError::NamespacesNotSynced {
            seconds: sync_timeout.as_secs(),
        };
        tokio::time::timeout(sync_timeout, namespaces.store.wait_until_ready())
            .await
            .map_err(|_| not_synced())?
            .map_err(|_| not_synced())?;
        Ok(namespaces)
    }
}

impl NamespaceLabels for Namespaces {
    /// The namespace's `metadata.labels` (the API server always sets
    /// `kubernetes.io/metadata.name` to its name).
    fn labels(&self, namespace: &str) -> Option<Arc<BTreeMap<String, String>>> {
        let found = self.store.get(&ObjectRef::new(namespace))?;
        Some(Arc::new(found.metadata.labels.clone().unwrap_or_default()))
    }
}
