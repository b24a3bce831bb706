//! Wiring: config -> engine -> policy set -> TLS -> server, and the drain
//! on shutdown. The only place that knows every layer.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::engine::{EngineError, PolicyEngine};
use crate::limits::{ConnectionLimit, EvalLimiter};
use crate::metrics::Metrics;
use crate::policy_set::PolicySet;
use crate::policy_store::PolicyStore;
use crate::reload::{self, Debounce, ReloadError, Reloader};
use crate::server::{self, ServerState};
use crate::shutdown;
use crate::tls::{self, TlsError};
use crate::watch::{FileWatcher, WatchError};

/// Where the serving certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// PEM files given by the operator.
    Files { cert: PathBuf, key: PathBuf },
    /// A development CA and certificate kept in `dir` (made on first use).
    Development { dir: PathBuf },
}

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub config: PathBuf,
    pub addr: SocketAddr,
    pub tls: TlsSource,
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

/// Loads everything, serves until SIGTERM/SIGINT, then drains.
///
/// # Errors
/// An [`AppError`] for what went wrong at start-up.
pub async fn serve(options: ServeOptions) -> Result<(), AppError> {
    let started = Instant::now();
    let engine = PolicyEngine::new()?;
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

    let tls_config = match &options.tls {
        TlsSource::Files { cert, key } => tls::server_config(cert, key)?,
        TlsSource::Development { dir } => {
            let dev = tls::ensure_dev_certificate(dir)?;
            tracing::info!(
                ca = %dev.ca.display(),
                generated = dev.generated,
                "serving a development certificate for localhost, 127.0.0.1 and ::1; \
                 clients trust it with the CA file (e.g. curl --cacert {})",
                dev.ca.display()
            );
            tls::server_config(&dev.cert, &dev.key)?
        }
    };

    let listener = std::net::TcpListener::bind(options.addr).map_err(|cause| AppError::Bind {
        addr: options.addr,
        cause,
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|cause| AppError::Bind {
            addr: options.addr,
            cause,
        })?;
    let local = listener.local_addr().map_err(|cause| AppError::Bind {
        addr: options.addr,
        cause,
    })?;

    let edge = options.limits;
    let router = server::router(ServerState {
        policies: store,
        limiter: Arc::new(EvalLimiter::new(
            edge.max_concurrent_reviews,
            edge.max_queued_reviews,
            metrics.clone(),
        )),
        metrics,
        body_limit: options.body_limit,
        body_timeout: edge.body_read_timeout,
    });
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
    let reloading = tokio::spawn(reload::run(
        reloader,
        watcher,
        file_events,
        hangup,
        options.debounce,
        async move {
            let mut stop_rx = stop_rx;
            let _ = stop_rx.wait_for(|stop| *stop).await;
        },
    ));
    let rustls = axum_server::tls_rustls::RustlsConfig::from_config(tls_config);
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
    tracing::info!("stopped");
    result.map_err(AppError::Serve)
}
