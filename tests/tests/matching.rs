//! A policy's `match` beyond operations and resources, through the
//! engine's chains with built modules: `namespaceSelector` (with the
//! namespace labels a host provides), `objectSelector`, `matchConditions`,
//! what an undecidable match does under each `onError`, confinement of a
//! namespaced policy resource, and mutators selected on the previous
//! mutator's output. (Through the real API server: `apiserver.rs`.)

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use anyhow::{Context as _, Result, anyhow, ensure};
use portcullis_e2e::{block_on, fixture, json, paths, yaml_str};
use portcullis_engine::{
    ChainFailure, Config, Decision, Evaluation, ModuleCache, NamespaceLabels, PolicyEngine,
    PolicySet, RawDefaults, RawPolicy, Report, Review, Selection,
};

/// Namespaces the "cluster" has: `team-a` and `team-b`, labelled by team.
struct Known;

impl NamespaceLabels for Known {
    fn labels(&self, namespace: &str) -> Option<Arc<BTreeMap<String, String>>> {
        let team = namespace.strip_prefix("team-")?;
        Some(Arc::new(BTreeMap::from([
            ("team".to_string(), team.to_string()),
            (
                "kubernetes.io/metadata.name".to_string(),
                namespace.to_string(),
            ),
        ])))
    }
}

/// Compiled modules kept on disk for the whole run: each engine after the
/// first deserializes instead of compiling.
fn cache_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap_or_else(|e| panic!("a temporary dir: {e}")))
        .path()
}

fn engine(namespaces: bool) -> Result<Arc<PolicyEngine>> {
    let engine = PolicyEngine::with_cache(Some(cache_dir()))?;
    if namespaces && engine.set_namespace_labels(Arc::new(Known)).is_err() {
        return Err(anyhow!("namespace labels set twice"));
    }
    Ok(engine)
}

/// A policy that judges every request it is given: `cel` with a rule that
/// always fails, its message naming the policy.
fn judge(name: &str, on_error: &str, matching: &str) -> Result<String> {
    let module = paths()?.modules.join("cel_policy.wasm");
    Ok(format!(
        "  - name: {name}\n    module: {}\n    onError: {on_error}\n    match:\n{matching}\n    settings: {{ validations: [{{ expression: \"false\", message: \"judged\" }}] }}\n",
        yaml_str(module.to_str().unwrap_or_default()),
    ))
}

fn build(engine: &Arc<PolicyEngine>, policies: &str) -> Result<PolicySet> {
    let config = Config::parse(
        Path::new("/matching.yaml"),
        &format!("policies:\n{policies}"),
    )?;
    let (set, _) = block_on(PolicySet::build(
        engine,
        &config,
        1,
        &mut ModuleCache::new(0),
    ))
    .map_err(|e| anyhow!("{}", Report(&e)))?;
    Ok(set)
}

/// A pod review: `namespace`, the pod's labels, the user, and for an
/// UPDATE the old pod's labels.
fn pod(
    namespace: &str,
    labels: serde_json::Value,
    user: &str,
    old: Option<serde_json::Value>,
) -> Result<serde_json::Value> {
    let mut review = fixture("pod-allowed.json")?;
    let request = &mut review["request"];
    request["namespace"] = json!(namespace);
    request["object"]["metadata"]["namespace"] = json!(namespace);
    request["object"]["metadata"]["labels"] = labels;
    request["userInfo"]["username"] = json!(user);
    if let Some(old_labels) = old {
        let mut old_object = request["object"].clone();
        old_object["metadata"]["labels"] = old_labels;
        request["oldObject"] = old_object;
        request["operation"] = json!("UPDATE");
    }
    Ok(review)
}

type Run = (Result<Decision, ChainFailure>, Vec<Evaluation>);

fn validate(set: &PolicySet, review: &serde_json::Value) -> Result<Run> {
    let body = serde_json::to_vec(review)?;
    let review = Review::parse(&body)?;
    let mut evaluations = Vec::new();
    let decision = block_on(portcullis_engine::validate(
        set,
        &review,
        Selection::All,
        None,
        &mut evaluations,
    ));
    Ok((decision, evaluations))
}

/// The policies that judged (denied) a review.
fn judged_by(set: &PolicySet, review: &serde_json::Value) -> Result<Vec<String>> {
    let (decision, _) = validate(set, review)?;
    let decision = decision.map_err(|e| anyhow!("{e}"))?;
    let message = decision.message.unwrap_or_default();
    let mut judged: Vec<String> = message
        .split("; ")
        .filter_map(|part| part.strip_suffix(": judged"))
        .map(str::to_string)
        .collect();
    judged.sort();
    Ok(judged)
}

#[test]
fn selectors_and_conditions_choose_what_is_judged() -> Result<()> {
    let engine = engine(true)?;
    let set = build(
        &engine,
        &[
            judge(
                "by-namespace",
                "deny",
                "      namespaceSelector: { matchLabels: { team: a } }",
            )?,
            judge(
                "by-object",
                "deny",
                "      objectSelector: { matchExpressions: [{ key: check, operator: In, values: [\"yes\"] }] }",
            )?,
            judge(
                "by-condition",
                "deny",
                "      matchConditions:\n        - { name: judged-user, expression: \"request.userInfo.username == 'judge-me'\" }\n        - { name: not-dry-run, expression: \"!request.dryRun\" }",
            )?,
        ]
        .concat(),
    )?;
    let cases: [(serde_json::Value, Vec<&str>); 7] = [
        (
            pod("team-a", json!({}), "someone", None)?,
            vec!["by-namespace"],
        ),
        (pod("team-b", json!({}), "someone", None)?, vec![]),
        (
            pod("team-b", json!({"check": "yes"}), "someone", None)?,
            vec!["by-object"],
        ),
        (
            pod("team-b", json!({"check": "no"}), "someone", None)?,
            vec![],
        ),
        (
            pod("team-b", json!({}), "judge-me", None)?,
            vec!["by-condition"],
        ),
        (
            pod("team-a", json!({"check": "yes"}), "judge-me", None)?,
            vec!["by-condition", "by-namespace", "by-object"],
        ),
        // An UPDATE that removes the label is judged on the old object.
        (
            pod(
                "team-b",
                json!({}),
                "someone",
                Some(json!({"check": "yes"})),
            )?,
            vec!["by-object"],
        ),
    ];
    for (index, (review, expected)) in cases.iter().enumerate() {
        let judged = judged_by(&set, review)?;
        ensure!(
            judged == *expected,
            "case {index}: judged by {judged:?}, expected {expected:?}"
        );
    }
    // A dry run is not judged by the condition that says so.
    let mut dry = pod("team-b", json!({}), "judge-me", None)?;
    dry["request"]["dryRun"] = json!(true);
    ensure!(judged_by(&set, &dry)?.is_empty());
    Ok(())
}

#[test]
fn an_undecidable_match_is_a_policy_error_under_on_error() -> Result<()> {
    let engine = engine(true)?;
    let selector = "      namespaceSelector: { matchLabels: { team: a } }";
    let broken = "      matchConditions: [{ name: broken, expression: \"object.spec.nope == 1\" }]";
    let set = build(
        &engine,
        &[
            judge("ns-deny", "deny", selector)?,
            judge("ns-allow", "allow", selector)?,
            judge("cond-deny", "deny", broken)?,
        ]
        .concat(),
    )?;
    let (decision, evaluations) = validate(&set, &pod("nowhere", json!({}), "someone", None)?)?;
    let decision = decision.map_err(|e| anyhow!("{e}"))?;
    ensure!(!decision.allowed, "{decision:?}");
    let message = decision.message.unwrap_or_default();
    ensure!(
        message.contains(
            "ns-deny: policy failed: could not be matched: namespace \"nowhere\" is not known to \
             this server (yet), so its namespaceSelector cannot be checked"
        ),
        "{message}"
    );
    ensure!(
        message.contains(
            "cond-deny: policy failed: could not be matched: matchCondition \"broken\" could not \
             be evaluated"
        ),
        "{message}"
    );
    ensure!(!message.contains("ns-allow"), "{message}");
    ensure!(
        decision.warnings.iter().any(|w| w.starts_with(
            "ns-allow: policy failed and was skipped (onError: allow): could not be matched: \
             namespace \"nowhere\""
        )),
        "{:?}",
        decision.warnings
    );
    let outcomes: Vec<(&str, &str)> = evaluations
        .iter()
        .map(|e| (&*e.policy, e.outcome))
        .collect();
    ensure!(
        outcomes
            == [
                ("ns-deny", "unknown_namespace"),
                ("ns-allow", "unknown_namespace"),
                ("cond-deny", "match_condition")
            ],
        "{outcomes:?}"
    );

    // onError: fail answers the whole review with an error.
    let set = build(&engine, &judge("ns-fail", "fail", selector)?)?;
    let (decision, _) = validate(&set, &pod("nowhere", json!({}), "someone", None)?)?;
    let failure = decision.err().context("onError: fail")?;
    ensure!(failure.policy == "ns-fail", "{failure}");
    ensure!(
        failure.to_string().contains("namespace \"nowhere\""),
        "{failure}"
    );
    Ok(())
}

#[test]
fn a_namespace_selector_needs_the_clusters_namespaces() -> Result<()> {
    let engine = engine(false)?;
    let err = build(
        &engine,
        &judge(
            "needs-ns",
            "deny",
            "      namespaceSelector: { matchLabels: { team: a } }",
        )?,
    )
    .err()
    .context("loaded without namespaces")?
    .to_string();
    ensure!(
        err.contains("policy \"needs-ns\"")
            && err.contains(
                "match.namespaceSelector needs the cluster's namespaces, which only \
                 `serve --cluster-policies` follows"
            ),
        "{err}"
    );
    // Other selectors need nothing from the cluster.
    build(
        &engine,
        &judge(
            "by-object",
            "deny",
            "      objectSelector: { matchLabels: { a: b } }",
        )?,
    )?;
    Ok(())
}

#[test]
fn a_confined_policy_sees_its_own_namespace_only() -> Result<()> {
    let engine = engine(false)?;
    let module = paths()?.modules.join("cel_policy.wasm");
    let mut raw: RawPolicy = serde_json::from_value(json!({
        "name": "tenant",
        "module": module,
        // What the resource says cannot widen what it may see.
        "match": { "namespaces": { "exclude": ["kube-system"] } },
        "settings": { "validations": [{ "expression": "false", "message": "judged" }] }
    }))?;
    raw.confine_to_namespace("team-a");
    let config = Config::from_parts(
        Path::new("admissionpolicies"),
        RawDefaults::default(),
        vec![raw],
    )?;
    let (set, _) = block_on(PolicySet::build(
        &engine,
        &config,
        1,
        &mut ModuleCache::new(0),
    ))
    .map_err(|e| anyhow!("{}", Report(&e)))?;
    ensure!(judged_by(&set, &pod("team-a", json!({}), "u", None)?)? == ["tenant"]);
    ensure!(judged_by(&set, &pod("team-b", json!({}), "u", None)?)?.is_empty());
    // A Namespace, even its own, is cluster-scoped.
    let mut namespace = pod("team-a", json!({}), "u", None)?;
    namespace["request"]["resource"] =
        json!({"group": "", "version": "v1", "resource": "namespaces"});
    namespace["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Namespace"});
    namespace["request"]["name"] = json!("team-a");
    ensure!(judged_by(&set, &namespace)?.is_empty());
    Ok(())
}

#[test]
fn mutators_are_selected_on_the_previous_output() -> Result<()> {
    let engine = engine(false)?;
    let module = paths()?.default_labels;
    let module = yaml_str(module.to_str().unwrap_or_default());
    let config = format!(
        "  - name: first\n    module: {module}\n    settings: {{ labels: {{ stage: first }} }}\n\
         \x20 - name: after-first\n    module: {module}\n    match: {{ objectSelector: {{ matchLabels: {{ stage: first }} }} }}\n    settings: {{ labels: {{ second: \"yes\" }} }}\n\
         \x20 - name: never\n    module: {module}\n    match: {{ matchConditions: [{{ name: labelled, expression: \"has(object.metadata.labels.nobody)\" }}] }}\n    settings: {{ labels: {{ never: \"yes\" }} }}\n"
    );
    let set = build(&engine, &config)?;
    let review = pod("team-b", json!({"app": "web"}), "u", None)?;
    let body = serde_json::to_vec(&review)?;
    let review = Review::parse(&body)?;
    let decision = block_on(portcullis_engine::mutate(
        &set,
        &review,
        Selection::All,
        None,
        &mut Vec::new(),
    ))
    .map_err(|e| anyhow!("{e}"))?;
    let patch = decision.patch.context("a patch")?;
    ensure!(
        patch.contains("/metadata/labels/stage")
            && patch.contains("/metadata/labels/second")
            && !patch.contains("/metadata/labels/never"),
        "{patch}"
    );
    Ok(())
}
