//! Prometheus metrics, `portcullis_*`, served at `GET /metrics`. Labels
//! are low-cardinality only (a result, never an object name or uid).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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
    /// Reviews being evaluated now.
    pub evaluations_in_flight: Gauge,
    /// Reviews waiting for an evaluation slot.
    pub evaluations_queued: Gauge,
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
        Arc::new(Self {
            registry,
            evaluations_in_flight,
            evaluations_queued,
            reloads,
            last_reload_failed,
            generation,
            policies_loaded,
            module_compilations,
            module_reuses,
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
}
