//! The built `allowed_images.wasm` through the real engine: what the
//! server answers, not only what the Rust code computes natively.

use portcullis_testing::{TestPolicy, TestingError, fixture};
use serde_json::{Value, json};

const DIR: &str = env!("CARGO_MANIFEST_DIR");

fn policy(allowed: &[&str]) -> Result<TestPolicy, TestingError> {
    TestPolicy::built(DIR, env!("CARGO_PKG_NAME"), json!({ "allowed": allowed }))
}

fn deployment() -> Value {
    fixture(DIR, "tests/fixtures/deployment-request.yaml").unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_module_describes_itself() {
    let policy = policy(&["*"]).expect("loads");
    let metadata = policy.metadata().expect("metadata");
    assert_eq!(metadata.name, "allowed-images");
    assert!(metadata.validates && !metadata.mutates);
    assert!(metadata.resources.iter().any(|r| r == "deployments.apps"));
}

#[test]
fn images_on_the_list_are_admitted() {
    let policy = policy(&["ghcr.io/acme/", "nginx", "quay.io/prometheus/*"]).expect("loads");
    let outcome = policy.review(deployment()).expect("answer");
    assert!(outcome.allowed(), "{:?}", outcome.message());
    assert_eq!(outcome.patch(), None);
}

#[test]
fn every_image_off_the_list_is_named_in_one_denial() {
    let policy = policy(&["ghcr.io/acme/"]).expect("loads");
    let outcome = policy.review(deployment()).expect("answer");
    assert!(!outcome.allowed());
    assert_eq!(outcome.code(), Some(403));
    assert_eq!(
        outcome.message(),
        Some(
            "allowed-images: container \"web\" uses image \"nginx\" \
             (docker.io/library/nginx:latest), which is not allowed; \
             container \"metrics\" uses image \"quay.io/prometheus/statsd-exporter:v0.28.0\" \
             (quay.io/prometheus/statsd-exporter:v0.28.0), which is not allowed; \
             allowed images: ghcr.io/acme/"
        )
    );
}

#[test]
fn settings_are_checked_by_the_module_when_it_loads() {
    let Err(TestingError::Load(message)) = policy(&[]) else {
        panic!("an empty allow-list must not load");
    };
    assert!(
        message.ends_with("settings rejected: allowed must list at least one image pattern"),
        "{message}"
    );
    let Err(TestingError::Load(message)) = policy(&["Nginx"]) else {
        panic!("an invalid pattern must not load");
    };
    assert!(
        message.contains("invalid image pattern \"Nginx\": repository name must be lowercase"),
        "{message}"
    );
}

#[test]
fn a_request_the_policy_does_not_match_is_an_error_not_an_allow() {
    let policy = policy(&["*"]).expect("loads");
    let mut review = deployment();
    review["kind"] = json!({"group": "networking.k8s.io", "version": "v1", "kind": "Ingress"});
    review["resource"] =
        json!({"group": "networking.k8s.io", "version": "v1", "resource": "ingresses"});
    let result = policy.review(review).map(|outcome| outcome.response());
    let Err(TestingError::Evaluate(message)) = result else {
        panic!(
            "the policy is not written for ingresses, so it must not seem to allow one: {result:?}"
        );
    };
    assert!(
        message.starts_with("policy allowed-images did not run"),
        "{message}"
    );
}
