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

use portcullis_engine::{Config, ConfigError, RawDefaults, RawPolicy};
use portcullis_kube::review::ReviewBuilder;

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

/// An AdmissionReview v1 for `object` as the API server would send it,
/// from the one builder suites, end-to-end tests and the SDK share.
fn wrap(object: &Value, how: Wrapping<'_>) -> Result<Value, String> {
    let mut builder = ReviewBuilder::new(how.operation, object.clone())
        .map_err(|err| err.to_string())?
        .uid(format!("portcullis-test-{:04}", how.index))
        .user_info(how.user_info.unwrap_or_else(|| {
            json!({
                "username": "portcullis-test",
                "groups": ["system:authenticated"],
            })
        }));
    if let Some(namespace) = how.namespace {
        builder = builder.namespace(namespace);
    }
    if let Some(resource) = how.resource {
        builder = builder.resource(resource);
    }
    if let Some(sub_resource) = how.sub_resource {
        builder = builder.sub_resource(sub_resource);
    }
    if let Some(old_object) = how.old_object {
        builder = builder.old_object(old_object);
    }
    Ok(builder.review())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // As kube-apiserver sends a DELETE: `object` present and null.
        assert_eq!(request.get("object"), Some(&Value::Null));
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
