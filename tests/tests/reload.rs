//! Hot reload: policy sets swapped while the server serves.
//!
//! - [`swaps_under_load`]: 50+ good swaps (A <-> B) and 12 broken attempts,
//!   made the three ways files change in practice (the Kubernetes `..data`
//!   symlink swap, an in-place write, write-then-rename), under steady
//!   HTTP/2 and HTTP/1.1 load: no request fails, every answer is exactly
//!   one version's, a generation maps to one version and one module digest,
//!   and a broken attempt leaves the previous version serving.
//! - [`unchanged_modules_are_not_recompiled`]: settings-only changes and
//!   swapping back reuse compiled modules; identical files are `unchanged`.
//! - [`policies_can_be_added_and_removed`], [`sighup_reloads`].
//! - [`startup_uses_the_reload_path`]: a broken config at start-up exits 2;
//!   `--allow-empty` serves unready (admission answers 503, never allows)
//!   until a good config loads.
//!
//! The tests run one at a time (see [`serial`]): the load test measures
//! latencies and must not share the two cores with another test's server.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use portcullis_e2e::{
    Answer, Json, Paths, Proto, Reply, Server, StatusCode, check_answer, fixture, json,
    metric_value, paths, run_cli, serve_expecting_exit, spawn, tail, with_uid,
};

// ---------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------

/// How often state is polled while waiting for a reload.
const POLL: Duration = Duration::from_millis(20);
/// Longest wait for one reload (good or broken) to show.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// One test at a time in this file.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

const DEFAULTS: &str = "# generous deadline: the load test saturates both cores\n\
                        defaults: { timeoutMs: 2000 }\n";

/// Version A: `required_labels.wasm` requiring label `version-a`.
fn config_a() -> String {
    format!(
        "{DEFAULTS}policies:\n  - name: gate\n    module: a.wasm\n    settings: {{ labels: {{ version-a: null }} }}\n"
    )
}

/// Version B: `allowed_images.wasm` allowing only `version-b.example/`.
fn config_b() -> String {
    format!(
        "{DEFAULTS}policies:\n  - name: gate\n    module: b.wasm\n    settings: {{ allowed: [\"version-b.example/\"] }}\n"
    )
}

/// The exact denial of version A for [`pod_review`].
const ANSWER_A: &str = "gate: missing required label: version-a";
/// How version B's denial for [`pod_review`] starts and ends.
const ANSWER_B_START: &str = "gate: container \"app\" uses image \"registry.k8s.io/pause:3.10\"";
const ANSWER_B_END: &str = "; allowed images: version-b.example/";

/// A pod CREATE without labels whose one container uses
/// `registry.k8s.io/pause:3.10`: denied by both versions, differently.
fn pod_review() -> Result<Json> {
    let review = fixture("pod-unlabelled.json")?;
    let object = &review["request"]["object"];
    ensure!(
        object["metadata"]["labels"].is_null()
            && object["spec"]["containers"][0]["image"] == "registry.k8s.io/pause:3.10"
            && object["spec"]["containers"].as_array().map(Vec::len) == Some(1),
        "fixture pod-unlabelled.json changed; this test relies on it"
    );
    Ok(review)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Version {
    A,
    B,
}

impl Version {
    fn other(self) -> Version {
        match self {
            Version::A => Version::B,
            Version::B => Version::A,
        }
    }
    fn config(self) -> String {
        match self {
            Version::A => config_a(),
            Version::B => config_b(),
        }
    }
    fn module(self) -> &'static str {
        match self {
            Version::A => "a.wasm",
            Version::B => "b.wasm",
        }
    }
}

/// What one answer to [`pod_review`] says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    version: Version,
    generation: u64,
    digest: String,
}

/// Which version answered: exactly A's or B's denial, with a generation
/// and a `gate-digest`; anything else is an error.
fn classify(answer: &Answer) -> Result<Seen> {
    let message = answer.message();
    let is_a = message == ANSWER_A;
    let is_b = message.starts_with(ANSWER_B_START)
        && message.ends_with(ANSWER_B_END)
        && !message.contains("missing required label");
    let version = match (answer.allowed(), is_a, is_b) {
        (false, true, false) => Version::A,
        (false, false, true) => Version::B,
        _ => bail!("the answer is neither exactly version A's nor B's:\n{answer}"),
    };
    let annotations = answer.audit_annotations();
    let generation = annotations
        .get("generation")
        .and_then(Json::as_str)
        .and_then(|g| g.parse().ok())
        .with_context(|| format!("no generation annotation:\n{answer}"))?;
    let digest = annotations
        .get("gate-digest")
        .and_then(Json::as_str)
        .with_context(|| format!("no gate-digest annotation:\n{answer}"))?
        .to_owned();
    Ok(Seen {
        version,
        generation,
        digest,
    })
}

/// `sha256:<hex>` of a file, computed by `sha256sum` (independently of the
/// host).
fn sha256_file(path: &Path) -> Result<String> {
    let path_s = path.to_str().context("non-UTF-8 path")?;
    let out = run_cli(
        Path::new("sha256sum"),
        &["--", path_s],
        None,
        Duration::from_secs(30),
    )?;
    ensure!(out.status.success(), "sha256sum {path_s}\n{out}");
    let hex = out.stdout.split_whitespace().next().unwrap_or("");
    ensure!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "sha256sum printed {:?}",
        out.stdout
    );
    Ok(format!("sha256:{hex}"))
}

/// Posts [`pod_review`] (fresh uid) and classifies the checked answer.
fn ask(server: &Server, proto: Proto, review: &Json, uid: &str) -> Result<(Answer, Seen)> {
    let answer = server.review_over(proto, "/validate", &with_uid(review, uid))?;
    let seen = classify(&answer)?;
    Ok((answer, seen))
}

/// Polls `GET /policies` until `done` holds (every [`POLL`], at most
/// `timeout`), returning that document.
fn wait_policies(
    server: &Server,
    what: &str,
    timeout: Duration,
    mut done: impl FnMut(&Json) -> bool,
) -> Result<Json> {
    let deadline = Instant::now() + timeout;
    loop {
        let policies = server.policies()?;
        if done(&policies) {
            return Ok(policies);
        }
        if Instant::now() >= deadline {
            bail!(
                "waited {timeout:?} for {what}; last GET /policies:\n{}",
                pretty(&policies)
            );
        }
        std::thread::sleep(POLL);
    }
}

fn pretty(value: &Json) -> String {
    tail(
        &serde_json::to_string_pretty(value).unwrap_or_default(),
        8 * 1024,
    )
}

fn generation(policies: &Json) -> u64 {
    policies["generation"].as_u64().unwrap_or(0)
}

/// `reload.<key>` as a number (0 when absent).
fn counter(policies: &Json, key: &str) -> u64 {
    policies["reload"][key].as_u64().unwrap_or(0)
}

fn policy_names(policies: &Json) -> Vec<String> {
    policies["policies"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A metric's value, or an error quoting the exposition.
fn metric(text: &str, series: &str) -> Result<f64> {
    metric_value(text, series)
        .with_context(|| format!("no sample {series} in GET /metrics:\n{}", tail(text, 4096)))
}

/// Writes `contents` into an existing file in place: open with truncate,
/// then write (what an editor without safe-write does).
fn write_in_place(path: &Path, contents: &[u8]) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("opening {} for writing", path.display()))?;
    file.write_all(contents)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A plain directory with `config.yaml`, `a.wasm` (required-labels) and
/// `b.wasm` (allowed-images), serving `config`.
fn plain_dir(paths: &Paths, dir: &Path, config: &str) -> Result<PathBuf> {
    fs::copy(&paths.required_labels, dir.join("a.wasm"))?;
    fs::copy(&paths.allowed_images, dir.join("b.wasm"))?;
    let path = dir.join("config.yaml");
    fs::write(&path, config)?;
    Ok(path)
}

// ---------------------------------------------------------------------------
// A Kubernetes ConfigMap-style volume
// ---------------------------------------------------------------------------

/// `vol/..vNNNN/{files}`, `vol/..data -> ..vNNNN`, and `vol/NAME ->
/// ..data/NAME` for every key, as the kubelet lays out a ConfigMap volume.
struct Volume {
    root: PathBuf,
    /// The number of the newest `..vNNNN`.
    serial: u32,
    a: Vec<u8>,
    b: Vec<u8>,
}

/// A file that is not a wasm module.
const JUNK: &[u8] = b"this is not a WebAssembly module\n\x00\x01\x02 junk junk junk\n";

impl Volume {
    fn create(root: &Path, config: &str, a: Vec<u8>, b: Vec<u8>) -> Result<Volume> {
        fs::create_dir_all(root)?;
        let mut volume = Volume {
            root: root.to_path_buf(),
            serial: 0,
            a,
            b,
        };
        let first = volume.new_data_dir(config, &[])?;
        symlink(&first, root.join("..data"))?;
        for name in ["config.yaml", "a.wasm", "b.wasm", "broken.wasm"] {
            // broken.wasm dangles until a broken attempt writes one.
            symlink(Path::new("..data").join(name), root.join(name))?;
        }
        Ok(volume)
    }

    fn config_path(&self) -> PathBuf {
        self.root.join("config.yaml")
    }

    /// `vol/..data/NAME`: a file in the current data directory.
    fn data_file(&self, name: &str) -> PathBuf {
        self.root.join("..data").join(name)
    }

    /// Writes a complete new `..vNNNN` and returns its name.
    fn new_data_dir(&mut self, config: &str, extra: &[(&str, &[u8])]) -> Result<String> {
        self.serial += 1;
        let name = format!("..v{:04}", self.serial);
        let dir = self.root.join(&name);
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::write(dir.join("a.wasm"), &self.a)?;
        fs::write(dir.join("b.wasm"), &self.b)?;
        for (file, bytes) in extra {
            fs::write(dir.join(file), bytes)?;
        }
        fs::write(dir.join("config.yaml"), config)?;
        Ok(name)
    }

    /// (i) The kubelet's atomic update: a new `..vNNNN`, `..data_tmp ->
    /// ..vNNNN`, `rename(..data_tmp, ..data)`, then the old directory goes.
    fn data_swap(&mut self, config: &str, extra: &[(&str, &[u8])]) -> Result<()> {
        let old = fs::read_link(self.root.join("..data")).context("reading ..data")?;
        let new = self.new_data_dir(config, extra)?;
        let tmp = self.root.join("..data_tmp");
        symlink(&new, &tmp)?;
        fs::rename(&tmp, self.root.join("..data")).context("renaming ..data_tmp to ..data")?;
        fs::remove_dir_all(self.root.join(&old))
            .with_context(|| format!("removing {}", old.display()))?;
        Ok(())
    }

    /// (ii) Truncate and write `..data/config.yaml` in place.
    fn write_in_place(&self, config: &str) -> Result<()> {
        write_in_place(&self.data_file("config.yaml"), config.as_bytes())
    }

    /// (iii) Write `..data/config.yaml.tmp`, rename it over `config.yaml`.
    fn write_rename(&self, config: &str) -> Result<()> {
        let tmp = self.data_file("config.yaml.tmp");
        fs::write(&tmp, config)?;
        fs::rename(&tmp, self.data_file("config.yaml"))?;
        Ok(())
    }

    /// Changes the config by `method`; `extra` files go next to it first.
    fn change(&mut self, method: Method, config: &str, extra: &[(&str, &[u8])]) -> Result<()> {
        if method != Method::DataSwap {
            for (file, bytes) in extra {
                fs::write(self.data_file(file), bytes)?;
            }
        }
        match method {
            Method::DataSwap => self.data_swap(config, extra),
            Method::InPlace => self.write_in_place(config),
            Method::Rename => self.write_rename(config),
        }
    }
}

/// The three ways files change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    DataSwap,
    InPlace,
    Rename,
}

const METHODS: [Method; 3] = [Method::DataSwap, Method::InPlace, Method::Rename];

// ---------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------

/// One request of the load generator.
#[derive(Debug)]
struct Sample {
    worker: usize,
    /// When the answer had been read completely.
    received: Instant,
    latency: Duration,
    outcome: Result<Seen, String>,
}

/// Stops the load generator when dropped (also on an early error).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Hard cap on how long the load runs, whatever the test does.
const LOAD_MAX: Duration = Duration::from_secs(90);

/// One client task: posts the review in a loop until `stop` (or
/// [`LOAD_MAX`]), recording every answer.
async fn load_worker(
    worker: usize,
    proto: Proto,
    client: reqwest::Client,
    url: String,
    review: Json,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
) {
    let started = Instant::now();
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) && started.elapsed() < LOAD_MAX {
        n += 1;
        let review = with_uid(&review, &format!("reload-{worker}-{n}"));
        let sent = Instant::now();
        let outcome = post_once(&client, &url, proto, &review).await;
        let received = Instant::now();
        samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Sample {
                worker,
                received,
                latency: received - sent,
                outcome,
            });
    }
}

async fn post_once(
    client: &reqwest::Client,
    url: &str,
    proto: Proto,
    review: &Json,
) -> Result<Seen, String> {
    let body = serde_json::to_vec(review).map_err(|e| e.to_string())?;
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("POST /validate ({proto:?}): {e:#}"))?;
    let status = response.status();
    let version = response.version();
    let headers = response.headers().clone();
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("reading the answer ({proto:?}): {e:#}"))?
        .to_vec();
    let reply = Reply {
        status,
        version,
        headers,
        body,
    };
    if version != proto.expected_version() {
        return Err(format!(
            "expected {:?}, got {version:?}",
            proto.expected_version()
        ));
    }
    let answer = check_answer(review, &reply).map_err(|e| format!("{e:#}"))?;
    classify(&answer).map_err(|e| format!("{e:#}"))
}

/// Nearest-rank percentile of sorted durations, in milliseconds.
fn percentile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

fn latency_line(label: &str, samples: &[&Sample]) -> String {
    let mut latencies: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    latencies.sort();
    format!(
        "{label}: {} requests, latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        percentile_ms(&latencies, 0.50),
        percentile_ms(&latencies, 0.90),
        percentile_ms(&latencies, 0.99),
        latencies
            .last()
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0),
    )
}

// ---------------------------------------------------------------------------
// 1. Swaps under load
// ---------------------------------------------------------------------------

const GOOD_SWAPS: usize = 51;
/// A broken attempt after every this many good swaps.
const BROKEN_EVERY: usize = 4;
const BASELINE: Duration = Duration::from_secs(3);
/// Pause after a reload shows before the next change. Changes made at once
/// after a reload are seen too (see [`a_change_right_after_a_reload_is_seen`]);
/// this short pause only keeps swaps from merging into one debounced burst.
const SETTLE: Duration = Duration::from_millis(20);

/// A broken config: `kind` 0 YAML that does not parse, 1 a module that is
/// not wasm, 2 settings the policy rejects (three variants).
fn broken_config(kind: usize, variant: usize) -> (String, &'static str) {
    match kind {
        0 => (
            format!(
                "{DEFAULTS}policies:\n  - name: gate\n    module: a.wasm\n    settings: {{ labels: {{ version-a: null }}\n"
            ),
            "YAML that does not parse",
        ),
        1 => (
            format!(
                "{DEFAULTS}policies:\n  - name: gate\n    module: broken.wasm\n    settings: {{ labels: {{ version-a: null }} }}\n"
            ),
            "a module that is not wasm",
        ),
        _ => match variant % 3 {
            0 => (
                format!(
                    "{DEFAULTS}policies:\n  - name: gate\n    module: a.wasm\n    settings: {{ labels: {{}} }}\n"
                ),
                "settings rejected (labels: {})",
            ),
            1 => (
                format!(
                    "{DEFAULTS}policies:\n  - name: gate\n    module: a.wasm\n    settings: {{ labels: {{ version-a: \"([\" }} }}\n"
                ),
                "settings rejected (bad regex)",
            ),
            _ => (
                format!(
                    "{DEFAULTS}policies:\n  - name: gate\n    module: b.wasm\n    settings: {{ allowed: [] }}\n"
                ),
                "settings rejected (allowed: [])",
            ),
        },
    }
}

struct LoadTest<'a> {
    server: &'a Server,
    volume: Volume,
    review: Json,
    samples: Arc<Mutex<Vec<Sample>>>,
    /// Samples before this index have been looked at by `wait_for_version`.
    scanned: usize,
    digests: BTreeMap<Version, String>,
    current: Version,
    /// (generation, version, digest) of every good swap, from `/policies`.
    swaps: Vec<(u64, Version, String)>,
    swap_times: Vec<Duration>,
    broken: usize,
    probes: u64,
}

impl LoadTest<'_> {
    /// Waits for the first load answer from a generation above `above`
    /// (received after `since`), which must be `target`'s; fails at once on
    /// a failed request. (An answer from an older generation may still
    /// arrive after the change: a request keeps the snapshot it started
    /// with.)
    fn wait_for_version(
        &mut self,
        target: Version,
        since: Instant,
        above: u64,
    ) -> Result<(Duration, u64)> {
        let deadline = since + RELOAD_TIMEOUT;
        loop {
            {
                let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
                for sample in &samples[self.scanned..] {
                    match &sample.outcome {
                        Err(e) => bail!("a request failed (worker {}): {e}", sample.worker),
                        Ok(seen) if seen.generation > above => {
                            ensure!(
                                seen.version == target && sample.received >= since,
                                "the first answer from a generation above {above} is {seen:?}, \
                                 expected version {target:?}"
                            );
                            return Ok((sample.received - since, seen.generation));
                        }
                        Ok(_) => {}
                    }
                }
                self.scanned = samples.len();
            }
            if Instant::now() >= deadline {
                let last = self
                    .samples
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .last()
                    .map(|s| format!("{:?} ago: {:?}", s.received.elapsed(), s.outcome));
                bail!(
                    "version {target:?} did not answer within {RELOAD_TIMEOUT:?} of the change \
                     (newest load answer: {last:?}; a change lost by the watcher? see SETTLE); \
                     GET /policies:\n{}",
                    pretty(&self.server.policies()?)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn good_swap(&mut self, i: usize) -> Result<()> {
        let target = self.current.other();
        let method = METHODS[i % METHODS.len()];
        let before = self.server.policies()?;
        let failed_before = counter(&before, "failed");
        self.volume
            .change(method, &target.config(), &[])
            .with_context(|| format!("good swap {i} to {target:?} by {method:?}"))?;
        let changed = Instant::now();
        let (took, answered_generation) = self
            .wait_for_version(target, changed, generation(&before))
            .with_context(|| format!("good swap {i} to {target:?} by {method:?}"))?;
        self.swap_times.push(took);
        // /policies agrees: the generation, the module and its digest, and a
        // good swap clears the error of an earlier broken attempt.
        let expected_digest = self.digests[&target].clone();
        let after = wait_policies(
            self.server,
            "the swap to show in /policies",
            RELOAD_TIMEOUT,
            |p| generation(p) >= answered_generation && p["reload"]["lastError"].is_null(),
        )
        .with_context(|| format!("good swap {i} to {target:?} by {method:?}"))?;
        let policy = &after["policies"][0];
        ensure!(
            generation(&after) == answered_generation
                && policy_names(&after) == ["gate"]
                && policy["digest"] == expected_digest.as_str()
                && policy["module"]
                    .as_str()
                    .is_some_and(|m| m.ends_with(target.module()))
                && policy["lastLoadError"].is_null(),
            "good swap {i} to {target:?} by {method:?}: expected generation {answered_generation}, \
             one policy gate with module {} and digest {expected_digest}; GET /policies:\n{}",
            target.module(),
            pretty(&after)
        );
        ensure!(
            counter(&after, "failed") == failed_before,
            "good swap {i} to {target:?} by {method:?}: a reload failed during it (failed {} -> {}); \
             the host read a half-written state? GET /policies:\n{}",
            failed_before,
            counter(&after, "failed"),
            pretty(&after)
        );
        self.swaps
            .push((answered_generation, target, expected_digest));
        self.current = target;
        Ok(())
    }

    fn broken_attempt(&mut self, j: usize) -> Result<()> {
        let kind = j % 3;
        let method = METHODS[(j + j / 3) % METHODS.len()];
        let (config, what) = broken_config(kind, j / 3);
        let before = self.server.policies()?;
        let gen_before = generation(&before);
        let failed_before = counter(&before, "failed");
        let extra: &[(&str, &[u8])] = if kind == 1 {
            &[("broken.wasm", JUNK)]
        } else {
            &[]
        };
        self.volume
            .change(method, &config, extra)
            .with_context(|| format!("broken attempt {j} ({what}) by {method:?}"))?;
        let context = || format!("broken attempt {j} ({what}) by {method:?}");
        let after = wait_policies(
            self.server,
            "reload.failed to increase and reload.lastError to be set (a change lost by the watcher? see SETTLE)",
            RELOAD_TIMEOUT,
            |p| counter(p, "failed") > failed_before && !p["reload"]["lastError"].is_null(),
        )
        .with_context(context)?;
        let error = &after["reload"]["lastError"];
        ensure!(
            generation(&after) == gen_before
                && error["message"].as_str().is_some_and(|m| !m.is_empty())
                && error["at"].is_string(),
            "{}: expected generation {gen_before} to keep serving and a lastError with at and message; GET /policies:\n{}",
            context(),
            pretty(&after)
        );
        // A module or settings failure is the policy's; a YAML error is not.
        let gate_error = &after["policies"][0]["lastLoadError"];
        if kind == 0 {
            ensure!(
                error["policy"].is_null(),
                "{}: lastError.policy should be null for a config error:\n{}",
                context(),
                pretty(&after)
            );
        } else {
            ensure!(
                error["policy"] == "gate" && gate_error.as_str().is_some_and(|m| !m.is_empty()),
                "{}: lastError.policy should be \"gate\" and policies[gate].lastLoadError set:\n{}",
                context(),
                pretty(&after)
            );
        }
        // The previous version still answers, with the same generation.
        for (k, proto) in Proto::ALL.into_iter().enumerate() {
            self.probes += 1;
            let (answer, seen) = ask(self.server, proto, &self.review, &format!("broken-{j}-{k}"))
                .with_context(context)?;
            ensure!(
                seen.version == self.current
                    && seen.generation == gen_before
                    && seen.digest == self.digests[&self.current],
                "{}: expected version {:?} at generation {gen_before} to keep answering, got {seen:?}:\n{answer}",
                context(),
                self.current
            );
        }
        let metrics = self.server.metrics()?;
        ensure!(
            metric(&metrics, "portcullis_last_reload_failed")? == 1.0
                && metric(&metrics, "portcullis_policy_set_generation")? == gen_before as f64,
            "{}: expected portcullis_last_reload_failed 1 and generation {gen_before}:\n{}",
            context(),
            tail(&metrics, 4096)
        );
        self.broken += 1;
        Ok(())
    }
}

#[test]
fn swaps_under_load() {
    let _serial = serial();
    let paths = paths().unwrap_or_else(|e| panic!("{e:#}"));
    let a = fs::read(&paths.required_labels).unwrap_or_else(|e| panic!("reading a: {e}"));
    let b = fs::read(&paths.allowed_images).unwrap_or_else(|e| panic!("reading b: {e}"));
    let mut volume = None;
    // Admission decisions are logged at info: one line per request would
    // bury the reload log (and cost CPU).
    // A short debounce: this test makes many swaps; the default's
    // protection against paused writers is tested in hostile_files.rs.
    let quiet = [
        "--log-level",
        "info,portcullis::server=warn",
        "--reload-debounce-ms",
        "200",
    ];
    let server = Server::start_with(&quiet, |_, dir| {
        let v = Volume::create(&dir.join("vol"), &config_a(), a.clone(), b.clone())?;
        let config = v.config_path();
        volume = Some(v);
        Ok(config)
    })
    .unwrap_or_else(|e| panic!("starting the server: {e:#}"));
    let volume = volume.unwrap_or_else(|| panic!("no volume"));
    server.test(|server| swaps_under_load_body(server, &paths, volume));
}

fn swaps_under_load_body(server: &Server, paths: &Paths, volume: Volume) -> Result<()> {
    let review = pod_review()?;
    let digests = BTreeMap::from([
        (Version::A, sha256_file(&paths.required_labels)?),
        (Version::B, sha256_file(&paths.allowed_images)?),
    ]);
    let start = server.policies()?;
    ensure!(
        generation(&start) == 1 && start["policies"][0]["digest"] == digests[&Version::A].as_str(),
        "expected generation 1 serving a.wasm ({}):\n{}",
        digests[&Version::A],
        pretty(&start)
    );

    // Four clients: two over HTTP/2 (one shared connection), two over
    // HTTP/1.1.
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_guard = StopOnDrop(stop.clone());
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let load_started = Instant::now();
    let workers: Vec<_> = [Proto::H2, Proto::H1, Proto::H2, Proto::H1]
        .into_iter()
        .enumerate()
        .map(|(worker, proto)| {
            spawn(load_worker(
                worker,
                proto,
                server.client(proto).clone(),
                server.url("/validate"),
                review.clone(),
                stop.clone(),
                samples.clone(),
            ))
        })
        .collect();

    // Phase 1: steady load, no swaps.
    std::thread::sleep(BASELINE);
    let phase2_started = Instant::now();

    // Phase 2: good swaps alternating A <-> B, broken attempts between.
    let mut test = LoadTest {
        server,
        volume,
        review: review.clone(),
        samples: samples.clone(),
        scanned: 0,
        digests: digests.clone(),
        current: Version::A,
        swaps: Vec::new(),
        swap_times: Vec::new(),
        broken: 0,
        probes: 0,
    };
    // On an early failure the summary below is still printed, then the
    // error is returned.
    let phase2 = (|| -> Result<()> {
        let mut broken_index = 0;
        for i in 0..GOOD_SWAPS {
            if i > 0 && i % BROKEN_EVERY == 0 {
                test.broken_attempt(broken_index)?;
                broken_index += 1;
                std::thread::sleep(SETTLE);
            }
            test.good_swap(i)?;
            std::thread::sleep(SETTLE);
        }
        Ok(())
    })();
    let phase2_ended = Instant::now();
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        portcullis_e2e::block_on(worker).map_err(|e| anyhow!("a load task panicked: {e}"))?;
    }
    let total_elapsed = load_started.elapsed();

    // Every answer: exactly one version's, and a generation is one version
    // with one digest, and never goes back for one client.
    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(PoisonError::into_inner));
    let failures: Vec<&Sample> = samples.iter().filter(|s| s.outcome.is_err()).collect();
    let mut by_generation: BTreeMap<u64, (Version, String)> = BTreeMap::new();
    let mut conflicts = Vec::new();
    let mut last_generation = [0u64; 4];
    let mut went_back = Vec::new();
    for sample in &samples {
        let Ok(seen) = &sample.outcome else { continue };
        let entry = by_generation
            .entry(seen.generation)
            .or_insert_with(|| (seen.version, seen.digest.clone()));
        if *entry != (seen.version, seen.digest.clone()) && conflicts.len() < 5 {
            conflicts.push(format!(
                "generation {} answered as {:?}/{} and as {:?}/{}",
                seen.generation, entry.0, entry.1, seen.version, seen.digest
            ));
        }
        if seen.generation < last_generation[sample.worker] && went_back.len() < 5 {
            went_back.push(format!(
                "worker {} saw generation {} after {}",
                sample.worker, seen.generation, last_generation[sample.worker]
            ));
        }
        last_generation[sample.worker] = last_generation[sample.worker].max(seen.generation);
    }
    let swap_ms: Vec<f64> = {
        let mut t: Vec<Duration> = test.swap_times.clone();
        t.sort();
        t.iter().map(|d| d.as_secs_f64() * 1000.0).collect()
    };
    let baseline: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.received < phase2_started)
        .collect();
    let during: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.received >= phase2_started && s.received <= phase2_ended)
        .collect();
    let final_policies = server.policies()?;
    let summary = format!(
        "reload under load: {} good swaps (methods: ..data swap, in-place write, rename), {} broken attempts, \
         {} probe requests\n\
         requests: {} in total over {:.1} s, {} during swaps ({:.1} s), {} failed\n\
         file change -> first answer of the new version: median {:.0} ms, max {:.0} ms, \
         first (compiles b.wasm) {:.0} ms, last {:.0} ms\n\
         {}\n{}\n\
         generations answered: {} ({}..={}); /policies reload: {}",
        test.swap_times.len(),
        test.broken,
        test.probes,
        samples.len(),
        total_elapsed.as_secs_f64(),
        during.len(),
        (phase2_ended - phase2_started).as_secs_f64(),
        failures.len(),
        swap_ms.get(swap_ms.len() / 2).copied().unwrap_or(f64::NAN),
        swap_ms.last().copied().unwrap_or(f64::NAN),
        test.swap_times
            .first()
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0),
        test.swap_times
            .last()
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0),
        latency_line("baseline (no swaps)", &baseline),
        latency_line("during swaps       ", &during),
        by_generation.len(),
        by_generation.keys().next().copied().unwrap_or(0),
        by_generation.keys().last().copied().unwrap_or(0),
        final_policies["reload"],
    );
    println!("{summary}");
    eprintln!("{summary}");
    phase2?;

    ensure!(
        failures.is_empty(),
        "{} of {} requests failed; the first ones:\n{}",
        failures.len(),
        samples.len(),
        failures
            .iter()
            .take(5)
            .map(|s| format!(
                "- worker {}: {}",
                s.worker,
                s.outcome.as_ref().err().map_or("", |e| e.as_str())
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );
    ensure!(
        conflicts.is_empty(),
        "a generation answered as two versions or digests:\n{}",
        conflicts.join("\n")
    );
    ensure!(
        went_back.is_empty(),
        "a client saw an older generation after a newer one:\n{}",
        went_back.join("\n")
    );
    for (generation, (version, digest)) in &by_generation {
        ensure!(
            *digest == digests[version],
            "generation {generation} ({version:?}) carries digest {digest}, but the module's sha256 is {}",
            digests[version]
        );
    }
    for (generation, version, digest) in &test.swaps {
        if let Some(seen) = by_generation.get(generation) {
            ensure!(
                seen == &(*version, digest.clone()),
                "generation {generation}: /policies said {version:?}/{digest}, answers said {seen:?}"
            );
        }
    }
    ensure!(
        test.swap_times.len() >= 50 && test.broken >= 10,
        "only {} good swaps and {} broken attempts",
        test.swap_times.len(),
        test.broken
    );
    ensure!(
        baseline.len() >= 100,
        "only {} requests in the {BASELINE:?} baseline",
        baseline.len()
    );
    ensure!(
        during.len() > test.swap_times.len(),
        "only {} requests during {} swaps: the load did not overlap the swaps",
        during.len(),
        test.swap_times.len()
    );
    let last = test.swap_times.last().copied().unwrap_or_default();
    ensure!(
        last <= Duration::from_secs(2),
        "after the last good swap the new version answered only after {last:?}"
    );
    // One generation per good swap, nothing in between.
    let expected_generation = 1 + test.swap_times.len() as u64;
    ensure!(
        generation(&final_policies) == expected_generation
            && counter(&final_policies, "failed") >= test.broken as u64,
        "expected generation {expected_generation} after {} good swaps and at least {} failed reloads:\n{}",
        test.swap_times.len(),
        test.broken,
        pretty(&final_policies)
    );
    let metrics = server.metrics()?;
    ensure!(
        metric(&metrics, "portcullis_last_reload_failed")? == 0.0
            && metric(&metrics, "portcullis_policy_set_generation")? == expected_generation as f64
            && metric(&metrics, "portcullis_reloads_total{result=\"failure\"}")?
                == counter(&final_policies, "failed") as f64,
        "metrics after the last good swap:\n{}",
        tail(&metrics, 4096)
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. Unchanged modules are not recompiled
// ---------------------------------------------------------------------------

#[test]
fn unchanged_modules_are_not_recompiled() {
    let _serial = serial();
    let server = Server::start_with(&["--reload-debounce-ms", "200"], |paths, dir| {
        plain_dir(paths, dir, &config_a())
    })
    .unwrap_or_else(|e| panic!("starting the server: {e:#}"));
    server.test(|server| {
        let review = pod_review()?;
        let paths = paths()?;
        let digest_a = sha256_file(&paths.required_labels)?;
        let digest_b = sha256_file(&paths.allowed_images)?;
        let config = server.config.clone();
        let p0 = server.policies()?;
        let (g0, c0, r0, u0) = (
            generation(&p0),
            counter(&p0, "modulesCompiled"),
            counter(&p0, "modulesReused"),
            counter(&p0, "unchanged"),
        );
        ensure!(
            g0 >= 1 && c0 >= 1,
            "start-up should have compiled a.wasm:\n{}",
            pretty(&p0)
        );

        // Settings only: a new generation, the module reused.
        let settings_only = format!(
            "{DEFAULTS}policies:\n  - name: gate\n    module: a.wasm\n    settings: {{ labels: {{ version-a: null, team: null }} }}\n"
        );
        write_in_place(&config, settings_only.as_bytes())?;
        let p1 = wait_policies(server, "generation g0+1", RELOAD_TIMEOUT, |p| {
            generation(p) > g0
        })?;
        ensure!(
            generation(&p1) == g0 + 1
                && counter(&p1, "modulesCompiled") == c0
                && counter(&p1, "modulesReused") > r0
                && p1["policies"][0]["digest"] == digest_a.as_str(),
            "a settings-only change must not recompile (modulesCompiled {c0}, modulesReused > {r0}):\n{}",
            pretty(&p1)
        );
        let answer = server.review("/validate", &with_uid(&review, "unchanged-1"))?;
        ensure!(
            answer.message().starts_with("gate: missing required labels: ")
                && answer.message().contains("team")
                && answer.message().contains("version-a")
                && answer.audit_annotations().get("generation") == Some(&json!((g0 + 1).to_string())),
            "the new settings should answer at generation {}:\n{answer}",
            g0 + 1
        );

        // A -> B compiles b.wasm once; B -> A takes a.wasm from the cache.
        write_in_place(&config, config_b().as_bytes())?;
        let p2 = wait_policies(server, "generation g0+2 (B)", RELOAD_TIMEOUT, |p| {
            generation(p) > g0 + 1
        })?;
        ensure!(
            generation(&p2) == g0 + 2
                && counter(&p2, "modulesCompiled") == c0 + 1
                && p2["policies"][0]["digest"] == digest_b.as_str(),
            "the first load of b.wasm compiles it once:\n{}",
            pretty(&p2)
        );
        let (_, seen) = ask(server, Proto::H2, &review, "unchanged-2")?;
        ensure!(
            seen.version == Version::B && seen.generation == g0 + 2,
            "{seen:?}"
        );
        let r2 = counter(&p2, "modulesReused");
        write_in_place(&config, config_a().as_bytes())?;
        let p3 = wait_policies(server, "generation g0+3 (A again)", RELOAD_TIMEOUT, |p| {
            generation(p) > g0 + 2
        })?;
        ensure!(
            generation(&p3) == g0 + 3
                && counter(&p3, "modulesCompiled") == c0 + 1
                && counter(&p3, "modulesReused") > r2
                && p3["policies"][0]["digest"] == digest_a.as_str(),
            "swapping back to a.wasm must take it from the cache, not compile it:\n{}",
            pretty(&p3)
        );
        let (_, seen) = ask(server, Proto::H1, &review, "unchanged-3")?;
        ensure!(
            seen.version == Version::A && seen.generation == g0 + 3 && seen.digest == digest_a,
            "{seen:?}"
        );

        // Identical bytes again: counted as unchanged, no new generation.
        let (s3, f3) = (counter(&p3, "succeeded"), counter(&p3, "failed"));
        let attempt3 = p3["reload"]["lastAttempt"].clone();
        write_in_place(&config, config_a().as_bytes())?;
        let p4 = wait_policies(server, "reload.unchanged to increase", RELOAD_TIMEOUT, |p| {
            counter(p, "unchanged") > u0
        })?;
        ensure!(
            generation(&p4) == g0 + 3
                && counter(&p4, "unchanged") == u0 + 1
                && counter(&p4, "succeeded") == s3
                && counter(&p4, "failed") == f3
                && counter(&p4, "modulesCompiled") == c0 + 1
                && p4["reload"]["lastAttempt"] != attempt3
                && p4["reload"]["lastError"].is_null(),
            "rewriting identical bytes must count one unchanged reload and keep generation {}:\n{}",
            g0 + 3,
            pretty(&p4)
        );
        let (_, seen) = ask(server, Proto::H2, &review, "unchanged-4")?;
        ensure!(
            seen.version == Version::A && seen.generation == g0 + 3,
            "{seen:?}"
        );

        let metrics = server.metrics()?;
        let expectations = [
            (
                "portcullis_module_compilations_total",
                counter(&p4, "modulesCompiled"),
            ),
            (
                "portcullis_reloads_total{result=\"unchanged\"}",
                counter(&p4, "unchanged"),
            ),
            (
                "portcullis_reloads_total{result=\"success\"}",
                counter(&p4, "succeeded"),
            ),
            ("portcullis_policy_set_generation", generation(&p4)),
            ("portcullis_last_reload_failed", 0),
        ];
        for (series, expected) in expectations {
            ensure!(
                metric(&metrics, series)? == expected as f64,
                "{series} should be {expected} (as /policies says):\n{}\n/policies:\n{}",
                tail(&metrics, 4096),
                pretty(&p4)
            );
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------
// 3 and 4 share one server.
// ---------------------------------------------------------------------------

fn shared_server() -> &'static Server {
    static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
    let server = SERVER.get_or_init(|| {
        // A shorter debounce than the default, to exercise the flag.
        Server::start_with(&["--reload-debounce-ms", "100"], |paths, dir| {
            plain_dir(paths, dir, &config_a())
        })
        .map_err(|e| format!("{e:?}"))
    });
    match server {
        Ok(server) => server,
        Err(e) => panic!("could not start the server:\n{e}"),
    }
}

#[test]
fn policies_can_be_added_and_removed() {
    let _serial = serial();
    shared_server().test(|server| {
        let review = pod_review()?;
        let paths = paths()?;
        let digest_a = sha256_file(&paths.required_labels)?;
        let digest_b = sha256_file(&paths.allowed_images)?;
        // Start from version A alone (the other test may have left any
        // reload count behind, but not another config).
        let p0 = server.policies()?;
        ensure!(
            policy_names(&p0) == ["gate"],
            "expected only gate:\n{}",
            pretty(&p0)
        );
        let g0 = generation(&p0);

        let two = format!(
            "{}  - name: images\n    module: b.wasm\n    settings: {{ allowed: [\"version-b.example/\"] }}\n",
            config_a()
        );
        fs::write(&server.config, two)?;
        let p1 = wait_policies(server, "a second policy", RELOAD_TIMEOUT, |p| {
            generation(p) > g0
        })?;
        ensure!(
            generation(&p1) == g0 + 1
                && policy_names(&p1) == ["gate", "images"]
                && p1["policies"][1]["digest"] == digest_b.as_str(),
            "expected gate and images at generation {}:\n{}",
            g0 + 1,
            pretty(&p1)
        );
        let answer = server.review("/validate", &with_uid(&review, "add-1"))?;
        let message = answer.message();
        let annotations = answer.audit_annotations();
        ensure!(
            !answer.allowed()
                && message.starts_with(&format!("{ANSWER_A}; images: container \"app\" uses image"))
                && message.ends_with(ANSWER_B_END)
                && annotations.get("gate-digest") == Some(&json!(digest_a))
                && annotations.get("images-digest") == Some(&json!(digest_b))
                && annotations.get("generation") == Some(&json!((g0 + 1).to_string())),
            "both policies should deny, with both digests, at generation {}:\n{answer}",
            g0 + 1
        );

        fs::write(&server.config, config_a())?;
        let p2 = wait_policies(server, "the second policy to go", RELOAD_TIMEOUT, |p| {
            generation(p) > g0 + 1
        })?;
        ensure!(
            generation(&p2) == g0 + 2 && policy_names(&p2) == ["gate"],
            "expected only gate at generation {}:\n{}",
            g0 + 2,
            pretty(&p2)
        );
        let answer = server.review_over(Proto::H1, "/validate", &with_uid(&review, "add-2"))?;
        ensure!(
            answer.message() == ANSWER_A
                && !answer.audit_annotations().contains_key("images-digest")
                && answer.audit_annotations().get("generation")
                    == Some(&json!((g0 + 2).to_string())),
            "only gate should answer now:\n{answer}"
        );
        Ok(())
    });
}

#[test]
fn sighup_reloads() {
    let _serial = serial();
    shared_server().test(|server| {
        let p0 = server.policies()?;
        let m0 = server.metrics()?;
        let attempt0 = p0["reload"]["lastAttempt"].clone();
        ensure!(
            attempt0.is_string(),
            "start-up is a reload attempt:\n{}",
            pretty(&p0)
        );
        let unchanged0 = metric(&m0, "portcullis_reloads_total{result=\"unchanged\"}").unwrap_or(0.0);
        server.signal_hup()?;
        let p1 = wait_policies(server, "reload.lastAttempt to change", RELOAD_TIMEOUT, |p| {
            p["reload"]["lastAttempt"] != attempt0
        })?;
        ensure!(
            counter(&p1, "unchanged") == counter(&p0, "unchanged") + 1
                && counter(&p1, "succeeded") == counter(&p0, "succeeded")
                && counter(&p1, "failed") == counter(&p0, "failed")
                && generation(&p1) == generation(&p0),
            "SIGHUP without a file change: one unchanged reload, same generation\nbefore:\n{}\nafter:\n{}",
            pretty(&p0),
            pretty(&p1)
        );
        let m1 = server.metrics()?;
        ensure!(
            metric(&m1, "portcullis_reloads_total{result=\"unchanged\"}")? == unchanged0 + 1.0,
            "portcullis_reloads_total{{result=\"unchanged\"}} should be {}:\n{}",
            unchanged0 + 1.0,
            tail(&m1, 4096)
        );
        ensure!(server.is_running(), "the server died on SIGHUP\n{}", server.logs());
        let answer = server.review("/validate", &with_uid(&pod_review()?, "hup-1"))?;
        ensure!(
            answer.message() == ANSWER_A,
            "still version A after SIGHUP:\n{answer}"
        );
        Ok(())
    });
}

// ---------------------------------------------------------------------------
// 5. Start-up
// ---------------------------------------------------------------------------

/// A config whose one policy names a module file that does not exist.
fn missing_module_config() -> String {
    format!(
        "{DEFAULTS}policies:\n  - name: gate\n    module: not-there.wasm\n    settings: {{ labels: {{ version-a: null }} }}\n"
    )
}

#[test]
fn startup_uses_the_reload_path() {
    let _serial = serial();
    let paths = paths().unwrap_or_else(|e| panic!("{e:#}"));

    // Without --allow-empty: exit 2 naming the policy and the path.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config =
        plain_dir(&paths, dir.path(), &missing_module_config()).unwrap_or_else(|e| panic!("{e:#}"));
    let out = serve_expecting_exit(&paths, dir.path(), &config, &[], Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        out.code(),
        Some(2),
        "serve with a missing module: expected exit 2\n{out}"
    );
    assert!(
        out.stderr.contains("gate") && out.stderr.contains("not-there.wasm"),
        "stderr should name the policy (gate) and the path (not-there.wasm)\n{out}"
    );

    // With --allow-empty: serves, not ready, allows; a good config loads.
    let server = Server::start_alive(&["--allow-empty"], |paths, dir| {
        plain_dir(paths, dir, &missing_module_config())
    })
    .unwrap_or_else(|e| panic!("starting the server with --allow-empty: {e:#}"));
    server.test(|server| {
        let review = pod_review()?;
        let ready = server.get("/readyz")?;
        ensure!(
            ready.status == StatusCode::SERVICE_UNAVAILABLE,
            "/readyz with no policies loaded: expected 503, got\n{ready}"
        );
        let p0 = server.policies()?;
        ensure!(
            generation(&p0) == 0
                && policy_names(&p0).is_empty()
                && p0["reload"]["lastError"]["policy"] == "gate"
                && p0["reload"]["lastError"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("not-there.wasm")),
            "expected no policies and the start-up error in /policies:\n{}",
            pretty(&p0)
        );
        // Nothing loaded must never mean "allow everything": every
        // admission path answers an error, so failurePolicy applies.
        for path in ["/validate", "/mutate", "/validate/gate"] {
            let body = serde_json::to_vec(&with_uid(&review, "empty-1"))?;
            let reply = server.post(Proto::H2, path, Some("application/json"), body)?;
            ensure!(
                reply.status == StatusCode::SERVICE_UNAVAILABLE
                    && reply.text().contains("no policy set is loaded"),
                "POST {path} with no policy set loaded: expected 503, got\n{reply}"
            );
        }

        fs::write(&server.config, config_a())?;
        let deadline = Instant::now() + RELOAD_TIMEOUT;
        loop {
            let ready = server.get("/readyz")?;
            if ready.status == StatusCode::OK {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "/readyz still {} {RELOAD_TIMEOUT:?} after a good config was written; GET /policies:\n{}",
                ready.status,
                pretty(&server.policies()?)
            );
            std::thread::sleep(POLL);
        }
        let (answer, seen) = ask(server, Proto::H2, &review, "empty-2")?;
        ensure!(
            seen.version == Version::A && seen.generation >= 1,
            "the good config should answer:\n{answer}"
        );
        let p1 = server.policies()?;
        ensure!(
            policy_names(&p1) == ["gate"] && p1["reload"]["lastError"].is_null(),
            "{}",
            pretty(&p1)
        );
        Ok(())
    });
}

// ---------------------------------------------------------------------------
// A change right after a reload (a race the host once lost)
// ---------------------------------------------------------------------------

/// A change made at once after a reload is still seen. Alternates a
/// `..data` swap with an in-place write into the directory that swap just
/// created, each made as soon as `/policies` shows the previous one.
///
/// The host once lost some of these changes: after a reload it unwatched
/// and re-watched every directory (an event in between was dropped), and
/// the directory a new `..data` points to was watched only once the reload
/// had swapped. It now updates its watches incrementally and, after each
/// reload, compares the files with what the reload read.
#[test]
fn a_change_right_after_a_reload_is_seen() {
    const ROUNDS: usize = 150;
    let _serial = serial();
    let paths = paths().unwrap_or_else(|e| panic!("{e:#}"));
    let a = fs::read(&paths.required_labels).unwrap_or_else(|e| panic!("reading a: {e}"));
    let b = fs::read(&paths.allowed_images).unwrap_or_else(|e| panic!("reading b: {e}"));
    let mut volume = None;
    let args = [
        "--reload-debounce-ms",
        "20",
        "--log-level",
        "info,portcullis::server=warn",
    ];
    let server = Server::start_with(&args, |_, dir| {
        let v = Volume::create(&dir.join("vol"), &config_a(), a.clone(), b.clone())?;
        let config = v.config_path();
        volume = Some(v);
        Ok(config)
    })
    .unwrap_or_else(|e| panic!("starting the server: {e:#}"));
    let mut volume = volume.unwrap_or_else(|| panic!("no volume"));
    server.test(|server| {
        let mut current = Version::A;
        let mut seen_generation = generation(&server.policies()?);
        for round in 0..ROUNDS {
            let target = current.other();
            let method = if round % 2 == 0 {
                Method::DataSwap
            } else {
                Method::InPlace
            };
            volume.change(method, &target.config(), &[])?;
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let policies = server.policies()?;
                if generation(&policies) > seen_generation {
                    seen_generation = generation(&policies);
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "round {round}: the change to {target:?} by {method:?} was not seen within 5 s \
                     (made right after generation {seen_generation} showed); GET /policies:\n{}",
                    pretty(&policies)
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            current = target;
        }
        Ok(())
    });
}
