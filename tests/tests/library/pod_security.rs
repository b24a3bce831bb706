//! `pod-security` end to end: a compliant Pod, a privileged Pod, a
//! Deployment and third-party captured Pods through the built module, a
//! pinned version, exemptions and an unchanged UPDATE.

use anyhow::{Result, ensure};
use portcullis_e2e::{
    Answer, Json, corpus_dir, deployment, json, read_json, review_of, with_library,
};

const RESTRICTED: &str = "/validate/pod-security-restricted";
const BASELINE: &str = "/validate/pod-security-baseline";
const BASELINE_V1_36: &str = "/validate/pod-security-baseline-v1-36";
const EXEMPT: &str = "/validate/pod-security-restricted-exempt";

fn compliant_pod() -> Json {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "app",
                "image": "nginx:1.27",
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}
            }]
        }
    })
}

fn ensure_allowed(a: &Answer, what: &str) -> Result<()> {
    ensure!(a.allowed(), "{what}: expected allowed\n{a}");
    ensure!(a.message().is_empty(), "{what}: unexpected message\n{a}");
    Ok(())
}

/// The host prefixes a denial with the policy's name: `<name>: <message>`.
fn ensure_denied(a: &Answer, path: &str, message: &str) -> Result<()> {
    let want = format!("{}: {message}", path.trim_start_matches("/validate/"));
    ensure!(!a.allowed(), "{path}: expected denied\n{a}");
    ensure!(
        a.message() == want,
        "{path}: message\n got: {}\nwant: {want}",
        a.message()
    );
    Ok(())
}

#[test]
fn compliant_pod_is_allowed_by_both_levels() {
    with_library(|s| {
        let review = review_of(&compliant_pod(), "CREATE");
        ensure_allowed(&s.review(RESTRICTED, &review)?, "restricted")?;
        ensure_allowed(&s.review(BASELINE, &review)?, "baseline")
    });
}

#[test]
fn privileged_pod_is_denied_by_baseline() {
    with_library(|s| {
        let mut pod = compliant_pod();
        pod["spec"]["initContainers"] =
            json!([{"name": "setup", "image": "busybox", "securityContext": {"privileged": true}}]);
        pod["spec"]["hostPID"] = json!(true);
        let a = s.review(BASELINE, &review_of(&pod, "CREATE"))?;
        ensure_denied(
            &a,
            BASELINE,
            r#"violates PodSecurity "baseline:latest": host namespaces (hostPID=true), privileged (container "setup" must not set securityContext.privileged=true)"#,
        )
    });
}

#[test]
fn deployment_is_denied_by_restricted_with_every_failure() {
    with_library(|s| {
        let deployment = deployment(
            "web",
            json!({
                "volumes": [{"name": "cache", "emptyDir": {}}, {"name": "share", "nfs": {"server": "nas", "path": "/x"}}],
                "containers": [
                    {"name": "app", "image": "nginx", "securityContext": {"runAsUser": 0}},
                    {"name": "sidecar", "image": "envoy", "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}
                ]
            }),
        );
        let a = s.review(RESTRICTED, &review_of(&deployment, "CREATE"))?;
        ensure_denied(
            &a,
            RESTRICTED,
            concat!(
                r#"violates PodSecurity "restricted:latest": "#,
                r#"allowPrivilegeEscalation != false (containers "app", "sidecar" must set securityContext.allowPrivilegeEscalation=false), "#,
                r#"unrestricted capabilities (containers "app", "sidecar" must set securityContext.capabilities.drop=["ALL"]; container "sidecar" must not include "NET_ADMIN" in securityContext.capabilities.add), "#,
                r#"restricted volume types (volume "share" uses restricted volume type "nfs"), "#,
                r#"runAsNonRoot != true (pod or containers "app", "sidecar" must set securityContext.runAsNonRoot=true), "#,
                r#"runAsUser=0 (container "app" must not set runAsUser=0), "#,
                r#"seccompProfile (pod or containers "app", "sidecar" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#
            ),
        )?;
        // The same Deployment only fails baseline on its added capability.
        let a = s.review(BASELINE, &review_of(&deployment, "CREATE"))?;
        ensure_denied(
            &a,
            BASELINE,
            r#"violates PodSecurity "baseline:latest": non-default capabilities (container "sidecar" must not include "NET_ADMIN" in securityContext.capabilities.add)"#,
        )
    });
}

#[test]
fn corpus_pods_get_their_expected_verdicts() {
    with_library(|s| {
        let data = corpus_dir().join("kubewarden-controller/crates/policy-server/tests/data");
        let privileged = read_json(&data.join("pod_with_privileged_containers.json"))?;
        let a = s.review(BASELINE, &privileged)?;
        ensure_denied(
            &a,
            BASELINE,
            r#"violates PodSecurity "baseline:latest": privileged (container "nginx" must not set securityContext.privileged=true)"#,
        )?;

        let unprivileged = read_json(&data.join("pod_without_privileged_containers.json"))?;
        ensure_allowed(
            &s.review(BASELINE, &unprivileged)?,
            "kubewarden unprivileged pod at baseline",
        )?;
        let a = s.review(RESTRICTED, &unprivileged)?;
        ensure_denied(
            &a,
            RESTRICTED,
            concat!(
                r#"violates PodSecurity "restricted:latest": "#,
                r#"allowPrivilegeEscalation != false (containers "sleeping-sidecar", "nginx" must set securityContext.allowPrivilegeEscalation=false), "#,
                r#"unrestricted capabilities (containers "sleeping-sidecar", "nginx" must set securityContext.capabilities.drop=["ALL"]), "#,
                r#"runAsNonRoot != true (pod or containers "sleeping-sidecar", "nginx" must set securityContext.runAsNonRoot=true), "#,
                r#"seccompProfile (pod or containers "sleeping-sidecar", "nginx" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#
            ),
        )
    });
}

#[test]
fn pinned_version_uses_that_versions_sysctls() {
    with_library(|s| {
        let mut pod = compliant_pod();
        pod["spec"]["securityContext"]["sysctls"] =
            json!([{"name": "net.ipv4.tcp_notsent_lowat", "value": "16384"}]);
        let review = review_of(&pod, "CREATE");
        ensure_allowed(&s.review(BASELINE, &review)?, "latest")?;
        ensure_denied(
            &s.review(BASELINE_V1_36, &review)?,
            BASELINE_V1_36,
            r#"violates PodSecurity "baseline:v1.36": forbidden sysctls (net.ipv4.tcp_notsent_lowat)"#,
        )
    });
}

#[test]
fn exemptions_and_unchanged_updates_are_allowed() {
    with_library(|s| {
        let mut pod = compliant_pod();
        pod["spec"]["hostNetwork"] = json!(true);
        let denied =
            r#"violates PodSecurity "restricted:latest": host namespaces (hostNetwork=true)"#;
        ensure_denied(
            &s.review(EXEMPT, &review_of(&pod, "CREATE"))?,
            EXEMPT,
            denied,
        )?;

        let mut system = pod.clone();
        system["metadata"]["namespace"] = json!("kube-system");
        let a = s.review(EXEMPT, &review_of(&system, "CREATE"))?;
        ensure_allowed(&a, "exempt namespace")?;

        let mut review = review_of(&pod, "CREATE");
        review["request"]["userInfo"] = json!({"username": "system:serviceaccount:ci:deployer"});
        ensure_allowed(&s.review(EXEMPT, &review)?, "exempt user")?;

        let mut sandboxed = pod.clone();
        sandboxed["spec"]["runtimeClassName"] = json!("gvisor");
        ensure_allowed(
            &s.review(EXEMPT, &review_of(&sandboxed, "CREATE"))?,
            "exempt runtime class",
        )?;

        // A label change of an existing non-compliant pod is not evaluated.
        let mut review = review_of(&pod, "UPDATE");
        review["request"]["object"]["metadata"]["labels"]["tier"] = json!("front");
        ensure_allowed(&s.review(RESTRICTED, &review)?, "label update")?;
        // An image change is.
        review["request"]["object"]["spec"]["containers"][0]["image"] = json!("nginx:1.28");
        ensure_denied(&s.review(RESTRICTED, &review)?, RESTRICTED, denied)
    });
}
