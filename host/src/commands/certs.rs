//! `portcullis certs`: a CA and a server certificate with SANs, and the
//! caBundle for the webhook configurations.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use crate::certs::{self, CertRequest, ExistingCa, KeyType};
use crate::commands::CliError;

#[derive(Debug, Args)]
pub struct CertsCommand {
    /// Directory to write ca.crt, ca.key (a new CA only), tls.crt and
    /// tls.key into.
    #[arg(long, env = "PORTCULLIS_CERTS_OUT")]
    pub out: PathBuf,

    /// DNS name for the certificate (repeatable), e.g.
    /// portcullis.portcullis.svc.
    #[arg(long = "dns", value_name = "NAME")]
    pub dns: Vec<String>,

    /// IP address for the certificate (repeatable).
    #[arg(long = "ip", value_name = "ADDR")]
    pub ip: Vec<IpAddr>,

    /// Validity in days.
    #[arg(long, env = "PORTCULLIS_CERTS_DAYS", default_value_t = 365)]
    pub days: u32,

    /// Algorithm of the generated keys.
    #[arg(long, value_enum, default_value_t = KeyType::EcdsaP256)]
    pub key_type: KeyType,

    /// Sign with this existing CA certificate (PEM) instead of making a new
    /// CA, so the webhook configurations' caBundle stays the same.
    #[arg(long, requires = "ca_key", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,

    /// The existing CA's private key (PEM).
    #[arg(long, requires = "ca_cert", value_name = "FILE")]
    pub ca_key: Option<PathBuf>,
}

impl CertsCommand {
    /// Writes the files and prints the caBundle as the last line.
    ///
    /// # Errors
    /// Exit 2 for bad names, 1 when files cannot be written.
    pub fn execute(self) -> Result<(), CliError> {
        let ca = match (self.ca_cert, self.ca_key) {
            (Some(cert_path), Some(key_path)) => Some(ExistingCa {
                cert_path,
                key_path,
            }),
            _ => None,
        };
        let bundle = certs::generate(&CertRequest {
            dns_names: self.dns,
            ip_addresses: self.ip,
            days: self.days,
            key_type: self.key_type,
            ca,
        })
        .map_err(CliError::usage)?;
        certs::write(&bundle, &self.out)
            .with_context(|| format!("writing certificates to {}", self.out.display()))
            .map_err(CliError::failure)?;
        let dir = self.out.display();
        if bundle.ca_key.is_some() {
            println!("wrote {dir}/ca.crt, {dir}/ca.key, {dir}/tls.crt, {dir}/tls.key");
        } else {
            println!("wrote {dir}/ca.crt (the existing CA), {dir}/tls.crt, {dir}/tls.key");
        }
        println!("caBundle for the webhook configurations:");
        println!("{}", bundle.ca_bundle());
        Ok(())
    }
}
