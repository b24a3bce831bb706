//! `portcullis new policy`: a policy crate that builds, and whose tests
//! pass, exactly as generated: the policy, its documented settings, unit
//! tests, tests of the built module through the host's engine, a fixture,
//! a `portcullis test` suite and a README.
//!
//! Inside a cargo workspace that declares `portcullis-sdk` (this
//! repository, or an author's own), the crate takes its dependencies and
//! the small-module profile from the workspace. Anywhere else it is a
//! workspace of its own, with path dependencies into a Portcullis source
//! tree and the profile in its own manifest.

use std::path::{Component, Path, PathBuf};

use portcullis_kube::glob;

use crate::harness::{PROFILE, TARGET};
use portcullis_engine::PolicyName;

/// What the generated policy implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `validate`: denies images without a version.
    Validating,
    /// `mutate`: adds labels to pods.
    Mutating,
}

/// Where the crate gets its dependencies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// A member of the workspace rooted at `root`; `lints` when the
    /// workspace has `[workspace.lints]` for its members to inherit.
    Workspace { root: PathBuf, lints: bool },
    /// Its own workspace; `source` is a Portcullis source tree (with `sdk/`
    /// and `host/`).
    Standalone { source: PathBuf },
}

/// Why a crate could not be scaffolded.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The name cannot be a policy and crate name.
    #[error("invalid policy name {name:?}: {reason}")]
    Name { name: String, reason: String },
}

/// One crate to generate.
#[derive(Debug, Clone)]
pub struct Scaffold {
    pub name: String,
    pub kind: Kind,
    /// The crate's directory, absolute.
    pub dir: PathBuf,
    pub layout: Layout,
}

/// Names cargo refuses for a package, or that are not usable as a Rust
/// crate name once `-` becomes `_`.
const RESERVED: &[&str] = &[
    "portcullis",
    "portcullis-sdk",
    "portcullis-engine",
    "portcullis-testing",
    "portcullis-kube",
    "alloc",
    "core",
    "proc-macro",
    "std",
    "test",
    "as",
    "async",
    "await",
    "box",
    "break",
    "const",
    "continue",
    "crate",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "fn",
    "for",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "match",
    "mod",
    "move",
    "mut",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "struct",
    "super",
    "trait",
    "true",
    "type",
    "unsafe",
    "use",
    "where",
    "while",
    "yield",
];

/// Type names the generated code uses: a policy whose own type name (its
/// name in CamelCase) is one of them would not compile.
const TEMPLATE_ITEMS: &[&str] = &[
    "BTreeMap",
    "ContainerRef",
    "Deserialize",
    "Metadata",
    "Mutation",
    "Policy",
    "Request",
    "Settings",
    "Value",
    "Verdict",
];

/// Checks `name` as a policy name (as the config requires) and as a crate
/// name.
///
/// # Errors
/// [`ScaffoldError::Name`] saying what is wrong.
pub fn check_name(name: &str) -> Result<(), ScaffoldError> {
    let invalid = |reason: String| ScaffoldError::Name {
        name: name.to_string(),
        reason,
    };
    PolicyName::parse(name).map_err(invalid)?;
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(invalid("it must start with a lower-case letter".into()));
    }
    if RESERVED.contains(&name) {
        return Err(invalid(
            "it is reserved by Rust, cargo or Portcullis".into(),
        ));
    }
    let type_name = type_name(name);
    if TEMPLATE_ITEMS.contains(&type_name.as_str()) {
        return Err(invalid(format!(
            "its type name {type_name} is already used by the generated code"
        )));
    }
    Ok(())
}

impl Scaffold {
    /// The files of the crate: paths relative to its directory, contents.
    pub fn files(&self) -> Vec<(PathBuf, String)> {
        let manifest = match self.layout {
            Layout::Workspace { .. } => include_str!("../templates/policy/Cargo.workspace.toml"),
            Layout::Standalone { .. } => include_str!("../templates/policy/Cargo.standalone.toml"),
        };
        let (lib, tests, module, fixture, suite) = match self.kind {
            Kind::Validating => (
                include_str!("../templates/policy/validate/lib.rs"),
                include_str!("../templates/policy/validate/tests.rs"),
                include_str!("../templates/policy/validate/module.rs"),
                include_str!("../templates/policy/validate/fixture.yaml"),
                include_str!("../templates/policy/validate/suite.yaml"),
            ),
            Kind::Mutating => (
                include_str!("../templates/policy/mutate/lib.rs"),
                include_str!("../templates/policy/mutate/tests.rs"),
                include_str!("../templates/policy/mutate/module.rs"),
                include_str!("../templates/policy/mutate/fixture.yaml"),
                include_str!("../templates/policy/mutate/suite.yaml"),
            ),
        };
        let readme = include_str!("../templates/policy/README.md");
        // A crate of its own also needs the workspace's linker settings
        // (the initial memory that spares every call a `memory.grow`).
        let cargo_config = match self.layout {
            Layout::Workspace { .. } => None,
            Layout::Standalone { .. } => Some((
                ".cargo/config.toml",
                include_str!("../templates/policy/cargo-config.toml"),
            )),
        };
        [
            ("Cargo.toml", manifest),
            ("README.md", readme),
            ("src/lib.rs", lib),
            ("src/tests.rs", tests),
            ("tests/module.rs", module),
            ("tests/fixtures/deployment.yaml", fixture),
            ("suite.yaml", suite),
        ]
        .into_iter()
        .chain(cargo_config)
        .map(|(path, template)| (PathBuf::from(path), self.render(template)))
        .collect()
    }

    /// `template` with its `{{placeholders}}` filled in.
    fn render(&self, template: &str) -> String {
        let module_file = format!("{}.wasm", self.name.replace('-', "_"));
        let module_in_target = format!("target/{TARGET}/{PROFILE}/{module_file}");
        let (module, module_from_root, dir, source) = match &self.layout {
            Layout::Workspace { root, .. } => {
                let below = relative_below(&self.dir, root);
                let up = "../".repeat(below.as_ref().map_or(0, |p| p.components().count()));
                let module = match &below {
                    Some(_) => format!("{up}{module_in_target}"),
                    None => root.join(&module_in_target).display().to_string(),
                };
                let dir = below.map_or_else(|| self.dir.display().to_string(), |p| slash(&p));
                (module, module_in_target.clone(), dir, String::new())
            }
            Layout::Standalone { source } => (
                module_in_target.clone(),
                module_in_target.clone(),
                ".".to_string(),
                slash(source),
            ),
        };
        let lints = match self.layout {
            Layout::Workspace { lints: true, .. } => "\n[lints]\nworkspace = true\n",
            _ => "",
        };
        let (description, settings, settings_example) = match self.kind {
            Kind::Validating => (
                "Denies container images without a version (latest, written or implied).",
                "| Field | Type | Default | Meaning |\n|---|---|---|---|\n| \
                 `exemptNamespaces` | list of strings | `[]` | Namespaces where images \
                 without a version are allowed. |",
                "{exemptNamespaces: [dev]}",
            ),
            Kind::Mutating => (
                "Gives the pods of Pods and workloads the configured labels when they lack them.",
                "| Field | Type | Default | Meaning |\n|---|---|---|---|\n| \
                 `labels` | map of strings | required | Labels every pod gets when it \
                 lacks them; one already there is never changed. |",
                "{labels: {team: unassigned}}",
            ),
        };
        template
            .replace("{{name}}", &self.name)
            .replace("{{type_name}}", &type_name(&self.name))
            .replace("{{description}}", description)
            .replace("{{settings}}", settings)
            .replace("{{settings_example}}", settings_example)
            .replace("{{module_from_root}}", &module_from_root)
            .replace("{{module}}", &module)
            .replace("{{dir}}", &dir)
            .replace("{{source}}", &source)
            .replace("{{lints}}", lints)
    }
}

/// `my-policy` as a Rust type name: `MyPolicy`.
pub fn type_name(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// `dir` relative to `root` when it is below it.
fn relative_below(dir: &Path, root: &Path) -> Option<PathBuf> {
    let below = dir.strip_prefix(root).ok()?;
    below
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| below.to_path_buf())
}

/// A path with `/` separators, as manifests and configs write them.
fn slash(path: &Path) -> String {
    // The host runs on Unix, where paths already use `/`.
    path.to_string_lossy().into_owned()
}

/// A cargo workspace that declares `portcullis-sdk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    pub root: PathBuf,
    /// Whether its `members` cover the crate's directory.
    pub covers: bool,
    /// Whether it has `[workspace.lints]`.
    pub lints: bool,
    /// The names of its member packages.
    pub packages: Vec<String>,
}

/// The workspace a crate at `dir` would belong to, when its root declares
/// `portcullis-sdk` among its dependencies: the nearest ancestor with a
/// `Cargo.toml` holding a `[workspace]` table, as cargo looks for it.
pub fn find_workspace(dir: &Path) -> Option<Workspace> {
    for root in dir.ancestors().skip(1) {
        let Some(manifest) = read_manifest(&root.join("Cargo.toml")) else {
            continue;
        };
        let Some(workspace) = manifest.get("workspace").and_then(toml::Value::as_table) else {
            continue;
        };
        let declares_sdk = workspace
            .get("dependencies")
            .and_then(toml::Value::as_table)
            .is_some_and(|deps| deps.contains_key("portcullis-sdk"));
        if !declares_sdk {
            return None;
        }
        let members: Vec<&str> = workspace
            .get("members")
            .and_then(toml::Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(toml::Value::as_str)
            .collect();
        let below = relative_below(dir, root).map(|p| slash(&p));
        let covers = below.is_some_and(|below| members.iter().any(|m| member_matches(m, &below)));
        return Some(Workspace {
            root: root.to_path_buf(),
            covers,
            lints: workspace.contains_key("lints"),
            packages: member_packages(root, &members),
        });
    }
    None
}

fn read_manifest(path: &Path) -> Option<toml::Table> {
    std::fs::read_to_string(path).ok()?.parse().ok()
}

/// The package names of the members `members` (paths, `*` in their last
/// component) names under `root`.
fn member_packages(root: &Path, members: &[&str]) -> Vec<String> {
    let mut dirs = Vec::new();
    for member in members {
        let member = member.trim_end_matches('/');
        match member.rsplit_once('/') {
            Some((parent, last)) if last.contains('*') => {
                let entries = std::fs::read_dir(root.join(parent))
                    .into_iter()
                    .flatten()
                    .flatten();
                dirs.extend(entries.map(|e| e.path()).filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| glob::matches(last, n))
                }));
            }
            _ => dirs.push(root.join(member)),
        }
    }
    dirs.iter()
        .filter_map(|dir| read_manifest(&dir.join("Cargo.toml")))
        .filter_map(|manifest| {
            let package = manifest.get("package")?.get("name")?.as_str()?;
            Some(package.to_string())
        })
        .collect()
}

/// Whether a `members` entry (a path, `*` matching within one component)
/// names `path`.
fn member_matches(pattern: &str, path: &str) -> bool {
    let pattern: Vec<&str> = pattern.trim_end_matches('/').split('/').collect();
    let path: Vec<&str> = path.split('/').collect();
    pattern.len() == path.len() && pattern.iter().zip(&path).all(|(p, c)| glob::matches(p, c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_policy_and_crate_names() {
        assert!(check_name("no-latest").is_ok());
        assert!(check_name("p2").is_ok());
        for (name, reason) in [
            ("NoLatest", "invalid policy name"),
            ("2fast", "must start with a lower-case letter"),
            ("test", "reserved"),
            ("portcullis-sdk", "reserved"),
            ("settings", "its type name Settings is already used"),
            (
                "container-ref",
                "its type name ContainerRef is already used",
            ),
            ("", "invalid policy name"),
        ] {
            let err = check_name(name).unwrap_err().to_string();
            assert!(err.contains(reason), "{name}: {err}");
        }
    }

    #[test]
    fn type_names_are_camel_case() {
        assert_eq!(type_name("no-latest"), "NoLatest");
        assert_eq!(type_name("a-b2-c"), "AB2C");
    }

    #[test]
    fn members_globs_match_one_component_per_star() {
        assert!(member_matches("policies/*", "policies/new"));
        assert!(member_matches("policies/", "policies"));
        assert!(member_matches("host", "host"));
        assert!(!member_matches("policies/*", "policies/a/b"));
        assert!(member_matches("policies/p-*", "policies/p-x"));
        assert!(!member_matches("policies/p-*", "policies/q-x"));
    }

    /// The generated files by path, checking that every placeholder is
    /// filled.
    fn generate(scaffold: &Scaffold) -> std::collections::HashMap<String, String> {
        let files: std::collections::HashMap<String, String> = scaffold
            .files()
            .into_iter()
            .map(|(path, text)| (slash(&path), text))
            .collect();
        for (path, text) in &files {
            assert!(!text.contains("{{"), "{path}: a placeholder is left");
        }
        files
    }

    #[test]
    fn workspace_crates_point_at_the_workspace_target() {
        let files = generate(&Scaffold {
            name: "no-latest".into(),
            kind: Kind::Validating,
            dir: PathBuf::from("/repo/policies/no-latest"),
            layout: Layout::Workspace {
                root: PathBuf::from("/repo"),
                lints: true,
            },
        });
        let suite = &files["suite.yaml"];
        assert!(
            suite.contains("module: ../../target/wasm32-wasip1/policy/no_latest.wasm"),
            "{suite}"
        );
        let manifest = &files["Cargo.toml"];
        assert!(manifest.contains("portcullis-sdk.workspace = true"));
        assert!(manifest.contains("[lints]\nworkspace = true"), "{manifest}");
        assert!(!manifest.contains("[workspace]"));
        assert!(files["src/lib.rs"].contains("pub struct NoLatest;"));
    }

    #[test]
    fn standalone_crates_are_their_own_workspace() {
        let files = generate(&Scaffold {
            name: "add-team".into(),
            kind: Kind::Mutating,
            dir: PathBuf::from("/home/me/add-team"),
            layout: Layout::Standalone {
                source: PathBuf::from("/src/portcullis"),
            },
        });
        let manifest = &files["Cargo.toml"];
        assert!(
            manifest.contains("portcullis-sdk = { path = \"/src/portcullis/sdk\" }"),
            "{manifest}"
        );
        assert!(
            manifest.contains("portcullis-testing = { path = \"/src/portcullis/testing\" }"),
            "{manifest}"
        );
        assert!(manifest.contains("[workspace]") && manifest.contains("[profile.policy]"));
        let config = &files[".cargo/config.toml"];
        assert!(config.contains("--initial-memory=2097152"), "{config}");
        let suite = &files["suite.yaml"];
        assert!(
            suite.contains("module: target/wasm32-wasip1/policy/add_team.wasm"),
            "{suite}"
        );
    }
}
