//! Wiring: config -> engine -> policy set -> TLS -> server, and the drain
//! on shutdown. The only place that knows every layer.

use std::future::IntoFuture as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::cert_reload::{self, CertReloader};
use crate::engine::{EngineError, PolicyEngine};
use crate::limits::{ConnectionLimit, EvalLimiter};
use crate::metrics::Metrics;
use crate::policy_set::PolicySet;
use crate::policy_store::PolicyStore;
use crate::reload::{self, Debounce, ReloadError, Reloader};
use crate::server::{self, ServerState};
use crate::shutdown;
use crate::tls::{self, TlsError, TlsFiles};
use crate::watch::{FileWatcher, WatchError};

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

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub config: PathBuf,
    pub addr: SocketAddr,
    pub tls: TlsSource,
    /// Where compiled modules are cached across starts; `None`: no cache.
    pub cache_dir: Option<PathBuf>,
    /// Require client certificates signed by this CA on the HTTPS listener.
    pub client_ca: Option<PathBuf>,
    /// A plain-HTTP listener for `/metrics`, `/healthz` and `/readyz`, so
    /// the kubelet and Prometheus need no client certificate.
    pub metrics_addr: Option<SocketAddr>,
    pub body_limit: usize,
    pub shutdown_grace: Duration,
    /// Start serving with no policies when the config is broken at
    /// start-up, and wait for a good one.
    pub allow_empty: bool,
    pub debounce: Debounce,
    pub limits: EdgeLimits,
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
    /// Time allowed for a client to send its request headers.
    pub header_read_timeout: Duration,
    /// Time allowed for a client to send its request body.
    pub body_read_timeout: Duration,
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Load(#[from] ReloadError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("cannot listen on {addr}: {cause}")]
    Bind {
        addr: SocketAddr,
        cause: std::io::Error,
    },
    #[error("server error: {0}")]
    Serve(std::io::Error),
}

impl AppError {
    /// 2 for what the operator must fix in config or files, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Load(_) | Self::Tls(_) | Self::Bind { .. } => 2,
            Self::Engine(_) | Self::Watch(_) | Self::Serve(_) => 1,
        }
    }
}

/// A non-blocking listening socket on `addr`.
fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, AppError> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|cause| AppError::Bind { addr, cause })?;
    listener
        .set_nonblocking(true)
        .map_err(|cause| AppError::Bind { addr, cause })?;
    Ok(listener)
}

/// Loads everything, serves until SIGTERM/SIGINT, then drains.
///
/// # Errors
/// An [`AppError`] for what went wrong at start-up.
pub async fn serve(options: ServeOptions) -> Result<(), AppError> {
    let started = Instant::now();
    let engine = PolicyEngine::with_cache(options.cache_dir.as_deref())?;
    let metrics = Metrics::new();
    // Generation 0 is "nothing loaded yet": not ready.
    let store = PolicyStore::new(PolicySet::empty(0));
    let mut reloader = Reloader::new(
        engine.clone(),
        options.config.clone(),
        store.clone(),
        metrics.clone(),
    );
    // Start-up is the first reload: the same path a running server uses.
    if let Err(error) = reloader.reload().await {
        if !options.allow_empty {
            return Err(error.into());
        }
        tracing::warn!(
            %error,
            "--allow-empty: serving no policies until the config loads"
        );
    }
    let hangup = reload::hangup_signal();
    let (file_events_tx, file_events) = mpsc::unbounded_channel();
    let mut watcher = FileWatcher::new(file_events_tx)?;
    watcher.watch(reloader.watched());

    let tls_files = options.tls.files(options.client_ca.clone())?;
    let identity = tls::load(&tls_files)?;
    let rustls = axum_server::tls_rustls::RustlsConfig::from_config(identity.config.clone());
    let cert_reloader = CertReloader::new(tls_files, &identity, rustls.clone(), metrics.clone());
    let (cert_events_tx, cert_events) = mpsc::unbounded_channel();
    let cert_watcher = FileWatcher::new(cert_events_tx)?;

    let listener = bind(options.addr)?;
    let local = listener.local_addr().map_err(|cause| AppError::Bind {
        addr: options.addr,
        cause,
    })?;
    let metrics_listener = match options.metrics_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::from_std(bind(addr)?)
                .map_err(|cause| AppError::Bind { addr, cause })?,
        ),
        None => None,
    };

    let edge = options.limits;
    let state = ServerState {
        policies: store,
        limiter: Arc::new(EvalLimiter::new(
            edge.max_concurrent_reviews,
            edge.max_queued_reviews,
            metrics.clone(),
        )),
        metrics,
        body_limit: options.body_limit,
        body_timeout: edge.body_read_timeout,
    };
    let router = server::router(state.clone());
    let handle = axum_server::Handle::new();
    // The control loop: SIGTERM/SIGINT drain the server and stop the
    // reloader; file changes and SIGHUP reload.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let drain = {
        let handle = handle.clone();
        let grace = options.shutdown_grace;
        tokio::spawn(async move {
            shutdown::signal().await;
            let _ = stop_tx.send(true);
            handle.graceful_shutdown(Some(grace));
        })
    };
    let stopped = move || {
        let mut stop_rx = stop_rx.clone();
        async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        }
    };
    let reloading = tokio::spawn(reload::run(
        reloader,
        watcher,
        file_events,
        hangup,
        options.debounce,
        stopped(),
    ));
    let rotating = tokio::spawn(cert_reload::run(
        cert_reloader,
        cert_watcher,
        cert_events,
        options.debounce,
        stopped(),
    ));
    let operations = match metrics_listener {
        Some(listener) => {
            let address = listener.local_addr().ok();
            tracing::info!(
                ?address,
                "serving /metrics, /healthz and /readyz over plain HTTP"
            );
            let router = server::operations_router(state);
            // Stops with the HTTPS server, after the drain starts: the
            // kubelet sees the pod unready while it drains.
            Some(tokio::spawn(
                axum::serve(listener, router)
                    .with_graceful_shutdown(stopped())
                    .into_future(),
            ))
        }
        None => None,
    };
    let mut server = axum_server::from_tcp_rustls(listener, rustls)
        .map_err(|cause| AppError::Bind {
            addr: options.addr,
            cause,
        })?
        .handle(handle);
    // Slow clients (slowloris) must not hold connections open for free.
    server
        .http_builder()
        .http1()
        .header_read_timeout(edge.header_read_timeout);
    server.http_builder().http2().max_concurrent_streams(256);
    tracing::info!(
        address = %local,
        pooling = engine.is_pooling(),
        startup_ms = started.elapsed().as_millis() as u64,
        "listening on https://{local}"
    );
    let result = server
        .serve(ConnectionLimit::new(router, edge.max_connections))
        .await;
    drain.abort();
    reloading.abort();
    rotating.abort();
    if let Some(operations) = operations {
        operations.abort();
    }
    tracing::info!("stopped");
    result.map_err(AppError::Serve)
}
