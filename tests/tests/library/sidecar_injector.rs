//! `sidecar-injector` end to end: the built module through the real server
//! on `/mutate/sidecar-injector` (a proxy sidecar, an init container put
//! first, a volume, one env var and a status annotation).

use anyhow::{Result, ensure};
use portcullis_e2e::{Answer, Json, Server, json, review_of, with_library};

const MUTATE: &str = "/mutate/sidecar-injector";

fn proxy() -> Json {
    json!({
        "name": "proxy",
        "image": "ghcr.io/acme/proxy:1.4",
        "ports": [{"containerPort": 15001}],
        "volumeMounts": [{"name": "proxy-certs", "mountPath": "/etc/proxy/certs"}]
    })
}

fn proxy_init() -> Json {
    json!({"name": "proxy-init", "image": "ghcr.io/acme/proxy-init:1.4"})
}

fn pod(labels: Json, annotations: Json) -> Json {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop", "labels": labels, "annotations": annotations},
        "spec": {
            "initContainers": [{"name": "migrate", "image": "flyway/flyway:10"}],
            "containers": [{"name": "app", "image": "nginx:1.27", "env": [{"name": "MESH_ID", "value": "staging"}]}]
        }
    })
}

fn ensure_allowed(a: &Answer, what: &str) -> Result<()> {
    ensure!(a.allowed(), "{what}: expected allowed: true\n{a}");
    Ok(())
}

fn ensure_unchanged(s: &Server, object: &Json, what: &str) -> Result<()> {
    let a = s.review(MUTATE, &review_of(object, "CREATE"))?;
    ensure_allowed(&a, what)?;
    ensure!(a.patch()?.is_none(), "{what}: expected no patch\n{a}");
    Ok(())
}

#[test]
fn opted_in_pod_is_injected_once() {
    with_library(|s| {
        let object = pod(
            json!({"app": "web", "sidecar.portcullis.dev/inject": "true"}),
            json!({"note": "x"}),
        );
        let a = s.review(MUTATE, &review_of(&object, "CREATE"))?;
        ensure_allowed(&a, "opted-in pod")?;
        let mutated = a.patched_object()?;
        let mut expected = object.clone();
        expected["metadata"]["annotations"]["sidecar.portcullis.dev/status"] = json!("injected");
        let spec = &mut expected["spec"];
        // proxy-init goes first; the app's own MESH_ID is kept.
        spec["initContainers"] =
            json!([proxy_init(), {"name": "migrate", "image": "flyway/flyway:10"}]);
        spec["containers"] = json!([
            {"name": "app", "image": "nginx:1.27", "env": [{"name": "MESH_ID", "value": "staging"}]},
            proxy()
        ]);
        spec["volumes"] = json!([{"name": "proxy-certs", "emptyDir": {}}]);
        ensure!(
            mutated == expected,
            "patched pod:\n{mutated:#}\nexpected:\n{expected:#}"
        );
        ensure_unchanged(s, &mutated, "the injected pod")
    });
}

#[test]
fn pods_that_do_not_opt_in_or_opt_out_are_left_alone() {
    with_library(|s| {
        ensure_unchanged(s, &pod(json!({"app": "web"}), json!({})), "plain pod")?;
        ensure_unchanged(
            s,
            &pod(
                json!({"sidecar.portcullis.dev/inject": "true"}),
                json!({"sidecar.portcullis.dev/inject": "false"}),
            ),
            "opted-out pod",
        )
    });
}

#[test]
fn deployment_template_is_injected_with_appends_only() {
    with_library(|s| {
        let deployment = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "api", "namespace": "shop"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "api"}},
                "template": {
                    "metadata": {"labels": {"app": "api", "sidecar.portcullis.dev/inject": "true"}},
                    "spec": {"containers": [{"name": "api", "image": "ghcr.io/acme/api:2.1"}]}
                }
            }
        });
        let a = s.review(MUTATE, &review_of(&deployment, "CREATE"))?;
        ensure_allowed(&a, "deployment")?;
        let mutated = a.patched_object()?;
        let mut expected = deployment.clone();
        let template = &mut expected["spec"]["template"];
        template["metadata"]["annotations"] = json!({"sidecar.portcullis.dev/status": "injected"});
        template["spec"] = json!({
            "containers": [
                {"name": "api", "image": "ghcr.io/acme/api:2.1", "env": [{"name": "MESH_ID", "value": "prod"}]},
                proxy()
            ],
            "initContainers": [proxy_init()],
            "volumes": [{"name": "proxy-certs", "emptyDir": {}}]
        });
        ensure!(mutated == expected, "patched deployment:\n{mutated:#}");
        let patch = serde_json::to_value(a.patch()?)?;
        ensure!(
            patch
                .as_array()
                .is_some_and(|ops| ops.iter().all(|op| op["op"] == "add")),
            "expected only add operations: {patch}"
        );
        ensure_unchanged(s, &mutated, "the injected deployment")?;

        // An UPDATE of the same deployment keeps it injected.
        let a = s.review(MUTATE, &review_of(&mutated, "UPDATE"))?;
        ensure_allowed(&a, "deployment UPDATE")?;
        ensure!(a.patch()?.is_none(), "UPDATE patched again\n{a}");
        Ok(())
    });
}
