//! Running it in production: the plain-HTTP operations listener (probes and
//! metrics), metrics after known traffic, JSON decision logs, client
//! certificates (mTLS), and certificate rotation under load.
//!
//! Each test starts its own `portcullis serve` with `--metrics-addr`, and
//! waits for readiness over plain HTTP, so the HTTPS side can require client
//! certificates or change its certificate without the harness knowing.

// Test helpers: a panic is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use portcullis_e2e::{
    CLI_TIMEOUT, Certs, Json, Paths, Proto, block_on, clean_env, fixture, free_port,
    generate_certs, https_client, metric_value, path_str, paths, run_cli, spawn, tls_config,
    write_default_config,
};

/// A `portcullis serve` with an operations listener, killed on drop.
struct Served {
    child: Child,
    port: u16,
    metrics_port: u16,
    stderr: PathBuf,
    plain: reqwest::Client,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    /// Starts `serve --config CONFIG --addr .. --metrics-addr .. ARGS` in
    /// `dir` and waits until `/readyz` on the plain listener answers 200.
    fn start(dir: &Path, config: &Path, args: &[&str]) -> Result<Self> {
        let paths = paths()?;
        let port = free_port()?;
        let metrics_port = free_port()?;
        let stderr = dir.join("server.stderr.log");
        let mut cmd = Command::new(&paths.bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(["--reload-debounce-ms", "50"])
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr)?);
        clean_env(&mut cmd);
        let child = cmd.spawn().context("starting portcullis serve")?;
        // reqwest builds a TLS config even for a plain-HTTP client.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let plain = block_on(async { reqwest::Client::builder().no_proxy().build() })
            .context("plain HTTP client")?;
        let mut served = Self {
            child,
            port,
            metrics_port,
            stderr,
            plain,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = served.child.try_wait()? {
                bail!("serve exited with {status}\n{}", served.logs());
            }
            if let Ok((200, _)) = served.get_plain("/readyz") {
                return Ok(served);
            }
            if Instant::now() > deadline {
                bail!(
                    "not ready on the plain listener within 30 s\n{}",
                    served.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// GET on the plain-HTTP operations listener.
    fn get_plain(&self, path: &str) -> Result<(u16, String)> {
        let url = format!("http://127.0.0.1:{}{path}", self.metrics_port);
        let request = self.plain.get(&url).timeout(Duration::from_secs(5));
        block_on(async move {
            let response = request.send().await?;
            let status = response.status().as_u16();
            Ok((status, response.text().await?))
        })
    }

    /// POST on the plain listener (the webhook is not there).
    fn post_plain(&self, path: &str, body: &Json) -> Result<u16> {
        let url = format!("http://127.0.0.1:{}{path}", self.metrics_port);
        let request = self.plain.post(&url).json(body);
        block_on(async move { Ok(request.send().await?.status().as_u16()) })
    }

    fn metrics(&self) -> Result<String> {
        let (status, text) = self.get_plain("/metrics")?;
        ensure!(
            status == 200,
            "GET /metrics on the plain listener: {status}\n{text}"
        );
        Ok(text)
    }
}

/// A temporary directory holding certificates (`certs/`) and the standard
/// test config, for one test's server.
struct Setup {
    dir: tempfile::TempDir,
    paths: Paths,
    certs: Certs,
    config: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let paths = paths().expect("built");
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = generate_certs(&paths.bin, &dir.path().join("certs")).expect("certs");
        let config = write_default_config(&paths, dir.path()).expect("config");
        Self {
            dir,
            paths,
            certs,
            config,
        }
    }

    /// Serves with the key pair in `cert` and `key`, and `extra` flags.
    fn serve_with(&self, cert: &Path, key: &Path, extra: &[&str]) -> Served {
        let mut args = vec![
            "--tls-cert",
            path_str(cert).expect("utf-8"),
            "--tls-key",
            path_str(key).expect("utf-8"),
        ];
        args.extend_from_slice(extra);
        Served::start(self.dir.path(), &self.config, &args).expect("started")
    }

    /// Serves with the generated certificate and `extra` flags.
    fn serve(&self, extra: &[&str]) -> Served {
        self.serve_with(&self.certs.tls_crt, &self.certs.tls_key, extra)
    }
}

/// POSTs a review with `client`; the decoded `response` on 200.
fn review(client: &reqwest::Client, url: &str, body: &Json) -> Result<Json> {
    let request = client.post(url).json(body);
    block_on(async move {
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        ensure!(status == 200, "POST {status}: {text}");
        let value: Json = serde_json::from_str(&text)?;
        Ok(value["response"].clone())
    })
}

fn series(text: &str, name: &str) -> f64 {
    metric_value(text, name).unwrap_or(f64::NAN)
}

#[test]
fn probes_and_metrics_on_the_plain_listener_after_known_traffic() {
    let setup = Setup::new();
    let certs = &setup.certs;
    let served = setup.serve(&[]);
    let client = https_client(&certs.ca_pem, Proto::H2, &[]).expect("client");

    // Probes answer on the plain listener; the webhook does not live there.
    assert_eq!(served.get_plain("/healthz").expect("healthz").0, 200);
    let (status, ready) = served.get_plain("/readyz").expect("readyz");
    assert_eq!(status, 200, "{ready}");
    assert!(ready.contains("generation 1 with 3 policies"), "{ready}");
    let allowed = fixture("pod-allowed.json").expect("fixture");
    assert_eq!(served.post_plain("/validate", &allowed).expect("post"), 404);

    // Known traffic: 3 allowed and 2 denied validations, 1 mutation, 1 bad body.
    let denied = fixture("pod-denied.json").expect("fixture");
    for _ in 0..3 {
        let r = review(&client, &served.url("/validate"), &allowed).expect("allowed");
        assert_eq!(r["allowed"], true, "{r}");
    }
    for _ in 0..2 {
        let r = review(&client, &served.url("/validate"), &denied).expect("denied");
        assert_eq!(r["allowed"], false, "{r}");
    }
    let r = review(&client, &served.url("/mutate"), &allowed).expect("mutated");
    assert_eq!(r["allowed"], true, "{r}");
    let bad_request = client
        .post(served.url("/validate"))
        .header("content-type", "application/json")
        .body("{not json");
    let bad = block_on(async move { bad_request.send().await }).expect("bad body sent");
    assert_eq!(bad.status().as_u16(), 400);

    let text = served.metrics().expect("metrics");
    let expect = |name: &str, value: f64| {
        let got = series(&text, name);
        assert_eq!(got, value, "{name} is {got}, expected {value}\n{text}");
    };
    expect(
        r#"portcullis_requests_total{endpoint="/validate",operation="CREATE",result="allowed"}"#,
        3.0,
    );
    expect(
        r#"portcullis_requests_total{endpoint="/validate",operation="CREATE",result="denied"}"#,
        2.0,
    );
    expect(
        r#"portcullis_requests_total{endpoint="/validate",operation="",result="rejected"}"#,
        1.0,
    );
    expect(
        r#"portcullis_requests_total{endpoint="/mutate",operation="CREATE",result="allowed"}"#,
        1.0,
    );
    expect(
        r#"portcullis_request_duration_seconds_count{endpoint="/validate"}"#,
        6.0,
    );
    expect(
        r#"portcullis_policy_evaluations_total{policy="allowed-images",outcome="allow"}"#,
        3.0,
    );
    expect(
        r#"portcullis_policy_evaluations_total{policy="allowed-images",outcome="deny"}"#,
        2.0,
    );
    expect(
        r#"portcullis_policy_evaluations_total{policy="required-labels",outcome="allow"}"#,
        5.0,
    );
    expect(
        r#"portcullis_policy_evaluations_total{policy="default-labels",outcome="mutate"}"#,
        1.0,
    );
    expect(
        r#"portcullis_policy_evaluation_duration_seconds_count{policy="allowed-images"}"#,
        5.0,
    );
    expect("portcullis_policies_loaded", 3.0);
    expect("portcullis_policy_set_generation", 1.0);
    expect("portcullis_evaluations_in_flight", 0.0);
    expect("portcullis_tls_last_reload_failed", 0.0);
    let expiry = series(&text, "portcullis_tls_certificate_expiry_timestamp_seconds");
    let (_, pem) = x509_parser::pem::parse_x509_pem(&std::fs::read(&certs.tls_crt).expect("read"))
        .expect("pem");
    let not_after = pem
        .parse_x509()
        .expect("x509")
        .validity()
        .not_after
        .timestamp();
    assert_eq!(expiry, not_after as f64, "{text}");
    // No object names or uids in labels.
    assert!(
        !text.contains("e2e00001"),
        "a uid leaked into a label\n{text}"
    );
    assert!(
        !text.contains("\"evil\""),
        "an object name leaked into a label\n{text}"
    );
}

#[test]
fn json_logs_carry_one_line_per_decision_with_its_fields() {
    let setup = Setup::new();
    let certs = &setup.certs;
    let served = setup.serve(&["--log-format", "json"]);
    let client = https_client(&certs.ca_pem, Proto::H2, &[]).expect("client");
    let denied = fixture("pod-denied.json").expect("fixture");
    let r = review(&client, &served.url("/validate"), &denied).expect("denied");
    assert_eq!(r["allowed"], false);

    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let logs = served.logs();
        // Every line is JSON, not only the decision.
        let lines: Vec<Json> = logs
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}"))
            })
            .collect();
        if let Some(line) = lines
            .into_iter()
            .find(|l| l["message"] == "admission decision")
        {
            break line;
        }
        assert!(Instant::now() < deadline, "no decision line\n{logs}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(line["level"], "INFO", "{line}");
    // Events are flattened: their fields sit beside `message`.
    let fields = &line;
    assert_eq!(
        fields["uid"], "e2e00003-0000-4000-8000-000000000003",
        "{line}"
    );
    assert_eq!(fields["kind"], "Pod", "{line}");
    assert_eq!(fields["namespace"], "shop", "{line}");
    assert_eq!(fields["name"], "evil", "{line}");
    assert_eq!(fields["operation"], "CREATE", "{line}");
    assert_eq!(fields["allowed"], false, "{line}");
    assert_eq!(
        fields["policies"], "allowed-images=deny,required-labels=allow",
        "{line}"
    );
    assert!(
        fields["elapsed_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
        "{line}"
    );
}

/// A CA and a client certificate (clientAuth) it signed, as PEM.
struct ClientIdentity {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn client_identity(name: &str) -> ClientIdentity {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} client CA"));
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca, &ca_key);
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kube-apiserver");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).expect("client cert");
    ClientIdentity {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

fn mtls_client(server_ca: &[u8], identity: Option<&ClientIdentity>) -> reqwest::Client {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let config = match identity {
        None => tls_config(server_ca, Proto::H2).expect("tls config"),
        Some(identity) => {
            let certs: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .expect("client cert");
            let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).expect("key");
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(root_store(server_ca))
                .with_client_auth_cert(certs, key)
                .expect("client auth");
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            config
        }
    };
    block_on(async {
        reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
    })
    .expect("client")
}

fn root_store(ca_pem: &[u8]) -> rustls::RootCertStore {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.expect("pem")).expect("root");
    }
    roots
}

#[test]
fn client_certificates_are_required_with_a_client_ca() {
    let setup = Setup::new();
    let certs = &setup.certs;
    let apiserver = client_identity("cluster");
    let stranger = client_identity("other");
    let client_ca = setup.dir.path().join("client-ca.crt");
    std::fs::write(&client_ca, &apiserver.ca_pem).expect("write");
    let served = setup.serve(&["--client-ca", path_str(&client_ca).expect("utf-8")]);
    let allowed = fixture("pod-allowed.json").expect("fixture");
    let url = served.url("/validate");

    let good = mtls_client(&certs.ca_pem, Some(&apiserver));
    let r =
        review(&good, &url, &allowed).expect("a client certificate from the client CA is accepted");
    assert_eq!(r["allowed"], true, "{r}");

    let none = mtls_client(&certs.ca_pem, None);
    let err = review(&none, &url, &allowed).expect_err("no client certificate");
    let chain = format!("{err:#}");
    assert!(
        chain.contains("error sending request") || chain.contains("connection"),
        "expected a failed handshake, got {chain}"
    );

    let other = mtls_client(&certs.ca_pem, Some(&stranger));
    review(&other, &url, &allowed).expect_err("a client certificate from another CA");

    // Probes and metrics stay reachable without a client certificate.
    assert_eq!(served.get_plain("/healthz").expect("healthz").0, 200);
    assert_eq!(served.get_plain("/readyz").expect("readyz").0, 200);
}

/// A Kubernetes Secret volume: `tls.crt` and `tls.key` are symlinks through
/// `..data`, which the kubelet swaps atomically to a new timestamped
/// directory.
struct SecretVolume {
    dir: PathBuf,
    version: usize,
}

impl SecretVolume {
    fn new(dir: PathBuf, cert: &Path, key: &Path) -> Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let mut volume = Self { dir, version: 0 };
        volume.publish(cert, key)?;
        for name in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), volume.dir.join(name))?;
        }
        Ok(volume)
    }

    /// Writes a new version and swaps `..data` to it in one rename.
    fn publish(&mut self, cert: &Path, key: &Path) -> Result<()> {
        self.version += 1;
        let version = format!("..2026_11_22_v{}", self.version);
        let target = self.dir.join(&version);
        std::fs::create_dir(&target)?;
        std::fs::copy(cert, target.join("tls.crt"))?;
        std::fs::copy(key, target.join("tls.key"))?;
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&version, &tmp)?;
        std::fs::rename(&tmp, self.dir.join("..data"))?;
        Ok(())
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("tls.key")
    }
}

/// DER of the first certificate in a PEM file.
fn der_of(pem_file: &Path) -> Vec<u8> {
    let bytes = std::fs::read(pem_file).expect("read");
    let (_, pem) = x509_parser::pem::parse_x509_pem(&bytes).expect("pem");
    pem.contents
}

/// When a handshake happened and the DER of the certificate it was served.
type Handshakes = Arc<std::sync::Mutex<Vec<(Instant, Vec<u8>)>>>;

/// What a load run saw: requests answered, requests failed, every
/// handshake, and the errors.
type LoadReport = (usize, usize, Vec<(Instant, Vec<u8>)>, Vec<String>);

/// Load on the HTTPS listener, one new connection (so one handshake) per
/// request, recording which certificate each handshake was served.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    seen: Handshakes,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(ca_pem: &[u8], url: String, body: Json, workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let config = tls_config(ca_pem, Proto::H2).expect("tls");
            let client = block_on(async {
                reqwest::Client::builder()
                    .use_preconfigured_tls(config)
                    .pool_max_idle_per_host(0)
                    .tls_info(true)
                    .timeout(Duration::from_secs(10))
                    .no_proxy()
                    .build()
            })
            .expect("client");
            let (stop, ok, failed, seen, errors) = (
                stop.clone(),
                ok.clone(),
                failed.clone(),
                seen.clone(),
                errors.clone(),
            );
            let (url, body) = (url.clone(), body.clone());
            tasks.push(spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match client.post(&url).json(&body).send().await {
                        Ok(response) if response.status() == 200 => {
                            let der = response
                                .extensions()
                                .get::<reqwest::tls::TlsInfo>()
                                .and_then(|info| info.peer_certificate().map(<[u8]>::to_vec))
                                .unwrap_or_default();
                            let _ = response.bytes().await;
                            ok.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut seen) = seen.lock() {
                                seen.push((Instant::now(), der));
                            }
                        }
                        Ok(response) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut errors) = errors.lock() {
                                errors.push(format!("HTTP {}", response.status()));
                            }
                        }
                        Err(err) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut errors) = errors.lock() {
                                errors.push(format!("{err:?}"));
                            }
                        }
                    }
                }
            }));
        }
        Self {
            stop,
            ok,
            failed,
            seen,
            errors,
            tasks,
        }
    }

    /// The first time a handshake served `der`, waiting up to `timeout`.
    fn first_served(&self, der: &[u8], timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(seen) = self.seen.lock()
                && let Some((at, _)) = seen.iter().find(|(_, d)| d == der)
            {
                return Some(*at);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = block_on(task);
        }
        let seen = self.seen.lock().map(|s| s.clone()).unwrap_or_default();
        let errors = self.errors.lock().map(|e| e.clone()).unwrap_or_default();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            seen,
            errors,
        )
    }
}

#[test]
fn certificate_rotation_under_load_fails_no_handshake_and_refuses_a_bad_pair() {
    let setup = Setup::new();
    let (paths, dir, first) = (&setup.paths, &setup.dir, &setup.certs);
    let mut volume = SecretVolume::new(dir.path().join("secret"), &first.tls_crt, &first.tls_key)
        .expect("volume");
    let served = setup.serve_with(&volume.cert(), &volume.key(), &[]);
    let load = Load::start(
        &first.ca_pem,
        served.url("/validate"),
        fixture("pod-allowed.json").expect("fixture"),
        4,
    );
    let v1 = der_of(&first.tls_crt);
    assert!(
        load.first_served(&v1, Duration::from_secs(10)).is_some(),
        "v1 never served"
    );
    std::thread::sleep(Duration::from_millis(500));

    // A new certificate from the same CA (the caBundle stays), swapped in
    // the way the kubelet updates a Secret volume.
    let second_dir = dir.path().join("v2");
    let out = run_cli(
        &paths.bin,
        &[
            "certs",
            "--out",
            path_str(&second_dir).expect("utf-8"),
            "--dns",
            "localhost",
            "--ip",
            "127.0.0.1",
            "--ca-cert",
            path_str(&first.ca_crt).expect("utf-8"),
            "--ca-key",
            path_str(&first.ca_key).expect("utf-8"),
        ],
        None,
        CLI_TIMEOUT,
    )
    .expect("certs ran");
    assert!(out.status.success(), "{out}");
    assert!(!second_dir.join("ca.key").exists(), "the CA key was copied");
    let v2 = der_of(&second_dir.join("tls.crt"));
    let swapped = Instant::now();
    volume
        .publish(&second_dir.join("tls.crt"), &second_dir.join("tls.key"))
        .expect("swap");
    let served_at = load
        .first_served(&v2, Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "the new certificate was not served within 10 s\n{}",
                served.logs()
            )
        });
    let to_new = served_at.saturating_duration_since(swapped);
    std::thread::sleep(Duration::from_millis(500));

    // A bad pair: the new certificate with the old key. Refused; the good
    // one keeps serving.
    volume
        .publish(&second_dir.join("tls.crt"), &first.tls_key)
        .expect("bad swap");
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = served.metrics().expect("metrics");
        if series(&text, "portcullis_tls_last_reload_failed") == 1.0 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the bad pair was not refused\n{text}\n{}",
            served.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let refused_at = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let (ok, failed, seen, errors) = load.stop();

    assert_eq!(failed, 0, "failed requests during rotation: {errors:?}");
    assert!(
        series(&text, r#"portcullis_tls_reloads_total{result="success"}"#) >= 1.0,
        "{text}"
    );
    assert!(
        series(&text, r#"portcullis_tls_reloads_total{result="failure"}"#) >= 1.0,
        "{text}"
    );
    let after_refusal: Vec<_> = seen.iter().filter(|(at, _)| *at > refused_at).collect();
    assert!(
        !after_refusal.is_empty(),
        "no handshakes after the bad pair"
    );
    assert!(
        after_refusal.iter().all(|(_, der)| *der == v2),
        "a handshake after the bad pair was not served the good certificate"
    );
    let logs = served.logs();
    assert!(logs.contains("new certificate refused"), "{logs}");
    let v1_count = seen.iter().filter(|(_, d)| *d == v1).count();
    let v2_count = seen.iter().filter(|(_, d)| *d == v2).count();
    eprintln!(
        "rotation under load: {ok} requests, each on a new TLS connection ({v1_count} served the old \
         certificate, {v2_count} the new), {failed} failed; new certificate served {} ms after the \
         volume swap; bad pair refused, {} handshakes after it all served the good certificate",
        to_new.as_millis(),
        after_refusal.len()
    );
}
