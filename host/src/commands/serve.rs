//! `portcullis serve`: the admission webhook over HTTPS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::app::{self, ServeOptions, TlsSource};
use crate::cli::CliError;
use crate::server::DEFAULT_BODY_LIMIT;

#[derive(Debug, Args)]
pub struct ServeCommand {
    /// The policy config file (YAML).
    #[arg(
        long,
        env = "PORTCULLIS_CONFIG",
        default_value = "policies/standard.yaml"
    )]
    pub config: PathBuf,

    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "PORTCULLIS_ADDR", default_value = "127.0.0.1:8443")]
    pub addr: SocketAddr,

    /// Server certificate (PEM). Without it a development certificate is
    /// generated.
    #[arg(long, env = "PORTCULLIS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Server private key (PEM).
    #[arg(long, env = "PORTCULLIS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Where the development CA and certificate are kept when no
    /// certificate is given.
    #[arg(
        long,
        env = "PORTCULLIS_DEV_CERT_DIR",
        default_value = ".portcullis/dev-certs"
    )]
    pub dev_cert_dir: PathBuf,

    /// Largest review body accepted, in bytes.
    #[arg(long, env = "PORTCULLIS_BODY_LIMIT", default_value_t = DEFAULT_BODY_LIMIT)]
    pub body_limit: usize,

    /// Seconds to let in-flight requests finish after SIGTERM.
    #[arg(long, env = "PORTCULLIS_SHUTDOWN_GRACE", default_value_t = 10)]
    pub shutdown_grace: u64,
}

impl ServeCommand {
    /// Serves until SIGTERM or SIGINT.
    ///
    /// # Errors
    /// Exit 2 for a bad config, policies or certificate; 1 otherwise.
    pub fn execute(self) -> Result<(), CliError> {
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => TlsSource::Files { cert, key },
            _ => TlsSource::Development {
                dir: self.dev_cert_dir,
            },
        };
        let options = ServeOptions {
            config: self.config,
            addr: self.addr,
            tls,
            body_limit: self.body_limit,
            shutdown_grace: Duration::from_secs(self.shutdown_grace),
        };
        let runtime = tokio::runtime::Runtime::new().map_err(CliError::failure)?;
        runtime.block_on(app::serve(options)).map_err(|err| {
            let code = err.exit_code();
            CliError {
                code,
                error: err.into(),
            }
        })
    }
}
