//! Policy behaviour through the real server: the validate and mutate chains,
//! per-policy paths, matching, DELETE, dryRun, v1beta1 and workloads.
//!
//! All tests share one server with the standard config (see
//! `portcullis_e2e::write_default_config`).

use anyhow::{Result, ensure};
use portcullis_e2e::{Answer, Json, Proto, fixture, json, with_object, with_shared, with_uid};

const MANAGED: &str = "portcullis.dev/managed";
const OWNER: &str = "portcullis.dev/owner";

fn labels(object: &Json) -> &Json {
    &object["metadata"]["labels"]
}

fn annotations(object: &Json) -> &Json {
    &object["metadata"]["annotations"]
}

fn ensure_allowed(a: &Answer, what: &str) -> Result<()> {
    ensure!(a.allowed(), "{what}: expected allowed: true\n{a}");
    ensure!(
        a.message().is_empty(),
        "{what}: an allowed answer with a status message\n{a}"
    );
    Ok(())
}

fn ensure_denied(a: &Answer, what: &str) -> Result<()> {
    ensure!(!a.allowed(), "{what}: expected allowed: false\n{a}");
    ensure!(
        a.code() == Some(403),
        "{what}: expected status.code 403, got {:?}\n{a}",
        a.code()
    );
    Ok(())
}

fn ensure_no_patch(a: &Answer, what: &str) -> Result<()> {
    ensure!(a.patch()?.is_none(), "{what}: expected no patch\n{a}");
    Ok(())
}

#[test]
fn allowed_pod_is_allowed_over_both_http_versions() {
    with_shared(|s| {
        let review = fixture("pod-allowed.json")?;
        for proto in Proto::ALL {
            let a = s.review_over(proto, "/validate", &review)?;
            ensure_allowed(&a, "allowed pod on /validate")?;
            ensure_no_patch(&a, "/validate")?;
        }
        Ok(())
    });
}

#[test]
fn short_image_name_is_normalized_to_docker_hub() {
    // `nginx` is `docker.io/library/nginx:latest`, allowed by the pattern
    // `docker.io/library/nginx`.
    with_shared(|s| {
        let a = s.review("/validate", &fixture("pod-nginx.json")?)?;
        ensure_allowed(&a, "pod with image `nginx`")
    });
}

#[test]
fn denied_pod_names_every_offending_container() {
    with_shared(|s| {
        let a = s.review("/validate", &fixture("pod-denied.json")?)?;
        ensure_denied(&a, "pod with disallowed images")?;
        let msg = a.message();
        ensure!(
            msg.starts_with("allowed-images: "),
            "message not prefixed by the policy name: {msg:?}"
        );
        for expected in [
            r#"container "app" uses image "evil.io/x:1""#,
            r#""setup" uses image "quay.io/bad/y:2""#,
            r#""debug" uses image "evil.io/debug:3""#,
        ] {
            ensure!(
                msg.contains(expected),
                "message lacks {expected:?}: {msg:?}"
            );
        }
        ensure!(
            !msg.contains(r#""ok""#),
            "message names the allowed container: {msg:?}"
        );
        ensure!(
            !msg.contains("required-labels"),
            "required-labels denied a well-labelled pod: {msg:?}"
        );
        Ok(())
    });
}

#[test]
fn required_labels_denies_missing_and_mismatched_labels() {
    with_shared(|s| {
        let a = s.review("/validate", &fixture("pod-bad-labels.json")?)?;
        ensure_denied(&a, "pod with bad labels")?;
        let msg = a.message();
        ensure!(
            msg.starts_with("required-labels: "),
            "message not prefixed by the policy name: {msg:?}"
        );
        // One missing key: the singular form, naming it.
        ensure!(
            msg.contains("missing required label: app;"),
            "message lacks the missing label: {msg:?}"
        );
        ensure!(
            msg.contains("app"),
            "message does not name the missing label app: {msg:?}"
        );
        let mismatch = r#"label "team" has value "Bad_Team", which does not match ^[a-z]+$"#;
        ensure!(
            msg.contains(mismatch),
            "message lacks {mismatch:?}: {msg:?}"
        );
        ensure!(
            !msg.contains("allowed-images"),
            "allowed-images denied allowed images: {msg:?}"
        );
        Ok(())
    });
}

#[test]
fn denials_of_several_policies_are_joined_in_config_order() {
    with_shared(|s| {
        let a = s.review("/validate", &fixture("pod-both-bad.json")?)?;
        ensure_denied(&a, "pod with a bad image and no labels")?;
        let msg = a.message();
        let images = msg.find("allowed-images: ");
        let labels = msg.find("; required-labels: ");
        ensure!(
            matches!((images, labels), (Some(i), Some(l)) if i == 0 && l > i),
            "expected \"allowed-images: ...; required-labels: ...\", got {msg:?}"
        );
        ensure!(
            msg.contains(r#"container "app" uses image "evil.io/x:1""#),
            "{msg:?}"
        );
        ensure!(
            msg.contains("missing required labels: app, team"),
            "{msg:?}"
        );
        Ok(())
    });
}

#[test]
fn mutated_pod_gets_defaults_without_overwriting() {
    with_shared(|s| {
        let review = fixture("pod-mutate.json")?;
        let original = review["request"]["object"].clone();
        let a = s.review("/mutate", &review)?;
        ensure_allowed(&a, "pod on /mutate")?;
        ensure!(a.patch()?.is_some(), "expected a patch\n{a}");
        let mutated = a.patched_object()?;
        let l = labels(&mutated);
        ensure!(l[MANAGED] == "true", "label {MANAGED} not added: {l}");
        for (k, v) in original["metadata"]["labels"]
            .as_object()
            .into_iter()
            .flatten()
        {
            ensure!(l[k] == *v, "existing label {k} changed: {l}");
        }
        let an = annotations(&mutated);
        ensure!(
            an[OWNER] == "someone-else",
            "existing annotation {OWNER} overwritten: {an}"
        );
        ensure!(an["keep"] == "me", "existing annotation keep changed: {an}");
        // Nothing but labels and annotations changed.
        let mut rest = mutated.clone();
        let mut orig_rest = original.clone();
        for o in [&mut rest, &mut orig_rest] {
            if let Some(md) = o["metadata"].as_object_mut() {
                md.remove("labels");
                md.remove("annotations");
            }
        }
        ensure!(
            rest == orig_rest,
            "the patch changed more than labels/annotations\n{a}"
        );

        // Idempotent: the mutated object needs no further patch.
        let again = with_object(
            &review,
            mutated.clone(),
            "e2e00006-0000-4000-8000-0000000000a6",
        );
        let b = s.review("/mutate", &again)?;
        ensure_allowed(&b, "mutated pod on /mutate")?;
        ensure_no_patch(&b, "second /mutate of the mutated object")?;
        Ok(())
    });
}

#[test]
fn mutation_creates_missing_label_and_annotation_maps() {
    with_shared(|s| {
        let review = fixture("pod-unlabelled.json")?;
        let a = s.review("/mutate", &review)?;
        ensure_allowed(&a, "unlabelled pod on /mutate")?;
        let mutated = a.patched_object()?;
        ensure!(
            labels(&mutated) == &json!({MANAGED: "true"}),
            "labels: {}\n{a}",
            labels(&mutated)
        );
        ensure!(
            annotations(&mutated) == &json!({OWNER: "platform"}),
            "annotations: {}\n{a}",
            annotations(&mutated)
        );
        let again = with_object(&review, mutated, "e2e00007-0000-4000-8000-0000000000a7");
        ensure_no_patch(&s.review("/mutate", &again)?, "second /mutate")?;
        Ok(())
    });
}

#[test]
fn mutate_runs_only_mutating_policies() {
    // A pod that validation denies is still allowed (and patched) by /mutate.
    with_shared(|s| {
        let a = s.review("/mutate", &fixture("pod-both-bad.json")?)?;
        ensure_allowed(&a, "badly imaged, unlabelled pod on /mutate")?;
        let mutated = a.patched_object()?;
        ensure!(labels(&mutated)[MANAGED] == "true", "not mutated\n{a}");
        ensure!(
            labels(&mutated)["tier"] == "web",
            "existing label lost\n{a}"
        );
        Ok(())
    });
}

#[test]
fn delete_is_allowed_and_never_patched() {
    with_shared(|s| {
        let review = fixture("pod-delete.json")?;
        ensure!(
            review["request"]["object"].is_null(),
            "fixture: DELETE has no object"
        );
        for path in ["/mutate", "/validate", "/mutate/default-labels"] {
            let a = s.review(path, &review)?;
            ensure_allowed(&a, &format!("DELETE on {path}"))?;
            ensure_no_patch(&a, &format!("DELETE on {path}"))?;
        }
        Ok(())
    });
}

#[test]
fn update_is_validated() {
    with_shared(|s| {
        let a = s.review("/validate", &fixture("pod-update-denied.json")?)?;
        ensure_denied(&a, "UPDATE to a disallowed image")?;
        ensure!(
            a.message()
                .contains(r#"container "app" uses image "evil.io/x:1""#),
            "{a}"
        );
        Ok(())
    });
}

#[test]
fn dry_run_is_answered() {
    with_shared(|s| {
        let review = fixture("pod-dryrun.json")?;
        ensure!(review["request"]["dryRun"] == true, "fixture: dryRun");
        let v = s.review("/validate", &review)?;
        ensure_allowed(&v, "dryRun pod on /validate")?;
        let m = s.review("/mutate", &review)?;
        ensure_allowed(&m, "dryRun pod on /mutate")?;
        ensure!(
            m.patched_object()?["metadata"]["labels"][MANAGED] == "true",
            "dryRun pod not mutated\n{m}"
        );

        let mut denied = with_uid(
            &fixture("pod-denied.json")?,
            "e2e00003-0000-4000-8000-0000000000d3",
        );
        denied["request"]["dryRun"] = json!(true);
        ensure_denied(
            &s.review("/validate", &denied)?,
            "dryRun pod with disallowed images",
        )?;
        Ok(())
    });
}

#[test]
fn v1beta1_review_is_answered_as_v1beta1() {
    with_shared(|s| {
        let review = fixture("pod-v1beta1.json")?;
        ensure!(
            review["apiVersion"] == "admission.k8s.io/v1beta1",
            "fixture: v1beta1"
        );
        // check_answer asserts apiVersion, kind and uid.
        let v = s.review("/validate", &review)?;
        ensure_allowed(&v, "v1beta1 on /validate")?;
        let m = s.review("/mutate", &review)?;
        ensure_allowed(&m, "v1beta1 on /mutate")?;
        ensure!(
            m.patched_object()?["metadata"]["labels"][MANAGED] == "true",
            "v1beta1 pod not mutated\n{m}"
        );

        let mut denied = with_uid(
            &fixture("pod-denied.json")?,
            "e2e00003-0000-4000-8000-0000000000b3",
        );
        denied["apiVersion"] = json!("admission.k8s.io/v1beta1");
        let d = s.review("/validate", &denied)?;
        ensure_denied(&d, "v1beta1 pod with disallowed images")?;
        Ok(())
    });
}

#[test]
fn deployment_pod_template_is_checked() {
    with_shared(|s| {
        let ok = s.review("/validate", &fixture("deployment-allowed.json")?)?;
        ensure_allowed(&ok, "deployment with allowed images")?;
        let bad = s.review("/validate", &fixture("deployment-denied.json")?)?;
        ensure_denied(&bad, "deployment with a disallowed image")?;
        let msg = bad.message();
        ensure!(msg.starts_with("allowed-images: "), "{msg:?}");
        ensure!(
            msg.contains(r#"container "app" uses image "evil.io/x:1""#),
            "{msg:?}"
        );
        ensure!(
            !msg.contains(r#"container "setup""#),
            "allowed init container named: {msg:?}"
        );
        Ok(())
    });
}

#[test]
fn excluded_namespace_skips_allowed_images() {
    with_shared(|s| {
        let mut review = with_uid(
            &fixture("pod-denied.json")?,
            "e2e00003-0000-4000-8000-0000000000c3",
        );
        review["request"]["namespace"] = json!("kube-system");
        review["request"]["object"]["metadata"]["namespace"] = json!("kube-system");
        let a = s.review("/validate", &review)?;
        ensure_allowed(&a, "disallowed images in kube-system (excluded)")?;
        Ok(())
    });
}

#[test]
fn per_policy_paths_run_only_that_policy() {
    with_shared(|s| {
        let both_bad = fixture("pod-both-bad.json")?;

        let a = s.review("/validate/allowed-images", &both_bad)?;
        ensure_denied(&a, "/validate/allowed-images")?;
        ensure!(a.message().starts_with("allowed-images: "), "{a}");
        ensure!(
            !a.message().contains("required-labels"),
            "other policy ran:\n{a}"
        );

        let r = s.review("/validate/required-labels", &both_bad)?;
        ensure_denied(&r, "/validate/required-labels")?;
        ensure!(r.message().starts_with("required-labels: "), "{r}");
        ensure!(
            !r.message().contains("allowed-images"),
            "other policy ran:\n{r}"
        );

        let ok = s.review("/validate/required-labels", &fixture("pod-denied.json")?)?;
        ensure_allowed(&ok, "well-labelled pod on /validate/required-labels")?;

        let m = s.review("/mutate/default-labels", &fixture("pod-unlabelled.json")?)?;
        ensure_allowed(&m, "/mutate/default-labels")?;
        let mutated = m.patched_object()?;
        ensure!(labels(&mutated)[MANAGED] == "true", "not mutated\n{m}");

        for path in ["/validate/no-such-policy", "/mutate/no-such-policy"] {
            let reply = s.post(
                Proto::H2,
                path,
                Some("application/json"),
                serde_json::to_vec(&both_bad)?,
            )?;
            ensure!(
                reply.status == 404,
                "POST {path}: expected 404, got\n{reply}"
            );
            ensure!(
                reply.text().contains("no-such-policy"),
                "POST {path}: 404 body does not name the policy\n{reply}"
            );
        }
        Ok(())
    });
}

#[test]
fn generation_is_stable_across_requests() {
    // One server, no reload: every answer carries the same generation.
    with_shared(|s| {
        let a = s.review("/validate", &fixture("pod-allowed.json")?)?;
        let b = s.review("/mutate", &fixture("pod-allowed.json")?)?;
        let ga = &a.audit_annotations()[portcullis_e2e::GENERATION_ANNOTATION];
        let gb = &b.audit_annotations()[portcullis_e2e::GENERATION_ANNOTATION];
        ensure!(
            ga == gb,
            "generation differs between requests: {ga} vs {gb}"
        );
        Ok(())
    });
}
