//! A real Kubernetes API server for the tests: kube-apiserver and etcd
//! built from pinned Go modules (`make test-apiserver`, into
//! `target/kube/bin`), started on loopback with their own CA, serving
//! certificate, admin client certificate (group `system:masters`) and
//! service-account key. `kubectl` talks to it through a kubeconfig of its
//! own. Never a fake: what these tests see is what a cluster does.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};

use crate::{CliOutput, free_port, path_str, repo_root, run_cli, tail};

/// How long the API server may take to answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long one kubectl command may take.
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(60);

/// `target/kube/bin/helm` (`make test-apiserver` builds it with Go from
/// the module `tests/kube/helm/go.mod` pins).
pub fn helm() -> Result<PathBuf> {
    let helm = repo_root().join("target/kube/bin/helm");
    ensure!(
        helm.is_file(),
        "{} is missing: run `make test-apiserver` (it builds helm with Go)",
        helm.display()
    );
    Ok(helm)
}

/// etcd and kube-apiserver, running; both stopped when dropped.
pub struct TestCluster {
    dir: tempfile::TempDir,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    port: u16,
    /// How long the API server took from start to ready.
    pub started_in: Duration,
}

impl TestCluster {
    /// Starts etcd and the API server and waits until `/readyz` answers.
    pub fn start() -> Result<Self> {
        let bin = repo_root().join("target/kube/bin");
        let (apiserver_bin, etcd_bin) = (bin.join("kube-apiserver"), bin.join("etcd"));
        ensure!(
            apiserver_bin.is_file() && etcd_bin.is_file(),
            "{} is missing: run `make test-apiserver` (it builds kube-apiserver and etcd with Go)",
            bin.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("portcullis-cluster-")
            .tempdir()
            .context("creating the cluster's directory")?;
        let pki = Pki::write(&dir.path().join("pki"))?;
        let (etcd_port, etcd_peer, port) = (free_port()?, free_port()?, free_port()?);
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let started = Instant::now();
        let etcd = spawn_logged(
            Command::new(&etcd_bin)
                .arg("--data-dir")
                .arg(dir.path().join("etcd"))
                .arg("--listen-client-url")
                .arg(&etcd_url)
                .arg("--listen-peer-url")
                .arg(format!("http://127.0.0.1:{etcd_peer}")),
            &dir.path().join("etcd.log"),
        )?;
        let p = |path: &Path| -> Result<String> { Ok(path_str(path)?.to_string()) };
        let apiserver = spawn_logged(
            Command::new(&apiserver_bin).args([
                format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={port}"),
                format!("--tls-cert-file={}", p(&pki.server_crt)?),
                format!("--tls-private-key-file={}", p(&pki.server_key)?),
                format!("--client-ca-file={}", p(&pki.ca_crt)?),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                format!("--service-account-key-file={}", p(&pki.sa_pub)?),
                format!("--service-account-signing-key-file={}", p(&pki.sa_key)?),
                "--service-cluster-ip-range=10.0.0.0/24".into(),
                "--authorization-mode=RBAC".into(),
                // No controller manager creates the `default` service
                // account, which this plugin would require of every pod.
                "--disable-admission-plugins=ServiceAccount".into(),
                format!("--cert-dir={}", p(&dir.path().join("cert-dir"))?),
            ]),
            &dir.path().join("apiserver.log"),
        )?;
        let mut cluster = Self {
            dir,
            etcd: Some(etcd),
            apiserver: Some(apiserver),
            port,
            started_in: Duration::ZERO,
        };
        cluster.write_kubeconfig(&pki)?;
        let deadline = started + READY_TIMEOUT;
        loop {
            if let Some(child) = &mut cluster.apiserver
                && let Some(status) = child.try_wait()?
            {
                bail!("kube-apiserver exited ({status}):\n{}", cluster.log());
            }
            let ready = cluster.kubectl(&["get", "--raw", "/readyz"]);
            if ready.is_ok_and(|out| out.status.success() && out.stdout.trim() == "ok") {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "kube-apiserver was not ready within {READY_TIMEOUT:?}:\n{}",
                cluster.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster.started_in = started.elapsed();
        Ok(cluster)
    }

    fn write_kubeconfig(&self, pki: &Pki) -> Result<()> {
        fs::write(self.kubeconfig(), self.kubeconfig_text(pki, None)?)?;
        Ok(())
    }

    /// A kubeconfig of the admin's certificate, acting as `user` when
    /// given (impersonation: the admin is in `system:masters`).
    fn kubeconfig_text(&self, pki: &Pki, user: Option<&str>) -> Result<String> {
        let acting = user.map_or(String::new(), |u| format!(", as: \"{u}\""));
        Ok(format!(
            "apiVersion: v1\nkind: Config\n\
             clusters: [{{name: test, cluster: {{server: \"https://127.0.0.1:{port}\", certificate-authority: {ca}}}}}]\n\
             users: [{{name: admin, user: {{client-certificate: {crt}, client-key: {key}{acting}}}}}]\n\
             contexts: [{{name: test, context: {{cluster: test, user: admin}}}}]\n\
             current-context: test\n",
            port = self.port,
            ca = path_str(&pki.ca_crt)?,
            crt = path_str(&pki.admin_crt)?,
            key = path_str(&pki.admin_key)?,
        ))
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// A kubeconfig whose requests act as `user` (e.g.
    /// `system:serviceaccount:NS:NAME`, whose groups the API server adds),
    /// so a client gets exactly the permissions RBAC gives that user.
    pub fn kubeconfig_as(&self, user: &str) -> Result<PathBuf> {
        let pki = Pki::at(&self.dir.path().join("pki"));
        let path = self
            .dir
            .path()
            .join(format!("kubeconfig-{}", user.replace([':', '/'], "-")));
        fs::write(&path, self.kubeconfig_text(&pki, Some(user))?)?;
        Ok(path)
    }

    /// Runs `kubectl --kubeconfig ... ARGS`.
    pub fn kubectl(&self, args: &[&str]) -> Result<CliOutput> {
        self.kubectl_with_input(args, None)
    }

    /// Runs kubectl with `input` on its standard input (`apply -f -`).
    pub fn kubectl_with_input(&self, args: &[&str], input: Option<&[u8]>) -> Result<CliOutput> {
        let kubeconfig = self.kubeconfig();
        // Its own discovery cache: kubectl keys the cache by host and port,
        // and a port reused from an earlier test's cluster would bring
        // that cluster's kinds along.
        let cache = self.dir.path().join("kubectl-cache");
        let mut all = vec![
            "--kubeconfig",
            path_str(&kubeconfig)?,
            "--cache-dir",
            path_str(&cache)?,
        ];
        all.extend_from_slice(args);
        run_cli(Path::new("kubectl"), &all, input, KUBECTL_TIMEOUT)
    }

    /// `kubectl run NAME --dry-run=server` (in `namespace`, default
    /// `default`): a pod the API server admits or refuses (webhooks
    /// included) without creating it.
    pub fn dry_run_pod(&self, name: &str, namespace: Option<&str>) -> Result<CliOutput> {
        let mut args = vec![
            "run",
            name,
            "--image=registry.k8s.io/pause:3.10",
            "--dry-run=server",
        ];
        if let Some(namespace) = namespace {
            args.extend(["-n", namespace]);
        }
        self.kubectl(&args)
    }

    /// `kubectl apply -f -` of `yaml`, which must succeed.
    pub fn apply(&self, yaml: &str) -> Result<CliOutput> {
        let out = self.kubectl_with_input(&["apply", "-f", "-"], Some(yaml.as_bytes()))?;
        ensure!(
            out.status.success(),
            "kubectl apply failed\n{out}\n--- input ---\n{yaml}"
        );
        Ok(out)
    }

    /// Installs the project's custom resource definitions
    /// (`deploy/kubernetes/crds`, a kustomization) and waits until both are
    /// established.
    pub fn install_crds(&self) -> Result<()> {
        let crds = repo_root().join("deploy/kubernetes/crds");
        let out = self.kubectl(&["apply", "--server-side", "-k", path_str(&crds)?])?;
        ensure!(out.status.success(), "{out}");
        let out = self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/clusteradmissionpolicies.portcullis.dev",
            "crd/admissionpolicies.portcullis.dev",
        ])?;
        ensure!(out.status.success(), "{out}");
        Ok(())
    }

    /// The API server's log, last part.
    pub fn log(&self) -> String {
        tail(
            &fs::read_to_string(self.dir.path().join("apiserver.log")).unwrap_or_default(),
            8 * 1024,
        )
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for child in [self.apiserver.take(), self.etcd.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn_logged(command: &mut Command, log: &Path) -> Result<Child> {
    let file = fs::File::create(log)?;
    command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("starting {command:?}"))
}

/// The cluster's keys and certificates, as files.
struct Pki {
    ca_crt: PathBuf,
    server_crt: PathBuf,
    server_key: PathBuf,
    admin_crt: PathBuf,
    admin_key: PathBuf,
    sa_key: PathBuf,
    sa_pub: PathBuf,
}

impl Pki {
    /// The files' paths in `dir`.
    fn at(dir: &Path) -> Self {
        Self {
            ca_crt: dir.join("ca.crt"),
            server_crt: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            admin_crt: dir.join("admin.crt"),
            admin_key: dir.join("admin.key"),
            sa_key: dir.join("sa.key"),
            sa_pub: dir.join("sa.pub"),
        }
    }

    fn write(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir)?;
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "portcullis test cluster CA");
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, &ca_key);

        let server_key = KeyPair::generate()?;
        let mut server = CertificateParams::new(vec!["localhost".to_string()])?;
        server
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        server
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server.signed_by(&server_key, &issuer)?;

        let admin_key = KeyPair::generate()?;
        let mut admin = CertificateParams::new(Vec::<String>::new())?;
        admin.distinguished_name.push(DnType::CommonName, "admin");
        admin
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_cert = admin.signed_by(&admin_key, &issuer)?;

        let sa_key = KeyPair::generate()?;
        let pki = Self::at(dir);
        fs::write(&pki.ca_crt, ca_cert.pem())?;
        fs::write(&pki.server_crt, server_cert.pem())?;
        fs::write(&pki.server_key, server_key.serialize_pem())?;
        fs::write(&pki.admin_crt, admin_cert.pem())?;
        fs::write(&pki.admin_key, admin_key.serialize_pem())?;
        fs::write(&pki.sa_key, sa_key.serialize_pem())?;
        fs::write(&pki.sa_pub, sa_key.public_key_pem())?;
        Ok(pki)
    }
}

/// Polls `done` every 50 ms for at most `within`; whether it came true.
///
/// # Errors
/// The first error `done` returns.
pub fn poll(within: std::time::Duration, mut done: impl FnMut() -> Result<bool>) -> Result<bool> {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if done()? {
            return Ok(true);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(false)
}
