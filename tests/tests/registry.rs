//! Policy modules from a real OCI registry (distribution 2.8 on loopback,
//! TLS and htpasswd logins; see `portcullis_e2e::registry`).
//!
//! - [`push_and_pull_by_tag_and_digest`]: the Wasm artifact layout with
//!   the module's own annotations, logins, an 18 MB Python component.
//! - [`a_moved_tag_is_followed_under_load`]: no request fails while the
//!   tag moves; the new digest answers within the poll interval.
//! - [`registry_outage_and_restart_from_the_store`]: service continues,
//!   reloads and restarts work from the content store; a stale tag is
//!   refreshed once the registry is back.
//! - [`tampered_modules_are_refused`]: in the registry and in the store.
//! - [`signatures_gate_what_enters_service`]: unsigned and wrongly signed
//!   modules are refused, the old one keeps deciding; a good signature
//!   lets the new one in.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use portcullis_e2e::registry::TestRegistry;
use portcullis_e2e::{
    Json, Paths, Proto, Server, fixture, path_str, paths, serve_expecting_exit, spawn, with_uid,
};

const POLL: Duration = Duration::from_millis(20);
/// Longest wait for a reload the registry poll (1 s) triggers.
const MOVE_TIMEOUT: Duration = Duration::from_secs(30);

fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn python_component(paths: &Paths) -> Result<PathBuf> {
    let path = paths.root.join("target/components/required_labels_py.wasm");
    ensure!(
        path.is_file(),
        "{} is missing: run `make components`",
        path.display()
    );
    Ok(path)
}

fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest as _;
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(bytes))
    ))
}

/// Settings of `required_labels.wasm`: label `version-a`.
const LABELS: &str = "{ labels: { version-a: null } }";
/// Settings of the Python required-labels component.
const LABELS_PY: &str = "{ labels: [version-a] }";
/// Settings of `allowed_images.wasm` (either build).
const IMAGES: &str = "{ allowed: [\"version-b.example/\"] }";

/// The same policy (allowed images) built twice: a core module for
/// wasm32-wasip1 and a component for wasm32-wasip2. Same settings, same
/// decisions, different bytes: a tag moved from one to the other shows
/// which digest answers.
fn image_builds(paths: &Paths) -> Result<(PathBuf, PathBuf)> {
    let component = paths
        .root
        .join("target/wasm32-wasip2/policy/allowed_images.wasm");
    ensure!(
        component.is_file(),
        "{} is missing: run `make build`",
        component.display()
    );
    Ok((paths.allowed_images.clone(), component))
}

/// A config with one policy `gate` whose module is `module`, with
/// `settings`, plus `extra` YAML lines for the policy.
fn gate_config(dir: &Path, module: &str, settings: &str, extra: &str) -> Result<PathBuf> {
    let path = dir.join("policies.yaml");
    fs::write(
        &path,
        format!(
            "defaults: {{ timeoutMs: 5000 }}\npolicies:\n  - name: gate\n    module: {module}\n    settings: {settings}\n{extra}"
        ),
    )?;
    Ok(path)
}

/// Serve flags for `registry` with `store`, polling every second.
fn serve_flags(registry: &TestRegistry, store: &Path) -> Result<Vec<String>> {
    let mut flags = registry.flags(store)?;
    flags.extend(["--registry-poll".to_string(), "1".to_string()]);
    Ok(flags)
}

fn start(flags: &[String], write: impl FnOnce(&Paths, &Path) -> Result<PathBuf>) -> Result<Server> {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Server::start_with(&flags, write)
}

/// Asks about an unlabelled pod running `registry.k8s.io/pause`; returns
/// (allowed, the gate's module digest from the audit annotations). Every
/// gate here denies it, naming label `version-a` or the allowed registry
/// `version-b.example/`.
fn ask(server: &Server, uid: &str) -> Result<(bool, String)> {
    let review = with_uid(&fixture("pod-unlabelled.json")?, uid);
    let answer = server.review_over(Proto::H2, "/validate", &review)?;
    let digest = answer
        .audit_annotations()
        .get("gate-digest")
        .and_then(Json::as_str)
        .with_context(|| format!("no gate-digest annotation:\n{answer}"))?
        .to_string();
    ensure!(
        answer.message().contains("version-a") || answer.message().contains("version-b.example/"),
        "expected the gate's denial:\n{answer}"
    );
    Ok((answer.allowed(), digest))
}

fn gate(policies: &Json) -> &Json {
    &policies["policies"][0]
}

/// Polls `/policies` until `done` holds.
fn wait_for(server: &Server, what: &str, mut done: impl FnMut(&Json) -> bool) -> Result<Json> {
    let deadline = Instant::now() + MOVE_TIMEOUT;
    loop {
        let policies = server.policies()?;
        if done(&policies) {
            return Ok(policies);
        }
        if Instant::now() >= deadline {
            bail!(
                "waited {MOVE_TIMEOUT:?} for {what}; /policies:\n{}\nserver log:\n{}",
                serde_json::to_string_pretty(&policies)?,
                server.logs()
            );
        }
        std::thread::sleep(POLL);
    }
}

fn last_error(policies: &Json) -> String {
    policies["reload"]["lastError"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn push_and_pull_by_tag_and_digest() -> Result<()> {
    let _serial = serial();
    let paths = paths()?;
    let registry = TestRegistry::start()?;
    let out_dir = tempfile::tempdir()?;

    let manifest = registry.push(&paths.required_labels, "policies/labels:v1", &[])?;
    let tag = registry.reference("policies/labels:v1");
    let by_tag = out_dir.path().join("by-tag.wasm");
    let pulled = registry.cli_ok(&["pull", &tag, "-o", path_str(&by_tag)?])?;
    ensure!(
        fs::read(&by_tag)? == fs::read(&paths.required_labels)?,
        "the module pulled by tag differs from the one pushed"
    );
    for expected in [
        format!("manifest {manifest}"),
        "dev.portcullis.policy.name: required-labels".to_string(),
        "dev.portcullis.policy.contract: 0.1.0".to_string(),
        "dev.portcullis.policy.resources: *".to_string(),
        "org.opencontainers.image.title: required_labels.wasm".to_string(),
        "org.opencontainers.image.version: ".to_string(),
    ] {
        ensure!(
            pulled.stdout.contains(&expected),
            "pull output lacks {expected:?}\n{pulled}"
        );
    }
    let by_digest = out_dir.path().join("by-digest.wasm");
    let digest_ref = registry.reference(&format!("policies/labels@{manifest}"));
    registry.cli_ok(&["pull", &digest_ref, "-o", path_str(&by_digest)?])?;
    ensure!(fs::read(&by_digest)? == fs::read(&paths.required_labels)?);

    // An 18 MB component built from Python, pushed and pulled whole.
    let python = python_component(&paths)?;
    let started = Instant::now();
    registry.push(&python, "policies/labels-py:v1", &[])?;
    let push_ms = started.elapsed().as_millis();
    let started = Instant::now();
    let big = out_dir.path().join("py.wasm");
    registry.cli_ok(&[
        "pull",
        &registry.reference("policies/labels-py:v1"),
        "-o",
        path_str(&big)?,
    ])?;
    let pull_ms = started.elapsed().as_millis();
    ensure!(fs::read(&big)? == fs::read(&python)?);
    eprintln!(
        "python component: {} bytes; push {push_ms} ms, pull {pull_ms} ms (CLI processes included)",
        fs::metadata(&python)?.len()
    );
    // ... and served from the registry.
    let store = tempfile::tempdir()?;
    let python_ref = registry.reference("policies/labels-py:v1");
    let started = Instant::now();
    let server = start(&registry.flags(store.path())?, |_, dir| {
        gate_config(dir, &python_ref, LABELS_PY, "")
    })?;
    eprintln!(
        "server with the python component from the registry ready in {} ms",
        started.elapsed().as_millis()
    );
    let (allowed, digest) = ask(&server, "python")?;
    ensure!(!allowed && digest == sha256_file(&python)?);
    drop(server);
    // `eval` reads the same config offline, pulling as the server does.
    let config = gate_config(out_dir.path(), &python_ref, LABELS_PY, "")?;
    let review = paths.root.join("tests/fixtures/pod-unlabelled.json");
    let out = registry.cli(&[
        "eval",
        "--config",
        path_str(&config)?,
        "--review",
        path_str(&review)?,
    ])?;
    ensure!(
        out.status.success()
            && out.stdout.contains("missing required label")
            && out.stdout.contains("\"allowed\": false"),
        "eval of a registry config\n{out}"
    );

    // A wrong password, an unknown tag and a file that is not a module.
    let bad_auth = out_dir.path().join("bad-auth.json");
    fs::write(
        &bad_auth,
        format!(
            r#"{{"auths": {{"{}": {{"username": "policy-ci", "password": "wrong"}}}}}}"#,
            registry.host()
        ),
    )?;
    let out = portcullis_e2e::run_cli(
        &paths.bin,
        &[
            "pull",
            &tag,
            "-o",
            path_str(&out_dir.path().join("x.wasm"))?,
            "--registry-auth",
            path_str(&bad_auth)?,
            "--registry-ca",
            path_str(registry.ca_file())?,
            "--registry-store",
            path_str(&out_dir.path().join("fresh-store"))?,
        ],
        None,
        Duration::from_secs(60),
    )?;
    ensure!(
        !out.status.success(),
        "a wrong password was accepted\n{out}"
    );
    ensure!(
        out.stderr.contains(&tag) && out.stderr.contains("Not authorized"),
        "the error should name the reference and say why\n{out}"
    );
    let missing = registry.reference("policies/labels:nope");
    let out = registry.cli(&["pull", &missing, "-o", path_str(&out_dir.path().join("y"))?])?;
    ensure!(
        !out.status.success() && out.stderr.contains(&missing),
        "{out}"
    );
    let not_a_module = out_dir.path().join("notes.wasm");
    fs::write(&not_a_module, b"just text")?;
    let out = registry.cli(&["push", path_str(&not_a_module)?, &tag])?;
    ensure!(
        out.code() == Some(2) && out.stderr.contains("notes.wasm"),
        "{out}"
    );
    Ok(())
}

#[test]
fn a_moved_tag_is_followed_under_load() -> Result<()> {
    let _serial = serial();
    let paths = paths()?;
    let registry = TestRegistry::start()?;
    let store = tempfile::tempdir()?;
    let (core, component) = image_builds(&paths)?;
    let old_digest = sha256_file(&core)?;
    let new_digest = sha256_file(&component)?;
    let first = registry.push(&core, "policies/gate:live", &[])?;
    let reference = registry.reference("policies/gate:live");
    let server = start(&serve_flags(&registry, store.path())?, |_, dir| {
        gate_config(dir, &reference, IMAGES, "")
    })?;
    ensure!(gate(&server.policies()?)["registry"]["manifest"] == first.as_str());

    // Four clients ask continuously; each records (digest, ok).
    let stop = Arc::new(AtomicBool::new(false));
    let server = Arc::new(server);
    let mut clients = Vec::new();
    for client in 0..4 {
        let (server, stop) = (server.clone(), stop.clone());
        clients.push(spawn(async move {
            let mut seen: Vec<std::result::Result<(bool, String), String>> = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let server = server.clone();
                let uid = format!("move-{client}-{n}");
                let answer = tokio::task::spawn_blocking(move || ask(&server, &uid))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| format!("{e:#}")));
                seen.push(answer);
            }
            seen
        }));
    }
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    let moved = registry.push(&component, "policies/gate:live", &[])?;
    let pushed = started.elapsed();
    let policies = wait_for(&server, "the tag move to reach service", |p| {
        gate(p)["registry"]["manifest"] == moved.as_str()
    })?;
    let to_service = started.elapsed();
    ensure!(gate(&policies)["digest"] == new_digest.as_str());
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut after = 0;
    for client in clients {
        let seen = portcullis_e2e::block_on(client).context("client task")?;
        let mut moved_on = false;
        for answer in seen {
            total += 1;
            let (allowed, digest) = answer.map_err(|e| anyhow::anyhow!("a request failed: {e}"))?;
            ensure!(!allowed, "the unlabelled pod was allowed");
            if digest == new_digest {
                moved_on = true;
                after += 1;
            } else {
                ensure!(
                    digest == old_digest,
                    "an answer from an unknown module {digest}"
                );
                ensure!(!moved_on, "a client saw the old module after the new one");
            }
        }
    }
    ensure!(after > 0, "no answer came from the new module");
    eprintln!(
        "tag move: push took {} ms; pushed -> in service {} ms (poll 1 s, compile included); \
         {total} requests, 0 failed, {after} answered by the new digest",
        pushed.as_millis(),
        to_service.as_millis()
    );
    Ok(())
}

#[test]
fn registry_outage_and_restart_from_the_store() -> Result<()> {
    let _serial = serial();
    let paths = paths()?;
    let mut registry = TestRegistry::start()?;
    let store = tempfile::tempdir()?;
    let manifest = registry.push(&paths.required_labels, "policies/gate:v1", &[])?;
    let by_tag = registry.reference("policies/gate:v1");
    let by_digest = registry.reference(&format!("policies/gate@{manifest}"));
    let extra = format!("  - name: pinned\n    module: {by_digest}\n    settings: {LABELS}\n");
    let config_dir = tempfile::tempdir()?;
    let config = gate_config(config_dir.path(), &by_tag, LABELS, &extra)?;
    let flags = serve_flags(&registry, store.path())?;
    let write = |config: PathBuf| move |_: &Paths, _: &Path| Ok(config);
    let server = start(&flags, write(config.clone()))?;
    let rust_digest = sha256_file(&paths.required_labels)?;
    ensure!(ask(&server, "before")?.1 == rust_digest);

    registry.stop();
    ensure!(ask(&server, "during")?.1 == rust_digest);
    server.reload()?;
    let policies = wait_for(&server, "a reload that marks the tag stale", |p| {
        gate(p)["registry"]["stale"] == true
    })?;
    ensure!(
        last_error(&policies).is_empty(),
        "the reload failed: {policies}"
    );
    ensure!(policies["policies"][1]["registry"]["stale"] == false);
    ensure!(ask(&server, "after-reload")?.1 == rust_digest);
    drop(server);

    // A restart with the registry down starts from the store.
    let restarted = start(&flags, write(config.clone()))?;
    let policies = restarted.policies()?;
    ensure!(gate(&policies)["registry"]["stale"] == true, "{policies}");
    ensure!(gate(&policies)["registry"]["manifest"] == manifest.as_str());
    ensure!(ask(&restarted, "restarted")?.1 == rust_digest);
    ensure!(
        restarted
            .logs()
            .contains("registry unreachable; using the digest this tag resolved to last"),
        "the stale tag should be logged:\n{}",
        restarted.logs()
    );

    // A server without the module in its store cannot start.
    let empty_store = tempfile::tempdir()?;
    let dir = tempfile::tempdir()?;
    let mut args = registry.flags(empty_store.path())?;
    args.push("--shutdown-delay=0".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = serve_expecting_exit(&paths, dir.path(), &config, &args, Duration::from_secs(60))?;
    ensure!(out.code() == Some(2), "{out}");
    ensure!(
        out.stderr.contains(&by_tag) && out.stderr.contains("cannot be reached"),
        "the error should name the reference and the cause\n{out}"
    );

    // The registry is back: the poll refreshes the stale tag.
    registry.restart()?;
    wait_for(&restarted, "the tag to be fresh again", |p| {
        gate(p)["registry"]["stale"] == false
    })?;
    Ok(())
}

#[test]
fn tampered_modules_are_refused() -> Result<()> {
    let _serial = serial();
    let paths = paths()?;
    let registry = TestRegistry::start()?;
    let layer = sha256_file(&paths.required_labels)?;
    registry.push(&paths.required_labels, "policies/gate:v1", &[])?;
    let reference = registry.reference("policies/gate:v1");

    // The content store: a module altered after it was pulled is refused
    // when the set is built, naming the policy and the reference.
    let store = tempfile::tempdir()?;
    let config_dir = tempfile::tempdir()?;
    let config = gate_config(config_dir.path(), &reference, LABELS, "")?;
    let flags = serve_flags(&registry, store.path())?;
    let config_for_start = config.clone();
    drop(start(&flags, move |_, _| Ok(config_for_start))?);
    let hex = layer.trim_start_matches("sha256:");
    let stored = store.path().join("blobs/sha256").join(hex);
    flip_a_byte(&stored)?;
    let dir = tempfile::tempdir()?;
    let mut args = flags.clone();
    args.push("--shutdown-delay=0".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = serve_expecting_exit(&paths, dir.path(), &config, &args, Duration::from_secs(60))?;
    ensure!(out.code() == Some(2), "{out}");
    ensure!(
        out.stderr.contains("policy \"gate\"")
            && out.stderr.contains(&reference)
            && out
                .stderr
                .contains(&format!("not {layer} as its manifest says")),
        "{out}"
    );

    // The registry: a blob altered in its storage is refused by a pull.
    flip_a_byte(&registry.blob_file(&layer)?)?;
    let fresh = tempfile::tempdir()?;
    let out = portcullis_e2e::run_cli(
        &paths.bin,
        &[
            "pull",
            &reference,
            "-o",
            path_str(&fresh.path().join("m.wasm"))?,
            "--registry-auth",
            path_str(&registry.auth_file())?,
            "--registry-ca",
            path_str(registry.ca_file())?,
            "--registry-store",
            path_str(&fresh.path().join("store"))?,
        ],
        None,
        Duration::from_secs(60),
    )?;
    ensure!(!out.status.success(), "a tampered blob was accepted\n{out}");
    ensure!(
        out.stderr.contains(&reference) && out.stderr.contains("refused"),
        "{out}"
    );
    ensure!(
        !fresh.path().join("m.wasm").exists()
            && !fresh.path().join("store/blobs/sha256").join(hex).exists(),
        "nothing of a tampered module may be written"
    );
    Ok(())
}

fn flip_a_byte(path: &Path) -> Result<()> {
    let mut bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(path, bytes)?;
    Ok(())
}

#[test]
fn signatures_gate_what_enters_service() -> Result<()> {
    let _serial = serial();
    let paths = paths()?;
    let registry = TestRegistry::start()?;
    let keys = tempfile::tempdir()?;
    let (trusted, other) = (keys.path().join("trusted"), keys.path().join("other"));
    for prefix in [&trusted, &other] {
        let out = portcullis_e2e::run_cli(
            &paths.bin,
            &["keygen", path_str(prefix)?],
            None,
            Duration::from_secs(30),
        )?;
        ensure!(out.status.success(), "{out}");
    }
    let fingerprint = |out: &str| {
        out.split(['(', ')'])
            .find(|part| part.starts_with("sha256:"))
            .map(str::to_string)
    };
    let trusted_key = path_str(&trusted.with_extension("key"))?.to_string();
    let other_key = path_str(&other.with_extension("key"))?.to_string();
    let trusted_pub = trusted.with_extension("pub");

    let (core, component) = image_builds(&paths)?;
    let first = registry.push(&core, "policies/gate:live", &["--sign-key", &trusted_key])?;
    let reference = registry.reference("policies/gate:live");
    let store = tempfile::tempdir()?;
    let verify = format!("    verify: {{ keys: [{}] }}\n", path_str(&trusted_pub)?);
    let server = start(&serve_flags(&registry, store.path())?, |_, dir| {
        gate_config(dir, &reference, IMAGES, &verify)
    })?;
    let trusted_fp = {
        let out = registry.cli_ok(&[
            "pull",
            &reference,
            "-o",
            path_str(&keys.path().join("m.wasm"))?,
            "--verify-key",
            path_str(&trusted_pub)?,
        ])?;
        fingerprint(
            &out.stdout
                .replace("signed by ", "(")
                .replace(" to ", ") to "),
        )
        .context("pull names the key")?
    };
    let policies = server.policies()?;
    ensure!(gate(&policies)["registry"]["manifest"] == first.as_str());
    ensure!(
        gate(&policies)["registry"]["signedBy"] == trusted_fp.as_str(),
        "{policies}"
    );
    let old_digest = sha256_file(&core)?;

    // An unsigned module on the tag is refused; the signed one decides.
    let unsigned = registry.push(&component, "policies/gate:live", &[])?;
    let policies = wait_for(&server, "the unsigned module to be refused", |p| {
        last_error(p).contains("is not signed")
    })?;
    ensure!(last_error(&policies).contains(&reference), "{policies}");
    ensure!(gate(&policies)["registry"]["manifest"] == first.as_str());
    ensure!(ask(&server, "unsigned")?.1 == old_digest);

    // Signed by a key the config does not trust: still refused.
    let signed_ref = registry.reference(&format!("policies/gate@{unsigned}"));
    registry.cli_ok(&["sign", &signed_ref, "--key", &other_key])?;
    let policies = wait_for(&server, "the wrongly signed module to be refused", |p| {
        last_error(p).contains("no signature verifies")
    })?;
    ensure!(last_error(&policies).contains(&reference), "{policies}");
    ensure!(ask(&server, "wrongly-signed")?.1 == old_digest);
    let out = registry.cli(&[
        "pull",
        &signed_ref,
        "-o",
        path_str(&keys.path().join("n.wasm"))?,
        "--verify-key",
        path_str(&trusted_pub)?,
    ])?;
    ensure!(
        !out.status.success() && out.stderr.contains("no signature verifies"),
        "{out}"
    );

    // Signed by the trusted key as well: it enters service.
    registry.cli_ok(&["sign", &signed_ref, "--key", &trusted_key])?;
    let policies = wait_for(&server, "the signed module to enter service", |p| {
        gate(p)["registry"]["manifest"] == unsigned.as_str()
    })?;
    ensure!(gate(&policies)["registry"]["signedBy"] == trusted_fp.as_str());
    ensure!(ask(&server, "signed")?.1 == sha256_file(&component)?);
    Ok(())
}

/// `make publish` pushes the library, and the ClusterAdmissionPolicy
/// resources of the registry overlay (`deploy/kubernetes/overlays/registry`,
/// rendered with `kubectl kustomize`) serve it from the registry, deciding
/// as the ConfigMap base does.
#[test]
fn the_registry_overlay_serves_the_published_library() -> Result<()> {
    let _serial = serial();
    let paths = paths()?;
    let registry = TestRegistry::start()?;
    let prefix = format!("{}/portcullis", registry.host());

    let out = std::process::Command::new("make")
        .arg("--no-print-directory")
        .arg("publish")
        .arg(format!("REGISTRY={prefix}"))
        .arg(format!("PORTCULLIS_BIN={}", paths.bin.display()))
        .env("PORTCULLIS_REGISTRY_AUTH", registry.auth_file())
        .env("PORTCULLIS_REGISTRY_CA", registry.ca_file())
        .env("PORTCULLIS_REGISTRY_STORE", tempfile::tempdir()?.path())
        .current_dir(&paths.root)
        .output()
        .context("running make publish")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "make publish failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pushed = stdout.lines().filter(|l| l.starts_with("pushed ")).count();
    ensure!(
        pushed >= 10,
        "make publish pushed {pushed} modules:\n{stdout}"
    );

    // The overlay: only the config ConfigMap, modules by reference, the
    // store on the writable cache volume, logins from an optional Secret.
    // Rendered as `make deploy-render` does: the base's generator reads
    // the module files even though the component drops their ConfigMaps.
    let tree = tempfile::tempdir()?;
    let copied = std::process::Command::new("cp")
        .arg("-r")
        .arg(paths.root.join("deploy/kubernetes"))
        .arg(tree.path())
        .status()?;
    ensure!(copied.success(), "copying deploy/kubernetes");
    let kubernetes = tree.path().join("kubernetes");
    let copied = std::process::Command::new("sh")
        .arg(kubernetes.join("copy-policies.sh"))
        .arg(&paths.modules)
        .arg(kubernetes.join("base/policies"))
        .status()?;
    ensure!(copied.success(), "copy-policies.sh");
    let rendered = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(kubernetes.join("overlays/registry"))
        .output()
        .context("kubectl kustomize (install kubectl 1.27 or later)")?;
    ensure!(
        rendered.status.success(),
        "kubectl kustomize overlays/registry failed:\n{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let docs: Vec<Json> = serde_yaml_ng::Deserializer::from_slice(&rendered.stdout)
        .map(|doc| serde::Deserialize::deserialize(doc).context("a rendered document"))
        .collect::<Result<_>>()?;
    let config_maps: Vec<&Json> = docs.iter().filter(|d| d["kind"] == "ConfigMap").collect();
    ensure!(config_maps.len() == 1, "expected the config ConfigMap only");
    let config_text = config_maps[0]["data"]["config.yaml"]
        .as_str()
        .context("config.yaml in the ConfigMap")?;
    let config: Json = serde_yaml_ng::from_str(config_text)?;
    ensure!(config["policies"] == serde_json::json!([]), "{config_text}");
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .context("a Deployment")?;
    let pod = &deployment["spec"]["template"]["spec"];
    let image = pod["containers"][0]["image"].as_str().unwrap_or_default();
    ensure!(
        image.starts_with("registry.example/portcullis/"),
        "image {image}"
    );
    let args: Vec<&str> = pod["containers"][0]["args"]
        .as_array()
        .context("args")?
        .iter()
        .filter_map(Json::as_str)
        .collect();
    ensure!(
        args.contains(&"--registry-store=/var/cache/portcullis/registry"),
        "{args:?}"
    );
    ensure!(
        args.contains(&"--registry-auth=/etc/portcullis/registry/.dockerconfigjson"),
        "{args:?}"
    );
    let secret = pod["volumes"]
        .as_array()
        .context("volumes")?
        .iter()
        .find(|v| v["name"] == "registry-auth")
        .context("the registry-auth volume")?;
    ensure!(secret["secret"]["optional"] == true, "{secret}");

    // Its policies, as a server with --cluster-policies takes them (the
    // spec and the name, by name), pointed at the test registry, serve the
    // library.
    let mut policies: Vec<&Json> = docs
        .iter()
        .filter(|d| d["kind"] == "ClusterAdmissionPolicy")
        .collect();
    policies.sort_by_key(|p| p["metadata"]["name"].as_str().unwrap_or_default());
    ensure!(policies.len() == 5, "{} policies", policies.len());
    let mut entries = Vec::new();
    for policy in policies {
        let name = policy["metadata"]["name"].as_str().unwrap_or_default();
        let module = policy["spec"]["module"].as_str().unwrap_or_default();
        let expected = format!("oci://registry.example/portcullis/policies/{name}:0.1.0");
        ensure!(module == expected, "{module} != {expected}");
        let mut entry = policy["spec"].clone();
        entry["name"] = serde_json::json!(name);
        entries.push(entry);
    }
    let local = serde_yaml_ng::to_string(&serde_json::json!({ "policies": entries }))?
        .replace("registry.example/portcullis", &prefix);
    let store = tempfile::tempdir()?;
    let server = start(&registry.flags(store.path())?, |_, dir| {
        let path = dir.join("config.yaml");
        fs::write(&path, &local)?;
        Ok(path)
    })?;
    let policies = server.policies()?;
    let listed = policies["policies"].as_array().context("policies")?;
    ensure!(listed.len() == 5, "{policies}");
    for policy in listed {
        ensure!(
            policy["registry"]["manifest"]
                .as_str()
                .is_some_and(|m| m.starts_with("sha256:")),
            "{policy}"
        );
    }
    // An unlabelled pod with a privileged-free spec: the deployed set
    // denies it for its missing `app` label.
    let review = with_uid(&fixture("pod-unlabelled.json")?, "overlay");
    let answer = server.review_over(Proto::H2, "/validate", &review)?;
    ensure!(
        !answer.allowed() && answer.message().contains("required-labels"),
        "{answer}"
    );
    Ok(())
}

/// A new version from the registry, shadowed before it enforces: the
/// candidate is pulled like the live module, its disagreements are counted
/// while the answers stay the live version's, and `portcullis promote`
/// makes it the enforcing version without a restart.
#[test]
fn a_registry_candidate_is_shadowed_then_promoted() -> Result<()> {
    let _serial = serial();
    let paths = paths()?;
    let registry = TestRegistry::start()?;
    let (core, component) = image_builds(&paths)?;
    let live_manifest = registry.push(&core, "policies/gate:v1", &[])?;
    let candidate_manifest = registry.push(&component, "policies/gate:v2", &[])?;
    let live = registry.reference("policies/gate:v1");
    let candidate = registry.reference("policies/gate:v2");
    let store = tempfile::tempdir()?;
    // v2 also allows registry.k8s.io/: it allows what v1 denies.
    let shadow = format!(
        "    shadow:\n      module: {candidate}\n      settings: {{ allowed: [\"version-b.example/\", \"registry.k8s.io/\"] }}\n"
    );
    let mut config_path = PathBuf::new();
    let server = start(&serve_flags(&registry, store.path())?, |_, dir| {
        let path = gate_config(dir, &live, IMAGES, &shadow)?;
        config_path = path.clone();
        Ok(path)
    })?;
    let policies = server.policies()?;
    ensure!(
        gate(&policies)["registry"]["manifest"] == live_manifest.as_str(),
        "{policies}"
    );
    ensure!(
        gate(&policies)["shadow"]["module"] == candidate.as_str()
            && gate(&policies)["shadow"]["manifest"] == candidate_manifest.as_str(),
        "{policies}"
    );

    const REVIEWS: usize = 12;
    for n in 0..REVIEWS {
        let (allowed, digest) = ask(&server, &format!("shadowed-{n}"))?;
        ensure!(
            !allowed && digest == sha256_file(&core)?,
            "the answer changed"
        );
    }
    let series = "portcullis_shadow_evaluations_total{policy=\"gate\",result=\"disagree\"}";
    let deadline = Instant::now() + MOVE_TIMEOUT;
    loop {
        let counted = portcullis_e2e::metric_value(&server.metrics()?, series).unwrap_or(0.0);
        if counted as usize == REVIEWS {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{counted} disagreements counted, not {REVIEWS}"
        );
        std::thread::sleep(POLL);
    }

    let out = portcullis_e2e::run_cli(
        &paths.bin,
        &["promote", "--config", path_str(&config_path)?, "gate"],
        None,
        Duration::from_secs(30),
    )?;
    ensure!(out.status.success(), "{out}");
    let policies = wait_for(&server, "the candidate to enforce", |p| {
        gate(p)["registry"]["manifest"] == candidate_manifest.as_str()
    })?;
    ensure!(gate(&policies)["shadow"].is_null(), "{policies}");
    let review = with_uid(&fixture("pod-unlabelled.json")?, "promoted");
    let answer = server.review_over(Proto::H2, "/validate", &review)?;
    ensure!(answer.allowed(), "v2 allows registry.k8s.io/:\n{answer}");
    Ok(())
}

/// A registry without TLS is spoken to only when a flag names it.
#[test]
fn plain_http_only_when_a_flag_says_so() -> Result<()> {
    let _serial = serial();
    let paths = paths()?;
    let registry = TestRegistry::start_plain()?;
    let manifest = registry.push(&paths.required_labels, "policies/gate:v1", &[])?;
    let reference = registry.reference("policies/gate:v1");
    let store = tempfile::tempdir()?;
    let server = start(&registry.flags(store.path())?, |_, dir| {
        gate_config(dir, &reference, LABELS, "")
    })?;
    ensure!(gate(&server.policies()?)["registry"]["manifest"] == manifest.as_str());
    drop(server);

    // Without the flag the client insists on TLS, and says where it failed.
    let out = portcullis_e2e::run_cli(
        &paths.bin,
        &[
            "pull",
            &reference,
            "-o",
            path_str(&store.path().join("m.wasm"))?,
            "--registry-auth",
            path_str(&registry.auth_file())?,
            "--registry-store",
            path_str(&store.path().join("other"))?,
        ],
        None,
        Duration::from_secs(60),
    )?;
    ensure!(
        !out.status.success(),
        "plain HTTP was used without the flag\n{out}"
    );
    ensure!(
        out.stderr.contains(&reference) && out.stderr.contains("cannot be reached"),
        "{out}"
    );
    Ok(())
}
