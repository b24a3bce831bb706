use super::*;
use portcullis_sdk::{Verdict, testing};
use serde_json::{Value, json};

fn settings() -> Value {
    json!({
        "labels": {"team": "platform", "cost-center": "cc-1234"},
        "annotations": {"owner": "platform@example.com"}
    })
}

fn review(operation: &str, object: Value) -> Value {
    json!({
        "uid": "0c5e6a7e-2f1a-4e53-a8e4-5d2b5c8f3a10",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "operation": operation,
        "namespace": "shop",
        "userInfo": {"username": "alice"},
        "object": object
    })
}

fn pod(metadata: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}
    })
}

fn mutate(request: &Value) -> Mutation {
    testing::mutate::<DefaultLabels>(request, &settings()).unwrap()
}

#[test]
fn adds_labels_and_annotations_to_a_bare_pod() {
    let mutation = mutate(&review(
        "CREATE",
        pod(json!({"name": "web", "namespace": "shop"})),
    ));
    assert_eq!(mutation.verdict, Verdict::allow());
    assert_eq!(
        mutation.object,
        Some(pod(json!({
            "name": "web",
            "namespace": "shop",
            "labels": {"team": "platform", "cost-center": "cc-1234"},
            "annotations": {"owner": "platform@example.com"}
        })))
    );
}

#[test]
fn never_overwrites_and_keeps_other_keys() {
    let object = pod(json!({
        "name": "web",
        "labels": {"team": "payments", "app": "web"},
        "annotations": {"note": "x"}
    }));
    let mutation = mutate(&review("UPDATE", object));
    assert_eq!(
        mutation.object,
        Some(pod(json!({
            "name": "web",
            "labels": {"team": "payments", "app": "web", "cost-center": "cc-1234"},
            "annotations": {"note": "x", "owner": "platform@example.com"}
        })))
    );
}

#[test]
fn idempotent() {
    let first = mutate(&review("CREATE", pod(json!({"name": "web"}))));
    let once = first.object.unwrap();
    let second = mutate(&review("CREATE", once));
    assert_eq!(
        second,
        Mutation::unchanged(),
        "second run reports no object"
    );
}

#[test]
fn complete_object_is_unchanged() {
    let object = pod(json!({
        "name": "web",
        "labels": {"team": "a", "cost-center": "b"},
        "annotations": {"owner": "c"}
    }));
    assert_eq!(mutate(&review("CREATE", object)), Mutation::unchanged());
}

#[test]
fn maps_are_created_only_when_something_is_added() {
    let labels_only = json!({"labels": {"team": "platform"}});
    let object = pod(json!({"name": "web", "labels": {"team": "payments"}}));
    let mutation =
        testing::mutate::<DefaultLabels>(&review("CREATE", object.clone()), &labels_only).unwrap();
    assert_eq!(mutation.object, None);
    let annotations_only = json!({"annotations": {"owner": "x"}});
    let mutation =
        testing::mutate::<DefaultLabels>(&review("CREATE", object), &annotations_only).unwrap();
    let object = mutation.object.unwrap();
    assert_eq!(object["metadata"]["annotations"], json!({"owner": "x"}));
    assert_eq!(object["metadata"]["labels"], json!({"team": "payments"}));
}

#[test]
fn works_on_any_kind() {
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": []}}}
    });
    let object = mutate(&review("CREATE", deployment)).object.unwrap();
    assert_eq!(
        object["metadata"]["labels"],
        json!({"app": "web", "team": "platform", "cost-center": "cc-1234"})
    );
    // Only the object's own metadata: the pod template is left alone.
    assert_eq!(
        object["spec"]["template"]["metadata"]["labels"],
        json!({"app": "web"})
    );
}

#[test]
fn delete_connect_and_no_object_are_unchanged() {
    let mut delete = review("DELETE", Value::Null);
    delete["oldObject"] = pod(json!({"name": "web"}));
    assert_eq!(mutate(&delete), Mutation::unchanged());
    assert_eq!(
        mutate(&review("CONNECT", json!({"kind": "PodExecOptions"}))),
        Mutation::unchanged()
    );
    assert_eq!(
        mutate(&review("CREATE", Value::Null)),
        Mutation::unchanged()
    );
}

#[test]
fn odd_metadata_is_a_policy_error() {
    let object = pod(json!({"name": "web", "labels": "team=x"}));
    assert_eq!(
        testing::mutate::<DefaultLabels>(&review("CREATE", object), &settings()),
        Err("/metadata/labels is not a JSON object".to_string())
    );
}

/// A real request: the mutating call for a `kubectl run` pod with a
/// generated name, before the API server assigned uid and name.
#[test]
fn apiserver_capture() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/corpus/kube-apiserver-v1.36/005-mutate-CREATE-Pod-gen-.json"
    );
    let envelope: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let request = &envelope["request"];
    let before = request["object"].clone();
    let after = mutate(request).object.unwrap();
    assert_eq!(after["metadata"]["labels"]["team"], "platform");
    assert_eq!(
        after["metadata"]["annotations"]["owner"],
        "platform@example.com"
    );
    assert_eq!(after["spec"], before["spec"]);
    let mut rerun = request.clone();
    rerun["object"] = after;
    assert_eq!(mutate(&rerun), Mutation::unchanged());
}

#[test]
fn settings_validation() {
    let check = |s: Value| testing::validate_settings::<DefaultLabels>(&s);
    assert_eq!(check(settings()), Ok(()));
    assert_eq!(check(json!({"labels": {"a": "b"}})), Ok(()));
    assert_eq!(check(json!({"annotations": {"a": "b"}})), Ok(()));
    let empty = Err("settings must give at least one label or annotation".to_string());
    assert_eq!(check(json!({})), empty);
    assert_eq!(check(json!(null)), empty);
    assert_eq!(check(json!({"labels": {}, "annotations": {}})), empty);
    assert_eq!(
        check(json!({"labels": {"a": 1}})),
        Err(
            "invalid settings: invalid type: integer `1`, expected a string at line 1 column 16"
                .to_string()
        )
    );
    assert_eq!(
        check(json!({"lables": {"a": "b"}})),
        Err("invalid settings: unknown field `lables`, expected `labels` or `annotations` at line 1 column 9"
            .to_string())
    );
}

#[test]
fn validate_is_not_supported() {
    assert_eq!(
        testing::validate::<DefaultLabels>(&review("CREATE", pod(json!({}))), &settings()),
        Err("policy default-labels does not support validate".to_string())
    );
    let m = DefaultLabels::METADATA;
    assert_eq!((m.validates, m.mutates), (false, true));
}
