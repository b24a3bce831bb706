//! Policy test suites: YAML files of cases, each a review (or a bare
//! object and an operation, wrapped into a review as the API server would
//! send it) and what the server must answer. `portcullis test` runs them
//! with the server's own engine and chains (`offline`), so a suite that
//! passes describes what the server will do.
//!
//! ```yaml
//! config: ../standard.yaml          # or `policies:` (and `defaults:`) inline
//! cases:
//!   - name: nginx from Docker Hub is allowed
//!     policy: allowed-images        # optional: only this policy
//!     operation: CREATE             # default CREATE
//!     object: { apiVersion: v1, kind: Pod, ... }   # or objectFile, review, reviewFile
//!     expect:
//!       allowed: true
//!       message: "substring of status.message"
//!       warnings: ["substring of a warning"]
//!       patched: { ... }            # the object after mutation, compared as JSON
//!       noPatch: true
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::{Config, ConfigError, RawDefaults, RawPolicy};

/// Why a suite could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    #[error("cannot read test suite {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("test suite {path} is invalid: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSuite {
    config: Option<PathBuf>,
    defaults: Option<RawDefaults>,
    policies: Option<Vec<RawPolicy>>,
    cases: Vec<RawCase>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawCase {
    name: String,
    policy: Option<String>,
    operation: Option<String>,
    object: Option<Value>,
    object_file: Option<PathBuf>,
    old_object: Option<Value>,
    old_object_file: Option<PathBuf>,
    review: Option<Value>,
    review_file: Option<PathBuf>,
    namespace: Option<String>,
    sub_resource: Option<String>,
    resource: Option<String>,
    user_info: Option<Value>,
    expect: Expect,
}

/// What a case expects of the answer.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Expect {
    pub allowed: bool,
    /// A substring of `status.message`.
    pub message: Option<String>,
    /// Each must be a substring of some warning.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The object after the mutation, compared as JSON values.
    pub patched: Option<Value>,
    /// Read `patched` from a file instead (JSON or YAML).
    pub patched_file: Option<PathBuf>,
    /// The answer carries no patch.
    #[serde(default)]
    pub no_patch: bool,
}

/// One case, ready to run.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub policy: Option<String>,
    /// The AdmissionReview to evaluate, as JSON text.
    pub review: Vec<u8>,
    pub expect: Expect,
}

/// A suite, ready to run.
#[derive(Debug, Clone)]
pub struct Suite {
    pub path: PathBuf,
    pub config: Config,
    pub cases: Vec<Case>,
}

impl Suite {
    /// Reads a suite and everything it names (config, files), relative to
    /// the suite's directory.
    ///
    /// # Errors
    /// A [`SuiteError`] naming the file and what was wrong.
    pub fn load(path: &Path) -> Result<Self, SuiteError> {
        let text = std::fs::read_to_string(path).map_err(|cause| SuiteError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        let invalid = |message: String| SuiteError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let raw: RawSuite = serde_yaml_ng::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let config = match (raw.config, raw.policies) {
            (Some(config), None) => {
                if raw.defaults.is_some() {
                    return Err(invalid(
                        "`defaults` belongs in the config file `config` names".into(),
                    ));
                }
                Config::load(&base.join(config))?
            }
            (None, Some(policies)) => {
                Config::from_parts(path, raw.defaults.unwrap_or_default(), policies)?
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "give either `config` or `policies`, not both".into(),
                ));
            }
            (None, None) => {
                return Err(invalid(
                    "no policies: give `config` (a config file) or `policies`".into(),
                ));
            }
        };
        if raw.cases.is_empty() {
            return Err(invalid("no cases".into()));
        }
        let mut cases = Vec::with_capacity(raw.cases.len());
        for (index, case) in raw.cases.into_iter().enumerate() {
            let at = format!("cases[{index}] ({})", case.name);
            cases.push(
                case.prepare(base, index)
                    .map_err(|m| invalid(format!("{at}: {m}")))?,
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            config,
            cases,
        })
    }
}

/// Reads a JSON or YAML file into a value.
fn read_value(base: &Path, file: &Path) -> Result<Value, String> {
    let path = base.join(file);
    let text = std::fs::read_to_string(&path)
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    // YAML is a superset of JSON.
    serde_yaml_ng::from_str(&text).map_err(|err| format!("{}: {err}", path.display()))
}

fn one_of(
    base: &Path,
    inline: Option<Value>,
    file: Option<PathBuf>,
    what: &str,
) -> Result<Option<Value>, String> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(format!("give `{what}` or `{what}File`, not both")),
        (Some(value), None) => Ok(Some(value)),
        (None, Some(file)) => read_value(base, &file).map(Some),
        (None, None) => Ok(None),
    }
}

impl RawCase {
    fn prepare(self, base: &Path, index: usize) -> Result<Case, String> {
        let review = one_of(base, self.review, self.review_file, "review")?;
        let object = one_of(base, self.object, self.object_file, "object")?;
        let old_object = one_of(base, self.old_object, self.old_object_file, "oldObject")?;
        let review = match (review, object) {
            (Some(_), Some(_)) => return Err("give a `review` or an `object`, not both".into()),
            (None, None) => return Err("give a `review` (or `reviewFile`) or an `object`".into()),
            (Some(review), None) => {
                let wrapping = [
                    ("operation", self.operation.is_some()),
                    ("oldObject", old_object.is_some()),
                    ("namespace", self.namespace.is_some()),
                    ("subResource", self.sub_resource.is_some()),
                    ("resource", self.resource.is_some()),
                    ("userInfo", self.user_info.is_some()),
                ];
                if let Some((field, _)) = wrapping.iter().find(|(_, set)| *set) {
                    return Err(format!(
                        "`{field}` only applies to an `object`; edit the review instead"
                    ));
                }
                review
            }
            (None, Some(object)) => wrap(
                &object,
                Wrapping {
                    operation: self.operation.as_deref().unwrap_or("CREATE"),
                    old_object,
                    namespace: self.namespace,
                    sub_resource: self.sub_resource,
                    resource: self.resource,
                    user_info: self.user_info,
                    index,
                },
            )?,
        };
        let mut expect = self.expect;
        if let Some(file) = expect.patched_file.take() {
            if expect.patched.is_some() {
                return Err("give `expect.patched` or `expect.patchedFile`, not both".into());
            }
            expect.patched = Some(read_value(base, &file)?);
        }
        if expect.no_patch && expect.patched.is_some() {
            return Err("`expect.noPatch` and `expect.patched` contradict each other".into());
        }
        let review = serde_json::to_vec(&review).map_err(|err| err.to_string())?;
        Ok(Case {
            name: self.name,
            policy: self.policy,
            review,
            expect,
        })
    }
}

/// How a bare object becomes a review.
struct Wrapping<'a> {
    operation: &'a str,
    old_object: Option<Value>,
    namespace: Option<String>,
    sub_resource: Option<String>,
    resource: Option<String>,
    user_info: Option<Value>,
    index: usize,
}

/// The resource the API server names a kind by: lower case, plural.
pub fn plural(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    if let Some(stem) = lower.strip_suffix('y')
        && !stem.ends_with(['a', 'e', 'i', 'o', 'u'])
    {
        return format!("{stem}ies");
    }
    if lower.ends_with('s')
        || lower.ends_with('x')
        || lower.ends_with("ch")
        || lower.ends_with("sh")
    {
        return format!("{lower}es");
    }
    format!("{lower}s")
}

/// An AdmissionReview v1 for `object` as the API server would send it.
fn wrap(object: &Value, how: Wrapping<'_>) -> Result<Value, String> {
    let operation = match how.operation {
        op @ ("CREATE" | "UPDATE" | "DELETE" | "CONNECT") => op,
        other => {
            return Err(format!(
                "operation {other:?} is not one of CREATE, UPDATE, DELETE, CONNECT"
            ));
        }
    };
    let api_version = object["apiVersion"]
        .as_str()
        .ok_or("the object has no apiVersion")?;
    let kind = object["kind"].as_str().ok_or("the object has no kind")?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let resource = how.resource.unwrap_or_else(|| plural(kind));
    let gvk = json!({"group": group, "version": version, "kind": kind});
    let gvr = json!({"group": group, "version": version, "resource": resource});
    let namespace = how
        .namespace
        .or_else(|| object["metadata"]["namespace"].as_str().map(str::to_string))
        .or_else(|| {
            // The API server gives a Namespace its own name as namespace.
            (kind == "Namespace")
                .then(|| object["metadata"]["name"].as_str().map(str::to_string))
                .flatten()
        });
    let mut request = json!({
        "uid": format!("portcullis-test-{:04}", how.index),
        "kind": gvk,
        "resource": gvr,
        "requestKind": gvk,
        "requestResource": gvr,
        "operation": operation,
        "userInfo": how.user_info.unwrap_or_else(|| json!({
            "username": "portcullis-test",
            "groups": ["system:authenticated"],
        })),
        "dryRun": false,
    });
    if let Some(name) = object["metadata"]["name"].as_str() {
        request["name"] = json!(name);
    }
    if let Some(namespace) = namespace {
        request["namespace"] = json!(namespace);
    }
    if let Some(sub_resource) = how.sub_resource {
        request["subResource"] = json!(sub_resource);
    }
    match operation {
        "DELETE" => request["oldObject"] = object.clone(),
        "UPDATE" => {
            request["object"] = object.clone();
            request["oldObject"] = how.old_object.unwrap_or_else(|| object.clone());
        }
        _ => request["object"] = object.clone(),
    }
    Ok(json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": request,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plurals_follow_the_api_servers_habits() {
        for (kind, resource) in [
            ("Pod", "pods"),
            ("Deployment", "deployments"),
            ("Ingress", "ingresses"),
            ("NetworkPolicy", "networkpolicies"),
            ("Gateway", "gateways"),
            ("CronJob", "cronjobs"),
        ] {
            assert_eq!(plural(kind), resource);
        }
    }

    #[test]
    fn bare_objects_are_wrapped_like_the_api_server_does() {
        let object = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"}});
        let review = wrap(
            &object,
            Wrapping {
                operation: "DELETE",
                old_object: None,
                namespace: None,
                sub_resource: None,
                resource: None,
                user_info: None,
                index: 3,
            },
        )
        .expect("wrapped");
        let request = &review["request"];
        assert_eq!(request["resource"]["resource"], "deployments");
        assert_eq!(request["resource"]["group"], "apps");
        assert_eq!(request["namespace"], "shop");
        assert_eq!(request["oldObject"], object);
        assert!(request.get("object").is_none());
        assert_eq!(request["uid"], "portcullis-test-0003");
    }

    #[test]
    fn suites_say_what_is_wrong_and_where() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |text: &str| {
            let path = dir.path().join("suite.yaml");
            std::fs::write(&path, text).expect("write");
            Suite::load(&path).expect_err("invalid").to_string()
        };
        let err = write("cases: []\n");
        assert!(err.contains("no policies"), "{err}");
        let err = write("config: c.yaml\npolicies: []\ncases: []\n");
        assert!(err.contains("not both"), "{err}");
        let err = write("policies: []\ncases:\n  - name: x\n    expect: { allowed: true }\n");
        assert!(err.contains("cases[0] (x): give a `review`"), "{err}");
        let err = write(
            "policies: []\ncases:\n  - name: y\n    operation: MAKE\n    object: {apiVersion: v1, kind: Pod}\n    expect: { allowed: true }\n",
        );
        assert!(err.contains("operation \"MAKE\""), "{err}");
        let err = write(
            "policies: []\ncases:\n  - name: z\n    objekt: {}\n    expect: { allowed: true }\n",
        );
        assert!(err.contains("unknown field `objekt`"), "{err}");
        assert!(err.contains("line 4"), "{err}");
    }
}
