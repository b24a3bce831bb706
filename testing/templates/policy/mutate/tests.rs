//! Unit tests: the policy's Rust code, run natively through the same
//! JSON-in, object-out path as the module. `tests/module.rs` runs the
//! built `.wasm` itself.

use super::*;
use portcullis_sdk::testing;
use serde_json::{Value, json};

fn settings() -> Value {
    json!({"labels": {"team": "unassigned", "tier": "web"}})
}

fn pod(labels: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop", "labels": labels},
        "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}
    })
}

fn mutate(request: &Value) -> Mutation {
    testing::mutate::<{{type_name}}>(request, &settings()).expect("a mutation")
}

#[test]
fn missing_labels_are_added_and_present_ones_kept() {
    let mutation = mutate(&testing::request(
        "CREATE",
        "shop",
        pod(json!({"team": "shop"})),
    ));
    assert!(mutation.verdict.allowed);
    let object = mutation.object.expect("a changed object");
    assert_eq!(
        object["metadata"]["labels"],
        json!({"team": "shop", "tier": "web"})
    );
}

#[test]
fn a_deployment_labels_its_pod_template() {
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}
    });
    let object = mutate(&testing::request("CREATE", "shop", deployment))
        .object
        .expect("changed");
    assert_eq!(
        object["spec"]["template"]["metadata"]["labels"],
        json!({"team": "unassigned", "tier": "web"})
    );
    assert_eq!(
        object["metadata"].get("labels"),
        None,
        "the Deployment's own metadata is left alone"
    );
}

#[test]
fn nothing_to_add_means_no_change() {
    let full = pod(json!({"team": "shop", "tier": "db"}));
    assert_eq!(
        mutate(&testing::request("CREATE", "shop", full.clone())).object,
        None
    );
    assert_eq!(
        mutate(&testing::request("DELETE", "shop", full)).object,
        None
    );
}

#[test]
fn settings_are_checked() {
    assert_eq!(
        testing::validate_settings::<{{type_name}}>(&settings()),
        Ok(())
    );
    assert_eq!(
        testing::validate_settings::<{{type_name}}>(&json!({})),
        Err("labels must give at least one label to add".to_string())
    );
}
