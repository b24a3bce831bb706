//! `container-defaults` end to end: the built module through the real
//! server, on `/mutate/container-defaults` (with resource defaults) and
//! `/mutate/container-defaults-security-only` (the default settings).

use anyhow::{Result, ensure};
use portcullis_e2e::{Answer, Json, deployment, json, review_of, with_library};

const MUTATE: &str = "/mutate/container-defaults";
const SECURITY_ONLY: &str = "/mutate/container-defaults-security-only";
/// Defined by the `pod-security` policy's fragment
/// (`tests/library/pod-security.yaml`).
const RESTRICTED: &str = "/validate/pod-security-restricted";

fn restricted() -> Json {
    json!({
        "runAsNonRoot": true,
        "seccompProfile": {"type": "RuntimeDefault"},
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]}
    })
}

fn resources() -> Json {
    json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}})
}

fn nginx_pod() -> Json {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"containers": [{"name": "nginx", "image": "nginx"}]}
    })
}

fn ensure_allowed(a: &Answer, what: &str) -> Result<()> {
    ensure!(a.allowed(), "{what}: expected allowed: true\n{a}");
    Ok(())
}

/// Posts `object` again on `path` and checks nothing more is patched.
fn ensure_idempotent(s: &portcullis_e2e::Server, path: &str, object: &Json) -> Result<()> {
    let again = s.review(path, &review_of(object, "CREATE"))?;
    ensure_allowed(&again, "the mutated object")?;
    ensure!(
        again.patch()?.is_none(),
        "second mutation patched again\n{again}"
    );
    Ok(())
}

#[test]
fn pod_gets_security_context_and_resources() {
    with_library(|s| {
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {
                "initContainers": [{"name": "init", "image": "busybox", "securityContext": {"allowPrivilegeEscalation": true}}],
                "containers": [
                    {"name": "app", "image": "nginx:1.27"},
                    {"name": "sized", "image": "nginx:1.27", "resources": {"limits": {"memory": "64Mi"}}}
                ]
            }
        });
        let a = s.review(MUTATE, &review_of(&pod, "CREATE"))?;
        ensure_allowed(&a, "pod")?;
        let mutated = a.patched_object()?;
        let mut expected = pod.clone();
        expected["spec"]["containers"][0]["securityContext"] = restricted();
        expected["spec"]["containers"][0]["resources"] = resources();
        expected["spec"]["containers"][1]["securityContext"] = restricted();
        expected["spec"]["containers"][1]["resources"] =
            json!({"limits": {"memory": "64Mi"}, "requests": {"cpu": "100m"}});
        // The explicit `allowPrivilegeEscalation: true` stays.
        let mut init = restricted();
        init["allowPrivilegeEscalation"] = json!(true);
        expected["spec"]["initContainers"][0]["securityContext"] = init;
        expected["spec"]["initContainers"][0]["resources"] = resources();
        ensure!(
            mutated == expected,
            "patched pod:\n{mutated:#}\nexpected:\n{expected:#}"
        );
        ensure_idempotent(s, MUTATE, &mutated)
    });
}

#[test]
fn deployment_template_is_defaulted() {
    with_library(|s| {
        let deployment = deployment(
            "web",
            json!({
                "securityContext": {"runAsNonRoot": true},
                "containers": [{"name": "app", "image": "nginx:1.27"}]
            }),
        );
        let a = s.review(SECURITY_ONLY, &review_of(&deployment, "CREATE"))?;
        ensure_allowed(&a, "deployment")?;
        let mutated = a.patched_object()?;
        let mut expected = deployment.clone();
        // Pod-level runAsNonRoot is enough: the container does not repeat it.
        expected["spec"]["template"]["spec"]["containers"][0]["securityContext"] = json!({
            "seccompProfile": {"type": "RuntimeDefault"},
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]}
        });
        ensure!(mutated == expected, "patched deployment:\n{mutated:#}");
        // The patch only adds: no array is replaced.
        let patch = serde_json::to_value(a.patch()?)?;
        ensure!(
            patch
                .as_array()
                .is_some_and(|ops| ops.iter().all(|op| op["op"] == "add")),
            "expected only add operations: {patch}"
        );
        ensure_idempotent(s, SECURITY_ONLY, &mutated)
    });
}

#[test]
fn delete_is_not_mutated() {
    with_library(|s| {
        let a = s.review(MUTATE, &review_of(&nginx_pod(), "DELETE"))?;
        ensure_allowed(&a, "DELETE")?;
        ensure!(a.patch()?.is_none(), "DELETE was patched\n{a}");
        Ok(())
    });
}

/// The point of the policy: a plain pod that restricted denies passes it
/// once container-defaults has run.
#[test]
fn mutated_plain_pod_passes_pod_security_restricted() {
    with_library(|s| {
        let pod = nginx_pod();
        let before = s.review(RESTRICTED, &review_of(&pod, "CREATE"))?;
        ensure!(
            !before.allowed(),
            "the unmutated pod should be denied by {RESTRICTED}\n{before}"
        );
        let a = s.review(SECURITY_ONLY, &review_of(&pod, "CREATE"))?;
        ensure_allowed(&a, "plain pod")?;
        let mutated = a.patched_object()?;
        let after = s.review(RESTRICTED, &review_of(&mutated, "CREATE"))?;
        ensure!(
            after.allowed(),
            "the mutated pod should pass {RESTRICTED}\n{after}"
        );
        Ok(())
    });
}
