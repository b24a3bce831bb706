use super::*;
use portcullis_sdk::{Verdict, testing};
use serde_json::{Value, json};

fn review(operation: &str, object: Value) -> Value {
    testing::request(operation, "shop", object)
}

fn pod(spec: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": spec
    })
}

fn nginx() -> Value {
    pod(json!({"containers": [{"name": "app", "image": "nginx:1.27"}]}))
}

/// What every default adds to a container that sets nothing.
fn restricted() -> Value {
    json!({
        "runAsNonRoot": true,
        "seccompProfile": {"type": "RuntimeDefault"},
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]}
    })
}

fn mutate_with(object: Value, settings: Value) -> Mutation {
    testing::mutate::<ContainerDefaults>(&review("CREATE", object), &settings).unwrap()
}

fn mutate(object: Value) -> Mutation {
    mutate_with(object, json!({}))
}

/// Mutates, checks the result is idempotent, and returns it.
fn mutated_with(object: Value, settings: Value) -> Value {
    let once = mutate_with(object, settings.clone());
    assert_eq!(once.verdict, Verdict::allow());
    let object = once.object.expect("the object was changed");
    assert_eq!(
        mutate_with(object.clone(), settings),
        Mutation::unchanged(),
        "the second run changes nothing"
    );
    object
}

fn mutated(object: Value) -> Value {
    mutated_with(object, json!({}))
}

#[test]
fn plain_pod_gets_every_restricted_field() {
    let object = mutated(nginx());
    let mut expected = nginx();
    expected["spec"]["containers"][0]["securityContext"] = restricted();
    assert_eq!(object, expected);
}

#[test]
fn init_and_ephemeral_containers_are_defaulted_without_resources_on_ephemeral() {
    let settings = json!({"resources": {"requests": {"cpu": "100m"}}});
    let object = mutated_with(
        pod(json!({
            "initContainers": [{"name": "init", "image": "busybox"}],
            "containers": [{"name": "app", "image": "nginx"}],
            "ephemeralContainers": [{"name": "debug", "image": "busybox"}]
        })),
        settings,
    );
    let spec = &object["spec"];
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        assert_eq!(spec[list][0]["securityContext"], restricted(), "{list}");
    }
    assert_eq!(
        spec["initContainers"][0]["resources"],
        json!({"requests": {"cpu": "100m"}})
    );
    assert_eq!(
        spec["containers"][0]["resources"],
        json!({"requests": {"cpu": "100m"}})
    );
    assert_eq!(spec["ephemeralContainers"][0].get("resources"), None);
}

#[test]
fn deployment_and_cronjob_templates_are_defaulted() {
    let template = json!({
        "metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "nginx"}]}
    });
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": template}
    });
    let object = mutated(deployment.clone());
    let mut expected = deployment;
    expected["spec"]["template"]["spec"]["containers"][0]["securityContext"] = restricted();
    assert_eq!(object, expected);

    let cronjob = json!({
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "nightly"},
        "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": template}}}
    });
    let object = mutated(cronjob);
    assert_eq!(
        object["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["securityContext"],
        restricted()
    );
}

#[test]
fn explicit_values_are_never_overridden() {
    let context = json!({
        "runAsNonRoot": false,
        "seccompProfile": {"type": "Unconfined"},
        "allowPrivilegeEscalation": true,
        "capabilities": {"drop": ["NET_RAW"]}
    });
    let object =
        pod(json!({"containers": [{"name": "app", "image": "nginx", "securityContext": context}]}));
    assert_eq!(mutate(object), Mutation::unchanged());
}

#[test]
fn add_drop_all_appends_to_an_existing_drop_list() {
    let object = pod(json!({"containers": [{
        "name": "app", "image": "nginx",
        "securityContext": {"capabilities": {"drop": ["NET_RAW"], "add": ["NET_BIND_SERVICE"]}}
    }]}));
    let out = mutated_with(object.clone(), json!({"addDropAll": true}));
    assert_eq!(
        out["spec"]["containers"][0]["securityContext"]["capabilities"],
        json!({"drop": ["NET_RAW", "ALL"], "add": ["NET_BIND_SERVICE"]})
    );
    // Without it the list stays as written, the other fields are added.
    let out = mutated(object);
    assert_eq!(
        out["spec"]["containers"][0]["securityContext"]["capabilities"],
        json!({"drop": ["NET_RAW"], "add": ["NET_BIND_SERVICE"]})
    );
    assert_eq!(
        out["spec"]["containers"][0]["securityContext"]["runAsNonRoot"],
        true
    );
}

#[test]
fn capabilities_without_drop_get_drop_all() {
    let object = pod(json!({"containers": [{
        "name": "app", "image": "nginx",
        "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE"]}, "runAsUser": 1000}
    }]}));
    let out = mutated(object);
    assert_eq!(
        out["spec"]["containers"][0]["securityContext"],
        json!({
            "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
            "runAsUser": 1000,
            "runAsNonRoot": true,
            "seccompProfile": {"type": "RuntimeDefault"},
            "allowPrivilegeEscalation": false
        })
    );
}

#[test]
fn pod_level_settings_are_enough() {
    let object = pod(json!({
        "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}},
        "containers": [{"name": "app", "image": "nginx"}]
    }));
    let out = mutated(object);
    assert_eq!(
        out["spec"]["containers"][0]["securityContext"],
        json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}})
    );
    // A pod-level `false` is a choice too.
    let object = pod(json!({
        "securityContext": {"runAsNonRoot": false},
        "containers": [{"name": "app", "image": "nginx"}]
    }));
    assert_eq!(
        mutated(object)["spec"]["containers"][0]["securityContext"].get("runAsNonRoot"),
        None
    );
}

#[test]
fn root_uid_gets_no_run_as_non_root() {
    let object = pod(json!({"containers": [
        {"name": "root", "image": "nginx", "securityContext": {"runAsUser": 0}},
        {"name": "user", "image": "nginx", "securityContext": {"runAsUser": 101}}
    ]}));
    let out = mutated(object);
    assert_eq!(
        out["spec"]["containers"][0]["securityContext"].get("runAsNonRoot"),
        None
    );
    assert_eq!(
        out["spec"]["containers"][1]["securityContext"]["runAsNonRoot"],
        true
    );
    let object = pod(json!({
        "securityContext": {"runAsUser": 0},
        "containers": [{"name": "app", "image": "nginx"}]
    }));
    assert_eq!(
        mutated(object)["spec"]["containers"][0]["securityContext"].get("runAsNonRoot"),
        None
    );
}

#[test]
fn privileged_or_sys_admin_keeps_privilege_escalation() {
    let object = pod(json!({"containers": [
        {"name": "priv", "image": "x", "securityContext": {"privileged": true}},
        {"name": "admin", "image": "x", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}
    ]}));
    let out = mutated(object);
    for i in 0..2 {
        let context = &out["spec"]["containers"][i]["securityContext"];
        assert_eq!(context.get("allowPrivilegeEscalation"), None, "{i}");
        assert_eq!(context["runAsNonRoot"], true, "{i}");
    }
}

#[test]
fn windows_pods_get_only_run_as_non_root() {
    let object =
        pod(json!({"os": {"name": "windows"}, "containers": [{"name": "app", "image": "iis"}]}));
    let out = mutated(object);
    assert_eq!(
        out["spec"]["containers"][0]["securityContext"],
        json!({"runAsNonRoot": true})
    );
}

#[test]
fn settings_choose_the_defaults() {
    let settings = json!({
        "runAsNonRoot": false,
        "seccompProfile": false,
        "allowPrivilegeEscalation": true,
        "dropAllCapabilities": false
    });
    let out = mutated_with(nginx(), settings);
    assert_eq!(
        out["spec"]["containers"][0]["securityContext"],
        json!({"allowPrivilegeEscalation": false})
    );
    let settings = json!({"allowPrivilegeEscalation": false, "dropAllCapabilities": false});
    let out = mutated_with(nginx(), settings);
    assert_eq!(
        out["spec"]["containers"][0]["securityContext"],
        json!({"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}})
    );
}

#[test]
fn resources_are_added_per_resource_where_absent() {
    let settings = json!({"resources": {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"memory": "256Mi"}
    }});
    let object = pod(json!({"containers": [
        {"name": "bare", "image": "x"},
        {"name": "cpu", "image": "x", "resources": {"requests": {"cpu": "1"}}},
        // A memory limit alone: the API server defaults the request to it.
        {"name": "limit", "image": "x", "resources": {"limits": {"memory": "64Mi"}}},
        // A request above the default limit gets no limit.
        {"name": "big", "image": "x", "resources": {"requests": {"memory": "1Gi"}}},
        {"name": "small", "image": "x", "resources": {"requests": {"memory": "64Mi"}}}
    ]}));
    let out = mutated_with(object, settings);
    let resources = |i: usize| out["spec"]["containers"][i]["resources"].clone();
    assert_eq!(
        resources(0),
        json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}})
    );
    assert_eq!(
        resources(1),
        json!({"requests": {"cpu": "1", "memory": "128Mi"}, "limits": {"memory": "256Mi"}})
    );
    assert_eq!(
        resources(2),
        json!({"limits": {"memory": "64Mi"}, "requests": {"cpu": "100m"}})
    );
    assert_eq!(
        resources(3),
        json!({"requests": {"memory": "1Gi", "cpu": "100m"}})
    );
    assert_eq!(
        resources(4),
        json!({"requests": {"memory": "64Mi", "cpu": "100m"}, "limits": {"memory": "256Mi"}})
    );
}

#[test]
fn complete_pod_is_unchanged() {
    let object = pod(
        json!({"containers": [{"name": "app", "image": "nginx", "securityContext": restricted()}]}),
    );
    assert_eq!(mutate(object), Mutation::unchanged());
}

#[test]
fn pod_update_defaults_only_new_containers() {
    let old = pod(json!({"containers": [{"name": "app", "image": "nginx"}]}));
    let mut new = old.clone();
    new["spec"]["ephemeralContainers"] = json!([{"name": "debugger", "image": "busybox"}]);
    let mut request = review("UPDATE", new.clone());
    request["oldObject"] = old;
    let out = testing::mutate::<ContainerDefaults>(&request, &json!({}))
        .unwrap()
        .object
        .unwrap();
    assert_eq!(out["spec"]["containers"][0].get("securityContext"), None);
    assert_eq!(
        out["spec"]["ephemeralContainers"][0]["securityContext"],
        restricted()
    );

    // A label change on an old pod: nothing to do.
    let mut request = review("UPDATE", nginx());
    request["oldObject"] = nginx();
    assert_eq!(
        testing::mutate::<ContainerDefaults>(&request, &json!({})).unwrap(),
        Mutation::unchanged()
    );
}

#[test]
fn deployment_update_defaults_the_template() {
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx"}]}}}
    });
    let mut request = review("UPDATE", deployment.clone());
    request["oldObject"] = deployment;
    let out = testing::mutate::<ContainerDefaults>(&request, &json!({}))
        .unwrap()
        .object
        .unwrap();
    assert_eq!(
        out["spec"]["template"]["spec"]["containers"][0]["securityContext"],
        restricted()
    );
}

#[test]
fn delete_connect_other_kinds_and_no_object_are_unchanged() {
    let mut delete = review("DELETE", Value::Null);
    delete["oldObject"] = nginx();
    let run = |r: &Value| testing::mutate::<ContainerDefaults>(r, &json!({})).unwrap();
    assert_eq!(run(&delete), Mutation::unchanged());
    assert_eq!(run(&review("CONNECT", nginx())), Mutation::unchanged());
    assert_eq!(run(&review("CREATE", Value::Null)), Mutation::unchanged());
    let config_map = json!({"kind": "ConfigMap", "data": {"containers": "x"}});
    assert_eq!(run(&review("CREATE", config_map)), Mutation::unchanged());
}

#[test]
fn odd_shapes_are_policy_errors() {
    let object =
        pod(json!({"containers": [{"name": "app", "image": "x", "securityContext": "root"}]}));
    assert_eq!(
        testing::mutate::<ContainerDefaults>(&review("CREATE", object), &json!({})),
        Err("/spec/containers/0: securityContext is not a JSON object".to_string())
    );
    let object = pod(
        json!({"containers": [{"name": "app", "image": "x", "securityContext": {"capabilities": {"drop": "ALL"}}}]}),
    );
    assert_eq!(
        testing::mutate::<ContainerDefaults>(
            &review("CREATE", object),
            &json!({"addDropAll": true})
        ),
        Err(
            "/spec/containers/0: securityContext.capabilities.drop is not a JSON array".to_string()
        )
    );
    let object =
        pod(json!({"containers": [{"name": "app", "image": "x", "resources": {"limits": []}}]}));
    assert_eq!(
        testing::mutate::<ContainerDefaults>(
            &review("CREATE", object),
            &json!({"resources": {"limits": {"cpu": "1"}}})
        ),
        Err("/spec/containers/0: resources.limits is not a JSON object".to_string())
    );
}

/// A real request: the mutating call for a `kubectl run` pod.
#[test]
fn apiserver_capture() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/corpus/kube-apiserver-v1.36/005-mutate-CREATE-Pod-gen-.json"
    );
    let envelope: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let request = &envelope["request"];
    let out = testing::mutate::<ContainerDefaults>(request, &json!({}))
        .unwrap()
        .object
        .unwrap();
    for container in out["spec"]["containers"].as_array().unwrap() {
        assert_eq!(container["securityContext"], restricted());
    }
    let mut rerun = request.clone();
    rerun["object"] = out;
    assert_eq!(
        testing::mutate::<ContainerDefaults>(&rerun, &json!({})).unwrap(),
        Mutation::unchanged()
    );
}

#[test]
fn settings_validation() {
    let check = |s: Value| testing::validate_settings::<ContainerDefaults>(&s);
    assert_eq!(check(json!({})), Ok(()));
    assert_eq!(check(json!(null)), Ok(()));
    assert_eq!(
        check(
            json!({"resources": {"requests": {"cpu": "100m", "memory": 128}, "limits": {"memory": "256Mi"}}})
        ),
        Ok(())
    );
    assert_eq!(
        check(
            json!({"runAsNonRoot": false, "seccompProfile": false, "allowPrivilegeEscalation": false, "dropAllCapabilities": false})
        ),
        Err(
            "settings turn every securityContext default off and give no resources: nothing to do"
                .to_string()
        )
    );
    assert_eq!(
        check(json!({"resources": {"requests": {"cpu": "lots"}}})),
        Err(
            "resources.requests.cpu: \"lots\" is not a valid quantity (e.g. 100m, 0.5, 128Mi, 1G)"
                .to_string()
        )
    );
    assert_eq!(
        check(json!({"resources": {"limits": {"": "1"}}})),
        Err("resources.limits has an empty resource name".to_string())
    );
    assert_eq!(
        check(
            json!({"resources": {"requests": {"memory": "512Mi"}, "limits": {"memory": "256Mi"}}})
        ),
        Err(
            "resources.requests.memory (512Mi) is greater than resources.limits.memory (256Mi)"
                .to_string()
        )
    );
    assert_eq!(
        check(json!({"runAsNonroot": true})),
        Err("invalid settings: unknown field `runAsNonroot`, expected one of `runAsNonRoot`, `seccompProfile`, `allowPrivilegeEscalation`, `dropAllCapabilities`, `addDropAll`, `resources`, `exemptImages` at line 1 column 15".to_string())
    );
    assert_eq!(
        check(json!({"resources": {"request": {}}})),
        Err("invalid settings: unknown field `request`, expected `requests` or `limits` at line 1 column 23".to_string())
    );
}

#[test]
fn mutates_only() {
    assert_eq!(
        testing::validate::<ContainerDefaults>(&review("CREATE", nginx()), &json!({})),
        Err("policy container-defaults does not support validate".to_string())
    );
    let m = ContainerDefaults::METADATA;
    assert_eq!((m.validates, m.mutates), (false, true));
}

#[test]
fn exempt_images_are_left_as_they_are() {
    let object = pod(json!({"containers": [
        {"name": "agent", "image": "registry.example.com/node-agent:2.4"},
        {"name": "app", "image": "nginx:1.27"}
    ]}));
    let out = mutated_with(
        object,
        json!({"exemptImages": ["registry.example.com/node-agent"]}),
    );
    assert_eq!(
        out["spec"]["containers"][0],
        json!({"name": "agent", "image": "registry.example.com/node-agent:2.4"})
    );
    assert_eq!(
        out["spec"]["containers"][1]["securityContext"],
        restricted()
    );
}
