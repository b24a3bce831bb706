//! The deployment: `deploy/kubernetes` (base and overlays), the Dockerfile,
//! `deploy/external`.
//!
//! The kustomizations are rendered with `kubectl kustomize` from a copy of
//! `deploy/kubernetes` whose `base/policies/` is filled by the same script
//! `make deploy-render` uses, every rendered object is parsed, and the
//! invariants the manifests promise are checked in every rendering, so an
//! overlay or a later edit cannot silently drop one.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use portcullis_e2e::{
    CLI_TIMEOUT, Json, fixtures_dir, json, path_str, paths, read_json, repo_root, review_of,
    run_cli,
};
use serde::Deserialize as _;

/// The namespaces no webhook call may be made for.
const EXCLUDED: [&str; 3] = ["kube-system", "kube-node-lease", "portcullis"];
/// The resources the deployed policies need the webhooks to send:
/// `(API group, resource)`.
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
/// The UID and GID of the image's user and of the pods.
const UID: i64 = 65532;
/// The service DNS names the API server may dial.
const SERVICE_NAMES: [&str; 2] = [
    "portcullis.portcullis.svc",
    "portcullis.portcullis.svc.cluster.local",
];
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

/// The base and every overlay, rendered once per test binary.
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
    Ok(renders)
}

fn kind_of(doc: &Json) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}
fn name_of(doc: &Json) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
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
        flags.contains("--config") && flags.contains("--tls-cert"),
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

// ---------------------------------------------------------------------------
// Every render
// ---------------------------------------------------------------------------

#[test]
fn every_object_is_labelled_with_its_install_phase_and_namespaced() -> Result<()> {
    each_render(|_, docs| {
        for kind in [
            "Namespace",
            "ServiceAccount",
            "Deployment",
            "PodDisruptionBudget",
            "Service",
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
        ] {
            only(docs, kind)?;
        }
        ensure!(only(docs, "Namespace")?["metadata"]["name"] == "portcullis");
        for doc in docs {
            let (kind, name) = (kind_of(doc), name_of(doc));
            ensure!(!name.is_empty(), "an object without a name: {doc}");
            let phase = &doc["metadata"]["labels"]["portcullis.dev/phase"];
            let want = if kind.ends_with("WebhookConfiguration") {
                "webhooks"
            } else {
                "server"
            };
            ensure!(
                phase == want,
                "{kind}/{name}: phase label {phase}, want {want}"
            );
            let cluster_scoped = matches!(
                kind,
                "Namespace" | "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration"
            );
            let ns = &doc["metadata"]["namespace"];
            if cluster_scoped {
                ensure!(ns.is_null(), "{kind}/{name} has a namespace");
            } else {
                ensure!(ns == "portcullis", "{kind}/{name} in namespace {ns}");
            }
        }
        let sa = find(docs, "ServiceAccount", "portcullis")?;
        ensure!(sa["automountServiceAccountToken"] == false, "{sa}");
        ensure!(
            all_of(docs, "Role").is_empty()
                && all_of(docs, "ClusterRole").is_empty()
                && all_of(docs, "RoleBinding").is_empty()
                && all_of(docs, "ClusterRoleBinding").is_empty(),
            "Portcullis needs no API permissions"
        );
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
        ensure!(
            pod["automountServiceAccountToken"] == false,
            "token mounted"
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

        // Arguments: flags serve knows, and the ports and files the rest
        // of the manifest relies on.
        let args = strs(&c["args"]);
        ensure!(args.first() == Some(&"serve"), "args {args:?}");
        for flag in flag_names(&args.join(" ")) {
            ensure!(flags.contains(&flag), "serve has no flag {flag}");
        }
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

        // Volumes: the policy set from ConfigMaps at the config's directory,
        // the TLS Secret at the certificate's; nothing writable, no subPath.
        let mounts = c["volumeMounts"].as_array().context("volumeMounts")?;
        let volumes = pod["volumes"].as_array().context("volumes")?;
        let mount_of = |file: &str| -> Result<&Json> {
            let dir = Path::new(file).parent().context("no directory")?;
            let m = mounts
                .iter()
                .find(|m| m["mountPath"].as_str().map(Path::new) == Some(dir))
                .with_context(|| format!("nothing mounted at {}", dir.display()))?;
            ensure!(m["subPath"].is_null(), "subPath mounts are never updated");
            ensure!(m["readOnly"] == true, "{m}");
            volumes
                .iter()
                .find(|v| v["name"] == m["name"])
                .context("mount of an unknown volume")
        };
        let config = flag_value(&args, "--config").context("--config")?;
        let policies = mount_of(config)?;
        let sources = policies["projected"]["sources"]
            .as_array()
            .context("the policy volume is not projected")?;
        ensure!(!sources.is_empty());
        for source in sources {
            let name = source["configMap"]["name"]
                .as_str()
                .with_context(|| format!("a source that is not a ConfigMap: {source}"))?;
            find(docs, "ConfigMap", name)?;
        }
        let cert = flag_value(&args, "--tls-cert").context("--tls-cert")?;
        let key = flag_value(&args, "--tls-key").context("--tls-key")?;
        ensure!(Path::new(cert).parent() == Path::new(key).parent());
        let tls = mount_of(cert)?;
        ensure!(tls["secret"]["secretName"] == "portcullis-tls", "{tls}");
        // The server writes only its compiled-module cache, to a bounded
        // emptyDir at --cache-dir; nothing else is writable.
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
// The policy set
// ---------------------------------------------------------------------------

/// The files of the projected policy volume: name -> bytes.
fn policy_volume(docs: &[Json]) -> Result<BTreeMap<String, Vec<u8>>> {
    let deployment = only(docs, "Deployment")?;
    let volume = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == "policies"))
        .context("no volume `policies`")?;
    let mut files = BTreeMap::new();
    for source in volume["projected"]["sources"]
        .as_array()
        .context("sources")?
    {
        let name = source["configMap"]["name"].as_str().context("configMap")?;
        ensure!(
            source["configMap"]["items"].is_null(),
            "{name}: items would hide keys"
        );
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

/// The module file names `config.yaml` names.
fn modules_of(config: &Json) -> Result<Vec<String>> {
    config["policies"]
        .as_array()
        .context("no policies")?
        .iter()
        .map(|p| {
            p["module"]
                .as_str()
                .map(str::to_string)
                .with_context(|| format!("policy without a module: {p}"))
        })
        .collect()
}

#[test]
fn the_configmaps_hold_the_standard_set_with_its_modules() -> Result<()> {
    let paths = paths()?;
    each_render(|_, docs| {
        let files = policy_volume(docs)?;
        let config_text = files.get("config.yaml").context("no config.yaml")?;
        let config: Json = serde_yaml_ng::from_slice(config_text).context("config.yaml")?;
        let modules = modules_of(&config)?;
        let names: Vec<&str> = config["policies"]
            .as_array()
            .context("policies")?
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        ensure!(
            names
                == [
                    "container-defaults",
                    "default-labels",
                    "allowed-images",
                    "required-labels",
                    "pod-security",
                ],
            "not the standard set: {names:?}"
        );
        for module in &modules {
            ensure!(
                !module.contains('/'),
                "{module}: modules are beside config.yaml in the volume"
            );
            let bytes = files
                .get(module)
                .with_context(|| format!("{module} is not in the ConfigMaps"))?;
            ensure!(bytes.starts_with(b"\0asm"), "{module} is not wasm");
            let built = fs::read(paths.modules.join(module))?;
            ensure!(*bytes == built, "{module} differs from the built module");
        }
        // Fixed names (no kustomize hash suffix): `kubectl apply` then
        // updates the mounted ConfigMaps in place and the pods hot-reload,
        // where a new name would roll the Deployment out.
        let mut want: BTreeSet<String> = names
            .iter()
            .map(|n| format!("portcullis-policy-{n}"))
            .collect();
        want.insert("portcullis-config".to_string());
        let have: BTreeSet<String> = all_of(docs, "ConfigMap")
            .into_iter()
            .map(|c| name_of(c).to_string())
            .collect();
        ensure!(have == want, "ConfigMaps {have:?}, want {want:?}");
        let unused: Vec<&String> = files
            .keys()
            .filter(|k| *k != "config.yaml" && !modules.contains(k))
            .collect();
        ensure!(unused.is_empty(), "modules no policy names: {unused:?}");
        // Every policy skips the namespaces the webhooks skip.
        for p in config["policies"].as_array().context("policies")? {
            let exclude = strs(&p["match"]["namespaces"]["exclude"]);
            for ns in EXCLUDED {
                ensure!(exclude.contains(&ns), "{}: {ns} not excluded", p["name"]);
            }
        }
        Ok(())
    })
}

/// Writes the policy volume of the base render into a directory.
fn write_policy_volume(dir: &Path) -> Result<PathBuf> {
    let docs = &renders()?["base"];
    for (name, bytes) in policy_volume(docs)? {
        fs::write(dir.join(&name), bytes)?;
    }
    Ok(dir.join("config.yaml"))
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

#[test]
fn the_deployed_config_loads_and_decides() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = write_policy_volume(dir.path())?;
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
    Ok(())
}

#[test]
fn portcullis_own_deployment_passes_pod_security_restricted() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = write_policy_volume(dir.path())?;
    let mut deployment = only(&renders()?["base"], "Deployment")?.clone();
    // Judged as if it were in an ordinary namespace.
    deployment["metadata"]["namespace"] = json!("default");
    let file = dir.path().join("deployment.json");
    fs::write(
        &file,
        serde_json::to_vec(&review_of(&deployment, "CREATE"))?,
    )?;
    let answer = eval(&config, &file, Some("pod-security"))?;
    ensure!(answer["allowed"] == true, "{answer}");
    Ok(())
}

// ---------------------------------------------------------------------------
// Webhook configurations
// ---------------------------------------------------------------------------

/// The defaults both webhook configurations must keep, wherever they are.
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
fn the_webhooks_keep_their_safe_defaults_and_reach_the_service() -> Result<()> {
    each_render(|_, docs| {
        let service = find(docs, "Service", "portcullis")?;
        for (kind, mutating, path) in [
            ("MutatingWebhookConfiguration", true, "/mutate"),
            ("ValidatingWebhookConfiguration", false, "/validate"),
        ] {
            let config = find(docs, kind, "portcullis")?;
            let hook = check_webhook(config, mutating).with_context(|| kind.to_string())?;
            let svc = &hook["clientConfig"]["service"];
            ensure!(
                hook["clientConfig"]["url"].is_null(),
                "{kind}: url and service"
            );
            ensure!(svc["name"] == service["metadata"]["name"], "{kind}: {svc}");
            ensure!(
                svc["namespace"] == service["metadata"]["namespace"],
                "{kind}: {svc}"
            );
            ensure!(svc["path"] == path, "{kind}: {svc}");
            ensure!(svc["port"] == 443 || svc["port"].is_null(), "{kind}: {svc}");
        }
        Ok(())
    })
}

#[test]
fn the_base_has_no_ca_and_each_overlay_provides_one() -> Result<()> {
    let renders = renders()?;
    for (name, docs) in renders {
        for kind in [
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
        ] {
            let config = find(docs, kind, "portcullis")?;
            let ca = &config["webhooks"][0]["clientConfig"]["caBundle"];
            let inject = &config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"];
            match name.as_str() {
                "base" => ensure!(ca.is_null() && inject.is_null(), "base {kind}"),
                "cert-manager" => ensure!(
                    ca.is_null() && inject == "portcullis/portcullis-tls",
                    "cert-manager {kind}: {inject}"
                ),
                "self-signed" => ensure!(
                    ca == PLACEHOLDER && inject.is_null(),
                    "self-signed {kind}: {ca}"
                ),
                other => bail!("unexpected render {other}"),
            }
        }
    }
    Ok(())
}

#[test]
fn cert_manager_issues_the_serving_certificate_from_its_own_ca() -> Result<()> {
    let docs = &renders()?["cert-manager"];
    let deployment = only(docs, "Deployment")?;
    let tls_secret = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .and_then(|vs| vs.iter().find_map(|v| v["secret"]["secretName"].as_str()))
        .context("no secret volume")?;
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
    // inject-ca-from names this Certificate, in its namespace.
    let reference = format!(
        "{}/{}",
        serving["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default(),
        name_of(serving)
    );
    for kind in [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ] {
        let config = find(docs, kind, "portcullis")?;
        ensure!(
            config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == reference,
            "{kind} does not inject from {reference}"
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
fn the_self_signed_install_creates_the_secret_then_the_server_then_the_webhooks() -> Result<()> {
    let docs = &renders()?["self-signed"];
    let work = tempfile::tempdir()?;
    // The rendering install.sh gets from `make deploy-self-signed`.
    let manifests = work.path().join("self-signed.yaml");
    let text: Vec<String> = docs
        .iter()
        .map(serde_yaml_ng::to_string)
        .collect::<Result<_, _>>()?;
    fs::write(&manifests, text.join("---\n"))?;
    let cert_dir = work.path().join("certs");

    let check_run = |calls: &[Call]| -> Result<String> {
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
        let server = position(calls, "apply -l portcullis.dev/phase=server", |c| {
            has(
                c,
                &[
                    "apply",
                    "--server-side",
                    "-l",
                    "portcullis.dev/phase=server",
                ],
            )
        })?;
        let rollout = position(calls, "rollout status", |c| {
            has(c, &["rollout", "status", "deployment/portcullis"])
        })?;
        let hooks = position(calls, "apply -l portcullis.dev/phase=webhooks", |c| {
            has(
                c,
                &[
                    "apply",
                    "--server-side",
                    "-l",
                    "portcullis.dev/phase=webhooks",
                ],
            )
        })?;
        ensure!(
            ns < secret && secret < server && server < rollout && rollout < hooks,
            "order: namespace {ns}, secret {secret}, server {server}, rollout {rollout}, webhooks {hooks}"
        );
        // The server phase gets the rendering as it is.
        ensure!(calls[server].file.as_deref() == Some(fs::read_to_string(&manifests)?.as_str()));
        // The Secret: type TLS, the files of CERT_DIR.
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
        // The webhooks: the CA substituted in both, nothing else changed.
        let hooks_text = calls[hooks].file.as_deref().unwrap_or_default();
        ensure!(
            !hooks_text.contains(PLACEHOLDER),
            "placeholder left in the webhooks"
        );
        let hook_docs = parse_documents(hooks_text)?;
        let ca = BASE64.encode(fs::read(cert_dir.join("ca.crt"))?);
        for kind in [
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
        ] {
            let config = find(&hook_docs, kind, "portcullis")?;
            ensure!(
                config["webhooks"][0]["clientConfig"]["caBundle"] == ca.as_str(),
                "{kind} caBundle is not ca.crt"
            );
            check_webhook(config, kind.starts_with("Mutating"))?;
        }
        ensure!(
            hook_docs.len() == docs.len(),
            "the substitution changed the documents"
        );
        Ok(ca)
    };

    let (calls, _) = run_install(&manifests, &cert_dir, work.path())?;
    let ca_first = check_run(&calls)?;
    let dns = san_dns_names(&cert_dir.join("tls.crt"))?;
    for name in SERVICE_NAMES {
        ensure!(
            dns.iter().any(|d| d == name),
            "{name} not in the SANs {dns:?}"
        );
    }
    let first_cert = fs::read(cert_dir.join("tls.crt"))?;

    // A second run rotates the serving certificate with the same CA.
    let (calls, stdout) = run_install(&manifests, &cert_dir, work.path())?;
    let ca_second = check_run(&calls)?;
    ensure!(ca_first == ca_second, "a re-run changed the caBundle");
    ensure!(
        fs::read(cert_dir.join("tls.crt"))? != first_cert,
        "no new certificate"
    );
    ensure!(stdout.contains("with the CA in"), "{stdout}");
    Ok(())
}

#[test]
fn the_self_signed_install_refuses_a_rendering_without_the_placeholder() -> Result<()> {
    let docs = &renders()?["cert-manager"];
    let work = tempfile::tempdir()?;
    let manifests = work.path().join("cert-manager.yaml");
    let text: Vec<String> = docs
        .iter()
        .map(serde_yaml_ng::to_string)
        .collect::<Result<_, _>>()?;
    fs::write(&manifests, text.join("---\n"))?;
    let err = run_install(&manifests, &work.path().join("certs"), work.path())
        .err()
        .context("install.sh accepted the cert-manager rendering")?;
    ensure!(format!("{err:#}").contains(PLACEHOLDER), "{err:#}");
    ensure!(
        !work.path().join("log/count").exists(),
        "kubectl was called"
    );
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
    ensure!(dockerfile.contains("deploy/kubernetes/base/config.yaml"));

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

#[test]
fn the_external_webhooks_call_by_url_with_the_same_defaults() -> Result<()> {
    let text = fs::read_to_string(repo_root().join("deploy/external/webhooks.yaml"))?;
    let docs = parse_documents(&text)?;
    ensure!(docs.len() == 2, "{} documents", docs.len());
    let base = &renders()?["base"];
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
        // Everything but clientConfig equals the in-cluster webhook.
        let mut ours = hook.clone();
        let mut theirs = find(base, kind, "portcullis")?["webhooks"][0].clone();
        ours["clientConfig"] = Json::Null;
        theirs["clientConfig"] = Json::Null;
        ensure!(ours == theirs, "{kind} differs from the in-cluster one");
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
