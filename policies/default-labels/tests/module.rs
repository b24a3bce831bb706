//! The built `default_labels.wasm` through the real engine: the patch the
//! server would send, and that applying it leaves nothing more to add.

use portcullis_testing::{TestPolicy, fixture};
use serde_json::{Value, json};

const DIR: &str = env!("CARGO_MANIFEST_DIR");

fn policy() -> TestPolicy {
    let settings = json!({
        "labels": {"team": "platform", "cost-center": "cc-1234"},
        "annotations": {"owner": "platform@example.com"}
    });
    TestPolicy::built(DIR, env!("CARGO_PKG_NAME"), settings).unwrap_or_else(|e| panic!("{e}"))
}

fn review() -> Value {
    fixture(DIR, "tests/fixtures/pod-review.json").unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn absent_keys_are_added_and_present_ones_kept() {
    let outcome = policy().review(review()).expect("answer");
    assert!(outcome.allowed());
    assert_eq!(
        outcome.patch(),
        Some(json!([
            {"op": "add", "path": "/metadata/annotations", "value": {"owner": "platform@example.com"}},
            {"op": "add", "path": "/metadata/labels/cost-center", "value": "cc-1234"}
        ]))
    );
    let object = outcome.object().expect("patched object");
    assert_eq!(
        object["metadata"]["labels"],
        json!({"team": "shop", "cost-center": "cc-1234"})
    );
    assert!(outcome.patch_base64().is_some_and(|b64| !b64.is_empty()));
}

#[test]
fn the_patched_object_needs_no_second_patch() {
    let policy = policy();
    let first = policy.review(review()).expect("answer");
    let mut again = review();
    again["request"]["object"] = first.object().expect("patched object").clone();
    let second = policy.review(again).expect("answer");
    assert!(second.allowed());
    assert_eq!(second.patch(), None, "idempotent: nothing left to add");
}

#[test]
fn delete_is_left_alone() {
    let mut review = review();
    let request = &mut review["request"];
    request["operation"] = json!("DELETE");
    request["oldObject"] = request["object"].take();
    let outcome = policy().review(review).expect("answer");
    assert!(outcome.allowed());
    assert_eq!(outcome.patch(), None);
}
