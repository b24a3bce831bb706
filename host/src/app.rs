//! The one owner of the server's lifecycle: start-up, the control loop
//! (reloads and certificate rotation) and the drain that joins every task.
//!
//! The caller binds the sockets and says when to stop:
//! [`start`]`(listeners, options, shutdown)` loads everything, spawns the
//! tasks and returns a [`Server`]; [`Server::wait`] returns once the
//! shutdown future has resolved, in-flight reviews have drained and every
//! task has ended. The binary passes SIGTERM/SIGINT as the shutdown future;
//! tests bind port 0 and pass a channel.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_engine::{
    EngineError, EngineOptions, EvalPool, PolicyEngine, PolicySet, PolicyStore, PoolError, Report,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cert_reload::CertReloader;
use crate::cluster_policies::{self, ClusterError, ClusterPolicies};
use crate::control::{ControlHandle, ControlLoop, Debounce};
use crate::controller::{self, ControllerSettings};
use crate::limits::EvalLimiter;
use crate::listener::{ConnectionLimits, Listener, Phase};
use crate::metrics::Metrics;
use crate::namespaces::Namespaces;
use crate::registry::{ModuleResolver, RegistrySettings};
use crate::reload::{ReloadError, Reloader};
use crate::replica::{self, ReplicaSettings};
use crate::server::{self, BodyBudget, ServerState};
use crate::shadow::Shadows;
use crate::tls::{self, ServingConfig, TlsError, TlsFiles};
use crate::watch::WatchError;

/// The longest a stopping controller may take to release its lease.
const CONTROLLER_RELEASE: Duration = Duration::from_secs(3);

/// Where the serving certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// PEM files given by the operator.
    Files { cert: PathBuf, key: PathBuf },
    /// A development CA and certificate kept in `dir` (made on first use).
    Development { dir: PathBuf },
}

impl TlsSource {
    /// The files to serve from, making the development certificate first
    /// when that is the source.
    fn files(&self, client_ca: Option<PathBuf>) -> Result<TlsFiles, TlsError> {
        Ok(match self {
            Self::Files { cert, key } => TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca,
            },
            Self::Development { dir } => {
                let dev = tls::ensure_dev_certificate(dir)?;
                tracing::info!(
                    ca = %dev.ca.display(),
                    generated = dev.generated,
                    "serving a development certificate for localhost, 127.0.0.1 and ::1; \
                     clients trust it with the CA file (e.g. curl --cacert {})",
                    dev.ca.display()
                );
                TlsFiles {
                    cert: dev.cert,
                    key: dev.key,
                    client_ca,
                }
            }
        })
    }
}

/// Everything the server needs besides its sockets.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub config: PathBuf,
    pub tls: TlsSource,
    /// Where compiled modules are cached across starts; `None`: no cache.
    pub cache_dir: Option<PathBuf>,
    /// The memory budget of running calls and the policies' circuit breaker.
    pub engine: EngineOptions,
    /// Require client certificates signed by this CA on the HTTPS listener.
    pub client_ca: Option<PathBuf>,
    pub body_limit: usize,
    /// Whether `/policies` and `/metrics` are served on the HTTPS port too.
    pub status_on_https: bool,
    /// Bytes of request bodies held at once.
    pub body_bytes_in_flight: usize,
    /// How long to keep serving after the shutdown signal (unready, HTTP/1
    /// connections closed after their response) before no longer
    /// accepting, so that the endpoints drop this pod first.
    pub shutdown_delay: Duration,
    /// How long requests in flight may take once no longer accepting.
    pub shutdown_grace: Duration,
    /// Start serving with no policies when the config is broken at
    /// start-up, and wait for a good one.
    pub allow_empty: bool,
    pub debounce: Debounce,
    pub limits: EdgeLimits,
    /// How `oci://` modules are pulled and re-checked.
    pub registry: RegistrySettings,
    /// Serve the cluster's `ClusterAdmissionPolicy` resources too.
    pub cluster: Option<ClusterSettings>,
    /// Shadow candidate evaluations running at once; 0 turns them off.
    pub shadow_concurrency: usize,
}

/// How the cluster's policy resources are reached, and how this replica
/// takes part in the cluster.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// A kubeconfig; `None`: the pod's service account or `$KUBECONFIG`.
    pub kubeconfig: Option<PathBuf>,
    /// Longest wait for the first list at start-up.
    pub sync_timeout: Duration,
    /// Where this replica reports what it serves (its lease).
    pub replica: ReplicaSettings,
    /// Also run the leader-elected controller.
    pub controller: Option<ControllerSettings>,
}

/// Bounds at the HTTP edge.
#[derive(Debug, Clone, Copy)]
pub struct EdgeLimits {
    /// Reviews evaluated at once.
    pub max_concurrent_reviews: usize,
    /// Reviews waiting for a slot; beyond this, 503 at once.
    pub max_queued_reviews: usize,
    /// Connections held open; beyond this, new ones are closed.
    pub max_connections: usize,
    /// Time allowed for a client to send its request headers, and for a
    /// connection to go without a request in flight.
    pub header_read_timeout: Duration,
    /// Time allowed for a client to send its request body.
    pub body_read_timeout: Duration,
}

/// The bound sockets: HTTPS for the API server, and optionally plain HTTP
/// for probes and metrics.
#[derive(Debug)]
pub struct Listeners {
    pub https: std::net::TcpListener,
    /// `/metrics`, `/healthz` and `/readyz` over plain HTTP, so the kubelet
    /// and Prometheus need no client certificate.
    pub operations: Option<std::net::TcpListener>,
}

impl Listeners {
    /// Binds both addresses (port 0 picks a free port).
    ///
    /// # Errors
    /// [`AppError::Bind`] naming the address that could not be bound.
    pub fn bind(https: SocketAddr, operations: Option<SocketAddr>) -> Result<Self, AppError> {
        Ok(Self {
            https: bind(https)?,
            operations: operations.map(bind).transpose()?,
        })
    }
}

/// A non-blocking listening socket on `addr`.
fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, AppError> {
    let bind_error = |source| AppError::Bind { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    Ok(listener)
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The first policy load failed (and `allow_empty` is off).
    #[error("cannot load the policies")]
    Load(#[from] ReloadError),
    /// The cluster's policy resources could not be watched.
    #[error("cannot watch the cluster's policies")]
    Cluster(#[from] ClusterError),
    /// A file watcher could not start.
    #[error(transparent)]
    Watch(#[from] WatchError),
    /// The serving certificate could not be loaded.
    #[error("cannot load the serving certificate")]
    Tls(#[from] TlsError),
    /// The WebAssembly engine could not start.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The evaluation threads could not start.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// A socket could not be bound or used.
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A server task panicked or was cancelled.
    #[error("the {task} task ended abnormally")]
    Task {
        task: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl AppError {
    /// 2 for what the operator must fix in config or files, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Load(_) | Self::Cluster(_) | Self::Tls(_) | Self::Bind { .. } => 2,
            Self::Engine(_) | Self::Pool(_) | Self::Watch(_) | Self::Task { .. } => 1,
        }
    }
}

/// A running server. Dropping it does not stop it: resolve the shutdown
/// future given to [`start`], then [`Server::wait`].
pub struct Server {
    https_addr: SocketAddr,
    operations_addr: Option<SocketAddr>,
    control: ControlHandle,
    https: JoinHandle<()>,
    operations: Option<JoinHandle<()>>,
    control_loop: JoinHandle<()>,
    /// Keeps this replica's lease: aborted once serving has ended.
    replica_lease: Option<JoinHandle<()>>,
    /// The controller candidate.
    controller: Option<JoinHandle<()>>,
    drain: JoinHandle<()>,
    /// Kept until every task has ended: its epoch ticker thread is joined
    /// when the last reference goes.
    engine: Arc<PolicyEngine>,
}

impl Server {
    /// Where the HTTPS listener is.
    pub fn https_addr(&self) -> SocketAddr {
        self.https_addr
    }

    /// Where the plain-HTTP operations listener is, if there is one.
    pub fn operations_addr(&self) -> Option<SocketAddr> {
        self.operations_addr
    }

    /// Sends requests (e.g. reload) to the control loop.
    pub fn control(&self) -> ControlHandle {
        self.control.clone()
    }

    /// Waits for the drain: returns once the shutdown future has resolved,
    /// in-flight reviews have finished (or the grace period has passed)
    /// and every task has ended.
    ///
    /// # Errors
    /// The first listener failure or task panic.
    pub async fn wait(self) -> Result<(), AppError> {
        let https = joined("https", self.https).await;
        // The HTTPS listener ends only on shutdown or failure: stop the
        // others either way.
        self.drain.abort();
        let _ = self.drain.await;
        let operations = match self.operations {
            Some(task) => joined("operations", task).await,
            None => Ok(()),
        };
        let control = joined("control", self.control_loop).await;
        if let Some(task) = self.controller {
            // It returns by itself once stopping, having released its
            // lease so that another replica leads at once.
            if tokio::time::timeout(CONTROLLER_RELEASE, task)
                .await
                .is_err()
            {
                tracing::warn!("the controller did not release its lease in time");
            }
        }
        if let Some(task) = self.replica_lease {
            task.abort();
            let _ = task.await;
        }
        drop(self.engine);
        tracing::info!("stopped");
        https.and(operations).and(control)
    }
}

async fn joined<T>(task: &'static str, handle: JoinHandle<T>) -> Result<T, AppError> {
    handle
        .await
        .map_err(|source| AppError::Task { task, source })
}

/// Loads policies and the certificate, then serves on `listeners` until
/// `shutdown` resolves.
///
/// # Errors
/// An [`AppError`] for what went wrong at start-up.
pub async fn start(
    listeners: Listeners,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Server, AppError> {
    let started = Instant::now();
    let metrics = Metrics::new();
    let engine = PolicyEngine::with_options(options.cache_dir.as_deref(), options.engine)?;
    let client = connect(&options).await?;
    let (reloader, store) = load_policies(&engine, &options, &metrics, client.clone()).await?;
    let reports = reloader.reports();
    let (rustls, cert_reloader) = load_certificate(&options, &metrics)?;
    let (control_loop, control) = ControlLoop::new(reloader, cert_reloader, options.debounce)?;

    // Stopping: the drain task moves the phase on when `shutdown`
    // resolves; the listeners, `/readyz` and the control loop watch it.
    let (phase_tx, phase) = watch::channel(Phase::Serving);
    let pool = Arc::new(EvalPool::per_core()?);
    let cluster_reports = options.cluster.is_some().then(|| reports.clone());
    let state = server_state(
        store,
        pool,
        metrics,
        phase.clone(),
        cluster_reports,
        &options,
    );
    let https_addr = local_addr(&listeners.https)?;
    let operations_addr = listeners.operations.as_ref().map(local_addr).transpose()?;

    let stopped = {
        let phase = phase.clone();
        move || {
            let mut phase = phase.clone();
            async move {
                let _ = phase.wait_for(|phase| *phase >= Phase::Stopping).await;
            }
        }
    };
    let drain = tokio::spawn(drain(
        shutdown,
        phase_tx,
        options.shutdown_delay,
        options.shutdown_grace,
    ));
    let control_loop = tokio::spawn(control_loop.run(stopped()));
    // In a cluster: this replica's lease says what it serves (and that it
    // stopped, once draining); the controller runs as a candidate.
    let (mut replica_lease, mut controller) = (None, None);
    if let (Some(settings), Some(client)) = (&options.cluster, client) {
        replica_lease = Some(tokio::spawn(replica::publish(
            client.clone(),
            settings.replica.clone(),
            state.policies.clone(),
            reports,
            phase.clone(),
        )));
        controller = settings.controller.clone().map(|settings| {
            let metrics = state.metrics.clone();
            tokio::spawn(controller::run(client, settings, metrics, stopped()))
        });
    }
    // Serves through the drain's delay, so the kubelet sees the pod
    // unready while it drains.
    let operations = listeners
        .operations
        .map(|socket| serve_operations(socket, state.clone(), options.limits, phase.clone()))
        .transpose()?;
    // Logged before the first connection can be served (the socket is
    // bound already), so no decision line ever precedes it.
    tracing::info!(
        address = %https_addr,
        operations = ?operations_addr,
        pooling = engine.is_pooling(),
        startup_ms = started.elapsed().as_millis() as u64,
        "listening on https://{https_addr}"
    );
    let https = serve_https(listeners.https, rustls, state, options.limits, phase)?;
    Ok(Server {
        https_addr,
        operations_addr,
        control,
        https,
        operations,
        control_loop,
        replica_lease,
        controller,
        drain,
        engine,
    })
}

/// [`start`], then [`Server::wait`].
///
/// # Errors
/// As [`start`] and [`Server::wait`].
pub async fn run(
    listeners: Listeners,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    start(listeners, options, shutdown).await?.wait().await
}

/// The webhook's router over the policies `options.config` names, loaded
/// once: the whole request path (body checks, parsing, admission to
/// evaluation, the chains, the answer) without sockets, TLS, reloading or
/// a process. What the in-process request-path tests drive with
/// `tower::ServiceExt::oneshot`.
///
/// # Errors
/// When the engine cannot start or the policies do not load.
pub async fn router(options: &ServeOptions) -> Result<axum::Router, AppError> {
    let metrics = Metrics::new();
    let engine = PolicyEngine::with_options(options.cache_dir.as_deref(), options.engine)?;
    let client = connect(options).await?;
    let (reloader, store) = load_policies(&engine, options, &metrics, client).await?;
    let reports = options.cluster.is_some().then(|| reloader.reports());
    let pool = Arc::new(EvalPool::per_core()?);
    let (_, phase) = watch::channel(Phase::Serving);
    Ok(server::router(server_state(
        store, pool, metrics, phase, reports, options,
    )))
}

/// The first load, through the same path a running server reloads by.
async fn load_policies(
    engine: &Arc<PolicyEngine>,
    options: &ServeOptions,
    metrics: &Arc<Metrics>,
    client: Option<kube::Client>,
) -> Result<(Reloader, Arc<PolicyStore>), AppError> {
    // Generation 0 is "nothing loaded yet": not ready.
    let store = PolicyStore::new(PolicySet::empty(0));
    let cluster = match (&options.cluster, client) {
        (Some(settings), Some(client)) => {
            // What policies' namespaceSelector reads.
            let namespaces = Namespaces::start(client.clone(), settings.sync_timeout).await?;
            if engine.set_namespace_labels(Arc::new(namespaces)).is_err() {
                tracing::warn!("the engine follows another view of the namespaces already");
            }
            Some(ClusterPolicies::start(client, settings.sync_timeout).await?)
        }
        _ => None,
    };
    let mut reloader = Reloader::new(
        engine.clone(),
        options.config.clone(),
        store.clone(),
        metrics.clone(),
        ModuleResolver::new(options.registry.clone()),
        cluster,
    );
    if let Err(error) = reloader.reload().await {
        if !options.allow_empty {
            return Err(error.into());
        }
        tracing::warn!(
            error = %Report(&error),
            "--allow-empty: serving no policies until the config loads"
        );
    }
    Ok((reloader, store))
}

/// The cluster's client, when the cluster's policies are served.
async fn connect(options: &ServeOptions) -> Result<Option<kube::Client>, AppError> {
    match &options.cluster {
        Some(settings) => Ok(Some(
            cluster_policies::connect(settings.kubeconfig.as_deref()).await?,
        )),
        None => Ok(None),
    }
}

/// The serving identity, and the reloader that keeps it in step with its
/// files.
fn load_certificate(
    options: &ServeOptions,
    metrics: &Arc<Metrics>,
) -> Result<(ServingConfig, CertReloader), AppError> {
    let files = options.tls.files(options.client_ca.clone())?;
    let identity = tls::load(&files)?;
    let rustls = ServingConfig::new(identity.config.clone());
    let reloader = CertReloader::new(files, &identity, rustls.clone(), metrics.clone());
    Ok((rustls, reloader))
}

fn server_state(
    store: Arc<PolicyStore>,
    pool: Arc<EvalPool>,
    metrics: Arc<Metrics>,
    phase: watch::Receiver<Phase>,
    cluster_reports: Option<crate::replica::Reports>,
    options: &ServeOptions,
) -> ServerState {
    let edge = options.limits;
    ServerState {
        policies: store,
        pool,
        limiter: Arc::new(EvalLimiter::new(
            edge.max_concurrent_reviews,
            edge.max_queued_reviews,
            metrics.clone(),
        )),
        shadows: Arc::new(Shadows::new(options.shadow_concurrency, metrics.clone())),
        metrics,
        status_on_https: options.status_on_https,
        body_limit: options.body_limit,
        body_budget: Arc::new(BodyBudget::new(
            options.body_bytes_in_flight.max(options.body_limit),
        )),
        body_timeout: edge.body_read_timeout,
        phase,
        cluster_reports,
    }
}

fn local_addr(listener: &std::net::TcpListener) -> Result<SocketAddr, AppError> {
    listener.local_addr().map_err(|source| AppError::Bind {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })
}

/// Waits for `shutdown`, then takes the listeners through the phases of
/// stopping: `delay` of draining (still serving, unready), then `grace`
/// for what is in flight once nothing new is accepted.
async fn drain(
    shutdown: impl Future<Output = ()>,
    phase: watch::Sender<Phase>,
    delay: Duration,
    grace: Duration,
) {
    shutdown.await;
    if !delay.is_zero() {
        tracing::info!(
            delay_ms = delay.as_millis() as u64,
            "draining: /readyz answers 503 and HTTP/1 connections close after their response; \
             still accepting until the delay has passed"
        );
        let _ = phase.send(Phase::Draining);
        tokio::time::sleep(delay).await;
    }
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "stopping: no new connections; finishing the requests in flight"
    );
    let _ = phase.send(Phase::Stopping);
    tokio::time::sleep(grace).await;
    tracing::warn!("the shutdown grace period is over; closing the connections still open");
    let _ = phase.send(Phase::Stopped);
}

/// The webhook over HTTPS, behind the connection cap and edge timeouts.
fn serve_https(
    socket: std::net::TcpListener,
    tls: ServingConfig,
    state: ServerState,
    edge: EdgeLimits,
    phase: watch::Receiver<Phase>,
) -> Result<JoinHandle<()>, AppError> {
    let addr = local_addr(&socket)?;
    let router = server::router(state);
    let limits = ConnectionLimits {
        max_connections: edge.max_connections,
        idle_timeout: edge.header_read_timeout,
        header_read_timeout: edge.header_read_timeout,
    };
    let listener = Listener::new("https", socket, Some(tls), router, limits)
        .map_err(|source| AppError::Bind { addr, source })?;
    Ok(tokio::spawn(listener.serve(phase)))
}

/// Connections the operations listener holds at once: the kubelet's
/// probes, Prometheus and an operator's curl need a handful. Kept small so
/// that idle connections there can never use up the process's file
/// descriptors (and with them the webhook's listener).
const OPERATIONS_MAX_CONNECTIONS: usize = 64;

/// Probes, metrics and the policy status over plain HTTP, behind its own
/// connection cap and the same timeouts.
fn serve_operations(
    socket: std::net::TcpListener,
    state: ServerState,
    edge: EdgeLimits,
    phase: watch::Receiver<Phase>,
) -> Result<JoinHandle<()>, AppError> {
    let addr = local_addr(&socket)?;
    let limits = ConnectionLimits {
        max_connections: OPERATIONS_MAX_CONNECTIONS,
        idle_timeout: edge.header_read_timeout,
        header_read_timeout: edge.header_read_timeout,
    };
    let listener = Listener::new(
        "operations",
        socket,
        None,
        server::operations_router(state),
        limits,
    )
    .map_err(|source| AppError::Bind { addr, source })?;
    tracing::info!(address = %addr, "serving /healthz, /readyz, /metrics and /policies over plain HTTP");
    Ok(tokio::spawn(listener.serve(phase)))
}
