//! The memory budget: the memory caps of the policy calls running at once
//! add up to at most `--memory-budget`, so a burst of memory bombs cannot
//! take the process past its pod's memory limit, and a policy whose own
//! cap is larger than the budget is refused when it loads.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use portcullis_e2e::{Json, Paths, Proto, Server, block_on, fixture, rss_bytes, with_uid};

/// Concurrent memory bombs, each allowed `BOMB_CAP_MIB`.
const BOMBS: usize = 16;
const BOMB_CAP_MIB: u64 = 64;
const BUDGET_MIB: u64 = 128;

fn misbehave(paths: &Paths) -> PathBuf {
    paths.allowed_images.with_file_name("misbehave.wasm")
}

fn write_config(paths: &Paths, dir: &Path, cap_mib: u64) -> Result<PathBuf> {
    let path = dir.join("config.yaml");
    fs::write(
        &path,
        format!(
            "policies:\n  - name: bomb\n    module: {}\n    memoryLimit: {cap_mib}Mi\n    timeoutMs: 5000\n    onError: deny\n    settings: {{ behaviour: memory-bomb }}\n",
            misbehave(paths).display()
        ),
    )?;
    Ok(path)
}

#[test]
fn memory_bombs_at_once_stay_within_the_budget() {
    let budget = format!("{BUDGET_MIB}Mi");
    // The breaker would fail repeated bombs fast: this test is about the budget.
    let server = Server::start_with(
        &["--memory-budget", &budget, "--breaker-failures", "0"],
        |paths, dir| write_config(paths, dir, BOMB_CAP_MIB),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    server.test(|server| {
        let pid = server.pid();
        let idle = rss_bytes(pid).context("the server's RSS")?;
        let peak = AtomicU64::new(idle);
        let done = AtomicBool::new(false);
        let review = fixture("pod-allowed.json")?;
        let answers: Vec<Json> = std::thread::scope(|scope| -> Result<Vec<Json>> {
            scope.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    if let Some(rss) = rss_bytes(pid) {
                        peak.fetch_max(rss, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            });
            let client = server.client(Proto::H2).clone();
            let url = server.url("/validate?timeout=30s");
            let reviews: Vec<Json> = (0..BOMBS)
                .map(|i| with_uid(&review, &format!("bomb-{i}")))
                .collect();
            let answers = block_on(async {
                let mut calls = tokio::task::JoinSet::new();
                for review in reviews {
                    let (client, url) = (client.clone(), url.clone());
                    calls.spawn(async move {
                        let reply = client.post(&url).json(&review).send().await?;
                        anyhow::Ok(reply.json::<Json>().await?)
                    });
                }
                calls.join_all().await
            });
            done.store(true, Ordering::Relaxed);
            answers.into_iter().collect()
        })?;
        for answer in &answers {
            let message = answer["response"]["status"]["message"].as_str().unwrap_or("");
            ensure!(
                answer["response"]["allowed"] == false
                    && (message.contains("exceeded its memory limit")
                        || message.contains("memory budget")),
                "every bomb is stopped at its cap or by the budget: {answer:#}"
            );
        }
        let grew = peak.load(Ordering::Relaxed).saturating_sub(idle) >> 20;
        println!(
            "{BOMBS} bombs of {BOMB_CAP_MIB} MiB at once, budget {BUDGET_MIB} MiB: RSS grew by {grew} MiB"
        );
        ensure!(
            grew <= BUDGET_MIB + 64,
            "{BOMBS} bombs of {BOMB_CAP_MIB} MiB grew the server by {grew} MiB, past the {BUDGET_MIB} MiB budget"
        );
        Ok(())
    });
}

#[test]
fn a_policy_whose_cap_exceeds_the_budget_is_refused_at_load() {
    let result = Server::start_with(&["--memory-budget", "128Mi"], |paths, dir| {
        write_config(paths, dir, 256)
    });
    let error = match result {
        Ok(_) => panic!("a 256Mi policy under a 128Mi budget was loaded"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains("memoryLimit of 268435456 bytes is larger than the server's memory budget of 134217728 bytes"),
        "{error}"
    );
}
