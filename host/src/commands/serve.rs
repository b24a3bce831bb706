//! `portcullis serve`: the admission webhook over HTTPS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::app::{self, ClusterSettings, EdgeLimits, Listeners, ServeOptions, TlsSource};
use crate::commands::{CliError, RegistryArgs};
use crate::control::Debounce;
use crate::controller::{ControllerSettings, WebhookSettings, WebhookTarget};
use crate::replica::ReplicaSettings;
use crate::server::{DEFAULT_BODY_BYTES_IN_FLIGHT, DEFAULT_BODY_LIMIT};
use crate::shadow::DEFAULT_SHADOW_CONCURRENCY;
use crate::signals;
use portcullis_engine::{BreakerSettings, EngineOptions};

#[derive(Debug, Args)]
pub struct ServeCommand {
    /// The policy config file (YAML).
    #[arg(
        long,
        env = "PORTCULLIS_CONFIG",
        default_value = "policies/standard.yaml"
    )]
    pub config: PathBuf,

    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "PORTCULLIS_ADDR", default_value = "127.0.0.1:8443")]
    pub addr: SocketAddr,

    /// Server certificate (PEM). Without it a development certificate is
    /// generated.
    #[arg(long, env = "PORTCULLIS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Server private key (PEM).
    #[arg(long, env = "PORTCULLIS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Require client certificates signed by this CA (PEM) on the HTTPS
    /// listener: the API server presents one when its admission kubeconfig
    /// says so. Reloaded like the certificate.
    #[arg(long, env = "PORTCULLIS_CLIENT_CA", value_name = "FILE")]
    pub client_ca: Option<PathBuf>,

    /// The operations listener: /healthz, /readyz, /metrics and /policies
    /// over plain HTTP on this address (e.g. 0.0.0.0:9090), for the
    /// kubelet, Prometheus and operators; never the webhook endpoints.
    #[arg(long, env = "PORTCULLIS_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Where the development CA and certificate are kept when no
    /// certificate is given.
    #[arg(
        long,
        env = "PORTCULLIS_DEV_CERT_DIR",
        default_value = ".portcullis/dev-certs"
    )]
    pub dev_cert_dir: PathBuf,

    #[command(flatten)]
    pub module_cache: super::ModuleCacheArgs,

    /// Also serve `/policies` and `/metrics` on the HTTPS port. Off by
    /// default: they show module paths, digests, versions, limits and
    /// reload errors to anyone who can reach the webhook; they are always
    /// on the operations listener (`--metrics-addr`).
    #[arg(
        long,
        env = "PORTCULLIS_STATUS_ON_HTTPS",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true",
        overrides_with = "status_on_https"
    )]
    pub status_on_https: bool,

    /// Largest review body accepted, in bytes.
    #[arg(long, env = "PORTCULLIS_BODY_LIMIT", default_value_t = DEFAULT_BODY_LIMIT)]
    pub body_limit: usize,

    /// Bytes of request bodies held at once, across all connections and
    /// streams (at least `--body-limit`): a body is read only as room
    /// frees up, and HTTP flow control holds the rest back at the client.
    #[arg(long, env = "PORTCULLIS_BODY_BYTES_IN_FLIGHT", default_value_t = DEFAULT_BODY_BYTES_IN_FLIGHT)]
    pub body_bytes_in_flight: usize,

    /// Start serving with no policies when the config is broken at
    /// start-up (not ready until a good config loads) instead of exiting.
    #[arg(long, env = "PORTCULLIS_ALLOW_EMPTY")]
    pub allow_empty: bool,

    /// Milliseconds the config and module files must be quiet (no event,
    /// no change) before a reload reads them: a writer that pauses for
    /// less is never loaded half-done. Replacing a file atomically (write
    /// a new file, rename it over the old) is the supported way to edit.
    #[arg(long, env = "PORTCULLIS_RELOAD_DEBOUNCE_MS", default_value_t = 2000)]
    pub reload_debounce_ms: u64,

    /// The total of the memory caps (`memoryLimit`) of policy calls running
    /// at once, as a Kubernetes quantity. Size it below the pod's memory
    /// limit; a call waits for room (up to its deadline), and a policy
    /// whose own cap is larger is refused at load.
    #[arg(long, env = "PORTCULLIS_MEMORY_BUDGET", default_value = "1Gi", value_parser = memory_quantity)]
    pub memory_budget: u64,

    /// Deadline or memory-limit failures in a row after which a policy's
    /// calls fail fast (per its onError) for `--breaker-open-ms`, so one
    /// misbehaving policy cannot hold the evaluation capacity the others
    /// need. 0 turns this off.
    #[arg(long, env = "PORTCULLIS_BREAKER_FAILURES", default_value_t = 5)]
    pub breaker_failures: u32,

    /// Pre-initialize policies that export `prepare` with their settings
    /// (their once-per-settings work is done at load, not on every call).
    /// `false` turns it off.
    #[arg(long, env = "PORTCULLIS_PRE_INITIALIZE", default_value_t = true, action = clap::ArgAction::Set)]
    pub pre_initialize: bool,

    /// Milliseconds a policy's calls fail fast once its breaker opened.
    #[arg(long, env = "PORTCULLIS_BREAKER_OPEN_MS", default_value_t = 5000)]
    pub breaker_open_ms: u64,

    /// Reviews evaluated at once (default: 4 per CPU).
    #[arg(long, env = "PORTCULLIS_MAX_CONCURRENT_REVIEWS")]
    pub max_concurrent_reviews: Option<usize>,

    /// Reviews that may wait for an evaluation slot; beyond this the
    /// server answers 503 at once.
    #[arg(long, env = "PORTCULLIS_MAX_QUEUED_REVIEWS", default_value_t = 256)]
    pub max_queued_reviews: usize,

    /// Shadow candidate evaluations (a policy's `shadow:` in the config)
    /// running at once, on the evaluation threads, after the answer. One
    /// that finds the budget full, or reviews waiting for an evaluation
    /// slot, is dropped and counted, never queued. 0 turns them off.
    #[arg(long, env = "PORTCULLIS_SHADOW_CONCURRENCY", default_value_t = DEFAULT_SHADOW_CONCURRENCY)]
    pub shadow_concurrency: usize,

    /// Connections held open at once; new ones beyond this are closed.
    #[arg(long, env = "PORTCULLIS_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// Seconds a client may take to send its request headers; also how
    /// long a connection may go without a request in flight (before its
    /// first request, the TLS handshake included, and between requests)
    /// before it is closed.
    #[arg(long, env = "PORTCULLIS_HEADER_READ_TIMEOUT", default_value_t = 10)]
    pub header_read_timeout: u64,

    /// Seconds a client may take to send its request body.
    #[arg(long, env = "PORTCULLIS_BODY_READ_TIMEOUT", default_value_t = 10)]
    pub body_read_timeout: u64,

    /// Seconds to keep serving after SIGTERM before no longer accepting
    /// connections, so that the endpoints drop the pod first: meanwhile
    /// `/readyz` answers 503 and HTTP/1 connections close after their
    /// response. Set `terminationGracePeriodSeconds` above this plus
    /// `--shutdown-grace`.
    #[arg(long, env = "PORTCULLIS_SHUTDOWN_DELAY", default_value_t = 5)]
    pub shutdown_delay: u64,

    /// Seconds to let in-flight requests finish once no longer accepting.
    #[arg(long, env = "PORTCULLIS_SHUTDOWN_GRACE", default_value_t = 10)]
    pub shutdown_grace: u64,

    /// Seconds between asking registries whether the tags of `oci://`
    /// modules moved (a moved tag reloads through the normal path); 0:
    /// never.
    #[arg(long, env = "PORTCULLIS_REGISTRY_POLL", default_value_t = 300)]
    pub registry_poll: u64,

    #[command(flatten)]
    pub registry: RegistryArgs,

    /// Also serve the cluster's `ClusterAdmissionPolicy` and
    /// `AdmissionPolicy` resources (portcullis.dev/v1alpha1), watched
    /// through the API server: a change reloads like a config edit. They
    /// run after the config file's policies, cluster-wide ones first, in
    /// name order. This replica reports what it serves in a Lease.
    #[arg(long, env = "PORTCULLIS_CLUSTER_POLICIES")]
    pub cluster_policies: bool,

    /// The namespace of this replica's lease, the controller's lease and
    /// the CA Secret (default: the pod's namespace, `$POD_NAMESPACE`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "portcullis")]
    pub namespace: String,

    /// This replica's name among the replicas (default: the pod's name,
    /// `$POD_NAME`, else the host name).
    #[arg(long, env = "POD_NAME")]
    pub replica_id: Option<String>,

    /// Seconds a replica's or the controller's lease stands without
    /// renewal; renewed every third of it.
    #[arg(long, env = "PORTCULLIS_LEASE_DURATION", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(2..=300))]
    pub lease_duration: u64,

    /// Also run the controller (one leader among the replicas): it keeps
    /// the webhook configurations in step with the policies and writes
    /// their status.
    #[arg(long, env = "PORTCULLIS_CONTROLLER", requires = "cluster_policies")]
    pub controller: bool,

    /// The name of both webhook configurations the controller writes.
    #[arg(long, env = "PORTCULLIS_WEBHOOK_NAME", default_value = "portcullis")]
    pub webhook_name: String,

    /// The Service (in --namespace) the API server calls, NAME[:PORT].
    #[arg(long, env = "PORTCULLIS_WEBHOOK_SERVICE", default_value = "portcullis:443",
          value_parser = parse_service, conflicts_with = "webhook_url")]
    pub webhook_service: (String, u16),

    /// Instead of a Service: the base URL the API server calls (for a
    /// server outside the cluster), e.g. https://10.0.0.5:8443.
    #[arg(long, env = "PORTCULLIS_WEBHOOK_URL", value_name = "URL")]
    pub webhook_url: Option<String>,

    /// The Secret (in --namespace) whose `ca.crt`, else `tls.crt`, the
    /// API server is told to trust (the webhooks' caBundle).
    #[arg(long, env = "PORTCULLIS_CA_SECRET", default_value = "portcullis-tls")]
    pub ca_secret: String,

    /// Namespaces no policy is called for, besides kube-system,
    /// kube-node-lease and --namespace (comma-separated).
    #[arg(long, env = "PORTCULLIS_EXCLUDE_NAMESPACES", value_delimiter = ',')]
    pub exclude_namespaces: Vec<String>,

    /// The kubeconfig for `--cluster-policies` (default: the pod's service
    /// account, else `$KUBECONFIG`).
    #[arg(
        long,
        env = "PORTCULLIS_KUBECONFIG",
        value_name = "FILE",
        requires = "cluster_policies"
    )]
    pub kubeconfig: Option<PathBuf>,
}

impl ServeCommand {
    /// Serves until SIGTERM or SIGINT.
    ///
    /// # Errors
    /// Exit 2 for a bad config, policies or certificate; 1 otherwise.
    pub fn execute(self) -> Result<(), CliError> {
        let options = self.options();
        let listeners = self.listeners().map_err(app_error)?;
        let runtime = serving_runtime().map_err(CliError::failure)?;
        runtime
            .block_on(serve(listeners, options))
            .map_err(app_error)
    }

    /// The sockets the flags name, bound.
    ///
    /// # Errors
    /// When an address cannot be bound.
    pub fn listeners(&self) -> Result<Listeners, app::AppError> {
        Listeners::bind(self.addr, self.metrics_addr)
    }

    /// What the flags ask of the server, besides its sockets.
    pub fn options(&self) -> ServeOptions {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => TlsSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ => TlsSource::Development {
                dir: self.dev_cert_dir.clone(),
            },
        };
        ServeOptions {
            config: self.config.clone(),
            tls,
            cache_dir: self.module_cache.dir(),
            engine: EngineOptions {
                memory_budget: self.memory_budget,
                breaker: BreakerSettings {
                    failures: self.breaker_failures,
                    open_for: Duration::from_millis(self.breaker_open_ms),
                },
                pre_initialize: self.pre_initialize,
            },
            client_ca: self.client_ca.clone(),
            body_limit: self.body_limit,
            status_on_https: self.status_on_https,
            body_bytes_in_flight: self.body_bytes_in_flight,
            shutdown_delay: Duration::from_secs(self.shutdown_delay),
            shutdown_grace: Duration::from_secs(self.shutdown_grace),
            allow_empty: self.allow_empty,
            shadow_concurrency: self.shadow_concurrency,
            limits: EdgeLimits {
                max_concurrent_reviews: self.max_concurrent_reviews.unwrap_or_else(|| {
                    4 * std::thread::available_parallelism().map_or(1, |n| n.get())
                }),
                max_queued_reviews: self.max_queued_reviews,
                max_connections: self.max_connections,
                header_read_timeout: Duration::from_secs(self.header_read_timeout),
                body_read_timeout: Duration::from_secs(self.body_read_timeout),
            },
            registry: self.registry.settings(
                (self.registry_poll > 0).then(|| Duration::from_secs(self.registry_poll)),
            ),
            cluster: self.cluster_policies.then(|| self.cluster_settings()),
            debounce: Debounce {
                quiet: Duration::from_millis(self.reload_debounce_ms),
                // A steady stream of events must not postpone a reload forever.
                max: Duration::from_millis(self.reload_debounce_ms.saturating_mul(10).max(1000)),
            },
        }
    }
}

impl ServeCommand {
    fn cluster_settings(&self) -> ClusterSettings {
        let id = self.replica_id.clone().unwrap_or_else(host_name);
        let lease_duration = Duration::from_secs(self.lease_duration);
        let target = match &self.webhook_url {
            Some(url) => WebhookTarget::Url(url.clone()),
            None => WebhookTarget::Service {
                name: self.webhook_service.0.clone(),
                port: self.webhook_service.1,
            },
        };
        ClusterSettings {
            kubeconfig: self.kubeconfig.clone(),
            sync_timeout: Duration::from_secs(30),
            replica: ReplicaSettings {
                namespace: self.namespace.clone(),
                id: id.clone(),
                lease_duration,
            },
            controller: self.controller.then(|| ControllerSettings {
                webhooks: WebhookSettings {
                    name: self.webhook_name.clone(),
                    namespace: self.namespace.clone(),
                    target,
                    exclude_namespaces: self.exclude_namespaces.clone(),
                },
                identity: id,
                lease_duration,
                ca_secret: self.ca_secret.clone(),
            }),
        }
    }
}

/// `NAME[:PORT]`, port 443 when left out.
fn parse_service(text: &str) -> Result<(String, u16), String> {
    let (name, port) = match text.split_once(':') {
        Some((name, port)) => (
            name,
            port.parse::<u16>()
                .map_err(|_| format!("invalid port in {text:?}"))?,
        ),
        None => (text, 443),
    };
    if name.is_empty() {
        return Err(format!("no Service name in {text:?}"));
    }
    Ok((name.to_string(), port))
}

/// The host's name, else `portcullis`: a replica id outside a pod.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "portcullis".to_string())
}

/// Serves until SIGTERM or SIGINT, reloading on SIGHUP.
async fn serve(listeners: Listeners, options: ServeOptions) -> Result<(), app::AppError> {
    let hangups = signals::hangups();
    let server = app::start(listeners, options, signals::terminate()).await?;
    let control = server.control();
    tokio::select! {
        result = server.wait() => result,
        () = signals::forward_hangups(hangups, control) => Ok(()),
    }
}

fn app_error(error: app::AppError) -> CliError {
    CliError {
        code: error.exit_code(),
        error: error.into(),
    }
}

/// The runtime that serves the network: tokio's defaults (a worker per
/// core). Policy code does not run here but on the engine's evaluation
/// pool, so these workers are never held by a policy.
fn serving_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name("portcullis-worker")
        .enable_all()
        .build()
}

/// A memory quantity (`1Gi`, `512Mi`) in bytes.
fn memory_quantity(text: &str) -> Result<u64, String> {
    portcullis_engine::Quantity::parse(text).map(|quantity| quantity.0)
}
