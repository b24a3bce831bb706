//! Prometheus metrics, `portcullis_*`, served at `GET /metrics`. Labels
//! are low-cardinality only (a result, never an object name or uid).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use portcullis_engine::Evaluation;

/// Duration buckets: 100 us to ~4.9 s in steps of 1.5x and 1.33x (0.1,
/// 0.15, 0.2, 0.3, 0.4, 0.6 ... ms). Policy calls take tens of
/// microseconds, deadlines hundreds of milliseconds; doubling buckets
/// could only tell a p99 from a p50 in powers of two.
fn duration_buckets() -> impl Iterator<Item = f64> {
    (0..16).flat_map(|doubling| {
        let base = f64::from(1u32 << doubling);
        // Dividing whole numbers keeps the labels short (0.0003, not
        // 0.00030000000000000003).
        [base * 2.0, base * 3.0].map(|tenths_of_ms| tenths_of_ms / 20_000.0)
    })
}

fn duration_histogram() -> Histogram {
    Histogram::new(duration_buckets())
}

/// Labels of `portcullis_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route: `/mutate`, `/validate`, `/mutate/{policy}`,
    /// `/validate/{policy}`.
    pub endpoint: &'static str,
    /// `CREATE`, `UPDATE`, `DELETE`, `CONNECT`, or empty when the review
    /// did not parse.
    pub operation: &'static str,
    /// `allowed`, `denied`, `error` (500, onError: fail), `rejected` (a
    /// 4xx for a bad body), `busy` (503).
    pub result: &'static str,
}

/// Label of `portcullis_request_duration_seconds`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: &'static str,
}

/// Labels of `portcullis_policy_evaluations_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EvaluationLabels {
    /// The policy's name in the config (bounded by the config); shared
    /// with the policy, so counting allocates nothing.
    pub policy: Arc<str>,
    /// `allow`, `deny`, `mutate`, or an error kind: `timeout`, `memory`,
    /// `trap`, `invalid_output`, `reported`, `instantiate`.
    pub outcome: &'static str,
}

/// Label of `portcullis_policy_evaluation_duration_seconds`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub policy: Arc<str>,
}

/// Labels of `portcullis_shadow_evaluations_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShadowLabels {
    /// The live policy's name.
    pub policy: Arc<str>,
    /// `agree`, `disagree`, `error` (the candidate failed) or `dropped`
    /// (not evaluated: no shadow budget left, or reviews were waiting).
    pub result: &'static str,
}

/// Label of `portcullis_reloads_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `success`, `failure` or `unchanged`.
    pub result: String,
}

/// Every metric the host exports.
pub struct Metrics {
    registry: Registry,
    /// Reload attempts by result.
    pub reloads: Family<ReloadLabels, Counter>,
    /// 1 while the newest reload attempt failed (the old set serves).
    pub last_reload_failed: Gauge,
    /// Generation of the policy set in service.
    pub generation: Gauge,
    /// Policies in the set in service.
    pub policies_loaded: Gauge,
    /// Modules compiled (componentized + Cranelift) since start.
    pub module_compilations: Counter,
    /// Modules taken from the compiled-module cache instead.
    pub module_reuses: Counter,
    /// Modules deserialized from the on-disk cache instead of compiled.
    pub module_disk_cache_hits: Counter,
    /// Reviews being evaluated now.
    pub evaluations_in_flight: Gauge,
    /// Reviews waiting for an evaluation slot.
    pub evaluations_queued: Gauge,
    /// Admission requests by endpoint, operation and result.
    pub requests: Family<RequestLabels, Counter>,
    /// Time from the body read to the answer, by endpoint.
    pub request_duration: Family<EndpointLabels, Histogram>,
    /// Policy calls by policy and outcome.
    pub policy_evaluations: Family<EvaluationLabels, Counter>,
    /// Time of each policy call, by policy.
    pub policy_evaluation_duration: Family<PolicyLabels, Histogram>,
    /// Shadow candidate evaluations by policy and result.
    pub shadow_evaluations: Family<ShadowLabels, Counter>,
    /// Shadow candidate evaluations running now.
    pub shadow_in_flight: Gauge,
    /// Certificate rotation attempts by result.
    pub tls_reloads: Family<ReloadLabels, Counter>,
    /// 1 while the newest certificate files were refused.
    pub tls_last_reload_failed: Gauge,
    /// notAfter of the serving certificate, unix seconds.
    pub tls_certificate_expiry: Gauge,
    /// Policy resources whose newest generation this replica refused.
    pub cluster_policies_refused: Gauge,
    /// 1 while this replica leads the controller.
    pub controller_leader: Gauge,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "portcullis_reloads",
            "Policy set reload attempts by result",
            reloads.clone(),
        );
        let last_reload_failed = Gauge::default();
        registry.register(
            "portcullis_last_reload_failed",
            "1 while the newest reload attempt failed and the previous set keeps serving",
            last_reload_failed.clone(),
        );
        let generation = Gauge::default();
        registry.register(
            "portcullis_policy_set_generation",
            "Generation of the policy set in service",
            generation.clone(),
        );
        let policies_loaded = Gauge::default();
        registry.register(
            "portcullis_policies_loaded",
            "Policies in the set in service",
            policies_loaded.clone(),
        );
        let module_compilations = Counter::default();
        registry.register(
            "portcullis_module_compilations",
            "Policy modules compiled since start",
            module_compilations.clone(),
        );
        let module_reuses = Counter::default();
        registry.register(
            "portcullis_module_reuses",
            "Policy modules reused from the compiled-module cache since start",
            module_reuses.clone(),
        );
        let module_disk_cache_hits = Counter::default();
        registry.register(
            "portcullis_module_disk_cache_hits",
            "Policy modules deserialized from the on-disk cache instead of compiled",
            module_disk_cache_hits.clone(),
        );
        let evaluations_in_flight = Gauge::default();
        registry.register(
            "portcullis_evaluations_in_flight",
            "Reviews being evaluated now",
            evaluations_in_flight.clone(),
        );
        let evaluations_queued = Gauge::default();
        registry.register(
            "portcullis_evaluations_queued",
            "Reviews waiting for an evaluation slot",
            evaluations_queued.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "portcullis_requests",
            "Admission requests by endpoint, operation and result",
            requests.clone(),
        );
        let request_duration = Family::<EndpointLabels, Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        registry.register(
            "portcullis_request_duration_seconds",
            "Time to answer an admission request, from its body read to the answer",
            request_duration.clone(),
        );
        let policy_evaluations = Family::<EvaluationLabels, Counter>::default();
        registry.register(
            "portcullis_policy_evaluations",
            "Policy calls by policy and outcome",
            policy_evaluations.clone(),
        );
        let policy_evaluation_duration = Family::<PolicyLabels, Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        registry.register(
            "portcullis_policy_evaluation_duration_seconds",
            "Time of one policy call (instantiate and run)",
            policy_evaluation_duration.clone(),
        );
        let shadow_evaluations = Family::<ShadowLabels, Counter>::default();
        registry.register(
            "portcullis_shadow_evaluations",
            "Shadow candidate evaluations by policy and result: agree, disagree (allowed vs denied, \
             or a different patch), error (the candidate failed), dropped (not evaluated: shadow \
             budget full or reviews waiting)",
            shadow_evaluations.clone(),
        );
        let shadow_in_flight = Gauge::default();
        registry.register(
            "portcullis_shadow_evaluations_in_flight",
            "Shadow candidate evaluations running now",
            shadow_in_flight.clone(),
        );
        let tls_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "portcullis_tls_reloads",
            "Serving certificate rotation attempts by result",
            tls_reloads.clone(),
        );
        let tls_last_reload_failed = Gauge::default();
        registry.register(
            "portcullis_tls_last_reload_failed",
            "1 while the newest certificate files were refused and the previous ones keep serving",
            tls_last_reload_failed.clone(),
        );
        let tls_certificate_expiry = Gauge::default();
        registry.register(
            "portcullis_tls_certificate_expiry_timestamp_seconds",
            "notAfter of the serving certificate, in unix seconds",
            tls_certificate_expiry.clone(),
        );
        let cluster_policies_refused = Gauge::default();
        registry.register(
            "portcullis_cluster_policies_refused",
            "Policy resources whose newest generation this replica refused (their last good generation keeps deciding)",
            cluster_policies_refused.clone(),
        );
        let controller_leader = Gauge::default();
        registry.register(
            "portcullis_controller_leader",
            "1 while this replica leads the controller (webhook configurations and policy status)",
            controller_leader.clone(),
        );
        Arc::new(Self {
            registry,
            cluster_policies_refused,
            controller_leader,
            requests,
            request_duration,
            policy_evaluations,
            policy_evaluation_duration,
            shadow_evaluations,
            shadow_in_flight,
            tls_reloads,
            tls_last_reload_failed,
            tls_certificate_expiry,
            evaluations_in_flight,
            evaluations_queued,
            reloads,
            last_reload_failed,
            generation,
            policies_loaded,
            module_compilations,
            module_reuses,
            module_disk_cache_hits,
        })
    }

    /// Counts one reload attempt.
    pub fn reload(&self, result: &str) {
        self.reloads
            .get_or_create(&ReloadLabels {
                result: result.to_string(),
            })
            .inc();
    }

    /// Counts one certificate rotation attempt.
    pub fn tls_reload(&self, result: &str) {
        self.tls_reloads
            .get_or_create(&ReloadLabels {
                result: result.to_string(),
            })
            .inc();
    }

    /// Records one answered admission request and its policy calls.
    pub fn request(
        &self,
        labels: RequestLabels,
        duration: std::time::Duration,
        evaluations: &[Evaluation],
    ) {
        let endpoint = labels.endpoint;
        self.requests.get_or_create(&labels).inc();
        self.request_duration
            .get_or_create(&EndpointLabels { endpoint })
            .observe(duration.as_secs_f64());
        for evaluation in evaluations {
            self.policy_evaluation_duration
                .get_or_create(&PolicyLabels {
                    policy: evaluation.policy.clone(),
                })
                .observe(evaluation.duration.as_secs_f64());
            self.policy_evaluations
                .get_or_create(&EvaluationLabels {
                    policy: evaluation.policy.clone(),
                    outcome: evaluation.outcome,
                })
                .inc();
        }
    }

    /// Counts one shadow evaluation of `policy`'s candidate.
    pub fn shadow(&self, policy: &Arc<str>, result: &'static str) {
        self.shadow_evaluations
            .get_or_create(&ShadowLabels {
                policy: policy.clone(),
                result,
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(%error, "cannot encode metrics");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_reload_metrics_in_text_format() {
        let metrics = Metrics::new();
        metrics.reload("success");
        metrics.reload("failure");
        metrics.reload("failure");
        metrics.generation.set(7);
        metrics.module_compilations.inc();
        let text = metrics.encode();
        assert!(
            text.contains("portcullis_reloads_total{result=\"failure\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("portcullis_reloads_total{result=\"success\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("portcullis_policy_set_generation 7"),
            "{text}"
        );
        assert!(
            text.contains("portcullis_module_compilations_total 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn exposes_request_and_policy_metrics() {
        let metrics = Metrics::new();
        let evaluation = |outcome| Evaluation {
            policy: "allowed-images".into(),
            outcome,
            duration: std::time::Duration::from_micros(300),
            shadow: None,
        };
        metrics.request(
            RequestLabels {
                endpoint: "/validate",
                operation: "CREATE",
                result: "denied",
            },
            std::time::Duration::from_millis(2),
            &[evaluation("deny"), evaluation("timeout")],
        );
        metrics.tls_certificate_expiry.set(1_900_000_000);
        metrics.shadow(&"allowed-images".into(), "disagree");
        metrics.shadow(&"allowed-images".into(), "disagree");
        let text = metrics.encode();
        for expected in [
            "portcullis_requests_total{endpoint=\"/validate\",operation=\"CREATE\",result=\"denied\"} 1",
            "portcullis_request_duration_seconds_count{endpoint=\"/validate\"} 1",
            "portcullis_policy_evaluations_total{policy=\"allowed-images\",outcome=\"deny\"} 1",
            "portcullis_policy_evaluations_total{policy=\"allowed-images\",outcome=\"timeout\"} 1",
            "portcullis_policy_evaluation_duration_seconds_count{policy=\"allowed-images\"} 2",
            "portcullis_policy_evaluation_duration_seconds_bucket{le=\"0.0004\",policy=\"allowed-images\"} 2",
            "portcullis_policy_evaluation_duration_seconds_bucket{le=\"0.0003\",policy=\"allowed-images\"} 2",
            "portcullis_tls_certificate_expiry_timestamp_seconds 1900000000",
            "portcullis_shadow_evaluations_total{policy=\"allowed-images\",result=\"disagree\"} 2",
        ] {
            assert!(text.contains(expected), "missing {expected}\n{text}");
        }
    }

    #[test]
    fn duration_buckets_step_by_at_most_one_and_a_half() {
        let buckets: Vec<f64> = duration_buckets().collect();
        assert_eq!(buckets.len(), 32);
        assert_eq!(
            buckets[..6],
            [0.0001, 0.00015, 0.0002, 0.0003, 0.0004, 0.0006]
        );
        for pair in buckets.windows(2) {
            let ratio = pair[1] / pair[0];
            assert!((1.33..=1.5 + 1e-9).contains(&ratio), "{pair:?}");
        }
        assert!(
            buckets[31] > 4.0,
            "the last bucket covers the longest deadline"
        );
    }
}
