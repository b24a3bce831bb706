//! Unit tests: the policy's Rust code, run natively through the same
//! JSON-in, verdict-out path as the module. `tests/module.rs` runs the
//! built `.wasm` itself.

use super::*;
use portcullis_sdk::testing;
use serde_json::{Value, json};

fn pod(image: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"containers": [{"name": "web", "image": image}]}
    })
}

fn validate(request: &Value, settings: Value) -> Verdict {
    testing::validate::<{{type_name}}>(request, &settings).expect("a verdict")
}

#[test]
fn versioned_images_are_allowed() {
    for image in [
        "nginx:1.27",
        "ghcr.io/acme/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ] {
        let request = testing::request("CREATE", "shop", pod(image));
        assert_eq!(validate(&request, json!({})), Verdict::allow(), "{image}");
    }
}

#[test]
fn latest_written_or_implied_is_denied() {
    let request = testing::request("CREATE", "shop", pod("nginx"));
    let verdict = validate(&request, json!({}));
    assert!(!verdict.allowed);
    assert_eq!(
        verdict.message.as_deref(),
        Some(
            "container \"web\" uses image \"nginx\" without a version; use a tag other than latest or a digest"
        )
    );
    let request = testing::request("UPDATE", "shop", pod("nginx:latest"));
    assert!(!validate(&request, json!({})).allowed);
}

#[test]
fn an_update_judges_only_new_or_changed_images() {
    let mut relabel = testing::request("UPDATE", "shop", pod("nginx"));
    relabel["oldObject"] = pod("nginx");
    relabel["object"]["metadata"]["labels"] = json!({"team": "shop"});
    assert!(
        validate(&relabel, json!({})).allowed,
        "unchanged image, admitted before"
    );

    let mut downgrade = testing::request("UPDATE", "shop", pod("nginx"));
    downgrade["oldObject"] = pod("nginx:1.27");
    assert!(
        !validate(&downgrade, json!({})).allowed,
        "changed to latest"
    );

    // `kubectl debug`: an ephemeral container added through its subresource.
    let mut debug = testing::request("UPDATE", "shop", pod("nginx:1.27"));
    debug["subResource"] = json!("ephemeralcontainers");
    debug["oldObject"] = pod("nginx:1.27");
    debug["object"]["spec"]["ephemeralContainers"] =
        json!([{"name": "debugger", "image": "busybox"}]);
    let verdict = validate(&debug, json!({}));
    assert_eq!(
        verdict.message.as_deref(),
        Some(
            "ephemeralContainer \"debugger\" uses image \"busybox\" without a version; use a tag other than latest or a digest"
        )
    );
}

#[test]
fn exempt_namespaces_and_deletes_are_allowed() {
    let request = testing::request("CREATE", "dev", pod("nginx"));
    assert!(validate(&request, json!({"exemptNamespaces": ["dev"]})).allowed);
    let request = testing::request("DELETE", "shop", pod("nginx"));
    assert!(validate(&request, json!({})).allowed);
}

#[test]
fn settings_are_checked() {
    assert_eq!(
        testing::validate_settings::<{{type_name}}>(&json!({})),
        Ok(())
    );
    assert_eq!(
        testing::validate_settings::<{{type_name}}>(&json!({"exemptNamespaces": [""]})),
        Err("exemptNamespaces must not contain an empty name".to_string())
    );
    let typo = testing::validate_settings::<{{type_name}}>(&json!({"exemptNamespace": ["dev"]}));
    assert!(typo.is_err_and(|e| e.contains("unknown field `exemptNamespace`")));
}
