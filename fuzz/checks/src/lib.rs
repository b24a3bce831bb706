//! The properties the fuzz targets check, as plain functions so that the
//! inputs kept under `regressions/` can be replayed by `cargo test` without
//! libFuzzer (see `tests/regressions.rs`, run by `make test`).
//!
//! Each function panics when the host misbehaves on `data`; any other
//! outcome (including "this input is rejected") is fine.

// A check reports a misbehaving host by panicking, as the fuzzer expects.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;

use portcullis_engine::{Decision, Review};
use portcullis_engine::{Matcher, Operation, ResourcePattern};
use serde_json::Value;
use serde_json::value::RawValue;

/// Parses `text` as a JSON object of raw members, as the host does in
/// `request_with_object` (no recursion limit on member values).
fn raw_members(text: &str) -> BTreeMap<String, &RawValue> {
    serde_json::from_str(text)
        .unwrap_or_else(|err| panic!("not a JSON object of members: {err}\n{text}"))
}

/// The first byte that is not JSON whitespace.
fn first_byte(text: &[u8]) -> Option<u8> {
    text.iter()
        .copied()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

/// `review_parse`: whatever the API server (or anyone) POSTs, parsing never
/// panics; a body that parses is UTF-8 and a JSON object whose request is a
/// JSON object, gives facts the matcher can use, a request whose object can
/// be replaced (as the mutation chain does between policies), and responses
/// that are valid JSON echoing the uid and the review's apiVersion.
pub fn review_parse(data: &[u8]) {
    let Ok(review) = Review::parse(data) else {
        return;
    };
    // Finding 1 (fixed in the host): serde_json skips the members it does
    // not deserialize without checking their UTF-8.
    assert!(
        std::str::from_utf8(data).is_ok(),
        "finding 1: a body that is not UTF-8 parsed as a review"
    );
    // Finding 2 (fixed in the host): serde's derived Deserialize also
    // accepts a struct written as an array of its fields, for the envelope
    // and for the request.
    assert!(
        first_byte(data) == Some(b'{'),
        "finding 2: a body that is not a JSON object parsed as a review"
    );
    assert!(
        review.request.get().starts_with('{'),
        "finding 2: a request that is not a JSON object parsed: {}",
        review.request.get()
    );
    assert!(!review.uid.is_empty(), "a parsed review has an empty uid");

    // What the handlers and the matcher read.
    let facts = review.facts();
    let _ = (
        review.operation(),
        review.namespace(),
        review.name(),
        review.resource(),
    );
    let matcher = Matcher {
        operations: Some(vec![Operation::Create, Operation::Update]),
        resources: Some(
            [
                "pods",
                "deployments.apps",
                "*/*",
                "pods/ephemeralcontainers",
            ]
            .into_iter()
            .map(|p| ResourcePattern::parse(p).expect("valid pattern"))
            .collect(),
        ),
        exclude_namespaces: vec!["kube-system".to_string()],
        ..Matcher::default()
    };
    let _ = matcher.matches(&facts);
    let _ = Matcher::default().matches(&facts);

    // The request is kept raw; it is a JSON object whose uid is the uid.
    let members = raw_members(review.request.get());
    let uid: String = members
        .get("uid")
        .map(|raw| serde_json::from_str(raw.get()).expect("uid is a string"))
        .expect("request has a uid");
    assert_eq!(uid, review.uid, "raw request uid differs from parsed uid");

    // The mutation chain replaces the object between policies: with a fixed
    // object and with the request's own object (as the chain parses it).
    let mut objects = vec![serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "fuzz", "labels": {"a/b": "c~d"}},
        "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause"}]}
    })];
    if let Some(parsed) = review
        .object
        .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
    {
        objects.push(parsed);
    }
    for object in &objects {
        let text = portcullis_engine::request_with_object(review.request, object)
            .unwrap_or_else(|err| panic!("request_with_object failed on a parsed review: {err}"));
        let members = raw_members(&text);
        let replaced: Value =
            serde_json::from_str(members["object"].get()).expect("the replaced object parses back");
        // Finding 3 (fixed: serde_json's `float_roundtrip`): some numbers did
        // not survive being written and parsed again.
        assert_eq!(
            &replaced, object,
            "finding 3: request_with_object did not keep the object"
        );
        // Every other member is kept byte for byte.
        let before = raw_members(review.request.get());
        assert_eq!(
            before.keys().filter(|k| *k != "object").collect::<Vec<_>>(),
            members
                .keys()
                .filter(|k| *k != "object")
                .collect::<Vec<_>>(),
            "request_with_object changed the set of members"
        );
        for (key, raw) in &before {
            if key != "object" {
                assert_eq!(raw.get(), members[key].get(), "member {key:?} changed");
            }
        }
        // What the next policy receives is itself a review request that
        // parses, with the same uid.
        let envelope = format!(
            r#"{{"apiVersion":"{}","kind":"AdmissionReview","request":{text}}}"#,
            review.api_version.as_str()
        );
        let again = Review::parse(envelope.as_bytes())
            .unwrap_or_else(|err| panic!("the chain's next request does not parse: {err}"));
        assert_eq!(again.uid, review.uid);
    }

    // Responses: allowed with a patch, denied with a message, warnings and
    // annotations made of the input's own strings.
    let decisions = [
        Decision {
            allowed: true,
            patch: Some(r#"[{"op":"add","path":"/metadata/labels/a","value":"b"}]"#.into()),
            warnings: vec![review.name().to_string()],
            audit_annotations: BTreeMap::from([
                ("generation".to_string(), "1".to_string()),
                (format!("{}-digest", review.resource()), review.uid.clone()),
            ]),
            ..Decision::default()
        },
        Decision {
            allowed: false,
            code: Some(0),
            message: Some(format!("{}: denied \u{0}\u{2028}\"", review.namespace())),
            patch: Some("[]".into()),
            ..Decision::default()
        },
        Decision::default(),
    ];
    for decision in &decisions {
        let body = portcullis_engine::admission_response(review.api_version, &review.uid, decision)
            .unwrap_or_else(|err| panic!("response does not serialize: {err}"));
        let value: Value = serde_json::from_slice(&body).unwrap_or_else(|err| {
            panic!(
                "response is not JSON: {err}\n{}",
                String::from_utf8_lossy(&body)
            )
        });
        assert_eq!(value["apiVersion"], review.api_version.as_str());
        assert_eq!(value["kind"], "AdmissionReview");
        assert_eq!(value["response"]["uid"], review.uid.as_str());
        assert_eq!(value["response"]["allowed"], decision.allowed);
        if decision.allowed {
            assert!(value["response"].get("status").is_none());
            assert_eq!(value["response"]["patchType"], "JSONPatch");
        } else {
            assert!(value["response"]["status"]["message"].is_string());
            assert!(value["response"].get("patch").is_none());
        }
    }
}

/// Splits a `patch_build` input into the object before and after a
/// mutation: two JSON documents separated by the first NUL byte (which JSON
/// text cannot contain).
pub fn split_pair(data: &[u8]) -> Option<(Value, Value)> {
    let at = data.iter().position(|b| *b == 0)?;
    let before = serde_json::from_slice(&data[..at]).ok()?;
    let after = serde_json::from_slice(&data[at + 1..]).ok()?;
    Some((before, after))
}

/// `patch_build`: the host answers a mutation with `json_patch::diff(before,
/// after)`, serialized as JSON; applying that patch to `before` must give
/// `after`, in memory and after the patch has crossed the wire as text.
pub fn patch_build(data: &[u8]) {
    let Some((before, after)) = split_pair(data) else {
        return;
    };
    let patch = json_patch::diff(&before, &after);
    if before == after {
        assert!(
            patch.0.is_empty(),
            "equal documents gave a patch: {patch:?}"
        );
    }

    // In memory: the property the host relies on.
    let mut doc = before.clone();
    json_patch::patch(&mut doc, &patch).unwrap_or_else(|err| {
        panic!("the diff does not apply: {err}\nbefore: {before}\nafter: {after}\npatch: {patch:?}")
    });
    assert_eq!(
        doc, after,
        "diff then patch does not give the mutated object\npatch: {patch:?}"
    );

    // A policy that returns the object unchanged writes it back as text
    // (serde_json in the guest), which the host parses: no patch. Finding 3
    // (fixed: serde_json's `float_roundtrip`).
    let echoed: Value = serde_json::from_str(&serde_json::to_string(&before).expect("serializes"))
        .expect("an echoed object parses");
    let spurious = json_patch::diff(&before, &echoed);
    assert!(
        spurious.0.is_empty(),
        "finding 3: an object returned unchanged gives a patch: {}",
        serde_json::to_string(&spurious).unwrap_or_default()
    );

    // On the wire: the host sends `serde_json::to_string(&patch)`; the API
    // server parses it and applies it to the object it holds.
    let text = serde_json::to_string(&patch).expect("a patch serializes");
    let sent: json_patch::Patch = serde_json::from_str(&text)
        .unwrap_or_else(|err| panic!("the serialized patch does not parse back: {err}\n{text}"));
    let mut doc = before.clone();
    json_patch::patch(&mut doc, &sent)
        .unwrap_or_else(|err| panic!("the sent patch does not apply: {err}\n{text}"));
    assert_eq!(
        doc, after,
        "the patch as sent does not give the mutated object\npatch: {text}"
    );
}
