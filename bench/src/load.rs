//! The load: a fixed number of HTTPS keep-alive connections, each sending
//! reviews back to back for a fixed time, alternating the API server's two
//! calls for one pod creation (`/mutate`, then `/validate`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

/// The two bodies of one pod creation, as the API server sent them.
#[derive(Debug, Clone)]
pub struct Reviews {
    pub mutate: Arc<Vec<u8>>,
    pub validate: Arc<Vec<u8>>,
    /// Send only the validating call: a one-policy validating server,
    /// as a single-policy webhook is called.
    pub validate_only: bool,
}

/// What a load run measured.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Every request's latency, in microseconds, sorted.
    pub latencies_us: Vec<u32>,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// Latency at quantile `q`, in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let index = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        f64::from(self.latencies_us[index]) / 1000.0
    }
}

/// An HTTPS client with one keep-alive connection (HTTP/1.1), trusting
/// only `ca_pem`.
pub fn client(ca_pem: &[u8]) -> Result<reqwest::Client> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.context("CA PEM")?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .http1_only()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()?)
}

/// Runs `connections` connections against `port` for `warmup` (not
/// measured) and then `duration`.
pub async fn run(
    ca_pem: &[u8],
    port: u16,
    reviews: &Reviews,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<Outcome> {
    let start = Instant::now();
    let measure_from = start + warmup;
    let stop_at = measure_from + duration;
    let mut tasks = Vec::with_capacity(connections);
    for worker in 0..connections {
        let client = client(ca_pem)?;
        let reviews = reviews.clone();
        let mutate = format!("https://localhost:{port}/mutate?timeout=10s");
        let validate = format!("https://localhost:{port}/validate?timeout=10s");
        tasks.push(tokio::spawn(async move {
            let mut outcome = Outcome::default();
            let mut turn = worker;
            loop {
                let sent = Instant::now();
                if sent >= stop_at {
                    break;
                }
                let (url, body) = if !reviews.validate_only && turn % 2 == 0 {
                    (&mutate, reviews.mutate.clone())
                } else {
                    (&validate, reviews.validate.clone())
                };
                turn += 1;
                let ok = match client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body.as_ref().clone())
                    .send()
                    .await
                {
                    Ok(response) => {
                        let status = response.status();
                        response.bytes().await.is_ok() && status == 200
                    }
                    Err(_) => false,
                };
                let done = Instant::now();
                if sent >= measure_from && done <= stop_at {
                    if ok {
                        outcome.requests += 1;
                        let us = done.duration_since(sent).as_micros();
                        outcome
                            .latencies_us
                            .push(u32::try_from(us).unwrap_or(u32::MAX));
                    } else {
                        outcome.errors += 1;
                    }
                }
            }
            outcome
        }));
    }
    let mut total = Outcome {
        elapsed: duration,
        ..Outcome::default()
    };
    for task in tasks {
        let outcome = task.await?;
        total.requests += outcome.requests;
        total.errors += outcome.errors;
        total.latencies_us.extend(outcome.latencies_us);
    }
    total.latencies_us.sort_unstable();
    Ok(total)
}
