//! The request path in this process, through the router with no socket,
//! TLS or server process: `portcullis::app::router` over a real config and
//! real policy modules, driven with `tower::ServiceExt::oneshot`. Covers
//! modes, onError and the order of the mutate chain, which otherwise only
//! the spawned-binary tests see.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, ensure};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine as _;
use http_body_util::BodyExt as _;
use portcullis::app::{self, EdgeLimits, ServeOptions, TlsSource};
use portcullis::control::Debounce;
use portcullis_e2e::{Json, Paths, block_on, fixture, json, paths, with_uid, yaml_str};
use tower::ServiceExt as _;

/// The two configs the tests use.
#[derive(Debug, Clone, Copy)]
enum Config {
    /// One module under several names, each with its own mode or onError.
    Outcomes,
    /// Two mutating policies whose order matters.
    Chain,
}

fn write_config(which: Config, paths: &Paths, dir: &Path) -> Result<std::path::PathBuf> {
    let allowed = yaml_str(
        paths
            .allowed_images
            .to_str()
            .ok_or_else(|| anyhow!("path"))?,
    );
    let defaults = yaml_str(
        paths
            .default_labels
            .to_str()
            .ok_or_else(|| anyhow!("path"))?,
    );
    let misbehave = paths.modules.join("misbehave.wasm");
    let misbehave = yaml_str(misbehave.to_str().ok_or_else(|| anyhow!("path"))?);
    let images = r#"{ allowed: ["registry.k8s.io/"] }"#;
    let policies = match which {
        Config::Outcomes => format!(
            r#"  - {{ name: enforced, module: {allowed}, mode: enforce, settings: {images} }}
  - {{ name: warned, module: {allowed}, mode: warn, settings: {images} }}
  - {{ name: audited, module: {allowed}, mode: audit, settings: {images} }}
  - {{ name: panics-deny, module: {misbehave}, onError: deny, settings: {{ behaviour: panic }} }}
  - {{ name: panics-allow, module: {misbehave}, onError: allow, settings: {{ behaviour: panic }} }}
  - {{ name: panics-fail, module: {misbehave}, onError: fail, settings: {{ behaviour: panic }} }}
"#
        ),
        Config::Chain => format!(
            r#"  - {{ name: enforced, module: {allowed}, settings: {images} }}
  - name: first
    module: {defaults}
    settings: {{ labels: {{ managed: first, order: first }} }}
  - name: second
    module: {defaults}
    settings: {{ labels: {{ managed: second, second: "yes" }} }}
"#
        ),
    };
    let yaml = format!(
        "defaults: {{ timeoutMs: 2000, memoryLimit: 32Mi, onError: deny, mode: enforce }}\npolicies:\n{policies}"
    );
    let path = dir.join(format!("{which:?}.yaml"));
    std::fs::write(&path, yaml)?;
    Ok(path)
}

/// The router over `which`, built once per test binary.
fn router(which: Config) -> Router {
    static OUTCOMES: OnceLock<Result<Router, String>> = OnceLock::new();
    static CHAIN: OnceLock<Result<Router, String>> = OnceLock::new();
    let cell = match which {
        Config::Outcomes => &OUTCOMES,
        Config::Chain => &CHAIN,
    };
    match cell.get_or_init(|| build(which).map_err(|e| format!("{e:?}"))) {
        Ok(router) => router.clone(),
        Err(e) => panic!("could not build the router:\n{e}"),
    }
}

fn build(which: Config) -> Result<Router> {
    let paths = paths()?;
    // Kept for the life of the test binary: the config lives in it.
    let dir = Box::leak(Box::new(tempfile::tempdir()?));
    let config = write_config(which, &paths, dir.path())?;
    let options = ServeOptions {
        config,
        tls: TlsSource::Development {
            dir: dir.path().join("certs"),
        },
        cache_dir: Some(dir.path().join("module-cache")),
        engine: Default::default(),
        client_ca: None,
        body_limit: 1 << 20,
        status_on_https: true,
        body_bytes_in_flight: 64 << 20,
        shutdown_delay: Duration::ZERO,
        shutdown_grace: Duration::from_secs(1),
        allow_empty: false,
        registry: Default::default(),
        cluster: None,
        debounce: Debounce {
            quiet: Duration::from_millis(100),
            max: Duration::from_secs(1),
        },
        limits: EdgeLimits {
            max_concurrent_reviews: 4,
            max_queued_reviews: 16,
            max_connections: 16,
            header_read_timeout: Duration::from_secs(5),
            body_read_timeout: Duration::from_secs(5),
        },
        shadow_concurrency: 2,
    };
    block_on(app::router(&options)).context("building the router")
}

/// An answer: its status, and its body as JSON (`Null` when not JSON).
struct Answer {
    status: StatusCode,
    text: String,
    json: Json,
}

impl Answer {
    fn response(&self) -> &Json {
        &self.json["response"]
    }

    fn allowed(&self) -> bool {
        self.response()["allowed"] == json!(true)
    }
}

fn post(which: Config, path: &str, body: Vec<u8>) -> Result<Answer> {
    let request = Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))?;
    let router = router(which);
    block_on(async {
        let response = router.oneshot(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let json = serde_json::from_slice(&bytes).unwrap_or(Json::Null);
        Ok(Answer { status, text, json })
    })
}

fn review(which: Config, path: &str, review: &Json) -> Result<Answer> {
    post(which, path, serde_json::to_vec(review)?)
}

/// `pod-denied.json`: a pod whose images `registry.k8s.io/` does not allow.
fn denied_pod(uid: &str) -> Result<Json> {
    Ok(with_uid(&fixture("pod-denied.json")?, uid))
}

#[test]
fn enforce_denies_warn_warns_and_audit_annotates() -> Result<()> {
    let enforced = review(
        Config::Outcomes,
        "/validate/enforced",
        &denied_pod("u-enforce")?,
    )?;
    ensure!(enforced.status == StatusCode::OK, "{}", enforced.text);
    ensure!(
        !enforced.allowed(),
        "enforce mode allowed: {}",
        enforced.text
    );
    ensure!(
        enforced.response()["uid"] == "u-enforce",
        "{}",
        enforced.text
    );
    ensure!(
        enforced.response()["status"]["code"] == 403,
        "{}",
        enforced.text
    );

    let warned = review(Config::Outcomes, "/validate/warned", &denied_pod("u-warn")?)?;
    ensure!(warned.allowed(), "warn mode denied: {}", warned.text);
    let warnings = warned.response()["warnings"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        warnings
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.contains("evil.io/x:1"))),
        "no warning names the image: {}",
        warned.text
    );

    let audited = review(
        Config::Outcomes,
        "/validate/audited",
        &denied_pod("u-audit")?,
    )?;
    ensure!(audited.allowed(), "audit mode denied: {}", audited.text);
    ensure!(
        audited.response().get("warnings").is_none(),
        "audit mode warned: {}",
        audited.text
    );
    let note = &audited.response()["auditAnnotations"]["audited-audit"];
    ensure!(
        note.as_str().is_some_and(|n| n.starts_with("would deny:")),
        "no audit annotation: {}",
        audited.text
    );
    Ok(())
}

#[test]
fn on_error_deny_allow_and_fail() -> Result<()> {
    let pod = with_uid(&fixture("pod-allowed.json")?, "u-err");
    let denied = review(Config::Outcomes, "/validate/panics-deny", &pod)?;
    ensure!(denied.status == StatusCode::OK, "{}", denied.text);
    ensure!(!denied.allowed(), "onError: deny allowed: {}", denied.text);
    let message = denied.response()["status"]["message"]
        .as_str()
        .unwrap_or_default();
    ensure!(message.contains("panics-deny"), "{message}");

    let allowed = review(Config::Outcomes, "/validate/panics-allow", &pod)?;
    ensure!(allowed.allowed(), "onError: allow denied: {}", allowed.text);
    ensure!(
        allowed.response()["warnings"]
            .as_array()
            .is_some_and(|w| !w.is_empty()),
        "onError: allow gave no warning: {}",
        allowed.text
    );

    let failed = review(Config::Outcomes, "/validate/panics-fail", &pod)?;
    ensure!(
        failed.status == StatusCode::INTERNAL_SERVER_ERROR,
        "onError: fail answered {}: {}",
        failed.status,
        failed.text
    );
    ensure!(failed.text.contains("panics-fail"), "{}", failed.text);
    Ok(())
}

#[test]
fn mutations_apply_in_config_order_as_one_patch() -> Result<()> {
    let pod = with_uid(&fixture("pod-allowed.json")?, "u-mutate");
    // The whole chain: `first`, then `second` over `first`'s output.
    let chain = review(Config::Chain, "/mutate", &pod)?;
    ensure!(chain.status == StatusCode::OK, "{}", chain.text);
    ensure!(
        chain.response()["patchType"] == "JSONPatch",
        "{}",
        chain.text
    );
    let patch = chain.response()["patch"].as_str().unwrap_or_default();
    let patch: json_patch::Patch =
        serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(patch)?)?;
    let mut object = pod["request"]["object"].clone();
    json_patch::patch(&mut object, &patch)?;
    let labels = &object["metadata"]["labels"];
    // default-labels only adds what is missing: `second` saw `first`'s
    // output (run the other way round, `managed` would be "second").
    ensure!(
        labels["managed"] == "first",
        "the chain ran out of order: {labels}"
    );
    ensure!(labels["order"] == "first", "{labels}");
    ensure!(
        labels["second"] == "yes",
        "the second policy did not run: {labels}"
    );
    Ok(())
}

#[test]
fn what_is_not_a_review_or_not_a_policy_is_refused() -> Result<()> {
    let not_json = post(Config::Chain, "/validate", b"{not json".to_vec())?;
    ensure!(
        not_json.status.is_client_error(),
        "{} {}",
        not_json.status,
        not_json.text
    );
    let unknown = review(Config::Outcomes, "/validate/nope", &denied_pod("u-404")?)?;
    ensure!(unknown.status == StatusCode::NOT_FOUND, "{}", unknown.text);
    let wrong_kind = review(Config::Chain, "/validate/first", &denied_pod("u-404b")?)?;
    ensure!(
        wrong_kind.status == StatusCode::NOT_FOUND && wrong_kind.text.contains("mutating"),
        "{} {}",
        wrong_kind.status,
        wrong_kind.text
    );
    Ok(())
}
