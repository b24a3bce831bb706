use super::*;
use portcullis_sdk::testing;
use serde_json::{Value, json};

const NGINX: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const API: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
const BUSYBOX: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";
const OTHER: &str = "sha256:9999999999999999999999999999999999999999999999999999999999999999";

fn settings() -> Value {
    json!({"images": {
        "nginx:1.27": NGINX,
        "ghcr.io/acme/api:2.1": API,
        "docker.io/library/busybox:latest": BUSYBOX
    }})
}

fn strict() -> Value {
    let mut s = settings();
    s["denyUnpinned"] = json!(true);
    s
}

fn review(operation: &str, object: Value) -> Value {
    testing::request(operation, "shop", object)
}

fn pod(spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}, "spec": spec})
}

fn one(image: &str) -> Value {
    pod(json!({"containers": [{"name": "app", "image": image}]}))
}

fn mutate_with(object: Value, settings: &Value) -> Mutation {
    testing::mutate::<ImageDigests>(&review("CREATE", object), settings).unwrap()
}

/// The image of `object`'s only container after mutation (and checks that
/// a second run changes nothing).
fn pinned(image: &str) -> String {
    let out = mutate_with(one(image), &settings());
    assert_eq!(out.verdict, Verdict::allow());
    let object = out.object.expect("the image was rewritten");
    assert_eq!(
        mutate_with(object.clone(), &strict()),
        Mutation::unchanged(),
        "idempotent"
    );
    object["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn tags_become_tag_and_digest_as_written() {
    assert_eq!(pinned("nginx:1.27"), format!("nginx:1.27@{NGINX}"));
    assert_eq!(
        pinned("docker.io/library/nginx:1.27"),
        format!("docker.io/library/nginx:1.27@{NGINX}")
    );
    assert_eq!(
        pinned("index.docker.io/library/nginx:1.27"),
        format!("index.docker.io/library/nginx:1.27@{NGINX}")
    );
    assert_eq!(
        pinned("ghcr.io/acme/api:2.1"),
        format!("ghcr.io/acme/api:2.1@{API}")
    );
    // An implicit `latest` matches a configured `latest`.
    assert_eq!(pinned("busybox"), format!("busybox@{BUSYBOX}"));
}

#[test]
fn every_list_and_the_rest_of_the_pod_are_kept() {
    let object = pod(json!({
        "initContainers": [{"name": "init", "image": "busybox:latest"}],
        "containers": [
            {"name": "app", "image": "nginx:1.27", "ports": [{"containerPort": 80}]},
            {"name": "other", "image": "redis:7"}
        ],
        "ephemeralContainers": [{"name": "debug", "image": "busybox"}]
    }));
    let out = mutate_with(object.clone(), &settings()).object.unwrap();
    let mut expected = object;
    expected["spec"]["initContainers"][0]["image"] = json!(format!("busybox:latest@{BUSYBOX}"));
    expected["spec"]["containers"][0]["image"] = json!(format!("nginx:1.27@{NGINX}"));
    expected["spec"]["ephemeralContainers"][0]["image"] = json!(format!("busybox@{BUSYBOX}"));
    assert_eq!(out, expected);
}

#[test]
fn deployment_and_cronjob_templates_are_pinned() {
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api"},
        "spec": {"template": {"spec": {"containers": [{"name": "api", "image": "ghcr.io/acme/api:2.1"}]}}}
    });
    let out = mutate_with(deployment, &settings()).object.unwrap();
    assert_eq!(
        out["spec"]["template"]["spec"]["containers"][0]["image"],
        format!("ghcr.io/acme/api:2.1@{API}")
    );
    let cronjob = json!({
        "apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly"},
        "spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "job", "image": "busybox"}]}}}}}
    });
    let out = mutate_with(cronjob, &settings()).object.unwrap();
    assert_eq!(
        out["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"],
        format!("busybox@{BUSYBOX}")
    );
}

#[test]
fn unknown_and_pinned_images_are_left_alone() {
    for image in [
        "redis:7",
        "nginx:1.26",
        "nginx",
        "quay.io/library/nginx:1.27",
        &format!("nginx:1.27@{NGINX}"),
        &format!("nginx@{OTHER}"),
        "Not A Reference",
    ] {
        assert_eq!(
            mutate_with(one(image), &settings()),
            Mutation::unchanged(),
            "{image}"
        );
    }
}

#[test]
fn a_different_digest_is_kept_with_a_warning() {
    let image = format!("nginx:1.27@{OTHER}");
    let out = mutate_with(one(&image), &settings());
    assert_eq!(out.object, None);
    assert_eq!(
        out.verdict,
        Verdict::allow().with_warning(format!(
            "container \"app\" pins image \"{image}\" to a digest other than the {NGINX} configured for docker.io/library/nginx:1.27; left as written"
        ))
    );
}

#[test]
fn deny_unpinned_names_every_container_and_image() {
    let object = pod(json!({
        "initContainers": [{"name": "init", "image": "busybox:1.36"}],
        "containers": [
            {"name": "app", "image": "nginx:1.27"},
            {"name": "cache", "image": "redis:7"},
            {"name": "bad", "image": "Redis"},
            {"name": "none"}
        ]
    }));
    let out = mutate_with(object, &strict());
    assert_eq!(out.object, None);
    assert_eq!(
        out.verdict,
        Verdict::deny(
            "container \"cache\" uses image \"redis:7\" (docker.io/library/redis:7), which is not pinned by digest and has no digest configured in images; \
             container \"bad\" uses image \"Redis\", which is not a valid image reference (repository name must be lowercase); \
             container \"none\" has no image; \
             initContainer \"init\" uses image \"busybox:1.36\" (docker.io/library/busybox:1.36), which is not pinned by digest and has no digest configured in images"
        )
    );
    // Pinnable or pinned images pass.
    let object = pod(json!({"containers": [
        {"name": "app", "image": "nginx:1.27"},
        {"name": "cache", "image": format!("redis@{OTHER}")}
    ]}));
    let out = mutate_with(object, &strict());
    assert_eq!(out.verdict, Verdict::allow());
    assert_eq!(
        out.object.unwrap()["spec"]["containers"][0]["image"],
        format!("nginx:1.27@{NGINX}")
    );
}

#[test]
fn update_leaves_unchanged_images_alone() {
    let old = pod(json!({"containers": [
        {"name": "app", "image": "nginx:1.27"},
        {"name": "cache", "image": "redis:7"}
    ]}));
    let mut new = old.clone();
    new["metadata"]["labels"] = json!({"a": "b"});
    let mut request = review("UPDATE", new.clone());
    request["oldObject"] = old.clone();
    // Neither rewritten nor denied: the update does not touch the images.
    assert_eq!(
        testing::mutate::<ImageDigests>(&request, &strict()).unwrap(),
        Mutation::unchanged()
    );

    // A changed image is pinned; a new ephemeral container too.
    new["spec"]["containers"][1]["image"] = json!("nginx:1.27");
    new["spec"]["ephemeralContainers"] = json!([{"name": "debug", "image": "busybox"}]);
    let mut request = review("UPDATE", new);
    request["oldObject"] = old;
    let out = testing::mutate::<ImageDigests>(&request, &strict())
        .unwrap()
        .object
        .unwrap();
    assert_eq!(out["spec"]["containers"][0]["image"], "nginx:1.27");
    assert_eq!(
        out["spec"]["containers"][1]["image"],
        format!("nginx:1.27@{NGINX}")
    );
    assert_eq!(
        out["spec"]["ephemeralContainers"][0]["image"],
        format!("busybox@{BUSYBOX}")
    );
}

#[test]
fn delete_connect_other_kinds_and_no_object_are_unchanged() {
    let run = |r: &Value| testing::mutate::<ImageDigests>(r, &strict()).unwrap();
    let mut delete = review("DELETE", Value::Null);
    delete["oldObject"] = one("redis:7");
    assert_eq!(run(&delete), Mutation::unchanged());
    assert_eq!(
        run(&review("CONNECT", one("redis:7"))),
        Mutation::unchanged()
    );
    assert_eq!(run(&review("CREATE", Value::Null)), Mutation::unchanged());
    let config_map = json!({"kind": "ConfigMap", "data": {"image": "redis:7"}});
    assert_eq!(run(&review("CREATE", config_map)), Mutation::unchanged());
}

/// A real request: the mutating call for a `kubectl run` pod.
#[test]
fn apiserver_capture() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/corpus/kube-apiserver-v1.36/005-mutate-CREATE-Pod-gen-.json"
    );
    let envelope: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut request = envelope["request"].clone();
    let image = request["object"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_string();
    let s = json!({"images": {(if image.contains(':') { image.clone() } else { format!("{image}:latest") }): NGINX}});
    let out = testing::mutate::<ImageDigests>(&request, &s)
        .unwrap()
        .object
        .unwrap();
    assert_eq!(
        out["spec"]["containers"][0]["image"],
        format!("{image}@{NGINX}")
    );
    request["object"] = out;
    assert_eq!(
        testing::mutate::<ImageDigests>(&request, &s).unwrap(),
        Mutation::unchanged()
    );
}

#[test]
fn settings_validation() {
    let check = |s: Value| testing::validate_settings::<ImageDigests>(&s);
    let err = |m: &str| Err(m.to_string());
    assert_eq!(check(settings()), Ok(()));
    assert_eq!(check(strict()), Ok(()));
    assert_eq!(
        check(json!({})),
        err("images must map at least one tagged image to a digest")
    );
    assert_eq!(
        check(json!({"images": {"Nginx:1": NGINX}})),
        err(
            "images: key \"Nginx:1\" is not a valid image reference (repository name must be lowercase)"
        )
    );
    assert_eq!(
        check(json!({"images": {"nginx": NGINX}})),
        err("images: key \"nginx\" must name a tag (e.g. \"nginx:1.0\")")
    );
    assert_eq!(
        check(json!({"images": {format!("nginx:1.27@{NGINX}"): NGINX}})),
        err(&format!(
            "images: key \"nginx:1.27@{NGINX}\" must be a tagged reference, not one with a digest"
        ))
    );
    for bad in [
        "1111111111111111111111111111111111111111111111111111111111111111",
        "sha256:111",
        "sha256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "sha512:1111111111111111111111111111111111111111111111111111111111111111",
    ] {
        assert_eq!(
            check(json!({"images": {"nginx:1.27": bad}})),
            err(&format!(
                "images[\"nginx:1.27\"]: {bad:?} is not a digest (expected \"sha256:\" and 64 lower-case hex characters)"
            ))
        );
    }
    assert_eq!(
        check(json!({"images": {"nginx:1.27": NGINX, "docker.io/library/nginx:1.27": OTHER}})),
        err(&format!(
            "images: \"docker.io/library/nginx:1.27\" and \"nginx:1.27\" both name docker.io/library/nginx:1.27 but map it to different digests ({OTHER} and {NGINX})"
        ))
    );
    assert_eq!(
        check(json!({"images": {"nginx:1.27": NGINX, "docker.io/library/nginx:1.27": NGINX}})),
        Ok(())
    );
    assert_eq!(
        check(json!({"image": {}})),
        err(
            "invalid settings: unknown field `image`, expected one of `images`, `denyUnpinned`, `exemptImages` at line 1 column 8"
        )
    );
}

#[test]
fn mutates_only() {
    assert_eq!(
        testing::validate::<ImageDigests>(&review("CREATE", one("nginx")), &settings()),
        Err("policy image-digests does not support validate".to_string())
    );
    let m = ImageDigests::METADATA;
    assert_eq!((m.validates, m.mutates), (false, true));
}

#[test]
fn exempt_images_are_neither_pinned_nor_denied() {
    let mut exempting = strict();
    exempting["exemptImages"] = json!(["registry.example.com/dev/", "nginx"]);
    let object = pod(json!({"containers": [
        {"name": "app", "image": "registry.example.com/dev/app:main"},
        {"name": "web", "image": "nginx:1.27"}
    ]}));
    assert_eq!(mutate_with(object, &exempting), Mutation::unchanged());
    let unpinned = mutate_with(one("redis:7"), &exempting);
    assert!(
        !unpinned.verdict.allowed,
        "an image outside the exemption is still denied"
    );
}
