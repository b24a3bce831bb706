//! Files that are not what the config says: a module path that is a FIFO
//! or `/dev/zero`, a module cut short. Each must fail its own reload with
//! an error naming the right policy and file, while the last good set
//! keeps serving, later reloads still happen and SIGTERM still stops the
//! process.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use portcullis_e2e::{CLI_TIMEOUT, Json, Paths, Server, fixture, rss_bytes, run_cli, with_uid};

const POLL: Duration = Duration::from_millis(20);
const RELOAD_TIMEOUT: Duration = Duration::from_secs(15);

/// `required-labels` as `gate`, requiring the label `owner` (which the
/// pod under review lacks).
fn good_config(extra: &str) -> String {
    format!(
        "policies:\n  - name: gate\n    module: good.wasm\n    settings: {{ labels: {{ owner: null }} }}\n{extra}"
    )
}

/// A second policy `bad` whose module is `module`.
fn bad_policy(module: &str) -> String {
    format!("  - name: bad\n    module: {module}\n    settings: {{ labels: {{ team: null }} }}\n")
}

fn write_good(paths: &Paths, dir: &Path) -> Result<PathBuf> {
    fs::copy(&paths.required_labels, dir.join("good.wasm"))?;
    let path = dir.join("config.yaml");
    fs::write(&path, good_config(""))?;
    Ok(path)
}

/// Replaces the config atomically (write a temporary file, rename).
fn replace_config(dir: &Path, text: &str) -> Result<()> {
    let temporary = dir.join(".config.yaml.tmp");
    fs::write(&temporary, text)?;
    fs::rename(&temporary, dir.join("config.yaml"))?;
    Ok(())
}

fn counter(policies: &Json, key: &str) -> u64 {
    policies["reload"][key].as_u64().unwrap_or(0)
}

fn generation(policies: &Json) -> u64 {
    policies["generation"].as_u64().unwrap_or(0)
}

/// Polls `GET /policies` until `done` holds.
fn wait_policies(server: &Server, what: &str, done: impl Fn(&Json) -> bool) -> Result<Json> {
    let deadline = Instant::now() + RELOAD_TIMEOUT;
    loop {
        let policies = server.policies()?;
        if done(&policies) {
            return Ok(policies);
        }
        if Instant::now() >= deadline {
            bail!("waited {RELOAD_TIMEOUT:?} for {what}; last GET /policies:\n{policies:#}");
        }
        std::thread::sleep(POLL);
    }
}

/// Rewrites the config to add policy `bad` with `module`, waits for the
/// reload to fail, and returns the failure's message after checking that
/// it names `bad` and the previous generation still serves.
fn failed_reload_with(server: &Server, module: &str) -> Result<String> {
    let before = server.policies()?;
    replace_config(server.dir(), &good_config(&bad_policy(module)))?;
    let after = wait_policies(server, "the reload to fail", |p| {
        counter(p, "failed") > counter(&before, "failed")
    })?;
    let error = &after["reload"]["lastError"];
    ensure!(
        error["policy"] == "bad" && generation(&after) == generation(&before),
        "the failure must name policy `bad` and keep generation {}:\n{after:#}",
        generation(&before)
    );
    let answer = server.review(
        "/validate",
        &with_uid(&fixture("pod-allowed.json")?, "hostile-1"),
    )?;
    ensure!(
        !answer.allowed() && answer.message().contains("owner"),
        "the last good set (gate) still judges: {answer}"
    );
    Ok(error["message"].as_str().unwrap_or_default().to_string())
}

/// The config goes back to the good one plus a change, and the reload
/// loop takes it: nothing is stuck behind the bad file.
fn recovers(server: &Server) -> Result<()> {
    let before = server.policies()?;
    let changed = good_config("").replace("owner: null", "owner: null, tier: null");
    replace_config(server.dir(), &changed)?;
    wait_policies(server, "a corrected config to load", |p| {
        generation(p) > generation(&before) && p["reload"]["lastError"].is_null()
    })?;
    // SIGHUP is still served by the same loop.
    let attempt = server.policies()?["reload"]["lastAttempt"].clone();
    server.signal_hup()?;
    wait_policies(server, "SIGHUP to be handled", |p| {
        p["reload"]["lastAttempt"] != attempt
    })?;
    Ok(())
}

/// SIGTERM stops the process promptly.
fn stops_on_sigterm(server: &Server) -> Result<()> {
    let kill = run_cli(
        Path::new("kill"),
        &["-TERM", &server.pid().to_string()],
        None,
        CLI_TIMEOUT,
    )?;
    ensure!(kill.status.success(), "kill -TERM failed: {kill}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while server.is_running() {
        ensure!(
            Instant::now() < deadline,
            "the server did not exit within 15 s of SIGTERM\n{}",
            server.logs()
        );
        std::thread::sleep(POLL);
    }
    Ok(())
}

fn start() -> Result<Server> {
    Server::start_with(&["--reload-debounce-ms", "50"], write_good)
}

#[test]
fn a_fifo_as_module_fails_its_reload_without_blocking_anything() {
    let server = start().unwrap_or_else(|e| panic!("{e:#}"));
    server.test(|server| {
        let fifo = server.dir().join("fifo.wasm");
        let made = Command::new("mkfifo").arg(&fifo).status()?;
        ensure!(made.success(), "mkfifo failed");
        let message = failed_reload_with(server, "fifo.wasm")?;
        ensure!(
            message.contains("fifo.wasm") && message.contains("FIFO"),
            "the error should say the module is a FIFO: {message}"
        );
        recovers(server)?;
        stops_on_sigterm(server)
    });
}

#[test]
fn dev_zero_as_module_is_refused_without_reading_it() {
    let server = start().unwrap_or_else(|e| panic!("{e:#}"));
    server.test(|server| {
        let message = failed_reload_with(server, "/dev/zero")?;
        ensure!(
            message.contains("/dev/zero") && message.contains("character device"),
            "the error should say /dev/zero is a device: {message}"
        );
        let rss = rss_bytes(server.pid()).context("the server's resident memory")?;
        ensure!(
            rss < 512 << 20,
            "resident memory {} MiB after the attempt: was /dev/zero read?",
            rss >> 20
        );
        recovers(server)
    });
}

#[test]
fn a_module_larger_than_the_limit_is_refused_by_name() {
    let server = start().unwrap_or_else(|e| panic!("{e:#}"));
    server.test(|server| {
        // A sparse file: 200 MiB long, no blocks written.
        let huge = server.dir().join("huge.wasm");
        fs::File::create(&huge)?.set_len(200 << 20)?;
        let message = failed_reload_with(server, "huge.wasm")?;
        ensure!(
            message.contains("huge.wasm")
                && message.contains("larger than the limit of 134217728 bytes"),
            "the error should name the file and the limit: {message}"
        );
        recovers(server)
    });
}

#[test]
fn a_truncated_module_fails_by_its_own_name() {
    let server = start().unwrap_or_else(|e| panic!("{e:#}"));
    server.test(|server| {
        let good = fs::read(server.dir().join("good.wasm"))?;
        // Cut inside the code section, as an interrupted copy would.
        for (i, keep) in [good.len() / 2, good.len() - 7, 40].into_iter().enumerate() {
            let name = format!("cut-{i}.wasm");
            fs::write(server.dir().join(&name), &good[..keep])?;
            let message = failed_reload_with(server, &name)
                .with_context(|| format!("{name}: {keep} of {} bytes", good.len()))?;
            ensure!(
                message.contains(&name) && !message.contains("panicked"),
                "{name}: the error should name the file and not be a panic: {message}"
            );
            ensure!(
                server.is_running(),
                "the server died on {name}\n{}",
                server.logs()
            );
        }
        recovers(server)
    });
}

/// Five policies: four that allow the pod (`filler-N` requires `app`, which
/// it has) and `gate`, which denies it (it requires `owner`). `version`
/// makes each write a real change.
fn five_policies(version: u32) -> (String, String) {
    let fillers: String = (1..=4)
        .map(|n| {
            format!(
                "  - name: filler-{n}\n    module: good.wasm\n    settings: {{ labels: {{ app: null }} }}\n    mode: enforce\n    timeoutMs: {}\n",
                1000 + version
            )
        })
        .collect();
    let head = format!("policies:\n{fillers}");
    let gate = "  - name: gate\n    module: good.wasm\n    settings: { labels: { owner: null } }\n"
        .to_string();
    (head, gate)
}

#[test]
fn a_config_written_in_place_with_a_pause_is_never_loaded_half_done() {
    use std::io::Write as _;
    use std::sync::atomic::{AtomicBool, Ordering};
    // The default debounce: what an operator gets.
    let server = Server::start(|paths, dir| {
        fs::copy(&paths.required_labels, dir.join("good.wasm"))?;
        let (head, gate) = five_policies(0);
        let path = dir.join("config.yaml");
        fs::write(&path, format!("{head}{gate}"))?;
        Ok(path)
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    server.test(|server| {
        let review = fixture("pod-allowed.json")?;
        let first = server.policies()?;
        ensure!(first["policies"].as_array().map(Vec::len) == Some(5), "{first:#}");
        for trial in 1..=3u32 {
            let before = generation(&server.policies()?);
            let done = AtomicBool::new(false);
            let (wrong, seen) = std::thread::scope(|scope| -> Result<(usize, usize)> {
                let watcher = scope.spawn(|| -> Result<(usize, usize)> {
                    let (mut wrong, mut seen) = (0, 0);
                    let mut n = 0;
                    while !done.load(Ordering::Relaxed) {
                        n += 1;
                        let uid = format!("torn-{trial}-{n}");
                        let answer = server.review("/validate", &with_uid(&review, &uid))?;
                        seen += 1;
                        if answer.allowed() {
                            wrong += 1;
                        }
                        let policies = server.policies()?;
                        let names = policies["policies"].as_array().map(Vec::len);
                        ensure!(
                            names == Some(5),
                            "trial {trial}: a set of {names:?} policies was served:\n{policies:#}"
                        );
                        std::thread::sleep(POLL);
                    }
                    Ok((wrong, seen))
                });
                // The writer: in place, the first four policies flushed,
                // a pause of a second, then the fifth.
                let (head, gate) = five_policies(trial);
                let path = server.dir().join("config.yaml");
                let mut file = fs::OpenOptions::new().write(true).truncate(true).open(&path)?;
                file.write_all(head.as_bytes())?;
                file.sync_data()?;
                std::thread::sleep(Duration::from_secs(1));
                file.write_all(gate.as_bytes())?;
                drop(file);
                let after = wait_policies(server, "the complete config to load", |p| {
                    generation(p) > before
                });
                // A little longer, for a late wrong swap to show.
                std::thread::sleep(Duration::from_millis(500));
                done.store(true, Ordering::Relaxed);
                let result = watcher.join().map_err(|_| anyhow::anyhow!("watcher panicked"))?;
                after?;
                result
            })?;
            ensure!(
                wrong == 0,
                "trial {trial}: {wrong} of {seen} reviews were allowed by a half-written config"
            );
            let now = server.policies()?;
            ensure!(
                generation(&now) == before + 1,
                "trial {trial}: one reload for one edit, got generation {} after {before}:\n{now:#}",
                generation(&now)
            );
        }
        Ok(())
    });
}
