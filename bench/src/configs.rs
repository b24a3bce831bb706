//! The configurations under test, written into the run's directory with
//! module paths pointing at the modules this build made.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde_yaml_ng::Value;

/// `policies/standard.yaml` as shipped, modules pointed at `modules`.
pub fn standard(root: &Path, modules: &Path, dir: &Path) -> Result<PathBuf> {
    let shipped = root.join("policies/standard.yaml");
    let text = std::fs::read_to_string(&shipped)
        .with_context(|| format!("reading {}", shipped.display()))?;
    let text = text.replace(
        "../target/wasm32-wasip1/policy/",
        &format!("{}/", modules.display()),
    );
    write(dir, "standard.yaml", &text)
}

/// One policy: the standard set's `pod-security` alone, for comparison
/// with a single-policy server.
pub fn one(root: &Path, modules: &Path, dir: &Path) -> Result<PathBuf> {
    let standard = std::fs::read_to_string(standard(root, modules, dir)?)?;
    let mut config: Value = serde_yaml_ng::from_str(&standard)?;
    let Some(policies) = config.get_mut("policies").and_then(Value::as_sequence_mut) else {
        bail!("policies/standard.yaml has no policies list");
    };
    policies.retain(|p| p.get("name").and_then(Value::as_str) == Some("pod-security"));
    if policies.len() != 1 {
        bail!("policies/standard.yaml has no pod-security policy");
    }
    write(dir, "one.yaml", &serde_yaml_ng::to_string(&config)?)
}

/// The standard set with `allowed-images` shadowed by a candidate (the
/// same module with stricter settings, so it disagrees on some images):
/// what shadow evaluation adds to a review.
pub fn shadowed(root: &Path, modules: &Path, dir: &Path) -> Result<PathBuf> {
    let standard = std::fs::read_to_string(standard(root, modules, dir)?)?;
    let mut config: Value = serde_yaml_ng::from_str(&standard)?;
    let Some(policy) = config
        .get_mut("policies")
        .and_then(Value::as_sequence_mut)
        .and_then(|policies| {
            policies
                .iter_mut()
                .find(|p| p.get("name").and_then(Value::as_str) == Some("allowed-images"))
        })
        .and_then(Value::as_mapping_mut)
    else {
        bail!("policies/standard.yaml has no allowed-images policy");
    };
    let shadow: Value =
        serde_yaml_ng::from_str("settings: { allowed: [registry.k8s.io/, ghcr.io/] }")?;
    policy.insert(Value::from("shadow"), shadow);
    write(dir, "shadowed.yaml", &serde_yaml_ng::to_string(&config)?)
}

/// No policies at all: the cost of HTTPS and the AdmissionReview alone.
pub fn empty(dir: &Path) -> Result<PathBuf> {
    write(dir, "empty.yaml", "policies: []\n")
}

/// Ten policies, ten different modules: the standard set's five plus the
/// first entry of each other policy's end-to-end fragment
/// (`tests/library/*.yaml`), for the cold-start figures.
pub fn ten(root: &Path, modules: &Path, dir: &Path) -> Result<PathBuf> {
    let standard = std::fs::read_to_string(standard(root, modules, dir)?)?;
    let mut config: Value = serde_yaml_ng::from_str(&standard)?;
    let Some(policies) = config.get_mut("policies").and_then(Value::as_sequence_mut) else {
        bail!("policies/standard.yaml has no policies list");
    };
    let mut names: Vec<String> = policies
        .iter()
        .filter_map(|p| p.get("module").and_then(Value::as_str).map(str::to_string))
        .collect();
    let mut fragments: Vec<PathBuf> = std::fs::read_dir(root.join("tests/library"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    fragments.sort();
    for fragment in fragments {
        let text = std::fs::read_to_string(&fragment)?
            .replace("{{modules}}", &modules.display().to_string());
        let entries: Vec<Value> = serde_yaml_ng::from_str(&text)
            .with_context(|| format!("parsing {}", fragment.display()))?;
        let Some(entry) = entries.into_iter().next() else {
            continue;
        };
        let module = entry
            .get("module")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if !names.contains(&module) {
            names.push(module);
            policies.push(entry);
        }
    }
    let count = policies.len();
    if count != 10 {
        bail!("expected ten policies with distinct modules, assembled {count}");
    }
    write(dir, "ten.yaml", &serde_yaml_ng::to_string(&config)?)
}

fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
