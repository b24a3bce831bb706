//! `blocked-images` end to end: Pods (a third-party capture among them),
//! a Deployment and a CronJob, ephemeral containers through their
//! subresource.

use anyhow::{Result, ensure};
use portcullis_e2e::{Answer, Json, corpus_dir, json, read_json, review_of, with_library};

const PATH: &str = "/validate/blocked-images";
const EXPLICIT: &str = "/validate/blocked-images-explicit-latest";
const BAD: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn pod(containers: Json, init: Json) -> Json {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"initContainers": init, "containers": containers}
    })
}

fn deployment(image: &str) -> Json {
    portcullis_e2e::deployment(
        "web",
        json!({"containers": [{"name": "app", "image": image}]}),
    )
}

fn ensure_allowed(a: &Answer, what: &str) -> Result<()> {
    ensure!(a.allowed(), "{what}: expected allowed\n{a}");
    ensure!(a.message().is_empty(), "{what}: unexpected message\n{a}");
    Ok(())
}

/// A 403 whose message is the policy's, after the host's `<entry>: `.
fn ensure_denied(a: &Answer, path: &str, message: &str) -> Result<()> {
    ensure!(!a.allowed(), "expected a denial\n{a}");
    ensure!(a.code() == Some(403), "expected 403\n{a}");
    let want = format!("{}: {message}", path.trim_start_matches("/validate/"));
    ensure!(
        a.message() == want,
        "message:\n  got  {}\n  want {want}",
        a.message()
    );
    Ok(())
}

#[test]
fn clean_pod_and_deployment_are_allowed() {
    with_library(|s| {
        let object = pod(
            json!([{"name": "app", "image": "nginx:1.27"}, {"name": "api", "image": "quay.io/goodorg/api:2"}]),
            json!([{"name": "init", "image": "registry.k8s.io/pause:3.10"}]),
        );
        ensure_allowed(&s.review(PATH, &review_of(&object, "CREATE"))?, "clean pod")?;
        let a = s.review(
            PATH,
            &review_of(&deployment("ghcr.io/acme/api:1.4"), "UPDATE"),
        )?;
        ensure_allowed(&a, "clean deployment")?;
        Ok(())
    });
}

#[test]
fn pod_message_lists_every_offender() {
    with_library(|s| {
        let object = pod(
            json!([
                {"name": "app", "image": "nginx:latest"},
                {"name": "ok", "image": "nginx:1.27"},
                {"name": "pinned", "image": format!("ghcr.io/acme/api@{BAD}")}
            ]),
            json!([{"name": "init", "image": "evil.io/x:1"}]),
        );
        let a = s.review(PATH, &review_of(&object, "CREATE"))?;
        ensure_denied(
            &a,
            PATH,
            &format!(
                "container \"app\" image \"nginx:latest\": tag \"latest\" is blocked; \
                 container \"pinned\" image \"ghcr.io/acme/api@{BAD}\": digest \"{BAD}\" is blocked; \
                 initContainer \"init\" image \"evil.io/x:1\": registry \"evil.io\" is blocked"
            ),
        )
    });
}

#[test]
fn untagged_images_in_a_third_party_capture() {
    with_library(|s| {
        // kubewarden's captured review: containers `alpine` and `nginx`.
        let review = read_json(&corpus_dir().join(
            "kubewarden-controller/crates/policy-server/tests/data/pod_with_privileged_containers.json",
        ))?;
        let a = s.review(PATH, &review)?;
        ensure_denied(
            &a,
            PATH,
            "container \"sleeping-sidecar\" image \"alpine\": untagged images are blocked \
             (the tag is implicitly \"latest\"); container \"nginx\" image \"nginx\": untagged \
             images are blocked (the tag is implicitly \"latest\")",
        )?;
        // Blocking only an explicit `:latest` lets them through.
        ensure_allowed(&s.review(EXPLICIT, &review)?, "explicit-latest only")?;
        Ok(())
    });
}

#[test]
fn controllers_are_checked_through_their_templates() {
    with_library(|s| {
        let a = s.review(
            PATH,
            &review_of(&deployment("quay.io/badorg/miner:3"), "CREATE"),
        )?;
        ensure_denied(
            &a,
            PATH,
            "container \"app\" image \"quay.io/badorg/miner:3\": registry \"quay.io/badorg/\" is blocked",
        )?;
        let cron = json!({
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": "nightly", "namespace": "shop"},
            "spec": {
                "schedule": "0 3 * * *",
                "jobTemplate": {"spec": {"template": {"spec": {
                    "restartPolicy": "OnFailure",
                    "containers": [{"name": "backup", "image": "evil.io/backup:latest"}]
                }}}}
            }
        });
        let a = s.review(PATH, &review_of(&cron, "CREATE"))?;
        ensure_denied(
            &a,
            PATH,
            "container \"backup\" image \"evil.io/backup:latest\": registry \"evil.io\" is blocked, \
             tag \"latest\" is blocked",
        )?;
        Ok(())
    });
}

#[test]
fn ephemeral_containers_through_the_subresource() {
    with_library(|s| {
        let mut object = pod(json!([{"name": "app", "image": "nginx:1.27"}]), json!([]));
        object["spec"]["ephemeralContainers"] =
            json!([{"name": "debugger", "image": "busybox", "targetContainerName": "app"}]);
        let mut review = review_of(&object, "UPDATE");
        review["request"]["subResource"] = json!("ephemeralcontainers");
        review["request"]["resource"]["resource"] = json!("pods");
        let a = s.review(PATH, &review)?;
        ensure_denied(
            &a,
            PATH,
            "ephemeralContainer \"debugger\" image \"busybox\": untagged images are blocked \
             (the tag is implicitly \"latest\")",
        )?;
        // DELETE carries no new object: nothing to block.
        let delete = review_of(&object, "DELETE");
        ensure_allowed(&s.review(PATH, &delete)?, "DELETE")?;
        Ok(())
    });
}
