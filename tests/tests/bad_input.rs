//! Bad HTTP input, table-driven: every row is one request (method, path
//! with query, headers, body) and the answer it must get (HTTP status and a
//! piece of the plain-text reason). The whole table is sent over HTTP/2 and
//! over HTTP/1.1 to one server with the standard config; afterwards a good
//! review must still get a good answer.
//!
//! `BAD_INPUT_SHOW=1` prints every answer.
//!
//! Rows whose comment says "was answered ..." keep host bugs this table
//! found fixed.

use anyhow::{Context, Result, ensure};
use portcullis_e2e::{
    Json, Proto, Reply, Server, StatusCode, check_answer, fixture, json, send, tail, with_shared,
};
use reqwest::Method;
use reqwest::header::HeaderValue;

/// What the answer's body must be.
enum Says {
    /// A plain-text reason (`text/plain`) containing this.
    Reason(String),
    /// Nothing is asserted about the body (axum's own answers, which have
    /// none: a gap, not a contract).
    Unchecked,
    /// A well-formed AdmissionReview answer to this review (HTTP 200).
    Answer(Json),
    /// HTTP 200, an `application/json` AdmissionReview answer echoing this
    /// uid (for bodies too odd to hold in a `Json`).
    AnswerWithUid(&'static str),
    /// A well-formed answer to this review whose patch touches nothing
    /// outside `/metadata`.
    PatchesOnlyMetadata(Json),
}

/// One request and the answer it must get.
struct Row {
    name: String,
    method: Method,
    path: String,
    headers: Vec<(&'static str, HeaderValue)>,
    body: Vec<u8>,
    status: u16,
    says: Says,
    /// A header the answer must carry, and a piece of its value.
    header: Option<(&'static str, &'static str)>,
}

impl Row {
    fn new(name: impl Into<String>, method: Method, path: impl Into<String>) -> Self {
        Row {
            name: name.into(),
            method,
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
            status: 0,
            says: Says::Unchecked,
            header: None,
        }
    }

    /// The body, sent as `Content-Type: application/json`.
    fn json(self, body: impl Into<Vec<u8>>) -> Self {
        self.content_type(b"application/json").body(body)
    }

    fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    fn content_type(self, value: &[u8]) -> Self {
        self.header_bytes("content-type", value)
    }

    fn header_bytes(mut self, name: &'static str, value: &[u8]) -> Self {
        let value = HeaderValue::from_bytes(value)
            .unwrap_or_else(|e| panic!("row {:?}: bad header value: {e}", self.name));
        self.headers.push((name, value));
        self
    }

    /// Expects `status` with a plain-text reason containing `reason`.
    fn says(mut self, status: u16, reason: impl Into<String>) -> Self {
        self.status = status;
        self.says = Says::Reason(reason.into());
        self
    }

    /// Expects `status`; the body is not checked.
    fn status(mut self, status: u16) -> Self {
        self.status = status;
        self.says = Says::Unchecked;
        self
    }

    /// Expects a good answer to `review`.
    fn answers(mut self, review: &Json) -> Self {
        self.status = 200;
        self.says = Says::Answer(review.clone());
        self
    }

    fn answers_uid(mut self, uid: &'static str) -> Self {
        self.status = 200;
        self.says = Says::AnswerWithUid(uid);
        self
    }

    fn patches_only_metadata(mut self, review: &Json) -> Self {
        self.status = 200;
        self.says = Says::PatchesOnlyMetadata(review.clone());
        self
    }

    fn with_header(mut self, name: &'static str, contains: &'static str) -> Self {
        self.header = Some((name, contains));
        self
    }

    /// One line saying what was sent, for failure messages.
    fn describe(&self) -> String {
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|(k, v)| format!("{k}: {v:?}"))
            .collect();
        let body = String::from_utf8_lossy(&self.body);
        format!(
            "{} {} [{}] body ({} bytes): {:?}",
            self.method,
            self.path,
            headers.join(", "),
            self.body.len(),
            tail(&body, 200)
        )
    }
}

fn post(name: impl Into<String>, path: &str) -> Row {
    Row::new(name, Method::POST, path)
}

fn to_vec(value: &Json) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|e| panic!("serializing {value}: {e}"))
}

/// The good review, changed by `edit`.
fn edited(good: &Json, edit: impl FnOnce(&mut Json)) -> Json {
    let mut review = good.clone();
    edit(&mut review);
    review
}

/// Removes `key` from the object at `value`.
fn remove(value: &mut Json, key: &str) {
    if let Some(map) = value.as_object_mut() {
        map.remove(key);
    }
}

/// The review as text with `from` (which must occur once) replaced by
/// `to`: for bodies a `Json` cannot hold (duplicate keys, invalid UTF-8).
fn spliced(good: &[u8], from: &str, to: &[u8]) -> Vec<u8> {
    let at = good
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .unwrap_or_else(|| panic!("{from:?} is not in the good review"));
    let mut out = good[..at].to_vec();
    out.extend_from_slice(to);
    out.extend_from_slice(&good[at + from.len()..]);
    out
}

const NOT_JSON: &str = "request body is not valid JSON: ";
const NOT_A_REVIEW: &str = "request body is not an AdmissionReview: ";
const UNSUPPORTED: &str = "unsupported AdmissionReview apiVersion ";
const NO_REQUEST: &str = "AdmissionReview has no request";
const MALFORMED: &str = "AdmissionReview request is malformed: ";
const BAD_TYPE: &str = "unsupported content type ";

fn rows() -> Result<Vec<Row>> {
    let good = fixture("pod-allowed.json")?;
    let good_bytes = to_vec(&good);
    // Compact, so the splices below find their keys.
    let good_text = String::from_utf8(good_bytes.clone())?;
    ensure!(good_text.contains(r#""uid":"e2e00001-"#), "{good_text}");
    let request = good["request"].clone();
    let envelope = |request: Json| json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request});
    let with_request = |key: &str, value: Json| edited(&good, |r| r["request"][key] = value);
    let with_version = |version: &str| edited(&good, |r| r["apiVersion"] = json!(version));
    let deep = |depth: usize| "[".repeat(depth) + &"]".repeat(depth);

    let mut rows = vec![
        // --- 400: the body is not JSON ---------------------------------
        post("syntax error", "/validate")
            .json("this is { not json")
            .says(400, format!("{NOT_JSON}expected ident at line 1 column 2")),
        post("truncated review", "/validate")
            .json(&good_bytes[..good_bytes.len() / 2])
            .says(400, format!("{NOT_JSON}EOF while parsing")),
        post("empty body", "/validate")
            .json("")
            .says(400, format!("{NOT_JSON}EOF while parsing a value at line 1 column 0")),
        post("empty body on /mutate", "/mutate")
            .json("")
            .says(400, NOT_JSON),
        post("binary junk", "/validate")
            .json((0u8..=255).rev().cycle().take(4096).collect::<Vec<u8>>())
            .says(400, NOT_JSON),
        post("a lone {", "/validate")
            .json("{")
            .says(400, format!("{NOT_JSON}EOF while parsing an object")),
        post("a lone {", "/mutate")
            .json("{")
            .says(400, format!("{NOT_JSON}EOF while parsing an object")),
        post("invalid UTF-8 in the request's uid", "/validate")
            .json(spliced(&good_bytes, r#""uid":"e2e00001-"#, b"\"uid\":\"\xff\xfe-"))
            .says(400, NOT_JSON),
        post("invalid UTF-8 in kind", "/validate")
            .json(spliced(&good_bytes, r#""kind":"AdmissionReview""#, b"\"kind\":\"Admission\xc3\x28Review\""))
            .says(400, NOT_JSON),
        // Was answered 200 (serde_json skips members the envelope does not
        // name without checking their UTF-8); a body that is not UTF-8 is
        // not JSON (RFC 8259 section 8.1).
        post("invalid UTF-8 in an unknown top-level member", "/validate")
            .json(spliced(&good_bytes, r#""kind":"AdmissionReview""#, b"\"junk\":\"\xff\",\"kind\":\"AdmissionReview\""))
            .says(400, NOT_JSON),
        post("trailing garbage after a good review", "/validate")
            .json([good_bytes.as_slice(), b" xyz"].concat())
            .says(400, format!("{NOT_JSON}trailing characters")),
        post("two reviews back to back", "/validate")
            .json([good_bytes.as_slice(), good_bytes.as_slice()].concat())
            .says(400, format!("{NOT_JSON}trailing characters")),
        post("a UTF-8 byte order mark before the review", "/validate")
            .json([b"\xef\xbb\xbf".as_slice(), good_bytes.as_slice()].concat())
            .says(400, format!("{NOT_JSON}expected value at line 1 column 1")),
        // Deep nesting never reaches serde_json's recursion limit: the
        // envelope takes a top-level array as a tuple (its first element
        // must be a string) and skips members it does not name without
        // recursing. Either way: an answer, not a crash.
        post("10,000 nested arrays", "/validate")
            .json(deep(10_000))
            .says(422, NOT_A_REVIEW),
        post("10,000 open arrays", "/mutate")
            .json("[".repeat(10_000))
            .says(400, format!("{NOT_JSON}EOF while parsing a list at line 1 column 10000")),
        post("10,000 nested objects, unterminated", "/validate")
            .json(r#"{"a":"#.repeat(10_000))
            .says(400, format!("{NOT_JSON}EOF while parsing a value at line 1 column 50000")),
        post("10,000 nested arrays in an unknown member", "/validate")
            .json(format!(r#"{{"x":{}}}"#, deep(10_000)))
            .says(422, format!("{NOT_A_REVIEW}kind is missing")),
        post("10,000 nested objects as kind", "/validate")
            .json(format!(r#"{{"kind":{}null{}}}"#, r#"{"a":"#.repeat(10_000), "}".repeat(10_000)))
            .says(422, format!("{NOT_A_REVIEW}invalid type: map, expected a string")),
        post("a trailing comma", "/validate")
            .json(r#"{"kind":"AdmissionReview",}"#)
            .says(400, format!("{NOT_JSON}trailing comma")),
        post("single-quoted keys", "/validate")
            .json("{'kind':'AdmissionReview'}")
            .says(400, format!("{NOT_JSON}key must be a string")),
        post("NaN", "/validate")
            .json(r#"{"kind":NaN}"#)
            .says(400, format!("{NOT_JSON}expected value")),
        post("a raw newline inside a string", "/validate")
            .json("{\"kind\":\"Admission\nReview\"}")
            .says(400, format!("{NOT_JSON}control character")),
        post("a lone surrogate escape in kind", "/validate")
            .json(r#"{"kind":"\ud800"}"#)
            .says(400, NOT_JSON),
        // The API server sends bodies uncompressed; a compressed one is
        // refused as such rather than reported as malformed JSON.
        post("a gzip body with Content-Encoding: gzip", "/validate")
            .json(GZIPPED_ENVELOPE)
            .header_bytes("content-encoding", b"gzip")
            .says(415, "unsupported content encoding \"gzip\": send the body uncompressed"),
        // --- 422: JSON, but not an AdmissionReview ------------------------
        post("an empty array", "/validate")
            .json("[]")
            .says(422, NOT_A_REVIEW),
        post("a number", "/validate")
            .json("42")
            .says(422, format!("{NOT_A_REVIEW}invalid type: integer `42`")),
        post("a string", "/validate")
            .json(r#""AdmissionReview""#)
            .says(422, format!("{NOT_A_REVIEW}invalid type: string")),
        post("null", "/validate")
            .json("null")
            .says(422, format!("{NOT_A_REVIEW}invalid type: null")),
        post("true", "/mutate")
            .json("true")
            .says(422, format!("{NOT_A_REVIEW}invalid type: boolean")),
        post("{}", "/validate")
            .json("{}")
            .says(422, format!("{NOT_A_REVIEW}kind is missing")),
        post("{} on /mutate", "/mutate")
            .json("{}")
            .says(422, format!("{NOT_A_REVIEW}kind is missing")),
        post("a Pod", "/validate")
            .json(to_vec(&good["request"]["object"]))
            .says(422, format!(r#"{NOT_A_REVIEW}kind is "Pod", expected "AdmissionReview""#)),
        post("kind of the wrong case", "/validate")
            .json(to_vec(&edited(&good, |r| r["kind"] = json!("admissionreview"))))
            .says(422, format!(r#"{NOT_A_REVIEW}kind is "admissionreview""#)),
        post("kind is a number", "/validate")
            .json(to_vec(&edited(&good, |r| r["kind"] = json!(5))))
            .says(422, format!("{NOT_A_REVIEW}invalid type: integer `5`, expected a string")),
        post("kind is an object", "/validate")
            .json(to_vec(&edited(&good, |r| r["kind"] = json!({"kind": "AdmissionReview"}))))
            .says(422, format!("{NOT_A_REVIEW}invalid type: map, expected a string")),
        post("kind is null", "/validate")
            .json(to_vec(&edited(&good, |r| r["kind"] = Json::Null)))
            .says(422, format!("{NOT_A_REVIEW}kind is missing")),
        post("no apiVersion", "/validate")
            .json(to_vec(&edited(&good, |r| remove(r, "apiVersion"))))
            .says(422, format!("{NOT_A_REVIEW}apiVersion is missing")),
        post("apiVersion is a number", "/validate")
            .json(to_vec(&edited(&good, |r| r["apiVersion"] = json!(1))))
            .says(422, format!("{NOT_A_REVIEW}invalid type: integer `1`, expected a string")),
        post("duplicate kind", "/validate")
            .json(spliced(&good_bytes, r#""kind":"AdmissionReview""#, br#""kind":"AdmissionReview","kind":"AdmissionReview""#))
            .says(422, format!("{NOT_A_REVIEW}duplicate field `kind`")),
        post("duplicate request", "/validate")
            .json(spliced(&good_bytes, r#""request":{"#, br#""request":{"uid":"smuggled"},"request":{"#))
            .says(422, format!("{NOT_A_REVIEW}duplicate field `request`")),
        // Was answered 200: serde's derived Deserialize accepts a struct
        // written as an array of its fields in order.
        post("the review written as an array of its fields", "/validate")
            .json(to_vec(&json!(["admission.k8s.io/v1", "AdmissionReview", request])))
            .says(422, NOT_A_REVIEW),
        // --- 422: an AdmissionReview version this host does not speak -----
        post("apiVersion admission.k8s.io/v2", "/validate")
            .json(to_vec(&with_version("admission.k8s.io/v2")))
            .says(422, format!(r#"{UNSUPPORTED}"admission.k8s.io/v2": expected admission.k8s.io/v1 or admission.k8s.io/v1beta1"#)),
        post("apiVersion admission.k8s.io/v1alpha1", "/mutate")
            .json(to_vec(&with_version("admission.k8s.io/v1alpha1")))
            .says(422, format!(r#"{UNSUPPORTED}"admission.k8s.io/v1alpha1""#)),
        post("apiVersion empty", "/validate")
            .json(to_vec(&with_version("")))
            .says(422, format!(r#"{UNSUPPORTED}"""#)),
        post("apiVersion v1 without the group", "/validate")
            .json(to_vec(&with_version("v1")))
            .says(422, format!(r#"{UNSUPPORTED}"v1""#)),
        post("apiVersion with a trailing space", "/validate")
            .json(to_vec(&with_version("admission.k8s.io/v1 ")))
            .says(422, format!(r#"{UNSUPPORTED}"admission.k8s.io/v1 ""#)),
        // --- 422: no request ------------------------------------------------
        post("no request", "/validate")
            .json(to_vec(&edited(&good, |r| remove(r, "request"))))
            .says(422, NO_REQUEST),
        post("request null", "/mutate")
            .json(to_vec(&edited(&good, |r| r["request"] = Json::Null)))
            .says(422, NO_REQUEST),
        // --- 422: a malformed request ------------------------------------------
        post("request is a string", "/validate")
            .json(to_vec(&envelope(json!("request"))))
            .says(422, format!("{MALFORMED}invalid type: string \"request\"")),
        post("request is an empty array", "/validate")
            .json(to_vec(&envelope(json!([]))))
            .says(422, MALFORMED),
        post("request is a number", "/mutate")
            .json(to_vec(&envelope(json!(7))))
            .says(422, format!("{MALFORMED}invalid type: integer `7`")),
        // Same cause as the positional review above: `["uid"]` parsed as a
        // request with only a uid, and the policies got an array.
        post("request is an array holding a uid", "/validate")
            .json(to_vec(&envelope(json!(["e2e-array-uid", "CREATE"]))))
            .says(422, MALFORMED),
        post("request is an array holding a uid, on /mutate", "/mutate")
            .json(to_vec(&envelope(json!(["e2e-array-uid", "CREATE"]))))
            .says(422, MALFORMED),
        post("request without uid", "/validate")
            .json(to_vec(&edited(&good, |r| remove(&mut r["request"], "uid"))))
            .says(422, format!("{MALFORMED}missing field `uid`")),
        post("request {}", "/mutate")
            .json(to_vec(&envelope(json!({}))))
            .says(422, format!("{MALFORMED}missing field `uid`")),
        post("uid empty", "/validate")
            .json(to_vec(&with_request("uid", json!(""))))
            .says(422, format!("{MALFORMED}uid is empty")),
        post("uid is a number", "/validate")
            .json(to_vec(&with_request("uid", json!(12345))))
            .says(422, format!("{MALFORMED}invalid type: integer `12345`, expected a string")),
        post("uid is null", "/validate")
            .json(to_vec(&with_request("uid", Json::Null)))
            .says(422, format!("{MALFORMED}invalid type: null, expected a string")),
        post("duplicate uid", "/validate")
            .json(spliced(&good_bytes, r#""uid":"e2e00001-"#, br#""uid":"smuggled","uid":"e2e00001-"#))
            .says(422, format!("{MALFORMED}duplicate field `uid`")),
        post("operation is a number", "/validate")
            .json(to_vec(&with_request("operation", json!(1))))
            .says(422, format!("{MALFORMED}invalid type: integer `1`, expected a string")),
        post("resource is a string", "/validate")
            .json(to_vec(&with_request("resource", json!("pods"))))
            .says(422, format!("{MALFORMED}invalid type: string \"pods\"")),
        post("resource.resource is a number", "/mutate")
            .json(to_vec(&with_request("resource", json!({"group": "", "version": "v1", "resource": 5}))))
            .says(422, format!("{MALFORMED}invalid type: integer `5`, expected a string")),
        post("namespace is an array", "/validate")
            .json(to_vec(&with_request("namespace", json!(["shop"]))))
            .says(422, format!("{MALFORMED}invalid type: sequence, expected a string")),
        post("subResource is a number", "/validate")
            .json(to_vec(&with_request("subResource", json!(1))))
            .says(422, format!("{MALFORMED}invalid type: integer `1`, expected a string")),
        // --- the object is kept raw: any JSON is accepted ------------------
        {
            let delete = edited(&good, |r| {
                r["request"]["uid"] = json!("e2e-bad-input-delete");
                r["request"]["operation"] = json!("DELETE");
                r["request"]["oldObject"] = r["request"]["object"].clone();
                r["request"]["object"] = Json::Null;
            });
            post("DELETE with a null object", "/mutate")
                .json(to_vec(&delete))
                .answers(&delete)
        },
        post("a request member 10,000 arrays deep", "/validate")
            .json(spliced(
                &good_bytes,
                r#""uid":"e2e00001-0000-4000-8000-000000000001""#,
                format!(r#""uid":"e2e-deep","deep":{}"#, deep(10_000)).as_bytes(),
            ))
            .answers_uid("e2e-deep"),
        post("a request member 10,000 arrays deep, on /mutate", "/mutate")
            .json(spliced(
                &good_bytes,
                r#""uid":"e2e00001-0000-4000-8000-000000000001""#,
                format!(r#""uid":"e2e-deep","deep":{}"#, deep(10_000)).as_bytes(),
            ))
            .answers_uid("e2e-deep"),
        // The object is handed to the policies raw; they (and the host's
        // patch computation) hit serde_json's recursion limit: still an
        // answer.
        post("an object 10,000 arrays deep", "/validate")
            .json(spliced(
                &spliced(&good_bytes, r#""status":{}"#, format!(r#""status":{}"#, deep(10_000)).as_bytes()),
                r#""uid":"e2e00001-0000-4000-8000-000000000001""#,
                br#""uid":"e2e-deep-object""#,
            ))
            .answers_uid("e2e-deep-object"),
        post("an object 10,000 arrays deep, on /mutate", "/mutate")
            .json(spliced(
                &spliced(&good_bytes, r#""status":{}"#, format!(r#""status":{}"#, deep(10_000)).as_bytes()),
                r#""uid":"e2e00001-0000-4000-8000-000000000001""#,
                br#""uid":"e2e-deep-object""#,
            ))
            .answers_uid("e2e-deep-object"),
        // Numbers the mutating policy does not touch stay as they are: the
        // host parses the object and the policy's output, and diffs them.
        // Was a spurious `replace` of /spec/weights/1 (serde_json parsed
        // numbers without `float_roundtrip`, so this one did not survive
        // being written back by the policy and parsed again).
        {
            let widget = edited(&good, |r| {
                r["request"]["uid"] = json!("e2e-bad-input-widget");
                r["request"]["kind"] = json!({"group": "example.com", "version": "v1", "kind": "Widget"});
                r["request"]["resource"] = json!({"group": "example.com", "version": "v1", "resource": "widgets"});
                r["request"]["object"] = json!({
                    "apiVersion": "example.com/v1",
                    "kind": "Widget",
                    "metadata": {"name": "w", "namespace": "shop"},
                    "spec": {"weights": [92.42132512813595, 1.0e-300, 5e-324]}
                });
            });
            let text = String::from_utf8(to_vec(&widget))?;
            // 184467440737559016161 is beyond u64: parsed as a float.
            let text = text.replacen("1e-300", "184467440737559016161", 1);
            let widget: Json = serde_json::from_str(&text)?;
            post("numbers in the object beyond what the patch changes", "/mutate")
                .json(text)
                .patches_only_metadata(&widget)
        },
        {
            let odd = edited(&good, |r| {
                r["request"]["uid"] = json!("e2e-bad-input-number-object");
                r["request"]["object"] = json!(42);
            });
            post("an object that is a number", "/validate")
                .json(to_vec(&odd))
                .answers(&odd)
        },
        {
            let odd = edited(&good, |r| {
                r["request"]["uid"] = json!("e2e-bad-input-string-object");
                r["request"]["object"] = json!("a pod");
            });
            post("an object that is a string, on /mutate", "/mutate")
                .json(to_vec(&odd))
                .answers(&odd)
        },
        // --- 415: not application/json ----------------------------------------
        post("Content-Type text/plain", "/validate")
            .content_type(b"text/plain")
            .body(good_bytes.clone())
            .says(415, format!(r#"{BAD_TYPE}"text/plain": expected application/json"#)),
        post("Content-Type application/xml", "/mutate")
            .content_type(b"application/xml")
            .body(good_bytes.clone())
            .says(415, format!(r#"{BAD_TYPE}"application/xml""#)),
        post("Content-Type application/x-www-form-urlencoded", "/validate")
            .content_type(b"application/x-www-form-urlencoded")
            .body(good_bytes.clone())
            .says(415, format!(r#"{BAD_TYPE}"application/x-www-form-urlencoded""#)),
        post("Content-Type application/jsonx", "/validate")
            .content_type(b"application/jsonx")
            .body(good_bytes.clone())
            .says(415, format!(r#"{BAD_TYPE}"application/jsonx""#)),
        post("Content-Type application/json-patch+json", "/mutate")
            .content_type(b"application/json-patch+json")
            .body(good_bytes.clone())
            .says(415, format!(r#"{BAD_TYPE}"application/json-patch+json""#)),
        post("Content-Type multipart/form-data", "/validate")
            .content_type(b"multipart/form-data; boundary=x")
            .body(good_bytes.clone())
            .says(415, BAD_TYPE),
        post("Content-Type empty", "/validate")
            .content_type(b"")
            .body(good_bytes.clone())
            .says(415, format!(r#"{BAD_TYPE}"""#)),
        post("Content-Type with non-ASCII bytes", "/validate")
            .content_type(b"application/json\xff")
            .body(good_bytes.clone())
            .says(415, BAD_TYPE),
        post("Content-Type is checked before the policy name", "/validate/nope")
            .content_type(b"text/plain")
            .body(good_bytes.clone())
            .says(415, BAD_TYPE),
        // --- 413: over the 8 MiB body limit -------------------------------------
        post("a 9 MiB review", "/validate")
            .json(to_vec(&edited(&good, |r| {
                r["request"]["object"]["metadata"]["annotations"] =
                    json!({"padding": "x".repeat(9 << 20)});
            })))
            .says(413, "request body is larger than the limit of 8388608 bytes"),
        // --- 404: unknown policy or route ---------------------------------------
        post("unknown policy on /validate", "/validate/nope")
            .json(good_bytes.clone())
            .says(404, r#"no policy named "nope" is loaded"#),
        post("unknown policy on /mutate", "/mutate/nope")
            .json(good_bytes.clone())
            .says(404, r#"no policy named "nope" is loaded"#),
        post("the policy name is checked before the body", "/validate/nope")
            .json("this is { not json")
            .says(404, r#"no policy named "nope" is loaded"#),
        post("a validating policy on /mutate", "/mutate/allowed-images")
            .json(good_bytes.clone())
            .says(404, r#"policy "allowed-images" does not mutate (it is a validating policy)"#),
        post("a mutating policy on /validate", "/validate/default-labels")
            .json(good_bytes.clone())
            .says(404, r#"policy "default-labels" does not validate (it is a mutating policy)"#),
        post("a percent-encoded policy name that is not loaded", "/validate/no%20such")
            .json(good_bytes.clone())
            .says(404, r#"no policy named "no such" is loaded"#),
        post("POST /", "/")
            .json(good_bytes.clone())
            .says(404, "no route for POST /"),
        post("POST /admit", "/admit")
            .json(good_bytes.clone())
            .says(404, "no route for POST /admit"),
        post("POST /validate/a/b", "/validate/a/b")
            .json(good_bytes.clone())
            .says(404, "no route for POST /validate/a/b"),
        post("POST /validate/ (trailing slash)", "/validate/")
            .json(good_bytes.clone())
            .says(404, "no route for POST /validate/"),
        post("POST /VALIDATE", "/VALIDATE")
            .json(good_bytes.clone())
            .says(404, "no route for POST /VALIDATE"),
        Row::new("GET /nope", Method::GET, "/nope").says(404, "no route for GET /nope"),
        Row::new("PUT /nope?x=1", Method::PUT, "/nope?x=1")
            .json(good_bytes.clone())
            .says(404, "no route for PUT /nope"),
        // --- 405: a known path, another method ----------------------------------
        // axum answers these itself, with an `Allow` header and no body.
        Row::new("GET /validate", Method::GET, "/validate")
            .status(405)
            .with_header("allow", "POST"),
        Row::new("GET /mutate/default-labels", Method::GET, "/mutate/default-labels")
            .status(405)
            .with_header("allow", "POST"),
        Row::new("PUT /mutate", Method::PUT, "/mutate")
            .json(good_bytes.clone())
            .status(405)
            .with_header("allow", "POST"),
        Row::new("DELETE /validate/allowed-images", Method::DELETE, "/validate/allowed-images")
            .status(405)
            .with_header("allow", "POST"),
        Row::new("PATCH /validate", Method::PATCH, "/validate")
            .json(good_bytes.clone())
            .status(405)
            .with_header("allow", "POST"),
        post("POST /healthz", "/healthz")
            .json(good_bytes.clone())
            .status(405)
            .with_header("allow", "GET"),
        // --- odd but acceptable: answered normally --------------------------------
        post("?timeout=banana is ignored", "/validate?timeout=banana")
            .json(good_bytes.clone())
            .answers(&good),
        post("?timeout= (empty) is ignored", "/mutate?timeout=")
            .json(good_bytes.clone())
            .answers(&good),
        post("?timeout= far too large", "/validate?timeout=99999999999999999999999s")
            .json(good_bytes.clone())
            .answers(&good),
        post("?timeout= negative", "/validate?timeout=-10s")
            .json(good_bytes.clone())
            .answers(&good),
        post("?timeout twice", "/mutate?timeout=10s&timeout=banana")
            .json(good_bytes.clone())
            .answers(&good),
        post("Content-Type in capitals", "/validate")
            .content_type(b"APPLICATION/JSON; Charset=UTF-8")
            .body(good_bytes.clone())
            .answers(&good),
        post("no Content-Type at all", "/validate")
            .body(good_bytes.clone())
            .answers(&good),
        post("a percent-encoded policy name", "/validate/allowed%2Dimages")
            .json(good_bytes.clone())
            .answers(&good),
    ];
    // Invalid UTF-8 once percent-decoded: axum's Path extractor refuses it.
    rows.push(
        post("a policy name that is not UTF-8", "/validate/%ff")
            .json(good_bytes.clone())
            .says(400, "Invalid URL: Invalid UTF-8 in `policy`"),
    );
    Ok(rows)
}

/// `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`, gzipped.
const GZIPPED_ENVELOPE: &[u8] = &[
    0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03, 0xab, 0x56, 0x4a, 0x2c, 0xc8, 0x0c,
    0x4b, 0x2d, 0x2a, 0xce, 0xcc, 0xcf, 0x53, 0xb2, 0x52, 0x4a, 0x4c, 0xc9, 0xcd, 0x2c, 0x06, 0xb1,
    0xf5, 0xb2, 0x2d, 0x8a, 0xf5, 0x32, 0xf3, 0xf5, 0xcb, 0x0c, 0x95, 0x74, 0x94, 0xb2, 0x33, 0xf3,
    0x52, 0x80, 0x92, 0x8e, 0x30, 0xc9, 0xa0, 0xd4, 0xb2, 0xcc, 0xd4, 0x72, 0xa5, 0x5a, 0x00, 0x5b,
    0x57, 0x8f, 0xcb, 0x3d, 0x00, 0x00, 0x00,
];

/// Sends `row` over `proto` and checks the answer.
fn check(s: &Server, proto: Proto, row: &Row) -> Result<()> {
    let mut request = s
        .client(proto)
        .request(row.method.clone(), s.url(&row.path))
        .body(row.body.clone());
    for (name, value) in &row.headers {
        request = request.header(*name, value.clone());
    }
    let reply = send(request)?;
    if std::env::var_os("BAD_INPUT_SHOW").is_some() {
        eprintln!(
            "[{proto:?}] {}\n{}\n",
            row.name,
            tail(&reply.to_string(), 600)
        );
    }
    ensure!(
        reply.version == proto.expected_version(),
        "expected {:?}, got {:?}",
        proto.expected_version(),
        reply.version
    );
    ensure!(
        reply.status.as_u16() == row.status,
        "expected HTTP {}, got\n{reply}",
        row.status
    );
    if let Some((name, contains)) = row.header {
        let value = reply
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        ensure!(
            value.contains(contains),
            "expected header {name} containing {contains:?}, got {value:?}\n{reply}"
        );
    }
    match &row.says {
        Says::Unchecked => {}
        Says::Reason(reason) => check_reason(&reply, reason)?,
        Says::Answer(review) => {
            check_answer(review, &reply)?;
        }
        Says::PatchesOnlyMetadata(review) => {
            let answer = check_answer(review, &reply)?;
            let patch = answer.patch()?.unwrap_or_default();
            let text = serde_json::to_string(&patch)?;
            ensure!(!patch.0.is_empty(), "expected a patch\n{answer}");
            let stray: Vec<_> = serde_json::to_value(&patch)?
                .as_array()
                .into_iter()
                .flatten()
                .filter(|op| !op["path"].as_str().unwrap_or("").starts_with("/metadata/"))
                .cloned()
                .collect();
            ensure!(
                stray.is_empty(),
                "the patch touches more than /metadata: {stray:?}\npatch: {text}"
            );
        }
        Says::AnswerWithUid(uid) => {
            ensure!(
                reply.content_type().starts_with("application/json"),
                "expected an application/json answer, got\n{reply}"
            );
            let answer = reply.json()?;
            ensure!(
                answer["kind"] == "AdmissionReview"
                    && answer["response"]["uid"] == *uid
                    && answer["response"]["allowed"].is_boolean(),
                "expected an AdmissionReview answer for uid {uid:?}, got\n{reply}"
            );
        }
    }
    Ok(())
}

fn check_reason(reply: &Reply, reason: &str) -> Result<()> {
    ensure!(
        reply.content_type().starts_with("text/plain"),
        "the reason is not text/plain\n{reply}"
    );
    ensure!(
        reply.text().contains(reason),
        "the reason does not contain {reason:?}\n{reply}"
    );
    Ok(())
}

/// A good review gets a good answer, and the server is alive.
fn ensure_still_serving(s: &Server, proto: Proto) -> Result<()> {
    let good = fixture("pod-allowed.json")?;
    for path in ["/validate", "/mutate"] {
        let answer = s
            .review_over(proto, path, &good)
            .with_context(|| format!("a good review on {path} after the table ({proto:?})"))?;
        ensure!(answer.allowed(), "a good review was denied:\n{answer}");
    }
    let denied = fixture("pod-denied.json")?;
    let answer = s.review_over(proto, "/validate", &denied)?;
    ensure!(!answer.allowed(), "a bad pod was allowed:\n{answer}");
    let health = s.get_over(proto, "/healthz")?;
    ensure!(health.status == StatusCode::OK, "GET /healthz: {health}");
    Ok(())
}

#[test]
fn bad_input_table() {
    with_shared(|s| {
        let rows = rows()?;
        ensure!(rows.len() >= 40, "only {} rows", rows.len());
        let mut failures = Vec::new();
        for proto in Proto::ALL {
            for row in &rows {
                if let Err(e) = check(s, proto, row) {
                    failures.push(format!(
                        "[{proto:?}] {}\n  sent: {}\n  {e:#}",
                        row.name,
                        row.describe()
                    ));
                }
            }
            ensure_still_serving(s, proto)?;
        }
        ensure!(s.is_running(), "the server died");
        ensure!(
            failures.is_empty(),
            "{} of {} rows failed:\n\n{}",
            failures.len(),
            rows.len() * Proto::ALL.len(),
            failures.join("\n\n")
        );
        Ok(())
    });
}
