//! Process signals, for the binary only (the server itself takes a
//! shutdown future and a control handle, so tests need no signals):
//! SIGTERM (what Kubernetes sends) and SIGINT start a graceful drain;
//! SIGHUP reloads policies and certificates.

use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::control::ControlHandle;

/// Resolves when the process is asked to stop.
pub async fn terminate() {
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = terminate => tracing::info!("SIGTERM received; draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; draining"),
    }
}

/// Listens for SIGHUP. Install it before loading anything, so that an
/// early SIGHUP is kept for later instead of killing the process.
pub fn hangups() -> Option<Signal> {
    match signal(SignalKind::hangup()) {
        Ok(stream) => Some(stream),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; reloads on file changes only");
            None
        }
    }
}

/// Turns every SIGHUP into a reload request. Never returns while the
/// signal stream lives.
pub async fn forward_hangups(hangups: Option<Signal>, control: ControlHandle) {
    let Some(mut hangups) = hangups else {
        return std::future::pending().await;
    };
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP received; reloading policies and certificates");
        control.reload();
    }
    std::future::pending().await
}
