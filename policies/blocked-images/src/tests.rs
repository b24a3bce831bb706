use super::*;
use portcullis_sdk::testing;
use serde_json::{Value, json};

const BAD: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const GOOD: &str = "sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

fn settings() -> Value {
    json!({
        "digests": [BAD],
        "tags": ["latest", "dev"],
        "untagged": true,
        "registries": ["evil.io", "quay.io/badorg/", "index.docker.io/badorg"]
    })
}

fn review(operation: &str, object: Value) -> Value {
    testing::request(operation, "shop", object)
}

fn pod(containers: Value, init: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"initContainers": init, "containers": containers}
    })
}

fn one(image: &str) -> Value {
    pod(json!([{"name": "app", "image": image}]), json!([]))
}

fn validate_with(request: &Value, settings: &Value) -> Verdict {
    testing::validate::<BlockedImages>(request, settings).unwrap()
}

fn message(image: &str) -> Option<String> {
    validate_with(&review("CREATE", one(image)), &settings()).message
}

#[test]
fn clean_images_pass() {
    for image in [
        "nginx:1.27",
        "docker.io/library/nginx:1.27",
        "quay.io/goodorg/app:2",
        "quay.io/badorganization/app:2",
    ] {
        assert_eq!(message(image), None, "{image}");
    }
    let pinned = format!("registry.k8s.io/pause@{GOOD}");
    assert_eq!(message(&pinned), None);
}

#[test]
fn message_lists_every_offending_container() {
    let object = pod(
        json!([{"name": "app", "image": "nginx:latest"}, {"name": "ok", "image": "nginx:1.27"}]),
        json!([{"name": "init", "image": "evil.io/x:1"}]),
    );
    let verdict = validate_with(&review("CREATE", object), &settings());
    assert!(!verdict.allowed);
    assert_eq!(verdict.code, None);
    assert_eq!(
        verdict.message.as_deref(),
        Some(
            "container \"app\" image \"nginx:latest\": tag \"latest\" is blocked; \
             initContainer \"init\" image \"evil.io/x:1\": registry \"evil.io\" is blocked"
        )
    );
}

#[test]
fn digests_are_blocked_whatever_the_name() {
    assert_eq!(
        message(&format!("ghcr.io/acme/api@{BAD}")).as_deref(),
        Some(&*format!(
            "container \"app\" image \"ghcr.io/acme/api@{BAD}\": digest \"{BAD}\" is blocked"
        ))
    );
    // Upper-case hex in the reference is the same digest.
    let upper = format!("sha256:{}", BAD["sha256:".len()..].to_ascii_uppercase());
    let verdict = message(&format!("ghcr.io/acme/api:1.0@{upper}"));
    assert_eq!(
        verdict.as_deref(),
        Some(&*format!(
            "container \"app\" image \"ghcr.io/acme/api:1.0@{upper}\": digest \"{BAD}\" is blocked"
        ))
    );
}

#[test]
fn untagged_is_separate_from_explicit_latest() {
    assert_eq!(
        message("nginx").as_deref(),
        Some(
            "container \"app\" image \"nginx\": untagged images are blocked \
             (the tag is implicitly \"latest\")"
        )
    );
    // `tags: [latest]` alone does not block `nginx`...
    let tags_only = json!({"tags": ["latest"]});
    assert!(validate_with(&review("CREATE", one("nginx")), &tags_only).allowed);
    // ...and `untagged` alone does not block `nginx:latest`.
    let untagged_only = json!({"untagged": true});
    assert!(validate_with(&review("CREATE", one("nginx:latest")), &untagged_only).allowed);
    // A digest without a tag is not untagged: it pins the image.
    assert!(
        validate_with(
            &review("CREATE", one(&format!("nginx@{GOOD}"))),
            &untagged_only
        )
        .allowed
    );
}

#[test]
fn written_tag_is_blocked_even_with_a_digest() {
    assert_eq!(
        message(&format!("nginx:dev@{GOOD}")).as_deref(),
        Some(&*format!(
            "container \"app\" image \"nginx:dev@{GOOD}\": tag \"dev\" is blocked"
        ))
    );
}

#[test]
fn registries_compare_normalized_names() {
    // `index.docker.io/badorg` in the settings and `badorg/tool` in the
    // image both mean docker.io/badorg.
    assert_eq!(
        message("badorg/tool:1").as_deref(),
        Some(
            "container \"app\" image \"badorg/tool:1\": registry \"index.docker.io/badorg\" is blocked"
        )
    );
    assert_eq!(
        message("quay.io/badorg/sub/tool:1").as_deref(),
        Some(
            "container \"app\" image \"quay.io/badorg/sub/tool:1\": registry \"quay.io/badorg/\" is blocked"
        )
    );
    // Path prefixes match whole components only.
    assert_eq!(message("quay.io/badorganization/tool:1"), None);
    // A whole registry, with a port.
    let settings = json!({"registries": ["docker.io", "localhost:5000"]});
    for (image, entry) in [
        ("nginx:1.27", "docker.io"),
        ("index.docker.io/x/y:1", "docker.io"),
        ("localhost:5000/app:1", "localhost:5000"),
    ] {
        assert_eq!(
            validate_with(&review("CREATE", one(image)), &settings).message,
            Some(format!(
                "container \"app\" image {image:?}: registry {entry:?} is blocked"
            )),
        );
    }
    assert!(validate_with(&review("CREATE", one("localhost:5001/app:1")), &settings).allowed);
}

#[test]
fn other_spellings_of_a_blocked_registry_are_blocked() {
    // Host names are case-insensitive, a portless entry covers every port,
    // and Docker Hub answers to three names: none of these is a way past
    // the block.
    for image in [
        "EVIL.IO/x:1",
        "Evil.Io/x:1",
        "evil.io:443/x:1",
        "EVIL.IO:5000/x:1",
    ] {
        assert_eq!(
            message(image),
            Some(format!(
                "container \"app\" image {image:?}: registry \"evil.io\" is blocked"
            )),
            "{image}"
        );
    }
    let hub = json!({"registries": ["docker.io/badorg"]});
    for image in [
        "registry-1.docker.io/badorg/tool:1",
        "INDEX.DOCKER.IO/badorg/tool:1",
    ] {
        assert!(
            !validate_with(&review("CREATE", one(image)), &hub).allowed,
            "{image}"
        );
    }
}

#[test]
fn every_reason_is_named() {
    assert_eq!(
        message(&format!("evil.io/x:latest@{BAD}")).as_deref(),
        Some(&*format!(
            "container \"app\" image \"evil.io/x:latest@{BAD}\": digest \"{BAD}\" is blocked, \
             registry \"evil.io\" is blocked, tag \"latest\" is blocked"
        ))
    );
    assert_eq!(
        message("evil.io/x").as_deref(),
        Some(
            "container \"app\" image \"evil.io/x\": registry \"evil.io\" is blocked, \
             untagged images are blocked (the tag is implicitly \"latest\")"
        )
    );
}

#[test]
fn invalid_images_are_denied_and_missing_ones_skipped() {
    let object = pod(
        json!([{"name": "app", "image": "Nginx:1"}, {"name": "bare"}, {"name": "empty", "image": ""}]),
        json!(null),
    );
    assert_eq!(
        validate_with(&review("CREATE", object), &settings())
            .message
            .as_deref(),
        Some(
            "container \"app\" image \"Nginx:1\": not a valid image reference (repository name must be lowercase)"
        )
    );
}

#[test]
fn ephemeral_containers_through_the_subresource() {
    let mut object = one("nginx:1.27");
    object["spec"]["ephemeralContainers"] = json!([{"name": "debugger", "image": "busybox:dev"}]);
    let mut request = review("UPDATE", object);
    request["subResource"] = json!("ephemeralcontainers");
    assert_eq!(
        validate_with(&request, &settings()).message.as_deref(),
        Some("ephemeralContainer \"debugger\" image \"busybox:dev\": tag \"dev\" is blocked")
    );
    // Other subresources are not about images.
    request["subResource"] = json!("status");
    assert_eq!(validate_with(&request, &settings()), Verdict::allow());
}

#[test]
fn every_controller_kind() {
    let template = json!({"spec": {
        "containers": [{"name": "app", "image": "evil.io/app:1"}],
        "initContainers": [{"name": "init", "image": "busybox"}]
    }});
    let expected = "container \"app\" image \"evil.io/app:1\": registry \"evil.io\" is blocked; \
                    initContainer \"init\" image \"busybox\": untagged images are blocked \
                    (the tag is implicitly \"latest\")";
    for (kind, api_version) in [
        ("Deployment", "apps/v1"),
        ("StatefulSet", "apps/v1"),
        ("DaemonSet", "apps/v1"),
        ("ReplicaSet", "apps/v1"),
        ("ReplicationController", "v1"),
        ("Job", "batch/v1"),
    ] {
        let object = json!({
            "apiVersion": api_version, "kind": kind,
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"template": template}
        });
        assert_eq!(
            validate_with(&review("UPDATE", object), &settings())
                .message
                .as_deref(),
            Some(expected),
            "{kind}"
        );
    }
    let cron = json!({
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "nightly", "namespace": "shop"},
        "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": template}}}
    });
    assert_eq!(
        validate_with(&review("CREATE", cron), &settings())
            .message
            .as_deref(),
        Some(expected)
    );
}

#[test]
fn delete_connect_and_other_kinds_are_allowed() {
    let mut delete = review("DELETE", Value::Null);
    delete["oldObject"] = one("evil.io/x:latest");
    assert_eq!(validate_with(&delete, &settings()), Verdict::allow());
    let connect = review(
        "CONNECT",
        json!({"kind": "PodExecOptions", "container": "app"}),
    );
    assert_eq!(validate_with(&connect, &settings()), Verdict::allow());
    let config_map =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"image": "evil.io/x"}});
    assert_eq!(
        validate_with(&review("CREATE", config_map), &settings()),
        Verdict::allow()
    );
}

#[test]
fn settings_validation() {
    let check = |settings: Value| testing::validate_settings::<BlockedImages>(&settings);
    assert_eq!(check(settings()), Ok(()));
    assert_eq!(check(json!({"untagged": true})), Ok(()));
    let nothing = Err(
        "settings must block something: give digests, tags, registries or untagged: true"
            .to_string(),
    );
    assert_eq!(check(json!({})), nothing);
    assert_eq!(check(json!({"untagged": false, "tags": []})), nothing);
    assert_eq!(
        check(json!({"digests": ["sha256:abc", BAD.to_ascii_uppercase(), "sha512:00"]})),
        Err(format!(
            "digests: \"sha256:abc\" is not sha256: followed by 64 lower-case hex digits; \
             digests: {:?} is not sha256: followed by 64 lower-case hex digits; \
             digests: \"sha512:00\" is not sha256: followed by 64 lower-case hex digits",
            BAD.to_ascii_uppercase()
        ))
    );
    assert_eq!(
        check(json!({"tags": ["", ".x", "ok-1.2_3"]})),
        Err("tags: \"\" is not a valid tag (letters, digits, '_', '.', '-', not starting with '.' or '-', at most 128); \
             tags: \".x\" is not a valid tag (letters, digits, '_', '.', '-', not starting with '.' or '-', at most 128)"
            .to_string())
    );
    assert_eq!(
        check(json!({"registries": ["badorg/", "", "quay.io//x", "Quay.io"]})),
        Err("registries: \"badorg/\" does not start with a registry host (one with a '.' or ':', or localhost), \
             e.g. docker.io or quay.io/badorg/; registries: \"\" does not start with a registry host; \
             registries: \"quay.io//x\" has an empty path component; \
             registries: \"Quay.io\" must be lower case, as normalized image names are"
            .to_string())
    );
    let err = check(json!({"registry": ["evil.io"]})).unwrap_err();
    assert!(
        err.starts_with("invalid settings: unknown field `registry`"),
        "{err}"
    );
}

#[test]
fn metadata() {
    let m = BlockedImages::METADATA;
    assert_eq!(m.name, "blocked-images");
    assert!(m.resources.contains(&"pods/ephemeralcontainers"));
    assert!(m.resources.contains(&"cronjobs.batch"));
    assert!(m.validates && !m.mutates);
}

#[test]
fn exempt_images_are_not_checked() {
    let mut exempting = settings();
    exempting["exemptImages"] = json!(["registry.example.com/debug/", "nginx:1.*"]);
    let object = pod(
        json!([
            {"name": "debug", "image": "registry.example.com/debug/toolbox:latest"},
            {"name": "web", "image": "nginx:1.27"},
            {"name": "bad", "image": "evil.io/x:1"}
        ]),
        json!([]),
    );
    let verdict = validate_with(&review("CREATE", object), &exempting);
    let message = verdict.message.unwrap_or_default();
    assert!(message.contains("container \"bad\""), "{message}");
    assert!(!message.contains("debug"), "{message}");
    let refused = testing::validate_settings::<BlockedImages>(
        &json!({"tags": ["latest"], "exemptImages": ["Nginx"]}),
    );
    assert!(refused.is_err(), "an invalid pattern is refused");
}
