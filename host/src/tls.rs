//! The rustls server configuration: a certificate and key from PEM files,
//! HTTP/2 and HTTP/1.1 by ALPN, the ring crypto provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::certs::{self, CertRequest};

/// Errors loading the serving certificate.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    #[error("certificate {cert} and key {key} do not make a valid TLS identity: {cause}")]
    Config {
        cert: PathBuf,
        key: PathBuf,
        cause: rustls::Error,
    },
    #[error(transparent)]
    Generate(#[from] certs::CertError),
}

/// Builds the server configuration from PEM files.
///
/// # Errors
/// A [`TlsError`] naming the file and what was wrong with it.
pub fn server_config(cert_path: &Path, key_path: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = read_certs(cert_path)?;
    let key = read_key(key_path)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|cause| TlsError::Config {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
            cause,
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|cause| TlsError::Read {
        path: path.to_path_buf(),
        cause,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::NoKey {
            path: path.to_path_buf(),
        })
}

/// Where a development certificate lives, and whether it was just made.
#[derive(Debug)]
pub struct DevCertificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub generated: bool,
}

/// Uses the development certificate in `dir`, generating a CA and a
/// certificate for localhost, 127.0.0.1 and ::1 when there is none yet, so
/// that a client keeps trusting the same CA across restarts.
///
/// # Errors
/// A [`TlsError`] when generating or writing fails.
pub fn ensure_dev_certificate(dir: &Path) -> Result<DevCertificate, TlsError> {
    let dev = DevCertificate {
        cert: dir.join(certs::TLS_CERT),
        key: dir.join(certs::TLS_KEY),
        ca: dir.join(certs::CA_CERT),
        generated: false,
    };
    if dev.cert.exists() && dev.key.exists() && dev.ca.exists() {
        return Ok(dev);
    }
    let bundle = certs::generate(&CertRequest {
        dns_names: vec!["localhost".to_string()],
        ip_addresses: vec![
            std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::Ipv6Addr::LOCALHOST.into(),
        ],
        days: 365,
    })?;
    certs::write(&bundle, dir)?;
    Ok(DevCertificate {
        generated: true,
        ..dev
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certificate_is_generated_once_and_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = ensure_dev_certificate(dir.path()).expect("generated");
        assert!(first.generated);
        let second = ensure_dev_certificate(dir.path()).expect("reused");
        assert!(!second.generated);
        let config = server_config(&second.cert, &second.key).expect("loads");
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.crt");
        let err = server_config(&missing, &missing).expect_err("missing");
        assert!(err.to_string().contains("missing.crt"), "{err}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not pem").expect("write");
        let err = server_config(&junk, &junk).expect_err("junk");
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused() {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        ensure_dev_certificate(a.path()).expect("a");
        ensure_dev_certificate(b.path()).expect("b");
        let err = server_config(&a.path().join("tls.crt"), &b.path().join("tls.key"))
            .expect_err("mismatched pair");
        assert!(matches!(err, TlsError::Config { .. }), "{err}");
    }
}
