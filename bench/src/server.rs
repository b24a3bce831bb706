//! One `portcullis serve` under test: started, probed over its plain
//! listener, measured from `/proc` and its own `/metrics`, stopped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// What every server of a run shares.
#[derive(Debug, Clone)]
pub struct Launch {
    pub bin: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Extra `serve` flags.
    pub extra: Vec<String>,
}

pub struct Served {
    child: Child,
    pub port: u16,
    metrics_port: u16,
    plain: reqwest::Client,
    /// From spawn to `/readyz` answering 200.
    pub ready_after: Duration,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Served {
    /// Starts a server for `config` with compiled modules cached in
    /// `cache` (`None`: no cache), and waits until it is ready.
    pub async fn start(launch: &Launch, config: &Path, cache: Option<&Path>) -> Result<Self> {
        let port = free_port()?;
        let metrics_port = free_port()?;
        let mut cmd = Command::new(&launch.bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .arg("--tls-cert")
            .arg(&launch.cert)
            .arg("--tls-key")
            .arg(&launch.key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match cache {
            Some(dir) => cmd.arg("--cache-dir").arg(dir),
            None => cmd.arg("--no-module-cache"),
        };
        cmd.args(&launch.extra);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PORTCULLIS_") {
                cmd.env_remove(key);
            }
        }
        let started = Instant::now();
        let child = cmd.spawn().context("starting portcullis serve")?;
        let plain = reqwest::Client::builder().no_proxy().build()?;
        let mut served = Self {
            child,
            port,
            metrics_port,
            plain,
            ready_after: Duration::ZERO,
        };
        let url = served.plain_url("/readyz");
        loop {
            if let Some(status) = served.child.try_wait()? {
                bail!("portcullis serve exited with {status} before it was ready");
            }
            if let Ok(response) = served.plain.get(&url).send().await
                && response.status() == 200
            {
                served.ready_after = started.elapsed();
                return Ok(served);
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("portcullis serve was not ready within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn plain_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.metrics_port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> Result<String> {
        Ok(self
            .plain
            .get(self.plain_url("/metrics"))
            .send()
            .await?
            .text()
            .await?)
    }
}

/// CPU time (user + system) the process has used.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may
    // contain spaces: state is field 3, utime 14, stime 15.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc/pid/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11)
        .zip(fields.get(12))
        .and_then(|(u, s)| Some(u.parse::<u64>().ok()? + s.parse::<u64>().ok()?))
        .context("no utime/stime in /proc/pid/stat")?;
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

/// `CLK_TCK`: the unit of `/proc/pid/stat` times.
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// Resident memory now, in bytes.
pub fn rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/pid/status")?;
    Ok(kib * 1024)
}

/// Cumulative `portcullis_request_duration_seconds` buckets over every
/// endpoint, as (upper bound, count).
/// Mean time of one call per policy between two scrapes, in seconds, from
/// `portcullis_policy_evaluation_duration_seconds_{sum,count}`.
pub fn policy_means(before: &str, after: &str) -> Vec<(String, f64)> {
    let totals = |metrics: &str, suffix: &str| -> Vec<(String, f64)> {
        let prefix = format!("portcullis_policy_evaluation_duration_seconds_{suffix}{{");
        metrics
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix(&prefix)?;
                let (labels, value) = rest.split_once("} ")?;
                let policy = labels
                    .split(',')
                    .find_map(|l| l.strip_prefix("policy=\""))?
                    .trim_end_matches('"')
                    .to_string();
                Some((policy, value.trim().parse().ok()?))
            })
            .collect()
    };
    let delta = |suffix: &str| -> Vec<(String, f64)> {
        let earlier = totals(before, suffix);
        totals(after, suffix)
            .into_iter()
            .map(|(policy, value)| {
                let was = earlier
                    .iter()
                    .find(|(p, _)| *p == policy)
                    .map_or(0.0, |(_, v)| *v);
                (policy, value - was)
            })
            .collect()
    };
    let counts = delta("count");
    let mut means: Vec<(String, f64)> = delta("sum")
        .into_iter()
        .filter_map(|(policy, sum)| {
            let count = counts.iter().find(|(p, _)| *p == policy)?.1;
            (count > 0.0).then(|| (policy, sum / count))
        })
        .collect();
    means.sort_by(|a, b| a.0.cmp(&b.0));
    means
}

/// Shadow candidate evaluations in one scrape, as (evaluated, dropped),
/// from `portcullis_shadow_evaluations_total`.
pub fn shadow_results(metrics: &str) -> (f64, f64) {
    let mut evaluated = 0.0;
    let mut dropped = 0.0;
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("portcullis_shadow_evaluations_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let value: f64 = value.trim().parse().unwrap_or(0.0);
        if labels.contains("result=\"dropped\"") {
            dropped += value;
        } else {
            evaluated += value;
        }
    }
    (evaluated, dropped)
}

pub fn duration_buckets(metrics: &str) -> Vec<(f64, f64)> {
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("portcullis_request_duration_seconds_bucket{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let le = labels
            .split(',')
            .find_map(|l| l.strip_prefix("le=\""))
            .map(|l| l.trim_end_matches('"'));
        let bound = match le {
            Some("+Inf") => f64::INFINITY,
            Some(v) => v.parse().unwrap_or(f64::NAN),
            None => continue,
        };
        let count: f64 = value.trim().parse().unwrap_or(0.0);
        match buckets.iter_mut().find(|(b, _)| *b == bound) {
            Some((_, c)) => *c += count,
            None => buckets.push((bound, count)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// The latency below which `q` of the requests between two scrapes fell:
/// the server's own view, interpolated linearly inside the bucket the
/// quantile falls in, as Prometheus' `histogram_quantile` does (the
/// bucket's upper bound alone would read every ratio in bucket steps).
pub fn quantile_between(before: &str, after: &str, q: f64) -> Option<f64> {
    let before = duration_buckets(before);
    let after = duration_buckets(after);
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(bound, count)| {
            let earlier = before
                .iter()
                .find(|(b, _)| b == bound)
                .map_or(0.0, |(_, c)| *c);
            (*bound, count - earlier)
        })
        .collect();
    interpolate(&delta, q)
}

/// `q`'s quantile of cumulative `(upper bound, count)` buckets.
fn interpolate(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let index = buckets.iter().position(|(_, count)| *count >= rank)?;
    let (upper, count) = buckets[index];
    let (lower, below) = match index {
        0 => (0.0, 0.0),
        i => buckets[i - 1],
    };
    if upper.is_infinite() {
        return Some(lower);
    }
    let inside = count - below;
    if inside <= 0.0 {
        return Some(upper);
    }
    Some(lower + (upper - lower) * (rank - below) / inside)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        // 100 requests: 50 at or under 1 ms, 40 more under 2 ms, 10 under 4 ms.
        let buckets = [
            (0.001, 50.0),
            (0.002, 90.0),
            (0.004, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert_eq!(interpolate(&buckets, 0.5), Some(0.001));
        assert_eq!(interpolate(&buckets, 0.25), Some(0.0005));
        let p70 = interpolate(&buckets, 0.7).unwrap();
        assert!((p70 - 0.0015).abs() < 1e-12, "{p70}");
        let p99 = interpolate(&buckets, 0.99).unwrap();
        assert!((p99 - 0.0038).abs() < 1e-12, "{p99}");
        assert_eq!(interpolate(&[(0.001, 0.0)], 0.5), None);
    }
}
