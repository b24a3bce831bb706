//! Typed Kubernetes objects, with the SDK's `k8s` feature: the structs of
//! `k8s-openapi` (re-exported as [`openapi`]) for the request's objects,
//! pod specs and containers.
//!
//! Read through typed structs when a policy inspects many fields; keep
//! mutating the `serde_json::Value`, since a struct drops every field it
//! does not know (a newer API server's, an alpha feature's) and the patch
//! would remove them.
//!
//! ```
//! use portcullis_sdk::k8s::openapi::api::core::v1::Pod;
//! # let request = portcullis_sdk::Request::from_json(
//! #     r#"{"operation":"CREATE","object":{"kind":"Pod","spec":{"hostNetwork":true,"containers":[]}}}"#,
//! # ).unwrap();
//! let pod: Option<Pod> = request.object_as()?;
//! let host_network = pod.and_then(|p| p.spec).and_then(|s| s.host_network);
//! assert_eq!(host_network, Some(true));
//! # Ok::<(), String>(())
//! ```

pub use k8s_openapi as openapi;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::pods::{ContainerRef, PodSpecRef};

/// `value` as a `T`; the error names the JSON pointer it came from.
fn typed<T: DeserializeOwned>(value: &Value, path: &str) -> Result<T, String> {
    T::deserialize(value).map_err(|e| format!("{path}: {e}"))
}

impl PodSpecRef<'_> {
    /// The pod spec as `k8s-openapi`'s [`PodSpec`].
    pub fn typed(&self) -> Result<PodSpec, String> {
        typed(self.spec, self.path)
    }
}

impl ContainerRef<'_> {
    /// The container as `k8s-openapi`'s [`Container`]. Ephemeral
    /// containers have the same fields as far as a policy reads them.
    pub fn typed(&self) -> Result<Container, String> {
        typed(self.container, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::openapi::api::apps::v1::Deployment;
    use crate::Request;
    use crate::pods;

    fn deployment() -> serde_json::Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"template": {"spec": {
                "securityContext": {"runAsNonRoot": true},
                "containers": [{"name": "app", "image": "nginx:1.27",
                    "resources": {"limits": {"memory": "128Mi"}}}]
            }}}
        })
    }

    #[test]
    fn request_objects_read_as_typed_structs() {
        let request = json!({"operation": "UPDATE", "object": deployment(), "oldObject": null});
        let request = Request::from_json(&request.to_string()).unwrap();
        let typed: Deployment = request.object_as().unwrap().unwrap();
        assert_eq!(typed.metadata.name.as_deref(), Some("web"));
        assert_eq!(request.old_object_as::<Deployment>(), Ok(None));
    }

    #[test]
    fn pod_specs_and_containers_read_as_typed_structs() {
        let object = deployment();
        let spec = pods::pod_specs(&object)[0].typed().unwrap();
        let non_root = spec.security_context.and_then(|c| c.run_as_non_root);
        assert_eq!(non_root, Some(true));
        let container = pods::containers(&object)[0].typed().unwrap();
        let limits = container
            .resources
            .and_then(|r| r.limits)
            .unwrap_or_default();
        assert_eq!(limits.get("memory").map(|q| q.0.as_str()), Some("128Mi"));
    }

    #[test]
    fn type_errors_name_the_place() {
        let object = json!({"kind": "Pod", "spec": {"containers": [{"name": 7}]}});
        let error = pods::containers(&object)[0].typed().unwrap_err();
        assert!(
            error.starts_with("/spec/containers/0: invalid type"),
            "{error}"
        );
        let request = json!({"operation": "CREATE", "object": {"kind": "Pod", "spec": 3}});
        let request = Request::from_json(&request.to_string()).unwrap();
        let error = request
            .object_as::<super::openapi::api::core::v1::Pod>()
            .unwrap_err();
        assert!(
            error.starts_with("object is not a valid Pod: invalid type"),
            "{error}"
        );
    }
}
