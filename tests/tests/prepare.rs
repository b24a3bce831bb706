//! Pre-initialization: a policy that exports `prepare` is snapshotted
//! after it, per settings, and every call starts from that snapshot in a
//! fresh instance. Checked with `misbehave` (state left by `prepare`, a
//! `prepare` that loops or rejects) and with `policies/cel` (a wrong
//! expression refused at load with its position; a rule set changed while
//! serving).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use portcullis_e2e::{CLI_TIMEOUT, Paths, Server, fixture, paths, repo_root, run_cli, yaml_str};
use serde_json::json;

fn module(file: &str) -> Result<PathBuf> {
    let module = repo_root().join("target/wasm32-wasip1/policy").join(file);
    ensure!(
        module.exists(),
        "missing {}: run `make build` first",
        module.display()
    );
    Ok(module)
}

fn misbehave(policies: &[(&str, &str, &str)]) -> impl FnOnce(&Paths, &Path) -> Result<PathBuf> {
    let policies: Vec<(String, String, String)> = policies
        .iter()
        .map(|(n, l, s)| ((*n).to_owned(), (*l).to_owned(), (*s).to_owned()))
        .collect();
    move |_: &Paths, dir: &Path| {
        let module = module("misbehave.wasm")?;
        let module = yaml_str(module.to_str().context("module path is not UTF-8")?);
        let mut yaml = String::from("policies:\n");
        for (name, limits, settings) in policies {
            yaml.push_str(&format!(
                "  - name: {name}\n    module: {module}\n    {limits}\n    settings: {settings}\n"
            ));
        }
        let path = dir.join("config.yaml");
        std::fs::write(&path, yaml)?;
        Ok(path)
    }
}

#[test]
fn every_call_starts_from_the_prepared_state_and_nothing_carries() -> Result<()> {
    let server = Server::start(misbehave(&[(
        "remember",
        "onError: deny",
        "{ behaviour: stateful, prepare: remember }",
    )]))?;
    let review = fixture("pod-allowed.json")?;
    let expected = "remember: calls=1001 last=prepared buffer=65536";
    let mut seen = Vec::new();
    for _ in 0..10 {
        seen.push(
            server
                .review("/validate/remember", &review)?
                .message()
                .to_owned(),
        );
    }
    let concurrent: Vec<_> = (0..8)
        .map(|_| {
            let request = server
                .client(portcullis_e2e::Proto::H2)
                .post(server.url("/validate/remember"))
                .json(&review);
            std::thread::spawn(move || {
                portcullis_e2e::block_on(async move {
                    let body: serde_json::Value = request.send().await?.json().await?;
                    anyhow::Ok(
                        body["response"]["status"]["message"]
                            .as_str()
                            .unwrap_or("")
                            .to_owned(),
                    )
                })
            })
        })
        .collect();
    for call in concurrent {
        seen.push(
            call.join()
                .map_err(|_| anyhow::anyhow!("a client panicked"))??,
        );
    }
    let other: Vec<&String> = seen.iter().filter(|m| *m != expected).collect();
    ensure!(
        other.is_empty(),
        "{} of {} calls did not start from the prepared state ({expected:?}): {other:?}",
        other.len(),
        seen.len()
    );
    let policies = server.policies()?;
    ensure!(
        policies["policies"][0]["preInitialized"] == true,
        "/policies does not say the policy is pre-initialized: {policies:#}"
    );

    // Turned off, the same policy starts from the module's own state.
    let plain = Server::start_with(
        &["--pre-initialize=false"],
        misbehave(&[(
            "remember",
            "onError: deny",
            "{ behaviour: stateful, prepare: remember }",
        )]),
    )?;
    let answer = plain.review("/validate/remember", &review)?;
    ensure!(
        answer.message() == "remember: calls=1 last=none buffer=65536",
        "{answer}"
    );
    Ok(())
}

/// `portcullis eval` of `config` on a pod review: its exit code and output.
fn eval(config: &Path) -> Result<portcullis_e2e::CliOutput> {
    let paths = paths()?;
    let review = portcullis_e2e::fixtures_dir().join("pod-allowed.json");
    run_cli(
        &paths.bin,
        &[
            "eval",
            "--config",
            config.to_str().context("config path")?,
            "--review",
            review.to_str().context("review path")?,
            "--no-module-cache",
        ],
        None,
        CLI_TIMEOUT,
    )
}

#[test]
fn a_prepare_that_loops_hogs_memory_or_rejects_keeps_the_policy_out() -> Result<()> {
    let paths = paths()?;
    let dir = tempfile::tempdir()?;
    for (limits, settings, expected) in [
        (
            "timeoutMs: 300",
            "{ behaviour: allow, prepare: loop }",
            "prepare exceeded its deadline of 300 ms",
        ),
        (
            "memoryLimit: 16Mi",
            "{ behaviour: allow, prepare: memory-bomb }",
            "prepare exceeded its memory limit of 16777216 bytes",
        ),
        (
            "timeoutMs: 300",
            "{ behaviour: allow, prepare: reject }",
            "the policy rejected its settings in prepare: misbehave: settings rejected in prepare",
        ),
    ] {
        let config = misbehave(&[("p", limits, settings)])(&paths, dir.path())?;
        let started = Instant::now();
        let out = eval(&config)?;
        ensure!(out.code() == Some(2), "{settings}: expected exit 2\n{out}");
        ensure!(
            out.all_output().contains(expected),
            "{settings}: expected {expected:?}\n{out}"
        );
        ensure!(
            started.elapsed() < Duration::from_secs(20),
            "{settings}: took {:?}",
            started.elapsed()
        );
    }
    Ok(())
}

fn cel_config(dir: &Path, validations: &str) -> Result<PathBuf> {
    let module = module("cel_policy.wasm")?;
    let yaml = format!(
        "policies:\n  - name: replicas\n    module: {}\n    settings:\n      validations:\n{validations}",
        yaml_str(module.to_str().context("module path is not UTF-8")?)
    );
    let path = dir.join("config.yaml");
    // Replaced whole, the way the README says to edit the config.
    let temp = dir.join(".config.yaml.tmp");
    std::fs::write(&temp, yaml)?;
    std::fs::rename(&temp, &path)?;
    Ok(path)
}

#[test]
fn a_wrong_cel_expression_is_refused_at_load_with_its_position() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = cel_config(
        dir.path(),
        "        - expression: object.spec.replicas <= 5\n        - expression: \"object.spec.replicas <= \"\n",
    )?;
    let out = eval(&config)?;
    ensure!(out.code() == Some(2), "{out}");
    let text = out.all_output();
    ensure!(
        text.contains("validations[1].expression: ERROR: validations[1].expression:1:"),
        "the error does not name the expression and its position:\n{out}"
    );
    Ok(())
}

#[test]
fn a_changed_cel_rule_set_is_served_without_a_restart() -> Result<()> {
    let server = Server::start_with(&["--reload-debounce-ms", "100"], |_: &Paths, dir: &Path| {
        cel_config(dir, "        - expression: object.spec.replicas <= 1\n")
    })?;
    let mut deployment = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "cel-reload",
            "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "alice"},
            "object": {"apiVersion": "apps/v1", "kind": "Deployment",
                       "metadata": {"name": "web", "namespace": "shop"},
                       "spec": {"replicas": 3}}
        }
    });
    let answer = server.review("/validate", &deployment)?;
    ensure!(
        !answer.allowed(),
        "3 replicas passed a limit of 1: {answer}"
    );
    ensure!(
        answer
            .message()
            .contains("failed expression: object.spec.replicas <= 1"),
        "{answer}"
    );
    let dir = server.dir().to_path_buf();
    let changed = Instant::now();
    cel_config(&dir, "        - expression: object.spec.replicas <= 5\n")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let took = loop {
        deployment["request"]["uid"] =
            json!(format!("cel-reload-{}", changed.elapsed().as_millis()));
        if server.review("/validate", &deployment)?.allowed() {
            break changed.elapsed();
        }
        ensure!(
            Instant::now() < deadline,
            "the new rule was not served within 60 s\n{}",
            server.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    println!(
        "cel rule set changed: served {} ms after the config was replaced",
        took.as_millis()
    );
    Ok(())
}
