//! `portcullis certs`: a CA and a server certificate with SANs, and the
//! caBundle for the webhook configurations.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use crate::certs::{self, CertRequest};
use crate::cli::CliError;

#[derive(Debug, Args)]
pub struct CertsCommand {
    /// Directory to write ca.crt, ca.key, tls.crt and tls.key into.
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
}

impl CertsCommand {
    /// Writes the files and prints the caBundle as the last line.
    ///
    /// # Errors
    /// Exit 2 for bad names, 1 when files cannot be written.
    pub fn execute(self) -> Result<(), CliError> {
        let bundle = certs::generate(&CertRequest {
            dns_names: self.dns,
            ip_addresses: self.ip,
            days: self.days,
        })
        .map_err(CliError::usage)?;
        certs::write(&bundle, &self.out)
            .with_context(|| format!("writing certificates to {}", self.out.display()))
            .map_err(CliError::failure)?;
        let dir = self.out.display();
        println!("wrote {dir}/ca.crt, {dir}/ca.key, {dir}/tls.crt, {dir}/tls.key");
        println!("caBundle for the webhook configurations:");
        println!("{}", bundle.ca_bundle());
        Ok(())
    }
}
