//! The plural rules against every AdmissionRequest in the third-party
//! corpus (`../shared/corpus`): requests captured from real API servers
//! and other projects' fixtures, which name each kind's resource as the
//! API server does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use portcullis_kube::review::resource_of;
use serde_json::Value;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus")
}

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            json_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "json") {
            out.push(path);
        }
    }
}

/// The AdmissionRequest in a file: under `request` (an AdmissionReview, or
/// a wrapper around one) or the whole document (a bare request).
fn request_of(document: &Value) -> Option<&Value> {
    let candidate = document.get("request").unwrap_or(document);
    (candidate["kind"]["kind"].is_string() && candidate["resource"]["resource"].is_string())
        .then_some(candidate)
}

#[test]
fn every_kind_in_the_corpus_is_served_as_the_resource_the_api_server_names() {
    let mut files = Vec::new();
    json_files(&corpus(), &mut files);
    // kind -> (resource, a file naming it)
    let mut seen: BTreeMap<String, (String, PathBuf)> = BTreeMap::new();
    for file in &files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        let Ok(document) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let Some(request) = request_of(&document) else {
            continue;
        };
        // A subresource's kind is not its resource's (`Scale` of
        // `deployments`); generated fixtures carry placeholders.
        let sub_resource = request["subResource"].as_str().unwrap_or_default();
        let kind = request["kind"]["kind"].as_str().unwrap_or_default();
        let resource = request["resource"]["resource"].as_str().unwrap_or_default();
        if !sub_resource.is_empty() || kind.ends_with("Value") || resource.ends_with("Value") {
            continue;
        }
        seen.insert(kind.to_string(), (resource.to_string(), file.clone()));
    }
    assert!(
        seen.len() >= 8,
        "expected requests of at least 8 kinds in {}, found {:?}",
        corpus().display(),
        seen.keys().collect::<Vec<_>>()
    );
    let wrong: Vec<String> = seen
        .iter()
        .filter(|(kind, (resource, _))| resource_of(kind) != *resource)
        .map(|(kind, (resource, file))| {
            format!(
                "{kind}: the API server says {resource}, resource_of says {} ({})",
                resource_of(kind),
                file.display()
            )
        })
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
    eprintln!("checked kinds: {:?}", seen.keys().collect::<Vec<_>>());
}
