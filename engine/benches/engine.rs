//! Engine micro-benchmarks (criterion): one evaluation of each standard
//! policy on the API server's 3 KB pod review (a fresh instance and the
//! call, as the server does it), the floor under every call, the same
//! call on every core at once and from a wasm32-wasip2 build,
//! componentizing and compiling a module, and loading a compiled module
//! from the on-disk cache. How a review's cost grows with its policies
//! and its size is measured by `make bench` (bench/src/calls.rs).
//!
//! `make bench-engine` (or `cargo bench -p portcullis-engine --bench engine`) after `make build` (the
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
use portcullis_engine::{ModuleCache, PolicySet};

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
    // The same policy built for wasm32-wasip2, where rustc makes the
    // component itself (no WASI preview1 adapter instance inside).
    let p2 = modules()
        .parent()
        .and_then(Path::parent)
        .map(|target| target.join("wasm32-wasip2/policy/allowed_images.wasm"));
    let p1 = set
        .policies()
        .iter()
        .find(|p| p.name.as_ref() == "allowed-images");
    if let (Some(p2), Some(p1)) = (p2.filter(|p| p.is_file()), p1) {
        let bytes = std::fs::read(&p2).expect("the wasip2 module");
        let module = CompiledModule::compile(&engine, &bytes).expect("compiles");
        group.bench_function("allowed-images validate (built for wasm32-wasip2)", |b| {
            b.iter(|| {
                runtime
                    .block_on(module.validate(&p1.name, p1.limits, &validate, &p1.settings))
                    .expect("validates")
            });
        });
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

/// The `cel` policy with ten validations (bench/cel-ten.yaml) on the API
/// server's pod review: pre-initialized, and parsing its expressions on
/// every call.
fn cel(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let validate = request("004-validate-CREATE-Pod-allowed-pod.json");
    let path = root().join("bench/cel-ten.yaml");
    let text = std::fs::read_to_string(&path)
        .expect("bench/cel-ten.yaml")
        .replace(
            "../target/wasm32-wasip1/policy/",
            &format!("{}/", modules().display()),
        );
    let config = Config::parse(&path, &text).expect("the cel config");
    let mut group = c.benchmark_group("cel, 10 validations (3 KB pod review)");
    for (label, pre_initialize) in [("pre-initialized", true), ("parsing per call", false)] {
        let engine = PolicyEngine::with_options(
            None,
            portcullis_engine::EngineOptions {
                pre_initialize,
                ..Default::default()
            },
        )
        .expect("an engine");
        let set = runtime
            .block_on(PolicySet::build(
                &engine,
                &config,
                1,
                &mut ModuleCache::new(0),
            ))
            .unwrap_or_else(|e| panic!("{e}: run `make build` first"))
            .0;
        let policy = set.policies().first().expect("the cel policy").clone();
        group.bench_function(label, |b| {
            b.iter(|| {
                runtime
                    .block_on(policy.validate(&validate, None))
                    .expect("validates")
            });
        });
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

criterion_group!(benches, evaluation, cel, loading);
criterion_main!(benches);
