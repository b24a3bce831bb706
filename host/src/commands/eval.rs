//! `portcullis eval`: the server's chains, offline, on one review.

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::{Context as _, anyhow};
use clap::Args;

use crate::admission::{self, Decision, Review};
use crate::chain::{self, Selection};
use crate::cli::CliError;
use crate::config::Config;
use crate::engine::PolicyEngine;
use crate::policy_set::{ModuleCache, PolicySet};

#[derive(Debug, Args)]
pub struct EvalCommand {
    /// The policy config file (YAML).
    #[arg(long, env = "PORTCULLIS_CONFIG")]
    pub config: PathBuf,

    /// The AdmissionReview (or a bare AdmissionRequest) as JSON; `-` reads
    /// standard input.
    #[arg(long)]
    pub review: PathBuf,
}

impl EvalCommand {
    /// Runs mutate, then validate on the mutated object, and prints the
    /// response AdmissionReview.
    ///
    /// # Errors
    /// Exit 2 for a bad config, policies or review; 1 for a policy whose
    /// `onError: fail` fired.
    pub fn execute(self) -> Result<(), CliError> {
        let body = read_review(&self.review).map_err(CliError::usage)?;
        let config = Config::load(&self.config).map_err(CliError::usage)?;
        let runtime = tokio::runtime::Runtime::new().map_err(CliError::failure)?;
        let response = runtime.block_on(async {
            let engine = PolicyEngine::new().map_err(CliError::failure)?;
            let (set, _) = PolicySet::build(&engine, &config, 1, &mut ModuleCache::new(0))
                .await
                .map_err(CliError::usage)?;
            evaluate(&set, &body).await
        })?;
        println!("{response}");
        Ok(())
    }
}

fn read_review(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut body = Vec::new();
        std::io::stdin()
            .read_to_end(&mut body)
            .context("reading the review from standard input")?;
        return Ok(body);
    }
    std::fs::read(path).with_context(|| format!("cannot read review file {}", path.display()))
}

/// Accepts a bare AdmissionRequest too, as people paste them from logs.
fn as_review(body: Vec<u8>) -> Vec<u8> {
    let Ok(serde_json::Value::Object(value)) = serde_json::from_slice::<serde_json::Value>(&body)
    else {
        return body;
    };
    if value.contains_key("kind") || !value.contains_key("uid") {
        return body;
    }
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": value,
    }))
    .unwrap_or(body)
}

async fn evaluate(set: &PolicySet, body: &[u8]) -> Result<String, CliError> {
    let body = as_review(body.to_vec());
    let review = Review::parse(&body).map_err(CliError::usage)?;
    let mutated = chain::mutate(set, &review, Selection::All, None)
        .await
        .map_err(CliError::failure)?;
    let final_decision = if !mutated.allowed {
        mutated
    } else {
        let validated = match (&mutated.patch, review.object) {
            (Some(patch), Some(object)) => {
                let body =
                    patched_review(&review, object.get(), patch).map_err(CliError::failure)?;
                let patched = Review::parse(&body).map_err(CliError::failure)?;
                chain::validate(set, &patched, Selection::All, None).await
            }
            _ => chain::validate(set, &review, Selection::All, None).await,
        }
        .map_err(CliError::failure)?;
        combine(mutated, validated)
    };
    let response = admission::response(review.api_version, &review.uid, &final_decision);
    let value: serde_json::Value = serde_json::from_slice(&response).map_err(CliError::failure)?;
    serde_json::to_string_pretty(&value).map_err(CliError::failure)
}

/// The review with the mutation chain's patch applied to its object.
fn patched_review(review: &Review<'_>, object: &str, patch: &str) -> anyhow::Result<Vec<u8>> {
    let mut object: serde_json::Value = serde_json::from_str(object)?;
    let patch: json_patch::Patch = serde_json::from_str(patch)?;
    json_patch::patch(&mut object, &patch).map_err(|err| anyhow!("applying the patch: {err}"))?;
    let request = admission::request_with_object(review.request, &object)?;
    Ok(format!(
        r#"{{"apiVersion":"{}","kind":"AdmissionReview","request":{request}}}"#,
        review.api_version.as_str()
    )
    .into_bytes())
}

/// Validation decides; the mutation's patch, warnings and annotations ride
/// along.
fn combine(mutated: Decision, validated: Decision) -> Decision {
    let mut warnings = mutated.warnings;
    warnings.extend(validated.warnings);
    let mut audit_annotations = mutated.audit_annotations;
    audit_annotations.extend(validated.audit_annotations);
    Decision {
        allowed: validated.allowed,
        code: validated.code,
        message: validated.message,
        patch: mutated.patch,
        warnings,
        audit_annotations,
    }
}
