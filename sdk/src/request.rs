//! The AdmissionRequest, typed.
//!
//! The host passes the `request` member of an AdmissionReview as JSON text.
//! Parsing is lenient on purpose: every field may be missing or `null`
//! (it then takes its default), unknown fields are ignored and unknown
//! operations are kept as text, so a newer API server or a hand-written
//! test request never makes a policy fail before it has looked at it.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use self::lazy::LazyObject;

mod lazy;

/// One AdmissionRequest (`admission.k8s.io/v1`, also `v1beta1`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Request {
    /// Identifies this request; the host echoes it in the response.
    #[serde(deserialize_with = "null_as_default")]
    pub uid: String,
    /// The kind of the object as the webhook sees it (after conversion).
    #[serde(deserialize_with = "null_as_default")]
    pub kind: GroupVersionKind,
    /// The resource being requested, e.g. `pods` in group `""`.
    #[serde(deserialize_with = "null_as_default")]
    pub resource: GroupVersionResource,
    /// The subresource, e.g. `status` or `exec`; empty for the main resource.
    #[serde(deserialize_with = "null_as_default")]
    pub sub_resource: String,
    /// The kind the client originally asked for, when it differs.
    pub request_kind: Option<GroupVersionKind>,
    /// The resource the client originally asked for, when it differs.
    pub request_resource: Option<GroupVersionResource>,
    /// The subresource the client originally asked for, when it differs.
    pub request_sub_resource: Option<String>,
    /// The object's name; empty when the client used `generateName` and
    /// the name is not chosen yet.
    #[serde(deserialize_with = "null_as_default")]
    pub name: String,
    /// The namespace; empty for cluster-scoped resources.
    #[serde(deserialize_with = "null_as_default")]
    pub namespace: String,
    /// What is being done.
    #[serde(deserialize_with = "null_as_default")]
    pub operation: Operation,
    /// Who is doing it.
    #[serde(deserialize_with = "null_as_default")]
    pub user_info: UserInfo,
    /// The object as it would be stored; absent on DELETE. Nearly every
    /// policy reads it, so it is parsed with the request.
    #[serde(deserialize_with = "LazyObject::parse_now")]
    object: LazyObject,
    /// The existing object on UPDATE and DELETE; absent on CREATE.
    old_object: LazyObject,
    /// True for `--dry-run=server`: the request will not be persisted, so
    /// a policy must have no side effects beyond its answer.
    #[serde(deserialize_with = "null_as_default")]
    pub dry_run: bool,
    /// The operation's options, e.g. a `CreateOptions` object.
    options: LazyObject,
}

impl Request {
    /// Parses the JSON text of an AdmissionRequest (not the review
    /// envelope around it).
    pub fn from_json(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| format!("invalid admission request: {e}"))
    }

    /// The object as it would be stored: on CREATE and UPDATE the new
    /// object, on CONNECT an options object (e.g. `PodExecOptions`);
    /// `None` on DELETE.
    ///
    /// Parsed from the request's text the first time it is asked for, and
    /// without `metadata.managedFields` (the API server's record of which
    /// client set which field; no admission decision needs it, and it is
    /// often the largest part of an object). A mutating policy's output
    /// gets them back unchanged.
    pub fn object(&self) -> Option<&Value> {
        self.object.get()
    }

    /// The existing object on UPDATE and DELETE; `None` on CREATE. Kept
    /// as text until first used (a policy judging what is written rarely
    /// looks at what was there), then parsed like [`Request::object`].
    pub fn old_object(&self) -> Option<&Value> {
        self.old_object.get()
    }

    /// The operation's options, e.g. a `CreateOptions` object. Parsed on
    /// first use.
    pub fn options(&self) -> Option<&Value> {
        self.options.get()
    }

    /// The object being created or updated: `object` on CREATE and
    /// UPDATE, `None` otherwise. DELETE has no object, and CONNECT's
    /// object is an options object (e.g. `PodExecOptions`), not the
    /// resource, so most policies judge and mutate only what this returns.
    pub fn written_object(&self) -> Option<&Value> {
        match self.operation {
            Operation::Create | Operation::Update => self.object(),
            _ => None,
        }
    }

    /// `object` with `metadata.managedFields` put back, for a mutated copy
    /// of it that is sent back to the host.
    pub(crate) fn restore_managed_fields(&self, object: &mut Value) {
        self.object.restore_managed_fields(object);
    }

    /// `object` deserialized into a typed struct, e.g. `k8s_openapi`'s
    /// `Pod` with the SDK's `k8s` feature, or a struct of the few fields a
    /// policy reads. `Ok(None)` when the request has no object. Like
    /// [`Request::object`], it carries no `metadata.managedFields`.
    ///
    /// Typed structs drop fields they do not know: read through them, but
    /// mutate the `serde_json::Value` so nothing is lost from the object.
    pub fn object_as<T: DeserializeOwned>(&self) -> Result<Option<T>, String> {
        typed(self.object.typed(), "object")
    }

    /// `oldObject` deserialized like [`Request::object_as`], straight from
    /// its text (managed fields included).
    pub fn old_object_as<T: DeserializeOwned>(&self) -> Result<Option<T>, String> {
        typed(self.old_object.typed(), "oldObject")
    }
}

/// A member's typed reading, the error naming the `field` and the type.
fn typed<T>(read: Option<serde_json::Result<T>>, field: &str) -> Result<Option<T>, String> {
    read.map(|result| {
        result.map_err(|e| {
            format!(
                "{field} is not a valid {}: {e}",
                std::any::type_name::<T>()
                    .rsplit("::")
                    .next()
                    .unwrap_or("object")
            )
        })
    })
    .transpose()
}

/// A kind: group, version and kind (`""`, `v1`, `Pod`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct GroupVersionKind {
    /// The API group; `""` for the core group.
    #[serde(deserialize_with = "null_as_default")]
    pub group: String,
    /// The API version, e.g. `v1`.
    #[serde(deserialize_with = "null_as_default")]
    pub version: String,
    /// The kind, e.g. `Pod`.
    #[serde(deserialize_with = "null_as_default")]
    pub kind: String,
}

/// A resource: group, version and resource (`apps`, `v1`, `deployments`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct GroupVersionResource {
    /// The API group; `""` for the core group.
    #[serde(deserialize_with = "null_as_default")]
    pub group: String,
    /// The API version, e.g. `v1`.
    #[serde(deserialize_with = "null_as_default")]
    pub version: String,
    /// The resource (plural, lower case), e.g. `deployments`.
    #[serde(deserialize_with = "null_as_default")]
    pub resource: String,
}

/// The user who sent the request, as the API server authenticated them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct UserInfo {
    /// The user's name, e.g. `kubernetes-admin` or
    /// `system:serviceaccount:ns:name`.
    #[serde(deserialize_with = "null_as_default")]
    pub username: String,
    /// A unique id of the user, when the authenticator gives one.
    #[serde(deserialize_with = "null_as_default")]
    pub uid: String,
    /// The groups the user belongs to.
    #[serde(deserialize_with = "null_as_default")]
    pub groups: Vec<String>,
    /// Further attributes from the authenticator.
    #[serde(deserialize_with = "null_as_default")]
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The operation of a request. Unknown values are kept, not rejected.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub enum Operation {
    /// `CREATE`
    Create,
    /// `UPDATE`
    Update,
    /// `DELETE`
    Delete,
    /// `CONNECT` (exec, attach, port-forward, proxy)
    Connect,
    /// Any other text, as sent.
    Other(String),
}

impl Default for Operation {
    /// An absent operation; matches none of the known ones.
    fn default() -> Self {
        Operation::Other(String::new())
    }
}

impl From<String> for Operation {
    fn from(text: String) -> Self {
        match text.as_str() {
            "CREATE" => Operation::Create,
            "UPDATE" => Operation::Update,
            "DELETE" => Operation::Delete,
            "CONNECT" => Operation::Connect,
            _ => Operation::Other(text),
        }
    }
}

impl Operation {
    /// The operation as the API server spells it.
    pub fn as_str(&self) -> &str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Connect => "CONNECT",
            Operation::Other(text) => text,
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reads `null` as the type's default, as Go's encoding/json does for the
/// API server's non-pointer fields.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests;
