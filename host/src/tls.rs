//! The rustls server configuration: a certificate and key from PEM files,
//! optionally a CA that client certificates must chain to (the API server
//! authenticating itself), HTTP/2 and HTTP/1.1 by ALPN, the ring crypto
//! provider.
//!
//! Everything a new pair could get wrong is checked here, before it can
//! replace the one in service (see `cert_reload`): unreadable files, a key
//! that is not the certificate's, a certificate outside its validity.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::certs::{self, CertRequest};

/// Errors loading the serving certificate.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    #[error("{path}: the certificate cannot be parsed: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error("{path}: the certificate expired at {not_after} (unix time); the clock says {now}")]
    Expired {
        path: PathBuf,
        not_after: i64,
        now: i64,
    },
    #[error(
        "{path}: the certificate is not valid before {not_before} (unix time); the clock says {now}"
    )]
    NotYetValid {
        path: PathBuf,
        not_before: i64,
        now: i64,
    },
    #[error("certificate {cert} and key {key} do not make a valid TLS identity")]
    Config {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("client CA {path} cannot verify client certificates: {reason}")]
    ClientCa { path: PathBuf, reason: String },
    #[error(transparent)]
    Generate(#[from] certs::CertError),
}

/// The files a TLS identity is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate chaining to one of the
    /// CAs in this file (mTLS); the handshake fails otherwise.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Every file, for watching and fingerprinting.
    pub fn all(&self) -> Vec<PathBuf> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }
}

/// The configuration new TLS handshakes use, swapped whole when the
/// certificate rotates; established connections keep theirs.
#[derive(Clone)]
pub struct ServingConfig(Arc<arc_swap::ArcSwap<ServerConfig>>);

impl ServingConfig {
    pub fn new(config: Arc<ServerConfig>) -> Self {
        Self(Arc::new(arc_swap::ArcSwap::new(config)))
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.0.load_full()
    }

    /// Serves `config` from the next handshake on.
    pub fn replace(&self, config: Arc<ServerConfig>) {
        self.0.store(config);
    }
}

/// A loaded, checked server configuration.
#[derive(Debug, Clone)]
pub struct TlsIdentity {
    pub config: Arc<ServerConfig>,
    /// The serving certificate's notAfter, unix seconds.
    pub not_after: i64,
}

/// Loads and checks the identity in `files`.
///
/// # Errors
/// A [`TlsError`] naming the file and what was wrong with it.
pub fn load(files: &TlsFiles) -> Result<TlsIdentity, TlsError> {
    let certs = read_certs(&files.cert)?;
    let not_after = check_validity(&files.cert, &certs[0])?;
    let key = read_key(&files.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Config {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for ca in read_certs(path)? {
                roots.add(ca).map_err(|err| TlsError::ClientCa {
                    path: path.clone(),
                    reason: err.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|err| TlsError::ClientCa {
                    path: path.clone(),
                    reason: err.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    // `with_single_cert` also checks that the key is the certificate's.
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|source| TlsError::Config {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsIdentity {
        config: Arc::new(config),
        not_after,
    })
}

/// Builds the server configuration from PEM files, without client
/// authentication (what the tests below check `load` with).
///
/// # Errors
/// A [`TlsError`] naming the file and what was wrong with it.
#[cfg(test)]
fn server_config(cert_path: &Path, key_path: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    load(&TlsFiles {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
        client_ca: None,
    })
    .map(|identity| identity.config)
}

/// The leaf certificate's notAfter, after checking that now is inside its
/// validity: a server must not start, or switch, to a certificate every
/// client would refuse.
fn check_validity(path: &Path, leaf: &CertificateDer<'_>) -> Result<i64, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|err| {
        TlsError::BadCertificate {
            path: path.to_path_buf(),
            reason: err.to_string(),
        }
    })?;
    let validity = cert.validity();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    if now > not_after {
        return Err(TlsError::Expired {
            path: path.to_path_buf(),
            not_after,
            now,
        });
    }
    if now < not_before {
        return Err(TlsError::NotYetValid {
            path: path.to_path_buf(),
            not_before,
            now,
        });
    }
    Ok(not_after)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
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
    PrivateKeyDer::from_pem_slice(&pem)
        .ok()
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
    let bundle = certs::generate(&CertRequest::new(
        vec!["localhost".to_string()],
        vec![
            std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::Ipv6Addr::LOCALHOST.into(),
        ],
    ))?;
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
    fn an_expired_certificate_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(10);
        params.not_after = now - time::Duration::days(1);
        let cert = params.self_signed(&key).expect("cert");
        std::fs::write(dir.path().join("tls.crt"), cert.pem()).expect("write");
        std::fs::write(dir.path().join("tls.key"), key.serialize_pem()).expect("write");
        let err = server_config(&dir.path().join("tls.crt"), &dir.path().join("tls.key"))
            .expect_err("expired");
        assert!(matches!(err, TlsError::Expired { .. }), "{err}");
        assert!(
            err.to_string().contains("tls.crt: the certificate expired"),
            "{err}"
        );
    }

    #[test]
    fn a_client_ca_requires_client_certificates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = ensure_dev_certificate(dir.path()).expect("dev");
        let identity = load(&TlsFiles {
            cert: dev.cert.clone(),
            key: dev.key.clone(),
            client_ca: Some(dev.ca.clone()),
        })
        .expect("loads");
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!(
            identity.not_after > now + 300 * 86_400,
            "{}",
            identity.not_after
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "no certificates here").expect("write");
        let err = load(&TlsFiles {
            cert: dev.cert,
            key: dev.key,
            client_ca: Some(junk),
        })
        .expect_err("no CA certificates");
        assert!(err.to_string().contains("junk.pem"), "{err}");
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
