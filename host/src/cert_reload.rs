//! Certificate rotation without a restart: watches the certificate, key
//! and client-CA files (at the level of their directories, so a Kubernetes
//! Secret volume's `..data` swap and cert-manager renewals are seen) and
//! swaps the rustls configuration for new handshakes. Established
//! connections keep the configuration they were accepted with.
//!
//! A new set of files is loaded and checked completely (`tls::load`)
//! before it replaces the one in service; a bad one is logged, counted and
//! ignored, and the old identity keeps serving.

use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use portcullis_engine::Report;

use crate::metrics::Metrics;
use crate::tls::{self, ServingConfig, TlsError, TlsFiles, TlsIdentity};

/// What a rotation attempt did.
#[derive(Debug)]
pub enum RotationOutcome {
    /// The files are byte for byte the ones in service.
    Unchanged,
    /// New handshakes use the new identity.
    Rotated { not_after: i64 },
}

/// Keeps the serving identity in step with its files.
pub struct CertReloader {
    files: TlsFiles,
    rustls: ServingConfig,
    metrics: Arc<Metrics>,
    /// sha256 over the contents of the files in service.
    in_service: Option<[u8; 32]>,
}

impl CertReloader {
    /// A reloader for the identity `identity`, just loaded from `files` and
    /// serving through `rustls`.
    pub fn new(
        files: TlsFiles,
        identity: &TlsIdentity,
        rustls: ServingConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics.tls_certificate_expiry.set(identity.not_after);
        let in_service = contents_digest(&files);
        Self {
            files,
            rustls,
            metrics,
            in_service,
        }
    }

    /// The files to watch.
    pub fn watched(&self) -> Vec<std::path::PathBuf> {
        self.files.all()
    }

    /// Loads the files again and swaps them in when they changed and pass
    /// every check.
    ///
    /// # Errors
    /// The [`TlsError`] that kept a changed set of files out of service.
    pub fn rotate(&mut self) -> Result<RotationOutcome, TlsError> {
        let digest = contents_digest(&self.files);
        if digest.is_some() && digest == self.in_service {
            self.metrics.tls_reload("unchanged");
            return Ok(RotationOutcome::Unchanged);
        }
        match tls::load(&self.files) {
            Ok(identity) => {
                self.rustls.replace(identity.config);
                self.in_service = digest;
                self.metrics.tls_certificate_expiry.set(identity.not_after);
                self.metrics.tls_reload("success");
                self.metrics.tls_last_reload_failed.set(0);
                tracing::info!(
                    cert = %self.files.cert.display(),
                    not_after = identity.not_after,
                    "serving a new certificate"
                );
                Ok(RotationOutcome::Rotated {
                    not_after: identity.not_after,
                })
            }
            Err(error) => {
                self.metrics.tls_reload("failure");
                self.metrics.tls_last_reload_failed.set(1);
                tracing::error!(error = %Report(&error), "new certificate refused; the previous one keeps serving");
                Err(error)
            }
        }
    }
}

/// sha256 over every file's contents, `None` when one cannot be read (a
/// half-written rotation: the next event tries again).
fn contents_digest(files: &TlsFiles) -> Option<[u8; 32]> {
    let mut hasher = Sha256::new();
    for path in files.all() {
        let bytes = std::fs::read(&path).ok()?;
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Some(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{self, CertRequest};

    fn write_pair(dir: &std::path::Path) {
        let bundle = certs::generate(&CertRequest::new(vec!["localhost".into()], vec![]))
            .expect("generated");
        certs::write(&bundle, dir).expect("written");
    }

    fn files(dir: &std::path::Path) -> TlsFiles {
        TlsFiles {
            cert: dir.join(certs::TLS_CERT),
            key: dir.join(certs::TLS_KEY),
            client_ca: None,
        }
    }

    #[test]
    fn rotates_to_a_good_pair_and_refuses_a_bad_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_pair(dir.path());
        let files = files(dir.path());
        let identity = tls::load(&files).expect("loads");
        let rustls = ServingConfig::new(identity.config.clone());
        let metrics = Metrics::new();
        let mut reloader =
            CertReloader::new(files.clone(), &identity, rustls.clone(), metrics.clone());

        assert!(matches!(reloader.rotate(), Ok(RotationOutcome::Unchanged)));

        write_pair(dir.path());
        assert!(matches!(
            reloader.rotate(),
            Ok(RotationOutcome::Rotated { .. })
        ));
        assert!(!Arc::ptr_eq(&rustls.current(), &identity.config));
        let serving = rustls.current();

        // A key from another pair: refused, the good one stays.
        let other = tempfile::tempdir().expect("tempdir");
        write_pair(other.path());
        std::fs::copy(other.path().join(certs::TLS_KEY), &files.key).expect("copy");
        let err = reloader.rotate().expect_err("mismatched pair");
        assert!(matches!(err, TlsError::Config { .. }), "{err}");
        assert!(Arc::ptr_eq(&rustls.current(), &serving));
        let text = metrics.encode();
        assert!(
            text.contains("portcullis_tls_reloads_total{result=\"failure\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("portcullis_tls_reloads_total{result=\"success\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("portcullis_tls_last_reload_failed 1"),
            "{text}"
        );
    }
}
