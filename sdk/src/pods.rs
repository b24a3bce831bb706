//! Finding the pod specs in workload objects and the containers in them.
//!
//! Policies about what runs (images, privileges, resources) apply equally
//! to a bare Pod and to the pod template of every controller; this module
//! finds the pod spec by the object's `kind` so each policy does not have
//! to know where each controller keeps it.

use std::fmt;

use serde_json::Value;

use crate::image::ImageRef;
use crate::{Operation, Request};

/// Where each kind keeps its pod spec and the pod's metadata, as JSON
/// pointers.
const POD_SPEC_PATHS: &[(&str, &str, &str)] = &[
    ("Pod", "/spec", "/metadata"),
    ("Deployment", "/spec/template/spec", TEMPLATE_METADATA),
    ("StatefulSet", "/spec/template/spec", TEMPLATE_METADATA),
    ("DaemonSet", "/spec/template/spec", TEMPLATE_METADATA),
    ("ReplicaSet", "/spec/template/spec", TEMPLATE_METADATA),
    (
        "ReplicationController",
        "/spec/template/spec",
        TEMPLATE_METADATA,
    ),
    ("Job", "/spec/template/spec", TEMPLATE_METADATA),
    (
        "CronJob",
        "/spec/jobTemplate/spec/template/spec",
        "/spec/jobTemplate/spec/template/metadata",
    ),
];

/// What `pods/ephemeralcontainers` carried before Kubernetes 1.22 instead
/// of the Pod: the list at the top level. Read like a pod spec, so
/// `kubectl debug` against an old API server is judged, not let through.
const EPHEMERAL_CONTAINERS_KIND: &str = "EphemeralContainers";

const TEMPLATE_METADATA: &str = "/spec/template/metadata";

/// The resources of the kinds [`pod_specs`] knows, as `resource[.group]`:
/// `Metadata::resources` of a policy that judges or mutates every workload
/// kind through its pod template.
pub const WORKLOAD_RESOURCES: &[&str] = &[
    "pods",
    "deployments.apps",
    "statefulsets.apps",
    "daemonsets.apps",
    "replicasets.apps",
    "replicationcontrollers",
    "jobs.batch",
    "cronjobs.batch",
];

/// [`WORKLOAD_RESOURCES`] and `pods/ephemeralcontainers`: `kubectl debug`
/// adds ephemeral containers through that subresource, not through an
/// update of the pod itself, so a policy about containers must see it too.
pub const CONTAINER_RESOURCES: &[&str] = &[
    "pods",
    "pods/ephemeralcontainers",
    "deployments.apps",
    "statefulsets.apps",
    "daemonsets.apps",
    "replicasets.apps",
    "replicationcontrollers",
    "jobs.batch",
    "cronjobs.batch",
];

/// The kinds [`pod_specs`] knows, e.g. for a policy's documentation.
pub fn workload_kinds() -> impl Iterator<Item = &'static str> {
    POD_SPEC_PATHS.iter().map(|(kind, _, _)| *kind)
}

/// A pod spec inside an object.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PodSpecRef<'a> {
    /// JSON pointer to the spec, e.g. `/spec/template/spec`.
    pub path: &'static str,
    /// JSON pointer to the metadata of the pods it makes: `/metadata` of a
    /// Pod, `/spec/template/metadata` of a Deployment. Labels and
    /// annotations for the pods go here (it may not exist yet; see
    /// [`crate::object::ensure_map`]).
    pub metadata_path: &'static str,
    /// The spec itself.
    pub spec: &'a Value,
}

/// The pod specs of `object`, found by its `kind`: `spec` of a Pod,
/// `spec.template.spec` of Deployments, StatefulSets, DaemonSets,
/// ReplicaSets, ReplicationControllers and Jobs, and
/// `spec.jobTemplate.spec.template.spec` of CronJobs, and the object itself
/// for the pre-1.22 `EphemeralContainers` kind. Empty for any other kind or
/// when the spec is missing.
pub fn pod_specs(object: &Value) -> Vec<PodSpecRef<'_>> {
    let Some(kind) = crate::object::kind(object) else {
        return Vec::new();
    };
    if kind == EPHEMERAL_CONTAINERS_KIND {
        return vec![PodSpecRef {
            path: "",
            metadata_path: "/metadata",
            spec: object,
        }];
    }
    POD_SPEC_PATHS
        .iter()
        .filter(|(k, _, _)| *k == kind)
        .filter_map(|(_, path, metadata_path)| {
            let spec = object.pointer(path).filter(|spec| spec.is_object())?;
            Some(PodSpecRef {
                path,
                metadata_path,
                spec,
            })
        })
        .collect()
}

/// Every container of every pod spec in `object`, in the order
/// containers, initContainers, ephemeralContainers.
pub fn containers(object: &Value) -> Vec<ContainerRef<'_>> {
    pod_specs(object)
        .iter()
        .flat_map(PodSpecRef::containers)
        .collect()
}

/// Every container of the object a request creates or updates (see
/// [`Request::written_object`]); none for DELETE and CONNECT.
pub fn written_containers(request: &Request) -> Vec<ContainerRef<'_>> {
    request.written_object().map(containers).unwrap_or_default()
}

/// The containers an UPDATE finds already there: those of `oldObject` on
/// UPDATE, none otherwise. A running Pod's containers are immutable apart
/// from their image, so a mutating policy must leave these alone and only
/// change containers the update adds (e.g. the ephemeral container of
/// `kubectl debug`); a validating policy may use them to judge only what
/// changed.
pub fn containers_before(request: &Request) -> Vec<ContainerRef<'_>> {
    match (&request.operation, request.old_object()) {
        (Operation::Update, Some(old)) => containers(old),
        _ => Vec::new(),
    }
}

/// Which list of a pod spec a container is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContainerKind {
    /// `containers`
    Container,
    /// `initContainers`
    InitContainer,
    /// `ephemeralContainers`
    EphemeralContainer,
}

impl ContainerKind {
    /// Every list, in the order they are visited.
    pub const ALL: [ContainerKind; 3] = [
        ContainerKind::Container,
        ContainerKind::InitContainer,
        ContainerKind::EphemeralContainer,
    ];

    /// The pod spec field holding the list, e.g. `initContainers`.
    pub fn field(self) -> &'static str {
        match self {
            ContainerKind::Container => "containers",
            ContainerKind::InitContainer => "initContainers",
            ContainerKind::EphemeralContainer => "ephemeralContainers",
        }
    }
}

impl fmt::Display for ContainerKind {
    /// The singular used in messages: `container`, `initContainer`,
    /// `ephemeralContainer`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ContainerKind::Container => "container",
            ContainerKind::InitContainer => "initContainer",
            ContainerKind::EphemeralContainer => "ephemeralContainer",
        })
    }
}

/// One container of a pod spec.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerRef<'a> {
    /// The list it is in.
    pub kind: ContainerKind,
    /// Its index in that list.
    pub index: usize,
    /// JSON pointer to it, e.g. `/spec/template/spec/initContainers/0`.
    pub path: String,
    /// The container itself.
    pub container: &'a Value,
}

impl<'a> ContainerRef<'a> {
    /// The container's `name`.
    pub fn name(&self) -> Option<&'a str> {
        self.container.get("name")?.as_str()
    }

    /// The container's `image`, as written.
    pub fn image(&self) -> Option<&'a str> {
        self.container.get("image")?.as_str()
    }

    /// The container as messages name it: `container "web"`,
    /// `initContainer "setup"`.
    pub fn describe(&self) -> String {
        format!("{} {:?}", self.kind, self.name().unwrap_or(""))
    }

    /// Whether the container's image matches one of `patterns` (an
    /// `exemptImages` list): a container without a valid image never does.
    pub fn is_exempt(&self, patterns: &crate::image::ImagePatterns) -> bool {
        !patterns.is_empty() && self.image_ref().is_ok_and(|image| patterns.matches(&image))
    }

    /// The container's image, parsed and normalized; the error is a
    /// message for the user: `container "web" has no image`, or
    /// `container "web" uses image "Nginx", which is not a valid image
    /// reference (repository name must be lowercase)`.
    pub fn image_ref(&self) -> Result<ImageRef, String> {
        // The description is built only for a message: most containers
        // have a valid image, and this runs for each on every request.
        let Some(text) = self.image().filter(|image| !image.is_empty()) else {
            return Err(format!("{} has no image", self.describe()));
        };
        ImageRef::parse(text).map_err(|e| {
            format!(
                "{} uses image {text:?}, which is not a valid image reference ({})",
                self.describe(),
                e.reason()
            )
        })
    }
}

impl<'a> PodSpecRef<'a> {
    /// Every container, in the order containers, initContainers,
    /// ephemeralContainers; lists that are missing or not arrays are
    /// skipped.
    pub fn containers(&self) -> Vec<ContainerRef<'a>> {
        let spec = self.spec;
        ContainerKind::ALL
            .into_iter()
            .flat_map(|kind| {
                let list = spec.get(kind.field()).and_then(Value::as_array);
                list.into_iter()
                    .flatten()
                    .enumerate()
                    .map(move |(index, container)| ContainerRef {
                        kind,
                        index,
                        path: format!("{}/{}/{index}", self.path, kind.field()),
                        container,
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
