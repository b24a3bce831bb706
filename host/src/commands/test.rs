//! `portcullis test`: runs policy test suites (see `suite`) with the
//! server's engine and chains, and reports like a test runner: one line per
//! case, a summary line, exit code 1 when any case fails.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use serde_json::Value;

use crate::commands::CliError;
use portcullis_engine::Answer;
use portcullis_engine::PolicyEngine;
use portcullis_engine::{ModuleCache, PolicySet};
use portcullis_testing::{Case, Expect, Suite};

#[derive(Debug, Args)]
pub struct TestCommand {
    /// Test suite files (YAML).
    #[arg(required = true, value_name = "SUITE")]
    pub suites: Vec<PathBuf>,

    /// Only run cases whose name contains this text.
    #[arg(long, value_name = "TEXT")]
    pub filter: Option<String>,

    #[command(flatten)]
    pub module_cache: super::ModuleCacheArgs,
}

/// Counts over every suite.
#[derive(Debug, Default)]
struct Tally {
    passed: usize,
    failed: usize,
    /// Suites that could not be loaded.
    broken: usize,
}

impl TestCommand {
    /// Runs every suite.
    ///
    /// # Errors
    /// Exit 1 when a case fails; 2 when a suite (or its config or
    /// policies) cannot be loaded.
    pub fn execute(self) -> Result<(), CliError> {
        let runtime = tokio::runtime::Runtime::new().map_err(CliError::failure)?;
        let tally = runtime.block_on(self.run())?;
        println!(
            "{} passed, {} failed{}",
            tally.passed,
            tally.failed,
            if tally.broken > 0 {
                format!(", {} suites not loaded", tally.broken)
            } else {
                String::new()
            }
        );
        if tally.broken > 0 {
            return Err(CliError::usage(anyhow::anyhow!(
                "{} test suites could not be loaded",
                tally.broken
            )));
        }
        if tally.failed > 0 {
            return Err(CliError::failure(anyhow::anyhow!(
                "{} test cases failed",
                tally.failed
            )));
        }
        Ok(())
    }

    async fn run(&self) -> Result<Tally, CliError> {
        let engine = PolicyEngine::with_cache(self.module_cache.dir().as_deref())
            .map_err(CliError::failure)?;
        // Shared by every suite: a module several suites use compiles once.
        let mut cache = ModuleCache::new(usize::MAX);
        let mut tally = Tally::default();
        for (index, path) in self.suites.iter().enumerate() {
            println!("suite {}", path.display());
            let loaded = match Suite::load(path) {
                Ok(suite) => {
                    let generation = index as u64 + 1;
                    PolicySet::build(&engine, &suite.config, generation, &mut cache)
                        .await
                        .map(|(set, _)| (suite, Arc::new(set)))
                        .map_err(|err| err.to_string())
                }
                Err(err) => Err(err.to_string()),
            };
            let (suite, set) = match loaded {
                Ok(loaded) => loaded,
                Err(message) => {
                    println!("  ERROR {message}");
                    tally.broken += 1;
                    continue;
                }
            };
            for case in &suite.cases {
                if self
                    .filter
                    .as_ref()
                    .is_some_and(|filter| !case.name.contains(filter.as_str()))
                {
                    continue;
                }
                let started = Instant::now();
                let failures = run_case(&set, case).await;
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                if failures.is_empty() {
                    tally.passed += 1;
                    println!("  ok    {} ({ms:.1} ms)", case.name);
                } else {
                    tally.failed += 1;
                    println!("  FAIL  {} ({ms:.1} ms)", case.name);
                    for failure in failures {
                        for (n, line) in failure.lines().enumerate() {
                            let lead = if n == 0 { "- " } else { "  " };
                            println!("        {lead}{line}");
                        }
                    }
                }
            }
        }
        Ok(tally)
    }
}

/// What is wrong with the answer to `case`; empty when it passes.
async fn run_case(set: &PolicySet, case: &Case) -> Vec<String> {
    match portcullis_engine::evaluate(set, case.review.clone(), case.policy.as_deref()).await {
        Ok(answer) => check(&answer, &case.expect),
        Err(err) => vec![err.to_string()],
    }
}

fn check(answer: &Answer, expect: &Expect) -> Vec<String> {
    let decision = &answer.decision;
    let message = decision.message.as_deref().unwrap_or_default();
    let mut failures = Vec::new();
    if decision.allowed != expect.allowed {
        failures.push(format!(
            "expected allowed: {}, got allowed: {}{}",
            expect.allowed,
            decision.allowed,
            if message.is_empty() {
                String::new()
            } else {
                format!(" with message {message:?}")
            }
        ));
    }
    if let Some(expected) = &expect.message
        && !message.contains(expected.as_str())
    {
        failures.push(format!(
            "expected the message to contain {expected:?}, got {message:?}"
        ));
    }
    for expected in &expect.warnings {
        if !decision
            .warnings
            .iter()
            .any(|w| w.contains(expected.as_str()))
        {
            failures.push(format!(
                "expected a warning containing {expected:?}, got {:?}",
                decision.warnings
            ));
        }
    }
    if expect.no_patch && decision.patch.is_some() {
        failures.push(format!(
            "expected no patch, got {}",
            decision.patch.as_deref().unwrap_or_default()
        ));
    }
    if let Some(expected) = &expect.patched {
        let actual = answer.object.as_ref().unwrap_or(&Value::Null);
        if actual != expected {
            // The difference as a patch from what was expected to what
            // came out: short and exact, where two whole objects are not.
            let diff = json_patch::diff(expected, actual);
            failures.push(format!(
                "the patched object differs from the expected one; from expected to actual:\n{}",
                serde_json::to_string_pretty(&diff).unwrap_or_default()
            ));
        }
    }
    failures
}
