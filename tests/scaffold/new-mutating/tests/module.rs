//! The built module through the real host engine: componentized, checked
//! against the contract and run with the server's limits, exactly as
//! `portcullis serve` runs it. Build it first (`make policies`, or
//! `cargo build --target wasm32-wasip1 --profile policy -p new-mutating`).

use portcullis_testing::{TestPolicy, TestingError, fixture};
use serde_json::{Value, json};

const DIR: &str = env!("CARGO_MANIFEST_DIR");

fn policy() -> TestPolicy {
    let settings = json!({"labels": {"team": "unassigned", "tier": "web"}});
    TestPolicy::built(DIR, env!("CARGO_PKG_NAME"), settings).unwrap_or_else(|e| panic!("{e}"))
}

fn review() -> Value {
    fixture(DIR, "tests/fixtures/deployment.yaml").unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_server_sends_a_minimal_patch() {
    let outcome = policy().review(review()).expect("an answer");
    assert!(outcome.allowed());
    assert_eq!(
        outcome.patch(),
        Some(json!([
            {"op": "add", "path": "/spec/template/metadata/labels/team", "value": "unassigned"}
        ]))
    );
}

#[test]
fn the_patched_object_needs_no_second_patch() {
    let policy = policy();
    let first = policy.review(review()).expect("an answer");
    let mut again = review();
    again["object"] = first.object().expect("the patched object").clone();
    assert_eq!(policy.review(again).expect("an answer").patch(), None);
}

#[test]
fn bad_settings_keep_the_module_from_loading() {
    let loaded = TestPolicy::built(DIR, env!("CARGO_PKG_NAME"), json!({"labels": {}}));
    let Err(TestingError::Load(message)) = loaded else {
        panic!("settings without labels must be rejected");
    };
    assert!(
        message.ends_with("settings rejected: labels must give at least one label to add"),
        "{message}"
    );
}
