//! The server's answer to one review, computed offline: the mutation chain,
//! then validation of the mutated object, as the API server would call
//! `/mutate` and then `/validate`. Used by `portcullis eval` and
//! `portcullis test`, so both see exactly what the server would answer.

use serde_json::Value;

use crate::admission::{self, Decision, Review};
use crate::chain::{self, ChainFailure, Selection};
use crate::policy_set::PolicySet;

/// Why a review could not be evaluated.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// The input is not a usable review.
    #[error(transparent)]
    Review(#[from] admission::ReviewError),
    /// `--policy`/`policy:` names no loaded policy.
    #[error("no policy named {0:?} in the config")]
    UnknownPolicy(String),
    /// A policy with `onError: fail` failed: the server would answer 500.
    #[error("the server would answer HTTP 500: {0}")]
    Failed(#[from] ChainFailure),
    /// The mutation's patch could not be applied (a host bug).
    #[error("cannot apply the mutation's patch to the review")]
    Patch(#[from] PatchError),
}

/// Why a mutation's patch could not be applied offline.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The patch text is not a JSON Patch.
    #[error("the patch is not a JSON Patch")]
    Parse(#[source] serde_json::Error),
    /// The patch does not apply to the object.
    #[error("the patch does not apply to the object")]
    Apply(#[source] json_patch::PatchError),
    /// The patched object could not be put back into the request.
    #[error("cannot put the patched object into the request")]
    Request(#[source] serde_json::Error),
}

/// What the server would answer, mutation and validation combined.
#[derive(Debug, Clone)]
pub struct Answer {
    pub api_version: admission::ApiVersion,
    pub uid: String,
    /// Validation decides; the mutation's patch, warnings and annotations
    /// ride along. A denial by a mutating policy ends there.
    pub decision: Decision,
    /// The request's object after the mutation (the object as sent when
    /// nothing was patched; `None` without an object, e.g. DELETE).
    pub object: Option<Value>,
    /// Every policy call, mutations first: empty when no policy matched.
    pub evaluations: Vec<chain::Evaluation>,
}

impl Answer {
    /// The response AdmissionReview as the server would send it.
    ///
    /// # Errors
    /// See [`admission::response`].
    pub fn response(&self) -> Result<Value, serde_json::Error> {
        let bytes = admission::response(self.api_version, &self.uid, &self.decision)?;
        serde_json::from_slice(&bytes)
    }
}

/// Accepts a bare AdmissionRequest too, as people paste them from logs.
pub fn as_review(body: Vec<u8>) -> Vec<u8> {
    let Ok(Value::Object(value)) = serde_json::from_slice::<Value>(&body) else {
        return body;
    };
    // A review has `request` (or `response`) and a string `kind`; a bare
    // request has a `uid` and, from the API server, an object `kind` (its
    // group, version and kind).
    let is_review = value.contains_key("request")
        || value.contains_key("response")
        || value.get("kind").is_some_and(Value::is_string);
    if is_review || !value.contains_key("uid") {
        return body;
    }
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": value,
    }))
    .unwrap_or(body)
}

/// Evaluates `body` (an AdmissionReview, or a bare AdmissionRequest) with
/// every policy of `set`, or only the one named `policy` (as the
/// per-policy endpoints do).
///
/// # Errors
/// An [`OfflineError`] for a body that is not a review, an unknown
/// policy, or a policy whose `onError: fail` fired.
pub async fn evaluate(
    set: &PolicySet,
    body: Vec<u8>,
    policy: Option<&str>,
) -> Result<Answer, OfflineError> {
    let body = as_review(body);
    let review = Review::parse(&body)?;
    // One policy runs in the chains it takes part in, as on the server's
    // per-policy endpoints.
    let (selection, mutates, validates) = match policy {
        None => (Selection::All, true, true),
        Some(name) => {
            let found = set
                .get(name)
                .ok_or_else(|| OfflineError::UnknownPolicy(name.to_string()))?;
            let metadata = &found.metadata;
            (Selection::One(found), metadata.mutates, metadata.validates)
        }
    };
    let original: Option<Value> = review
        .object
        .and_then(|raw| serde_json::from_str(raw.get()).ok());
    let mut evaluations = Vec::new();
    let mutated = if mutates {
        chain::mutate(set, &review, selection, None, &mut evaluations).await?
    } else {
        Decision {
            allowed: true,
            ..Decision::default()
        }
    };
    let object = match (&mutated.patch, &original) {
        (Some(patch), Some(object)) => Some(apply(object, patch)?),
        _ => original.clone(),
    };
    let decision = if mutated.allowed && validates {
        let validated = match (&mutated.patch, &object) {
            (Some(_), Some(object)) => {
                let request = admission::request_with_object(review.request, object)
                    .map_err(PatchError::Request)?;
                let body = format!(
                    r#"{{"apiVersion":"{}","kind":"AdmissionReview","request":{request}}}"#,
                    review.api_version.as_str()
                );
                let patched = Review::parse(body.as_bytes())?;
                chain::validate(set, &patched, selection, None, &mut evaluations).await?
            }
            _ => chain::validate(set, &review, selection, None, &mut evaluations).await?,
        };
        combine(mutated, validated)
    } else {
        mutated
    };
    Ok(Answer {
        api_version: review.api_version,
        uid: review.uid.clone(),
        decision,
        object,
        evaluations,
    })
}

/// `object` with the JSON Patch text `patch` applied.
fn apply(object: &Value, patch: &str) -> Result<Value, PatchError> {
    let patch: json_patch::Patch = serde_json::from_str(patch).map_err(PatchError::Parse)?;
    let mut object = object.clone();
    json_patch::patch(&mut object, &patch).map_err(PatchError::Apply)?;
    Ok(object)
}

/// Validation decides; the mutation's patch, warnings and annotations ride
/// along.
fn combine(mutated: Decision, validated: Decision) -> Decision {
    let mut warnings = mutated.warnings;
    warnings.extend(validated.warnings);
    let mut audit_annotations = mutated.audit_annotations;
    audit_annotations.extend(validated.audit_annotations);
    Decision {
        allowed: validated.allowed,
        code: validated.code,
        message: validated.message,
        patch: mutated.patch,
        warnings,
        audit_annotations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn wrapped(value: Value) -> Value {
        serde_json::from_slice(&as_review(value.to_string().into_bytes())).unwrap()
    }

    #[test]
    fn bare_requests_are_wrapped_in_a_review() {
        // As the API server sends it: `kind` is the object's group, version
        // and kind, not "AdmissionReview".
        let request = json!({
            "uid": "u1",
            "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "operation": "CREATE"
        });
        let review = wrapped(request.clone());
        assert_eq!(review["kind"], "AdmissionReview");
        assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(review["request"], request);
        assert_eq!(wrapped(json!({"uid": "u2"}))["request"]["uid"], "u2");
    }

    #[test]
    fn reviews_and_other_bodies_pass_through() {
        for body in [
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "u"}}),
            json!({"kind": "AdmissionReview", "uid": "odd"}),
            json!({"request": {"uid": "u"}}),
            json!({"no": "uid"}),
            json!([1, 2]),
        ] {
            assert_eq!(wrapped(body.clone()), body);
        }
    }
}
