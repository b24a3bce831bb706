//! `image-digests` end to end: the built module through the real server on
//! `/mutate/image-digests` (pins what it can) and
//! `/mutate/image-digests-strict` (`denyUnpinned: true`).

use anyhow::{Result, ensure};
use portcullis_e2e::{Answer, Json, Server, deployment, json, review_of, with_library};

const MUTATE: &str = "/mutate/image-digests";
const STRICT: &str = "/mutate/image-digests-strict";
const NGINX: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const API: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn pod(containers: Json) -> Json {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "initContainers": [{"name": "init", "image": "ghcr.io/acme/api:2.1"}],
            "containers": containers
        }
    })
}

fn ensure_allowed(a: &Answer, what: &str) -> Result<()> {
    ensure!(a.allowed(), "{what}: expected allowed: true\n{a}");
    Ok(())
}

fn ensure_unchanged(s: &Server, path: &str, object: &Json, what: &str) -> Result<()> {
    let a = s.review(path, &review_of(object, "CREATE"))?;
    ensure_allowed(&a, what)?;
    ensure!(a.patch()?.is_none(), "{what}: expected no patch\n{a}");
    Ok(())
}

#[test]
fn pod_images_are_pinned_as_written() {
    with_library(|s| {
        let object = pod(json!([
            {"name": "app", "image": "docker.io/library/nginx:1.27"},
            {"name": "cache", "image": "redis:7"}
        ]));
        let a = s.review(MUTATE, &review_of(&object, "CREATE"))?;
        ensure_allowed(&a, "pod")?;
        let mutated = a.patched_object()?;
        let mut expected = object.clone();
        expected["spec"]["initContainers"][0]["image"] =
            json!(format!("ghcr.io/acme/api:2.1@{API}"));
        expected["spec"]["containers"][0]["image"] =
            json!(format!("docker.io/library/nginx:1.27@{NGINX}"));
        ensure!(mutated == expected, "patched pod:\n{mutated:#}");
        ensure_unchanged(s, MUTATE, &mutated, "the pinned pod")
    });
}

#[test]
fn deployment_is_pinned_and_then_passes_strict() {
    with_library(|s| {
        let deployment = deployment(
            "web",
            json!({"containers": [{"name": "app", "image": "nginx:1.27"}]}),
        );
        let a = s.review(STRICT, &review_of(&deployment, "CREATE"))?;
        ensure_allowed(&a, "deployment")?;
        let mutated = a.patched_object()?;
        let mut expected = deployment.clone();
        expected["spec"]["template"]["spec"]["containers"][0]["image"] =
            json!(format!("nginx:1.27@{NGINX}"));
        ensure!(mutated == expected, "patched deployment:\n{mutated:#}");
        let patch = serde_json::to_value(a.patch()?)?;
        ensure!(
            patch
                == json!([{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": format!("nginx:1.27@{NGINX}")}]),
            "expected one replace of the image: {patch}"
        );
        ensure_unchanged(s, STRICT, &mutated, "the pinned deployment")
    });
}

#[test]
fn strict_denies_images_it_cannot_pin() {
    with_library(|s| {
        let object = pod(json!([
            {"name": "app", "image": "nginx:1.27"},
            {"name": "cache", "image": "redis:7"}
        ]));
        let a = s.review(STRICT, &review_of(&object, "CREATE"))?;
        ensure!(!a.allowed(), "expected a denial\n{a}");
        ensure!(a.patch()?.is_none(), "a denial carries no patch\n{a}");
        // The host prefixes the entry name.
        let expected = "image-digests-strict: container \"cache\" uses image \"redis:7\" (docker.io/library/redis:7), which is not pinned by digest and has no digest configured in images";
        ensure!(a.message() == expected, "message: {:?}\n{a}", a.message());
        Ok(())
    });
}

#[test]
fn pinned_image_with_another_digest_is_kept_with_a_warning() {
    with_library(|s| {
        let other = "sha256:9999999999999999999999999999999999999999999999999999999999999999";
        let image = format!("nginx:1.27@{other}");
        let object = pod(json!([{"name": "app", "image": image}]));
        let a = s.review(MUTATE, &review_of(&object, "CREATE"))?;
        ensure_allowed(&a, "pinned pod")?;
        let mutated = a.patched_object()?;
        // Only the init container changes.
        ensure!(
            mutated["spec"]["containers"][0]["image"] == json!(image),
            "{a}"
        );
        let warning = format!(
            "container \"app\" pins image \"{image}\" to a digest other than the {NGINX} configured for docker.io/library/nginx:1.27; left as written"
        );
        ensure!(
            a.warnings().iter().any(|w| w.contains(&warning)),
            "warnings: {:?}\n{a}",
            a.warnings()
        );
        Ok(())
    });
}
