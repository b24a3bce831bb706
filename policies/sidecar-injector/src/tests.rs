use super::*;
use portcullis_sdk::{Verdict, testing};
use serde_json::{Value, json};

fn settings() -> Value {
    json!({
        "containers": [{"name": "proxy", "image": "ghcr.io/acme/proxy:1.4", "ports": [{"containerPort": 15001}]}],
        "initContainers": [{"name": "proxy-init", "image": "ghcr.io/acme/proxy-init:1.4"}],
        "volumes": [{"name": "proxy-certs", "emptyDir": {}}],
        "env": [{"name": "MESH_ID", "value": "prod"}, {"name": "PROXY_PORT", "value": "15001"}],
        "annotations": {"sidecar.portcullis.dev/status": "injected"}
    })
}

fn review(operation: &str, object: Value) -> Value {
    testing::request(operation, "shop", object)
}

fn pod(metadata: Value, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
}

fn opted_in() -> Value {
    json!({"name": "web", "labels": {"app": "web", "sidecar.portcullis.dev/inject": "true"}})
}

fn app_spec() -> Value {
    json!({"containers": [{"name": "app", "image": "nginx:1.27"}]})
}

fn mutate_with(request: &Value, settings: &Value) -> Mutation {
    testing::mutate::<SidecarInjector>(request, settings).unwrap()
}

/// Mutates a CREATE, checks the result is idempotent, and returns it.
fn injected_with(object: Value, settings: &Value) -> Value {
    let once = mutate_with(&review("CREATE", object), settings);
    assert_eq!(once.verdict, Verdict::allow());
    let object = once.object.expect("the object was changed");
    assert_eq!(
        mutate_with(&review("CREATE", object.clone()), settings),
        Mutation::unchanged(),
        "the second run changes nothing"
    );
    object
}

fn injected(object: Value) -> Value {
    injected_with(object, &settings())
}

fn app_env() -> Value {
    json!([{"name": "MESH_ID", "value": "prod"}, {"name": "PROXY_PORT", "value": "15001"}])
}

#[test]
fn opted_in_pod_gets_everything() {
    let out = injected(pod(opted_in(), app_spec()));
    let mut metadata = opted_in();
    metadata["annotations"] = json!({"sidecar.portcullis.dev/status": "injected"});
    assert_eq!(
        out,
        pod(
            metadata,
            json!({
                "containers": [
                    {"name": "app", "image": "nginx:1.27", "env": app_env()},
                    {"name": "proxy", "image": "ghcr.io/acme/proxy:1.4", "ports": [{"containerPort": 15001}]}
                ],
                "initContainers": [{"name": "proxy-init", "image": "ghcr.io/acme/proxy-init:1.4"}],
                "volumes": [{"name": "proxy-certs", "emptyDir": {}}]
            })
        )
    );
}

#[test]
fn pods_that_do_not_opt_in_or_opt_out_are_unchanged() {
    let plain = pod(json!({"name": "web", "labels": {"app": "web"}}), app_spec());
    assert_eq!(
        mutate_with(&review("CREATE", plain), &settings()),
        Mutation::unchanged()
    );
    let wrong_value = pod(
        json!({"name": "web", "labels": {"sidecar.portcullis.dev/inject": "yes"}}),
        app_spec(),
    );
    assert_eq!(
        mutate_with(&review("CREATE", wrong_value), &settings()),
        Mutation::unchanged()
    );
    let mut metadata = opted_in();
    metadata["annotations"] = json!({"sidecar.portcullis.dev/inject": "false"});
    assert_eq!(
        mutate_with(&review("CREATE", pod(metadata, app_spec())), &settings()),
        Mutation::unchanged()
    );
}

#[test]
fn opt_in_by_annotation_and_custom_opt_out() {
    let mut s = settings();
    s["optIn"] = json!({"annotations": {"mesh.acme.io/inject": "enabled"}});
    s["optOut"] = json!({"labels": {"mesh.acme.io/skip": "true"}});
    let metadata = json!({"name": "web", "annotations": {"mesh.acme.io/inject": "enabled"}});
    let out = injected_with(pod(metadata.clone(), app_spec()), &s);
    assert_eq!(out["spec"]["containers"][1]["name"], "proxy");
    // The default label no longer opts in.
    assert_eq!(
        mutate_with(&review("CREATE", pod(opted_in(), app_spec())), &s),
        Mutation::unchanged()
    );
    let mut skipped = metadata;
    skipped["labels"] = json!({"mesh.acme.io/skip": "true"});
    assert_eq!(
        mutate_with(&review("CREATE", pod(skipped, app_spec())), &s),
        Mutation::unchanged()
    );
}

#[test]
fn existing_items_are_kept_by_name() {
    let spec = json!({
        "containers": [
            {"name": "app", "image": "nginx", "env": [{"name": "MESH_ID", "value": "staging"}]},
            {"name": "proxy", "image": "my/own-proxy:2"}
        ],
        "initContainers": [{"name": "migrate", "image": "flyway"}],
        "volumes": [{"name": "proxy-certs", "secret": {"secretName": "mine"}}]
    });
    let out = injected(pod(opted_in(), spec));
    assert_eq!(
        out["spec"],
        json!({
            "containers": [
                {"name": "app", "image": "nginx", "env": [
                    {"name": "MESH_ID", "value": "staging"},
                    {"name": "PROXY_PORT", "value": "15001"}
                ]},
                {"name": "proxy", "image": "my/own-proxy:2"}
            ],
            "initContainers": [
                {"name": "migrate", "image": "flyway"},
                {"name": "proxy-init", "image": "ghcr.io/acme/proxy-init:1.4"}
            ],
            "volumes": [{"name": "proxy-certs", "secret": {"secretName": "mine"}}]
        })
    );
}

#[test]
fn init_containers_first() {
    let mut s = settings();
    s["initContainersFirst"] = json!(true);
    let spec = json!({
        "containers": [{"name": "app", "image": "nginx"}],
        "initContainers": [{"name": "migrate", "image": "flyway"}]
    });
    let out = injected_with(pod(opted_in(), spec), &s);
    assert_eq!(
        out["spec"]["initContainers"],
        json!([
            {"name": "proxy-init", "image": "ghcr.io/acme/proxy-init:1.4"},
            {"name": "migrate", "image": "flyway"}
        ])
    );
}

#[test]
fn env_goes_to_selected_app_containers_only() {
    let mut s = settings();
    s["envContainers"] = json!(["api"]);
    let spec = json!({"containers": [
        {"name": "app", "image": "nginx"},
        {"name": "api", "image": "acme/api"}
    ], "initContainers": [{"name": "migrate", "image": "flyway"}]});
    let out = injected_with(pod(opted_in(), spec), &s);
    let containers = &out["spec"]["containers"];
    assert_eq!(containers[0].get("env"), None);
    assert_eq!(containers[1]["env"], app_env());
    assert_eq!(containers[2]["name"], "proxy");
    assert_eq!(containers[2].get("env"), None, "sidecars get no env");
    assert_eq!(
        out["spec"]["initContainers"][0].get("env"),
        None,
        "init containers get no env"
    );
}

#[test]
fn deployment_opts_in_on_its_template() {
    let deployment = |template_labels: Value| {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": template_labels}, "spec": app_spec()}
            }
        })
    };
    let out = injected(deployment(
        json!({"app": "web", "sidecar.portcullis.dev/inject": "true"}),
    ));
    let template = &out["spec"]["template"];
    assert_eq!(template["spec"]["containers"][1]["name"], "proxy");
    assert_eq!(template["spec"]["volumes"][0]["name"], "proxy-certs");
    assert_eq!(
        template["metadata"]["annotations"],
        json!({"sidecar.portcullis.dev/status": "injected"})
    );
    assert_eq!(out["metadata"].get("annotations"), None);

    // A label on the Deployment itself does not opt its pods in.
    let mut own_label = deployment(json!({"app": "web"}));
    own_label["metadata"]["labels"]["sidecar.portcullis.dev/inject"] = json!("true");
    assert_eq!(
        mutate_with(&review("CREATE", own_label), &settings()),
        Mutation::unchanged()
    );

    // Templates are injected on UPDATE too.
    let old = deployment(json!({"sidecar.portcullis.dev/inject": "true"}));
    let mut request = review("UPDATE", old.clone());
    request["oldObject"] = old;
    let out = mutate_with(&request, &settings()).object.unwrap();
    assert_eq!(
        out["spec"]["template"]["spec"]["containers"][1]["name"],
        "proxy"
    );
}

#[test]
fn cronjob_template_is_injected() {
    let cronjob = json!({
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "nightly"},
        "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": {
            "metadata": {"labels": {"sidecar.portcullis.dev/inject": "true"}},
            "spec": {"restartPolicy": "OnFailure", "containers": [{"name": "job", "image": "busybox"}]}
        }}}}
    });
    let out = injected(cronjob);
    let spec = &out["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(spec["containers"][1]["name"], "proxy");
    assert_eq!(spec["containers"][0]["env"], app_env());
}

#[test]
fn pods_are_injected_on_create_only() {
    let object = pod(opted_in(), app_spec());
    let mut update = review("UPDATE", object.clone());
    update["oldObject"] = object.clone();
    let mut delete = review("DELETE", Value::Null);
    delete["oldObject"] = object.clone();
    for request in [
        update,
        delete,
        review("CONNECT", object),
        review("CREATE", Value::Null),
    ] {
        assert_eq!(mutate_with(&request, &settings()), Mutation::unchanged());
    }
}

#[test]
fn only_env_or_only_volumes() {
    let s = json!({"env": [{"name": "MESH_ID", "value": "prod"}]});
    let out = injected_with(pod(opted_in(), app_spec()), &s);
    assert_eq!(
        out["spec"],
        json!({"containers": [{"name": "app", "image": "nginx:1.27", "env": [{"name": "MESH_ID", "value": "prod"}]}]})
    );
    let s = json!({"volumes": [{"name": "v", "emptyDir": {}}]});
    let out = injected_with(pod(opted_in(), app_spec()), &s);
    assert_eq!(
        out["spec"]["volumes"],
        json!([{"name": "v", "emptyDir": {}}])
    );
    assert_eq!(out["metadata"].get("annotations"), None);
}

#[test]
fn odd_shapes_are_policy_errors() {
    let run = |spec: Value| {
        testing::mutate::<SidecarInjector>(&review("CREATE", pod(opted_in(), spec)), &settings())
    };
    assert_eq!(
        run(json!({"containers": {"app": {}}})),
        Err("/spec/containers is not a JSON array".to_string())
    );
    assert_eq!(
        run(json!({"containers": [{"name": "app", "image": "x", "env": "A=1"}]})),
        Err("/spec/containers/0/env is not a JSON array".to_string())
    );
    assert_eq!(
        run(json!({"containers": [], "volumes": 3})),
        Err("/spec/volumes is not a JSON array".to_string())
    );
}

/// A real request: the mutating call for a `kubectl run` pod, labelled to
/// opt in.
#[test]
fn apiserver_capture() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/corpus/kube-apiserver-v1.36/005-mutate-CREATE-Pod-gen-.json"
    );
    let envelope: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut request = envelope["request"].clone();
    assert_eq!(mutate_with(&request, &settings()), Mutation::unchanged());
    request["object"]["metadata"]["labels"]["sidecar.portcullis.dev/inject"] = json!("true");
    let out = mutate_with(&request, &settings()).object.unwrap();
    let containers = out["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.last().unwrap()["name"], "proxy");
    request["object"] = out;
    assert_eq!(mutate_with(&request, &settings()), Mutation::unchanged());
}

#[test]
fn settings_validation() {
    let check = |s: Value| testing::validate_settings::<SidecarInjector>(&s);
    assert_eq!(check(settings()), Ok(()));
    let with = |key: &str, value: Value| {
        let mut s = settings();
        s[key] = value;
        check(s)
    };
    let err = |m: &str| Err(m.to_string());
    assert_eq!(
        check(json!({})),
        err("settings inject nothing: give containers, initContainers, volumes or env")
    );
    assert_eq!(
        with("optIn", json!({})),
        err("optIn must give at least one label or annotation")
    );
    assert_eq!(
        with("containers", json!([{"image": "x"}])),
        err("containers[0] has no name")
    );
    assert_eq!(
        with("containers", json!([{"name": "proxy"}])),
        err("containers[0] (\"proxy\") has no image")
    );
    assert_eq!(
        with("initContainers", json!([{"name": "Init", "image": "x"}])),
        err(
            "initContainers[0]: name \"Init\" is not a valid container name (a lower-case DNS label of at most 63 characters)"
        )
    );
    assert_eq!(
        with("initContainers", json!([{"name": "proxy", "image": "x"}])),
        err("container name \"proxy\" is given twice in containers and initContainers")
    );
    assert_eq!(
        with(
            "volumes",
            json!([{"name": "a", "emptyDir": {}}, {"name": "a", "emptyDir": {}}])
        ),
        err("volumes: name \"a\" is given twice")
    );
    assert_eq!(
        with("env", json!([{"value": "x"}])),
        err("env[0] has no name")
    );
    assert_eq!(
        check(json!({"volumes": [{"name": "v"}], "envContainers": ["app"]})),
        err("envContainers is set but env is empty")
    );
    assert_eq!(
        with("envContainers", json!(["proxy"])),
        err(
            "envContainers names the injected container \"proxy\"; env goes to the pod's own containers"
        )
    );
    assert_eq!(
        check(json!({"optIn": {"label": {}}})),
        err(
            "invalid settings: unknown field `label`, expected `labels` or `annotations` at line 1 column 17"
        )
    );
    assert_eq!(
        check(json!({"containers": {"name": "proxy"}})),
        err("invalid settings: invalid type: map, expected a sequence at line 1 column 14")
    );
}

#[test]
fn mutates_only() {
    assert_eq!(
        testing::validate::<SidecarInjector>(
            &review("CREATE", pod(opted_in(), app_spec())),
            &settings()
        ),
        Err("policy sidecar-injector does not support validate".to_string())
    );
    let m = SidecarInjector::METADATA;
    assert_eq!((m.validates, m.mutates), (false, true));
}
