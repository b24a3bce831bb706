use super::*;
use portcullis_sdk::testing;
use serde_json::{Value, json};

const SETTINGS: &str =
    r#"{"labels": {"team": null, "app.kubernetes.io/name": null, "env": "^(dev|prod)$"}}"#;

/// The settings as the host passes them today: through a
/// `serde_json::Value`, whose maps are sorted by key.
fn settings() -> Value {
    serde_json::from_str(SETTINGS).unwrap()
}

fn review(operation: &str, object: Value) -> Value {
    json!({
        "uid": "b2a7d5c6-0f0e-4a8e-9a55-3f3c1d7d8e11",
        "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
        "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
        "operation": operation,
        "namespace": "shop",
        "userInfo": {"username": "alice"},
        "object": object
    })
}

fn deployment(labels: Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop", "labels": labels},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}
            }
        }
    })
}

fn validate(request: &Value) -> Verdict {
    testing::validate::<RequiredLabels>(request, &settings()).unwrap()
}

#[test]
fn labelled_object_passes() {
    let object =
        deployment(json!({"team": "payments", "app.kubernetes.io/name": "web", "env": "prod"}));
    assert_eq!(validate(&review("CREATE", object)), Verdict::allow());
}

#[test]
fn message_lists_missing_keys_and_wrong_values() {
    let object = deployment(json!({"env": "PROD", "app": "web"}));
    let verdict = validate(&review("CREATE", object));
    assert!(!verdict.allowed);
    assert_eq!(
        verdict.message.as_deref(),
        Some(
            "missing required labels: app.kubernetes.io/name, team; \
             label \"env\" has value \"PROD\", which does not match ^(dev|prod)$"
        )
    );
}

#[test]
fn keys_keep_the_order_of_the_settings_text() {
    let settings: Settings = portcullis_sdk::parse_settings(SETTINGS).unwrap();
    let request = portcullis_sdk::Request::from_json(
        &review("CREATE", deployment(json!({"env": "PROD"}))).to_string(),
    )
    .unwrap();
    let verdict = RequiredLabels::validate(&request, &settings).unwrap();
    assert_eq!(
        verdict.message.as_deref(),
        Some(
            "missing required labels: team, app.kubernetes.io/name; \
             label \"env\" has value \"PROD\", which does not match ^(dev|prod)$"
        )
    );
}

#[test]
fn one_missing_key_is_singular() {
    let object = deployment(json!({"app.kubernetes.io/name": "web", "env": "dev"}));
    assert_eq!(
        validate(&review("UPDATE", object)).message.as_deref(),
        Some("missing required label: team")
    );
}

#[test]
fn regex_must_match_the_whole_value() {
    let settings = json!({"labels": {"env": "dev|prod"}});
    let check = |value: &str| {
        let request = review("CREATE", deployment(json!({"env": value})));
        testing::validate::<RequiredLabels>(&request, &settings).unwrap()
    };
    assert!(check("dev").allowed);
    assert!(check("prod").allowed);
    assert_eq!(
        check("devprod").message.as_deref(),
        Some("label \"env\" has value \"devprod\", which does not match dev|prod")
    );
    assert!(!check("development").allowed);
}

#[test]
fn empty_value_counts_as_present() {
    let settings = json!({"labels": {"team": null}});
    let request = review("CREATE", deployment(json!({"team": ""})));
    assert!(
        testing::validate::<RequiredLabels>(&request, &settings)
            .unwrap()
            .allowed
    );
}

#[test]
fn objects_without_labels() {
    let mut object = deployment(Value::Null);
    let expected = Some("missing required labels: app.kubernetes.io/name, env, team".to_string());
    assert_eq!(
        validate(&review("CREATE", object.clone())).message,
        expected
    );
    object["metadata"].as_object_mut().unwrap().remove("labels");
    assert_eq!(validate(&review("CREATE", object)).message, expected);
    let configmap =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {}});
    assert_eq!(validate(&review("CREATE", configmap)).message, expected);
}

#[test]
fn delete_and_connect_are_allowed() {
    let mut delete = review("DELETE", Value::Null);
    delete["oldObject"] = deployment(json!({}));
    assert_eq!(validate(&delete), Verdict::allow());
    let connect = review(
        "CONNECT",
        json!({"kind": "PodExecOptions", "command": ["sh"]}),
    );
    assert_eq!(validate(&connect), Verdict::allow());
}

/// A real request: `kubectl label` on a pod in the captured cluster.
#[test]
fn apiserver_capture() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/corpus/kube-apiserver-v1.36/011-observe-UPDATE-Pod-allowed-pod.json"
    );
    let envelope: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let request = &envelope["request"];
    let labels = request["object"]["metadata"]["labels"].as_object().unwrap();
    let key = labels.keys().next().unwrap().clone();
    let present = json!({"labels": {key.clone(): null}});
    assert!(
        testing::validate::<RequiredLabels>(request, &present)
            .unwrap()
            .allowed
    );
    let absent = json!({"labels": {"cost-center": null}});
    assert_eq!(
        testing::validate::<RequiredLabels>(request, &absent)
            .unwrap()
            .message
            .as_deref(),
        Some("missing required label: cost-center")
    );
}

#[test]
fn settings_validation() {
    let check = |text: &str| {
        testing::validate_settings::<RequiredLabels>(&serde_json::from_str(text).unwrap())
    };
    assert_eq!(
        testing::validate_settings::<RequiredLabels>(&settings()),
        Ok(())
    );
    let empty = Err("labels must name at least one required label".to_string());
    assert_eq!(check("{}"), empty);
    assert_eq!(check("null"), empty);
    assert_eq!(check(r#"{"labels": {}}"#), empty);
    assert_eq!(
        check(r#"{"labels": {"a": "(", "b": null, "c": "[z-a]"}}"#),
        Err(format!(
            "label \"a\" has an invalid regex \"(\": {}; label \"c\" has an invalid regex \"[z-a]\": {}",
            regex_lite::Regex::new("^(?:()$").unwrap_err(),
            regex_lite::Regex::new("^(?:[z-a])$").unwrap_err(),
        ))
    );
    assert_eq!(
        check(r#"{"labels": {"a": 1}}"#),
        Err(
            "invalid settings: invalid type: integer `1`, expected a string at line 1 column 16"
                .to_string()
        )
    );
    assert_eq!(
        check(r#"{"labels": ["a"]}"#),
        Err("invalid settings: invalid type: sequence, expected a map from label key to null or a regex at line 1 column 10"
            .to_string())
    );
    assert_eq!(
        check(r#"{"label": {"a": null}}"#),
        Err(
            "invalid settings: unknown field `label`, expected `labels` at line 1 column 8"
                .to_string()
        )
    );
}

#[test]
fn duplicate_keys_are_rejected() {
    // Raw text: a JSON value cannot hold a duplicate key.
    let err = portcullis_sdk::parse_settings::<Settings>(r#"{"labels": {"a": null, "a": "x"}}"#)
        .unwrap_err();
    assert_eq!(
        err,
        "invalid settings: label \"a\" is listed twice at line 1 column 32"
    );
}

#[test]
fn metadata() {
    assert_eq!(RequiredLabels::METADATA.name, "required-labels");
    assert_eq!(RequiredLabels::METADATA.resources, &["*"]);
}
