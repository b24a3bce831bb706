//! Policy modes, matching and the mutate chain on a second config:
//! `allowed-images` in `warn` mode, `required-labels` in `audit` mode only
//! for namespaces it includes, and one module loaded twice as two mutating
//! policies with different settings.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Result, ensure};
use portcullis_e2e::{GENERATION_ANNOTATION, Paths, Server, fixture, json, with_uid, yaml_str};

fn write_modes_config(paths: &Paths, dir: &Path) -> Result<PathBuf> {
    let yaml = format!(
        r#"defaults: {{ timeoutMs: 1000, memoryLimit: 32Mi, onError: deny, mode: enforce }}
policies:
  - name: allowed-images
    module: {allowed}
    mode: warn
    settings: {{ allowed: ["registry.k8s.io/"] }}
  - name: required-labels
    module: {required}
    mode: audit
    match:
      namespaces: {{ include: [audited] }}
    settings: {{ labels: {{ app: null, team: "^[a-z]+$" }} }}
  - name: defaults-first
    module: {defaults}
    settings: {{ labels: {{ "portcullis.dev/managed": "first", "order": "first" }} }}
  - name: defaults-second
    module: {defaults}
    settings:
      labels: {{ "portcullis.dev/managed": "second", "second": "yes" }}
      annotations: {{ "note": "second" }}
"#,
        allowed = yaml_str(paths.allowed_images.to_str().unwrap_or_default()),
        required = yaml_str(paths.required_labels.to_str().unwrap_or_default()),
        defaults = yaml_str(paths.default_labels.to_str().unwrap_or_default()),
    );
    let path = dir.join("modes.yaml");
    std::fs::write(&path, yaml)?;
    Ok(path)
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
    match SERVER
        .get_or_init(|| Server::in_process(write_modes_config).map_err(|e| format!("{e:?}")))
    {
        Ok(s) => s,
        Err(e) => panic!("could not start the server:\n{e}"),
    }
}

#[test]
fn warn_mode_allows_and_warns() {
    server().test(|s| {
        let a = s.review("/validate", &fixture("pod-denied.json")?)?;
        ensure!(a.allowed(), "warn mode denied:\n{a}");
        let warnings = a.warnings();
        ensure!(
            warnings
                .iter()
                .any(|w| w.contains(r#"container "app" uses image "evil.io/x:1""#)),
            "no warning names the offending container: {warnings:?}\n{a}"
        );
        ensure!(
            warnings.iter().any(|w| w.contains("quay.io/bad/y:2")),
            "no warning names the init container's image: {warnings:?}\n{a}"
        );
        Ok(())
    });
}

#[test]
fn warn_mode_has_no_warning_for_a_good_pod() {
    server().test(|s| {
        let mut review = fixture("pod-allowed.json")?;
        // Only registry.k8s.io/ is allowed in this config.
        review["request"]["object"]["spec"]["containers"] =
            json!([{"name": "app", "image": "registry.k8s.io/pause:3.10"}]);
        let a = s.review("/validate", &review)?;
        ensure!(a.allowed(), "{a}");
        ensure!(a.warnings().is_empty(), "unexpected warnings\n{a}");
        Ok(())
    });
}

#[test]
fn audit_mode_allows_and_records_only_where_included() {
    server().test(|s| {
        // In the included namespace, required-labels (audit) runs: allowed,
        // with its finding in auditAnnotations.
        let mut audited = with_uid(&fixture("pod-bad-labels.json")?, "e2e00004-0000-4000-8000-0000000000e4");
        audited["request"]["namespace"] = json!("audited");
        audited["request"]["object"]["metadata"]["namespace"] = json!("audited");
        let a = s.review("/validate", &audited)?;
        ensure!(a.allowed(), "audit mode denied:\n{a}");
        // Outside it, required-labels does not run at all.
        let b = s.review("/validate", &fixture("pod-bad-labels.json")?)?;
        ensure!(b.allowed(), "{b}");
        let outside = b.audit_annotations();
        let inside = a.audit_annotations();
        let recorded: Vec<&String> = inside
            .keys()
            .filter(|k| k.as_str() != GENERATION_ANNOTATION && !outside.contains_key(k.as_str()))
            .collect();
        ensure!(
            !recorded.is_empty(),
            "audit mode recorded nothing in auditAnnotations (or also outside the included namespace)\ninside:\n{a}\noutside:\n{b}"
        );
        Ok(())
    });
}

#[test]
fn mutating_policies_run_in_config_order_on_the_previous_output() {
    server().test(|s| {
        let review = fixture("pod-unlabelled.json")?;
        let a = s.review("/mutate", &review)?;
        ensure!(a.allowed(), "{a}");
        let mutated = a.patched_object()?;
        // defaults-first sets managed=first; defaults-second sees that and,
        // never overwriting, adds only what is still missing.
        ensure!(
            mutated["metadata"]["labels"]
                == json!({"portcullis.dev/managed": "first", "order": "first", "second": "yes"}),
            "labels after the chain: {}\n{a}",
            mutated["metadata"]["labels"]
        );
        ensure!(
            mutated["metadata"]["annotations"] == json!({"note": "second"}),
            "annotations after the chain: {}\n{a}",
            mutated["metadata"]["annotations"]
        );
        // One policy alone.
        let b = s.review("/mutate/defaults-second", &review)?;
        let alone = b.patched_object()?;
        ensure!(
            alone["metadata"]["labels"]["portcullis.dev/managed"] == "second",
            "/mutate/defaults-second ran another policy too\n{b}"
        );
        ensure!(alone["metadata"]["labels"].get("order").is_none(), "{b}");
        // The chain's output is a fixed point.
        let again =
            portcullis_e2e::with_object(&review, mutated, "e2e00007-0000-4000-8000-0000000000f7");
        let c = s.review("/mutate", &again)?;
        ensure!(
            c.patch()?.is_none(),
            "second pass through the chain patched again\n{c}"
        );
        Ok(())
    });
}
