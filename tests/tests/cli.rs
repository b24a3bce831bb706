//! The command line: `certs`, `eval`, and config errors for `serve`/`eval`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use base64::Engine as _;
use portcullis_e2e::{
    CLI_TIMEOUT, CliOutput, Json, Paths, Server, decode_patch, fixture, fixtures_dir, free_port,
    generate_certs, json, paths, run_cli, with_uid, write_default_config,
};

fn s(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 path")
}

fn eval(paths: &Paths, config: &Path, review: &str, stdin: Option<&[u8]>) -> Result<CliOutput> {
    run_cli(
        &paths.bin,
        &["eval", "--config", s(config)?, "--review", review],
        stdin,
        CLI_TIMEOUT,
    )
}

/// `eval --config CONFIG --review REVIEW EXTRA...`.
fn eval_with(paths: &Paths, config: &Path, review: &Path, extra: &[&str]) -> Result<CliOutput> {
    let mut args = vec!["eval", "--config", s(config)?, "--review", s(review)?];
    args.extend_from_slice(extra);
    run_cli(&paths.bin, &args, None, CLI_TIMEOUT)
}

/// Parses eval's stdout as the answer to `review` and checks uid/apiVersion.
fn eval_answer(out: &CliOutput, review: &Json) -> Result<Json> {
    let answer: Json = serde_json::from_str(out.stdout.trim())
        .with_context(|| format!("eval stdout is not one JSON document\n{out}"))?;
    ensure!(
        answer["kind"] == "AdmissionReview",
        "eval output kind\n{out}"
    );
    ensure!(
        answer["apiVersion"] == review["apiVersion"],
        "eval output apiVersion\n{out}"
    );
    ensure!(
        answer["response"]["uid"] == review["request"]["uid"],
        "eval output uid != request uid\n{out}"
    );
    ensure!(
        answer["response"]["allowed"].is_boolean(),
        "eval output allowed\n{out}"
    );
    Ok(answer)
}

#[test]
fn certs_writes_pem_files_and_prints_the_ca() -> Result<()> {
    let paths = paths()?;
    let dir = tempfile::tempdir()?;
    // generate_certs checks the four files and that the last stdout line is
    // the base64 of ca.crt.
    let certs = generate_certs(&paths.bin, dir.path())?;
    let read =
        |p: &PathBuf| fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    for (file, marker) in [
        (&certs.ca_crt, "-----BEGIN CERTIFICATE-----"),
        (&certs.tls_crt, "-----BEGIN CERTIFICATE-----"),
        (&certs.ca_key, "PRIVATE KEY-----"),
        (&certs.tls_key, "PRIVATE KEY-----"),
    ] {
        let text = read(file)?;
        ensure!(
            text.contains(marker),
            "{} is not PEM with {marker:?}:\n{text}",
            file.display()
        );
    }
    ensure!(
        read(&certs.ca_crt)? != read(&certs.tls_crt)?,
        "tls.crt is the CA itself"
    );
    // The last line is what goes into a webhook's caBundle.
    let last = certs
        .output
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let decoded = base64::engine::general_purpose::STANDARD.decode(last.trim())?;
    ensure!(
        decoded == fs::read(&certs.ca_crt)?,
        "caBundle line != ca.crt"
    );
    Ok(())
}

#[test]
fn eval_allowed_pod_prints_a_patched_allowed_answer() -> Result<()> {
    let paths = paths()?;
    let dir = tempfile::tempdir()?;
    let config = write_default_config(&paths, dir.path())?;
    let review = fixture("pod-allowed.json")?;
    let file = fixtures_dir().join("pod-allowed.json");
    let out = eval(&paths, &config, s(&file)?, None)?;
    ensure!(
        out.code() == Some(0),
        "eval of an allowed pod: expected exit 0\n{out}"
    );
    let answer = eval_answer(&out, &review)?;
    ensure!(
        answer["response"]["allowed"] == true,
        "allowed pod denied by eval\n{out}"
    );
    let patch =
        decode_patch(&answer["response"])?.with_context(|| format!("eval gave no patch\n{out}"))?;
    ensure!(
        answer["response"]["patchType"] == "JSONPatch",
        "patchType\n{out}"
    );
    let mut object = review["request"]["object"].clone();
    json_patch::patch(&mut object, &patch)?;
    ensure!(
        object["metadata"]["labels"]["portcullis.dev/managed"] == "true",
        "eval patch does not add the default label\n{out}"
    );
    ensure!(
        object["metadata"]["labels"]["team"] == "platform",
        "eval patch changed a label\n{out}"
    );
    Ok(())
}

#[test]
fn eval_denied_pod_prints_a_denial() -> Result<()> {
    let paths = paths()?;
    let dir = tempfile::tempdir()?;
    let config = write_default_config(&paths, dir.path())?;
    let review = fixture("pod-denied.json")?;
    let file = fixtures_dir().join("pod-denied.json");
    let out = eval(&paths, &config, s(&file)?, None)?;
    ensure!(
        out.code() == Some(0),
        "eval of a denied pod: expected exit 0 (the evaluation worked)\n{out}"
    );
    let answer = eval_answer(&out, &review)?;
    ensure!(
        answer["response"]["allowed"] == false,
        "denied pod allowed by eval\n{out}"
    );
    let msg = answer["response"]["status"]["message"]
        .as_str()
        .unwrap_or("");
    for expected in [
        r#"container "app" uses image "evil.io/x:1""#,
        r#""setup" uses image "quay.io/bad/y:2""#,
    ] {
        ensure!(
            msg.contains(expected),
            "eval denial lacks {expected:?}\n{out}"
        );
    }
    ensure!(
        msg.starts_with("allowed-images: "),
        "eval denial not prefixed by the policy\n{out}"
    );
    Ok(())
}

#[test]
fn eval_reads_the_review_from_stdin() -> Result<()> {
    let paths = paths()?;
    let dir = tempfile::tempdir()?;
    let config = write_default_config(&paths, dir.path())?;
    let review = fixture("pod-allowed.json")?;
    let out = eval(&paths, &config, "-", Some(&serde_json::to_vec(&review)?))?;
    ensure!(
        out.code() == Some(0),
        "eval --review -: expected exit 0\n{out}"
    );
    let answer = eval_answer(&out, &review)?;
    ensure!(answer["response"]["allowed"] == true, "{out}");
    Ok(())
}

#[test]
fn eval_of_a_missing_review_file_exits_2_naming_it() -> Result<()> {
    let paths = paths()?;
    let dir = tempfile::tempdir()?;
    let config = write_default_config(&paths, dir.path())?;
    let missing = dir.path().join("no-such-review.json");
    let out = eval(&paths, &config, s(&missing)?, None)?;
    ensure!(out.code() == Some(2), "expected exit 2\n{out}");
    ensure!(
        out.all_output().contains("no-such-review.json"),
        "the message does not name the file\n{out}"
    );
    Ok(())
}

/// A config with an unknown key on a known line.
fn write_broken_config(paths: &Paths, dir: &Path) -> Result<(PathBuf, usize)> {
    let good_path = write_default_config(paths, dir)?;
    let good = fs::read_to_string(&good_path)?;
    let mut lines: Vec<String> = good.lines().map(str::to_owned).collect();
    // Insert an unknown key into the required-labels policy entry.
    let idx = lines
        .iter()
        .position(|l| l.contains("module: required_labels.wasm"))
        .context("standard config layout")?;
    lines.insert(idx + 1, "    colour: blue".to_owned());
    let line_no = idx + 2; // 1-based
    let path = dir.join("broken-config.yaml");
    fs::write(&path, lines.join("\n") + "\n")?;
    Ok((path, line_no))
}

fn ensure_config_error(out: &CliOutput, line_no: usize, what: &str) -> Result<()> {
    ensure!(out.code() == Some(2), "{what}: expected exit 2\n{out}");
    let text = out.all_output();
    ensure!(
        text.contains("broken-config.yaml"),
        "{what}: the message does not name the file\n{out}"
    );
    ensure!(
        text.contains("line"),
        "{what}: the message does not give the line\n{out}"
    );
    ensure!(
        text.contains(&line_no.to_string()),
        "{what}: the message does not give line {line_no}\n{out}"
    );
    ensure!(
        text.contains("colour"),
        "{what}: the message does not name the unknown key\n{out}"
    );
    Ok(())
}

#[test]
fn broken_config_makes_serve_and_eval_exit_2() -> Result<()> {
    let paths = paths()?;
    let dir = tempfile::tempdir()?;
    let (config, line_no) = write_broken_config(&paths, dir.path())?;
    let certs = generate_certs(&paths.bin, &dir.path().join("certs"))?;
    let addr = format!("127.0.0.1:{}", free_port()?);
    let serve = run_cli(
        &paths.bin,
        &[
            "serve",
            "--config",
            s(&config)?,
            "--addr",
            &addr,
            "--tls-cert",
            s(&certs.tls_crt)?,
            "--tls-key",
            s(&certs.tls_key)?,
        ],
        None,
        CLI_TIMEOUT,
    )?;
    ensure_config_error(&serve, line_no, "serve")?;

    let review = fixtures_dir().join("pod-allowed.json");
    let out = eval(&paths, &config, s(&review)?, None)?;
    ensure_config_error(&out, line_no, "eval")?;
    Ok(())
}

#[test]
fn eval_prints_the_patched_object_as_yaml_and_runs_one_policy() -> Result<()> {
    let paths = paths()?;
    let dir = tempfile::tempdir()?;
    let config = write_default_config(&paths, dir.path())?;
    let file = fixtures_dir().join("pod-allowed.json");
    let review = fixture("pod-allowed.json")?;
    let out = eval_with(
        &paths,
        &config,
        &file,
        &["--print", "patched", "-o", "yaml"],
    )?;
    ensure!(out.code() == Some(0), "eval --print patched -o yaml\n{out}");
    ensure!(
        out.stdout.starts_with("apiVersion: v1\n"),
        "not YAML of the object\n{out}"
    );
    let object: Json = serde_yaml_ng::from_str(&out.stdout)
        .with_context(|| format!("eval -o yaml printed no YAML\n{out}"))?;
    let mut expected = review["request"]["object"].clone();
    expected["metadata"]["labels"]["portcullis.dev/managed"] = "true".into();
    expected["metadata"]["annotations"]["portcullis.dev/owner"] = "platform".into();
    ensure!(object == expected, "patched object differs\n{out}");

    // One policy only: the denial comes from it alone, and a mutating
    // policy that was not asked for does not run.
    let denied = fixtures_dir().join("pod-denied.json");
    let out = eval_with(&paths, &config, &denied, &["--policy", "required-labels"])?;
    ensure!(out.code() == Some(0), "eval --policy\n{out}");
    let answer: Json = serde_json::from_str(&out.stdout)?;
    ensure!(
        answer["response"]["allowed"] == true,
        "required-labels alone allows it\n{out}"
    );
    ensure!(
        answer["response"].get("patch").is_none(),
        "default-labels ran\n{out}"
    );
    let out = eval_with(&paths, &config, &denied, &["--policy", "nope"])?;
    ensure!(out.code() == Some(2), "unknown policy: exit 2\n{out}");
    ensure!(
        out.stderr.contains("no policy named \"nope\""),
        "unknown policy message\n{out}"
    );
    Ok(())
}

/// A suite against the standard test config, with `cases` appended.
fn write_suite(dir: &Path, config: &Path, cases: &str) -> Result<PathBuf> {
    let path = dir.join("suite.yaml");
    fs::write(
        &path,
        format!(
            "config: {}\ncases:\n{cases}",
            serde_json::to_string(s(config)?)?
        ),
    )?;
    Ok(path)
}

const POD: &str = "{apiVersion: v1, kind: Pod, metadata: {name: web, namespace: shop, labels: {app: web, team: platform}}, spec: {containers: [{name: app, image: nginx:1.27}]}}";

#[test]
fn test_command_passes_good_suites_and_fails_a_wrong_expectation() -> Result<()> {
    let paths = paths()?;
    let dir = tempfile::tempdir()?;
    let config = write_default_config(&paths, dir.path())?;
    let good = write_suite(
        dir.path(),
        &config,
        &format!(
            "  - name: nginx is allowed and labelled\n    object: {POD}\n    expect:\n      allowed: true\n      patched: {{apiVersion: v1, kind: Pod, metadata: {{name: web, namespace: shop, labels: {{app: web, team: platform, portcullis.dev/managed: \"true\"}}, annotations: {{portcullis.dev/owner: platform}}}}, spec: {{containers: [{{name: app, image: nginx:1.27}}]}}}}\n  - name: an unknown registry is denied\n    policy: allowed-images\n    object: {{apiVersion: v1, kind: Pod, metadata: {{name: web, namespace: shop}}, spec: {{containers: [{{name: app, image: evil.io/x:1}}]}}}}\n    expect: {{ allowed: false, message: evil.io/x }}\n"
        ),
    )?;
    let out = run_cli(&paths.bin, &["test", s(&good)?], None, CLI_TIMEOUT)?;
    ensure!(out.code() == Some(0), "a passing suite: exit 0\n{out}");
    ensure!(
        out.stdout.contains("  ok    nginx is allowed and labelled")
            && out.stdout.contains("2 passed, 0 failed"),
        "runner output\n{out}"
    );

    let wrong = write_suite(
        dir.path(),
        &config,
        &format!(
            "  - name: wrongly expects a denial\n    object: {POD}\n    expect: {{ allowed: false, message: never }}\n  - name: wrongly expects no patch\n    object: {POD}\n    expect: {{ allowed: true, noPatch: true }}\n"
        ),
    )?;
    let out = run_cli(&paths.bin, &["test", s(&wrong)?], None, CLI_TIMEOUT)?;
    ensure!(out.code() == Some(1), "a failing case: exit 1\n{out}");
    for expected in [
        "  FAIL  wrongly expects a denial",
        "expected allowed: false, got allowed: true",
        "expected the message to contain \"never\"",
        "  FAIL  wrongly expects no patch",
        "expected no patch, got [",
        "0 passed, 2 failed",
    ] {
        ensure!(out.stdout.contains(expected), "missing {expected:?}\n{out}");
    }

    let broken = write_suite(
        dir.path(),
        &config,
        &format!("  - name: typo\n    objet: {POD}\n    expect: {{ allowed: true }}\n"),
    )?;
    let out = run_cli(&paths.bin, &["test", s(&broken)?], None, CLI_TIMEOUT)?;
    ensure!(out.code() == Some(2), "a broken suite: exit 2\n{out}");
    ensure!(
        out.stdout.contains("unknown field `objet`") && out.stdout.contains("line 4"),
        "the error names the field and line\n{out}"
    );
    Ok(())
}

#[test]
fn client_text_cannot_forge_or_flood_log_lines() -> Result<()> {
    let server = Server::start_default()?;
    let forged = "e2e-forge\nuid=FORGED allowed=true\r\u{1b}[2K\u{1b}[31mred\u{2028}x";
    let mut review = with_uid(&fixture("pod-allowed.json")?, forged);
    review["request"]["name"] = json!("web\nname=FORGED");
    server.review("/validate", &review)?;
    let huge = format!("e2e-huge-{}", "u".repeat(1 << 20));
    let answer = server.review("/validate", &with_uid(&fixture("pod-allowed.json")?, &huge))?;
    ensure!(answer.allowed(), "{answer}");
    // The decision lines are written after the answers: poll for both.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let log = loop {
        let log = fs::read_to_string(server.stderr_log())?;
        if log.matches("admission decision").count() >= 2 || std::time::Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    ensure!(
        log.contains("e2e-forge\\nuid=FORGED") && log.contains("e2e-huge-"),
        "both decisions are logged, the uid escaped:\n{}",
        &log[..log.len().min(4096)]
    );
    for line in log.lines() {
        ensure!(
            line.starts_with("20"),
            "a line that does not start with a timestamp (forged?): {:?}",
            &line[..line.len().min(300)]
        );
        ensure!(
            line.len() < 8192,
            "a {} byte log line: {:?}...",
            line.len(),
            &line[..300]
        );
    }
    ensure!(
        !log.contains('\u{1b}') && !log.contains('\r') && !log.contains('\u{2028}'),
        "control characters reached the log"
    );
    Ok(())
}

#[test]
fn logs_to_a_file_carry_no_colour_codes() -> Result<()> {
    // The server's stderr is a file here, as under systemd or in a pod.
    let server = Server::start_default()?;
    let answer = server.review("/validate", &fixture("pod-allowed.json")?)?;
    ensure!(answer.allowed(), "{answer}");
    let log = fs::read_to_string(server.stderr_log())?;
    ensure!(
        log.contains("listening on https://") && log.contains("admission decision"),
        "the log lacks the start-up and decision lines:\n{log}"
    );
    ensure!(
        !log.contains('\u{1b}'),
        "the log has ANSI escape codes:\n{log:?}"
    );
    Ok(())
}
