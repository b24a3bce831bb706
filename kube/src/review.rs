//! AdmissionReviews built from bare objects, shaped as kube-apiserver
//! sends them, and the resource name a kind is served as.
//!
//! One builder for everyone who needs a review without a cluster: the
//! policy test suites (`portcullis test`), the end-to-end tests and the
//! SDK's test helpers. Before it there were three, with three different
//! plural rules (one turned `Ingress` into `ingresss`).

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

/// The operations an AdmissionRequest can carry.
pub const OPERATIONS: [&str; 4] = ["CREATE", "UPDATE", "DELETE", "CONNECT"];

/// Built-in kinds whose resource name is not what the API server's guess
/// from the kind would give (`UnsafeGuessKindToResource`): these are
/// registered with explicit names.
const IRREGULAR: &[(&str, &str)] = &[
    ("Endpoints", "endpoints"),
    ("EndpointSlice", "endpointslices"),
    ("PodSecurityPolicy", "podsecuritypolicies"),
];

/// The resource (lower case, plural) the API server serves `kind` as.
///
/// Follows kube-apiserver's rules: a kind ending in `s` (and `x`, `ch`,
/// `sh`, as English does) takes `es` (`Ingress` -> `ingresses`); a
/// consonant then `y` becomes `ies` (`NetworkPolicy` -> `networkpolicies`);
/// a vowel then `y` takes `s` (`Gateway` -> `gateways`, as custom resource
/// definitions spell it); everything else takes `s`. `Endpoints` is its
/// own plural.
pub fn resource_of(kind: &str) -> String {
    if let Some((_, resource)) = IRREGULAR.iter().find(|(k, _)| *k == kind) {
        return (*resource).to_string();
    }
    let lower = kind.to_ascii_lowercase();
    if let Some(stem) = lower.strip_suffix('y')
        && !stem.ends_with(['a', 'e', 'i', 'o', 'u'])
    {
        return format!("{stem}ies");
    }
    if lower.ends_with('s')
        || lower.ends_with('x')
        || lower.ends_with("ch")
        || lower.ends_with("sh")
    {
        return format!("{lower}es");
    }
    format!("{lower}s")
}

/// Why a review could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildError {
    /// Not one of [`OPERATIONS`].
    Operation(String),
    /// The object has no string `apiVersion`.
    NoApiVersion,
    /// The object has no string `kind`.
    NoKind,
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Operation(other) => write!(
                f,
                "operation {other:?} is not one of CREATE, UPDATE, DELETE, CONNECT"
            ),
            Self::NoApiVersion => f.write_str("the object has no apiVersion"),
            Self::NoKind => f.write_str("the object has no kind"),
        }
    }
}

impl std::error::Error for BuildError {}

/// An AdmissionRequest for one operation on one object, as the API server
/// would send it. Defaults follow the API server: kind and resource from
/// the object's `apiVersion` and `kind`; name and namespace from its
/// metadata (a Namespace is its own namespace); a fresh uid; user `alice`
/// in `system:authenticated`. CREATE and CONNECT carry the object; UPDATE
/// carries it as `object` and, unless told otherwise, as `oldObject`;
/// DELETE carries it as `oldObject` only.
#[derive(Debug, Clone)]
pub struct ReviewBuilder {
    object: Value,
    operation: String,
    api_version: String,
    kind: String,
    uid: Option<String>,
    namespace: Option<String>,
    resource: Option<String>,
    sub_resource: Option<String>,
    user_info: Option<Value>,
    old_object: Option<Value>,
}

impl ReviewBuilder {
    /// A request for `operation` of `object`.
    ///
    /// # Errors
    /// When `operation` is not an admission operation, or the object has
    /// no `apiVersion` or `kind`.
    pub fn new(operation: &str, object: Value) -> Result<Self, BuildError> {
        let api_version = object["apiVersion"]
            .as_str()
            .ok_or(BuildError::NoApiVersion)?
            .to_string();
        let kind = object["kind"]
            .as_str()
            .ok_or(BuildError::NoKind)?
            .to_string();
        Self::for_kind(operation, &api_version, &kind, object)
    }

    /// A request for `operation` of `object`, as kind `kind` in
    /// `api_version` whatever the object says (e.g. a test's partial
    /// object with neither).
    ///
    /// # Errors
    /// When `operation` is not an admission operation.
    pub fn for_kind(
        operation: &str,
        api_version: &str,
        kind: &str,
        object: Value,
    ) -> Result<Self, BuildError> {
        if !OPERATIONS.contains(&operation) {
            return Err(BuildError::Operation(operation.to_string()));
        }
        Ok(Self {
            object,
            operation: operation.to_string(),
            api_version: api_version.to_string(),
            kind: kind.to_string(),
            uid: None,
            namespace: None,
            resource: None,
            sub_resource: None,
            user_info: None,
            old_object: None,
        })
    }

    /// The request's uid (default: a fresh UUID-shaped one per request).
    #[must_use]
    pub fn uid(mut self, uid: impl Into<String>) -> Self {
        self.uid = Some(uid.into());
        self
    }

    /// The namespace, in place of the object's own.
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// The resource, in place of [`resource_of`] the kind.
    #[must_use]
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }

    /// The subresource the request is for (e.g. `ephemeralcontainers`).
    #[must_use]
    pub fn sub_resource(mut self, sub_resource: impl Into<String>) -> Self {
        self.sub_resource = Some(sub_resource.into());
        self
    }

    /// The requesting user (`username`, `groups`, ...).
    #[must_use]
    pub fn user_info(mut self, user_info: Value) -> Self {
        self.user_info = Some(user_info);
        self
    }

    /// The object before an UPDATE (`Value::Null` for none).
    #[must_use]
    pub fn old_object(mut self, old_object: Value) -> Self {
        self.old_object = Some(old_object);
        self
    }

    /// The bare AdmissionRequest.
    pub fn request(self) -> Value {
        let (group, version) = self
            .api_version
            .split_once('/')
            .unwrap_or(("", self.api_version.as_str()));
        let resource = self.resource.unwrap_or_else(|| resource_of(&self.kind));
        let gvk = json!({"group": group, "version": version, "kind": self.kind});
        let gvr = json!({"group": group, "version": version, "resource": resource});
        let metadata = &self.object["metadata"];
        let namespace = self
            .namespace
            .or_else(|| metadata["namespace"].as_str().map(str::to_string))
            .or_else(|| {
                // The API server gives a Namespace its own name as namespace.
                (self.kind == "Namespace")
                    .then(|| metadata["name"].as_str().map(str::to_string))
                    .flatten()
            });
        let mut request = json!({
            "uid": self.uid.unwrap_or_else(fresh_uid),
            "kind": gvk,
            "resource": gvr,
            "requestKind": gvk,
            "requestResource": gvr,
            "operation": self.operation,
            "userInfo": self.user_info.unwrap_or_else(|| json!({
                "username": "alice",
                "groups": ["system:authenticated"],
            })),
            "object": null,
            "oldObject": null,
            "dryRun": false,
            "options": null,
        });
        if let Some(name) = metadata["name"].as_str() {
            request["name"] = json!(name);
        }
        if let Some(namespace) = namespace {
            request["namespace"] = json!(namespace);
        }
        if let Some(sub_resource) = self.sub_resource {
            request["subResource"] = json!(sub_resource);
        }
        match self.operation.as_str() {
            "DELETE" => request["oldObject"] = self.object,
            "UPDATE" => {
                request["oldObject"] = self.old_object.unwrap_or_else(|| self.object.clone());
                request["object"] = self.object;
            }
            _ => request["object"] = self.object,
        }
        request
    }

    /// The AdmissionReview v1 envelope around [`Self::request`].
    pub fn review(self) -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": self.request(),
        })
    }
}

/// A UUID-shaped uid, unique within the process.
fn fresh_uid() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("00000000-0000-4000-8000-{n:012}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plurals_follow_the_api_servers_rules() {
        for (kind, resource) in [
            ("Pod", "pods"),
            ("Deployment", "deployments"),
            ("Ingress", "ingresses"),
            ("IngressClass", "ingressclasses"),
            ("NetworkPolicy", "networkpolicies"),
            ("PriorityClass", "priorityclasses"),
            ("Gateway", "gateways"),
            ("Endpoints", "endpoints"),
            ("EndpointSlice", "endpointslices"),
            ("StorageClass", "storageclasses"),
            ("ConfigMap", "configmaps"),
            ("Namespace", "namespaces"),
            ("ServiceMonitor", "servicemonitors"),
            ("ClusterRole", "clusterroles"),
            ("VulnerabilityReport", "vulnerabilityreports"),
        ] {
            assert_eq!(resource_of(kind), resource, "{kind}");
        }
    }

    #[test]
    fn operations_carry_object_and_old_object_as_the_api_server_does() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": "web", "namespace": "shop"}});
        let create = ReviewBuilder::new("CREATE", pod.clone()).map(ReviewBuilder::request);
        let create = create.unwrap_or_default();
        assert_eq!(create["object"], pod);
        assert_eq!(create["oldObject"], Value::Null);
        assert_eq!(create["namespace"], "shop");
        assert_eq!(create["name"], "web");
        assert_eq!(create["resource"]["resource"], "pods");
        assert_eq!(create["kind"]["group"], "");

        let update = ReviewBuilder::new("UPDATE", pod.clone()).map(ReviewBuilder::request);
        let update = update.unwrap_or_default();
        assert_eq!(update["object"], pod);
        assert_eq!(update["oldObject"], pod);

        let delete = ReviewBuilder::new("DELETE", pod.clone()).map(ReviewBuilder::request);
        let delete = delete.unwrap_or_default();
        assert_eq!(delete["object"], Value::Null);
        assert_eq!(delete["oldObject"], pod);
    }

    #[test]
    fn groups_namespaces_and_overrides() {
        let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
                                "metadata": {"name": "web"}});
        let review = ReviewBuilder::new("CREATE", deployment)
            .map(|b| {
                b.namespace("shop")
                    .uid("u-1")
                    .sub_resource("scale")
                    .review()
            })
            .unwrap_or_default();
        let request = &review["request"];
        assert_eq!(review["kind"], "AdmissionReview");
        assert_eq!(request["kind"]["group"], "apps");
        assert_eq!(request["resource"]["resource"], "deployments");
        assert_eq!(request["namespace"], "shop");
        assert_eq!(request["uid"], "u-1");
        assert_eq!(request["subResource"], "scale");

        let namespace =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}});
        let request = ReviewBuilder::new("CREATE", namespace)
            .map(ReviewBuilder::request)
            .unwrap_or_default();
        assert_eq!(request["namespace"], "team-a");
    }

    #[test]
    fn what_cannot_be_a_review_is_refused() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod"});
        assert_eq!(
            ReviewBuilder::new("PATCH", pod).err(),
            Some(BuildError::Operation("PATCH".into()))
        );
        assert_eq!(
            ReviewBuilder::new("CREATE", json!({"kind": "Pod"})).err(),
            Some(BuildError::NoApiVersion)
        );
        assert_eq!(
            ReviewBuilder::new("CREATE", json!({"apiVersion": "v1"})).err(),
            Some(BuildError::NoKind)
        );
    }

    #[test]
    fn uids_are_fresh() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod"});
        let a = ReviewBuilder::new("CREATE", pod.clone()).map(ReviewBuilder::request);
        let b = ReviewBuilder::new("CREATE", pod).map(ReviewBuilder::request);
        assert_ne!(a.unwrap_or_default()["uid"], b.unwrap_or_default()["uid"]);
    }
}
