//! AdmissionReview envelopes: parsing what the API server sends and
//! building what it expects back. Knows nothing of wasmtime or HTTP.
//!
//! The `request` is kept as raw JSON text and handed to policies as is;
//! only the few fields the host needs (uid, operation, resource, namespace,
//! object) are parsed, borrowing from the body.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::matcher::{GroupResource, MatchInput, Operation, RequestFacts};
use crate::selector::ObjectJson;

/// The two AdmissionReview versions the API server may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiVersion {
    V1,
    V1Beta1,
}

impl ApiVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "admission.k8s.io/v1",
            Self::V1Beta1 => "admission.k8s.io/v1beta1",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "admission.k8s.io/v1" => Some(Self::V1),
            "admission.k8s.io/v1beta1" => Some(Self::V1Beta1),
            _ => None,
        }
    }
}

/// Why a body is not a usable AdmissionReview. Each maps to an HTTP status
/// and a plain message saying what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// The body is not JSON.
    #[error("request body is not valid JSON: {0}")]
    NotJson(String),
    /// The body is not UTF-8 (so not JSON either).
    #[error("request body is not valid JSON: it is not UTF-8 ({0})")]
    NotUtf8(String),
    /// JSON, but not an AdmissionReview.
    #[error("request body is not an AdmissionReview: {0}")]
    NotAReview(String),
    /// An AdmissionReview of a version this host does not speak.
    #[error(
        "unsupported AdmissionReview apiVersion {0:?}: expected admission.k8s.io/v1 or admission.k8s.io/v1beta1"
    )]
    UnsupportedVersion(String),
    /// The review carries no `request`.
    #[error("AdmissionReview has no request")]
    MissingRequest,
    /// The `request` is malformed.
    #[error("AdmissionReview request is malformed: {0}")]
    BadRequest(String),
}

impl ReviewError {
    /// 400 for bodies that are not JSON, 422 for JSON that is not a review.
    pub fn status(&self) -> u16 {
        match self {
            Self::NotJson(_) | Self::NotUtf8(_) => 400,
            _ => 422,
        }
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(borrow)]
    request: Option<&'a RawValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Resource {
    group: String,
    resource: String,
}

/// `request.kind`: only the kind is read (for logs).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Kind {
    kind: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestFields<'a> {
    uid: String,
    #[serde(default)]
    kind: Kind,
    #[serde(default)]
    operation: String,
    #[serde(default)]
    resource: Resource,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default, borrow)]
    object: Option<&'a RawValue>,
    #[serde(default, borrow)]
    old_object: Option<&'a RawValue>,
}

/// A parsed AdmissionReview, borrowing from the request body.
#[derive(Debug)]
pub struct Review<'a> {
    pub api_version: ApiVersion,
    /// The `request` exactly as received.
    pub request: &'a RawValue,
    pub uid: String,
    operation: Option<Operation>,
    kind: String,
    resource: Resource,
    sub_resource: Option<String>,
    name: String,
    namespace: String,
    /// The object, when there is one (`None` for DELETE and CONNECT).
    pub object: Option<&'a RawValue>,
    /// The object before the change (UPDATE, and DELETE on API servers
    /// that send it).
    pub old_object: Option<&'a RawValue>,
}

impl<'a> Review<'a> {
    /// Parses a request body.
    ///
    /// # Errors
    /// A [`ReviewError`] saying what was wrong.
    pub fn parse(body: &'a [u8]) -> Result<Self, ReviewError> {
        // serde_json skips ignored members without checking their UTF-8,
        // and policies receive the request as text: check it all first.
        let body =
            std::str::from_utf8(body).map_err(|err| ReviewError::NotUtf8(err.to_string()))?;
        // serde also reads a struct written as an array of its fields;
        // an AdmissionReview is an object.
        if is_array(body) {
            return Err(match serde_json::from_str::<serde::de::IgnoredAny>(body) {
                Ok(_) => ReviewError::NotAReview(NOT_AN_OBJECT.to_string()),
                Err(err) if err.is_data() => ReviewError::NotAReview(err.to_string()),
                Err(err) => ReviewError::NotJson(err.to_string()),
            });
        }
        let envelope: Envelope<'a> = serde_json::from_str(body).map_err(|err| {
            if err.is_data() {
                ReviewError::NotAReview(err.to_string())
            } else {
                ReviewError::NotJson(err.to_string())
            }
        })?;
        match envelope.kind.as_deref() {
            Some("AdmissionReview") => {}
            Some(other) => {
                return Err(ReviewError::NotAReview(format!(
                    "kind is {other:?}, expected \"AdmissionReview\""
                )));
            }
            None => return Err(ReviewError::NotAReview("kind is missing".to_string())),
        }
        let version = envelope
            .api_version
            .ok_or_else(|| ReviewError::NotAReview("apiVersion is missing".to_string()))?;
        let api_version =
            ApiVersion::parse(&version).ok_or(ReviewError::UnsupportedVersion(version))?;
        let request = envelope
            .request
            .filter(|raw| raw.get() != "null")
            .ok_or(ReviewError::MissingRequest)?;
        if is_array(request.get()) {
            return Err(ReviewError::BadRequest(NOT_AN_OBJECT.to_string()));
        }
        let fields: RequestFields<'a> = serde_json::from_str(request.get())
            .map_err(|err| ReviewError::BadRequest(err.to_string()))?;
        if fields.uid.is_empty() {
            return Err(ReviewError::BadRequest("uid is empty".to_string()));
        }
        Ok(Self {
            api_version,
            request,
            uid: fields.uid,
            operation: parse_operation(&fields.operation),
            kind: fields.kind.kind,
            resource: fields.resource,
            sub_resource: fields.sub_resource.filter(|s| !s.is_empty()),
            name: fields.name,
            namespace: fields.namespace,
            object: fields.object.filter(|raw| raw.get() != "null"),
            old_object: fields.old_object.filter(|raw| raw.get() != "null"),
        })
    }

    /// What the matcher needs.
    pub fn facts(&self) -> RequestFacts<'_> {
        RequestFacts {
            operation: self.operation,
            resource: GroupResource {
                group: &self.resource.group,
                resource: &self.resource.resource,
                subresource: self.sub_resource.as_deref(),
            },
            namespace: &self.namespace,
            name: &self.name,
        }
    }

    /// What the selectors and match conditions read, with `object` as the
    /// mutators before a policy left it (`None`: as received).
    pub(crate) fn match_input<'s>(
        &'s self,
        object: Option<&'s serde_json::Value>,
    ) -> MatchInput<'s> {
        let object = match object {
            Some(value) => Some(ObjectJson::Parsed(value)),
            None => self.object.map(ObjectJson::Raw),
        };
        MatchInput::new(
            self.facts(),
            self.request,
            object,
            self.old_object.map(ObjectJson::Raw),
        )
    }

    pub fn operation(&self) -> Option<Operation> {
        self.operation
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `request.kind.kind`, e.g. `Pod`; empty when absent.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn resource(&self) -> &str {
        &self.resource.resource
    }
}

/// What serde would say of an array where an object belongs.
const NOT_AN_OBJECT: &str = "invalid type: sequence, expected a JSON object";

/// Whether JSON text is an array (its first non-blank byte is `[`).
fn is_array(json: &str) -> bool {
    json.trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('[')
}

fn parse_operation(text: &str) -> Option<Operation> {
    match text {
        "CREATE" => Some(Operation::Create),
        "UPDATE" => Some(Operation::Update),
        "DELETE" => Some(Operation::Delete),
        "CONNECT" => Some(Operation::Connect),
        _ => None,
    }
}

/// Returns `request` (raw JSON) with its `object` replaced, keeping every
/// other field byte for byte. Used to hand a mutation chain's intermediate
/// object to the next policy.
///
/// # Errors
/// When `request` is not a JSON object (it was parsed before, so only on
/// internal misuse).
pub fn request_with_object(
    request: &RawValue,
    object: &serde_json::Value,
) -> Result<String, serde_json::Error> {
    let mut fields: BTreeMap<String, &RawValue> = serde_json::from_str(request.get())?;
    let object = serde_json::value::to_raw_value(object)?;
    fields.insert("object".to_string(), &object);
    serde_json::to_string(&fields)
}

impl Review<'_> {
    /// The request's text with its `object` replaced by `object` (JSON
    /// text), every other byte as received: the request a mutation chain
    /// hands the next policy. The object's place in the request is known
    /// from parsing, so this is one copy, no parse and no serialization.
    /// `None` when the request has no object to replace.
    pub fn request_with_object_text(&self, object: &str) -> Option<String> {
        let request = self.request.get();
        let current = self.object?.get();
        // `current` borrows from the same body as `request`.
        let start = (current.as_ptr() as usize).checked_sub(request.as_ptr() as usize)?;
        let end = start.checked_add(current.len())?;
        let (before, after) = (request.get(..start)?, request.get(end..)?);
        let mut text = String::with_capacity(before.len() + object.len() + after.len());
        text.push_str(before);
        text.push_str(object);
        text.push_str(after);
        Some(text)
    }
}

/// The outcome of running a chain, ready to be put in a response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// For a denial: the HTTP code the API server should report.
    pub code: Option<u16>,
    pub message: Option<String>,
    /// The RFC 6902 patch, as JSON text, when the object changed.
    pub patch: Option<String>,
    pub warnings: Vec<String>,
    pub audit_annotations: BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Status<'a> {
    code: u16,
    message: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Response<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    warnings: &'a [String],
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    audit_annotations: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseEnvelope<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: Response<'a>,
}

/// Default HTTP code of a denial that gave none.
pub const DENIED_CODE: u16 = 403;

/// Serializes the response AdmissionReview for `uid` in `api_version`.
///
/// # Errors
/// Only if serde_json fails on plain structs of strings, which it does
/// not; a server answers 500 rather than an empty body should it ever.
pub fn response(
    api_version: ApiVersion,
    uid: &str,
    decision: &Decision,
) -> Result<Vec<u8>, serde_json::Error> {
    let status = (!decision.allowed).then(|| Status {
        code: decision.code.unwrap_or(DENIED_CODE),
        message: decision.message.as_deref().unwrap_or("denied"),
    });
    let patch = decision
        .patch
        .as_ref()
        .filter(|_| decision.allowed)
        .map(|patch| base64::engine::general_purpose::STANDARD.encode(patch));
    let envelope = ResponseEnvelope {
        api_version: api_version.as_str(),
        kind: "AdmissionReview",
        response: Response {
            uid,
            allowed: decision.allowed,
            status,
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
            warnings: &decision.warnings,
            audit_annotations: &decision.audit_annotations,
        },
    };
    serde_json::to_vec(&envelope)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD_REVIEW: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview",
        "request":{"uid":"u-1","operation":"CREATE","resource":{"group":"","version":"v1","resource":"pods"},
        "namespace":"default","name":"p","object":{"kind":"Pod","metadata":{"name":"p"}},"dryRun":false}}"#;

    #[test]
    fn parses_the_fields_the_host_needs_and_keeps_the_request_raw() {
        let review = Review::parse(POD_REVIEW.as_bytes()).expect("valid review");
        assert_eq!(review.api_version, ApiVersion::V1);
        assert_eq!(review.uid, "u-1");
        assert_eq!(review.operation(), Some(Operation::Create));
        assert_eq!(review.namespace(), "default");
        assert_eq!(review.resource(), "pods");
        assert!(review.request.get().starts_with(r#"{"uid":"u-1""#));
        assert_eq!(
            review.object.map(RawValue::get),
            Some(r#"{"kind":"Pod","metadata":{"name":"p"}}"#)
        );
    }

    #[test]
    fn delete_has_no_object() {
        let body = r#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview",
            "request":{"uid":"u","operation":"DELETE","object":null,"oldObject":{"kind":"Pod"}}}"#;
        let review = Review::parse(body.as_bytes()).expect("valid");
        assert_eq!(review.api_version, ApiVersion::V1Beta1);
        assert!(review.object.is_none());
    }

    #[test]
    fn bad_bodies_say_what_was_wrong() {
        let err = |body: &str| Review::parse(body.as_bytes()).expect_err("invalid");
        assert_eq!(err("not json").status(), 400);
        assert!(matches!(err("{\"kind\": "), ReviewError::NotJson(_)));
        assert_eq!(
            err("{}").to_string(),
            "request body is not an AdmissionReview: kind is missing"
        );
        assert_eq!(err("[1,2]").status(), 422);
        assert_eq!(
            err(r#"{"kind":"Pod","apiVersion":"v1"}"#).to_string(),
            "request body is not an AdmissionReview: kind is \"Pod\", expected \"AdmissionReview\""
        );
        assert!(matches!(
            err(r#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v2"}"#),
            ReviewError::UnsupportedVersion(_)
        ));
        assert_eq!(
            err(r#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#),
            ReviewError::MissingRequest
        );
        assert_eq!(
            err(r#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":null}"#),
            ReviewError::MissingRequest
        );
        let no_uid =
            err(r#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{}}"#);
        assert!(
            no_uid.to_string().contains("missing field `uid`"),
            "{no_uid}"
        );
        assert_eq!(no_uid.status(), 422);
    }

    #[test]
    fn only_objects_and_valid_utf8_are_reviews() {
        let err = |body: &[u8]| Review::parse(body).expect_err("invalid");
        let as_array = br#"["admission.k8s.io/v1","AdmissionReview",{"uid":"u"}]"#;
        assert_eq!(
            err(as_array),
            ReviewError::NotAReview(NOT_AN_OBJECT.to_string())
        );
        let request_array =
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":["u","CREATE"]}"#;
        assert_eq!(
            err(request_array),
            ReviewError::BadRequest(NOT_AN_OBJECT.to_string())
        );
        let mut bad_utf8 =
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","x":""#.to_vec();
        bad_utf8.extend_from_slice(&[0xff, 0xfe]);
        bad_utf8.extend_from_slice(br#"","request":{"uid":"u"}}"#);
        let utf8 = err(&bad_utf8);
        assert_eq!(utf8.status(), 400);
        assert!(utf8.to_string().contains("it is not UTF-8"), "{utf8}");
        assert_eq!(err(b"  [1").status(), 400);
    }

    #[test]
    fn request_with_object_replaces_only_the_object() {
        let review = Review::parse(POD_REVIEW.as_bytes()).expect("valid");
        let object =
            serde_json::json!({"kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"}}});
        let text = request_with_object(review.request, &object).expect("object");
        let value: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(value["object"], object);
        assert_eq!(value["uid"], "u-1");
        assert_eq!(value["dryRun"], false);
    }

    #[test]
    fn request_with_object_text_splices_only_the_object() {
        let review = Review::parse(POD_REVIEW.as_bytes()).expect("valid");
        let object = r#"{"kind":"Pod","metadata":{"name":"p","labels":{"a":"b"}}}"#;
        let text = review
            .request_with_object_text(object)
            .expect("has an object");
        let value: serde_json::Value = serde_json::from_str(&text).expect("json");
        let original: serde_json::Value = serde_json::from_str(review.request.get()).expect("json");
        assert_eq!(
            value["object"],
            serde_json::from_str::<serde_json::Value>(object).unwrap()
        );
        for (key, field) in original.as_object().expect("a map") {
            if key != "object" {
                assert_eq!(&value[key], field, "{key}");
            }
        }
        let spliced = text.replace(object, review.object.expect("object").get());
        assert_eq!(spliced, review.request.get());
    }

    #[test]
    fn request_with_object_text_needs_an_object() {
        let body = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview",
            "request":{"uid":"u","operation":"DELETE","kind":{"group":"","version":"v1","kind":"Pod"},
            "resource":{"group":"","version":"v1","resource":"pods"},"name":"p","namespace":"n",
            "object":null}}"#;
        let review = Review::parse(body.as_bytes()).expect("valid");
        assert_eq!(review.request_with_object_text("{}"), None);
    }

    #[test]
    fn responses_echo_uid_and_version_and_encode_the_patch() {
        let decision = Decision {
            allowed: true,
            patch: Some(r#"[{"op":"add","path":"/a","value":1}]"#.to_string()),
            audit_annotations: BTreeMap::from([("generation".to_string(), "3".to_string())]),
            ..Decision::default()
        };
        let body = response(ApiVersion::V1Beta1, "u-9", &decision).expect("serializes");
        let value: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(value["apiVersion"], "admission.k8s.io/v1beta1");
        assert_eq!(value["kind"], "AdmissionReview");
        assert_eq!(value["response"]["uid"], "u-9");
        assert_eq!(value["response"]["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(value["response"]["patch"].as_str().expect("patch"))
            .expect("base64");
        assert_eq!(patch, br#"[{"op":"add","path":"/a","value":1}]"#);
        assert_eq!(value["response"]["auditAnnotations"]["generation"], "3");
        assert!(value["response"].get("status").is_none());
    }

    #[test]
    fn denials_carry_status_and_never_a_patch() {
        let decision = Decision {
            allowed: false,
            message: Some("no".to_string()),
            patch: Some("[]".to_string()),
            ..Decision::default()
        };
        let value: serde_json::Value =
            serde_json::from_slice(&response(ApiVersion::V1, "u", &decision).expect("serializes"))
                .expect("json");
        assert_eq!(value["response"]["allowed"], false);
        assert_eq!(value["response"]["status"]["code"], 403);
        assert_eq!(value["response"]["status"]["message"], "no");
        assert!(value["response"].get("patch").is_none());
    }
}
