use super::*;
use serde_json::json;
use std::path::{Path, PathBuf};

/// The shared fixture corpus, read in place (never copied into the repo).
fn corpus(relative: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/corpus")).join(relative)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Parses what is under `request` of a review envelope, as the host
/// passes it.
fn request_of(envelope: &Value) -> Request {
    Request::from_json(&envelope["request"].to_string()).unwrap()
}

fn apiserver(name: &str) -> Request {
    request_of(&read_json(&corpus(&format!("kube-apiserver-v1.36/{name}"))))
}

fn json_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            json_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "json") {
            found.push(path);
        }
    }
}

#[test]
fn minimal_request() {
    let r = Request::from_json("{}").unwrap();
    assert_eq!(r, Request::default());
    assert_eq!(r.operation, Operation::Other(String::new()));
    assert!(!r.dry_run);
}

#[test]
fn nulls_read_as_defaults() {
    let r = Request::from_json(
        r#"{"uid": null, "kind": null, "name": null, "operation": null, "userInfo": {"groups": null, "extra": null},
            "dryRun": null, "object": null, "oldObject": null, "options": null, "requestKind": null}"#,
    )
    .unwrap();
    assert_eq!(r, Request::default());
}

#[test]
fn operations() {
    for (text, op) in [
        ("CREATE", Operation::Create),
        ("UPDATE", Operation::Update),
        ("DELETE", Operation::Delete),
        ("CONNECT", Operation::Connect),
        ("PATCH", Operation::Other("PATCH".into())),
    ] {
        let r = Request::from_json(&json!({"operation": text}).to_string()).unwrap();
        assert_eq!(r.operation, op);
        assert_eq!(r.operation.to_string(), text);
    }
}

#[test]
fn delete_has_no_object() {
    let r = Request::from_json(
        r#"{"uid": "1", "operation": "DELETE", "object": null,
            "oldObject": {"kind": "Pod", "metadata": {"name": "p"}}, "namespace": "ns", "name": "p"}"#,
    )
    .unwrap();
    assert_eq!(r.operation, Operation::Delete);
    assert_eq!(r.object(), None);
    assert_eq!(r.old_object().and_then(crate::object::name), Some("p"));
}

#[test]
fn wrong_types_are_errors() {
    let err = Request::from_json(r#"{"dryRun": "yes"}"#).unwrap_err();
    assert!(
        err.starts_with("invalid admission request: invalid type"),
        "{err}"
    );
    assert!(Request::from_json("3").is_err());
    assert!(Request::from_json(r#""CREATE""#).is_err());
    assert!(Request::from_json("").is_err());
}

#[test]
fn apiserver_pod_create() {
    let r = apiserver("002-validate-CREATE-Pod-denied-pod.json");
    assert_eq!(r.uid.len(), 36);
    assert_eq!(r.operation, Operation::Create);
    assert_eq!(
        r.kind,
        GroupVersionKind {
            group: "".into(),
            version: "v1".into(),
            kind: "Pod".into()
        }
    );
    assert_eq!(
        r.resource,
        GroupVersionResource {
            group: "".into(),
            version: "v1".into(),
            resource: "pods".into()
        }
    );
    assert_eq!(r.request_kind.as_ref(), Some(&r.kind));
    assert_eq!(r.request_resource.as_ref(), Some(&r.resource));
    assert_eq!(
        (r.name.as_str(), r.namespace.as_str()),
        ("denied-pod", "hooktest")
    );
    assert_eq!(r.user_info.username, "kubernetes-admin");
    assert_eq!(
        r.user_info.groups,
        ["system:masters", "system:authenticated"]
    );
    assert_eq!(r.user_info.extra.len(), 1);
    assert!(!r.dry_run);
    assert_eq!(r.old_object(), None);
    assert_eq!(
        r.options().and_then(|o| o["kind"].as_str()),
        Some("CreateOptions")
    );
    let object = r.object().unwrap();
    assert_eq!(crate::object::label(object, "deny"), Some("true"));
    let images: Vec<_> = crate::pods::containers(object)
        .iter()
        .filter_map(|c| c.image())
        .collect();
    assert_eq!(images, ["registry.k8s.io/pause:3.10"]);
}

#[test]
fn apiserver_generate_name_has_no_name() {
    let r = apiserver("005-mutate-CREATE-Pod-gen-.json");
    assert_eq!(r.name, "");
    assert!(r.object().is_some());
}

#[test]
fn apiserver_dry_run() {
    assert!(apiserver("007-mutate-CREATE-Pod-dryrun-pod.json").dry_run);
    assert!(apiserver("008-validate-CREATE-Pod-dryrun-pod.json").dry_run);
}

#[test]
fn apiserver_ordinary_user() {
    assert_eq!(
        apiserver("010-validate-CREATE-Pod-alice-pod.json")
            .user_info
            .username,
        "alice"
    );
}

#[test]
fn apiserver_update_has_both_objects() {
    let r = apiserver("011-observe-UPDATE-Pod-allowed-pod.json");
    assert_eq!(r.operation, Operation::Update);
    assert!(r.object().is_some() && r.old_object().is_some());
}

#[test]
fn apiserver_deletes_have_only_old_object() {
    for name in [
        "012-observe-DELETE-Pod-alice-pod.json",
        "013-observe-DELETE-Pod-alice-pod.json",
        "014-observe-DELETE-Pod-alice-pod.json",
        "017-observe-DELETE-ConfigMap-cm1.json",
    ] {
        let r = apiserver(name);
        assert_eq!(r.operation, Operation::Delete, "{name}");
        assert_eq!(r.object(), None, "{name}");
        assert!(r.old_object().is_some(), "{name}");
        assert_eq!(
            r.options().and_then(|o| o["kind"].as_str()),
            Some("DeleteOptions")
        );
    }
}

#[test]
fn apiserver_every_review_parses() {
    let mut files = Vec::new();
    json_files(&corpus("kube-apiserver-v1.36"), &mut files);
    files.retain(|f| !f.components().any(|c| c.as_os_str() == "meta"));
    assert_eq!(files.len(), 19);
    for file in files {
        let envelope = read_json(&file);
        let r = request_of(&envelope);
        assert_eq!(
            r.uid,
            envelope["request"]["uid"].as_str().unwrap(),
            "{}",
            file.display()
        );
        assert_ne!(r.operation, Operation::default(), "{}", file.display());
    }
}

#[test]
fn apiserver_v1beta1_and_v1_read_alike() {
    let beta = apiserver("018-observe-CREATE-ConfigMap-cm-beta.json");
    let v1 = apiserver("019-observe-CREATE-ConfigMap-cm-beta.json");
    assert_eq!(beta.kind.kind, "ConfigMap");
    assert_eq!(beta.object, v1.object);
}

#[test]
fn pepr_requests() {
    let deployment = Request::from_json(
        &std::fs::read_to_string(corpus(
            "pepr/src/fixtures/data/admission-create-deployment.json",
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(deployment.kind.group, "apps");
    assert_eq!(deployment.user_info.username, "system:admin");
    let object = deployment.object().unwrap();
    let specs = crate::pods::pod_specs(object);
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].path, "/spec/template/spec");
    assert_eq!(crate::pods::containers(object)[0].image(), Some("nginx"));

    let delete = Request::from_json(
        &std::fs::read_to_string(corpus("pepr/src/fixtures/data/admission-delete-pod.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(delete.operation, Operation::Delete);
    assert_eq!(delete.object(), None);
    assert!(delete.old_object().is_some());

    let pod = Request::from_json(
        &std::fs::read_to_string(corpus("pepr/src/fixtures/data/admission-create-pod.json"))
            .unwrap(),
    )
    .unwrap();
    let object = pod.object().unwrap();
    let image = crate::pods::containers(object)[0].image().unwrap();
    let image = crate::image::ImageRef::parse(image).unwrap();
    assert_eq!(image.registry(), "127.0.0.1:31999");
    assert_eq!(image.repository(), "stefanprodan/podinfo-2985051089");
}

#[test]
fn pepr_every_request_parses() {
    let mut files = Vec::new();
    json_files(&corpus("pepr"), &mut files);
    assert_eq!(files.len(), 10);
    for file in files {
        let json = read_json(&file);
        // The servicemonitor files wrap the request in {uid, namespace, request}.
        let request = json.get("request").unwrap_or(&json);
        let r = Request::from_json(&request.to_string())
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(!r.uid.is_empty(), "{}", file.display());
        match r.operation {
            Operation::Delete => assert_eq!(r.object(), None, "{}", file.display()),
            Operation::Create | Operation::Update => {
                assert!(r.object().is_some(), "{}", file.display())
            }
            ref other => panic!("{}: {other}", file.display()),
        }
    }
}

#[test]
fn kubernetes_api_round_trip_fixtures_parse() {
    for version in ["HEAD", "v1.33.0", "v1.34.0", "v1.35.0", "v1.36.0"] {
        for api in ["v1", "v1beta1"] {
            let file = corpus(&format!(
                "kubernetes-api/testdata/{version}/admission.k8s.io.{api}.AdmissionReview.json"
            ));
            let r = request_of(&read_json(&file));
            assert_eq!(r.uid, "uidValue", "{}", file.display());
            assert_eq!(r.operation, Operation::Other("operationValue".into()));
            assert_eq!(r.sub_resource, "subResourceValue");
            assert_eq!(
                r.request_sub_resource.as_deref(),
                Some("requestSubResourceValue")
            );
            assert_eq!(r.user_info.extra["extraKey"], ["extraValue"]);
            assert!(r.dry_run);
            assert!(r.object().is_some() && r.old_object().is_some() && r.options().is_some());
        }
    }
}

#[test]
fn kubewarden_requests_parse() {
    let mut files = Vec::new();
    json_files(&corpus("kubewarden-policies"), &mut files);
    json_files(&corpus("kubewarden-controller"), &mut files);
    let mut parsed = 0;
    for file in files {
        let json = read_json(&file);
        // Envelopes and bare requests; kubewarden's "raw" requests (no
        // uid, arbitrary fields) are not AdmissionRequests.
        let request = json.get("request").unwrap_or(&json);
        if request.get("uid").is_none() || request.get("operation").is_none() {
            continue;
        }
        Request::from_json(&request.to_string())
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        parsed += 1;
    }
    assert!(parsed > 150, "only {parsed} requests found");
}
