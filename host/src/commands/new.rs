//! `portcullis new policy`: scaffolds a policy crate (see `scaffold`).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use clap::{Args, Subcommand};

use crate::commands::CliError;
use portcullis_testing::scaffold::{self, Kind, Layout, Scaffold};

#[derive(Debug, Args)]
pub struct NewCommand {
    #[command(subcommand)]
    pub what: NewWhat,
}

#[derive(Debug, Subcommand)]
pub enum NewWhat {
    /// A policy crate that builds and passes its tests as generated.
    Policy(NewPolicy),
}

#[derive(Debug, Args)]
pub struct NewPolicy {
    /// The policy's name, also its crate's: lower case, digits and `-`.
    pub name: String,

    /// A mutating policy (default: validating).
    #[arg(long)]
    pub mutating: bool,

    /// Where to create the crate (default: `policies/NAME`). It must not
    /// exist, or be empty.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// The Portcullis source tree a crate outside a Portcullis workspace
    /// takes the SDK and the host from (default: the tree this binary was
    /// built from).
    #[arg(long, value_name = "DIR")]
    pub source: Option<PathBuf>,
}

impl NewCommand {
    /// # Errors
    /// Exit 2 for a bad name, an existing directory or no source tree; 1
    /// when the files cannot be written.
    pub fn execute(self) -> Result<(), CliError> {
        let NewWhat::Policy(policy) = self.what;
        policy.execute()
    }
}

impl NewPolicy {
    fn execute(self) -> Result<(), CliError> {
        scaffold::check_name(&self.name).map_err(CliError::usage)?;
        let cwd = std::env::current_dir().map_err(CliError::failure)?;
        let dir = match &self.dir {
            Some(dir) => normalize(&cwd.join(dir)),
            // `policies/NAME` of the workspace the command runs in, from
            // any directory of it; else below the current directory.
            None => {
                let here = cwd.join("policies").join(&self.name);
                let base = scaffold::find_workspace(&here).map_or(cwd, |w| w.root);
                normalize(&base.join("policies").join(&self.name))
            }
        };
        let occupied = std::fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_some());
        if occupied || dir.is_file() {
            return Err(CliError::usage(anyhow!(
                "{} already exists; choose another --dir or remove it",
                dir.display()
            )));
        }
        let (layout, covered) = match scaffold::find_workspace(&dir) {
            Some(workspace) => {
                if workspace.packages.contains(&self.name) {
                    return Err(CliError::usage(anyhow!(
                        "the workspace at {} already has a package named {}; choose another name",
                        workspace.root.display(),
                        self.name
                    )));
                }
                let layout = Layout::Workspace {
                    root: workspace.root,
                    lints: workspace.lints,
                };
                (layout, workspace.covers)
            }
            None => (
                Layout::Standalone {
                    source: self.source_tree()?,
                },
                true,
            ),
        };
        let kind = if self.mutating {
            Kind::Mutating
        } else {
            Kind::Validating
        };
        let scaffold = Scaffold {
            name: self.name.clone(),
            kind,
            dir,
            layout,
        };
        for (path, text) in scaffold.files() {
            let path = scaffold.dir.join(path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))
                    .map_err(CliError::failure)?;
            }
            std::fs::write(&path, text)
                .with_context(|| format!("writing {}", path.display()))
                .map_err(CliError::failure)?;
        }
        report(&scaffold, covered);
        Ok(())
    }

    /// `--source`, else the tree this binary was built from, checked.
    fn source_tree(&self) -> Result<PathBuf, CliError> {
        let source = self
            .source
            .clone()
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
        let source = normalize(
            &std::env::current_dir()
                .map_err(CliError::failure)?
                .join(source),
        );
        if !source.join("sdk/Cargo.toml").is_file() || !source.join("testing/Cargo.toml").is_file()
        {
            return Err(CliError::usage(anyhow!(
                "{} is not a Portcullis source tree (no sdk/ and testing/): the crate is outside \
                 a workspace that declares portcullis-sdk, so give --source DIR",
                source.display()
            )));
        }
        Ok(source)
    }
}

/// What was made, and the commands to build and test it.
fn report(scaffold: &Scaffold, covered: bool) {
    let (dir, name) = (&scaffold.dir, &scaffold.name);
    let kind = if scaffold.kind == Kind::Mutating {
        "mutating"
    } else {
        "validating"
    };
    println!("created {kind} policy {} in {}", name, dir.display());
    let (build, test) = match &scaffold.layout {
        Layout::Workspace { root, .. } => {
            if !covered {
                println!(
                    "note: add its directory to [workspace] members in {}",
                    root.join("Cargo.toml").display()
                );
            }
            (
                format!(
                    "cargo build --target wasm32-wasip1 --profile policy -p {}",
                    name
                ),
                format!("cargo test --release -p {}", name),
            )
        }
        Layout::Standalone { .. } => (
            format!(
                "cd {:?} && cargo build --target wasm32-wasip1 --profile policy",
                dir.display().to_string()
            ),
            "cargo test --release".to_string(),
        ),
    };
    let suite = dir.join("suite.yaml").display().to_string();
    println!("next:\n  {build}\n  {test}\n  portcullis test {suite:?}");
}

/// `path` without `.` and `..` components (the directory may not exist
/// yet, so it cannot be canonicalized).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}
