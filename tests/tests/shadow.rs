//! Shadow evaluation: a policy's `shadow:` candidate judges every review
//! the live version judges, after the answer, without changing it; what
//! it disagrees on is counted in /metrics and listed in /policies; a slow
//! candidate under a small budget is dropped, not waited for; `portcullis
//! promote` makes the candidate enforce through the usual reload.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use portcullis_e2e::{
    CLI_TIMEOUT, Json, Paths, Proto, Server, block_on, fixture, metric_value, path_str, run_cli,
    with_uid, yaml_str,
};

/// Concurrent clients, and reviews each sends.
const CLIENTS: usize = 8;
const REVIEWS_EACH: usize = 40;
/// Disagreements `/policies` keeps per policy.
const RECENT: usize = 20;

fn module(paths: &Paths, file: &str) -> String {
    yaml_str(&paths.modules.join(file).display().to_string())
}

/// `labels` allows what `pod-allowed.json` carries (an `app` label); its
/// candidate also wants a `cost-center` label, so it denies every such
/// pod. `defaults` adds a label; its candidate adds another value.
fn write_config(paths: &Paths, dir: &Path) -> Result<PathBuf> {
    let yaml = format!(
        r#"policies:
  - name: labels
    module: {required}
    settings: {{ labels: {{ app: null }} }}
    shadow:
      settings: {{ labels: {{ app: null, cost-center: null }} }}
  - name: defaults
    module: {defaults}
    settings: {{ labels: {{ shadow-test: live }} }}
    shadow:
      settings: {{ labels: {{ shadow-test: candidate }} }}
"#,
        required = module(paths, "required_labels.wasm"),
        defaults = module(paths, "default_labels.wasm"),
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml)?;
    Ok(path)
}

/// The live version allows at once; its candidate loops until its own
/// 300 ms deadline.
fn write_slow_config(paths: &Paths, dir: &Path) -> Result<PathBuf> {
    let yaml = format!(
        r#"policies:
  - name: quick
    module: {misbehave}
    settings: {{ behaviour: allow }}
    shadow:
      settings: {{ behaviour: loop }}
      timeoutMs: 300
"#,
        misbehave = module(paths, "misbehave.wasm"),
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml)?;
    Ok(path)
}

/// The value of `portcullis_shadow_evaluations_total{policy,result}`, 0
/// when absent.
fn shadow_count(metrics: &str, policy: &str, result: &str) -> u64 {
    let series =
        format!("portcullis_shadow_evaluations_total{{policy=\"{policy}\",result=\"{result}\"}}");
    metric_value(metrics, &series).unwrap_or(0.0) as u64
}

/// Every result of `policy`'s candidate.
fn shadow_total(metrics: &str, policy: &str) -> u64 {
    ["agree", "disagree", "error", "dropped"]
        .iter()
        .map(|result| shadow_count(metrics, policy, result))
        .sum()
}

/// Polls /metrics until `policy`'s candidate has `expected` results in
/// all (they are counted after the answers), then returns the text.
fn settled(server: &Server, policy: &str, expected: u64) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = server.metrics()?;
        let total = shadow_total(&metrics, policy);
        if total >= expected {
            ensure!(
                total == expected,
                "{total} shadow results for {policy}, expected {expected}\n{metrics}"
            );
            return Ok(metrics);
        }
        if Instant::now() >= deadline {
            bail!("only {total} of {expected} shadow results for {policy} after 60 s\n{metrics}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One answer, as a client sees it.
struct Answered {
    uid: String,
    response: Json,
    elapsed: Duration,
}

/// `clients` clients each send `each` reviews (unique uids) to `path`.
fn load(
    server: &Server,
    path: &str,
    review: &Json,
    clients: usize,
    each: usize,
) -> Result<Vec<Answered>> {
    let client = server.client(Proto::H2).clone();
    let url = server.url(path);
    block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..clients {
            let (client, url, review) = (client.clone(), url.clone(), review.clone());
            tasks.spawn(async move {
                let mut answers = Vec::with_capacity(each);
                for n in 0..each {
                    let uid = format!("e2e0shad-{c:04}-4000-8000-{n:012}");
                    let started = Instant::now();
                    let reply = client
                        .post(&url)
                        .json(&with_uid(&review, &uid))
                        .send()
                        .await
                        .context("sending a review")?;
                    ensure!(reply.status().is_success(), "HTTP {}", reply.status());
                    let body: Json = reply.json().await.context("an AdmissionReview")?;
                    answers.push(Answered {
                        uid,
                        response: body["response"].clone(),
                        elapsed: started.elapsed(),
                    });
                }
                anyhow::Ok(answers)
            });
        }
        let mut all = Vec::with_capacity(clients * each);
        for answers in tasks.join_all().await {
            all.extend(answers?);
        }
        Ok(all)
    })
}

fn policy<'a>(policies: &'a Json, name: &str) -> Result<&'a Json> {
    policies["policies"]
        .as_array()
        .and_then(|list| list.iter().find(|p| p["name"] == name))
        .with_context(|| format!("no policy {name} in /policies:\n{policies:#}"))
}

#[test]
fn every_disagreement_is_counted_and_no_answer_changes() {
    let server = Server::in_process_with(&["--shadow-concurrency", "64"], write_config)
        .unwrap_or_else(|e| panic!("{e:#}"));
    server.test(|server| {
        let review = fixture("pod-allowed.json")?;
        let answers = load(
            server,
            "/validate?timeout=10s",
            &review,
            CLIENTS,
            REVIEWS_EACH,
        )?;
        let sent = (CLIENTS * REVIEWS_EACH) as u64;
        for answer in &answers {
            let response = &answer.response;
            ensure!(response["uid"] == answer.uid.as_str(), "{response:#}");
            ensure!(
                response["allowed"] == true,
                "the candidate changed an answer: {response:#}"
            );
            ensure!(
                response.get("warnings").is_none_or(Json::is_null),
                "the candidate's verdict leaked into an answer: {response:#}"
            );
        }

        let metrics = settled(server, "labels", sent)?;
        ensure!(
            shadow_count(&metrics, "labels", "disagree") == sent,
            "expected {sent} disagreements\n{metrics}"
        );
        // The live verdicts are counted as before, candidates apart.
        let live = metric_value(
            &metrics,
            "portcullis_policy_evaluations_total{policy=\"labels\",outcome=\"allow\"}",
        );
        ensure!(
            live == Some(sent as f64),
            "live evaluations: {live:?}\n{metrics}"
        );

        let policies = server.policies()?;
        let shadow = &policy(&policies, "labels")?["shadow"];
        ensure!(shadow["counts"]["disagree"] == sent, "{shadow:#}");
        ensure!(shadow["counts"]["dropped"] == 0, "{shadow:#}");
        ensure!(
            shadow["settings"]["labels"]["cost-center"].is_null()
                && shadow["settings"]["labels"].get("cost-center").is_some(),
            "{shadow:#}"
        );
        ensure!(
            shadow["digest"]
                .as_str()
                .is_some_and(|d| d.starts_with("sha256:") && d.len() == 71),
            "{shadow:#}"
        );
        let recent = shadow["recentDisagreements"]
            .as_array()
            .context("recentDisagreements")?;
        ensure!(
            recent.len() == RECENT,
            "{} kept, not {RECENT}",
            recent.len()
        );
        let uids: HashSet<&str> = answers.iter().map(|a| a.uid.as_str()).collect();
        for d in recent {
            let uid = d["uid"].as_str().unwrap_or_default();
            ensure!(uids.contains(uid), "unknown uid in {d:#}");
            ensure!(d["kind"] == "Pod" && d["namespace"] == "shop", "{d:#}");
            ensure!(d["name"] == "web" && d["operation"] == "CREATE", "{d:#}");
            ensure!(d["live"]["verdict"] == "allow", "{d:#}");
            ensure!(d["candidate"]["verdict"] == "deny", "{d:#}");
            ensure!(
                d["candidate"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("cost-center")),
                "{d:#}"
            );
        }
        Ok(())
    });
}

#[test]
fn a_mutators_candidate_with_another_patch_disagrees() {
    let server = Server::in_process_with(&["--shadow-concurrency", "64"], write_config)
        .unwrap_or_else(|e| panic!("{e:#}"));
    server.test(|server| {
        let review = fixture("pod-allowed.json")?;
        let answers = load(server, "/mutate?timeout=10s", &review, 2, 10)?;
        for answer in &answers {
            let patch = answer.response["patch"].as_str().unwrap_or_default();
            let patch = portcullis_e2e::decode_patch(&answer.response)?
                .with_context(|| format!("no patch: {patch}"))?;
            let text = serde_json::to_string(&patch)?;
            ensure!(
                text.contains("shadow-test")
                    && text.contains("live")
                    && !text.contains("candidate"),
                "the answer's patch is not the live version's: {text}"
            );
        }
        let metrics = settled(server, "defaults", 20)?;
        ensure!(
            shadow_count(&metrics, "defaults", "disagree") == 20,
            "{metrics}"
        );
        let policies = server.policies()?;
        let recent = &policy(&policies, "defaults")?["shadow"]["recentDisagreements"];
        let first = &recent[0];
        ensure!(first["live"]["verdict"] == "allow", "{first:#}");
        ensure!(first["candidate"]["verdict"] == "allow", "{first:#}");
        let live = first["live"]["patch"].as_str().unwrap_or_default();
        let candidate = first["candidate"]["patch"].as_str().unwrap_or_default();
        ensure!(live.contains("\"live\""), "{first:#}");
        ensure!(candidate.contains("\"candidate\""), "{first:#}");
        Ok(())
    });
}

#[test]
fn a_slow_candidate_over_budget_is_dropped_and_never_waited_for() {
    // One candidate at a time; every loop runs to its deadline (no
    // breaker), so most candidate evaluations find the budget full.
    let server = Server::in_process_with(
        &["--shadow-concurrency", "1", "--breaker-failures", "0"],
        write_slow_config,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    server.test(|server| {
        let review = fixture("pod-allowed.json")?;
        let (clients, each) = (4, 25);
        let answers = load(
            server,
            "/validate/quick?timeout=10s",
            &review,
            clients,
            each,
        )?;
        for answer in &answers {
            ensure!(answer.response["allowed"] == true, "{:#}", answer.response);
        }
        let mut elapsed: Vec<Duration> = answers.iter().map(|a| a.elapsed).collect();
        elapsed.sort();
        let median = elapsed[elapsed.len() / 2];
        println!(
            "{} answers beside a 300 ms candidate: median {median:?}, max {:?}",
            elapsed.len(),
            elapsed[elapsed.len() - 1]
        );
        // Waiting for the candidate would take 300 ms a review.
        ensure!(
            median < Duration::from_millis(150),
            "answers waited for the candidate: median {median:?}"
        );

        let metrics = settled(server, "quick", (clients * each) as u64)?;
        let dropped = shadow_count(&metrics, "quick", "dropped");
        let errors = shadow_count(&metrics, "quick", "error");
        println!("candidate: {errors} timed out, {dropped} dropped");
        ensure!(dropped > 0, "nothing was dropped\n{metrics}");
        ensure!(errors > 0, "the candidate never ran\n{metrics}");
        ensure!(
            shadow_count(&metrics, "quick", "agree") + shadow_count(&metrics, "quick", "disagree")
                == 0,
            "a looping candidate cannot give a verdict\n{metrics}"
        );
        let policies = server.policies()?;
        let shadow = &policy(&policies, "quick")?["shadow"];
        ensure!(shadow["counts"]["dropped"] == dropped, "{shadow:#}");
        ensure!(
            shadow["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("timeout")),
            "{shadow:#}"
        );
        Ok(())
    });
}

#[test]
fn promote_makes_the_candidate_enforce_without_a_restart() {
    let server = Server::in_process_with(&["--reload-debounce-ms", "100"], write_config)
        .unwrap_or_else(|e| panic!("{e:#}"));
    server.test(|server| {
        let review = fixture("pod-allowed.json")?;
        let before = server.review("/validate", &review)?;
        ensure!(before.allowed(), "{before}");
        let generation = server.policies()?["generation"].as_u64().unwrap_or(0);

        let bin = &server.paths.bin;
        let config = path_str(&server.config)?;
        let refused = run_cli(
            bin,
            &["promote", "--config", config, "nope"],
            None,
            CLI_TIMEOUT,
        )?;
        ensure!(refused.code() == Some(2), "{refused}");
        ensure!(
            refused.all_output().contains("no policy named \"nope\""),
            "{refused}"
        );

        let out = run_cli(
            bin,
            &["promote", "--config", config, "labels"],
            None,
            CLI_TIMEOUT,
        )?;
        ensure!(out.status.success(), "{out}");
        let again = run_cli(
            bin,
            &["promote", "--config", config, "labels"],
            None,
            CLI_TIMEOUT,
        )?;
        ensure!(again.code() == Some(2), "{again}");
        ensure!(
            again.all_output().contains("has no `shadow:` candidate"),
            "{again}"
        );

        // The watcher reloads the rewritten file: the candidate enforces.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = server.review("/validate", &review)?;
            if !answer.allowed() {
                ensure!(answer.message().contains("cost-center"), "{answer}");
                break;
            }
            if Instant::now() >= deadline {
                bail!("still allowed 30 s after promote\n{:#}", server.policies()?);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let policies = server.policies()?;
        ensure!(
            policies["generation"].as_u64().unwrap_or(0) > generation,
            "{policies:#}"
        );
        let labels = policy(&policies, "labels")?;
        ensure!(labels.get("shadow").is_none(), "{labels:#}");
        // The other policy keeps its candidate.
        ensure!(
            policy(&policies, "defaults")?.get("shadow").is_some(),
            "{policies:#}"
        );
        Ok(())
    });
}

#[test]
fn a_changed_candidate_reloads_and_a_broken_one_keeps_the_old_set() {
    let server = Server::in_process_with(&["--shadow-concurrency", "64"], write_config)
        .unwrap_or_else(|e| panic!("{e:#}"));
    server.test(|server| {
        let review = fixture("pod-allowed.json")?;
        load(server, "/validate", &review, 1, 3)?;
        settled(server, "labels", 3)?;
        let text = std::fs::read_to_string(&server.config)?;
        let generation = server.policies()?["generation"].as_u64().unwrap_or(0);

        // Only the candidate's settings change: a change of policies, and
        // its counts start over.
        let changed = text.replace("cost-center: null", "team: null");
        ensure!(changed != text, "the config did not change");
        std::fs::write(&server.config, &changed)?;
        server.reload()?;
        let policies = wait_for_generation(server, generation + 1)?;
        let shadow = &policy(&policies, "labels")?["shadow"];
        ensure!(shadow["counts"]["disagree"] == 0, "{shadow:#}");
        ensure!(
            shadow["settings"]["labels"].get("team").is_some(),
            "{shadow:#}"
        );
        // pod-allowed.json has a team label: now the candidate agrees.
        load(server, "/validate", &review, 1, 2)?;
        let metrics = settled(server, "labels", 5)?;
        ensure!(shadow_count(&metrics, "labels", "agree") == 2, "{metrics}");

        // A candidate whose settings its module rejects fails the reload,
        // naming the policy and its candidate; the set in service stays.
        let broken = text.replace(
            "shadow:\n      settings: { labels: { app: null, cost-center: null } }",
            "shadow:\n      settings: { labels: {} }",
        );
        ensure!(broken != text, "the config did not change");
        std::fs::write(&server.config, &broken)?;
        server.reload()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let error = loop {
            let policies = server.policies()?;
            if let Some(message) = policies["reload"]["lastError"]["message"].as_str() {
                ensure!(
                    policies["generation"].as_u64() == Some(generation + 1),
                    "{policies:#}"
                );
                break message.to_string();
            }
            ensure!(Instant::now() < deadline, "no reload error\n{policies:#}");
            std::thread::sleep(Duration::from_millis(50));
        };
        ensure!(
            error.contains("policy \"labels\", its shadow candidate"),
            "{error}"
        );
        ensure!(error.contains("settings rejected"), "{error}");
        let answer = server.review("/validate", &review)?;
        ensure!(answer.allowed(), "{answer}");
        Ok(())
    });
}

/// Polls /policies until the set in service is `generation` (or later).
fn wait_for_generation(server: &Server, generation: u64) -> Result<Json> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let policies = server.policies()?;
        if policies["generation"].as_u64().unwrap_or(0) >= generation {
            return Ok(policies);
        }
        ensure!(
            Instant::now() < deadline,
            "generation {generation} never came\n{policies:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
