//! Engine micro-benchmarks (criterion): one evaluation of each standard
//! policy on the API server's 3 KB pod review (a fresh instance and the
//! call, as the server does it), componentizing and compiling a module,
//! and loading a compiled module from the on-disk cache.
//!
//! `cargo bench -p portcullis --bench engine` after `make build` (the
//! policies must be built).

// A benchmark stops at the first thing that does not work.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_engine::ArtifactCache;
use portcullis_engine::CompiledModule;
use portcullis_engine::Config;
use portcullis_engine::PolicyEngine;
use portcullis_engine::{ModuleCache, PolicySet, Review, Selection};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn modules() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { root().join(t) })
        .unwrap_or_else(|| root().join("target"))
        .join("wasm32-wasip1/policy")
}

/// `request` of a review the API server sent, as the text policies get.
fn request(name: &str) -> String {
    let path = root()
        .join("../shared/corpus/kube-apiserver-v1.36")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (the shared corpus)", path.display()));
    let review: serde_json::Value = serde_json::from_str(&text).expect("a review");
    review["request"].to_string()
}

fn standard_set(runtime: &tokio::runtime::Runtime, engine: &Arc<PolicyEngine>) -> PolicySet {
    let shipped = root().join("policies/standard.yaml");
    let text = std::fs::read_to_string(&shipped)
        .expect("policies/standard.yaml")
        .replace(
            "../target/wasm32-wasip1/policy/",
            &format!("{}/", modules().display()),
        );
    let config = Config::parse(&shipped, &text).expect("the standard config");
    runtime
        .block_on(PolicySet::build(
            engine,
            &config,
            1,
            &mut ModuleCache::new(0),
        ))
        .unwrap_or_else(|e| panic!("{e}: run `make build` first"))
        .0
}

fn evaluation(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let engine = PolicyEngine::new().expect("engine");
    let set = standard_set(&runtime, &engine);
    let mutate = request("003-mutate-CREATE-Pod-allowed-pod.json");
    let validate = request("004-validate-CREATE-Pod-allowed-pod.json");
    let mut group = c.benchmark_group("evaluate (fresh instance + call, 3 KB pod review)");
    // The floor under every call: a fresh instance and a call that does
    // next to nothing (`metadata`), so the rest is the policy's own work.
    if let Some(policy) = set.policies().first() {
        group.bench_function(format!("{} metadata (instance floor)", policy.name), |b| {
            b.iter(|| {
                runtime
                    .block_on(policy.module.metadata(&policy.name, policy.limits))
                    .expect("answers metadata")
            });
        });
    }
    // The same call on every core at once, as a loaded server makes it:
    // time per call per core (equal to the single-thread figure when calls
    // scale with cores).
    if let Some(policy) = set
        .policies()
        .iter()
        .find(|p| p.name.as_ref() == "pod-security")
    {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        group.bench_function(
            format!("{} validate, {cores} threads at once", policy.name),
            |b| {
                b.iter_custom(|iterations| {
                    let started = std::time::Instant::now();
                    std::thread::scope(|scope| {
                        for _ in 0..cores {
                            scope.spawn(|| {
                                let runtime = tokio::runtime::Builder::new_current_thread()
                                    .enable_time()
                                    .build()
                                    .expect("runtime");
                                for _ in 0..iterations {
                                    runtime
                                        .block_on(policy.validate(&validate, None))
                                        .expect("validates");
                                }
                            });
                        }
                    });
                    started.elapsed()
                });
            },
        );
    }
    for policy in set.policies() {
        if policy.metadata.mutates {
            group.bench_function(format!("{} mutate", policy.name), |b| {
                b.iter(|| {
                    runtime
                        .block_on(policy.mutate(&mutate, None))
                        .expect("mutates")
                });
            });
        }
        if policy.metadata.validates {
            group.bench_function(format!("{} validate", policy.name), |b| {
                b.iter(|| {
                    runtime
                        .block_on(policy.validate(&validate, None))
                        .expect("validates")
                });
            });
        }
    }
    group.finish();
}

/// A pod review of `containers` containers (each with an image, ports,
/// environment and resources, as real workloads carry), as the API server
/// would send it.
fn pod_review(containers: usize) -> String {
    let containers: Vec<serde_json::Value> = (0..containers)
        .map(|i| {
            serde_json::json!({
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
            })
        })
        .collect();
    // The API server's record of who set which field: one entry per
    // container, as `kubectl apply` leaves it.
    let fields: serde_json::Map<String, serde_json::Value> = (0..containers.len())
        .map(|i| {
            let keys = [
                "f:image",
                "f:name",
                "f:ports",
                "f:env",
                "f:resources",
                "f:securityContext",
            ];
            let entry: serde_json::Map<String, serde_json::Value> = keys
                .iter()
                .map(|k| (k.to_string(), serde_json::json!({})))
                .collect();
            (format!("k:{{\"name\":\"container-{i}\"}}"), entry.into())
        })
        .collect();
    let managed = serde_json::json!([{
        "manager": "kubectl-client-side-apply",
        "operation": "Update",
        "apiVersion": "v1",
        "time": "2026-12-01T10:00:00Z",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:spec": {"f:containers": fields}},
    }]);
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}, "managedFields": managed},
        "spec": {"containers": containers},
    });
    serde_json::json!({
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
            "object": pod,
            "oldObject": null,
            "dryRun": false,
        }
    })
    .to_string()
}

/// `copies` copies of `allowed-images` under different names.
fn copies_of_allowed_images(
    runtime: &tokio::runtime::Runtime,
    engine: &Arc<PolicyEngine>,
    copies: usize,
) -> PolicySet {
    let module = modules().join("allowed_images.wasm");
    let policies: String = (0..copies)
        .map(|i| {
            format!(
                "  - name: allowed-images-{i}\n    module: {}\n    settings: {{ allowed: [registry.k8s.io/] }}\n",
                module.display()
            )
        })
        .collect();
    let text = format!("policies:\n{policies}");
    let config = Config::parse(&root().join("growth.yaml"), &text).expect("the growth config");
    runtime
        .block_on(PolicySet::build(
            engine,
            &config,
            1,
            &mut ModuleCache::new(0),
        ))
        .unwrap_or_else(|e| panic!("{e}: run `make build` first"))
        .0
}

/// How a review's cost grows with the number of policies and the size of
/// the object: the whole validating chain, as the server runs it.
fn growth(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let engine = PolicyEngine::new().expect("engine");
    let small = pod_review(1);
    let large = pod_review(60);
    let mut group = c.benchmark_group("growth (validating chain of N allowed-images)");
    group.sample_size(20);
    for copies in [1, 5, 20, 50] {
        let set = copies_of_allowed_images(&runtime, &engine, copies);
        for body in [&small, &large] {
            let name = format!("{copies} policies, {} KB review", body.len() / 1024);
            group.bench_function(name, |b| {
                b.iter(|| {
                    let review = Review::parse(body.as_bytes()).expect("a review");
                    let mut evaluations = Vec::with_capacity(copies);
                    let decision = runtime
                        .block_on(portcullis_engine::validate(
                            &set,
                            &review,
                            Selection::All,
                            None,
                            &mut evaluations,
                        ))
                        .expect("no policy failure");
                    assert!(decision.allowed, "{decision:?}");
                    assert_eq!(evaluations.len(), copies);
                })
            });
        }
    }
    group.finish();
}

fn loading(c: &mut Criterion) {
    let engine = PolicyEngine::new().expect("engine");
    let path = modules().join("allowed_images.wasm");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut group = c.benchmark_group("load allowed_images.wasm");
    group.sample_size(10);
    group.bench_function("componentize + compile", |b| {
        b.iter(|| CompiledModule::compile(&engine, &bytes).expect("compiles"));
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let cached = PolicyEngine::with_cache(Some(dir.path())).expect("engine");
    CompiledModule::compile(&cached, &bytes).expect("compiles and caches");
    let cache = ArtifactCache::open(dir.path(), cached.engine()).expect("cache");
    let digest = portcullis_engine::module_digest(&bytes);
    group.sample_size(50);
    group.bench_function("deserialize from the disk cache", |b| {
        b.iter(|| cache.load(cached.engine(), &digest).expect("a cache hit"));
    });
    group.finish();
}

criterion_group!(benches, evaluation, growth, loading);
criterion_main!(benches);
