//! The sandbox through the real server: policies that loop, exhaust their
//! memory, overflow their stack, panic, send huge or invalid output, or
//! try to rename the object, each fail only their own decision, as their
//! `onError` says, within their deadline, without slowing a well-behaved
//! policy, leaking memory, or taking the server down. And a policy can read
//! no clock and gets the same "random" bytes every call.
//!
//! One server (config below) runs the `misbehave` test policy
//! (`tests/policies/misbehave`) once per behaviour. The tests take a
//! lock so that timing figures are not disturbed by each other; run with
//! `--nocapture` to see the figures.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use portcullis_e2e::{
    Answer, CLI_TIMEOUT, Json, Paths, Proto, Server, StatusCode, block_on, error_chain, fixture,
    https_client, json, paths, serve_expecting_exit, spawn, with_uid, yaml_str,
};

/// Every policy's deadline, except `slow`'s.
const DEADLINE_MS: u64 = 100;
/// `slow`'s deadline.
const SLOW_DEADLINE_MS: u64 = 200;
/// How late past its deadline a decision may come (median of 5 calls).
/// Generous on purpose: what this proves is that the deadline stops a
/// policy (without one, a loop runs until the client gives up), not how
/// tightly, which two loaded cores cannot promise a test; `make bench`
/// measures the tails.
const LATENESS: Duration = Duration::from_millis(250);
/// The memory limit in the config, in bytes.
const MEMORY_LIMIT: u64 = 32 << 20;
/// What the host keeps of a policy's message.
const MAX_TEXT: usize = 4 * 1024;
const TRUNCATED: &str = "... (truncated)";
const PANIC_TEXT: &str = "misbehave: deliberate panic";
/// The annotation that overrides `slow`'s iteration count per request.
const ITERATIONS_ANNOTATION: &str = "misbehave.portcullis.dev/iterations";

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

/// `misbehave.wasm`, next to the other policy modules.
fn misbehave_module(paths: &Paths) -> Result<PathBuf> {
    let module = paths.allowed_images.with_file_name("misbehave.wasm");
    ensure!(
        module.is_file(),
        "missing {}: run `make build` first (or `cargo build --target wasm32-wasip1 --profile policy -p misbehave`)",
        module.display()
    );
    Ok(module)
}

fn write_sandbox_config(paths: &Paths, dir: &Path) -> Result<PathBuf> {
    let module = yaml_str(
        misbehave_module(paths)?
            .to_str()
            .context("module path is not UTF-8")?,
    );
    let images = yaml_str(
        paths
            .allowed_images
            .to_str()
            .context("module path is not UTF-8")?,
    );
    let limits = format!("timeoutMs: {DEADLINE_MS}, memoryLimit: 32Mi");
    let mut yaml = String::from(
        "# portcullis-e2e: sandbox\n\
         defaults: { timeoutMs: 1000, memoryLimit: 64Mi, onError: allow, mode: enforce }\n\
         policies:\n",
    );
    let mut policy = |name: &str, module: &str, extra: &str, settings: &str| {
        yaml.push_str(&format!(
            "  - {{ name: {name}, module: {module}, {extra}, settings: {settings} }}\n"
        ));
    };
    for (name, settings) in [
        ("loop", "{ behaviour: loop }"),
        ("memory-bomb", "{ behaviour: memory-bomb }"),
        ("recursion", "{ behaviour: recursion }"),
        (
            "recursion-large",
            "{ behaviour: recursion, largeFrames: true }",
        ),
        ("panic", "{ behaviour: panic }"),
        ("huge-message", "{ behaviour: huge-message }"),
        ("invalid-json", "{ behaviour: invalid-json }"),
        ("rename-name", "{ behaviour: rename, field: name }"),
        (
            "rename-namespace",
            "{ behaviour: rename, field: namespace }",
        ),
        ("rename-uid", "{ behaviour: rename, field: uid }"),
        ("allow", "{ behaviour: allow }"),
        ("clock", "{ behaviour: clock }"),
        ("random", "{ behaviour: random }"),
        ("stateful", "{ behaviour: stateful }"),
    ] {
        policy(name, &module, &format!("{limits}, onError: deny"), settings);
    }
    policy(
        "slow",
        &module,
        &format!("timeoutMs: {SLOW_DEADLINE_MS}, memoryLimit: 32Mi, onError: deny"),
        "{ behaviour: slow, iterations: 1000 }",
    );
    policy(
        "panic-allow",
        &module,
        &format!("{limits}, onError: allow"),
        "{ behaviour: panic }",
    );
    policy(
        "panic-fail",
        &module,
        &format!("{limits}, onError: fail"),
        "{ behaviour: panic }",
    );
    for mode in ["warn", "audit"] {
        policy(
            &format!("huge-{mode}"),
            &module,
            &format!("{limits}, onError: deny, mode: {mode}"),
            "{ behaviour: huge-message }",
        );
        policy(
            &format!("images-{mode}"),
            &images,
            &format!("{limits}, onError: deny, mode: {mode}"),
            r#"{ allowed: ["registry.example/"] }"#,
        );
    }
    let path = dir.join("sandbox.yaml");
    std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
    match SERVER.get_or_init(|| {
        Server::start_with(&["--breaker-failures", "0"], write_sandbox_config)
            .map_err(|e| format!("{e:?}"))
    }) {
        Ok(s) => s,
        Err(e) => panic!("could not start the server:\n{e}"),
    }
}

/// One test at a time: the timing figures must not measure each other.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs a test body against the server, alone.
fn run(body: impl FnOnce(&Server) -> Result<()>) {
    let _serial = serial();
    server().test(body);
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

static UIDS: AtomicU64 = AtomicU64::new(1);

/// The pod review (`pod-allowed.json`: pod `shop/web`) with a fresh uid.
fn pod_review() -> Result<Json> {
    static POD: OnceLock<Json> = OnceLock::new();
    let pod = match POD.get() {
        Some(pod) => pod,
        None => {
            let pod = fixture("pod-allowed.json")?;
            POD.get_or_init(|| pod)
        }
    };
    let n = UIDS.fetch_add(1, Ordering::Relaxed);
    Ok(with_uid(pod, &format!("5a4db0c5-0000-4000-8000-{n:012}")))
}

/// Posts a fresh pod review to `path` and checks the answer's form.
fn review(s: &Server, path: &str) -> Result<Answer> {
    s.review(path, &pod_review()?)
}

/// The well-behaved control answers: the server still serves.
fn ensure_still_serving(s: &Server, after: &str) -> Result<()> {
    let a = review(s, "/validate/allow").with_context(|| format!("the call after {after}"))?;
    ensure!(
        a.allowed(),
        "after {after}, the allow policy did not allow:\n{a}"
    );
    ensure!(s.is_running(), "the server exited after {after}");
    Ok(())
}

/// `<policy>: policy failed: <error>` with code 500 (onError: deny).
fn ensure_policy_error(a: &Answer, policy: &str, error: &str) -> Result<()> {
    ensure!(
        !a.allowed(),
        "{policy}: a policy error with onError: deny was allowed:\n{a}"
    );
    ensure!(
        a.code() == Some(500),
        "{policy}: expected status.code 500 for a policy error, got {:?}\n{a}",
        a.code()
    );
    let prefix = format!("{policy}: policy failed: ");
    ensure!(
        a.message().starts_with(&prefix),
        "{policy}: message does not start with {prefix:?}:\n{a}"
    );
    ensure!(
        a.message().contains(error),
        "{policy}: message does not contain {error:?}:\n{a}"
    );
    ensure!(
        a.patch()?.is_none(),
        "{policy}: a failed policy produced a patch:\n{a}"
    );
    Ok(())
}

/// A response timed on the client, from sending to the last body byte.
struct Timed {
    /// The review's uid.
    uid: String,
    elapsed: Duration,
    status: StatusCode,
    body: Vec<u8>,
}

impl Timed {
    fn json(&self) -> Result<Json> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "HTTP {}: body is not JSON: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// `(allowed, message)` of a 200 answer.
    fn decision(&self) -> Result<(bool, String)> {
        ensure!(
            self.status == StatusCode::OK,
            "HTTP {}: {}",
            self.status,
            String::from_utf8_lossy(&self.body)
        );
        let review = self.json()?;
        let response = &review["response"];
        let allowed = response["allowed"]
            .as_bool()
            .ok_or_else(|| anyhow!("no response.allowed in {review}"))?;
        let message = response["status"]["message"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        Ok((allowed, message))
    }
}

/// A client of its own (its own keep-alive connection), trusting only the
/// server's CA.
fn client(s: &Server) -> Result<reqwest::Client> {
    https_client(&s.certs.ca_pem, Proto::H2, &[])
}

/// POSTs a review to `url` with `client`, timing it.
async fn post_timed(client: &reqwest::Client, url: &str, review: &Json) -> Result<Timed> {
    let uid = review["request"]["uid"].as_str().unwrap_or("").to_owned();
    let body = serde_json::to_vec(review)?;
    let started = Instant::now();
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| anyhow!("POST {url}: {}", error_chain(&e)))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| anyhow!("POST {url}: reading the body: {}", error_chain(&e)))?;
    Ok(Timed {
        uid,
        elapsed: started.elapsed(),
        status,
        body: body.to_vec(),
    })
}

/// The URL of `path` with the API server's `?timeout=10s`.
fn review_url(s: &Server, path: &str) -> String {
    s.url(&format!("{path}?timeout=10s"))
}

/// Times `calls` sequential reviews of `path` on `client` (warm it first).
fn time_calls(
    s: &Server,
    client: &reqwest::Client,
    path: &str,
    calls: usize,
    review: impl Fn() -> Result<Json>,
) -> Result<Vec<Timed>> {
    let url = review_url(s, path);
    block_on(async {
        let mut out = Vec::with_capacity(calls);
        for _ in 0..calls {
            out.push(post_timed(client, &url, &review()?).await?);
        }
        Ok(out)
    })
}

// ---------------------------------------------------------------------------
// Figures
// ---------------------------------------------------------------------------

fn sorted(times: &[Duration]) -> Vec<Duration> {
    let mut times = times.to_vec();
    times.sort();
    times
}

/// The `q` quantile (nearest rank) of `times`.
fn quantile(times: &[Duration], q: f64) -> Duration {
    let times = sorted(times);
    if times.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * times.len() as f64).ceil() as usize;
    times[rank.clamp(1, times.len()) - 1]
}

fn median(times: &[Duration]) -> Duration {
    quantile(times, 0.5)
}

fn max(times: &[Duration]) -> Duration {
    times.iter().copied().max().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

// ---------------------------------------------------------------------------
// What each misbehaviour answers
// ---------------------------------------------------------------------------

#[test]
fn a_looping_policy_is_stopped_at_its_deadline() {
    run(|s| {
        for path in ["/validate/loop", "/mutate/loop"] {
            let a = review(s, path)?;
            ensure_policy_error(&a, "loop", "exceeded its deadline of 100 ms")?;
            ensure!(
                a.message() == "loop: policy failed: exceeded its deadline of 100 ms",
                "{path}: unexpected message:\n{a}"
            );
            ensure_still_serving(s, path)?;
        }
        Ok(())
    });
}

#[test]
fn a_memory_bomb_is_stopped_at_its_memory_limit() {
    run(|s| {
        let expected = format!(
            "memory-bomb: policy failed: exceeded its memory limit of {MEMORY_LIMIT} bytes"
        );
        for path in ["/validate/memory-bomb", "/mutate/memory-bomb"] {
            // Filling 32 MiB takes ~25 ms; on a loaded machine it can take
            // the whole 100 ms deadline, so allow a few attempts.
            let mut seen = Vec::new();
            for _ in 0..3 {
                let started = Instant::now();
                let a = review(s, path)?;
                let took = started.elapsed();
                ensure_policy_error(&a, "memory-bomb", "")?;
                ensure_still_serving(s, path)?;
                if a.message() == expected {
                    break;
                }
                ensure!(
                    a.message() == "memory-bomb: policy failed: exceeded its deadline of 100 ms"
                        && took >= Duration::from_millis(DEADLINE_MS),
                    "{path}: unexpected message after {}:\n{a}",
                    ms(took)
                );
                seen.push(format!("deadline after {}", ms(took)));
            }
            ensure!(
                seen.len() < 3,
                "{path}: the memory limit was never reported: {seen:?}"
            );
        }
        Ok(())
    });
}

#[test]
fn unbounded_recursion_traps_as_a_stack_overflow() {
    run(|s| {
        // Small frames: the engine's call stack runs out.
        let a = review(s, "/validate/recursion")?;
        ensure_policy_error(&a, "recursion", "policy failed: trapped: ")?;
        let message = a.message().to_lowercase();
        // wasmtime calls it "call stack exhausted" (Trap::StackOverflow).
        ensure!(
            message.contains("stack overflow") || message.contains("call stack exhausted"),
            "recursion: the trap does not say the stack overflowed:\n{a}"
        );
        println!("recursion:                {}", a.message());
        ensure_still_serving(s, "recursion")?;

        // 4 KiB frames: the guest's own stack in linear memory runs out
        // first. Rust on wasm32 has no stack probes; with the stack placed
        // first in memory, overflowing it faults below address 0 instead of
        // overwriting data. The host cannot tell this from any other bad
        // memory access, so only a trap is required.
        let a = review(s, "/validate/recursion-large")?;
        ensure_policy_error(&a, "recursion-large", "policy failed: trapped: ")?;
        println!("recursion (large frames): {}", a.message());
        ensure_still_serving(s, "recursion with large frames")?;
        Ok(())
    });
}

#[test]
fn a_panic_traps_with_its_message() {
    run(|s| {
        for path in ["/validate/panic", "/mutate/panic"] {
            let a = review(s, path)?;
            ensure_policy_error(&a, "panic", "policy failed: trapped: ")?;
            ensure_policy_error(&a, "panic", PANIC_TEXT)?;
            ensure!(
                a.message().len() <= MAX_TEXT + 200,
                "{path}: the panic message is not capped ({} bytes)",
                a.message().len()
            );
            ensure_still_serving(s, path)?;
        }
        Ok(())
    });
}

/// `"x" * 4096` + `... (truncated)`: what the host keeps of the 10 MiB.
fn capped_huge_text() -> String {
    format!("{}{TRUNCATED}", "x".repeat(MAX_TEXT))
}

#[test]
fn a_huge_message_is_a_capped_denial() {
    run(|s| {
        let capped = capped_huge_text();
        for path in ["/validate/huge-message", "/mutate/huge-message"] {
            let a = review(s, path)?;
            ensure!(!a.allowed(), "{path}: a denial was allowed:\n{a}");
            // A deny, not a policy error: the policy's own message, the
            // default denial code.
            ensure!(
                a.message() == format!("huge-message: {capped}"),
                "{path}: expected `huge-message: ` + 4 KiB of x + {TRUNCATED:?}, got {} bytes: {:?}...",
                a.message().len(),
                a.message().get(..80).unwrap_or(a.message())
            );
            ensure!(
                a.code() == Some(403),
                "{path}: expected code 403 for a denial, got {:?}",
                a.code()
            );
            ensure!(
                a.reply.body.len() < 16 * 1024,
                "{path}: the answer is {} bytes",
                a.reply.body.len()
            );
            ensure_still_serving(s, path)?;
        }
        Ok(())
    });
}

#[test]
fn invalid_json_output_is_a_policy_error() {
    run(|s| {
        let a = review(s, "/mutate/invalid-json")?;
        ensure_policy_error(
            &a,
            "invalid-json",
            "policy failed: returned invalid output: mutated object is not valid JSON",
        )?;
        println!("invalid-json: {}", a.message());
        ensure_still_serving(s, "invalid-json")?;
        Ok(())
    });
}

#[test]
fn identity_fields_cannot_be_mutated() {
    run(|s| {
        for (policy, field, from, to) in [
            (
                "rename-name",
                "metadata.name",
                r#""web""#,
                r#""web-renamed""#,
            ),
            (
                "rename-namespace",
                "metadata.namespace",
                r#""shop""#,
                r#""shop-renamed""#,
            ),
            ("rename-uid", "metadata.uid", "nothing", r#""renamed""#),
        ] {
            let a = review(s, &format!("/mutate/{policy}"))?;
            let expected = format!(
                "{policy}: policy failed: returned invalid output: mutation changed {field} from {from} to {to}; identity fields cannot be mutated"
            );
            ensure_policy_error(&a, policy, "returned invalid output")?;
            ensure!(
                a.message() == expected,
                "expected message {expected:?}:\n{a}"
            );
            ensure_still_serving(s, policy)?;
        }
        Ok(())
    });
}

#[test]
fn on_error_allow_skips_and_on_error_fail_answers_500() {
    run(|s| {
        let a = review(s, "/validate/panic-allow")?;
        ensure!(a.allowed(), "onError: allow denied:\n{a}");
        let warnings = a.warnings();
        ensure!(
            warnings.iter().any(|w| w.starts_with(
                "panic-allow: policy failed and was skipped (onError: allow): trapped: "
            ) && w.contains(PANIC_TEXT)),
            "no warning says the policy failed and was skipped: {warnings:?}\n{a}"
        );
        ensure_still_serving(s, "panic-allow")?;

        let review = pod_review()?;
        let reply = s.post(
            Proto::H2,
            "/validate/panic-fail",
            Some("application/json"),
            serde_json::to_vec(&review)?,
        )?;
        ensure!(
            reply.status == StatusCode::INTERNAL_SERVER_ERROR,
            "onError: fail: expected HTTP 500, got\n{reply}"
        );
        ensure!(
            reply.content_type().starts_with("text/plain"),
            "onError: fail: expected a plain-text body, got\n{reply}"
        );
        ensure!(
            reply.text().contains("panic-fail"),
            "onError: fail: the body does not name the policy:\n{reply}"
        );
        println!("onError: fail body: {}", reply.text().trim_end());
        ensure_still_serving(s, "panic-fail")?;
        Ok(())
    });
}

#[test]
fn warn_and_audit_modes_turn_denials_into_warnings_and_annotations() {
    run(|s| {
        let capped = capped_huge_text();
        let a = review(s, "/validate/huge-warn")?;
        ensure!(a.allowed(), "warn mode denied:\n{a}");
        let expected = format!("huge-warn (warn mode) would deny: {capped}");
        ensure!(
            a.warnings().contains(&expected),
            "no capped warn-mode warning among {} warnings:\n{a}",
            a.warnings().len()
        );

        let a = review(s, "/validate/huge-audit")?;
        ensure!(a.allowed(), "audit mode denied:\n{a}");
        let annotations = a.audit_annotations();
        let audit = annotations.get("huge-audit-audit").and_then(Json::as_str);
        ensure!(
            audit == Some(format!("would deny: {capped}").as_str()),
            "auditAnnotations[\"huge-audit-audit\"] is not the capped would-deny:\n{a}"
        );

        let a = review(s, "/validate/images-warn")?;
        ensure!(a.allowed(), "warn mode denied:\n{a}");
        ensure!(
            a.warnings()
                .iter()
                .any(|w| w.starts_with("images-warn (warn mode) would deny: ")
                    && w.contains("registry.k8s.io/pause:3.10")),
            "no warn-mode warning naming the image:\n{a}"
        );

        let a = review(s, "/validate/images-audit")?;
        ensure!(a.allowed(), "audit mode denied:\n{a}");
        let annotations = a.audit_annotations();
        let audit = annotations
            .get("images-audit-audit")
            .and_then(Json::as_str)
            .unwrap_or("");
        ensure!(
            audit.starts_with("would deny: ") && audit.contains("registry.k8s.io/pause:3.10"),
            "auditAnnotations[\"images-audit-audit\"] is not a would-deny naming the image:\n{a}"
        );
        ensure!(
            a.warnings().is_empty(),
            "audit mode produced warnings:\n{a}"
        );
        Ok(())
    });
}

#[test]
fn policies_read_no_clock_and_get_seeded_randomness() {
    run(|s| {
        let a = review(s, "/validate/clock")?;
        ensure!(!a.allowed(), "{a}");
        ensure!(
            a.message() == "clock: 0",
            "the policy read a running wall clock (seconds since the epoch): {:?}; \
             the host should freeze WASI clocks at the epoch",
            a.message()
        );
        let first = review(s, "/validate/random")?;
        let second = review(s, "/validate/random")?;
        ensure!(
            !first.allowed() && first.message().starts_with("random: "),
            "{first}"
        );
        ensure!(
            first.message() == second.message(),
            "two calls hashed with different random keys ({:?} vs {:?}): \
             the host should seed WASI randomness with a fixed seed",
            first.message(),
            second.message()
        );
        println!("clock: {:?}, random: {:?}", a.message(), first.message());
        Ok(())
    });
}

#[test]
fn no_state_carries_from_one_call_to_the_next() {
    run(|s| {
        // A trap between calls must not leave a half-used instance behind.
        review(s, "/validate/panic")?;
        let mut seen = Vec::new();
        for path in ["/validate/stateful", "/mutate/stateful"] {
            for _ in 0..6 {
                let a = review(s, path)?;
                ensure!(!a.allowed(), "{path}: {a}");
                seen.push(a.message().to_string());
            }
        }
        // Concurrent calls too: each gets its own instance.
        let client = client(s)?;
        let url = review_url(s, "/validate/stateful");
        let reviews = (0..8).map(|_| pod_review()).collect::<Result<Vec<_>>>()?;
        let timed = block_on(async {
            let mut calls = tokio::task::JoinSet::new();
            for review in reviews {
                let (client, url) = (client.clone(), url.clone());
                calls.spawn(async move { post_timed(&client, &url, &review).await });
            }
            calls.join_all().await
        });
        for call in timed {
            seen.push(call?.decision()?.1);
        }
        let fresh = "stateful: calls=1 last=none buffer=65536";
        let carried: Vec<&String> = seen.iter().filter(|m| *m != fresh).collect();
        ensure!(
            carried.is_empty(),
            "{} of {} calls found state an earlier call left (expected {fresh:?} every time): {carried:?}",
            carried.len(),
            seen.len()
        );
        Ok(())
    });
}

// ---------------------------------------------------------------------------
// Timing
// ---------------------------------------------------------------------------

/// The misbehaving calls, what their answer contains, and their deadline.
const MISBEHAVIOURS: [(&str, &str); 11] = [
    ("/validate/loop", "exceeded its deadline of 100 ms"),
    ("/mutate/loop", "exceeded its deadline of 100 ms"),
    (
        "/validate/memory-bomb",
        "exceeded its memory limit of 33554432 bytes",
    ),
    ("/validate/recursion", "trapped: "),
    ("/validate/recursion-large", "trapped: "),
    ("/validate/panic", PANIC_TEXT),
    ("/validate/huge-message", TRUNCATED),
    ("/mutate/invalid-json", "not valid JSON"),
    ("/mutate/rename-name", "identity fields cannot be mutated"),
    ("/validate/clock", "clock: "),
    ("/validate/random", "random: "),
];

#[test]
fn every_decision_comes_within_its_deadline() {
    run(|s| {
        const CALLS: usize = 5;
        let client = client(s)?;
        // Warm the connection (and each policy's first call).
        for (path, _) in MISBEHAVIOURS {
            time_calls(s, &client, path, 1, pod_review)?;
        }
        println!(
            "decision time per policy, {CALLS} calls each (deadline {DEADLINE_MS} ms, bound +{} ms on the median):",
            LATENESS.as_millis()
        );
        let bound = Duration::from_millis(DEADLINE_MS) + LATENESS;
        let mut late = Vec::new();
        let deadline = Duration::from_millis(DEADLINE_MS);
        for (path, expected) in MISBEHAVIOURS {
            let calls = time_calls(s, &client, path, CALLS, pod_review)?;
            let mut as_expected = 0;
            for call in &calls {
                let (allowed, message) = call.decision().with_context(|| path.to_string())?;
                if !allowed && message.contains(expected) {
                    as_expected += 1;
                    continue;
                }
                // On a loaded machine a quick misbehaviour (a memory bomb
                // filling 32 MiB) may run out of time first: acceptable
                // only if the call did take its deadline.
                let late_deadline = !allowed
                    && message.contains("exceeded its deadline of 100 ms")
                    && call.elapsed >= deadline;
                ensure!(
                    late_deadline,
                    "{path}: expected a denial containing {expected:?}, got allowed={allowed} {message:?} after {}",
                    ms(call.elapsed)
                );
            }
            let times = elapsed(&calls);
            let note = if as_expected < CALLS {
                format!(
                    "  ({} of {CALLS} hit the deadline first)",
                    CALLS - as_expected
                )
            } else {
                String::new()
            };
            println!("  {path:<28} {}{note}", figures(s, &calls));
            ensure!(
                as_expected * 2 > CALLS,
                "{path}: only {as_expected} of {CALLS} answers contained {expected:?}"
            );
            if median(&times) > bound {
                late.push(format!("{path}: median {}", ms(median(&times))));
            }
        }
        ensure!(
            late.is_empty(),
            "decisions later than deadline + {} ms: {late:?}",
            LATENESS.as_millis()
        );
        ensure_still_serving(s, "the timed calls")?;
        Ok(())
    });
}

/// A pod review whose object tells `slow` how many iterations to burn.
fn slow_review(iterations: u64) -> Result<Json> {
    let mut review = pod_review()?;
    review["request"]["object"]["metadata"]["annotations"] =
        json!({ ITERATIONS_ANNOTATION: iterations.to_string() });
    Ok(review)
}

#[test]
fn a_slow_policy_finishes_within_its_deadline_and_an_overlong_one_does_not() {
    run(|s| {
        let client = client(s)?;
        let time = |iterations: u64, calls: usize| -> Result<Vec<Timed>> {
            time_calls(s, &client, "/validate/slow", calls, || {
                slow_review(iterations)
            })
        };
        time(0, 2)?;
        // Calibrate: the cost of the call itself, then of the iterations.
        let base = median(&elapsed(&time(0, 5)?));
        let mut iterations: u64 = 100_000;
        let per_iteration = loop {
            let t = median(&elapsed(&time(iterations, 3)?));
            let burn = t.saturating_sub(base);
            if burn >= Duration::from_millis(25) || iterations >= 1 << 40 {
                break burn.as_secs_f64() / iterations as f64;
            }
            iterations *= 4;
        };
        // About half the deadline in all.
        let target = Duration::from_millis(SLOW_DEADLINE_MS / 2).saturating_sub(base);
        let iterations = (target.as_secs_f64() / per_iteration).max(1.0) as u64;
        println!(
            "slow: call overhead {}, {:.2} ns per iteration, {iterations} iterations for ~{} ms",
            ms(base),
            per_iteration * 1e9,
            SLOW_DEADLINE_MS / 2
        );

        let calls = time(iterations, 5)?;
        let times = elapsed(&calls);
        let mut allowed = 0;
        for call in &calls {
            let (ok, message) = call.decision()?;
            if ok {
                allowed += 1;
            } else {
                ensure!(
                    message == "slow: policy failed: exceeded its deadline of 200 ms",
                    "slow: unexpected denial {message:?}"
                );
            }
        }
        println!(
            "  /validate/slow (~half its deadline)  {}  allowed {allowed}/5",
            figures(s, &calls)
        );
        ensure!(
            allowed >= 3,
            "slow: calibrated to ~{} ms, only {allowed} of 5 calls finished within {SLOW_DEADLINE_MS} ms ({:?})",
            SLOW_DEADLINE_MS / 2,
            times.iter().map(|t| ms(*t)).collect::<Vec<_>>()
        );
        let bound = Duration::from_millis(SLOW_DEADLINE_MS) + LATENESS;
        ensure!(
            median(&times) <= bound,
            "slow: median {} > {}",
            ms(median(&times)),
            ms(bound)
        );

        // Far more work is stopped at the deadline. (20x, not 2x: the
        // calibration above may run on a loaded machine that then frees up.)
        let calls = time(iterations * 20, 5)?;
        let times = elapsed(&calls);
        for call in &calls {
            let (ok, message) = call.decision()?;
            ensure!(
                !ok && message == "slow: policy failed: exceeded its deadline of 200 ms",
                "slow with 20x the work: expected the deadline, got allowed={ok} {message:?}"
            );
        }
        println!(
            "  /validate/slow (~10x its deadline) {}",
            figures(s, &calls)
        );
        ensure!(
            median(&times) <= bound,
            "slow with 20x the work: median {} > {}",
            ms(median(&times)),
            ms(bound)
        );
        Ok(())
    });
}

fn elapsed(calls: &[Timed]) -> Vec<Duration> {
    calls.iter().map(|c| c.elapsed).collect()
}

/// `median X  max Y` on the client, and the same inside the server's
/// handler (from its log) when it can be read.
fn figures(s: &Server, calls: &[Timed]) -> String {
    let times = elapsed(calls);
    let mut text = format!(
        "median {:>9}  max {:>9}",
        ms(median(&times)),
        ms(max(&times))
    );
    let inside = server_side(s, calls);
    if inside.len() == calls.len() {
        text.push_str(&format!(
            "  (in the handler: median {:>9}  max {:>9})",
            ms(median(&inside)),
            ms(max(&inside))
        ));
    }
    text
}

/// The server's own time for each of `calls` (from reading the body to the
/// decision), from its log's `admission decision ... uid=U ... elapsed_ms=T`
/// lines. Best effort: for telling where time goes, not for assertions.
fn server_side(s: &Server, calls: &[Timed]) -> Vec<Duration> {
    let Ok(log) = std::fs::read(s.stderr_log()) else {
        return Vec::new();
    };
    let log = String::from_utf8_lossy(&log);
    let times: HashMap<String, Duration> = log
        .lines()
        .filter(|line| line.contains("admission decision"))
        .filter_map(|line| {
            let line = strip_ansi(line);
            let uid = log_field(&line, "uid=")?;
            let ms: f64 = log_field(&line, "elapsed_ms=")?.parse().ok()?;
            Some((uid.to_owned(), Duration::from_secs_f64(ms / 1000.0)))
        })
        .collect();
    calls
        .iter()
        .filter_map(|c| times.get(&c.uid).copied())
        .collect()
}

/// `line` without terminal colour sequences (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value after `key` in a `key=value` log line, without quotes.
fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}"))? + 1 + key.len();
    let value = line[start..].split_whitespace().next()?;
    Some(value.trim_matches('"'))
}

/// What the hammering tasks cycle through.
const HAMMER: [&str; 5] = [
    "/validate/loop",
    "/validate/memory-bomb",
    "/validate/recursion",
    "/validate/panic",
    "/validate/huge-message",
];

/// What hammering tasks saw.
#[derive(Debug, Default)]
struct Hammered {
    calls: u64,
    /// Answers that were not a 200 denial (e.g. a 503, or an allow).
    unexpected: Vec<String>,
}

/// Starts `tasks` tasks, each on its own connection, posting the paths of
/// `cycle` in turn (offset by the task's index) until `stop` is set or
/// `limit` calls were made in all.
fn hammer(
    s: &Server,
    tasks: usize,
    cycle: &'static [&'static str],
    limit: u64,
    stop: Arc<AtomicBool>,
) -> Result<Vec<tokio::task::JoinHandle<Result<Hammered>>>> {
    let issued = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::with_capacity(tasks);
    for task in 0..tasks {
        let client = client(s)?;
        let urls: Vec<String> = cycle.iter().map(|p| review_url(s, p)).collect();
        let stop = stop.clone();
        let issued = issued.clone();
        handles.push(spawn(async move {
            let mut seen = Hammered::default();
            let mut i = task;
            while !stop.load(Ordering::Relaxed) && issued.fetch_add(1, Ordering::Relaxed) < limit {
                let url = &urls[i % urls.len()];
                i += 1;
                let call = post_timed(&client, url, &pod_review()?).await?;
                seen.calls += 1;
                match call.decision() {
                    Ok((false, _)) => {}
                    Ok((true, message)) => {
                        seen.unexpected.push(format!("{url}: allowed {message:?}"))
                    }
                    Err(e) => seen.unexpected.push(format!("{url}: {e:#}")),
                }
            }
            Ok(seen)
        }));
    }
    Ok(handles)
}

fn join(handles: Vec<tokio::task::JoinHandle<Result<Hammered>>>) -> Result<Hammered> {
    let mut all = Hammered::default();
    for handle in handles {
        let seen = block_on(handle).map_err(|e| anyhow!("a hammering task failed: {e}"))??;
        all.calls += seen.calls;
        all.unexpected.extend(seen.unexpected);
    }
    Ok(all)
}

#[test]
fn a_well_behaved_policy_is_not_slowed_by_misbehaving_ones() {
    run(|s| {
        const CALLS: usize = 200;
        let client = client(s)?;
        time_calls(s, &client, "/validate/allow", 20, pod_review)?;
        let alone = elapsed(&time_calls(
            s,
            &client,
            "/validate/allow",
            CALLS,
            pod_review,
        )?);

        let stop = Arc::new(AtomicBool::new(false));
        let tasks = hammer(s, 4, &HAMMER, u64::MAX, stop.clone())?;
        // Let the misbehaviour get going.
        std::thread::sleep(Duration::from_millis(300));
        let measured = time_calls(s, &client, "/validate/allow", CALLS, pod_review);
        stop.store(true, Ordering::Relaxed);
        let hammered = join(tasks)?;
        let measured = measured?;
        for call in &measured {
            let (allowed, message) = call.decision()?;
            ensure!(allowed, "the allow policy denied under load: {message:?}");
        }
        let busy = elapsed(&measured);
        let inside = server_side(s, &measured);
        let inside = if inside.len() == measured.len() {
            format!(
                "; of which inside the server's handler: p50 {} p99 {} max {}",
                ms(median(&inside)),
                ms(quantile(&inside, 0.99)),
                ms(max(&inside))
            )
        } else {
            String::new()
        };
        println!(
            "allow policy latency, {CALLS} calls: alone p50 {} p99 {} max {}; \
             with 4 tasks hammering {HAMMER:?} ({} calls): p50 {} p99 {} max {}",
            ms(median(&alone)),
            ms(quantile(&alone, 0.99)),
            ms(max(&alone)),
            hammered.calls,
            ms(median(&busy)),
            ms(quantile(&busy, 0.99)),
            ms(max(&busy)),
        );
        println!("  {}", inside.trim_start_matches("; "));
        ensure!(
            hammered.unexpected.is_empty(),
            "{} unexpected answers to the misbehaving calls, e.g. {:?}",
            hammered.unexpected.len(),
            hammered.unexpected.iter().take(5).collect::<Vec<_>>()
        );
        ensure!(
            median(&busy) < Duration::from_millis(20),
            "the allow policy's median latency under misbehaviour is {} (alone {}){inside}",
            ms(median(&busy)),
            ms(median(&alone))
        );
        Ok(())
    });
}

// ---------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------

/// `(VmRSS, VmHWM)` of a process, in bytes.
fn rss(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in {path}"))?;
        let kb: u64 = line
            .trim_start_matches(name)
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("parsing {line:?}"))?;
        Ok(kb * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// What the memory test cycles through: every misbehaviour.
const CYCLE: [&str; 10] = [
    "/validate/loop",
    "/validate/memory-bomb",
    "/validate/recursion",
    "/validate/recursion-large",
    "/validate/panic",
    "/validate/huge-message",
    "/mutate/invalid-json",
    "/mutate/rename-name",
    "/mutate/memory-bomb",
    "/validate/clock",
];

#[test]
fn memory_stays_bounded_over_a_thousand_misbehaving_calls() {
    run(|s| {
        const SEQUENTIAL: u64 = 200;
        const CONCURRENT: u64 = 800;
        let pid = s.pid();
        // Warm up: every misbehaviour a few times, some at once.
        join(hammer(s, 4, &CYCLE, 40, Arc::new(AtomicBool::new(false)))?)?;
        let (before, hwm_before) = rss(pid)?;
        let started = Instant::now();

        let sequential = join(hammer(
            s,
            1,
            &CYCLE,
            SEQUENTIAL,
            Arc::new(AtomicBool::new(false)),
        )?)?;
        let (middle, _) = rss(pid)?;
        let concurrent = join(hammer(
            s,
            4,
            &CYCLE,
            CONCURRENT,
            Arc::new(AtomicBool::new(false)),
        )?)?;
        let (after, peak) = rss(pid)?;
        println!(
            "memory over {} misbehaving calls ({SEQUENTIAL} one at a time, {CONCURRENT} by 4 tasks, {:.1} s): \
             VmRSS before {} (VmHWM {}), after the sequential ones {}, after all {}; \
             growth {}; peak VmHWM {}",
            sequential.calls + concurrent.calls,
            started.elapsed().as_secs_f64(),
            mib(before),
            mib(hwm_before),
            mib(middle),
            mib(after),
            mib(after.saturating_sub(before)),
            mib(peak)
        );
        for (what, seen) in [("sequential", &sequential), ("concurrent", &concurrent)] {
            ensure!(
                seen.unexpected.is_empty(),
                "{what}: {} unexpected answers, e.g. {:?}",
                seen.unexpected.len(),
                seen.unexpected.iter().take(5).collect::<Vec<_>>()
            );
        }
        ensure!(
            sequential.calls + concurrent.calls == SEQUENTIAL + CONCURRENT,
            "made {} calls, not {}",
            sequential.calls + concurrent.calls,
            SEQUENTIAL + CONCURRENT
        );
        ensure!(
            after.saturating_sub(before) < 256 << 20,
            "VmRSS grew by {} over the misbehaving calls",
            mib(after.saturating_sub(before))
        );
        ensure_still_serving(s, "a thousand misbehaving calls")?;
        Ok(())
    });
}

#[test]
fn the_misbehave_module_is_loaded_as_every_policy() {
    run(|s| {
        let policies = s.policies()?;
        let text = policies.to_string();
        for name in [
            "loop",
            "memory-bomb",
            "slow",
            "allow",
            "panic-fail",
            "huge-audit",
        ] {
            ensure!(
                text.contains(&format!("\"{name}\"")),
                "GET /policies does not list {name}: {policies}"
            );
        }
        if let Some(list) = policies["policies"].as_array() {
            ensure!(list.len() == 21, "expected 21 policies, got {}", list.len());
        } else {
            bail!("GET /policies has no `policies` list: {policies}");
        }
        Ok(())
    });
}

#[test]
fn an_unknown_behaviour_is_rejected_when_the_module_loads() {
    // Its own short-lived server, still one test at a time.
    let _serial = serial();
    let result = (|| -> Result<()> {
        let paths = paths()?;
        let module = misbehave_module(&paths)?;
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("bad.yaml");
        std::fs::write(
            &config,
            format!(
                "policies:\n  - name: explode\n    module: {}\n    settings: {{ behaviour: explode }}\n",
                yaml_str(module.to_str().context("module path is not UTF-8")?)
            ),
        )?;
        let out = serve_expecting_exit(&paths, dir.path(), &config, &[], CLI_TIMEOUT)?;
        ensure!(out.code() == Some(2), "expected exit code 2\n{out}");
        let all = out.all_output();
        ensure!(
            all.contains("explode") && all.contains("unknown variant `explode`"),
            "the error does not name the policy and the bad behaviour\n{out}"
        );
        Ok(())
    })();
    if let Err(e) = result {
        panic!("{e:?}");
    }
}
