//! Testing a policy's built `.wasm` through the real engine, from a policy
//! crate's `cargo test`.
//!
//! The SDK's `testing` module runs a policy's Rust code natively; this one
//! runs the artifact that ships: the module file is loaded exactly as
//! `portcullis serve` loads it (componentized when it is a core module,
//! checked against the contract, its settings validated by the module,
//! memory cap and deadline applied), and each review goes through the same
//! mutate-then-validate path as the server's `/mutate` and `/validate`
//! (see [`portcullis_engine::evaluate`]). A policy error is a test failure, not a
//! silent allow: the policy runs with `onError: fail`.
//!
//! ```no_run
//! use portcullis_testing::{TestPolicy, fixture};
//! use serde_json::json;
//!
//! # fn main() -> Result<(), portcullis_testing::TestingError> {
//! let policy = TestPolicy::built(
//!     env!("CARGO_MANIFEST_DIR"),
//!     env!("CARGO_PKG_NAME"),
//!     json!({"allowed": ["registry.k8s.io/"]}),
//! )?;
//! let outcome = policy.review(fixture(env!("CARGO_MANIFEST_DIR"), "tests/pod.json")?)?;
//! assert!(!outcome.allowed());
//! # Ok(())
//! # }
//! ```
//!
//! Build the module before testing (`make test` does):
//! `cargo build --target wasm32-wasip1 --profile policy -p <crate>`.
//! [`TestPolicy::built`] refuses a module older than the crate's sources,
//! so a test never passes against a stale artifact.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::SystemTime;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::runtime::Runtime;

use portcullis_engine::{Answer, Config, ModuleCache, PolicyEngine, PolicySet, Report};

/// The target and profile `make policies` builds modules with.
pub const TARGET: &str = "wasm32-wasip1";
/// See [`TARGET`].
pub const PROFILE: &str = "policy";

/// Why a test could not get a verdict.
#[derive(Debug, thiserror::Error)]
pub enum TestingError {
    /// The module is not built, or is older than the crate's sources.
    #[error("{0}")]
    NotBuilt(String),
    /// A fixture file could not be read or parsed.
    #[error("fixture {path}: {message}")]
    Fixture { path: PathBuf, message: String },
    /// The module did not load: it does not compile, does not fit the
    /// contract, or rejected its settings (the message says which).
    #[error("{0}")]
    Load(String),
    /// The review is not one the server would accept, or the policy failed
    /// (an error, a trap, a deadline): the server would answer an error.
    #[error("{0}")]
    Evaluate(String),
    /// The engine or its runtime could not start.
    #[error("cannot start the engine: {0}")]
    Engine(String),
}

/// One engine, runtime and compiled-module cache per test binary: tests
/// loading the same module compile it once (and the on-disk cache makes
/// later runs skip compiling altogether).
struct Shared {
    runtime: Runtime,
    engine: Arc<PolicyEngine>,
    modules: tokio::sync::Mutex<ModuleCache>,
}

/// The environment variable naming the compiled-module cache directory,
/// read here and by the CLI's `--cache-dir`.
pub const CACHE_DIR_ENV: &str = "PORTCULLIS_CACHE_DIR";
/// The environment variable that turns the compiled-module cache off, read
/// here and by the CLI's `--no-module-cache`.
pub const NO_MODULE_CACHE_ENV: &str = "PORTCULLIS_NO_MODULE_CACHE";

/// The cache directory the CLI would use with no flags given: as
/// [`CACHE_DIR_ENV`] and [`NO_MODULE_CACHE_ENV`] say, else the default.
/// Boolean values read as the CLI reads them (`0`, `false`, `no`, `off`,
/// `n`, `f` and empty are false).
///
/// # Errors
/// When both variables are set, as the CLI refuses both flags together.
pub fn module_cache_dir_from_env() -> Result<Option<PathBuf>, String> {
    let disabled = std::env::var(NO_MODULE_CACHE_ENV).is_ok_and(|value| {
        !matches!(
            value.trim().to_ascii_lowercase().as_str(),
            "" | "0" | "false" | "no" | "off" | "n" | "f"
        )
    });
    let dir = std::env::var_os(CACHE_DIR_ENV).filter(|dir| !dir.is_empty());
    match (disabled, dir) {
        (true, Some(_)) => Err(format!(
            "{CACHE_DIR_ENV} and {NO_MODULE_CACHE_ENV} cannot be used together"
        )),
        (true, None) => Ok(None),
        (false, Some(dir)) => Ok(Some(PathBuf::from(dir))),
        (false, None) => Ok(portcullis_engine::default_cache_dir()),
    }
}

static SHARED: LazyLock<Result<Shared, String>> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|err| err.to_string())?;
    let cache_dir = module_cache_dir_from_env()?;
    let engine =
        PolicyEngine::with_cache(cache_dir.as_deref()).map_err(|err| Report(&err).to_string())?;
    Ok(Shared {
        runtime,
        engine,
        modules: tokio::sync::Mutex::new(ModuleCache::new(usize::MAX)),
    })
});

fn shared() -> Result<&'static Shared, TestingError> {
    SHARED
        .as_ref()
        .map_err(|err| TestingError::Engine(err.clone()))
}

/// A policy module loaded with its settings, ready to review requests.
pub struct TestPolicy {
    set: PolicySet,
    name: String,
}

impl TestPolicy {
    /// Loads the module `cargo build --target wasm32-wasip1 --profile
    /// policy` built for the crate at `manifest_dir` named `package`: pass
    /// `env!("CARGO_MANIFEST_DIR")` and `env!("CARGO_PKG_NAME")`.
    ///
    /// # Errors
    /// [`TestingError::NotBuilt`] when the module is missing or older than
    /// the sources it was built from (cargo's dep-info), with the command that builds it;
    /// otherwise as [`TestPolicy::load`].
    pub fn built(manifest_dir: &str, package: &str, settings: Value) -> Result<Self, TestingError> {
        let module = built_module(Path::new(manifest_dir), package)?;
        Self::load(&module, settings)
    }

    /// Loads `module` with `settings`, as the server would load a config
    /// entry naming them (mode enforce, `onError: fail`, default limits,
    /// the policy's own resources).
    ///
    /// # Errors
    /// [`TestingError::Load`] when the module does not compile, does not
    /// fit the contract, or rejects the settings: the message is the one
    /// the server would log, e.g. `... settings rejected: <reason>`.
    pub fn load(module: &Path, settings: Value) -> Result<Self, TestingError> {
        let shared = shared()?;
        // The config resolves a relative module path against its own
        // directory; there is no config file here, so make it absolute.
        let module = &std::path::absolute(module)
            .map_err(|err| TestingError::Load(format!("{}: {err}", module.display())))?;
        let name = policy_name(module);
        let entry = json!({
            "policies": [{
                "name": name,
                "module": module,
                "onError": "fail",
                "settings": settings,
            }]
        });
        let config = Config::parse(module, &entry.to_string())
            .map_err(|err| TestingError::Load(Report(&err).to_string()))?;
        let set = shared.runtime.block_on(async {
            let mut modules = shared.modules.lock().await;
            PolicySet::build(&shared.engine, &config, 1, &mut modules).await
        });
        let (set, _) = set.map_err(|err| TestingError::Load(Report(&err).to_string()))?;
        Ok(TestPolicy { set, name })
    }

    /// The name the policy is loaded under (the module's file name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the module says about itself.
    pub fn metadata(&self) -> Option<&portcullis_engine::Metadata> {
        self.set.get(&self.name).map(|policy| &policy.metadata)
    }

    /// The server's answer to `review`: an AdmissionReview, or a bare
    /// AdmissionRequest (e.g. from the SDK's `testing::request`). A
    /// mutating policy's patch is applied and the result validated, as the
    /// API server calls `/mutate` and then `/validate`.
    ///
    /// Runs on the harness's own runtime: call it from a plain `#[test]`,
    /// not from inside an async runtime.
    ///
    /// # Errors
    /// [`TestingError::Evaluate`] for a review the server would reject
    /// (400/422), a policy failure (the server's 500), or a request the
    /// policy does not match (its resources, per its metadata): the server
    /// would not call it, and a test asserting "allowed" would pass without
    /// the policy having run.
    pub fn review(&self, review: Value) -> Result<Outcome, TestingError> {
        let shared = shared()?;
        let body = serde_json::to_vec(&review)
            .map_err(|err| TestingError::Evaluate(Report(&err).to_string()))?;
        let answer = shared
            .runtime
            .block_on(portcullis_engine::evaluate(&self.set, body, None))
            .map_err(|err| TestingError::Evaluate(Report(&err).to_string()))?;
        if answer.evaluations.is_empty() {
            let resources = self.metadata().map(|m| m.resources.join(", "));
            return Err(TestingError::Evaluate(format!(
                "policy {} did not run: the request is not for one of the resources it matches ({})",
                self.name,
                resources.unwrap_or_default()
            )));
        }
        Ok(Outcome { answer })
    }
}

/// The server's answer to one review.
#[derive(Debug, Clone)]
pub struct Outcome {
    answer: Answer,
}

impl Outcome {
    /// Whether the request is admitted.
    pub fn allowed(&self) -> bool {
        self.answer.decision.allowed
    }

    /// The denial's message as kubectl shows it, `<policy>: <reason>`.
    pub fn message(&self) -> Option<&str> {
        self.answer.decision.message.as_deref()
    }

    /// The HTTP code of a denial as the server sends it (403 unless the
    /// policy gave one); `None` when allowed.
    pub fn code(&self) -> Option<u16> {
        let decision = &self.answer.decision;
        (!decision.allowed).then(|| decision.code.unwrap_or(portcullis_engine::DENIED_CODE))
    }

    /// Warnings returned to the client.
    pub fn warnings(&self) -> &[String] {
        &self.answer.decision.warnings
    }

    /// The JSON Patch the server would send, decoded; `None` when the
    /// object is unchanged.
    pub fn patch(&self) -> Option<Value> {
        serde_json::from_str(self.answer.decision.patch.as_deref()?).ok()
    }

    /// The request's object with the patch applied.
    pub fn object(&self) -> Option<&Value> {
        self.answer.object.as_ref()
    }

    /// The AdmissionReview the server would answer, its patch base64 as on
    /// the wire.
    ///
    /// # Panics
    /// Never in practice: only if serializing plain strings failed.
    pub fn response(&self) -> Value {
        match self.answer.response() {
            Ok(response) => response,
            Err(error) => panic!("cannot serialize the response: {error}"),
        }
    }

    /// The patch exactly as it goes on the wire: base64 of the JSON text.
    pub fn patch_base64(&self) -> Option<String> {
        let patch = self.answer.decision.patch.as_deref()?;
        Some(base64::engine::general_purpose::STANDARD.encode(patch))
    }
}

/// Reads a JSON or YAML fixture at `path` relative to `manifest_dir`
/// (pass `env!("CARGO_MANIFEST_DIR")`): an AdmissionReview, a bare
/// AdmissionRequest, or any object.
///
/// # Errors
/// [`TestingError::Fixture`] naming the file and what was wrong.
pub fn fixture(manifest_dir: &str, path: &str) -> Result<Value, TestingError> {
    let path = Path::new(manifest_dir).join(path);
    let fail = |message: String| TestingError::Fixture {
        path: path.clone(),
        message,
    };
    let text = std::fs::read_to_string(&path).map_err(|err| fail(err.to_string()))?;
    let is_json = path.extension().is_some_and(|ext| ext == "json");
    if is_json {
        serde_json::from_str(&text).map_err(|err| fail(err.to_string()))
    } else {
        serde_yaml_ng::from_str(&text).map_err(|err| fail(err.to_string()))
    }
}

/// The module built for `package`, refusing one older than its sources.
///
/// # Errors
/// [`TestingError::NotBuilt`] with the command that builds it.
pub fn built_module(manifest_dir: &Path, package: &str) -> Result<PathBuf, TestingError> {
    module_in(&target_dir(manifest_dir), manifest_dir, package)
}

/// [`built_module`] in the target directory `target`.
fn module_in(target: &Path, manifest_dir: &Path, package: &str) -> Result<PathBuf, TestingError> {
    let file = format!("{}.wasm", package.replace('-', "_"));
    let module = target.join(TARGET).join(PROFILE).join(&file);
    let build = format!("cargo build --target {TARGET} --profile {PROFILE} -p {package}");
    let built_at = std::fs::metadata(&module)
        .and_then(|meta| meta.modified())
        .map_err(|_| {
            TestingError::NotBuilt(format!(
                "{} is not built; run `{build}` first",
                module.display()
            ))
        })?;
    if let Some(newer) = newest_source(&module, manifest_dir).filter(|(time, _)| *time > built_at) {
        return Err(TestingError::NotBuilt(format!(
            "{} is older than {}; run `{build}` first",
            module.display(),
            newer.1.display()
        )));
    }
    Ok(module)
}

/// `$CARGO_TARGET_DIR` (or `$CARGO_BUILD_TARGET_DIR`), else the `target`
/// directory of the nearest workspace root above `manifest_dir` (the first
/// with a `Cargo.lock`). A relative one is relative to `manifest_dir`'s
/// workspace, as cargo would have used it from there.
fn target_dir(manifest_dir: &Path) -> PathBuf {
    let root = manifest_dir
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .unwrap_or(manifest_dir);
    let configured = ["CARGO_TARGET_DIR", "CARGO_BUILD_TARGET_DIR"]
        .into_iter()
        .find_map(|key| std::env::var_os(key).filter(|dir| !dir.is_empty()));
    if let Some(dir) = configured {
        return root.join(dir);
    }
    root.join("target")
}

/// The newest of the files the module was built from, as listed in the
/// dep-info file cargo writes beside it (`<name>.d`): the crate's sources
/// and the SDK's. These are the files whose change makes cargo rebuild, so
/// a module older than one of them is stale. Without a dep-info file, the
/// crate's `src/` is scanned instead.
fn newest_source(module: &Path, manifest_dir: &Path) -> Option<(SystemTime, PathBuf)> {
    let newest = |sources: Vec<PathBuf>| {
        sources
            .into_iter()
            .filter_map(|path| Some((std::fs::metadata(&path).ok()?.modified().ok()?, path)))
            .max_by_key(|(time, _)| *time)
    };
    let listed = std::fs::read_to_string(module.with_extension("d"))
        .map(|dep_info| dep_info_sources(&dep_info))
        .unwrap_or_default();
    // A dep-info file whose paths cannot be read (relative to another base,
    // say) must not make a stale module look fresh.
    newest(listed).or_else(|| newest(files_under(&manifest_dir.join("src"))))
}

/// The prerequisites of a Makefile-style dep-info file (`out: in1 in2`),
/// with `\ ` read as a space in a path.
fn dep_info_sources(dep_info: &str) -> Vec<PathBuf> {
    let Some(line) = dep_info.lines().find(|line| line.contains(": ")) else {
        return Vec::new();
    };
    let Some((_, prerequisites)) = line.split_once(": ") else {
        return Vec::new();
    };
    let mut sources = Vec::new();
    let mut current = String::new();
    let mut chars = prerequisites.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.as_str().starts_with(' ') => current.extend(chars.next()),
            ' ' => {
                if !current.is_empty() {
                    sources.push(PathBuf::from(std::mem::take(&mut current)));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        sources.push(PathBuf::from(current));
    }
    sources
}

/// Every file under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        match std::fs::read_dir(&path) {
            Ok(entries) => pending.extend(entries.flatten().map(|entry| entry.path())),
            Err(_) if path.is_file() => files.push(path),
            Err(_) => {}
        }
    }
    files
}

/// The module's file name as a policy name: `allowed_images.wasm` is
/// `allowed-images`.
fn policy_name(module: &Path) -> String {
    let stem = module
        .file_stem()
        .and_then(|stem| stem.to_str())
        .unwrap_or("policy");
    let name: String = stem
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    let name = name.trim_matches('-');
    if name.is_empty() {
        "policy".to_string()
    } else {
        name.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_dir_is_beside_the_workspace_lock() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Cargo.lock"), "").unwrap();
        let crate_dir = dir.path().join("policies/p");
        std::fs::create_dir_all(&crate_dir).unwrap();
        if std::env::var_os("CARGO_TARGET_DIR").is_none() {
            assert_eq!(target_dir(&crate_dir), dir.path().join("target"));
        }
    }

    #[test]
    fn dep_info_lists_sources_with_escaped_spaces() {
        let dep_info = "/t/p.wasm: /src/lib.rs /my\\ dir/a.rs\n\n/src/lib.rs:\n";
        assert_eq!(
            dep_info_sources(dep_info),
            vec![PathBuf::from("/src/lib.rs"), PathBuf::from("/my dir/a.rs")]
        );
        // Only a space is escaped; other backslashes are part of the path.
        assert_eq!(
            dep_info_sources("p.wasm: C:\\src\\lib.rs\n"),
            vec![PathBuf::from("C:\\src\\lib.rs")]
        );
    }

    #[test]
    fn policy_names_come_from_file_names() {
        assert_eq!(
            policy_name(Path::new("/t/allowed_images.wasm")),
            "allowed-images"
        );
        assert_eq!(policy_name(Path::new("/t/Odd.Name.wasm")), "odd-name");
        assert_eq!(policy_name(Path::new("/t/__.wasm")), "policy");
    }

    #[test]
    fn a_missing_module_says_how_to_build_it() {
        let dir = tempfile::tempdir().unwrap();
        let crate_dir = dir.path().join("policies/my-policy");
        std::fs::create_dir_all(crate_dir.join("src")).unwrap();
        let target = dir.path().join("target");
        let err = module_in(&target, &crate_dir, "my-policy")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("target/wasm32-wasip1/policy/my_policy.wasm is not built"),
            "{err}"
        );
        assert!(
            err.contains(
                "run `cargo build --target wasm32-wasip1 --profile policy -p my-policy` first"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_module_older_than_its_sources_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let crate_dir = dir.path().join("p");
        let out = dir.path().join("target/wasm32-wasip1/policy");
        std::fs::create_dir_all(crate_dir.join("src")).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("p.wasm"), b"\0asm").unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(60);
        let source = crate_dir.join("src/lib.rs");
        std::fs::write(&source, "").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&source)
            .unwrap()
            .set_modified(later)
            .unwrap();
        let target = dir.path().join("target");
        let err = module_in(&target, &crate_dir, "p").unwrap_err().to_string();
        assert!(err.contains("p.wasm is older than"), "{err}");
        assert!(err.contains("src/lib.rs"), "{err}");
        std::fs::File::options()
            .write(true)
            .open(out.join("p.wasm"))
            .unwrap()
            .set_modified(later + std::time::Duration::from_secs(1))
            .unwrap();
        assert_eq!(
            module_in(&target, &crate_dir, "p").unwrap(),
            out.join("p.wasm")
        );
    }
}
