//! Third-party reviews from `<repo>/../shared/corpus` (read in place):
//! what kube-apiserver v1.36 really sends, and kubewarden's fixtures.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use portcullis_e2e::{Json, Proto, Server, check_answer, corpus_dir, read_json, send, with_shared};

fn json_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.is_file() && p.extension().is_some_and(|e| e == "json"));
    files.sort();
    Ok(files)
}

/// The captured webhook path, mapped onto ours: the capture's `/mutate` and
/// `/validate` are ours; its `/observe` hook was a validating webhook that
/// only watched, so it goes to `/validate`. The query (`?timeout=5s`) is kept.
fn our_path(captured: &str) -> Result<String> {
    let (path, query) = captured.split_once('?').unwrap_or((captured, ""));
    let ours = match path {
        "/mutate" => "/mutate",
        "/validate" | "/observe" => "/validate",
        other => bail!("unexpected captured path {other}"),
    };
    Ok(if query.is_empty() {
        ours.to_owned()
    } else {
        format!("{ours}?{query}")
    })
}

/// Posts the review exactly as captured (body bytes and the API server's
/// headers, except Accept-Encoding: this client does not decompress).
fn post_captured(
    s: &Server,
    proto: Proto,
    path: &str,
    body: &[u8],
    meta: &Json,
) -> Result<portcullis_e2e::Reply> {
    let mut req = s.client(proto).post(s.url(path)).body(body.to_vec());
    if let Some(headers) = meta["headers"].as_object() {
        for (name, value) in headers {
            let skip = ["host", "content-length", "accept-encoding"];
            if skip.contains(&name.to_lowercase().as_str()) {
                continue;
            }
            if let Some(v) = value.as_str() {
                req = req.header(name.as_str(), v);
            }
        }
    }
    send(req)
}

fn labels_after(answer: &portcullis_e2e::Answer) -> Result<Json> {
    Ok(answer.patched_object()?["metadata"]["labels"].clone())
}

/// Checks one captured review; `Ok(summary)` for the report.
fn check_apiserver_review(s: &Server, file: &Path, proto: Proto) -> Result<String> {
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("?")
        .to_owned();
    let meta_path = file
        .parent()
        .context("corpus file has no parent")?
        .join("meta")
        .join(name.replace(".json", ".meta.json"));
    let meta = read_json(&meta_path)?;
    let captured = meta["path"].as_str().context("meta has no path")?;
    let path = our_path(captured)?;
    let body = std::fs::read(file)?;
    let review: Json = serde_json::from_slice(&body)?;
    let reply = post_captured(s, proto, &path, &body, &meta)?;
    let answer = check_answer(&review, &reply)?;
    let request = &review["request"];
    let is_pod = request["resource"]["resource"] == "pods";
    let op = request["operation"].as_str().unwrap_or("");
    let validating = path.starts_with("/validate");
    if validating {
        ensure!(
            answer.patch()?.is_none(),
            "/validate answered with a patch\n{answer}"
        );
    }
    if is_pod && op == "CREATE" {
        if validating {
            // None of the captured pods has a `team` label.
            ensure!(
                !answer.allowed(),
                "pod without a team label allowed\n{answer}"
            );
            let msg = answer.message();
            ensure!(
                msg.starts_with("required-labels: "),
                "unexpected denial: {msg:?}"
            );
            ensure!(
                msg.contains("team"),
                "denial does not name the team label: {msg:?}"
            );
            ensure!(
                !msg.contains("allowed-images"),
                "registry.k8s.io image denied: {msg:?}"
            );
        } else {
            ensure!(answer.allowed(), "mutate denied a pod\n{answer}");
            let labels = labels_after(&answer)?;
            ensure!(
                labels["portcullis.dev/managed"] == "true",
                "pod not mutated\n{answer}"
            );
            for (k, v) in request["object"]["metadata"]["labels"]
                .as_object()
                .into_iter()
                .flatten()
            {
                ensure!(labels[k] == *v, "existing label {k} changed\n{answer}");
            }
        }
    }
    Ok(format!(
        "{name} -> POST {path}: allowed={} patch={}",
        answer.allowed(),
        answer.patch()?.is_some()
    ))
}

#[test]
fn kube_apiserver_v1_36_reviews_are_answered() {
    with_shared(|s| {
        let dir = corpus_dir().join("kube-apiserver-v1.36");
        let files = json_files(&dir)?;
        ensure!(
            files.len() >= 19,
            "expected 19 captured reviews in {}, found {}",
            dir.display(),
            files.len()
        );
        let mut failures = Vec::new();
        let mut summary = Vec::new();
        for file in &files {
            for proto in Proto::ALL {
                match check_apiserver_review(s, file, proto) {
                    Ok(line) => summary.push(format!("{line} ({proto:?})")),
                    Err(e) => failures.push(format!("{} ({proto:?}): {e:#}", file.display())),
                }
            }
        }
        eprintln!("{}", summary.join("\n"));
        ensure!(
            failures.is_empty(),
            "{} of {} captured reviews failed:\n\n{}",
            failures.len(),
            files.len() * 2,
            failures.join("\n\n")
        );
        Ok(())
    });
}

#[test]
fn kubewarden_policy_server_fixtures_are_answered() {
    with_shared(|s| {
        let dir = corpus_dir().join("kubewarden-controller/crates/policy-server/tests/data");
        let files = json_files(&dir)?;
        ensure!(!files.is_empty(), "no fixtures in {}", dir.display());
        let mut failures = Vec::new();
        let mut answered = 0;
        for file in &files {
            let check = || -> Result<()> {
                let body = std::fs::read(file)?;
                let review: Json = serde_json::from_slice(&body)?;
                let reply = s.post(Proto::H2, "/validate", Some("application/json"), body)?;
                if review["request"]["uid"].is_string() {
                    check_answer(&review, &reply)?;
                } else {
                    // raw_review.json: `{"request": {user, action, resource}}`,
                    // no uid: not an AdmissionReview we can answer.
                    ensure!(
                        reply.status == 422,
                        "request without uid: expected 422, got\n{reply}"
                    );
                }
                Ok(())
            };
            match check() {
                Ok(()) => answered += 1,
                Err(e) => failures.push(format!("{}: {e:#}", file.display())),
            }
        }
        ensure!(
            failures.is_empty(),
            "{} of {} fixtures failed:\n\n{}",
            failures.len(),
            answered + failures.len(),
            failures.join("\n\n")
        );
        Ok(())
    });
}

fn find_json(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            find_json(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
    Ok(())
}

/// pepr's AdmissionRequests captured from a real cluster (bare requests; the
/// servicemonitor files wrap one in `{uid, namespace, request}`), put in a
/// v1 envelope: CREATE/UPDATE/DELETE of pods, deployments, clusterroles and
/// a CRD, through both chains.
#[test]
fn pepr_cluster_requests_are_answered() {
    with_shared(|s| {
        let mut files = Vec::new();
        find_json(&corpus_dir().join("pepr"), &mut files)?;
        files.sort();
        ensure!(
            files.len() >= 10,
            "expected 10 pepr requests, found {}",
            files.len()
        );
        let mut failures = Vec::new();
        for file in &files {
            let check = || -> Result<()> {
                let data = read_json(file)?;
                let request = data.get("request").cloned().unwrap_or(data);
                let review = serde_json::json!({
                    "apiVersion": "admission.k8s.io/v1",
                    "kind": "AdmissionReview",
                    "request": request,
                });
                let mutated = s.review("/mutate", &review)?;
                ensure!(mutated.allowed(), "/mutate denied\n{mutated}");
                let validated = s.review("/validate", &review)?;
                ensure!(
                    validated.patch()?.is_none(),
                    "/validate patched\n{validated}"
                );
                let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name == "admission-create-pod.json" {
                    // An image from a registry with a port, not allowed.
                    let msg = validated.message();
                    ensure!(
                        !validated.allowed(),
                        "pod with a disallowed image allowed\n{validated}"
                    );
                    ensure!(
                        msg.contains(
                            r#"uses image "127.0.0.1:31999/stefanprodan/podinfo-2985051089:6.1.6""#
                        ),
                        "denial does not name the image: {msg:?}"
                    );
                }
                Ok(())
            };
            if let Err(e) = check() {
                failures.push(format!("{}: {e:#}", file.display()));
            }
        }
        ensure!(
            failures.is_empty(),
            "{} of {} pepr requests failed:\n\n{}",
            failures.len(),
            files.len(),
            failures.join("\n\n")
        );
        Ok(())
    });
}
