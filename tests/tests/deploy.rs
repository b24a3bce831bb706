//! The deployment: `deploy/kubernetes` (base and overlays), the Helm chart
//! `deploy/helm/portcullis`, the Dockerfile, `deploy/external`.
//!
//! The kustomizations are rendered with `kubectl kustomize` from a copy of
//! `deploy/kubernetes` whose `base/policies/` is filled by the same script
//! `make deploy-render` uses, and the chart with `helm template` (helm from
//! `make test-apiserver`); every rendered object is parsed, and the
//! invariants the manifests promise are checked in every rendering, so an
//! overlay, the chart or a later edit cannot silently drop one. The base
//! and the chart are then installed into a real API server, phase by phase
//! as docs/deploy.md does, and a server acting as the chart's
//! ServiceAccount serves the library with the RBAC it was given.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use portcullis_e2e::kube::{TestCluster, helm, poll};
use portcullis_e2e::{
    CLI_TIMEOUT, Json, Server, fixtures_dir, json, path_str, paths, read_json, repo_root,
    review_of, run_cli,
};
use serde::Deserialize as _;

/// The namespaces no policy of the library judges.
const EXCLUDED: [&str; 3] = ["kube-system", "kube-node-lease", "portcullis"];
/// The resources the webhooks must send for the library: `(API group,
/// resource)`.
const WORKLOADS: [(&str, &str); 9] = [
    ("", "pods"),
    ("", "pods/ephemeralcontainers"),
    ("", "replicationcontrollers"),
    ("apps", "deployments"),
    ("apps", "statefulsets"),
    ("apps", "daemonsets"),
    ("apps", "replicasets"),
    ("batch", "jobs"),
    ("batch", "cronjobs"),
];
/// The standard library, by name: the order the servers run them in.
const LIBRARY: [&str; 5] = [
    "allowed-images",
    "container-defaults",
    "default-labels",
    "pod-security",
    "required-labels",
];
/// The UID and GID of the image's user and of the pods.
const UID: i64 = 65532;
/// Where everything namespaced is installed.
const NAMESPACE: &str = "portcullis";
/// The Helm release the chart is rendered as.
const RELEASE: &str = "portcullis";
const CHART: &str = "deploy/helm/portcullis";
/// The user the pods' token authenticates as.
const SERVICE_ACCOUNT: &str = "system:serviceaccount:portcullis:portcullis";
/// The service DNS names the API server may dial.
const SERVICE_NAMES: [&str; 2] = [
    "portcullis.portcullis.svc",
    "portcullis.portcullis.svc.cluster.local",
];
/// Where the kustomize base mounts the module ConfigMaps.
const MOUNTED_MODULES: &str = "/etc/portcullis/policies";
/// Where the image keeps the library (Dockerfile), which the chart names.
const IMAGE_MODULES: &str = "/usr/share/portcullis/policies";
/// The caBundle placeholder of `deploy/external/webhooks.yaml`.
const PLACEHOLDER: &str = "PORTCULLIS_CA_BUNDLE";
const OVERLAYS: [&str; 2] = ["cert-manager", "self-signed"];

// ---------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------

fn kubectl() -> Result<&'static str> {
    let ok = Command::new("kubectl")
        .args(["kustomize", "--help"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    ensure!(
        ok,
        "`kubectl kustomize` does not work: these tests need kubectl 1.27 or later \
         (it includes kustomize v5) on PATH; install kubectl"
    );
    Ok("kubectl")
}

/// Parses a multi-document YAML stream into JSON values (empty documents
/// dropped).
fn parse_documents(text: &str) -> Result<Vec<Json>> {
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = Json::deserialize(doc).with_context(|| format!("YAML document {i}"))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// The documents as one YAML stream.
fn to_yaml(docs: &[Json]) -> Result<String> {
    let text: Vec<String> = docs
        .iter()
        .map(serde_yaml_ng::to_string)
        .collect::<Result<_, _>>()?;
    Ok(text.join("---\n"))
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            // The git-ignored module directory is refilled below.
            if entry.file_name() != "policies" {
                copy_tree(&entry.path(), &target)?;
            }
        } else {
            fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// The base, every overlay and the chart (default values), rendered once
/// per test binary.
fn renders() -> Result<&'static BTreeMap<String, Vec<Json>>> {
    static RENDERS: OnceLock<Result<BTreeMap<String, Vec<Json>>, String>> = OnceLock::new();
    RENDERS
        .get_or_init(|| render_all().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
}

fn render_all() -> Result<BTreeMap<String, Vec<Json>>> {
    let kubectl = kubectl()?;
    let paths = paths()?;
    let dir = tempfile::tempdir()?;
    let tree = dir.path().join("kubernetes");
    copy_tree(&repo_root().join("deploy/kubernetes"), &tree)?;
    // The same step as `make deploy-render`.
    let out = Command::new("sh")
        .arg(tree.join("copy-policies.sh"))
        .arg(&paths.modules)
        .arg(tree.join("base/policies"))
        .output()?;
    ensure!(
        out.status.success(),
        "copy-policies.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut renders = BTreeMap::new();
    let targets = std::iter::once(("base".to_string(), tree.join("base"))).chain(
        OVERLAYS
            .iter()
            .map(|o| (o.to_string(), tree.join("overlays").join(o))),
    );
    for (name, path) in targets {
        let out = Command::new(kubectl).arg("kustomize").arg(&path).output()?;
        ensure!(
            out.status.success(),
            "kubectl kustomize {name} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).context("rendering is not UTF-8")?;
        let docs = parse_documents(&text).with_context(|| format!("parsing the {name} render"))?;
        ensure!(!docs.is_empty(), "{name} rendered nothing");
        renders.insert(name, docs);
    }
    renders.insert("helm".to_string(), helm_template(&[])?);
    Ok(renders)
}

/// `helm template portcullis deploy/helm/portcullis --namespace portcullis
/// --include-crds --set SET...`, parsed.
fn helm_template(sets: &[&str]) -> Result<Vec<Json>> {
    let helm = helm()?;
    let chart = repo_root().join(CHART);
    let mut args = vec![
        "template",
        RELEASE,
        path_str(&chart)?,
        "--namespace",
        NAMESPACE,
        "--include-crds",
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    let out = run_cli(&helm, &args, None, CLI_TIMEOUT)?;
    ensure!(
        out.code() == Some(0),
        "helm template {sets:?} failed\n{out}"
    );
    let docs = parse_documents(&out.stdout).context("parsing the chart's rendering")?;
    ensure!(!docs.is_empty(), "the chart rendered nothing");
    Ok(docs)
}

fn is_helm(render: &str) -> bool {
    render.starts_with("helm")
}

fn kind_of(doc: &Json) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}
fn name_of(doc: &Json) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}
fn phase_of(doc: &Json) -> &str {
    doc["metadata"]["labels"]["portcullis.dev/phase"]
        .as_str()
        .unwrap_or_default()
}

fn find<'a>(docs: &'a [Json], kind: &str, name: &str) -> Result<&'a Json> {
    let found: Vec<&Json> = docs
        .iter()
        .filter(|d| kind_of(d) == kind && name_of(d) == name)
        .collect();
    ensure!(found.len() == 1, "{} {kind}/{name} objects", found.len());
    Ok(found[0])
}

fn all_of<'a>(docs: &'a [Json], kind: &str) -> Vec<&'a Json> {
    docs.iter().filter(|d| kind_of(d) == kind).collect()
}

fn only<'a>(docs: &'a [Json], kind: &str) -> Result<&'a Json> {
    let found = all_of(docs, kind);
    ensure!(found.len() == 1, "{} {kind} objects, want 1", found.len());
    Ok(found[0])
}

fn strs(value: &Json) -> Vec<&str> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Json::as_str).collect())
        .unwrap_or_default()
}

/// Every render, with its name, for the invariants that hold in all.
fn each_render(check: impl Fn(&str, &[Json]) -> Result<()>) -> Result<()> {
    for (name, docs) in renders()? {
        check(name, docs).with_context(|| format!("in the {name} render"))?;
    }
    Ok(())
}

/// `matchLabels` (all of them) are among `labels`.
fn selects(match_labels: &Json, labels: &Json) -> Result<()> {
    let wanted = match_labels.as_object().context("matchLabels")?;
    ensure!(!wanted.is_empty(), "empty selector");
    for (k, v) in wanted {
        ensure!(labels[k] == *v, "label {k}={v} not on the pods ({labels})");
    }
    Ok(())
}

/// The flags `portcullis serve --help` lists.
fn serve_flags() -> Result<BTreeSet<String>> {
    let paths = paths()?;
    let out = run_cli(&paths.bin, &["serve", "--help"], None, CLI_TIMEOUT)?;
    ensure!(out.code() == Some(0), "serve --help\n{out}");
    let flags = flag_names(&out.stdout);
    ensure!(
        flags.contains("--config")
            && flags.contains("--tls-cert")
            && flags.contains("--cluster-policies")
            && flags.contains("--controller"),
        "{out}"
    );
    Ok(flags)
}

/// Every `--flag` in `text` (without `=value`).
fn flag_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| c.is_whitespace() || c == '[' || c == ',')
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| {
            let w = w.split('=').next().unwrap_or(w);
            w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
                .to_string()
        })
        .collect()
}

/// The value of `--name=value` or `--name value` in `args`.
fn flag_value<'a>(args: &[&'a str], name: &str) -> Option<&'a str> {
    let prefix = format!("{name}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if let Some(v) = a.strip_prefix(&prefix) {
            Some(v)
        } else if *a == name {
            args.get(i + 1).copied()
        } else {
            None
        }
    })
}

fn port_of(addr: &str) -> Result<i64> {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .with_context(|| format!("no port in {addr}"))
}

/// The Deployment's one container.
fn container(docs: &[Json]) -> Result<&Json> {
    let c = &only(docs, "Deployment")?["spec"]["template"]["spec"]["containers"][0];
    ensure!(c.is_object(), "no container");
    Ok(c)
}

fn args_of(docs: &[Json]) -> Result<Vec<&str>> {
    Ok(strs(&container(docs)?["args"]))
}

/// The volume mounted at `dir` in the Deployment's container.
fn volume_at<'a>(docs: &'a [Json], dir: &Path) -> Result<&'a Json> {
    let pod = &only(docs, "Deployment")?["spec"]["template"]["spec"];
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .and_then(|ms| {
            ms.iter()
                .find(|m| m["mountPath"].as_str().map(Path::new) == Some(dir))
        })
        .with_context(|| format!("nothing mounted at {}", dir.display()))?;
    ensure!(
        mount["subPath"].is_null(),
        "subPath mounts are never updated"
    );
    ensure!(mount["readOnly"] == true, "{mount}");
    pod["volumes"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == mount["name"]))
        .context("mount of an unknown volume")
}

/// The ConfigMaps a volume shows (a `configMap` volume, or a projected one
/// of ConfigMaps).
fn config_maps_of(volume: &Json) -> Result<Vec<&str>> {
    if let Some(name) = volume["configMap"]["name"].as_str() {
        ensure!(
            volume["configMap"]["items"].is_null(),
            "{name}: items would hide keys"
        );
        return Ok(vec![name]);
    }
    let sources = volume["projected"]["sources"]
        .as_array()
        .with_context(|| format!("neither a ConfigMap nor projected: {volume}"))?;
    sources
        .iter()
        .map(|source| {
            ensure!(
                source["configMap"]["items"].is_null(),
                "items would hide keys: {source}"
            );
            source["configMap"]["name"]
                .as_str()
                .with_context(|| format!("a source that is not a ConfigMap: {source}"))
        })
        .collect()
}

/// The files of the volume at `dir`: name -> bytes, from its ConfigMaps.
fn files_at(docs: &[Json], dir: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut files = BTreeMap::new();
    for name in config_maps_of(volume_at(docs, dir)?)? {
        let cm = find(docs, "ConfigMap", name)?;
        ensure!(
            cm["immutable"] != true,
            "{name} is immutable: updates cannot reach the pods"
        );
        let mut size = 0;
        if let Some(data) = cm["data"].as_object() {
            for (k, v) in data {
                let bytes = v.as_str().context("data value")?.as_bytes().to_vec();
                size += bytes.len();
                ensure!(files.insert(k.clone(), bytes).is_none(), "{k} twice");
            }
        }
        if let Some(data) = cm["binaryData"].as_object() {
            for (k, v) in data {
                let text: String = v
                    .as_str()
                    .context("binaryData value")?
                    .split_whitespace()
                    .collect();
                let bytes = BASE64
                    .decode(text)
                    .with_context(|| format!("{name}/{k} is not base64"))?;
                size += bytes.len();
                ensure!(files.insert(k.clone(), bytes).is_none(), "{k} twice");
            }
        }
        // The API server refuses ConfigMaps above 1 MiB.
        ensure!(size > 0 && size < 1 << 20, "ConfigMap {name}: {size} bytes");
    }
    Ok(files)
}

/// The server's config file, as the pods see it (`--config`).
fn config_file(docs: &[Json]) -> Result<Json> {
    let args = args_of(docs)?;
    let config = Path::new(flag_value(&args, "--config").context("--config")?);
    let files = files_at(docs, config.parent().context("--config has no directory")?)?;
    let file = config
        .file_name()
        .and_then(|f| f.to_str())
        .context("--config")?;
    let text = files
        .get(file)
        .with_context(|| format!("{file} is not in the config volume"))?;
    serde_yaml_ng::from_slice(text).with_context(|| format!("parsing {file}"))
}

/// The library's ClusterAdmissionPolicy objects, by name.
fn library_of(docs: &[Json]) -> BTreeMap<&str, &Json> {
    all_of(docs, "ClusterAdmissionPolicy")
        .into_iter()
        .map(|p| (name_of(p), p))
        .collect()
}

/// The file name of a policy's module.
fn module_file(policy: &Json) -> Result<&str> {
    let module = policy["spec"]["module"].as_str().context("no module")?;
    Path::new(module)
        .file_name()
        .and_then(|f| f.to_str())
        .with_context(|| format!("module {module}"))
}

/// The policies as a server with --cluster-policies sees them: config
/// entries (the spec and the object's name) in the order of their names,
/// with each module taken from `module_dir`.
fn library_config(docs: &[Json], module_dir: &Path) -> Result<Json> {
    let mut entries = Vec::new();
    for (name, policy) in library_of(docs) {
        let mut entry = policy["spec"].clone();
        let file = module_dir.join(module_file(policy)?);
        entry["module"] = json!(path_str(&file)?);
        entry["name"] = json!(name);
        entries.push(entry);
    }
    Ok(json!({ "policies": entries }))
}

/// Every `null` inside `value` (the API server drops them).
fn has_null(value: &Json) -> bool {
    match value {
        Json::Null => true,
        Json::Array(items) => items.iter().any(has_null),
        Json::Object(map) => map.values().any(has_null),
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// Every render
// ---------------------------------------------------------------------------

fn is_cluster_scoped(kind: &str) -> bool {
    matches!(
        kind,
        "Namespace"
            | "CustomResourceDefinition"
            | "ClusterRole"
            | "ClusterRoleBinding"
            | "ClusterAdmissionPolicy"
    )
}

/// The install phase of a kind (docs/deploy.md): the CRDs first, the
/// policies last, everything else with the server.
fn phase_for(kind: &str) -> &'static str {
    match kind {
        "CustomResourceDefinition" => "crds",
        "ClusterAdmissionPolicy" => "policies",
        _ => "server",
    }
}

#[test]
fn every_object_is_labelled_with_its_install_phase_and_namespaced() -> Result<()> {
    each_render(|render, docs| {
        for kind in [
            "ServiceAccount",
            "Deployment",
            "PodDisruptionBudget",
            "Service",
        ] {
            only(docs, kind)?;
        }
        if is_helm(render) {
            // `helm install --namespace portcullis --create-namespace`.
            ensure!(
                all_of(docs, "Namespace").is_empty(),
                "the chart makes a Namespace"
            );
        } else {
            ensure!(name_of(only(docs, "Namespace")?) == NAMESPACE);
        }
        // The controller writes the webhook configurations.
        for kind in [
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
        ] {
            ensure!(
                all_of(docs, kind).is_empty(),
                "a static {kind}: the controller writes it"
            );
        }
        for doc in docs {
            let (kind, name) = (kind_of(doc), name_of(doc));
            ensure!(!name.is_empty(), "an object without a name: {doc}");
            let want = phase_for(kind);
            ensure!(
                phase_of(doc) == want,
                "{kind}/{name}: phase label {:?}, want {want}",
                phase_of(doc)
            );
            let ns = &doc["metadata"]["namespace"];
            if is_cluster_scoped(kind) {
                ensure!(ns.is_null(), "{kind}/{name} has a namespace");
            } else {
                ensure!(ns == NAMESPACE, "{kind}/{name} in namespace {ns}");
            }
        }
        // The ServiceAccount mounts its token only where a pod asks.
        let sa = only(docs, "ServiceAccount")?;
        ensure!(sa["automountServiceAccountToken"] == false, "{sa}");
        Ok(())
    })
}

#[test]
fn the_crds_are_the_ones_in_deploy_kubernetes_crds() -> Result<()> {
    let dir = repo_root().join("deploy/kubernetes/crds");
    let mut want = BTreeMap::new();
    for entry in fs::read_dir(&dir)? {
        let path = entry?.path();
        let file = path
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or_default();
        if file.starts_with("portcullis.dev_") && file.ends_with(".yaml") {
            let doc: Json = serde_yaml_ng::from_str(&fs::read_to_string(&path)?)?;
            ensure!(phase_of(&doc) == "crds", "{file} has no phase label");
            want.insert(name_of(&doc).to_string(), doc);
        }
    }
    ensure!(
        want.keys().map(String::as_str).collect::<Vec<_>>()
            == [
                "admissionpolicies.portcullis.dev",
                "clusteradmissionpolicies.portcullis.dev"
            ],
        "{:?}",
        want.keys()
    );
    each_render(|render, docs| {
        let crds = all_of(docs, "CustomResourceDefinition");
        ensure!(crds.len() == want.len(), "{} CRDs", crds.len());
        for crd in crds {
            let source = want
                .get(name_of(crd))
                .with_context(|| format!("unknown CRD {}", name_of(crd)))?;
            // kustomize adds its part-of label; nothing else may differ.
            let (mut ours, mut theirs) = (crd.clone(), source.clone());
            for doc in [&mut ours, &mut theirs] {
                if let Some(labels) = doc["metadata"]["labels"].as_object_mut() {
                    labels.remove("app.kubernetes.io/part-of");
                }
            }
            ensure!(
                ours == theirs,
                "{render}: {} differs from its source",
                name_of(crd)
            );
        }
        Ok(())
    })
}

/// A role's rules as sets, for comparing whatever the order.
fn rule_set(rules: &Json) -> Result<BTreeSet<BTreeMap<String, BTreeSet<String>>>> {
    let mut out = BTreeSet::new();
    for rule in rules.as_array().context("rules")? {
        let mut fields = BTreeMap::new();
        for (k, v) in rule.as_object().context("a rule")? {
            let values: BTreeSet<String> = v
                .as_array()
                .with_context(|| format!("{k} is not a list"))?
                .iter()
                .map(|s| s.as_str().map(str::to_string).context("not a string"))
                .collect::<Result<_>>()?;
            fields.insert(k.clone(), values);
        }
        ensure!(out.insert(fields), "a rule twice: {rule}");
    }
    Ok(out)
}

/// The roles, exactly: `(kind, name) -> rules`. `webhook` and `secret`
/// are the names the controller's writes and reads are limited to.
fn expected_roles(webhook: &str, secret: &str) -> BTreeMap<(&'static str, &'static str), Json> {
    let read = json!(["get", "list", "watch"]);
    let all = json!([
        "get", "list", "watch", "create", "update", "patch", "delete"
    ]);
    let policies = json!(["clusteradmissionpolicies", "admissionpolicies"]);
    let webhooks = json!([
        "mutatingwebhookconfigurations",
        "validatingwebhookconfigurations"
    ]);
    BTreeMap::from([
        (
            ("ClusterRole", "portcullis-server"),
            json!([
                { "apiGroups": ["portcullis.dev"], "resources": policies, "verbs": read },
                { "apiGroups": [""], "resources": ["namespaces"], "verbs": read },
            ]),
        ),
        (
            ("Role", "portcullis-server"),
            json!([{ "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": all }]),
        ),
        (
            ("ClusterRole", "portcullis-controller"),
            json!([
                { "apiGroups": ["portcullis.dev"], "resources": policies, "verbs": read },
                {
                    "apiGroups": ["portcullis.dev"],
                    "resources": ["clusteradmissionpolicies/status", "admissionpolicies/status"],
                    "verbs": ["get", "update", "patch"],
                },
                {
                    "apiGroups": ["admissionregistration.k8s.io"],
                    "resources": webhooks,
                    "verbs": ["get", "list", "watch", "create"],
                },
                {
                    "apiGroups": ["admissionregistration.k8s.io"],
                    "resources": webhooks,
                    "resourceNames": [webhook],
                    "verbs": ["update", "patch", "delete"],
                },
            ]),
        ),
        (
            ("Role", "portcullis-controller"),
            json!([
                { "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": all },
                { "apiGroups": [""], "resources": ["secrets"], "resourceNames": [secret], "verbs": ["get"] },
            ]),
        ),
    ])
}

#[test]
fn the_rbac_is_exactly_what_the_server_and_controller_need() -> Result<()> {
    each_render(|_, docs| {
        let args = args_of(docs)?;
        let webhook = flag_value(&args, "--webhook-name").unwrap_or("portcullis");
        let secret = flag_value(&args, "--ca-secret").unwrap_or("portcullis-tls");
        // The Secret the controller reads is the one the pods serve.
        let tls = volume_at(docs, Path::new("/etc/portcullis/tls"))?;
        ensure!(
            tls["secret"]["secretName"] == secret,
            "{tls} is not {secret}"
        );
        let deployment = only(docs, "Deployment")?;
        let sa_name = deployment["spec"]["template"]["spec"]["serviceAccountName"]
            .as_str()
            .context("serviceAccountName")?;
        ensure!(name_of(only(docs, "ServiceAccount")?) == sa_name);
        ensure!(format!("system:serviceaccount:{NAMESPACE}:{sa_name}") == SERVICE_ACCOUNT);

        let want = expected_roles(webhook, secret);
        let roles: Vec<&Json> = docs
            .iter()
            .filter(|d| matches!(kind_of(d), "Role" | "ClusterRole"))
            .collect();
        ensure!(
            roles.len() == want.len(),
            "{} roles, want {}",
            roles.len(),
            want.len()
        );
        for ((kind, name), rules) in &want {
            let role = find(docs, kind, name)?;
            ensure!(
                rule_set(&role["rules"])? == rule_set(rules)?,
                "{kind}/{name}: rules {}\nwant {rules}",
                role["rules"]
            );
            ensure!(
                role["aggregationRule"].is_null(),
                "{kind}/{name} aggregates"
            );
            // Bound, under the same name, to the pods' ServiceAccount only.
            let binding_kind = format!("{kind}Binding");
            let binding = find(docs, &binding_kind, name)?;
            ensure!(
                binding["roleRef"]
                    == json!({ "apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name }),
                "{binding_kind}/{name}: {}",
                binding["roleRef"]
            );
            ensure!(
                binding["subjects"]
                    == json!([{ "kind": "ServiceAccount", "name": sa_name, "namespace": NAMESPACE }]),
                "{binding_kind}/{name}: {}",
                binding["subjects"]
            );
        }
        let bindings = docs
            .iter()
            .filter(|d| matches!(kind_of(d), "RoleBinding" | "ClusterRoleBinding"))
            .count();
        ensure!(bindings == want.len(), "{bindings} bindings");
        Ok(())
    })
}

#[test]
fn the_deployment_is_highly_available_and_restricted() -> Result<()> {
    let flags = serve_flags()?;
    each_render(|_, docs| {
        let deployment = only(docs, "Deployment")?;
        let spec = &deployment["spec"];
        ensure!(spec["replicas"] == 3, "replicas {}", spec["replicas"]);
        let pod_labels = &spec["template"]["metadata"]["labels"];
        selects(&spec["selector"]["matchLabels"], pod_labels)?;
        ensure!(
            spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0,
            "a rollout may take replicas away: {}",
            spec["strategy"]
        );
        let pod = &spec["template"]["spec"];
        // The servers and the controller talk to the API server.
        ensure!(
            pod["automountServiceAccountToken"] == true,
            "no token: {}",
            pod["automountServiceAccountToken"]
        );
        ensure!(pod["serviceAccountName"] == "portcullis");
        for forbidden in ["hostNetwork", "hostPID", "hostIPC"] {
            ensure!(pod[forbidden] != true, "{forbidden}");
        }

        // Pod securityContext.
        let psc = &pod["securityContext"];
        ensure!(psc["runAsNonRoot"] == true, "pod runAsNonRoot: {psc}");
        ensure!(psc["runAsUser"] == UID && psc["runAsGroup"] == UID, "{psc}");
        ensure!(psc["seccompProfile"]["type"] == "RuntimeDefault", "{psc}");

        // Topology spread over nodes and zones, selecting these pods.
        let spread = pod["topologySpreadConstraints"]
            .as_array()
            .context("no topologySpreadConstraints")?;
        for key in ["kubernetes.io/hostname", "topology.kubernetes.io/zone"] {
            let c = spread
                .iter()
                .find(|c| c["topologyKey"] == key)
                .with_context(|| format!("no spread over {key}"))?;
            ensure!(c["maxSkew"] == 1, "{c}");
            selects(&c["labelSelector"]["matchLabels"], pod_labels)?;
        }

        let containers = pod["containers"].as_array().context("containers")?;
        ensure!(containers.len() == 1, "{} containers", containers.len());
        let c = &containers[0];
        ensure!(pod["initContainers"].is_null(), "init containers");

        // Container securityContext.
        let sc = &c["securityContext"];
        ensure!(sc["runAsNonRoot"] == true, "runAsNonRoot: {sc}");
        ensure!(
            sc["readOnlyRootFilesystem"] == true,
            "readOnlyRootFilesystem: {sc}"
        );
        ensure!(
            sc["allowPrivilegeEscalation"] == false,
            "allowPrivilegeEscalation: {sc}"
        );
        ensure!(sc["privileged"] != true, "privileged: {sc}");
        ensure!(strs(&sc["capabilities"]["drop"]) == ["ALL"], "drop: {sc}");
        ensure!(sc["capabilities"]["add"].is_null(), "add: {sc}");
        ensure!(
            sc["seccompProfile"]["type"] == "RuntimeDefault",
            "seccomp: {sc}"
        );
        ensure!(sc["runAsUser"].is_null() || sc["runAsUser"] == UID, "{sc}");

        // Requests and limits.
        for bound in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                ensure!(
                    c["resources"][bound][resource].is_string(),
                    "resources.{bound}.{resource}: {}",
                    c["resources"]
                );
            }
        }

        // The pod's namespace and name, which --namespace and --replica-id
        // default to.
        let env = c["env"].as_array().context("no env")?;
        for (var, field) in [
            ("POD_NAMESPACE", "metadata.namespace"),
            ("POD_NAME", "metadata.name"),
        ] {
            let e = env
                .iter()
                .find(|e| e["name"] == var)
                .with_context(|| format!("no {var}"))?;
            ensure!(e["valueFrom"]["fieldRef"]["fieldPath"] == field, "{e}");
        }

        // Arguments: flags serve knows, and the ports and files the rest
        // of the manifest relies on.
        let args = strs(&c["args"]);
        ensure!(args.first() == Some(&"serve"), "args {args:?}");
        for flag in flag_names(&args.join(" ")) {
            ensure!(flags.contains(&flag), "serve has no flag {flag}");
        }
        for flag in ["--cluster-policies", "--controller"] {
            ensure!(args.contains(&flag), "no {flag}: {args:?}");
        }
        // The webhooks the controller writes call this Service.
        let service = only(docs, "Service")?;
        let https = service["spec"]["ports"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "https"))
            .context("no https port")?;
        ensure!(
            flag_value(&args, "--webhook-service")
                == Some(format!("{}:{}", name_of(service), https["port"]).as_str()),
            "--webhook-service is not the Service: {args:?}"
        );
        let port = |name: &str| -> Result<i64> {
            c["ports"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == name))
                .and_then(|p| p["containerPort"].as_i64())
                .with_context(|| format!("no container port {name}"))
        };
        let addr = flag_value(&args, "--addr").context("--addr")?;
        ensure!(port_of(addr)? == port("https")? && port("https")? == 8443);
        let metrics = flag_value(&args, "--metrics-addr").context("--metrics-addr")?;
        ensure!(port_of(metrics)? == port("metrics")? && port("metrics")? == 9090);
        ensure!(
            !metrics.starts_with("127.") && !addr.starts_with("127."),
            "the kubelet and the Service cannot reach a loopback listener"
        );

        // Probes: plain HTTP on the metrics listener.
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &c[probe]["httpGet"];
            ensure!(get["path"] == path, "{probe}: {get}");
            ensure!(
                get["port"] == "metrics" || get["port"] == 9090,
                "{probe} port: {get}"
            );
            ensure!(
                get["scheme"].is_null() || get["scheme"] == "HTTP",
                "{probe}: {get}"
            );
        }

        // Shutdown: preStop sleep, then SIGTERM and the drain, within the
        // grace period.
        let sleep = c["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_i64()
            .context("no preStop sleep")?;
        let delay: i64 = flag_value(&args, "--shutdown-delay")
            .unwrap_or("5")
            .parse()?;
        let drain: i64 = flag_value(&args, "--shutdown-grace")
            .unwrap_or("10")
            .parse()?;
        let grace = pod["terminationGracePeriodSeconds"]
            .as_i64()
            .context("terminationGracePeriodSeconds")?;
        ensure!(
            grace > sleep + delay + drain,
            "grace {grace} <= preStop {sleep} + delay {delay} + drain {drain}"
        );

        // Volumes: the config from ConfigMaps at the config's directory,
        // the TLS Secret at the certificate's; nothing writable but the
        // module cache, no subPath.
        let config = flag_value(&args, "--config").context("--config")?;
        let config_dir = Path::new(config).parent().context("no directory")?;
        for name in config_maps_of(volume_at(docs, config_dir)?)? {
            find(docs, "ConfigMap", name)?;
        }
        let cert = flag_value(&args, "--tls-cert").context("--tls-cert")?;
        let key = flag_value(&args, "--tls-key").context("--tls-key")?;
        ensure!(Path::new(cert).parent() == Path::new(key).parent());
        let tls = volume_at(docs, Path::new(cert).parent().context("no directory")?)?;
        ensure!(tls["secret"]["secretName"] == "portcullis-tls", "{tls}");
        // The key readable by the pods' group only (0440).
        ensure!(tls["secret"]["defaultMode"] == 0o440, "{tls}");
        let mounts = c["volumeMounts"].as_array().context("volumeMounts")?;
        let volumes = pod["volumes"].as_array().context("volumes")?;
        let cache = flag_value(&args, "--cache-dir").context("--cache-dir")?;
        let cache_mount = mounts
            .iter()
            .find(|m| m["mountPath"] == cache)
            .with_context(|| format!("nothing mounted at the module cache {cache}"))?;
        let cache_volume = volumes
            .iter()
            .find(|v| v["name"] == cache_mount["name"])
            .context("mount of an unknown volume")?;
        ensure!(
            cache_volume["emptyDir"]["sizeLimit"].is_string(),
            "the module cache is a bounded emptyDir: {cache_volume}"
        );
        for v in volumes {
            ensure!(v["hostPath"].is_null(), "no hostPath: {v}");
            ensure!(
                v["emptyDir"].is_null() || v["name"] == cache_volume["name"],
                "the server writes nothing but its module cache: {v}"
            );
        }
        Ok(())
    })
}

#[test]
fn a_disruption_budget_keeps_two_replicas() -> Result<()> {
    each_render(|_, docs| {
        let pdb = only(docs, "PodDisruptionBudget")?;
        let deployment = only(docs, "Deployment")?;
        let replicas = deployment["spec"]["replicas"]
            .as_i64()
            .context("replicas")?;
        let spec = &pdb["spec"];
        let available = match (
            spec["minAvailable"].as_i64(),
            spec["maxUnavailable"].as_i64(),
        ) {
            (Some(min), None) => min,
            (None, Some(max)) => replicas - max,
            _ => bail!("the PDB needs one integer minAvailable or maxUnavailable: {spec}"),
        };
        ensure!(
            available >= 2 && available < replicas,
            "{available} of {replicas}"
        );
        selects(
            &spec["selector"]["matchLabels"],
            &deployment["spec"]["template"]["metadata"]["labels"],
        )
    })
}

#[test]
fn the_service_maps_443_to_the_https_port() -> Result<()> {
    each_render(|_, docs| {
        let service = find(docs, "Service", "portcullis")?;
        let deployment = only(docs, "Deployment")?;
        let pod = &deployment["spec"]["template"];
        selects(&service["spec"]["selector"], &pod["metadata"]["labels"])?;
        let container_port = |target: &Json| -> Option<i64> {
            pod["spec"]["containers"][0]["ports"]
                .as_array()?
                .iter()
                .find(|p| p["name"] == *target || p["containerPort"] == *target)?
                .get("containerPort")?
                .as_i64()
        };
        let ports = service["spec"]["ports"].as_array().context("ports")?;
        let https = ports
            .iter()
            .find(|p| p["port"] == 443)
            .context("no port 443")?;
        ensure!(
            container_port(&https["targetPort"]) == Some(8443),
            "{https}"
        );
        let metrics = ports
            .iter()
            .find(|p| p["name"] == "metrics")
            .context("no metrics port")?;
        ensure!(
            container_port(&metrics["targetPort"]) == Some(9090),
            "{metrics}"
        );
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// The standard library
// ---------------------------------------------------------------------------

#[test]
fn the_library_is_the_standard_set_as_cluster_admission_policies() -> Result<()> {
    let paths = paths()?;
    each_render(|render, docs| {
        let library = library_of(docs);
        ensure!(
            library.keys().copied().collect::<Vec<_>>() == LIBRARY,
            "not the standard set: {:?}",
            library.keys()
        );
        // The config file lists none: the resources are the policies.
        let config = config_file(docs)?;
        ensure!(
            config["policies"] == json!([]),
            "config policies: {}",
            config["policies"]
        );

        let module_dir = if is_helm(render) {
            IMAGE_MODULES
        } else {
            MOUNTED_MODULES
        };
        let mut modules = BTreeSet::new();
        for (name, policy) in &library {
            ensure!(policy["apiVersion"] == "portcullis.dev/v1alpha1", "{name}");
            let spec = &policy["spec"];
            ensure!(
                !has_null(spec),
                "{name}: the API server drops nulls: {spec}"
            );
            ensure!(
                spec["name"].is_null(),
                "{name}: the object's name is the policy's"
            );
            let module = spec["module"].as_str().context("no module")?;
            ensure!(
                Path::new(module).parent() == Some(Path::new(module_dir)),
                "{name}: module {module} is not in {module_dir}"
            );
            modules.insert(module_file(policy)?.to_string());
            ensure!(
                spec["mode"] == "enforce" && spec["onError"] == "deny",
                "{name}: {spec}"
            );
            let exclude = strs(&spec["match"]["namespaces"]["exclude"]);
            for ns in EXCLUDED {
                ensure!(exclude.contains(&ns), "{name}: {ns} not excluded");
            }
        }
        if is_helm(render) {
            return Ok(());
        }
        // kustomize: each module in a ConfigMap of the volume at the
        // modules' directory, as built; nothing else there.
        let files = files_at(docs, Path::new(MOUNTED_MODULES))?;
        for module in &modules {
            let bytes = files
                .get(module)
                .with_context(|| format!("{module} is not in the ConfigMaps"))?;
            ensure!(bytes.starts_with(b"\0asm"), "{module} is not wasm");
            let built = fs::read(paths.modules.join(module))?;
            ensure!(*bytes == built, "{module} differs from the built module");
        }
        let unused: Vec<&String> = files
            .keys()
            .filter(|k| *k != "config.yaml" && !modules.contains(*k))
            .collect();
        ensure!(unused.is_empty(), "modules no policy names: {unused:?}");
        // Fixed names (no kustomize hash suffix): `kubectl apply` then
        // updates the mounted ConfigMaps in place and the pods hot-reload,
        // where a new name would roll the Deployment out.
        let mut want: BTreeSet<String> = LIBRARY
            .iter()
            .map(|n| format!("portcullis-policy-{n}"))
            .collect();
        want.insert("portcullis-config".to_string());
        let have: BTreeSet<String> = all_of(docs, "ConfigMap")
            .into_iter()
            .map(|c| name_of(c).to_string())
            .collect();
        ensure!(have == want, "ConfigMaps {have:?}, want {want:?}");
        Ok(())
    })
}

/// The base's library as one config file, with the modules of its
/// ConfigMaps, in `dir`.
fn write_library(dir: &Path) -> Result<PathBuf> {
    let docs = &renders()?["base"];
    for (name, bytes) in files_at(docs, Path::new(MOUNTED_MODULES))? {
        fs::write(dir.join(&name), bytes)?;
    }
    let path = dir.join("library.yaml");
    fs::write(
        &path,
        serde_yaml_ng::to_string(&library_config(docs, dir)?)?,
    )?;
    Ok(path)
}

fn eval(config: &Path, review: &Path, policy: Option<&str>) -> Result<Json> {
    let paths = paths()?;
    let mut args = vec![
        "eval",
        "--config",
        path_str(config)?,
        "--review",
        path_str(review)?,
    ];
    if let Some(p) = policy {
        args.extend(["--policy", p]);
    }
    let out = run_cli(&paths.bin, &args, None, CLI_TIMEOUT)?;
    ensure!(out.code() == Some(0), "eval failed\n{out}");
    let answer: Json = serde_json::from_str(out.stdout.trim()).with_context(|| format!("{out}"))?;
    Ok(answer["response"].clone())
}

/// The specs are config entries the engine accepts, and the set decides
/// as the standard set does.
#[test]
fn the_deployed_library_loads_and_decides() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = write_library(dir.path())?;
    let allowed = eval(&config, &fixtures_dir().join("pod-allowed.json"), None)?;
    ensure!(allowed["allowed"] == true, "pod-allowed.json: {allowed}");
    let denied = eval(&config, &fixtures_dir().join("pod-denied.json"), None)?;
    ensure!(denied["allowed"] == false, "pod-denied.json: {denied}");
    ensure!(
        denied["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("allowed-images"),
        "{denied}"
    );
    // The same review in an excluded namespace is not judged.
    let mut review = read_json(&fixtures_dir().join("pod-denied.json"))?;
    review["request"]["namespace"] = json!("portcullis");
    review["request"]["object"]["metadata"]["namespace"] = json!("portcullis");
    let file = dir.path().join("excluded.json");
    fs::write(&file, serde_json::to_vec(&review)?)?;
    let excluded = eval(&config, &file, None)?;
    ensure!(
        excluded["allowed"] == true,
        "excluded namespace: {excluded}"
    );
    // The config file of the pods loads on its own (no policies).
    let empty = dir.path().join("config.yaml");
    let denied = eval(&empty, &fixtures_dir().join("pod-denied.json"), None)?;
    ensure!(
        denied["allowed"] == true,
        "the config file has a policy: {denied}"
    );
    Ok(())
}

#[test]
fn portcullis_own_deployment_passes_pod_security_restricted() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = write_library(dir.path())?;
    for render in ["base", "helm"] {
        let mut deployment = only(&renders()?[render], "Deployment")?.clone();
        // Judged as if it were in an ordinary namespace.
        deployment["metadata"]["namespace"] = json!("default");
        let file = dir.path().join("deployment.json");
        fs::write(
            &file,
            serde_json::to_vec(&review_of(&deployment, "CREATE"))?,
        )?;
        let answer = eval(&config, &file, Some("pod-security"))?;
        ensure!(answer["allowed"] == true, "{render}: {answer}");
    }
    Ok(())
}

/// The chart installs what the base installs: the same library (but for
/// where the modules are), the same flags (but for where the config is),
/// the same pod.
#[test]
fn the_chart_installs_what_the_base_installs() -> Result<()> {
    let renders = renders()?;
    let (base, chart) = (&renders["base"], &renders["helm"]);
    let (ours, theirs) = (library_of(chart), library_of(base));
    ensure!(ours.len() == theirs.len());
    for (name, policy) in &theirs {
        let mut want = policy["spec"].clone();
        want["module"] = json!(format!("{IMAGE_MODULES}/{}", module_file(policy)?));
        ensure!(
            ours[name]["spec"] == want,
            "{name}: {} != {want}",
            ours[name]["spec"]
        );
    }
    let without_config = |docs: &[Json]| -> Result<BTreeSet<String>> {
        Ok(args_of(docs)?
            .into_iter()
            .filter(|a| !a.starts_with("--config"))
            .map(str::to_string)
            .collect())
    };
    ensure!(
        without_config(chart)? == without_config(base)?,
        "{:?} != {:?}",
        args_of(chart)?,
        args_of(base)?
    );
    let pod = |docs: &'static [Json]| -> Result<&'static Json> {
        Ok(&only(docs, "Deployment")?["spec"]["template"]["spec"])
    };
    let (ours, theirs) = (pod(chart)?, pod(base)?);
    for field in [
        "securityContext",
        "automountServiceAccountToken",
        "terminationGracePeriodSeconds",
        "enableServiceLinks",
    ] {
        ensure!(
            ours[field] == theirs[field],
            "pod {field}: {} != {}",
            ours[field],
            theirs[field]
        );
    }
    for field in [
        "securityContext",
        "resources",
        "env",
        "ports",
        "livenessProbe",
        "readinessProbe",
        "lifecycle",
    ] {
        let (a, b) = (
            &ours["containers"][0][field],
            &theirs["containers"][0][field],
        );
        ensure!(a == b, "container {field}: {a} != {b}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

/// cert-manager issues the Secret the pods serve and the controller reads
/// the caBundle from (its `ca.crt` is the CA that signed it).
fn check_cert_manager(docs: &[Json]) -> Result<()> {
    let args = args_of(docs)?;
    let tls_secret = volume_at(docs, Path::new("/etc/portcullis/tls"))?["secret"]["secretName"]
        .as_str()
        .context("no secret volume")?;
    ensure!(
        flag_value(&args, "--ca-secret") == Some(tls_secret),
        "{args:?}"
    );
    let selfsigned = find(docs, "Issuer", "portcullis-selfsigned")?;
    ensure!(selfsigned["spec"]["selfSigned"].is_object(), "{selfsigned}");
    for doc in docs.iter().filter(|d| {
        d["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("cert-manager.io/"))
    }) {
        ensure!(doc["apiVersion"] == "cert-manager.io/v1", "{doc}");
    }
    let ca = find(docs, "Certificate", "portcullis-ca")?;
    ensure!(ca["spec"]["isCA"] == true, "{ca}");
    ensure!(
        ca["spec"]["issuerRef"]["name"] == "portcullis-selfsigned",
        "{ca}"
    );
    let ca_issuer = find(docs, "Issuer", "portcullis-ca")?;
    ensure!(
        ca_issuer["spec"]["ca"]["secretName"] == ca["spec"]["secretName"],
        "{ca_issuer}"
    );
    let serving = find(docs, "Certificate", "portcullis-tls")?;
    ensure!(serving["spec"]["secretName"] == tls_secret, "{serving}");
    ensure!(serving["spec"]["isCA"] != true, "{serving}");
    ensure!(
        serving["spec"]["issuerRef"]["name"] == "portcullis-ca",
        "{serving}"
    );
    ensure!(
        serving["spec"]["issuerRef"]["kind"] == "Issuer",
        "{serving}"
    );
    let dns = strs(&serving["spec"]["dnsNames"]);
    for name in SERVICE_NAMES {
        ensure!(dns.contains(&name), "{name} not in dnsNames {dns:?}");
    }
    Ok(())
}

#[test]
fn cert_manager_issues_the_serving_certificate_from_its_own_ca() -> Result<()> {
    check_cert_manager(&renders()?["cert-manager"]).context("the cert-manager overlay")?;
    check_cert_manager(&helm_template(&["certManager.enabled=true"])?)
        .context("the chart with certManager.enabled")?;
    // Elsewhere the Secret comes from the installer.
    for render in ["base", "self-signed", "helm"] {
        ensure!(
            all_of(&renders()?[render], "Certificate").is_empty(),
            "{render} has Certificates"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The self-signed install script, against a recording kubectl
// ---------------------------------------------------------------------------

/// A `kubectl` that records each call (`<log>/<n>/args`, and the file given
/// with `-f` as `<log>/<n>/file`), runs `create` (offline, `--dry-run`) with
/// the real kubectl, and answers everything else with success.
const FAKE_KUBECTL: &str = r#"#!/bin/sh
set -eu
n=$(( $(cat "$FAKE_LOG/count" 2>/dev/null || echo 0) + 1 ))
echo "$n" >"$FAKE_LOG/count"
dir="$FAKE_LOG/$n"
mkdir -p "$dir"
printf '%s\n' "$@" >"$dir/args"
prev=
for a in "$@"; do
    if [ "$prev" = "-f" ]; then cp "$a" "$dir/file"; fi
    prev=$a
done
case "$1" in
    create) exec "$REAL_KUBECTL" "$@" ;;
esac
exit 0
"#;

struct Call {
    args: Vec<String>,
    file: Option<String>,
}

fn run_install(manifests: &Path, cert_dir: &Path, work: &Path) -> Result<(Vec<Call>, String)> {
    let paths = paths()?;
    let log = work.join("log");
    let _ = fs::remove_dir_all(&log);
    fs::create_dir_all(&log)?;
    let fake = work.join("kubectl");
    fs::write(&fake, FAKE_KUBECTL)?;
    // Executable, for the script's `command -v` and to run it.
    let mut perms = fs::metadata(&fake)?.permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    fs::set_permissions(&fake, perms)?;
    let out = Command::new("sh")
        .arg(repo_root().join("deploy/kubernetes/overlays/self-signed/install.sh"))
        .env("KUBECTL", &fake)
        .env("REAL_KUBECTL", kubectl()?)
        .env("FAKE_LOG", &log)
        .env("MANIFESTS", manifests)
        .env("PORTCULLIS", &paths.bin)
        .env("CERT_DIR", cert_dir)
        // Never a real cluster.
        .env("KUBECONFIG", work.join("no-kubeconfig"))
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    ensure!(
        out.status.success(),
        "install.sh failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let count: usize = fs::read_to_string(log.join("count"))?.trim().parse()?;
    let mut calls = Vec::new();
    for n in 1..=count {
        let dir = log.join(n.to_string());
        calls.push(Call {
            args: fs::read_to_string(dir.join("args"))?
                .lines()
                .map(str::to_string)
                .collect(),
            file: fs::read_to_string(dir.join("file")).ok(),
        });
    }
    Ok((calls, stdout))
}

fn position(calls: &[Call], what: &str, pred: impl Fn(&Call) -> bool) -> Result<usize> {
    calls
        .iter()
        .position(pred)
        .with_context(|| format!("install.sh never ran kubectl {what}"))
}

fn has(call: &Call, words: &[&str]) -> bool {
    words.iter().all(|w| call.args.iter().any(|a| a == w))
}

fn san_dns_names(pem_file: &Path) -> Result<Vec<String>> {
    let bytes = fs::read(pem_file)?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&bytes).map_err(|e| anyhow!("{e}"))?;
    let cert = pem.parse_x509().map_err(|e| anyhow!("{e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| anyhow!("{e}"))?
        .context("no SAN extension")?;
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect())
}

#[test]
fn the_self_signed_install_creates_the_secret_then_crds_server_and_policies() -> Result<()> {
    let docs = &renders()?["self-signed"];
    let work = tempfile::tempdir()?;
    // The rendering install.sh gets from `make deploy-self-signed`.
    let manifests = work.path().join("self-signed.yaml");
    fs::write(&manifests, to_yaml(docs)?)?;
    let rendering = fs::read_to_string(&manifests)?;
    let cert_dir = work.path().join("certs");

    let apply_phase = |calls: &[Call], phase: &str| -> Result<usize> {
        let label = format!("portcullis.dev/phase={phase}");
        let at = position(calls, &format!("apply -l {label}"), |c| {
            has(c, &["apply", "--server-side", "-l", &label])
        })?;
        // Each phase gets the rendering as it is.
        ensure!(
            calls[at].file.as_deref() == Some(rendering.as_str()),
            "the {phase} phase was not given the rendering"
        );
        Ok(at)
    };
    let check_run = |calls: &[Call]| -> Result<()> {
        let ns = position(calls, "apply (namespace)", |c| {
            has(c, &["apply", "--server-side"])
                && c.file.as_deref().is_some_and(|f| {
                    f.contains("kind: Namespace") && !f.contains("kind: Deployment")
                })
        })?;
        let secret = position(calls, "apply (secret)", |c| {
            has(c, &["apply"])
                && c.file
                    .as_deref()
                    .is_some_and(|f| f.contains("kind: Secret"))
        })?;
        // The CRDs on their own: `apply -l` resolves every object's kind
        // before it filters, and the policies' kind is unknown until then.
        let crds = position(calls, "apply (CRDs)", |c| {
            has(c, &["apply", "--server-side"])
                && c.file.as_deref().is_some_and(|f| {
                    f.contains("kind: CustomResourceDefinition") && !f.contains("kind: Deployment")
                })
        })?;
        let applied = parse_documents(calls[crds].file.as_deref().unwrap_or_default())?;
        let want: Vec<Json> = all_of(docs, "CustomResourceDefinition")
            .into_iter()
            .cloned()
            .collect();
        ensure!(applied == want, "the CRDs applied are not the rendering's");
        let established = position(calls, "wait for the CRDs", |c| {
            has(c, &["wait", "crd", "-l", "portcullis.dev/phase=crds"])
                && c.args.iter().any(|a| a.contains("Established"))
        })?;
        let server = apply_phase(calls, "server")?;
        let rollout = position(calls, "rollout status", |c| {
            has(c, &["rollout", "status", "deployment/portcullis"])
        })?;
        let policies = apply_phase(calls, "policies")?;
        ensure!(
            ns < secret
                && secret < crds
                && crds < established
                && established < server
                && server < rollout
                && rollout < policies,
            "order: namespace {ns}, secret {secret}, crds {crds}, established {established}, \
             server {server}, rollout {rollout}, policies {policies}"
        );
        ensure!(
            !calls
                .iter()
                .any(|c| c.args.iter().any(|a| a.contains("webhooks"))),
            "the controller registers the webhooks, not the script"
        );
        // The Secret: type TLS, the files of CERT_DIR, the CA as ca.crt
        // (the controller's caBundle).
        let secret_docs = parse_documents(calls[secret].file.as_deref().unwrap_or_default())?;
        let secret_doc = only(&secret_docs, "Secret")?;
        ensure!(secret_doc["type"] == "kubernetes.io/tls", "{secret_doc}");
        ensure!(name_of(secret_doc) == "portcullis-tls");
        ensure!(secret_doc["metadata"]["namespace"] == "portcullis");
        for file in ["tls.crt", "tls.key", "ca.crt"] {
            let want = BASE64.encode(fs::read(cert_dir.join(file))?);
            ensure!(
                secret_doc["data"][file] == want.as_str(),
                "{file} in the Secret"
            );
        }
        Ok(())
    };

    let (calls, _) = run_install(&manifests, &cert_dir, work.path())?;
    check_run(&calls)?;
    let dns = san_dns_names(&cert_dir.join("tls.crt"))?;
    for name in SERVICE_NAMES {
        ensure!(
            dns.iter().any(|d| d == name),
            "{name} not in the SANs {dns:?}"
        );
    }
    let first_cert = fs::read(cert_dir.join("tls.crt"))?;
    let first_ca = fs::read(cert_dir.join("ca.crt"))?;

    // A second run rotates the serving certificate with the same CA, so
    // the caBundle the controller writes stays the same.
    let (calls, stdout) = run_install(&manifests, &cert_dir, work.path())?;
    check_run(&calls)?;
    ensure!(
        fs::read(cert_dir.join("ca.crt"))? == first_ca,
        "a re-run changed the CA"
    );
    ensure!(
        fs::read(cert_dir.join("tls.crt"))? != first_cert,
        "no new certificate"
    );
    ensure!(stdout.contains("with the CA in"), "{stdout}");
    Ok(())
}

#[test]
fn the_self_signed_install_refuses_the_cert_manager_rendering() -> Result<()> {
    let docs = &renders()?["cert-manager"];
    let work = tempfile::tempdir()?;
    let manifests = work.path().join("cert-manager.yaml");
    fs::write(&manifests, to_yaml(docs)?)?;
    let err = run_install(&manifests, &work.path().join("certs"), work.path())
        .err()
        .context("install.sh accepted the cert-manager rendering")?;
    ensure!(
        format!("{err:#}").contains("cert-manager Certificates"),
        "{err:#}"
    );
    ensure!(
        !work.path().join("log/count").exists(),
        "kubectl was called"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// The Helm chart
// ---------------------------------------------------------------------------

/// Value sets the chart documents, each of which must lint and render.
const VALUE_SETS: [&[&str]; 5] = [
    &[],
    &["certManager.enabled=true"],
    &[
        "library.registry=registry.example/portcullis",
        "library.tag=0.1.0",
    ],
    &["controller.enabled=false", "library.enabled=false"],
    &[
        "controller.webhookURL=https://portcullis.example:8443",
        "replicas=5",
    ],
];

#[test]
fn helm_lint_is_clean() -> Result<()> {
    let helm = helm()?;
    let chart = repo_root().join(CHART);
    for sets in VALUE_SETS {
        let mut args = vec![
            "lint",
            "--strict",
            path_str(&chart)?,
            "--namespace",
            NAMESPACE,
        ];
        for set in sets {
            args.extend(["--set", set]);
        }
        let out = run_cli(&helm, &args, None, CLI_TIMEOUT)?;
        ensure!(out.code() == Some(0), "helm lint {sets:?}\n{out}");
        ensure!(
            out.stdout.contains("1 chart(s) linted, 0 chart(s) failed"),
            "helm lint {sets:?}\n{out}"
        );
        ensure!(
            !out.stdout.contains("[WARNING]") && !out.stdout.contains("[ERROR]"),
            "helm lint {sets:?}\n{out}"
        );
        helm_template(sets)?;
    }
    Ok(())
}

/// The chart's crds/ and files/library.yaml are links to the sources;
/// `helm package` puts their contents in the archive, byte for byte.
#[test]
fn the_packaged_chart_holds_the_crds_and_library_byte_for_byte() -> Result<()> {
    let helm = helm()?;
    let root = repo_root();
    let chart = root.join(CHART);
    let work = tempfile::tempdir()?;
    let out = run_cli(
        &helm,
        &[
            "package",
            path_str(&chart)?,
            "--destination",
            path_str(work.path())?,
        ],
        None,
        CLI_TIMEOUT,
    )?;
    ensure!(out.code() == Some(0), "helm package\n{out}");
    let archive = work.path().join("portcullis-0.1.0.tgz");
    ensure!(archive.is_file(), "no {}: {out}", archive.display());
    let unpacked = work.path().join("unpacked");
    fs::create_dir_all(&unpacked)?;
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(&unpacked)
        .status()?;
    ensure!(status.success(), "tar -xzf");
    let packed = unpacked.join("portcullis");
    let mut pairs = vec![(
        packed.join("files/library.yaml"),
        root.join("deploy/kubernetes/base/library.yaml"),
    )];
    for crd in [
        "portcullis.dev_clusteradmissionpolicies.yaml",
        "portcullis.dev_admissionpolicies.yaml",
    ] {
        pairs.push((
            packed.join("crds").join(crd),
            root.join("deploy/kubernetes/crds").join(crd),
        ));
        // In the source tree, links (never copies that could drift).
        let link = chart.join("crds").join(crd);
        ensure!(
            fs::symlink_metadata(&link)?.file_type().is_symlink()
                && fs::canonicalize(&link)?
                    == fs::canonicalize(root.join("deploy/kubernetes/crds").join(crd))?,
            "crds/{crd} is not a link to deploy/kubernetes/crds/{crd}"
        );
    }
    for (packed, source) in &pairs {
        let meta = fs::symlink_metadata(packed)?;
        ensure!(
            meta.file_type().is_file(),
            "{} is not a file",
            packed.display()
        );
        ensure!(
            fs::read(packed)? == fs::read(source)?,
            "{} differs from {}",
            packed.display(),
            source.display()
        );
    }
    // The package installs the CRDs it holds, nothing else from crds/.
    let names: Vec<String> = fs::read_dir(packed.join("crds"))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    ensure!(names.len() == 2, "crds/ holds {names:?}");
    Ok(())
}

/// Values do what values.yaml says they do.
#[test]
fn the_chart_values_change_what_they_say() -> Result<()> {
    // Modules from a registry: oci:// references, the registry flags, the
    // optional login Secret, a larger cache.
    let docs = helm_template(&[
        "library.registry=registry.example/portcullis",
        "library.tag=0.2.0",
        "library.skip={pod-security}",
    ])?;
    let library = library_of(&docs);
    ensure!(
        library.len() == 4 && !library.contains_key("pod-security"),
        "{:?}",
        library.keys()
    );
    for (name, policy) in &library {
        ensure!(
            policy["spec"]["module"]
                == format!("oci://registry.example/portcullis/policies/{name}:0.2.0").as_str(),
            "{name}: {}",
            policy["spec"]["module"]
        );
    }
    let args = args_of(&docs)?;
    ensure!(
        args.contains(&"--registry-store=/var/cache/portcullis/registry"),
        "{args:?}"
    );
    ensure!(
        args.contains(&"--registry-auth=/etc/portcullis/registry/.dockerconfigjson"),
        "{args:?}"
    );
    let auth = volume_at(&docs, Path::new("/etc/portcullis/registry"))?;
    ensure!(
        auth["secret"]["secretName"] == "portcullis-registry" && auth["secret"]["optional"] == true,
        "{auth}"
    );

    // Another namespace and release: the library excludes that namespace,
    // the webhooks call that Service, the RBAC names follow.
    let helm = helm()?;
    let chart = repo_root().join(CHART);
    let out = run_cli(
        &helm,
        &[
            "template",
            "gate",
            path_str(&chart)?,
            "--namespace",
            "admission",
            "--set",
            "controller.webhookName=gate-hooks",
            "--set",
            "tls.secretName=gate-tls",
        ],
        None,
        CLI_TIMEOUT,
    )?;
    ensure!(out.code() == Some(0), "{out}");
    let docs = parse_documents(&out.stdout)?;
    for (name, policy) in library_of(&docs) {
        let exclude = strs(&policy["spec"]["match"]["namespaces"]["exclude"]);
        ensure!(
            exclude == ["kube-system", "kube-node-lease", "admission"],
            "{name}: {exclude:?}"
        );
    }
    let args = args_of(&docs)?;
    for flag in [
        "--webhook-service=gate-portcullis:443",
        "--webhook-name=gate-hooks",
        "--ca-secret=gate-tls",
    ] {
        ensure!(args.contains(&flag), "no {flag}: {args:?}");
    }
    let controller = find(&docs, "ClusterRole", "gate-portcullis-controller")?;
    ensure!(
        controller["rules"][3]["resourceNames"] == json!(["gate-hooks"]),
        "{controller}"
    );
    let role = find(&docs, "Role", "gate-portcullis-controller")?;
    ensure!(role["metadata"]["namespace"] == "admission");
    ensure!(
        role["rules"][1]["resourceNames"] == json!(["gate-tls"]),
        "{role}"
    );
    for binding in all_of(&docs, "ClusterRoleBinding") {
        ensure!(
            binding["subjects"]
                == json!([{ "kind": "ServiceAccount", "name": "gate-portcullis", "namespace": "admission" }]),
            "{binding}"
        );
    }

    // Without the controller: no controller roles, flags or webhook names;
    // a URL instead of the Service.
    let docs = helm_template(&["controller.enabled=false"])?;
    let args = args_of(&docs)?;
    ensure!(
        !args
            .iter()
            .any(|a| a.starts_with("--controller") || a.starts_with("--webhook")),
        "{args:?}"
    );
    ensure!(find(&docs, "ClusterRole", "portcullis-controller").is_err());
    ensure!(find(&docs, "ClusterRole", "portcullis-server").is_ok());
    let docs = helm_template(&["controller.webhookURL=https://portcullis.example:8443"])?;
    let args = args_of(&docs)?;
    ensure!(
        args.contains(&"--webhook-url=https://portcullis.example:8443"),
        "{args:?}"
    );
    ensure!(
        !args.iter().any(|a| a.starts_with("--webhook-service")),
        "{args:?}"
    );

    // Scheduling values reach the pod.
    let docs = helm_template(&[
        "nodeSelector.pool=system",
        "tolerations[0].key=dedicated",
        "tolerations[0].operator=Exists",
        "replicas=5",
        "image.repository=registry.example/portcullis/portcullis",
        "image.tag=9.9.9",
    ])?;
    let deployment = only(&docs, "Deployment")?;
    let pod = &deployment["spec"]["template"]["spec"];
    ensure!(deployment["spec"]["replicas"] == 5);
    ensure!(
        pod["nodeSelector"] == json!({ "pool": "system" }),
        "{}",
        pod["nodeSelector"]
    );
    ensure!(
        pod["tolerations"][0]["key"] == "dedicated",
        "{}",
        pod["tolerations"]
    );
    ensure!(pod["containers"][0]["image"] == "registry.example/portcullis/portcullis:9.9.9");
    Ok(())
}

// ---------------------------------------------------------------------------
// Installed into a real API server
// ---------------------------------------------------------------------------

/// Installs a rendering as docs/deploy.md does: the CRDs on their own
/// (established before anything names them), then phase by phase with
/// `kubectl apply --server-side -l portcullis.dev/phase=PHASE`. Every
/// object of each phase must be applied, and then be there.
fn install(cluster: &TestCluster, docs: &[Json]) -> Result<()> {
    let yaml = to_yaml(docs)?;
    // The CRDs go on their own: `apply -l portcullis.dev/phase=crds` of
    // the whole rendering can fail on a fresh cluster, because kubectl
    // resolves every object's kind before it filters by label, and
    // ClusterAdmissionPolicy is not a kind yet (whether it fails depends
    // on kubectl's discovery cache).
    if all_of(docs, "Namespace").is_empty() {
        // `helm install --create-namespace`.
        let out = cluster.kubectl(&["create", "namespace", NAMESPACE])?;
        ensure!(out.status.success(), "{out}");
    }
    let crds: Vec<Json> = all_of(docs, "CustomResourceDefinition")
        .into_iter()
        .cloned()
        .collect();
    for phase in ["crds", "server", "policies"] {
        let label = format!("portcullis.dev/phase={phase}");
        let out = if phase == "crds" {
            let crds = to_yaml(&crds)?;
            cluster.kubectl_with_input(
                &["apply", "--server-side", "-f", "-"],
                Some(crds.as_bytes()),
            )?
        } else {
            cluster.kubectl_with_input(
                &["apply", "--server-side", "-f", "-", "-l", &label],
                Some(yaml.as_bytes()),
            )?
        };
        ensure!(out.status.success(), "apply -l {label}\n{out}");
        // `KIND[.GROUP]/NAME serverside-applied`, one line each.
        let applied: BTreeSet<(String, String)> = out
            .stdout
            .lines()
            .filter_map(|l| l.strip_suffix(" serverside-applied"))
            .filter_map(|r| r.split_once('/'))
            .map(|(kind, name)| {
                let kind = kind.split('.').next().unwrap_or(kind);
                (kind.to_string(), name.to_string())
            })
            .collect();
        let want: BTreeSet<(String, String)> = docs
            .iter()
            .filter(|d| phase_of(d) == phase)
            .map(|d| (kind_of(d).to_lowercase(), name_of(d).to_string()))
            .collect();
        ensure!(!want.is_empty(), "nothing in phase {phase}");
        ensure!(
            applied == want,
            "phase {phase}: applied {applied:?}\nwant {want:?}\n{out}"
        );
        if phase == "crds" {
            let out = cluster.kubectl(&[
                "wait",
                "--for=condition=Established",
                "crd",
                "-l",
                &label,
                "--timeout=60s",
            ])?;
            ensure!(out.status.success(), "{out}");
        }
    }
    let out =
        cluster.kubectl_with_input(&["get", "-f", "-", "-o", "name"], Some(yaml.as_bytes()))?;
    ensure!(out.status.success(), "{out}");
    ensure!(out.stdout.lines().count() == docs.len(), "{out}");
    Ok(())
}

/// `kubectl get clusteradmissionpolicies` lists the library with the
/// CRD's printer columns.
fn check_listed(cluster: &TestCluster, docs: &[Json]) -> Result<()> {
    let library = library_of(docs);
    for (wide, columns) in [
        (false, &["NAME", "MODE", "READY", "SERVING", "AGE"][..]),
        (
            true,
            &["NAME", "MODE", "READY", "SERVING", "MODULE", "AGE"][..],
        ),
    ] {
        let mut args = vec!["get", "clusteradmissionpolicies"];
        if wide {
            args.extend(["-o", "wide"]);
        }
        let out = cluster.kubectl(&args)?;
        ensure!(out.status.success(), "{out}");
        let mut lines = out.stdout.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        ensure!(header == columns, "columns {header:?}\n{out}");
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
        ensure!(rows.len() == library.len(), "{out}");
        for row in rows {
            let policy = library
                .get(row[0])
                .with_context(|| format!("{} is not in the library", row[0]))?;
            // Status is the controller's: until it writes it, READY and
            // SERVING are empty, so the row is NAME MODE [MODULE] AGE.
            ensure!(row[1] == "enforce", "{row:?}");
            if wide {
                ensure!(
                    row.contains(&policy["spec"]["module"].as_str().unwrap_or("?")),
                    "{row:?}"
                );
            }
        }
    }
    Ok(())
}

/// The kustomize base installs phase by phase, and its pod's flags, run as
/// its ServiceAccount, write the webhooks and enforce the library.
#[test]
fn the_base_installs_into_the_api_server() -> Result<()> {
    // The modules where this machine has them (the pod's ConfigMaps in a
    // cluster).
    let paths = paths()?;
    let rendered = serde_json::to_string(&renders()?["base"])?.replace(
        &format!("{MOUNTED_MODULES}/"),
        &format!("{}/", path_str(&paths.modules)?),
    );
    let docs: &[Json] = &serde_json::from_str::<Vec<Json>>(&rendered)?;
    let cluster = TestCluster::start()?;
    install(&cluster, docs)?;
    check_listed(&cluster, docs)?;
    // Its pod's flags, as its ServiceAccount; the Service is unreachable
    // here (no kube-proxy), so the webhooks call the server by URL.
    enforces_as_its_service_account(
        &cluster,
        docs,
        &[
            "--cluster-policies",
            "--controller",
            "--webhook-name",
            "--ca-secret",
        ],
        &["--webhook-url=https://127.0.0.1:{port}"],
    )?;
    // The Deployment as the API server stored it.
    let out = cluster.kubectl(&[
        "-n",
        NAMESPACE,
        "get",
        "deployment",
        "portcullis",
        "-o",
        "jsonpath={.spec.template.spec.automountServiceAccountToken} {.spec.template.spec.serviceAccountName}",
    ])?;
    ensure!(
        out.status.success() && out.stdout.trim() == "true portcullis",
        "{out}"
    );
    Ok(())
}

/// `kubectl auth can-i ARGS --as USER`.
fn can_i(cluster: &TestCluster, user: &str, args: &[&str]) -> Result<bool> {
    let as_user = format!("--as={user}");
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    all.push(&as_user);
    let out = cluster.kubectl(&all)?;
    match out.stdout.trim() {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => bail!("kubectl auth can-i {args:?}\n{out}"),
    }
}

/// Each `(args, allowed)` as `user`.
fn check_permissions(cluster: &TestCluster, user: &str, cases: &[(&[&str], bool)]) -> Result<()> {
    let mut wrong = Vec::new();
    for (args, allowed) in cases {
        if can_i(cluster, user, args)? != *allowed {
            wrong.push(format!(
                "{args:?}: want {}",
                if *allowed { "yes" } else { "no" }
            ));
        }
    }
    ensure!(wrong.is_empty(), "{user}:\n{}", wrong.join("\n"));
    Ok(())
}

/// A server acting as `user` serves the library from the cluster.
fn serve_as(cluster: &TestCluster, user: &str) -> Result<()> {
    serve_library_as(cluster, user, &["--cluster-policies"]).map(drop)
}

/// Starts `portcullis serve FLAGS` as `user` (a kubeconfig impersonating
/// it) with an empty config file, and waits until it serves the library
/// with no request refused for want of permission.
fn serve_library_as(cluster: &TestCluster, user: &str, flags: &[&str]) -> Result<Server> {
    let kubeconfig = cluster.kubeconfig_as(user)?;
    let mut args = flags.to_vec();
    args.extend(["--kubeconfig", path_str(&kubeconfig)?]);
    let server = Server::start_with(&args, |_, dir| {
        let config = dir.join("config.yaml");
        fs::write(&config, "policies: []\n")?;
        Ok(config)
    })?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let names = loop {
        let policies = server.policies()?;
        let names: Vec<String> = policies["policies"]
            .as_array()
            .context("no policies")?
            .iter()
            .filter_map(|p| p["name"].as_str().map(str::to_string))
            .collect();
        if names.len() == LIBRARY.len() || std::time::Instant::now() >= deadline {
            break names;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut sorted = names.clone();
    sorted.sort();
    ensure!(
        sorted == LIBRARY,
        "{user}: serves {names:?}\n{}",
        server.logs()
    );
    let logs = server.logs();
    ensure!(!logs.contains("forbidden"), "{user}: {logs}");
    Ok(server)
}

/// The chart's own pod flags, run as its ServiceAccount with the
/// controller: it writes the webhook configurations, the API server then
/// enforces the library through them, and every policy reports Ready.
/// The API server cannot reach a Service here (no kube-proxy), so the
/// chart's `controller.webhookURL` points it at the server directly.
fn the_chart_enforces_as_its_service_account(
    cluster: &TestCluster,
    module_dir: &str,
) -> Result<()> {
    let docs = helm_template(&[module_dir, "controller.webhookURL=https://127.0.0.1:{port}"])?;
    let kept = [
        "--cluster-policies",
        "--controller",
        "--webhook-name",
        "--webhook-url",
        "--ca-secret",
    ];
    enforces_as_its_service_account(cluster, &docs, &kept, &[])
}

/// Runs the server with the rendering's pod flags named in `kept` (and
/// `extra`), as the rendering's ServiceAccount, and checks the library is
/// enforced through the API server and Ready.
fn enforces_as_its_service_account(
    cluster: &TestCluster,
    docs: &[Json],
    kept: &[&str],
    extra: &[&str],
) -> Result<()> {
    let mut flags: Vec<&str> = args_of(docs)?
        .into_iter()
        .filter(|arg| kept.contains(&arg.split('=').next().unwrap_or(arg)))
        .collect();
    ensure!(flags.len() == kept.len(), "the pod's flags: {flags:?}");
    flags.extend(extra);
    flags.extend(["--namespace", NAMESPACE, "--replica-id", "pod-0"]);
    let server = serve_library_as(cluster, SERVICE_ACCOUNT, &flags)?;
    // The serving certificate's CA, where the chart's flags say.
    let secret = flag_value(&flags, "--ca-secret").context("--ca-secret")?;
    let out = cluster.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{ name: {secret}, namespace: {NAMESPACE} }}\ndata: {{ ca.crt: {} }}\n",
        BASE64.encode(&server.certs.ca_pem)
    ))?;
    ensure!(out.status.success(), "{out}");
    let refused = |name: &str| -> Result<bool> {
        let out = cluster.kubectl(&[
            "run",
            name,
            "-n",
            "default",
            "--image=registry.k8s.io/pause:3.10",
            "--dry-run=server",
        ])?;
        Ok(out.stderr.contains("denied the request") && out.stderr.contains("required-labels"))
    };
    ensure!(
        poll(std::time::Duration::from_secs(30), || refused("unlabelled"))?,
        "the library never enforced through the API server\n{}",
        server.logs()
    );
    let ready = || -> Result<bool> {
        let out = cluster.kubectl(&["get", "cap", "-o", "json"])?;
        let list: Json = serde_json::from_str(&out.stdout)?;
        Ok(list["items"].as_array().is_some_and(|items| {
            items.len() == LIBRARY.len()
                && items.iter().all(|p| {
                    p["status"]["servingSummary"] == "1/1"
                        && p["status"]["conditions"].as_array().is_some_and(|c| {
                            c.iter()
                                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                        })
                })
        }))
    };
    ensure!(
        poll(std::time::Duration::from_secs(30), ready)?,
        "the library never reported Ready 1/1: {}",
        cluster.kubectl(&["get", "cap", "-o", "wide"])?
    );
    let logs = server.logs();
    ensure!(!logs.contains("forbidden"), "{logs}");
    Ok(())
}

/// The chart installs into the API server, and the RBAC it gives the
/// ServiceAccount is enough to serve the library, and no more: no other
/// Secret, no writes to the policies but their status, no other webhook
/// configuration, nothing outside its namespace.
#[test]
fn the_chart_installs_and_its_service_account_serves_the_library_and_no_more() -> Result<()> {
    let paths = paths()?;
    // The modules where this machine has them (the image's in a cluster).
    let module_dir = format!("library.moduleDir={}", path_str(&paths.modules)?);
    let docs = helm_template(&[&module_dir])?;
    let cluster = TestCluster::start()?;
    install(&cluster, &docs)?;
    check_listed(&cluster, &docs)?;

    the_chart_enforces_as_its_service_account(&cluster, &module_dir)?;

    let ns = ["-n", NAMESPACE];
    let yes: &[&[&str]] = &[
        &["list", "clusteradmissionpolicies.portcullis.dev"],
        &["watch", "clusteradmissionpolicies.portcullis.dev"],
        &[
            "list",
            "admissionpolicies.portcullis.dev",
            "--all-namespaces",
        ],
        &["watch", "namespaces"],
        &["create", "leases.coordination.k8s.io", ns[0], ns[1]],
        &["delete", "leases.coordination.k8s.io", ns[0], ns[1]],
        &[
            "patch",
            "clusteradmissionpolicies.portcullis.dev",
            "--subresource=status",
        ],
        &[
            "update",
            "admissionpolicies.portcullis.dev",
            "--subresource=status",
            "-n",
            "tenant",
        ],
        &[
            "create",
            "validatingwebhookconfigurations.admissionregistration.k8s.io",
        ],
        &[
            "patch",
            "validatingwebhookconfigurations.admissionregistration.k8s.io/portcullis",
        ],
        &[
            "delete",
            "mutatingwebhookconfigurations.admissionregistration.k8s.io/portcullis",
        ],
        &["get", "secrets/portcullis-tls", ns[0], ns[1]],
    ];
    let no: &[&[&str]] = &[
        &["list", "secrets", ns[0], ns[1]],
        &["watch", "secrets", ns[0], ns[1]],
        &["get", "secrets/portcullis-ca", ns[0], ns[1]],
        &["get", "secrets/portcullis-tls", "-n", "default"],
        &["create", "clusteradmissionpolicies.portcullis.dev"],
        &["patch", "clusteradmissionpolicies.portcullis.dev"],
        &["delete", "clusteradmissionpolicies.portcullis.dev"],
        &["update", "admissionpolicies.portcullis.dev", "-n", "tenant"],
        &["create", "leases.coordination.k8s.io", "-n", "default"],
        &[
            "patch",
            "validatingwebhookconfigurations.admissionregistration.k8s.io/other",
        ],
        &[
            "delete",
            "mutatingwebhookconfigurations.admissionregistration.k8s.io/other",
        ],
        &["patch", "namespaces/default"],
        &["list", "pods", "--all-namespaces"],
        &["create", "pods", ns[0], ns[1]],
        &["patch", "deployments.apps/portcullis", ns[0], ns[1]],
        &["escalate", "clusterroles.rbac.authorization.k8s.io"],
        &["*", "*"],
    ];
    let cases: Vec<(&[&str], bool)> = yes
        .iter()
        .map(|a| (*a, true))
        .chain(no.iter().map(|a| (*a, false)))
        .collect();
    check_permissions(&cluster, SERVICE_ACCOUNT, &cases)?;

    // The server's roles alone (a server without --controller): enough to
    // serve, nothing of the controller's.
    let server_only = "system:serviceaccount:portcullis:server-only";
    for args in [
        &["-n", NAMESPACE, "create", "serviceaccount", "server-only"][..],
        &[
            "create",
            "clusterrolebinding",
            "server-only",
            "--clusterrole=portcullis-server",
            "--serviceaccount=portcullis:server-only",
        ],
        &[
            "-n",
            NAMESPACE,
            "create",
            "rolebinding",
            "server-only",
            "--role=portcullis-server",
            "--serviceaccount=portcullis:server-only",
        ],
    ] {
        let out = cluster.kubectl(args)?;
        ensure!(out.status.success(), "{out}");
    }
    check_permissions(
        &cluster,
        server_only,
        &[
            (&["list", "clusteradmissionpolicies.portcullis.dev"], true),
            (
                &[
                    "watch",
                    "admissionpolicies.portcullis.dev",
                    "--all-namespaces",
                ],
                true,
            ),
            (&["list", "namespaces"], true),
            (
                &["update", "leases.coordination.k8s.io", ns[0], ns[1]],
                true,
            ),
            (
                &[
                    "patch",
                    "clusteradmissionpolicies.portcullis.dev",
                    "--subresource=status",
                ],
                false,
            ),
            (
                &[
                    "create",
                    "validatingwebhookconfigurations.admissionregistration.k8s.io",
                ],
                false,
            ),
            (&["get", "secrets/portcullis-tls", ns[0], ns[1]], false),
        ],
    )?;
    serve_as(&cluster, server_only)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------

/// The recipe lines of a Makefile target and its prerequisites.
fn make_target(makefile: &str, target: &str) -> Result<(Vec<String>, Vec<String>)> {
    let mut lines = makefile.lines();
    let head = format!("{target}:");
    let prereqs = lines
        .by_ref()
        .find(|l| l.starts_with(&head))
        .with_context(|| format!("no target {target}"))?[head.len()..]
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let recipe = lines
        .take_while(|l| l.starts_with('\t'))
        .map(|l| l.trim().to_string())
        .collect();
    Ok((prereqs, recipe))
}

/// Dockerfile instructions with continuation lines joined, comments dropped.
fn dockerfile_instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(part) = trimmed.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            if !current.trim().is_empty() {
                out.push(current.trim().to_string());
            }
            current.clear();
        }
    }
    out
}

#[test]
fn the_dockerfile_builds_with_make_build_and_runs_as_the_pods_user() -> Result<()> {
    let root = repo_root();
    let dockerfile = fs::read_to_string(root.join("Dockerfile"))?;
    let makefile = fs::read_to_string(root.join("Makefile"))?;
    let instructions = dockerfile_instructions(&dockerfile);
    let stages: Vec<(usize, &String)> = instructions
        .iter()
        .enumerate()
        .filter(|(_, i)| i.starts_with("FROM "))
        .collect();
    ensure!(stages.len() >= 2, "not a multi-stage build");
    let (build_start, build_from) = stages[0];
    let (runtime_start, runtime_from) = stages[stages.len() - 1];
    ensure!(build_from.contains("rust:"), "build stage: {build_from}");
    ensure!(
        !runtime_from.contains("rust:"),
        "runtime stage: {runtime_from}"
    );
    let build_stage = &instructions[build_start..stages[1].0];
    let runtime_stage = &instructions[runtime_start..];

    // The build stage builds with the Makefile, never on its own.
    let runs: Vec<&String> = build_stage
        .iter()
        .filter(|i| i.starts_with("RUN "))
        .collect();
    ensure!(
        runs.iter().any(|r| r.contains("make build")),
        "the build stage does not run `make build`: {runs:?}"
    );
    ensure!(
        !instructions
            .iter()
            .any(|i| i.contains("cargo ") || i.contains("rustup ")),
        "the Dockerfile has build commands of its own; share them through the Makefile"
    );
    let (build_prereqs, _) = make_target(&makefile, "build")?;
    ensure!(
        build_prereqs == ["policies", "host"],
        "make build: {build_prereqs:?}"
    );
    let (_, policies) = make_target(&makefile, "policies")?;
    ensure!(
        policies
            .iter()
            .any(|l| l.contains("--target wasm32-wasip1 --profile policy")),
        "{policies:?}"
    );
    let (_, host) = make_target(&makefile, "host")?;
    ensure!(
        host.iter().any(|l| l.contains("build --locked --release")),
        "{host:?}"
    );
    // What the runtime stage copies is what the build stage produced.
    for wanted in ["target/release/portcullis", "target/wasm32-wasip1/policy/"] {
        ensure!(
            build_stage.iter().any(|i| i.contains(wanted)),
            "the build stage does not take {wanted}"
        );
    }

    // The runtime user is the pods' fixed non-root UID.
    let user = runtime_stage
        .iter()
        .rev()
        .find_map(|i| i.strip_prefix("USER "))
        .context("no USER in the runtime stage")?;
    ensure!(user == format!("{UID}:{UID}"), "USER {user}");
    let deployment = only(&renders()?["base"], "Deployment")?;
    ensure!(deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == UID);

    // The default command uses flags serve knows and the config it copies.
    let flags = serve_flags()?;
    let cmd = runtime_stage
        .iter()
        .find_map(|i| i.strip_prefix("CMD "))
        .context("no CMD")?;
    let cmd: Vec<String> = serde_json::from_str(cmd).context("CMD is not exec form")?;
    for flag in flag_names(&cmd.join(" ")) {
        ensure!(flags.contains(&flag), "CMD: serve has no flag {flag}");
    }
    // On its own the image serves the standard set, beside the modules.
    ensure!(dockerfile.contains("policies/standard.yaml"));
    // The modules are where the chart's ClusterAdmissionPolicies name them.
    ensure!(
        dockerfile.contains(&format!(
            "COPY --from=build /out/policies/ {IMAGE_MODULES}/"
        )),
        "the image's library is not at {IMAGE_MODULES}"
    );
    let values: Json =
        serde_yaml_ng::from_str(&fs::read_to_string(root.join(CHART).join("values.yaml"))?)?;
    ensure!(
        values["library"]["moduleDir"] == IMAGE_MODULES,
        "{}",
        values["library"]
    );

    let ignore = fs::read_to_string(root.join(".dockerignore"))?;
    let ignored: Vec<&str> = ignore
        .lines()
        .map(|l| l.trim().trim_end_matches('/'))
        .collect();
    for entry in ["target", "fuzz", ".git"] {
        ensure!(ignored.contains(&entry), ".dockerignore lacks {entry}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// External host
// ---------------------------------------------------------------------------

/// The defaults the external webhook configurations keep.
fn check_webhook(config: &Json, mutating: bool) -> Result<&Json> {
    let hooks = config["webhooks"].as_array().context("webhooks")?;
    ensure!(hooks.len() == 1, "{} webhooks", hooks.len());
    let hook = &hooks[0];
    let (timeout, failure) = if mutating { (2, "Ignore") } else { (3, "Fail") };
    ensure!(strs(&hook["admissionReviewVersions"]) == ["v1"], "{hook}");
    ensure!(
        hook["sideEffects"] == "None",
        "sideEffects {}",
        hook["sideEffects"]
    );
    ensure!(
        hook["timeoutSeconds"] == timeout,
        "timeout {}",
        hook["timeoutSeconds"]
    );
    ensure!(
        hook["failurePolicy"] == failure,
        "failurePolicy {}",
        hook["failurePolicy"]
    );
    ensure!(
        hook["matchPolicy"] == "Equivalent",
        "matchPolicy {}",
        hook["matchPolicy"]
    );
    if mutating {
        ensure!(hook["reinvocationPolicy"] == "IfNeeded", "{hook}");
    }
    // Namespace exclusions.
    let exprs = hook["namespaceSelector"]["matchExpressions"]
        .as_array()
        .context("no namespaceSelector.matchExpressions")?;
    let excluded = exprs
        .iter()
        .find(|e| e["key"] == "kubernetes.io/metadata.name" && e["operator"] == "NotIn")
        .context("no NotIn on kubernetes.io/metadata.name")?;
    for ns in EXCLUDED {
        ensure!(strs(&excluded["values"]).contains(&ns), "{ns} not excluded");
    }
    ensure!(
        hook["objectSelector"].is_null(),
        "an objectSelector narrows the rules"
    );
    // Rules: every workload, CREATE and UPDATE, nothing cluster-wide.
    let rules = hook["rules"].as_array().context("rules")?;
    for (group, resource) in WORKLOADS {
        let covered = rules.iter().any(|r| {
            strs(&r["apiGroups"]).contains(&group)
                && strs(&r["resources"]).contains(&resource)
                && strs(&r["operations"]).contains(&"CREATE")
                && strs(&r["operations"]).contains(&"UPDATE")
        });
        ensure!(covered, "{group}/{resource} not covered");
    }
    for r in rules {
        for field in ["apiGroups", "apiVersions", "resources", "operations"] {
            ensure!(
                !strs(&r[field]).iter().any(|v| v.contains('*')),
                "wildcard {field}: {r}"
            );
        }
    }
    Ok(hook)
}

#[test]
fn the_external_webhooks_call_by_url_with_safe_defaults() -> Result<()> {
    let text = fs::read_to_string(repo_root().join("deploy/external/webhooks.yaml"))?;
    let docs = parse_documents(&text)?;
    ensure!(docs.len() == 2, "{} documents", docs.len());
    for (kind, mutating, path) in [
        ("MutatingWebhookConfiguration", true, "/mutate"),
        ("ValidatingWebhookConfiguration", false, "/validate"),
    ] {
        let config = find(&docs, kind, "portcullis")?;
        let hook = check_webhook(config, mutating).with_context(|| kind.to_string())?;
        let client = &hook["clientConfig"];
        ensure!(client["service"].is_null(), "{kind}: service");
        let url = client["url"].as_str().context("no url")?;
        ensure!(url.starts_with("https://"), "{url}");
        ensure!(url.ends_with(path), "{url} does not end with {path}");
        ensure!(client["caBundle"] == PLACEHOLDER, "{kind}: {client}");
    }
    Ok(())
}

#[test]
fn the_systemd_unit_runs_serve_with_known_flags_and_hardening() -> Result<()> {
    let text = fs::read_to_string(repo_root().join("deploy/external/portcullis.service"))?;
    let joined = text.replace("\\\n", " ");
    let settings: Vec<(&str, &str)> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .collect();
    let get = |key: &str| -> Vec<&str> {
        settings
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v.trim())
            .collect()
    };
    let exec = get("ExecStart");
    ensure!(exec.len() == 1, "ExecStart: {exec:?}");
    let words: Vec<&str> = exec[0].split_whitespace().collect();
    ensure!(
        words[0].ends_with("/portcullis") && words[1] == "serve",
        "{words:?}"
    );
    let flags = serve_flags()?;
    for flag in flag_names(exec[0]) {
        ensure!(flags.contains(&flag), "serve has no flag {flag}");
    }
    for flag in ["--config", "--tls-cert", "--tls-key"] {
        let value = flag_value(&words, flag).with_context(|| format!("no {flag}"))?;
        ensure!(value.starts_with("/etc/portcullis/"), "{flag} {value}");
    }
    ensure!(
        get("ExecReload")
            .iter()
            .any(|v| v.contains("kill -HUP $MAINPID")),
        "ExecReload"
    );
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
    ] {
        ensure!(get(key) == [value], "{key}={:?}, want {value}", get(key));
    }
    ensure!(
        get("User").iter().any(|u| !u.is_empty() && *u != "root") || get("DynamicUser") == ["yes"],
        "the unit must not run as root"
    );
    // Cranelift needs memory that becomes executable.
    ensure!(
        get("MemoryDenyWriteExecute") != ["yes"],
        "MemoryDenyWriteExecute breaks the JIT"
    );
    Ok(())
}
