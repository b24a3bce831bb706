//! The built module through the real host engine: componentized, checked
//! against the contract and run with the server's limits, exactly as
//! `portcullis serve` runs it. Build it first (`make policies`, or
//! `cargo build --target wasm32-wasip1 --profile policy -p {{name}}`).

use portcullis_testing::{TestPolicy, TestingError, fixture};
use serde_json::{Value, json};

const DIR: &str = env!("CARGO_MANIFEST_DIR");

fn policy(settings: Value) -> Result<TestPolicy, TestingError> {
    TestPolicy::built(DIR, env!("CARGO_PKG_NAME"), settings)
}

#[test]
fn a_deployment_with_an_unversioned_image_is_denied() {
    let review = fixture(DIR, "tests/fixtures/deployment.yaml").expect("fixture");
    let outcome = policy(json!({}))
        .expect("loads")
        .review(review)
        .expect("an answer");
    assert!(!outcome.allowed());
    assert_eq!(outcome.code(), Some(403));
    assert_eq!(
        outcome.message(),
        Some(
            "{{name}}: container \"sidecar\" uses image \"busybox\" without a version; use a tag other than latest or a digest"
        )
    );
}

#[test]
fn an_exempt_namespace_is_allowed() {
    let review = fixture(DIR, "tests/fixtures/deployment.yaml").expect("fixture");
    let outcome = policy(json!({"exemptNamespaces": ["shop"]})).expect("loads");
    assert!(outcome.review(review).expect("an answer").allowed());
}

#[test]
fn bad_settings_keep_the_module_from_loading() {
    let Err(TestingError::Load(message)) = policy(json!({"exemptNamespaces": [""]})) else {
        panic!("settings with an empty namespace must be rejected");
    };
    assert!(
        message.ends_with("settings rejected: exemptNamespaces must not contain an empty name"),
        "{message}"
    );
}
