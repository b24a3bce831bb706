//! One misbehaving policy must not starve the others: 64 clients keep
//! calling a policy that loops until its deadline while a well-behaved
//! policy on another path is timed. Before the circuit breaker, the
//! looping calls held every evaluation slot and a core each, and the
//! well-behaved policy's median went from ~1 ms to ~1.9 s.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use portcullis_e2e::{Json, Paths, Proto, Server, block_on, fixture, https_client, with_uid};

const ATTACKERS: usize = 64;
/// Well-behaved calls timed during the attack.
const PROBES: usize = 40;

fn write_config(paths: &Paths, dir: &Path) -> Result<PathBuf> {
    let module = paths.allowed_images.with_file_name("misbehave.wasm");
    let path = dir.join("config.yaml");
    std::fs::write(
        &path,
        format!(
            "policies:\n  \
             - {{ name: loop, module: {m}, timeoutMs: 250, onError: deny, settings: {{ behaviour: loop }} }}\n  \
             - {{ name: allow, module: {m}, timeoutMs: 250, onError: deny, settings: {{ behaviour: allow }} }}\n",
            m = module.display()
        ),
    )?;
    Ok(path)
}

#[test]
fn a_looping_policy_does_not_starve_a_well_behaved_one() {
    // The defaults an operator gets.
    let server = Server::start(write_config).unwrap_or_else(|e| panic!("{e:#}"));
    server.test(|server| {
        let review = fixture("pod-allowed.json")?;
        let client = server.client(Proto::H2).clone();
        let loop_url = server.url("/validate/loop?timeout=10s");
        let allow_url = server.url("/validate/allow?timeout=10s");
        // The well-behaved policy alone, for comparison.
        let quiet = probe(&client, &allow_url, &review, 10)?;
        let stop = Arc::new(AtomicBool::new(false));
        // The attack on a connection of its own: the probes measure the
        // server's evaluation capacity, not one HTTP/2 connection's fate.
        let attack_client = https_client(&server.certs.ca_pem, Proto::H2, &[])?;
        let (probes, looping) = block_on(async {
            let mut attackers = tokio::task::JoinSet::new();
            for a in 0..ATTACKERS {
                let (client, url, stop) = (attack_client.clone(), loop_url.clone(), stop.clone());
                let review = with_uid(&review, &format!("attack-{a}"));
                attackers.spawn(async move {
                    let mut calls = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        if client.post(&url).json(&review).send().await.is_ok() {
                            calls += 1;
                        }
                    }
                    calls
                });
            }
            // Let the attack take hold first.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let probes = probe_async(&client, &allow_url, &review, PROBES).await;
            stop.store(true, Ordering::Relaxed);
            let looping: u64 = attackers.join_all().await.into_iter().sum();
            (probes, looping)
        });
        let probes = probes?;
        let (quiet_p50, p50, p90) = (median(&quiet), median(&probes), quantile(&probes, 0.9));
        println!(
            "well-behaved policy: p50 {} alone; under {ATTACKERS} clients of a looping policy \
             ({looping} looping calls answered): p50 {}, p90 {}",
            ms(quiet_p50),
            ms(p50),
            ms(p90)
        );
        ensure!(
            p50 < Duration::from_millis(50) && p90 < Duration::from_millis(250),
            "the well-behaved policy starved: p50 {}, p90 {} (alone: {})",
            ms(p50),
            ms(p90),
            ms(quiet_p50)
        );
        let policies = server.policies()?;
        println!(
            "breaker: {}",
            server
                .metrics()?
                .lines()
                .filter(|l| l.contains("circuit_open"))
                .collect::<Vec<_>>()
                .join("; ")
        );
        ensure!(policies["generation"].as_u64() == Some(1), "{policies:#}");
        Ok(())
    });
}

/// Times `n` sequential calls of `url`; each must be allowed.
fn probe(client: &reqwest::Client, url: &str, review: &Json, n: usize) -> Result<Vec<Duration>> {
    block_on(probe_async(client, url, review, n))
}

async fn probe_async(
    client: &reqwest::Client,
    url: &str,
    review: &Json,
    n: usize,
) -> Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let review = with_uid(review, &format!("probe-{i}"));
        let started = Instant::now();
        let reply = client.post(url).json(&review).send().await?;
        let status = reply.status();
        let body: Json = reply
            .json()
            .await
            .with_context(|| format!("probe {i}: {status}"))?;
        times.push(started.elapsed());
        ensure!(
            status.is_success() && body["response"]["allowed"] == true,
            "probe {i} of the well-behaved policy: {status} {body:#}"
        );
    }
    Ok(times)
}

fn quantile(times: &[Duration], q: f64) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

fn median(times: &[Duration]) -> Duration {
    quantile(times, 0.5)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
