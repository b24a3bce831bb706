//! Harness for the Portcullis end-to-end tests.
//!
//! The tests start a real server with real TLS certificates that the
//! binary itself generates, and talk to it the way the API server does:
//! HTTPS with a rustls client that trusts only the generated CA and checks
//! the server name against the certificate's SANs. A server runs in this
//! process ([`Server::in_process`]: `portcullis::app` on port 0, the same
//! flags and request path) unless the test needs what only a process
//! shows (signals, exit codes, its log, resource limits): then it is the
//! real `portcullis` binary ([`Server::start`]; built by `make build`, i.e.
//! `target/release/portcullis`, or `$PORTCULLIS_BIN`).
//!
//! Everything here is synchronous: requests run on one tokio runtime owned by
//! the harness, so plain `#[test]` functions can share one server per test
//! binary (see [`shared`]).

use std::fmt;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
pub use portcullis_kube::review::{ReviewBuilder, resource_of};
pub use reqwest::{StatusCode, Version};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
pub use serde_json::{Value as Json, json};

pub mod kube;
pub mod registry;

/// How long the server may take to answer `/readyz` with 200 after start.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for one HTTP request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for one CLI invocation (`certs`, `eval`, a failing `serve`).
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// The audit annotation every answer carries: the policy-set generation
/// that answered, as a decimal string.
///
/// The brief named it `portcullis.dev/generation`, but kube-apiserver
/// prefixes every webhook audit-annotation key with `<webhook name>/` and
/// drops (with only a log warning) any resulting key that does not have
/// exactly one `/` (`checkKeyFormat` in k8s.io/apiserver's admission
/// package). A key that already has a prefix can therefore never reach the
/// audit log: the unprefixed `generation` is the key that works, and it is
/// what the host sends. [`check_answer`] also rejects any key with a `/`.
pub const GENERATION_ANNOTATION: &str = "generation";

// ---------------------------------------------------------------------------
// Locations
// ---------------------------------------------------------------------------

/// The workspace root (`CARGO_MANIFEST_DIR/..`).
pub fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    root.canonicalize().unwrap_or(root)
}

/// The shared third-party corpus, `<repo>/../shared/corpus` (read in place,
/// never copied into the repository).
pub fn corpus_dir() -> PathBuf {
    repo_root().join("../shared/corpus")
}

/// This crate's own fixtures, `tests/fixtures`.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Reads and parses `tests/fixtures/<name>`.
pub fn fixture(name: &str) -> Result<Json> {
    read_json(&fixtures_dir().join(name))
}

/// Reads and parses a JSON file.
pub fn read_json(path: &Path) -> Result<Json> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {} as JSON", path.display()))
}

/// The binary and the policy modules under test.
#[derive(Debug, Clone)]
pub struct Paths {
    pub root: PathBuf,
    pub bin: PathBuf,
    /// `target/wasm32-wasip1/policy`: every policy module `make build` makes.
    pub modules: PathBuf,
    pub allowed_images: PathBuf,
    pub required_labels: PathBuf,
    pub default_labels: PathBuf,
}

/// Locates the binary (`$PORTCULLIS_BIN` or `target/release/portcullis`) and
/// the three policy modules (`target/wasm32-wasip1/policy/*.wasm`); fails with
/// "run `make build` first" when any is missing.
pub fn paths() -> Result<Paths> {
    static PATHS: OnceLock<Result<Paths, String>> = OnceLock::new();
    PATHS
        .get_or_init(|| locate().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn locate() -> Result<Paths> {
    let root = repo_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { root.join(t) })
        .unwrap_or_else(|| root.join("target"));
    let bin = std::env::var_os("PORTCULLIS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target.join("release/portcullis"));
    let modules = target.join("wasm32-wasip1/policy");
    let paths = Paths {
        root,
        bin,
        modules: modules.clone(),
        allowed_images: modules.join("allowed_images.wasm"),
        required_labels: modules.join("required_labels.wasm"),
        default_labels: modules.join("default_labels.wasm"),
    };
    let missing: Vec<String> = [
        &paths.bin,
        &paths.allowed_images,
        &paths.required_labels,
        &paths.default_labels,
    ]
    .into_iter()
    .filter(|p| !p.is_file())
    .map(|p| p.display().to_string())
    .collect();
    ensure!(
        missing.is_empty(),
        "missing {}: run `make build` first (or set PORTCULLIS_BIN to the portcullis binary)",
        missing.join(", ")
    );
    Ok(paths)
}

// ---------------------------------------------------------------------------
// Running the CLI
// ---------------------------------------------------------------------------

/// What one CLI invocation produced.
#[derive(Debug)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
    /// stdout and stderr together, for "the message mentions X" checks.
    pub fn all_output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl fmt::Display for CliOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            tail(&self.stdout, 16 * 1024),
            tail(&self.stderr, 16 * 1024)
        )
    }
}

/// Runs `bin args...` with the given stdin, capturing stdout and stderr (in
/// files, so a large output cannot dead-lock), killing it after `timeout`.
pub fn run_cli(
    bin: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<CliOutput> {
    let mut out = tempfile::tempfile().context("creating a temporary file")?;
    let mut err = tempfile::tempfile().context("creating a temporary file")?;
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(out.try_clone()?)
        .stderr(err.try_clone()?);
    clean_env(&mut cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {} {}", bin.display(), args.join(" ")))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().context("child stdin")?;
        // The child may exit without reading; a broken pipe is its answer.
        let _ = pipe.write_all(input);
    }
    let status = wait_timeout(&mut child, timeout)?;
    let status = match status {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{} {} did not exit within {timeout:?}",
                bin.display(),
                args.join(" ")
            );
        }
    };
    Ok(CliOutput {
        status,
        stdout: read_back(&mut out)?,
        stderr: read_back(&mut err)?,
    })
}

fn read_back(file: &mut fs::File) -> Result<String> {
    file.seek(SeekFrom::Start(0))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Child processes get no `PORTCULLIS_*` variables from our environment
/// (every flag has one), so only the flags we pass count.
pub fn clean_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PORTCULLIS_") {
            cmd.env_remove(key);
        }
    }
}

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

/// Certificates written by `portcullis certs`.
#[derive(Debug, Clone)]
pub struct Certs {
    pub dir: PathBuf,
    pub ca_crt: PathBuf,
    pub ca_key: PathBuf,
    pub tls_crt: PathBuf,
    pub tls_key: PathBuf,
    /// The bytes of `ca.crt` (PEM).
    pub ca_pem: Vec<u8>,
    /// What the command printed.
    pub output: String,
}

/// Runs `portcullis certs --out DIR --dns localhost --ip 127.0.0.1` and checks
/// its result: the four PEM files exist and the last line of stdout is the
/// base64 of `ca.crt`.
pub fn generate_certs(bin: &Path, dir: &Path) -> Result<Certs> {
    let dir_s = path_str(dir)?;
    let out = run_cli(
        bin,
        &[
            "certs",
            "--out",
            dir_s,
            "--dns",
            "localhost",
            "--ip",
            "127.0.0.1",
        ],
        None,
        CLI_TIMEOUT,
    )?;
    ensure!(out.status.success(), "`portcullis certs` failed\n{out}");
    let certs = Certs {
        dir: dir.to_path_buf(),
        ca_crt: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        tls_crt: dir.join("tls.crt"),
        tls_key: dir.join("tls.key"),
        ca_pem: Vec::new(),
        output: out.stdout.clone(),
    };
    for f in [&certs.ca_crt, &certs.ca_key, &certs.tls_crt, &certs.tls_key] {
        ensure!(
            f.is_file(),
            "`portcullis certs` did not write {}\n{out}",
            f.display()
        );
    }
    let ca_pem =
        fs::read(&certs.ca_crt).with_context(|| format!("reading {}", certs.ca_crt.display()))?;
    let last = out
        .stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .with_context(|| format!("`portcullis certs` printed nothing on stdout\n{out}"))?;
    let decoded = BASE64.decode(last.trim()).with_context(|| {
        format!("last stdout line of `portcullis certs` is not base64: {last:?}")
    })?;
    ensure!(
        decoded == ca_pem,
        "last stdout line of `portcullis certs` is not the base64 of ca.crt\nline: {last:?}\nca.crt:\n{}",
        String::from_utf8_lossy(&ca_pem)
    );
    Ok(Certs { ca_pem, ..certs })
}

pub fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("path is not UTF-8: {}", p.display()))
}

// ---------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------

/// YAML-quotes a string (JSON strings are YAML double-quoted scalars).
pub fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

/// Writes the standard test config into `dir/config.yaml` and returns its
/// path. `allowed-images` is referenced by absolute path; the other two are
/// copied next to the config and referenced relatively (one of them in a
/// subdirectory), so both ways of naming a module are exercised.
///
/// - `allowed-images`: enforce; CREATE/UPDATE of pods and deployments.apps,
///   not in kube-system; allows `registry.k8s.io/`, `docker.io/library/nginx`,
///   `ghcr.io/acme/*`.
/// - `required-labels`: `app` present, `team` matching `^[a-z]+$`.
/// - `default-labels`: adds label `portcullis.dev/managed: "true"` and
///   annotation `portcullis.dev/owner: platform`.
pub fn write_default_config(paths: &Paths, dir: &Path) -> Result<PathBuf> {
    copy_modules(paths, dir)?;
    let yaml = format!(
        r#"# portcullis-e2e: the standard test config
defaults: {{ timeoutMs: 1000, memoryLimit: 32Mi, onError: deny, mode: enforce }}
policies:
  - name: allowed-images
    module: {allowed}
    mode: enforce
    onError: deny
    match:
      operations: [CREATE, UPDATE]
      resources: [pods, deployments.apps]
      namespaces: {{ exclude: [kube-system] }}
    settings: {{ allowed: ["registry.k8s.io/", "docker.io/library/nginx", "ghcr.io/acme/*"] }}
  - name: required-labels
    module: required_labels.wasm
    settings: {{ labels: {{ app: null, team: "^[a-z]+$" }} }}
  - name: default-labels
    module: modules/default_labels.wasm
    settings:
      labels: {{ "portcullis.dev/managed": "true" }}
      annotations: {{ "portcullis.dev/owner": "platform" }}
"#,
        allowed = yaml_str(path_str(&paths.allowed_images)?),
    );
    let path = dir.join("config.yaml");
    fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Where the policy library's end-to-end config fragments live: one file
/// per policy, `tests/library/<policy>.yaml`, each a YAML list of policy
/// entries (see [`write_library_config`]).
pub fn library_dir() -> PathBuf {
    repo_root().join("tests/library")
}

/// Writes the policy library's test config into `dir/config.yaml`: every
/// fragment in [`library_dir`] (in file-name order) under one `policies:`
/// key, with `{{modules}}` replaced by the directory `make build` puts the
/// modules in. Each library policy's tests reach it on its own path
/// (`/validate/<name>`, `/mutate/<name>`), so fragments do not interfere.
pub fn write_library_config(paths: &Paths, dir: &Path) -> Result<PathBuf> {
    let modules = path_str(&paths.modules)?;
    let mut fragments: Vec<PathBuf> = fs::read_dir(library_dir())
        .with_context(|| format!("reading {}", library_dir().display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    fragments.sort();
    let mut yaml = String::from(
        "# portcullis-e2e: the policy library (tests/library/*.yaml)\n\
         defaults: { timeoutMs: 1000, memoryLimit: 32Mi, onError: deny, mode: enforce }\n\
         policies:\n",
    );
    for fragment in &fragments {
        let text = fs::read_to_string(fragment)
            .with_context(|| format!("reading {}", fragment.display()))?;
        yaml.push_str(&format!("# {}\n", fragment.display()));
        yaml.push_str(&text.replace("{{modules}}", modules));
        yaml.push('\n');
    }
    let path = dir.join("config.yaml");
    fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Copies `required_labels.wasm` to `dir/` and `default_labels.wasm` to
/// `dir/modules/`, for configs that name them relatively.
pub fn copy_modules(paths: &Paths, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir.join("modules"))?;
    fs::copy(&paths.required_labels, dir.join("required_labels.wasm"))
        .with_context(|| format!("copying {}", paths.required_labels.display()))?;
    fs::copy(
        &paths.default_labels,
        dir.join("modules/default_labels.wasm"),
    )
    .with_context(|| format!("copying {}", paths.default_labels.display()))?;
    Ok(())
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

// ---------------------------------------------------------------------------
// HTTPS client
// ---------------------------------------------------------------------------

/// The runtime all requests run on.
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("e2e-client")
        .build()
        .unwrap_or_else(|e| panic!("building the tokio runtime: {e}"))
});

/// Runs a future to completion on the harness runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    RUNTIME.block_on(f)
}

/// Spawns a task on the harness runtime (e.g. a load generator).
pub fn spawn<F>(f: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    RUNTIME.spawn(f)
}

/// Which HTTP versions a client offers in ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// ALPN `h2`, `http/1.1`: negotiates HTTP/2 with a server that speaks it.
    H2,
    /// ALPN `http/1.1` only, and `http1_only()`.
    H1,
}

impl Proto {
    pub const ALL: [Proto; 2] = [Proto::H2, Proto::H1];
    pub fn expected_version(self) -> Version {
        match self {
            Proto::H2 => Version::HTTP_2,
            Proto::H1 => Version::HTTP_11,
        }
    }
}

/// A rustls client config (ring provider) that trusts only the CA(s) in
/// `ca_pem`, offering the ALPN protocols of `proto`.
pub fn tls_config(ca_pem: &[u8], proto: Proto) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.context("parsing CA PEM")?;
        roots.add(cert).context("adding the CA to the root store")?;
    }
    ensure!(!roots.is_empty(), "no certificate in the CA PEM");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("rustls protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = match proto {
        Proto::H2 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        Proto::H1 => vec![b"http/1.1".to_vec()],
    };
    Ok(config)
}

/// An HTTPS client that trusts only `ca_pem`. `resolve` pins host names to
/// addresses (to test a name that is not in the certificate).
pub fn https_client(
    ca_pem: &[u8],
    proto: Proto,
    resolve: &[(&str, SocketAddr)],
) -> Result<reqwest::Client> {
    let _guard = RUNTIME.enter();
    let mut builder = reqwest::Client::builder()
        .use_preconfigured_tls(tls_config(ca_pem, proto)?)
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(10))
        .no_proxy();
    if proto == Proto::H1 {
        builder = builder.http1_only();
    }
    for (name, addr) in resolve {
        builder = builder.resolve(name, *addr);
    }
    builder.build().context("building the HTTPS client")
}

/// An HTTP response, read completely.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn content_type(&self) -> String {
        self.headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    }
    pub fn json(&self) -> Result<Json> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("response body is not JSON:\n{self}"))
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "HTTP {} {:?} content-type={:?}\n{}",
            self.status,
            self.version,
            self.content_type(),
            tail(&self.text(), 8 * 1024)
        )
    }
}

/// Sends a request built by `build` and reads the whole response.
pub fn send(request: reqwest::RequestBuilder) -> Result<Reply> {
    block_on(async move {
        let resp = request
            .send()
            .await
            .map_err(|e| anyhow!("{}", error_chain(&e)))?;
        let status = resp.status();
        let version = resp.version();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .map_err(|e| anyhow!("reading the response body: {}", error_chain(&e)))?
            .to_vec();
        Ok(Reply {
            status,
            version,
            headers,
            body,
        })
    })
}

/// An error with all its sources, for messages and "mentions X" checks.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

/// A running server: `portcullis serve` as a child process (killed on
/// drop), or the same server run in this process ([`Server::in_process`]),
/// stopped and drained on drop.
pub struct Server {
    backend: Backend,
    pub port: u16,
    pub paths: Paths,
    pub certs: Certs,
    pub config: PathBuf,
    h2: reqwest::Client,
    h1: reqwest::Client,
    // Last: removed after the server is gone.
    dir: Option<tempfile::TempDir>,
}

/// Where a [`Server`] runs.
enum Backend {
    /// The real binary: for what only a process shows (signals, exit
    /// codes, its log, resource limits).
    Process(Process),
    /// `portcullis::app` on a thread of the test process, on port 0.
    InProcess(InProcess),
}

/// A `portcullis serve` child process.
struct Process {
    child: Mutex<Child>,
    /// Kills the server if this process dies without dropping us (a
    /// `static` server is never dropped).
    watchdog: Mutex<Option<(Child, ChildStdin)>>,
    stdout_log: PathBuf,
    stderr_log: PathBuf,
}

/// An in-process server: a thread with its own runtime, running
/// `portcullis::app::start` until `stop` fires.
struct InProcess {
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    control: portcullis::control::ControlHandle,
    thread: Mutex<Option<std::thread::JoinHandle<Result<()>>>>,
}

impl InProcess {
    /// Parses `args` as `portcullis serve` would (the same flags and
    /// defaults), binds, loads and starts serving; returns once the server
    /// has loaded its policies and listens.
    fn start(args: &[std::ffi::OsString]) -> Result<(Self, SocketAddr)> {
        use clap::Parser as _;
        let cli = portcullis::cli::Cli::try_parse_from(
            std::iter::once(std::ffi::OsString::from("portcullis")).chain(args.iter().cloned()),
        )
        .context("parsing the serve flags")?;
        let portcullis::cli::Command::Serve(serve) = cli.command else {
            bail!("not a serve command: {args:?}");
        };
        let listeners = serve.listeners().context("binding")?;
        let options = serve.options();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("in-process-server".into())
            .spawn(move || -> Result<()> {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .thread_name("in-process-worker")
                    .build()?;
                runtime.block_on(async move {
                    let shutdown = async move {
                        let _ = stopped.await;
                    };
                    let server = match portcullis::app::start(listeners, options, shutdown).await {
                        Ok(server) => server,
                        Err(error) => {
                            let error = anyhow::Error::new(error);
                            let _ = started_tx.send(Err(anyhow!("{error:#}")));
                            return Err(error);
                        }
                    };
                    let _ = started_tx.send(Ok((server.https_addr(), server.control())));
                    server.wait().await.map_err(anyhow::Error::new)
                })
            })
            .context("starting the server thread")?;
        let (addr, control) = started_rx
            .recv_timeout(READY_TIMEOUT)
            .context("the in-process server did not start in time")??;
        Ok((
            Self {
                stop: Mutex::new(Some(stop)),
                control,
                thread: Mutex::new(Some(thread)),
            },
            addr,
        ))
    }

    fn is_running(&self) -> bool {
        self.thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|thread| !thread.is_finished())
    }

    /// Stops the server and waits for its drain.
    fn stop(&self) -> Result<()> {
        if let Some(stop) = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = stop.send(());
        }
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        match thread.map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => bail!("the in-process server thread panicked"),
            None => Ok(()),
        }
    }
}

impl Server {
    /// Starts a server with the standard config ([`write_default_config`]).
    pub fn start_default() -> Result<Server> {
        Server::start(write_default_config)
    }

    /// Generates certificates, lets `write_config(paths, dir)` write a config
    /// into the server's temporary directory (returning its path), starts
    /// `portcullis serve` and waits until `/readyz` answers 200.
    pub fn start(write_config: impl FnOnce(&Paths, &Path) -> Result<PathBuf>) -> Result<Server> {
        Server::start_with(&[], write_config)
    }

    /// [`Server::start`] with extra `serve` flags (e.g.
    /// `["--reload-debounce-ms", "50"]`).
    pub fn start_with(
        args: &[&str],
        write_config: impl FnOnce(&Paths, &Path) -> Result<PathBuf>,
    ) -> Result<Server> {
        Server::launch(args, Readiness::Ready, write_config)
    }

    /// Like [`Server::start_with`], but waits only until `/healthz` answers
    /// 200: for a server that serves without being ready (`--allow-empty`
    /// with a broken config).
    pub fn start_alive(
        args: &[&str],
        write_config: impl FnOnce(&Paths, &Path) -> Result<PathBuf>,
    ) -> Result<Server> {
        Server::launch(args, Readiness::Alive, write_config)
    }

    fn launch(
        args: &[&str],
        readiness: Readiness,
        write_config: impl FnOnce(&Paths, &Path) -> Result<PathBuf>,
    ) -> Result<Server> {
        let paths = paths()?;
        let mut dir = tempfile::Builder::new()
            .prefix("portcullis-e2e-")
            .tempdir()
            .context("creating a temporary directory")?;
        let certs = generate_certs(&paths.bin, &dir.path().join("certs"))?;
        let config = write_config(&paths, dir.path())?;
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        // The free port may be taken by someone else before the server binds
        // it: then try another one.
        let mut attempt = 1;
        loop {
            let mut server =
                Server::spawn(paths.clone(), dir, certs.clone(), config.clone(), &args)?;
            match server.wait_for(readiness) {
                Ok(()) => return Ok(server),
                Err(e) => {
                    let port_taken =
                        !server.is_running() && server.logs().to_lowercase().contains("in use");
                    if !port_taken || attempt >= 3 {
                        return Err(e);
                    }
                    attempt += 1;
                    dir = server.dir.take().context("server directory")?;
                }
            }
        }
    }

    /// Starts the server in this test process (see [`InProcess`]): the same
    /// flags, start-up and request path as [`Server::start`], without a
    /// process of its own. Signals, exit codes and the server's log are
    /// only seen with a process: use [`Server::start`] to test those.
    pub fn in_process(
        write_config: impl FnOnce(&Paths, &Path) -> Result<PathBuf>,
    ) -> Result<Server> {
        Server::in_process_with(&[], write_config)
    }

    /// [`Server::in_process`] with extra `serve` flags.
    pub fn in_process_with(
        args: &[&str],
        write_config: impl FnOnce(&Paths, &Path) -> Result<PathBuf>,
    ) -> Result<Server> {
        let paths = paths()?;
        let dir = tempfile::Builder::new()
            .prefix("portcullis-e2e-")
            .tempdir()
            .context("creating a temporary directory")?;
        let certs = generate_certs(&paths.bin, &dir.path().join("certs"))?;
        let config = write_config(&paths, dir.path())?;
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        // Port 0: the listener is bound before the server starts, so no
        // other process can take the port in between.
        let all = own_args(&config, 0, &certs, &args);
        let (server, addr) = InProcess::start(&all)?;
        Ok(Server {
            backend: Backend::InProcess(server),
            port: addr.port(),
            h2: https_client(&certs.ca_pem, Proto::H2, &[])?,
            h1: https_client(&certs.ca_pem, Proto::H1, &[])?,
            paths,
            certs,
            config,
            dir: Some(dir),
        })
    }

    fn spawn(
        paths: Paths,
        dir: tempfile::TempDir,
        certs: Certs,
        config: PathBuf,
        args: &[String],
    ) -> Result<Server> {
        let port = free_port()?;
        let stdout_log = dir.path().join("server.stdout.log");
        let stderr_log = dir.path().join("server.stderr.log");
        let mut cmd = Command::new(&paths.bin);
        cmd.args(own_args(&config, port, &certs, args))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout_log)?)
            .stderr(fs::File::create(&stderr_log)?);
        clean_env(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} serve", paths.bin.display()))?;
        let watchdog = spawn_watchdog(child.id(), dir.path()).ok();
        Ok(Server {
            backend: Backend::Process(Process {
                child: Mutex::new(child),
                watchdog: Mutex::new(watchdog),
                stdout_log,
                stderr_log,
            }),
            port,
            h2: https_client(&certs.ca_pem, Proto::H2, &[])?,
            h1: https_client(&certs.ca_pem, Proto::H1, &[])?,
            paths,
            certs,
            config,
            dir: Some(dir),
        })
    }

    fn wait_for(&self, readiness: Readiness) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let url = self.url(match readiness {
            Readiness::Ready => "/readyz",
            Readiness::Alive => "/healthz",
        });
        let mut last = String::from("no attempt");
        loop {
            if let Some(status) = self.exit_status()? {
                bail!(
                    "portcullis serve exited with {status} before it was ready (last {url} attempt: {last})\n{}",
                    self.logs()
                );
            }
            match send(self.h2.get(&url).timeout(Duration::from_secs(2))) {
                Ok(reply) if reply.status == StatusCode::OK => return Ok(()),
                Ok(reply) => last = format!("HTTP {}: {}", reply.status, tail(&reply.text(), 500)),
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() >= deadline {
                bail!(
                    "GET {url} did not answer 200 within {READY_TIMEOUT:?} (last: {last})\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn process(&self) -> Result<&Process> {
        match &self.backend {
            Backend::Process(process) => Ok(process),
            Backend::InProcess(_) => {
                bail!("an in-process server has no process: start it with Server::start")
            }
        }
    }

    /// The server's temporary directory (config, certs, logs).
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map_or(Path::new("."), tempfile::TempDir::path)
    }

    /// The socket address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `https://localhost:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// `https://127.0.0.1:PORT{path}`.
    pub fn ip_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// The client for `proto`, trusting only this server's CA.
    pub fn client(&self, proto: Proto) -> &reqwest::Client {
        match proto {
            Proto::H2 => &self.h2,
            Proto::H1 => &self.h1,
        }
    }

    /// `GET path` over HTTP/2.
    pub fn get(&self, path: &str) -> Result<Reply> {
        self.get_over(Proto::H2, path)
    }

    pub fn get_over(&self, proto: Proto, path: &str) -> Result<Reply> {
        send(self.client(proto).get(self.url(path))).with_context(|| format!("GET {path}"))
    }

    /// `POST path` with the given Content-Type (none when `None`) and body.
    pub fn post(
        &self,
        proto: Proto,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Reply> {
        let mut req = self.client(proto).post(self.url(path)).body(body);
        if let Some(ct) = content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        send(req).with_context(|| format!("POST {path} ({proto:?})"))
    }

    /// Posts an AdmissionReview over HTTP/2 and checks the answer is
    /// well-formed for it (see [`check_answer`]).
    pub fn review(&self, path: &str, review: &Json) -> Result<Answer> {
        self.review_over(Proto::H2, path, review)
    }

    pub fn review_over(&self, proto: Proto, path: &str, review: &Json) -> Result<Answer> {
        let reply = self.post(
            proto,
            path,
            Some("application/json"),
            serde_json::to_vec(review)?,
        )?;
        ensure!(
            reply.version == proto.expected_version(),
            "POST {path}: expected {:?}, got {:?}",
            proto.expected_version(),
            reply.version
        );
        check_answer(review, &reply)
            .with_context(|| format!("POST {path} ({proto:?}) with request {}", describe(review)))
    }

    /// The tail of the server's stdout and stderr.
    pub fn logs(&self) -> String {
        let Backend::Process(process) = &self.backend else {
            return "(an in-process server logs nothing of its own)".to_string();
        };
        let read = |p: &Path| {
            fs::read(p)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        format!(
            "--- server stdout ({}) ---\n{}\n--- server stderr ({}) ---\n{}",
            process.stdout_log.display(),
            tail(&read(&process.stdout_log), 8 * 1024),
            process.stderr_log.display(),
            tail(&read(&process.stderr_log), 8 * 1024)
        )
    }

    /// Runs one test body: an error or a panic fails the test and prints the
    /// server's logs.
    pub fn test(&self, body: impl FnOnce(&Server) -> Result<()>) {
        struct LogsOnPanic<'a>(&'a Server);
        impl Drop for LogsOnPanic<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    eprintln!("{}", self.0.logs());
                }
            }
        }
        let guard = LogsOnPanic(self);
        let result = body(self);
        drop(guard);
        if let Err(e) = result {
            panic!("{e:?}\n{}", self.logs());
        }
    }

    /// Whether the server is still running.
    pub fn is_running(&self) -> bool {
        match &self.backend {
            Backend::Process(process) => matches!(process.lock_child().try_wait(), Ok(None)),
            Backend::InProcess(server) => server.is_running(),
        }
    }

    /// The server's process id.
    ///
    /// # Panics
    /// For an in-process server, which has none of its own.
    pub fn pid(&self) -> u32 {
        match self.process() {
            Ok(process) => process.lock_child().id(),
            Err(e) => panic!("{e}"),
        }
    }

    /// The server's exit status, once it has exited (never, in process).
    pub fn exit_status(&self) -> Result<Option<std::process::ExitStatus>> {
        match &self.backend {
            Backend::Process(process) => Ok(process.lock_child().try_wait()?),
            Backend::InProcess(_) => Ok(None),
        }
    }

    /// Sends SIGTERM (with `kill -TERM`), as the kubelet does to stop a pod.
    pub fn terminate(&self) -> Result<()> {
        let kill = run_cli(
            Path::new("kill"),
            &["-TERM", &self.pid().to_string()],
            None,
            Duration::from_secs(10),
        )?;
        ensure!(kill.status.success(), "kill -TERM failed: {kill}");
        Ok(())
    }

    /// Polls until the process has exited, for at most `within`; its
    /// status.
    pub fn wait_exit(&self, within: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exit_status()? {
                return Ok(status);
            }
            ensure!(
                Instant::now() < deadline,
                "the server still runs {within:?} later\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asks an in-process server to reload, as SIGHUP asks a process.
    pub fn reload(&self) -> Result<()> {
        match &self.backend {
            Backend::Process(_) => self.signal_hup(),
            Backend::InProcess(server) => {
                server.control.reload();
                Ok(())
            }
        }
    }

    /// Stops an in-process server and waits for its drain; the server's
    /// own error, if it stopped with one.
    pub fn stop_in_process(&self) -> Result<()> {
        match &self.backend {
            Backend::InProcess(server) => server.stop(),
            Backend::Process(_) => bail!("not an in-process server"),
        }
    }

    /// Sends SIGHUP to the server (with `kill -HUP`), which reloads its
    /// policies. Fails if the server is not running.
    pub fn signal_hup(&self) -> Result<()> {
        self.process()?;
        ensure!(
            self.is_running(),
            "cannot send SIGHUP: the server is not running\n{}",
            self.logs()
        );
        let out = run_cli(
            Path::new("kill"),
            &["-HUP", &self.pid().to_string()],
            None,
            CLI_TIMEOUT,
        )?;
        ensure!(
            out.status.success(),
            "kill -HUP {} failed\n{out}",
            self.pid()
        );
        Ok(())
    }

    /// The file the server's stderr (its log) goes to.
    ///
    /// # Panics
    /// For an in-process server, which has no log file.
    pub fn stderr_log(&self) -> &Path {
        match self.process() {
            Ok(process) => &process.stderr_log,
            Err(e) => panic!("{e}"),
        }
    }

    /// `GET /policies` (HTTP 200, JSON).
    pub fn policies(&self) -> Result<Json> {
        let reply = self.get("/policies")?;
        ensure!(
            reply.status == StatusCode::OK,
            "GET /policies: expected 200, got\n{reply}"
        );
        reply.json()
    }

    /// `GET /metrics` (HTTP 200), the Prometheus text.
    pub fn metrics(&self) -> Result<String> {
        let reply = self.get("/metrics")?;
        ensure!(
            reply.status == StatusCode::OK,
            "GET /metrics: expected 200, got\n{reply}"
        );
        Ok(reply.text())
    }
}

/// What [`Server::launch`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Readiness {
    /// `/readyz` answers 200: a policy set is loaded.
    Ready,
    /// `/healthz` answers 200: the server is up.
    Alive,
}

/// [`serve_args`] then the test's `args`; the harness's module cache is
/// dropped when the test chose one.
fn own_args(config: &Path, port: u16, certs: &Certs, args: &[String]) -> Vec<std::ffi::OsString> {
    let mut own = serve_args(config, port, certs);
    if args
        .iter()
        .any(|a| a == "--cache-dir" || a == "--no-module-cache")
    {
        // The test chose the cache: drop the harness's own.
        own.truncate(own.len() - 2);
    }
    // Stopping a test's server need not wait for endpoints to drop it;
    // the drain's own tests choose their delay.
    if !args
        .iter()
        .any(|a| a.split('=').next() == Some("--shutdown-delay"))
    {
        own.push("--shutdown-delay=0".into());
    }
    // `{port}` in a flag is the port this server listens on (e.g. a URL
    // it tells others to call it at).
    own.extend(
        args.iter()
            .map(|a| std::ffi::OsString::from(a.replace("{port}", &port.to_string()))),
    );
    own
}

/// `serve --config CONFIG --addr 127.0.0.1:PORT --tls-cert .. --tls-key ..`.
fn serve_args(config: &Path, port: u16, certs: &Certs) -> Vec<std::ffi::OsString> {
    // Each server gets its own compiled-module cache, so what it compiles
    // does not depend on what other tests (or earlier runs) compiled.
    let cache = config
        .parent()
        .unwrap_or(Path::new("."))
        .join("module-cache");
    vec![
        "serve".into(),
        "--config".into(),
        config.into(),
        "--addr".into(),
        format!("127.0.0.1:{port}").into(),
        "--tls-cert".into(),
        certs.tls_crt.as_os_str().into(),
        "--tls-key".into(),
        certs.tls_key.as_os_str().into(),
        // The tests read /policies and /metrics over HTTPS; the default
        // (not served there) is tested in edge.rs.
        "--status-on-https=true".into(),
        "--cache-dir".into(),
        cache.into(),
    ]
}

/// Runs `portcullis serve --config CONFIG ... ARGS` (certificates generated
/// in `dir/certs`, a free port) for a server expected to exit by itself,
/// e.g. on a broken config; fails if it still runs after `timeout`.
pub fn serve_expecting_exit(
    paths: &Paths,
    dir: &Path,
    config: &Path,
    args: &[&str],
    timeout: Duration,
) -> Result<CliOutput> {
    let certs = generate_certs(&paths.bin, &dir.join("certs"))?;
    let mut all: Vec<String> = serve_args(config, free_port()?, &certs)
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    all.extend(args.iter().map(|a| (*a).to_owned()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    run_cli(&paths.bin, &all, None, timeout)
}

/// The value of the sample `series` (a metric name with its labels exactly
/// as exposed, e.g. `portcullis_reloads_total{result="success"}`) in
/// Prometheus/OpenMetrics text, if present.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let rest = line.strip_prefix(series)?;
            let value = rest.strip_prefix(' ')?.split_whitespace().next()?;
            value.parse().ok()
        })
}

impl Process {
    fn lock_child(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        match &mut self.backend {
            Backend::Process(process) => process.kill(),
            Backend::InProcess(server) => {
                if let Err(e) = server.stop() {
                    eprintln!("the in-process server stopped with an error: {e:#}");
                }
            }
        }
    }
}

impl Process {
    fn kill(&mut self) {
        // Disarm the watchdog first, so it neither kills nor deletes anything.
        if let Some((mut dog, mut stdin)) = self
            .watchdog
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = stdin.write_all(b"disarm\n");
            drop(stdin);
            let _ = wait_timeout(&mut dog, Duration::from_secs(5));
            let _ = dog.kill();
            let _ = dog.wait();
        }
        let child = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A tiny shell process that holds a pipe from us: when this process exits
/// (and the pipe closes) without writing "disarm", it kills the server (by
/// its pid) and removes the temporary directory.
fn spawn_watchdog(pid: u32, dir: &Path) -> Result<(Child, ChildStdin)> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"read -r cmd; [ "$cmd" = disarm ] && exit 0; kill -KILL "$1" 2>/dev/null; rm -rf "$2""#)
        .arg("portcullis-e2e-watchdog")
        .arg(pid.to_string())
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the watchdog")?;
    let stdin = child.stdin.take().context("watchdog stdin")?;
    Ok((child, stdin))
}

/// One in-process server per test binary with the standard config,
/// started on first use. It is never dropped: it ends with the process.
pub fn shared() -> &'static Server {
    static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
    match SERVER
        .get_or_init(|| Server::in_process(write_default_config).map_err(|e| format!("{e:?}")))
    {
        Ok(server) => server,
        Err(e) => panic!("could not start the shared server:\n{e}"),
    }
}

/// One in-process server per test binary with the policy library's config
/// ([`write_library_config`]), started on first use, never dropped.
pub fn library() -> &'static Server {
    static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
    match SERVER
        .get_or_init(|| Server::in_process(write_library_config).map_err(|e| format!("{e:?}")))
    {
        Ok(server) => server,
        Err(e) => panic!("could not start the policy library server:\n{e}"),
    }
}

/// Runs a test body against the policy library server.
pub fn with_library(body: impl FnOnce(&Server) -> Result<()>) {
    library().test(body)
}

/// Runs a test body against the shared server (see [`Server::test`]).
pub fn with_shared(body: impl FnOnce(&Server) -> Result<()>) {
    shared().test(body)
}

// ---------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------

/// A well-formed AdmissionReview answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The whole answer.
    pub review: Json,
    /// The request's `object` (Null when absent).
    pub object: Json,
    pub reply: Reply,
}

impl Answer {
    pub fn response(&self) -> &Json {
        &self.review["response"]
    }
    pub fn uid(&self) -> &str {
        self.response()["uid"].as_str().unwrap_or("")
    }
    pub fn allowed(&self) -> bool {
        self.response()["allowed"].as_bool().unwrap_or(false)
    }
    /// `status.message`, or "" when absent.
    pub fn message(&self) -> &str {
        self.response()["status"]["message"].as_str().unwrap_or("")
    }
    pub fn code(&self) -> Option<u64> {
        self.response()["status"]["code"].as_u64()
    }
    pub fn warnings(&self) -> Vec<String> {
        self.response()["warnings"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|w| w.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
    pub fn audit_annotations(&self) -> serde_json::Map<String, Json> {
        self.response()["auditAnnotations"]
            .as_object()
            .cloned()
            .unwrap_or_default()
    }
    /// The decoded JSON patch, if the answer carries one.
    pub fn patch(&self) -> Result<Option<json_patch::Patch>> {
        decode_patch(self.response())
    }
    /// Applies the answer's patch (if any) to the request's object.
    pub fn patched_object(&self) -> Result<Json> {
        let mut object = self.object.clone();
        if let Some(patch) = self.patch()? {
            json_patch::patch(&mut object, &patch)
                .with_context(|| format!("applying the patch:\n{self}"))?;
        }
        Ok(object)
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.review.clone();
        // Show the patch decoded: that is what a reader wants to see.
        if let Ok(Some(patch)) = self.patch() {
            shown["response"]["patch (decoded)"] =
                serde_json::to_value(patch).unwrap_or(Json::Null);
        }
        let text = serde_json::to_string_pretty(&shown).unwrap_or_default();
        write!(f, "{}", tail(&text, 16 * 1024))
    }
}

/// Decodes `response.patch` (base64 of an RFC 6902 array), if present.
pub fn decode_patch(response: &Json) -> Result<Option<json_patch::Patch>> {
    let patch = match response.get("patch") {
        None | Some(Json::Null) => return Ok(None),
        Some(Json::String(s)) => s,
        Some(other) => bail!("response.patch is not a string: {other}"),
    };
    let bytes = BASE64
        .decode(patch)
        .with_context(|| format!("response.patch is not base64: {patch:?}"))?;
    let value: Json = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "decoded response.patch is not JSON: {}",
            String::from_utf8_lossy(&bytes)
        )
    })?;
    ensure!(
        value.is_array(),
        "decoded response.patch is not a JSON array: {value}"
    );
    let parsed: json_patch::Patch = serde_json::from_value(value.clone())
        .with_context(|| format!("decoded response.patch is not RFC 6902: {value}"))?;
    Ok(Some(parsed))
}

/// A short description of a review for messages: uid, operation, resource,
/// name.
pub fn describe(review: &Json) -> String {
    let r = &review["request"];
    format!(
        "{} uid={} {} {}/{}",
        review["apiVersion"].as_str().unwrap_or("?"),
        r["uid"].as_str().unwrap_or("?"),
        r["operation"].as_str().unwrap_or("?"),
        r["resource"]["resource"].as_str().unwrap_or("?"),
        r["name"].as_str().unwrap_or("")
    )
}

/// Checks that `reply` is a well-formed answer to `request_review`:
/// HTTP 200 with a JSON body; `apiVersion` as the request's and `kind`
/// AdmissionReview; `response.uid` = request uid; `allowed` a bool; a denial
/// has `status.message`; `patch` and `patchType: JSONPatch` come together, the
/// patch is a base64 RFC 6902 array that applies to the request's object, and
/// a request without an object (DELETE) has none; `warnings` (if any) are
/// strings; `auditAnnotations["generation"]` is a number.
pub fn check_answer(request_review: &Json, reply: &Reply) -> Result<Answer> {
    ensure!(
        reply.status == StatusCode::OK,
        "expected HTTP 200, got\n{reply}"
    );
    ensure!(
        reply.content_type().starts_with("application/json"),
        "expected Content-Type application/json, got\n{reply}"
    );
    let review = reply.json()?;
    let answer = Answer {
        object: request_review["request"]["object"].clone(),
        review,
        reply: reply.clone(),
    };
    let fail = |what: String| anyhow!("{what}\nanswer:\n{answer}");
    let review = &answer.review;
    if review["apiVersion"] != request_review["apiVersion"] {
        return Err(fail(format!(
            "answer apiVersion {} != request apiVersion {}",
            review["apiVersion"], request_review["apiVersion"]
        )));
    }
    if review["kind"] != "AdmissionReview" {
        return Err(fail(format!(
            "answer kind is {}, not AdmissionReview",
            review["kind"]
        )));
    }
    let response = answer.response();
    if !response.is_object() {
        return Err(fail("answer has no response object".into()));
    }
    let uid = &request_review["request"]["uid"];
    if response["uid"] != *uid {
        return Err(fail(format!(
            "response.uid {} != request uid {uid}",
            response["uid"]
        )));
    }
    let Some(allowed) = response["allowed"].as_bool() else {
        return Err(fail("response.allowed is not a bool".into()));
    };
    if !allowed {
        let message = response["status"]["message"].as_str().unwrap_or("");
        if message.is_empty() {
            return Err(fail("a denial without status.message".into()));
        }
        if !response["status"]["code"].is_u64() {
            return Err(fail("a denial without a numeric status.code".into()));
        }
    }
    let patch = decode_patch(response).map_err(|e| fail(format!("{e:#}")))?;
    let patch_type = response.get("patchType").filter(|v| !v.is_null());
    match (&patch, patch_type) {
        (Some(_), Some(t)) if t == "JSONPatch" => {}
        (Some(_), t) => {
            return Err(fail(format!(
                "a patch with patchType {t:?}, not \"JSONPatch\""
            )));
        }
        (None, Some(t)) => return Err(fail(format!("patchType {t} without a patch"))),
        (None, None) => {}
    }
    if let Some(patch) = &patch {
        if answer.object.is_null() {
            return Err(fail(
                "a patch for a request without an object (e.g. DELETE)".into(),
            ));
        }
        let mut object = answer.object.clone();
        json_patch::patch(&mut object, patch).map_err(|e| {
            fail(format!(
                "the patch does not apply to the request's object: {e}"
            ))
        })?;
    }
    if let Some(w) = response.get("warnings").filter(|v| !v.is_null()) {
        let ok = w.as_array().is_some_and(|a| a.iter().all(Json::is_string));
        if !ok {
            return Err(fail(format!(
                "response.warnings is not a list of strings: {w}"
            )));
        }
    }
    if let Some(annotations) = response.get("auditAnnotations").filter(|v| !v.is_null()) {
        let Some(map) = annotations.as_object() else {
            return Err(fail(format!(
                "response.auditAnnotations is not an object: {annotations}"
            )));
        };
        for (key, value) in map {
            if key.contains('/') || key.is_empty() {
                return Err(fail(format!(
                    "audit annotation key {key:?} would be dropped by kube-apiserver, which prefixes \
                     `<webhook name>/` and accepts exactly one `/`"
                )));
            }
            if !value.is_string() {
                return Err(fail(format!(
                    "audit annotation {key:?} is not a string: {value}"
                )));
            }
        }
    }
    let generation = &response["auditAnnotations"][GENERATION_ANNOTATION];
    let valid_generation = generation
        .as_str()
        .is_some_and(|g| g.parse::<u64>().is_ok());
    if !valid_generation {
        return Err(fail(format!(
            "response.auditAnnotations[{GENERATION_ANNOTATION:?}] is {generation}, expected a number as a string"
        )));
    }
    Ok(answer)
}

/// A copy of `review` with a new request uid.
pub fn with_uid(review: &Json, uid: &str) -> Json {
    let mut review = review.clone();
    review["request"]["uid"] = json!(uid);
    review
}

/// A copy of `review` with `object` replaced and a new uid.
pub fn with_object(review: &Json, object: Json, uid: &str) -> Json {
    let mut review = with_uid(review, uid);
    review["request"]["object"] = object;
    review
}

/// Every string (values and object keys) anywhere in a JSON value.
pub fn all_strings(value: &Json) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &Json, out: &mut Vec<String>) {
        match v {
            Json::String(s) => out.push(s.clone()),
            Json::Array(a) => a.iter().for_each(|v| walk(v, out)),
            Json::Object(m) => {
                for (k, v) in m {
                    out.push(k.clone());
                    walk(v, out);
                }
            }
            _ => {}
        }
    }
    walk(value, &mut out);
    out
}

/// The last `max` bytes of `s` (on a char boundary), marked when cut.
pub fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("[... {start} bytes cut ...]{}", &s[start..])
}

// ---------------------------------------------------------------------------
// Reviews built from bare objects
// ---------------------------------------------------------------------------

/// An AdmissionReview v1 for `operation` (`CREATE`, `UPDATE`, `DELETE`,
/// `CONNECT`) of `object`, as the API server would send it: kind and
/// resource from the object's `apiVersion` and `kind`, name and namespace
/// from its metadata, a fresh uid, user `alice` in `system:authenticated`.
/// CREATE and UPDATE carry the object (UPDATE also as `oldObject`); DELETE
/// carries it as `oldObject` only. Change fields afterwards as needed, e.g.
/// `review["request"]["userInfo"] = json!({...})`.
pub fn review_of(object: &Json, operation: &str) -> Json {
    let api_version = object["apiVersion"].as_str().unwrap_or("v1");
    let kind = object["kind"].as_str().unwrap_or_default();
    match ReviewBuilder::for_kind(operation, api_version, kind, object.clone()) {
        Ok(builder) => builder.review(),
        Err(e) => panic!("review_of: {e}"),
    }
}

/// A Deployment `name` in namespace `shop`: 2 replicas, selector and pod
/// template labels `app: <name>`, the pod template's spec `pod_spec`.
pub fn deployment(name: &str, pod_spec: Json) -> Json {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": pod_spec
            }
        }
    })
}

/// Resident memory of a process in bytes, from `/proc/<pid>/status`;
/// `None` once it has exited.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse::<u64>()
        .ok()?;
    Some(kib << 10)
}
