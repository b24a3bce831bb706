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

use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use tokio::sync::watch;

use portcullis_engine::NamespaceLabels;

use crate::cluster_policies::{Changes, ClusterError, Reflected};

/// The namespaces, as the watcher last saw them. The watch stops when this
/// is dropped.
pub struct Namespaces(Reflected<Namespace>);

impl Namespaces {
    /// Starts watching the namespaces with `client` and waits for the
    /// first list.
    ///
    /// # Errors
    /// No list within `sync_timeout` (e.g. this server may not list
    /// namespaces).
    pub async fn start(client: kube::Client, sync_timeout: Duration) -> Result<Self, ClusterError> {
        // Labels are read when a request needs them: a change needs no
        // reload, so nobody listens for changes.
        let (changes, _) = watch::channel(0u64);
        let reflected = Reflected::start(
            Api::all(client),
            (),
            watcher::Config::default(),
            changes,
            Changes::Every,
            "namespaces",
        );
        reflected.synced("namespaces", sync_timeout).await?;
        Ok(Self(reflected))
    }
}

impl NamespaceLabels for Namespaces {
    /// The namespace's `metadata.labels` (the API server always sets
    /// `kubernetes.io/metadata.name` to its name).
    fn labels(&self, namespace: &str) -> Option<Arc<BTreeMap<String, String>>> {
        let found = self.0.store.get(&ObjectRef::new(namespace))?;
        Some(Arc::new(found.metadata.labels.clone().unwrap_or_default()))
    }
}
