//! Policy calls measured in-process, through the engine the server uses:
//! what one call of each standard policy costs, and how a review's cost
//! grows with the number of policies and the size of its object.
//!
//! One thread, calls one after another, so time per call is CPU per call.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use portcullis_engine::{Config, ModuleCache, PolicyEngine, PolicySet, Review, Selection};
use serde_json::{Value, json};

/// How long each figure is measured for, after a short warm-up.
const MEASURE: Duration = Duration::from_millis(1500);

/// One standard policy's mean call time.
pub struct PolicyCall {
    pub name: String,
    pub side: &'static str,
    pub micros: f64,
}

/// A validating chain of `policies` copies of one policy on a review of
/// `kib` KiB: time per review and per policy.
pub struct Growth {
    pub policies: usize,
    pub kib: usize,
    pub millis_per_review: f64,
}

/// The `cel` policy with ten validations on the API server's pod review:
/// per call, pre-initialized (the server's way) and parsing its
/// expressions on every call (pre-initialization off), in the same run.
pub struct CelCall {
    pub prepared_micros: f64,
    pub parsed_per_call_micros: f64,
}

/// What [`measure`] found.
pub struct Calls {
    pub per_policy: Vec<PolicyCall>,
    pub growth: Vec<Growth>,
    pub cel: CelCall,
}

impl Calls {
    /// Extra time a review pays for each policy past the first, on the
    /// review of `kib` KiB, from the smallest and largest chains measured.
    pub fn per_extra_policy_micros(&self, kib: usize) -> Option<f64> {
        let chains: Vec<&Growth> = self.growth.iter().filter(|g| g.kib == kib).collect();
        let (first, last) = (chains.first()?, chains.last()?);
        let extra = last
            .policies
            .checked_sub(first.policies)
            .filter(|n| *n > 0)?;
        Some((last.millis_per_review - first.millis_per_review) * 1000.0 / extra as f64)
    }
}

/// Measures the standard set's calls on the API server's reviews
/// (`mutate_body`, `validate_body`), and chains of `allowed-images`.
pub fn measure(
    standard: &Path,
    modules: &Path,
    mutate_body: &[u8],
    validate_body: &[u8],
) -> Result<Calls> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let engine = PolicyEngine::new().context("the policy engine")?;
    let set = build(&runtime, &engine, standard, None)?;
    let mutate = Review::parse(mutate_body).context("the mutating review")?;
    let validate = Review::parse(validate_body).context("the validating review")?;
    let mut per_policy = Vec::new();
    for policy in set.policies() {
        if policy.metadata.mutates {
            let request = mutate.request.get();
            let micros = time(|| {
                runtime
                    .block_on(policy.mutate(request, None))
                    .map(|_| ())
                    .map_err(anyhow::Error::from)
            })?;
            per_policy.push(PolicyCall {
                name: policy.name.to_string(),
                side: "mutate",
                micros,
            });
        }
        if policy.metadata.validates {
            let request = validate.request.get();
            let micros = time(|| {
                runtime
                    .block_on(policy.validate(request, None))
                    .map(|_| ())
                    .map_err(anyhow::Error::from)
            })?;
            per_policy.push(PolicyCall {
                name: policy.name.to_string(),
                side: "validate",
                micros,
            });
        }
    }
    let cel = measure_cel(&runtime, modules, &validate)?;
    let mut growth = Vec::new();
    let (small, large) = (pod_review(1), pod_review(60));
    for policies in [1, 10, 50] {
        let config = copies_of_allowed_images(modules, policies);
        let set = build(
            &runtime,
            &engine,
            &modules.join("growth.yaml"),
            Some(&config),
        )?;
        for body in [&small, &large] {
            let micros = time(|| {
                let review = Review::parse(body.as_bytes())?;
                let mut evaluations = Vec::with_capacity(policies);
                let decision = runtime.block_on(portcullis_engine::validate(
                    &set,
                    &review,
                    Selection::All,
                    None,
                    &mut evaluations,
                ))?;
                ensure!(
                    decision.allowed && evaluations.len() == policies,
                    "the growth chain did not allow with every policy: {decision:?}"
                );
                Ok(())
            })?;
            growth.push(Growth {
                policies,
                kib: (body.len() + 512) / 1024,
                millis_per_review: micros / 1000.0,
            });
        }
    }
    Ok(Calls {
        per_policy,
        growth,
        cel,
    })
}

fn measure_cel(
    runtime: &tokio::runtime::Runtime,
    modules: &Path,
    validate: &Review<'_>,
) -> Result<CelCall> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("cel-ten.yaml");
    let config = std::fs::read_to_string(&path)
        .with_context(|| path.display().to_string())?
        .replace(
            "../target/wasm32-wasip1/policy/",
            &format!("{}/", modules.display()),
        );
    let mut micros = [0.0; 2];
    for (slot, pre_initialize) in micros.iter_mut().zip([true, false]) {
        let engine = PolicyEngine::with_options(
            None,
            portcullis_engine::EngineOptions {
                pre_initialize,
                ..Default::default()
            },
        )
        .context("the policy engine")?;
        let set = build(
            runtime,
            &engine,
            &modules.join("cel-ten.yaml"),
            Some(&config),
        )?;
        let policy = set.policies().first().context("the cel policy")?;
        let request = validate.request.get();
        *slot = time(|| {
            let verdict = runtime.block_on(policy.validate(request, None))?;
            ensure!(verdict.allowed, "the ten rules denied the pod: {verdict:?}");
            Ok(())
        })?;
    }
    Ok(CelCall {
        prepared_micros: micros[0],
        parsed_per_call_micros: micros[1],
    })
}

/// The set of the config at `path` (or `text` standing in for its contents).
fn build(
    runtime: &tokio::runtime::Runtime,
    engine: &Arc<PolicyEngine>,
    path: &Path,
    text: Option<&str>,
) -> Result<PolicySet> {
    let text = match text {
        Some(text) => text.to_string(),
        None => std::fs::read_to_string(path).with_context(|| path.display().to_string())?,
    };
    let config = Config::parse(path, &text)?;
    let (set, _) = runtime.block_on(PolicySet::build(
        engine,
        &config,
        1,
        &mut ModuleCache::new(0),
    ))?;
    Ok(set)
}

/// Mean microseconds of `call`, after a warm-up.
fn time(mut call: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..20 {
        call()?;
    }
    let started = Instant::now();
    let mut calls = 0u32;
    while started.elapsed() < MEASURE || calls < 10 {
        call()?;
        calls += 1;
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / f64::from(calls))
}

/// `copies` copies of `allowed-images` under different names, as config text.
fn copies_of_allowed_images(modules: &Path, copies: usize) -> String {
    let module = modules.join("allowed_images.wasm");
    let policies: String = (0..copies)
        .map(|i| {
            format!(
                "  - name: allowed-images-{i}\n    module: {}\n    settings: {{ allowed: [registry.k8s.io/] }}\n",
                module.display()
            )
        })
        .collect();
    format!("policies:\n{policies}")
}

/// A pod review of `containers` containers as a workload carries them
/// (image, ports, environment, resources, security context) with the
/// API server's `managedFields` for each: 1 KiB for one container, about
/// 37 KiB for sixty.
fn pod_review(containers: usize) -> String {
    let list: Vec<Value> = (0..containers)
        .map(|i| {
            json!({
                "name": format!("container-{i}"),
                "image": format!("registry.k8s.io/app/component-{i}:v1.2.{i}"),
                "ports": [{"containerPort": 8000 + i, "protocol": "TCP", "name": "http"}],
                "env": [
                    {"name": "LOG_LEVEL", "value": "info"},
                    {"name": "COMPONENT", "value": format!("component-{i}")},
                ],
                "resources": {
                    "requests": {"cpu": "100m", "memory": "128Mi"},
                    "limits": {"cpu": "500m", "memory": "256Mi"},
                },
                "securityContext": {"runAsNonRoot": true, "allowPrivilegeEscalation": false},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent",
            })
        })
        .collect();
    let fields: serde_json::Map<String, Value> = (0..containers)
        .map(|i| {
            let keys = [
                "f:image",
                "f:name",
                "f:ports",
                "f:env",
                "f:resources",
                "f:securityContext",
            ];
            let entry: serde_json::Map<String, Value> =
                keys.iter().map(|k| (k.to_string(), json!({}))).collect();
            (format!("k:{{\"name\":\"container-{i}\"}}"), entry.into())
        })
        .collect();
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0b3f6a3e-0000-4000-8000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "web",
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": "web",
                    "namespace": "shop",
                    "labels": {"app": "web"},
                    "managedFields": [{
                        "manager": "kubectl-client-side-apply",
                        "operation": "Update",
                        "apiVersion": "v1",
                        "time": "2026-12-01T10:00:00Z",
                        "fieldsType": "FieldsV1",
                        "fieldsV1": {"f:spec": {"f:containers": fields}},
                    }],
                },
                "spec": {"containers": list},
            },
            "oldObject": null,
            "dryRun": false,
        }
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_reviews_have_the_sizes_the_targets_name() {
        let small = pod_review(1).len();
        let large = pod_review(60).len();
        assert!((900..=2048).contains(&small), "{small} bytes");
        assert!((34 << 10..=40 << 10).contains(&large), "{large} bytes");
        let review = pod_review(60);
        let parsed = Review::parse(review.as_bytes()).expect("a valid review");
        assert!(parsed.object.is_some());
    }

    #[test]
    fn extra_policy_cost_comes_from_the_ends_of_the_chain() {
        let calls = Calls {
            per_policy: Vec::new(),
            cel: CelCall {
                prepared_micros: 0.0,
                parsed_per_call_micros: 0.0,
            },
            growth: vec![
                Growth {
                    policies: 1,
                    kib: 1,
                    millis_per_review: 0.03,
                },
                Growth {
                    policies: 50,
                    kib: 1,
                    millis_per_review: 1.01,
                },
            ],
        };
        let extra = calls.per_extra_policy_micros(1).expect("two chains");
        assert!((extra - 20.0).abs() < 1e-9, "{extra}");
        assert_eq!(calls.per_extra_policy_micros(37), None);
    }
}
