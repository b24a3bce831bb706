//! A real OCI registry for the registry tests: distribution 2.8 (Debian's
//! `docker-registry`, installed by `make test-tools`), started on loopback
//! with TLS (a CA of its own) and htpasswd logins, its storage in a
//! temporary directory the tests can reach into (to tamper with a blob).

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;

use crate::{Certs, CliOutput, free_port, generate_certs, path_str, paths, run_cli, tail};

/// The registry's login.
pub const USER: &str = "policy-ci";
pub const PASSWORD: &str = "correct horse battery staple";

/// How long the registry may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a `push`/`pull`/`sign` may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// A running registry; stopped when dropped.
pub struct TestRegistry {
    dir: tempfile::TempDir,
    port: u16,
    certs: Certs,
    /// Whether it speaks plain HTTP (no TLS).
    plain: bool,
    child: Option<Child>,
}

impl TestRegistry {
    /// Starts a registry on a free loopback port, with TLS.
    pub fn start() -> Result<Self> {
        Self::launch(false)
    }

    /// Starts a registry that speaks plain HTTP (still with a login).
    pub fn start_plain() -> Result<Self> {
        Self::launch(true)
    }

    fn launch(plain: bool) -> Result<Self> {
        registry_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("portcullis-registry-")
            .tempdir()
            .context("creating the registry's directory")?;
        let certs = generate_certs(&paths()?.bin, &dir.path().join("certs"))?;
        let hash = bcrypt::hash(PASSWORD, 4).context("hashing the registry password")?;
        fs::write(dir.path().join("htpasswd"), format!("{USER}:{hash}\n"))?;
        let port = free_port()?;
        let mut registry = Self {
            dir,
            port,
            certs,
            plain,
            child: None,
        };
        registry.write_files()?;
        registry.restart()?;
        Ok(registry)
    }

    fn write_files(&self) -> Result<()> {
        let dir = self.dir.path();
        let config = format!(
            "version: 0.1\n\
             log: {{ level: warn, accesslog: {{ disabled: true }} }}\n\
             storage:\n  filesystem: {{ rootdirectory: {data} }}\n  delete: {{ enabled: true }}\n\
             http:\n  addr: 127.0.0.1:{port}\n{tls}\
             auth:\n  htpasswd: {{ realm: portcullis-test, path: {htpasswd} }}\n",
            data = path_str(&dir.join("data"))?,
            port = self.port,
            tls = if self.plain {
                String::new()
            } else {
                format!(
                    "  tls: {{ certificate: {}, key: {} }}\n",
                    path_str(&self.certs.tls_crt)?,
                    path_str(&self.certs.tls_key)?
                )
            },
            htpasswd = path_str(&dir.join("htpasswd"))?,
        );
        fs::write(dir.join("config.yml"), config)?;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
        fs::write(
            self.auth_file(),
            format!(
                r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#,
                self.host()
            ),
        )?;
        Ok(())
    }

    /// Starts the registry again (after [`TestRegistry::stop`]) on the same
    /// port with the same storage, and waits until it listens.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let log = fs::File::create(self.dir.path().join("registry.log"))?;
        let child = Command::new(registry_bin()?)
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting docker-registry")?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                bail!("docker-registry exited ({status}):\n{}", self.log());
            }
            ensure!(
                Instant::now() < deadline,
                "docker-registry did not listen on port {} within {START_TIMEOUT:?}:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Stops the registry (its storage stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `oci://127.0.0.1:PORT/PATH` (`PATH` is `repository:tag` or
    /// `repository@digest`).
    pub fn reference(&self, path: &str) -> String {
        format!("oci://{}/{path}", self.host())
    }

    /// The Docker `config.json` with the registry's login.
    pub fn auth_file(&self) -> PathBuf {
        self.dir.path().join("auth.json")
    }

    pub fn ca_file(&self) -> &Path {
        &self.certs.ca_crt
    }

    /// The flags `serve`, `push`, `pull` and `sign` need to reach the
    /// registry, with `store` as the content store.
    pub fn flags(&self, store: &Path) -> Result<Vec<String>> {
        let mut flags: Vec<String> = vec![
            "--registry-auth".into(),
            path_str(&self.auth_file())?.into(),
            "--registry-store".into(),
            path_str(store)?.into(),
        ];
        if self.plain {
            flags.extend(["--registry-plain-http".into(), self.host()]);
        } else {
            flags.extend(["--registry-ca".into(), path_str(self.ca_file())?.into()]);
        }
        Ok(flags)
    }

    /// Runs `portcullis ARGS... <registry flags>` with a content store of
    /// its own.
    pub fn cli(&self, args: &[&str]) -> Result<CliOutput> {
        let store = self.dir.path().join("cli-store");
        let mut all: Vec<String> = args.iter().map(|a| (*a).to_string()).collect();
        all.extend(self.flags(&store)?);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        run_cli(&paths()?.bin, &all, None, CLI_TIMEOUT)
    }

    /// Runs [`TestRegistry::cli`] and requires success.
    pub fn cli_ok(&self, args: &[&str]) -> Result<CliOutput> {
        let out = self.cli(args)?;
        ensure!(
            out.status.success(),
            "portcullis {} failed\n{out}",
            args.join(" ")
        );
        Ok(out)
    }

    /// Pushes `module` to `repository:tag`; returns the manifest digest.
    pub fn push(&self, module: &Path, path: &str, extra: &[&str]) -> Result<String> {
        let reference = self.reference(path);
        let mut args = vec!["push", path_str(module)?, &reference];
        args.extend_from_slice(extra);
        let out = self.cli_ok(&args)?;
        out.stdout
            .split_whitespace()
            .find(|word| word.starts_with("sha256:"))
            .map(str::to_string)
            .with_context(|| format!("no digest in the output of push\n{out}"))
    }

    /// Where the registry keeps the blob of `digest`.
    pub fn blob_file(&self, digest: &str) -> Result<PathBuf> {
        let hex = digest.strip_prefix("sha256:").context("a sha256 digest")?;
        Ok(self
            .dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data"))
    }

    /// The registry's own log.
    pub fn log(&self) -> String {
        tail(
            &fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default(),
            8 * 1024,
        )
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `docker-registry` on the PATH (or `$PORTCULLIS_TEST_REGISTRY`).
fn registry_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PORTCULLIS_TEST_REGISTRY") {
        return Ok(PathBuf::from(path));
    }
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("docker-registry"))
            .find(|candidate| candidate.is_file())
    });
    found.context(
        "docker-registry (distribution 2.8) is not installed: run `make test-tools` \
         (it installs Debian's docker-registry package)",
    )
}
