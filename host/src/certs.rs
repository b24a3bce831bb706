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
    #[error("cannot write {path}: {cause}")]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// No names at all were given.
    #[error("a server certificate needs at least one --dns name or --ip address")]
    NoNames,
}

impl From<rcgen::Error> for CertError {
    fn from(err: rcgen::Error) -> Self {
        Self::Generate(err.to_string())
    }
}

/// What to put in the server certificate.
#[derive(Debug, Clone)]
pub struct CertRequest {
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    /// Validity in days from now.
    pub days: u32,
}

/// A CA and a server certificate, PEM-encoded.
#[derive(Debug, Clone)]
pub struct CertBundle {
    pub ca_cert: String,
    pub ca_key: String,
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

/// Generates a new ECDSA P-256 CA and a server certificate signed by it.
///
/// # Errors
/// A [`CertError`] for invalid names or a generation failure.
pub fn generate(request: &CertRequest) -> Result<CertBundle, CertError> {
    if request.dns_names.is_empty() && request.ip_addresses.is_empty() {
        return Err(CertError::NoNames);
    }
    let now = OffsetDateTime::now_utc();
    // A little slack for clocks that lag behind ours.
    let not_before = now - Duration::hours(1);
    let not_after = now + Duration::days(i64::from(request.days));

    let ca_key = KeyPair::generate()?;
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
    let issuer = Issuer::new(ca_params, &ca_key);

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
    let server_key = KeyPair::generate()?;
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
        ca_cert: ca_cert.pem(),
        ca_key: ca_key.serialize_pem(),
        cert: cert.pem(),
        key: server_key.serialize_pem(),
    })
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Portcullis");
    name.push(DnType::CommonName, common_name);
    name
}

/// Writes the four PEM files into `dir` (created if missing); keys are
/// readable by the owner only.
///
/// # Errors
/// [`CertError::Write`] naming the file.
pub fn write(bundle: &CertBundle, dir: &Path) -> Result<(), CertError> {
    std::fs::create_dir_all(dir).map_err(|cause| CertError::Write {
        path: dir.to_path_buf(),
        cause,
    })?;
    for (name, contents, private) in [
        (CA_CERT, &bundle.ca_cert, false),
        (CA_KEY, &bundle.ca_key, true),
        (TLS_CERT, &bundle.cert, false),
        (TLS_KEY, &bundle.key, true),
    ] {
        let path = dir.join(name);
        write_file(&path, contents.as_bytes(), private).map_err(|cause| CertError::Write {
            path: path.clone(),
            cause,
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
            dns_names: vec!["portcullis.portcullis.svc".into(), "localhost".into()],
            ip_addresses: vec!["127.0.0.1".parse().expect("ip")],
            days: 30,
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
        let bundle = generate(&CertRequest {
            dns_names: vec!["localhost".into()],
            ip_addresses: vec![],
            days: 1,
        })
        .expect("generated");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(bundle.ca_bundle())
            .expect("base64");
        assert_eq!(decoded, bundle.ca_cert.as_bytes());
    }

    #[test]
    fn refuses_no_names_and_bad_names() {
        let none = generate(&CertRequest {
            dns_names: vec![],
            ip_addresses: vec![],
            days: 1,
        });
        assert!(matches!(none, Err(CertError::NoNames)));
        let bad = generate(&CertRequest {
            dns_names: vec!["bad name ü".into()],
            ip_addresses: vec![],
            days: 1,
        });
        assert!(matches!(bad, Err(CertError::DnsName { .. })), "{bad:?}");
    }
}
