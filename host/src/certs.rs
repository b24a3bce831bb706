//! Certificate generation: a CA and a server certificate signed by it, with
//! subject alternative names (the API server rejects CN-only certificates).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// Errors generating or writing certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters.
    #[error("cannot generate certificate: {0}")]
    Generate(String),
    /// A DNS name is not valid in a certificate.
    #[error("invalid DNS name {name:?} for a certificate: {reason}")]
    DnsName { name: String, reason: String },
    /// A file could not be written.
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No names at all were given.
    #[error("a server certificate needs at least one --dns name or --ip address")]
    NoNames,
    /// The existing CA given to sign with is unusable.
    #[error("cannot use the CA in {path}: {reason}")]
    Ca { path: PathBuf, reason: String },
    /// A validity of zero days.
    #[error("--days must be at least 1")]
    NoValidity,
}

impl From<rcgen::Error> for CertError {
    fn from(err: rcgen::Error) -> Self {
        Self::Generate(err.to_string())
    }
}

/// The key algorithm of generated keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyType {
    /// ECDSA on P-256 with SHA-256: small, fast, accepted everywhere.
    #[default]
    #[value(name = "ecdsa-p256")]
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    #[value(name = "ecdsa-p384")]
    EcdsaP384,
    /// Ed25519 (kube-apiserver's Go TLS stack accepts it; some older
    /// clients do not).
    #[value(name = "ed25519")]
    Ed25519,
}

impl KeyType {
    fn algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Self::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Self::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }

    fn generate(self) -> Result<KeyPair, CertError> {
        Ok(KeyPair::generate_for(self.algorithm())?)
    }
}

/// An existing CA to sign the server certificate with, so that a new
/// certificate keeps the `caBundle` the webhook configurations already
/// carry.
#[derive(Debug, Clone)]
pub struct ExistingCa {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// What to put in the server certificate.
#[derive(Debug, Clone)]
pub struct CertRequest {
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    /// Validity in days from now.
    pub days: u32,
    /// Algorithm of the keys generated (the CA's, when one is made, and
    /// the server's).
    pub key_type: KeyType,
    /// Sign with this CA instead of making a new one.
    pub ca: Option<ExistingCa>,
}

impl CertRequest {
    /// A request for `names` with the defaults: 365 days, ECDSA P-256, a
    /// new CA.
    pub fn new(dns_names: Vec<String>, ip_addresses: Vec<IpAddr>) -> Self {
        Self {
            dns_names,
            ip_addresses,
            days: 365,
            key_type: KeyType::default(),
            ca: None,
        }
    }
}

/// A CA and a server certificate, PEM-encoded.
#[derive(Debug, Clone)]
pub struct CertBundle {
    pub ca_cert: String,
    /// The CA's key when a new CA was made; `None` when an existing CA
    /// signed, so its key is never copied anywhere.
    pub ca_key: Option<String>,
    pub cert: String,
    pub key: String,
}

impl CertBundle {
    /// The `caBundle` value of a webhook configuration: base64 of the CA PEM.
    pub fn ca_bundle(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.ca_cert.as_bytes())
    }
}

/// File names inside a certificate directory.
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const TLS_CERT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";

/// Generates a server certificate signed by a new CA, or by the existing
/// one the request names.
///
/// # Errors
/// A [`CertError`] for invalid names, an unusable CA or a generation
/// failure.
pub fn generate(request: &CertRequest) -> Result<CertBundle, CertError> {
    if request.dns_names.is_empty() && request.ip_addresses.is_empty() {
        return Err(CertError::NoNames);
    }
    if request.days == 0 {
        return Err(CertError::NoValidity);
    }
    let now = OffsetDateTime::now_utc();
    // A little slack for clocks that lag behind ours.
    let not_before = now - Duration::hours(1);
    let not_after = now + Duration::days(i64::from(request.days));

    let (ca_cert_pem, ca_key) = match &request.ca {
        Some(existing) => load_ca(existing)?,
        None => {
            let ca_key = request.key_type.generate()?;
            let mut ca_params = CertificateParams::default();
            ca_params.distinguished_name = distinguished_name("Portcullis development CA");
            ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            ca_params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            ca_params.not_before = not_before;
            ca_params.not_after = not_after;
            let ca_cert = ca_params.self_signed(&ca_key)?;
            (ca_cert.pem(), ca_key)
        }
    };
    let issuer = Issuer::from_ca_cert_pem(&ca_cert_pem, &ca_key).map_err(|err| CertError::Ca {
        path: request
            .ca
            .as_ref()
            .map(|ca| ca.cert_path.clone())
            .unwrap_or_default(),
        reason: err.to_string(),
    })?;

    let mut sans = Vec::new();
    for name in &request.dns_names {
        let ia5 = name
            .clone()
            .try_into()
            .map_err(|err: rcgen::Error| CertError::DnsName {
                name: name.clone(),
                reason: err.to_string(),
            })?;
        sans.push(SanType::DnsName(ia5));
    }
    sans.extend(request.ip_addresses.iter().copied().map(SanType::IpAddress));
    let server_key = request.key_type.generate()?;
    let mut params = CertificateParams::default();
    let common_name = request
        .dns_names
        .first()
        .cloned()
        .or_else(|| request.ip_addresses.first().map(IpAddr::to_string))
        .unwrap_or_default();
    params.distinguished_name = distinguished_name(&common_name);
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = not_before;
    params.not_after = not_after;
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&server_key, &issuer)?;

    Ok(CertBundle {
        ca_cert: ca_cert_pem,
        ca_key: request.ca.is_none().then(|| ca_key.serialize_pem()),
        cert: cert.pem(),
        key: server_key.serialize_pem(),
    })
}

/// Reads an existing CA: its certificate must be a CA certificate and its
/// key must be the certificate's key.
fn load_ca(ca: &ExistingCa) -> Result<(String, KeyPair), CertError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|cause| CertError::Ca {
            path: path.to_path_buf(),
            reason: cause.to_string(),
        })
    };
    let cert_pem = read(&ca.cert_path)?;
    let key_pem = read(&ca.key_path)?;
    let key = KeyPair::from_pem(&key_pem).map_err(|err| CertError::Ca {
        path: ca.key_path.clone(),
        reason: format!("not a PEM private key rcgen can sign with: {err}"),
    })?;
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|err| CertError::Ca {
            path: ca.cert_path.clone(),
            reason: format!("not a PEM certificate: {err}"),
        })?;
    let cert = pem.parse_x509().map_err(|err| CertError::Ca {
        path: ca.cert_path.clone(),
        reason: format!("not an X.509 certificate: {err}"),
    })?;
    if !cert.is_ca() {
        return Err(CertError::Ca {
            path: ca.cert_path.clone(),
            reason: "the certificate is not a CA (basicConstraints CA:TRUE is missing)".into(),
        });
    }
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(CertError::Ca {
            path: ca.key_path.clone(),
            reason: format!("the key is not the key of {}", ca.cert_path.display()),
        });
    }
    Ok((cert_pem, key))
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Portcullis");
    name.push(DnType::CommonName, common_name);
    name
}

/// Writes the PEM files into `dir` (created if missing): `ca.crt`,
/// `tls.crt`, `tls.key`, and `ca.key` when a new CA was made. Keys are
/// readable by the owner only.
///
/// # Errors
/// [`CertError::Write`] naming the file.
pub fn write(bundle: &CertBundle, dir: &Path) -> Result<(), CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let files = [
        (CA_CERT, Some(&bundle.ca_cert), false),
        (CA_KEY, bundle.ca_key.as_ref(), true),
        (TLS_CERT, Some(&bundle.cert), false),
        (TLS_KEY, Some(&bundle.key), true),
    ];
    for (name, contents, private) in files {
        let Some(contents) = contents else { continue };
        let path = dir.join(name);
        write_file(&path, contents.as_bytes(), private).map_err(|source| CertError::Write {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

fn write_file(path: &Path, contents: &[u8], private: bool) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mode = if private { 0o600 } else { 0o644 };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_certificate_carries_sans_and_is_signed_by_the_ca() {
        let bundle = generate(&CertRequest {
            days: 30,
            ..CertRequest::new(
                vec!["portcullis.portcullis.svc".into(), "localhost".into()],
                vec!["127.0.0.1".parse().expect("ip")],
            )
        })
        .expect("generated");
        let (_, pem) = x509_parser::pem::parse_x509_pem(bundle.cert.as_bytes()).expect("pem");
        let cert = pem.parse_x509().expect("x509");
        let sans = cert
            .subject_alternative_name()
            .expect("extension parses")
            .expect("has SANs");
        use x509_parser::extensions::GeneralName;
        let names = &sans.value.general_names;
        assert!(
            names.contains(&GeneralName::DNSName("portcullis.portcullis.svc")),
            "{names:?}"
        );
        assert!(
            names.contains(&GeneralName::DNSName("localhost")),
            "{names:?}"
        );
        assert!(
            names.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])),
            "{names:?}"
        );
        let (_, ca_pem) = x509_parser::pem::parse_x509_pem(bundle.ca_cert.as_bytes()).expect("pem");
        let ca = ca_pem.parse_x509().expect("x509");
        assert_eq!(cert.issuer(), ca.subject());
        assert!(ca.is_ca());
        cert.verify_signature(Some(ca.public_key()))
            .expect("signed by the CA");
    }

    #[test]
    fn ca_bundle_is_base64_of_the_ca_pem() {
        let bundle =
            generate(&CertRequest::new(vec!["localhost".into()], vec![])).expect("generated");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(bundle.ca_bundle())
            .expect("base64");
        assert_eq!(decoded, bundle.ca_cert.as_bytes());
    }

    #[test]
    fn refuses_no_names_and_bad_names() {
        let none = generate(&CertRequest::new(vec![], vec![]));
        assert!(matches!(none, Err(CertError::NoNames)));
        let bad = generate(&CertRequest::new(vec!["bad name ü".into()], vec![]));
        assert!(matches!(bad, Err(CertError::DnsName { .. })), "{bad:?}");
        let zero = generate(&CertRequest {
            days: 0,
            ..CertRequest::new(vec!["localhost".into()], vec![])
        });
        assert!(matches!(zero, Err(CertError::NoValidity)), "{zero:?}");
    }

    fn parse(pem: &str) -> x509_parser::pem::Pem {
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .expect("pem")
            .1
    }

    #[test]
    fn each_key_type_makes_a_certificate_of_that_algorithm_and_validity() {
        for (key_type, oid) in [
            (KeyType::EcdsaP256, "1.2.840.10045.2.1"),
            (KeyType::EcdsaP384, "1.2.840.10045.2.1"),
            (KeyType::Ed25519, "1.3.101.112"),
        ] {
            let bundle = generate(&CertRequest {
                days: 7,
                key_type,
                ..CertRequest::new(vec!["localhost".into()], vec![])
            })
            .expect("generated");
            let pem = parse(&bundle.cert);
            let cert = pem.parse_x509().expect("x509");
            assert_eq!(
                cert.public_key().algorithm.algorithm.to_id_string(),
                oid,
                "{key_type:?}"
            );
            let days = (cert.validity().not_after.timestamp()
                - cert.validity().not_before.timestamp())
                / 86_400;
            // not_before is an hour in the past.
            assert_eq!(days, 7, "{key_type:?}");
        }
    }

    #[test]
    fn an_existing_ca_signs_the_new_certificate_and_stays_the_ca_bundle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = generate(&CertRequest::new(vec!["localhost".into()], vec![])).expect("first");
        write(&first, dir.path()).expect("write");
        let second = generate(&CertRequest {
            ca: Some(ExistingCa {
                cert_path: dir.path().join(CA_CERT),
                key_path: dir.path().join(CA_KEY),
            }),
            ..CertRequest::new(vec!["portcullis.portcullis.svc".into()], vec![])
        })
        .expect("signed by the existing CA");
        assert_eq!(second.ca_cert, first.ca_cert);
        assert_eq!(second.ca_bundle(), first.ca_bundle());
        assert_eq!(second.ca_key, None, "the existing CA's key is not copied");
        assert_ne!(second.cert, first.cert);
        let ca_pem = parse(&first.ca_cert);
        let ca = ca_pem.parse_x509().expect("ca");
        let cert_pem = parse(&second.cert);
        let cert = cert_pem.parse_x509().expect("cert");
        cert.verify_signature(Some(ca.public_key()))
            .expect("signed by the existing CA");
    }

    #[test]
    fn an_unusable_ca_is_refused_with_the_file_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = generate(&CertRequest::new(vec!["localhost".into()], vec![])).expect("a");
        let b = generate(&CertRequest::new(vec!["localhost".into()], vec![])).expect("b");
        write(&a, dir.path()).expect("write");
        std::fs::write(dir.path().join("other.key"), b.ca_key.expect("new CA")).expect("write");
        let request = |cert: &str, key: &str| CertRequest {
            ca: Some(ExistingCa {
                cert_path: dir.path().join(cert),
                key_path: dir.path().join(key),
            }),
            ..CertRequest::new(vec!["localhost".into()], vec![])
        };
        let mismatched = generate(&request(CA_CERT, "other.key")).expect_err("wrong key");
        assert!(
            mismatched.to_string().contains("the key is not the key of"),
            "{mismatched}"
        );
        let not_ca = generate(&request(TLS_CERT, TLS_KEY)).expect_err("not a CA");
        assert!(not_ca.to_string().contains("is not a CA"), "{not_ca}");
        let missing = generate(&request("missing.crt", CA_KEY)).expect_err("missing");
        assert!(missing.to_string().contains("missing.crt"), "{missing}");
    }
}
