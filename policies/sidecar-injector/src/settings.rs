//! The settings and their checks.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;
use serde_json::{Map, Value};

/// What to inject, and into which pods.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Settings {
    /// A pod opts in with any one of these labels or annotations.
    pub opt_in: Selector,
    /// A pod opts out with any one of these, even when it opted in.
    pub opt_out: Selector,
    /// Sidecar containers, appended to `containers`.
    pub containers: Vec<Map<String, Value>>,
    /// Init containers, appended to `initContainers` (or put first).
    pub init_containers: Vec<Map<String, Value>>,
    /// Put injected init containers before the pod's own, as a mesh needs
    /// when its init container sets up networking the others use.
    pub init_containers_first: bool,
    /// Volumes, appended to `volumes`.
    pub volumes: Vec<Map<String, Value>>,
    /// Environment variables added to app containers.
    pub env: Vec<Map<String, Value>>,
    /// The app containers `env` goes to, by name; empty for all of them.
    pub env_containers: Vec<String>,
    /// Annotations added (when absent) to the pod, or the template, that
    /// opted in, e.g. `sidecar.portcullis.dev/status: injected`.
    pub annotations: BTreeMap<String, String>,
}

/// `labels: {k: v}`, `annotations: {k: v}`: matches an object carrying any
/// one of the pairs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Selector {
    /// Label key and the value it must have.
    pub labels: BTreeMap<String, String>,
    /// Annotation key and the value it must have.
    pub annotations: BTreeMap<String, String>,
}

/// The label (opt in) and annotation (opt out) used when none is given.
pub const INJECT_KEY: &str = "sidecar.portcullis.dev/inject";

impl Default for Settings {
    fn default() -> Self {
        Settings {
            opt_in: Selector {
                labels: [(INJECT_KEY.to_string(), "true".to_string())].into(),
                annotations: BTreeMap::new(),
            },
            opt_out: Selector {
                labels: BTreeMap::new(),
                annotations: [(INJECT_KEY.to_string(), "false".to_string())].into(),
            },
            containers: Vec::new(),
            init_containers: Vec::new(),
            init_containers_first: false,
            volumes: Vec::new(),
            env: Vec::new(),
            env_containers: Vec::new(),
            annotations: BTreeMap::new(),
        }
    }
}

impl Selector {
    /// Whether `metadata` carries one of the pairs.
    pub fn matches(&self, metadata: &Value) -> bool {
        let has = |field: &str, pairs: &BTreeMap<String, String>| {
            pairs
                .iter()
                .any(|(key, value)| metadata[field][key].as_str() == Some(value.as_str()))
        };
        has("labels", &self.labels) || has("annotations", &self.annotations)
    }

    fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.annotations.is_empty()
    }
}

impl Settings {
    /// The names of the injected containers and init containers.
    pub fn container_names(&self) -> impl Iterator<Item = &str> {
        self.containers
            .iter()
            .chain(&self.init_containers)
            .filter_map(|c| c.get("name")?.as_str())
    }

    /// What `validate-settings` checks: that something is injected, into
    /// pods that can opt in, and that every item is complete and named
    /// once (the API server would reject the pods otherwise).
    pub fn check(&self) -> Result<(), String> {
        if self.containers.is_empty()
            && self.init_containers.is_empty()
            && self.volumes.is_empty()
            && self.env.is_empty()
        {
            return Err(
                "settings inject nothing: give containers, initContainers, volumes or env"
                    .to_string(),
            );
        }
        if self.opt_in.is_empty() {
            return Err("optIn must give at least one label or annotation".to_string());
        }
        // Containers and init containers share one namespace in a pod.
        let mut names = HashSet::new();
        for (field, list) in [
            ("containers", &self.containers),
            ("initContainers", &self.init_containers),
        ] {
            for (i, container) in list.iter().enumerate() {
                let name = name_of(container, field, i)?;
                if !is_dns_label(name) {
                    return Err(format!(
                        "{field}[{i}]: name {name:?} is not a valid container name (a lower-case DNS label of at most 63 characters)"
                    ));
                }
                let image = container.get("image").and_then(Value::as_str);
                if image.is_none_or(str::is_empty) {
                    return Err(format!("{field}[{i}] ({name:?}) has no image"));
                }
                if !names.insert(name) {
                    return Err(format!(
                        "container name {name:?} is given twice in containers and initContainers"
                    ));
                }
            }
        }
        unique_names(&self.volumes, "volumes")?;
        unique_names(&self.env, "env")?;
        if !self.env_containers.is_empty() && self.env.is_empty() {
            return Err("envContainers is set but env is empty".to_string());
        }
        if let Some(name) = self
            .container_names()
            .find(|n| self.env_containers.iter().any(|e| e == n))
        {
            return Err(format!(
                "envContainers names the injected container {name:?}; env goes to the pod's own containers"
            ));
        }
        Ok(())
    }
}

/// The `name` of `list[i]`, which must be a non-empty string.
fn name_of<'a>(item: &'a Map<String, Value>, list: &str, i: usize) -> Result<&'a str, String> {
    item.get("name")
        .and_then(Value::as_str)
        .filter(|name| !name.is_empty())
        .ok_or_else(|| format!("{list}[{i}] has no name"))
}

fn unique_names(list: &[Map<String, Value>], field: &str) -> Result<(), String> {
    let mut names = HashSet::new();
    for (i, item) in list.iter().enumerate() {
        let name = name_of(item, field, i)?;
        if !names.insert(name) {
            return Err(format!("{field}: name {name:?} is given twice"));
        }
    }
    Ok(())
}

/// RFC 1123 label: what the API server requires of a container name.
fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    name.len() <= 63
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes.iter().all(|b| alnum(b) || *b == b'-')
}
