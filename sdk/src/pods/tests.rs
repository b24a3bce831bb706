use super::*;
use serde_json::json;

fn pod_spec() -> Value {
    json!({
        "initContainers": [{"name": "init", "image": "busybox"}],
        "containers": [
            {"name": "app", "image": "nginx:1.27"},
            {"name": "sidecar", "image": "envoyproxy/envoy:v1.31"}
        ],
        "ephemeralContainers": [{"name": "debugger", "image": "busybox:1.36"}]
    })
}

fn templated(kind: &str, api_version: &str) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": "web"},
        "spec": {"template": {"metadata": {"labels": {"app": "web"}}, "spec": pod_spec()}}
    })
}

fn listing(object: &Value) -> Vec<(ContainerKind, String, Option<&str>, Option<&str>)> {
    containers(object)
        .into_iter()
        .map(|c| (c.kind, c.path.clone(), c.name(), c.image()))
        .collect()
}

#[test]
fn pod_spec_is_spec() {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "spec": pod_spec()});
    let specs = pod_specs(&pod);
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].path, "/spec");
    assert_eq!(
        listing(&pod),
        vec![
            (
                ContainerKind::Container,
                "/spec/containers/0".into(),
                Some("app"),
                Some("nginx:1.27")
            ),
            (
                ContainerKind::Container,
                "/spec/containers/1".into(),
                Some("sidecar"),
                Some("envoyproxy/envoy:v1.31")
            ),
            (
                ContainerKind::InitContainer,
                "/spec/initContainers/0".into(),
                Some("init"),
                Some("busybox")
            ),
            (
                ContainerKind::EphemeralContainer,
                "/spec/ephemeralContainers/0".into(),
                Some("debugger"),
                Some("busybox:1.36")
            ),
        ]
    );
}

#[test]
fn controllers_use_their_template() {
    for (kind, api_version) in [
        ("Deployment", "apps/v1"),
        ("StatefulSet", "apps/v1"),
        ("DaemonSet", "apps/v1"),
        ("ReplicaSet", "apps/v1"),
        ("ReplicationController", "v1"),
        ("Job", "batch/v1"),
    ] {
        let object = templated(kind, api_version);
        let specs = pod_specs(&object);
        assert_eq!(specs.len(), 1, "{kind}");
        assert_eq!(specs[0].path, "/spec/template/spec", "{kind}");
        assert_eq!(specs[0].spec, &pod_spec(), "{kind}");
        let paths: Vec<String> = containers(&object).into_iter().map(|c| c.path).collect();
        assert_eq!(
            paths,
            [
                "/spec/template/spec/containers/0",
                "/spec/template/spec/containers/1",
                "/spec/template/spec/initContainers/0",
                "/spec/template/spec/ephemeralContainers/0",
            ],
            "{kind}"
        );
    }
}

#[test]
fn cronjob_uses_its_job_template() {
    let cronjob = json!({
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "spec": {
            "schedule": "*/5 * * * *",
            "jobTemplate": {"spec": {"template": {"spec": pod_spec()}}}
        }
    });
    let specs = pod_specs(&cronjob);
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].path, "/spec/jobTemplate/spec/template/spec");
    let init = containers(&cronjob)
        .into_iter()
        .find(|c| c.kind == ContainerKind::InitContainer)
        .unwrap();
    assert_eq!(
        init.path,
        "/spec/jobTemplate/spec/template/spec/initContainers/0"
    );
    assert_eq!(init.index, 0);
}

#[test]
fn other_kinds_and_missing_specs_have_none() {
    for object in [
        json!({"kind": "ConfigMap", "data": {"a": "b"}}),
        json!({"kind": "Service", "spec": {"ports": []}}),
        json!({"spec": pod_spec()}),
        json!({"kind": "Deployment", "spec": {}}),
        json!({"kind": "Pod"}),
        json!({"kind": "Pod", "spec": "nonsense"}),
        json!(null),
    ] {
        assert!(pod_specs(&object).is_empty(), "{object}");
        assert!(containers(&object).is_empty(), "{object}");
    }
}

#[test]
fn odd_container_lists_are_skipped() {
    let pod = json!({
        "kind": "Pod",
        "spec": {"containers": [{"name": "a"}], "initContainers": null, "ephemeralContainers": {"x": 1}}
    });
    let all = containers(&pod);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].name(), Some("a"));
    assert_eq!(all[0].image(), None);
}

#[test]
fn kinds_print_as_in_messages() {
    let names: Vec<String> = ContainerKind::ALL.iter().map(ToString::to_string).collect();
    assert_eq!(names, ["container", "initContainer", "ephemeralContainer"]);
    let fields: Vec<&str> = ContainerKind::ALL.iter().map(|k| k.field()).collect();
    assert_eq!(
        fields,
        ["containers", "initContainers", "ephemeralContainers"]
    );
    assert_eq!(workload_kinds().count(), 8);
}

#[test]
fn resource_lists_name_every_kind_with_a_pod_spec() {
    for kind in workload_kinds() {
        let plural = format!("{}s", kind.to_ascii_lowercase());
        let named = |list: &[&str]| {
            list.iter()
                .any(|r| r.split('.').next() == Some(plural.as_str()))
        };
        assert!(
            named(WORKLOAD_RESOURCES),
            "{kind} missing from WORKLOAD_RESOURCES"
        );
        assert!(
            named(CONTAINER_RESOURCES),
            "{kind} missing from CONTAINER_RESOURCES"
        );
    }
    assert_eq!(WORKLOAD_RESOURCES.len(), workload_kinds().count());
    let without_debug: Vec<&str> = CONTAINER_RESOURCES
        .iter()
        .copied()
        .filter(|r| *r != "pods/ephemeralcontainers")
        .collect();
    assert_eq!(without_debug, WORKLOAD_RESOURCES);
}

#[test]
fn the_pre_1_22_ephemeral_containers_kind_is_read() {
    let object = serde_json::json!({
        "apiVersion": "v1",
        "kind": "EphemeralContainers",
        "metadata": {"name": "web", "namespace": "shop"},
        "ephemeralContainers": [{"name": "debugger", "image": "busybox:1.36"}],
    });
    let specs = pod_specs(&object);
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].metadata_path, "/metadata");
    let found = containers(&object);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].kind, ContainerKind::EphemeralContainer);
    assert_eq!(found[0].image(), Some("busybox:1.36"));
}
