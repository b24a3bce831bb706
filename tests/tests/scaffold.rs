//! `portcullis new policy`: what it generates is exactly what
//! `tests/scaffold/` holds, and `make test` builds those crates, runs their
//! unit tests and module tests, and their suites. So a crate fresh from the
//! scaffold builds and passes its tests with no edits.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use portcullis_e2e::{CLI_TIMEOUT, CliOutput, paths, repo_root, run_cli};

fn new_policy(args: &[&str]) -> Result<CliOutput> {
    let mut all = vec!["new", "policy"];
    all.extend_from_slice(args);
    run_cli(&paths()?.bin, &all, None, CLI_TIMEOUT)
}

fn s(path: &Path) -> Result<&str> {
    path.to_str().context("non-UTF-8 path")
}

/// Every file under `dir`, by path relative to it.
fn tree(dir: &Path) -> Result<BTreeMap<PathBuf, Vec<u8>>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            for entry in fs::read_dir(&path).with_context(|| format!("{}", path.display()))? {
                pending.push(entry?.path());
            }
        } else {
            let relative = path.strip_prefix(dir)?.to_path_buf();
            files.insert(relative, fs::read(&path)?);
        }
    }
    Ok(files)
}

#[test]
fn the_scaffold_generates_what_tests_scaffold_holds() -> Result<()> {
    // A workspace root like this repository's, so the crates are generated
    // as members, with the same relative paths.
    let root = tempfile::tempdir()?;
    fs::copy(
        repo_root().join("Cargo.toml"),
        root.path().join("Cargo.toml"),
    )?;
    for (name, flags) in [
        ("new-validating", vec![]),
        ("new-mutating", vec!["--mutating"]),
    ] {
        let dir = root.path().join("tests/scaffold").join(name);
        let mut args = vec![name, "--dir", s(&dir)?];
        args.extend(flags);
        let out = new_policy(&args)?;
        ensure!(out.code() == Some(0), "new policy {name}\n{out}");
        ensure!(out.stdout.contains(&format!("policy {name} in")), "{out}");
        ensure!(
            !out.stdout.contains("note:"),
            "tests/scaffold/* covers the crate, so no note about members\n{out}"
        );
        let generated = tree(&dir)?;
        let kept = tree(&repo_root().join("tests/scaffold").join(name))?;
        let names = |t: &BTreeMap<PathBuf, Vec<u8>>| t.keys().cloned().collect::<Vec<_>>();
        ensure!(
            names(&generated) == names(&kept),
            "{name}: generated files {:?} differ from tests/scaffold/{name} {:?}",
            names(&generated),
            names(&kept)
        );
        for (path, bytes) in &generated {
            ensure!(
                Some(bytes) == kept.get(path),
                "tests/scaffold/{name}/{} is not what `portcullis new policy` generates: \
                 run `make scaffold-examples` and review the diff",
                path.display()
            );
        }
    }
    Ok(())
}

#[test]
fn bad_names_and_existing_directories_are_refused() -> Result<()> {
    let root = tempfile::tempdir()?;
    let taken = root.path().join("taken");
    fs::create_dir_all(&taken)?;
    fs::write(taken.join("keep.txt"), "mine")?;
    let out = new_policy(&["taken", "--dir", s(&taken)?])?;
    ensure!(out.code() == Some(2), "{out}");
    ensure!(
        out.stderr
            .contains("already exists; choose another --dir or remove it"),
        "{out}"
    );
    ensure!(
        fs::read_to_string(taken.join("keep.txt"))? == "mine",
        "nothing overwritten"
    );
    for (name, reason) in [
        ("Bad_Name", "invalid policy name \"Bad_Name\""),
        ("2fast", "must start with a lower-case letter"),
        ("test", "reserved by Rust, cargo or Portcullis"),
        ("portcullis-sdk", "reserved by Rust, cargo or Portcullis"),
        (
            "settings",
            "its type name Settings is already used by the generated code",
        ),
    ] {
        let dir = root.path().join("x");
        let out = new_policy(&[name, "--dir", s(&dir)?])?;
        ensure!(out.code() == Some(2), "{name}\n{out}");
        ensure!(out.stderr.contains(reason), "{name}\n{out}");
        ensure!(!dir.exists(), "{name}: nothing written");
    }
    Ok(())
}

#[test]
fn a_name_the_workspace_already_has_is_refused() -> Result<()> {
    let root = tempfile::tempdir()?;
    fs::copy(
        repo_root().join("Cargo.toml"),
        root.path().join("Cargo.toml"),
    )?;
    let taken = root.path().join("policies/allowed-images");
    fs::create_dir_all(&taken)?;
    fs::write(
        taken.join("Cargo.toml"),
        "[package]\nname = \"allowed-images\"\n",
    )?;
    let dir = root.path().join("policies/other-dir");
    let out = new_policy(&["allowed-images", "--dir", s(&dir)?])?;
    ensure!(out.code() == Some(2), "{out}");
    ensure!(
        out.stderr
            .contains("already has a package named allowed-images"),
        "{out}"
    );
    ensure!(!dir.exists(), "nothing written");
    Ok(())
}

#[test]
fn a_crate_outside_a_workspace_is_a_workspace_of_its_own() -> Result<()> {
    let root = tempfile::tempdir()?;
    let dir = root.path().join("team-label");
    let source = repo_root();
    let out = new_policy(&[
        "team-label",
        "--mutating",
        "--dir",
        s(&dir)?,
        "--source",
        s(&source)?,
    ])?;
    ensure!(out.code() == Some(0), "{out}");
    let manifest = fs::read_to_string(dir.join("Cargo.toml"))?;
    let sdk = source.join("sdk");
    ensure!(
        manifest.contains(&format!("portcullis-sdk = {{ path = \"{}\" }}", s(&sdk)?)),
        "{manifest}"
    );
    ensure!(
        manifest.contains("[workspace]") && manifest.contains("[profile.policy]"),
        "{manifest}"
    );
    let suite = fs::read_to_string(dir.join("suite.yaml"))?;
    ensure!(
        suite.contains("module: target/wasm32-wasip1/policy/team_label.wasm"),
        "{suite}"
    );
    // cargo reads the manifest as a valid package and workspace.
    let metadata = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(dir.join("Cargo.toml"))
        .output()?;
    ensure!(
        metadata.status.success(),
        "{}",
        String::from_utf8_lossy(&metadata.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&metadata.stdout)?;
    ensure!(
        metadata["packages"][0]["name"] == "team-label",
        "{metadata}"
    );

    let elsewhere = root.path().join("other");
    let missing = root.path().join("no-such-tree");
    let out = new_policy(&["other", "--dir", s(&elsewhere)?, "--source", s(&missing)?])?;
    ensure!(out.code() == Some(2), "{out}");
    ensure!(
        out.stderr.contains("is not a Portcullis source tree"),
        "{out}"
    );
    Ok(())
}
