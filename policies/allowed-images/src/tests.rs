use super::*;
use portcullis_sdk::testing;
use serde_json::{Value, json};

fn settings(allowed: &[&str]) -> Value {
    json!({ "allowed": allowed })
}

fn review(operation: &str, object: Value) -> Value {
    testing::request(operation, "shop", object)
}

fn pod(containers: Value, init: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {
            "initContainers": init,
            "containers": containers,
            "restartPolicy": "Always"
        }
    })
}

fn deployment(image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "app", "image": image, "ports": [{"containerPort": 8080}]}]}
            }
        }
    })
}

fn validate(request: &Value, allowed: &[&str]) -> Verdict {
    testing::validate::<AllowedImages>(request, &settings(allowed)).unwrap()
}

const ALLOWED: &[&str] = &["registry.k8s.io/", "nginx", "ghcr.io/acme/*"];

#[test]
fn allowed_pod_passes() {
    let object = pod(
        json!([{"name": "app", "image": "nginx:1.27"}, {"name": "api", "image": "ghcr.io/acme/api:2.1"}]),
        json!([{"name": "init", "image": "registry.k8s.io/pause:3.10"}]),
    );
    assert_eq!(
        validate(&review("CREATE", object), ALLOWED),
        Verdict::allow()
    );
}

#[test]
fn message_names_every_offender_and_lists_patterns_once() {
    let object = pod(
        json!([{"name": "app", "image": "evil.io/x:1"}, {"name": "ok", "image": "nginx"}]),
        json!([{"name": "init", "image": "busybox"}]),
    );
    let verdict = validate(&review("CREATE", object), ALLOWED);
    assert!(!verdict.allowed);
    assert_eq!(
        verdict.message.as_deref(),
        Some(
            "container \"app\" uses image \"evil.io/x:1\" (evil.io/x:1), which is not allowed; \
             initContainer \"init\" uses image \"busybox\" (docker.io/library/busybox:latest), which is not allowed; \
             allowed images: registry.k8s.io/, nginx, ghcr.io/acme/*"
        )
    );
    assert_eq!(verdict.code, None);
}

#[test]
fn ephemeral_containers_are_checked() {
    let mut object = pod(json!([{"name": "app", "image": "nginx"}]), json!([]));
    object["spec"]["ephemeralContainers"] = json!([{"name": "debugger", "image": "busybox:1.36"}]);
    let mut request = review("UPDATE", object);
    request["subResource"] = json!("ephemeralcontainers");
    let verdict = validate(&request, &["nginx"]);
    assert_eq!(
        verdict.message.as_deref(),
        Some(
            "ephemeralContainer \"debugger\" uses image \"busybox:1.36\" (docker.io/library/busybox:1.36), \
             which is not allowed; allowed images: nginx"
        )
    );
}

#[test]
fn invalid_and_missing_images_are_denied() {
    let object = pod(
        json!([{"name": "app", "image": "Nginx"}, {"name": "bare"}]),
        json!(null),
    );
    let verdict = validate(&review("CREATE", object), &["nginx"]);
    assert_eq!(
        verdict.message.as_deref(),
        Some(
            "container \"app\" uses image \"Nginx\", which is not a valid image reference \
             (repository name must be lowercase); container \"bare\" has no image; allowed images: nginx"
        )
    );
}

#[test]
fn workloads_are_checked_through_their_templates() {
    let allowed = &["registry.k8s.io/"];
    for (kind, api_version) in [
        ("Deployment", "apps/v1"),
        ("StatefulSet", "apps/v1"),
        ("DaemonSet", "apps/v1"),
        ("ReplicaSet", "apps/v1"),
        ("ReplicationController", "v1"),
        ("Job", "batch/v1"),
    ] {
        let mut object = deployment("registry.k8s.io/pause:3.10");
        object["kind"] = json!(kind);
        object["apiVersion"] = json!(api_version);
        assert!(
            validate(&review("CREATE", object.clone()), allowed).allowed,
            "{kind}"
        );
        object["spec"]["template"]["spec"]["containers"][0]["image"] = json!("quay.io/evil/app");
        let verdict = validate(&review("UPDATE", object), allowed);
        assert_eq!(
            verdict.message.as_deref(),
            Some(
                "container \"app\" uses image \"quay.io/evil/app\" (quay.io/evil/app:latest), \
                 which is not allowed; allowed images: registry.k8s.io/"
            ),
            "{kind}"
        );
    }
}

#[test]
fn cronjobs_are_checked_through_their_job_template() {
    let cronjob = |image: &str| {
        json!({
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": "report"},
            "spec": {
                "schedule": "0 3 * * *",
                "jobTemplate": {"spec": {"template": {"spec": {
                    "restartPolicy": "OnFailure",
                    "containers": [{"name": "report", "image": image}]
                }}}}
            }
        })
    };
    assert!(validate(&review("CREATE", cronjob("ghcr.io/acme/report:1")), ALLOWED).allowed);
    let verdict = validate(
        &review("CREATE", cronjob("ghcr.io/other/report:1")),
        ALLOWED,
    );
    assert!(!verdict.allowed);
    assert!(
        verdict
            .message
            .unwrap()
            .starts_with("container \"report\" uses image \"ghcr.io/other/report:1\"")
    );
}

#[test]
fn delete_connect_and_other_kinds_are_allowed() {
    let bad = pod(json!([{"name": "app", "image": "evil.io/x"}]), json!([]));
    let mut delete = review("DELETE", Value::Null);
    delete["oldObject"] = bad.clone();
    assert_eq!(validate(&delete, &["nginx"]), Verdict::allow());
    assert_eq!(
        validate(
            &review("CONNECT", json!({"kind": "PodExecOptions"})),
            &["nginx"]
        ),
        Verdict::allow()
    );
    let configmap =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"image": "evil.io/x"}});
    assert_eq!(
        validate(&review("CREATE", configmap), &["nginx"]),
        Verdict::allow()
    );
}

#[test]
fn digest_pinned_allow_list() {
    let digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let allowed = [format!("ghcr.io/acme/app@{digest}")];
    let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
    let pinned = deployment(&format!("ghcr.io/acme/app:1.0@{digest}"));
    assert!(validate(&review("CREATE", pinned), &allowed).allowed);
    let floating = deployment("ghcr.io/acme/app:1.0");
    assert!(!validate(&review("CREATE", floating), &allowed).allowed);
}

/// A real request: the pod `kubectl run` created in the captured cluster.
#[test]
fn apiserver_capture() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/corpus/kube-apiserver-v1.36/002-validate-CREATE-Pod-denied-pod.json"
    );
    let envelope: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let request = &envelope["request"];
    assert!(validate(request, &["registry.k8s.io/"]).allowed);
    assert_eq!(
        validate(request, &["nginx"]).message.as_deref(),
        Some(
            "container \"denied-pod\" uses image \"registry.k8s.io/pause:3.10\" (registry.k8s.io/pause:3.10), \
             which is not allowed; allowed images: nginx"
        )
    );
}

#[test]
fn settings_validation() {
    let check = |s: Value| testing::validate_settings::<AllowedImages>(&s);
    assert_eq!(check(settings(ALLOWED)), Ok(()));
    assert_eq!(
        check(json!({})),
        Err("allowed must list at least one image pattern".to_string())
    );
    assert_eq!(
        check(json!(null)),
        Err("allowed must list at least one image pattern".to_string())
    );
    assert_eq!(
        check(json!({"allowed": []})),
        Err("allowed must list at least one image pattern".to_string())
    );
    assert_eq!(
        check(json!({"allowed": ["nginx", "Bad"]})),
        Err("invalid settings: invalid image pattern \"Bad\": repository name must be lowercase at line 1 column 26"
            .to_string())
    );
    assert_eq!(
        check(json!({"allow": ["nginx"]})),
        Err(
            "invalid settings: unknown field `allow`, expected `allowed` at line 1 column 8"
                .to_string()
        )
    );
}

#[test]
fn metadata() {
    let m = AllowedImages::METADATA;
    assert_eq!(m.name, "allowed-images");
    assert_eq!((m.validates, m.mutates), (true, false));
    assert!(m.resources.contains(&"cronjobs.batch"));
    assert_eq!(
        testing::mutate::<AllowedImages>(&review("CREATE", json!({})), &settings(ALLOWED)),
        Err("policy allowed-images does not support mutate".to_string())
    );
}
