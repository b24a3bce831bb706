//! Wiring: config -> engine -> policy set -> TLS -> server, and the drain
//! on shutdown. The only place that knows every layer.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::config::{Config, ConfigError};
use crate::engine::{EngineError, PolicyEngine};
use crate::policy_set::{PolicySet, SetError};
use crate::server::{self, ServerState};
use crate::shutdown;
use crate::tls::{self, TlsError};

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
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Policies(#[from] SetError),
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
            Self::Config(_) | Self::Policies(_) | Self::Tls(_) | Self::Bind { .. } => 2,
            Self::Engine(_) | Self::Serve(_) => 1,
        }
    }
}

/// Loads everything, serves until SIGTERM/SIGINT, then drains.
///
/// # Errors
/// An [`AppError`] for what went wrong at start-up.
pub async fn serve(options: ServeOptions) -> Result<(), AppError> {
    let started = Instant::now();
    let config = Config::load(&options.config)?;
    let engine = PolicyEngine::new()?;
    let set = PolicySet::build(&engine, &config, 1, None).await?;
    for policy in set.policies() {
        tracing::info!(
            policy = %policy.name,
            module = %policy.module_path.display(),
            digest = %policy.module.digest,
            validates = policy.metadata.validates,
            mutates = policy.metadata.mutates,
            "policy loaded"
        );
    }
    let policies = Arc::new(ArcSwap::from_pointee(set));

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

    let router = server::router(ServerState {
        policies,
        body_limit: options.body_limit,
    });
    let handle = axum_server::Handle::new();
    let drain = {
        let handle = handle.clone();
        let grace = options.shutdown_grace;
        tokio::spawn(async move {
            shutdown::signal().await;
            handle.graceful_shutdown(Some(grace));
        })
    };
    let rustls = axum_server::tls_rustls::RustlsConfig::from_config(tls_config);
    let server = axum_server::from_tcp_rustls(listener, rustls)
        .map_err(|cause| AppError::Bind {
            addr: options.addr,
            cause,
        })?
        .handle(handle);
    tracing::info!(
        address = %local,
        pooling = engine.is_pooling(),
        startup_ms = started.elapsed().as_millis() as u64,
        "listening on https://{local}"
    );
    let result = server.serve(router.into_make_service()).await;
    drain.abort();
    tracing::info!("stopped");
    result.map_err(AppError::Serve)
}
