//! The two webhook configurations, derived from the policies: one
//! mutating and one validating webhook whose rules are the union of what
//! the policies match, never one webhook per policy. The API server then
//! calls Portcullis only for requests some policy may judge.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::cluster_policies::PolicyKey;
use crate::replica::ServedVersion;
use portcullis_engine::ResourcePattern;

/// The webhooks' names inside their configurations.
pub const MUTATING_WEBHOOK: &str = "mutate.portcullis.dev";
pub const VALIDATING_WEBHOOK: &str = "validate.portcullis.dev";

const MUTATING_KIND: &str = "MutatingWebhookConfiguration";
const VALIDATING_KIND: &str = "ValidatingWebhookConfiguration";

/// Namespaces no policy is ever called for: the control plane's own, so a
/// broken policy can never lock the cluster out of repairing itself.
pub const SYSTEM_NAMESPACES: [&str; 2] = ["kube-system", "kube-node-lease"];

/// Where the API server sends reviews.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookTarget {
    /// A Service in the controller's namespace.
    Service { name: String, port: u16 },
    /// A base URL (`https://HOST:PORT`): for servers outside the cluster.
    Url(String),
}

/// What the configurations are built from besides the policies.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// The name of both configurations.
    pub name: String,
    pub namespace: String,
    pub target: WebhookTarget,
    /// Excluded besides [`SYSTEM_NAMESPACES`] and Portcullis' own.
    pub exclude_namespaces: Vec<String>,
}

/// What one policy needs the webhooks to send it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyRules {
    /// `CREATE`, ..., `*`.
    pub operations: BTreeSet<String>,
    pub resources: BTreeSet<String>,
    pub mutates: bool,
    pub validates: bool,
    pub timeout_ms: u64,
    pub fail_closed: bool,
}

impl PolicyRules {
    /// Adds what a version in service needs.
    pub fn add(&mut self, version: &ServedVersion) {
        self.operations.extend(version.operations.iter().cloned());
        self.resources.extend(version.resources.iter().cloned());
        self.mutates |= version.mutates;
        self.validates |= version.validates;
        self.timeout_ms = self.timeout_ms.max(version.timeout_ms);
        self.fail_closed |= version.fail_closed;
    }
}

impl From<&ServedVersion> for PolicyRules {
    fn from(version: &ServedVersion) -> Self {
        let mut rules = Self::default();
        rules.add(version);
        rules
    }
}

/// Both configurations as server-side-apply bodies, and which policies
/// they cover.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub mutating: Value,
    pub validating: Value,
    pub covered: BTreeSet<PolicyKey>,
}

/// Builds both configurations, for the policy resources and the policies
/// of the replicas' config files. A policy whose rules name no resource is
/// not covered (nothing is known yet of what it judges).
pub fn desired(
    settings: &WebhookSettings,
    ca_bundle: &[u8],
    policies: &BTreeMap<PolicyKey, PolicyRules>,
    files: &[PolicyRules],
) -> Desired {
    let covered: BTreeSet<PolicyKey> = policies
        .iter()
        .filter(|(_, rules)| !rules.resources.is_empty())
        .map(|(key, _)| key.clone())
        .collect();
    let all = || policies.values().chain(files);
    let mutators: Vec<&PolicyRules> = all().filter(|r| r.mutates).collect();
    let validators: Vec<&PolicyRules> = all().filter(|r| r.validates).collect();
    Desired {
        mutating: configuration(
            settings,
            ca_bundle,
            MUTATING_KIND,
            MUTATING_WEBHOOK,
            "/mutate",
            &mutators,
        ),
        validating: configuration(
            settings,
            ca_bundle,
            VALIDATING_KIND,
            VALIDATING_WEBHOOK,
            "/validate",
            &validators,
        ),
        covered,
    }
}

fn configuration(
    settings: &WebhookSettings,
    ca_bundle: &[u8],
    kind: &str,
    webhook: &str,
    path: &str,
    policies: &[&PolicyRules],
) -> Value {
    let rules = rules(policies);
    let webhooks = if rules.is_empty() {
        Vec::new()
    } else {
        let client_config = match &settings.target {
            WebhookTarget::Service { name, port } => json!({
                "service": {
                    "namespace": settings.namespace,
                    "name": name,
                    "port": port,
                    "path": path,
                },
                "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_bundle),
            }),
            WebhookTarget::Url(base) => json!({
                "url": format!("{}{path}", base.trim_end_matches('/')),
                "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_bundle),
            }),
        };
        let mut excluded: BTreeSet<&str> = SYSTEM_NAMESPACES.into_iter().collect();
        excluded.insert(&settings.namespace);
        excluded.extend(settings.exclude_namespaces.iter().map(String::as_str));
        // The whole chain may run within one call: its deadlines added up,
        // and a second for the rest, within the API server's 1-30 s.
        let total_ms: u64 = policies.iter().map(|p| p.timeout_ms).sum();
        let timeout = (total_ms.div_ceil(1000) + 1).clamp(1, 30);
        // Validation fails closed when a policy enforces and denies on
        // error: no answer must not admit what it should judge. Mutation
        // fails open: it adds defaults, and what missed them is still
        // judged by validation, with a message that says what is missing.
        let fail_closed = kind == VALIDATING_KIND && policies.iter().any(|p| p.fail_closed);
        let mut webhook = json!({
            "name": webhook,
            "clientConfig": client_config,
            "rules": rules,
            "matchPolicy": "Equivalent",
            "namespaceSelector": {
                "matchExpressions": [{
                    "key": "kubernetes.io/metadata.name",
                    "operator": "NotIn",
                    "values": excluded,
                }],
            },
            "sideEffects": "None",
            "failurePolicy": if fail_closed { "Fail" } else { "Ignore" },
            "timeoutSeconds": timeout,
            "admissionReviewVersions": ["v1"],
        });
        if kind == MUTATING_KIND {
            // Run again when a later mutating webhook changed the object.
            webhook["reinvocationPolicy"] = json!("IfNeeded");
        }
        vec![webhook]
    };
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": kind,
        "metadata": {
            "name": settings.name,
            "labels": {
                "app.kubernetes.io/name": "portcullis",
                "app.kubernetes.io/managed-by": "portcullis-controller",
            },
        },
        "webhooks": webhooks,
    })
}

/// The smallest set of rules covering every policy: operations are merged
/// per resource, then resources sharing a group and operations share a
/// rule.
fn rules(policies: &[&PolicyRules]) -> Vec<Value> {
    // (api group, resource[/subresource]) -> operations
    let mut by_resource: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for policy in policies {
        for text in &policy.resources {
            let Ok(pattern) = ResourcePattern::parse(text) else {
                continue;
            };
            let group = pattern.group().unwrap_or("*").to_string();
            let resource = match pattern.subresource() {
                Some(sub) => format!("{}/{sub}", pattern.resource()),
                None => pattern.resource().to_string(),
            };
            let operations = by_resource.entry((group, resource)).or_default();
            operations.extend(policy.operations.iter().cloned());
        }
    }
    let mut grouped: BTreeMap<(Vec<String>, String), BTreeSet<String>> = BTreeMap::new();
    for ((group, resource), operations) in by_resource {
        let operations = if operations.contains("*") || operations.is_empty() {
            vec!["*".to_string()]
        } else {
            operations.into_iter().collect()
        };
        grouped
            .entry((operations, group))
            .or_default()
            .insert(resource);
    }
    grouped
        .into_iter()
        .map(|((operations, group), resources)| {
            json!({
                "apiGroups": [group],
                "apiVersions": ["*"],
                "operations": operations,
                "resources": resources,
                "scope": "*",
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster_policies::PolicyKind;

    fn key(name: &str) -> PolicyKey {
        PolicyKey {
            kind: PolicyKind::Cluster,
            namespace: None,
            name: name.to_string(),
        }
    }

    fn policy(ops: &[&str], resources: &[&str], mutates: bool) -> PolicyRules {
        PolicyRules {
            operations: ops.iter().map(|s| s.to_string()).collect(),
            resources: resources.iter().map(|s| s.to_string()).collect(),
            mutates,
            validates: !mutates,
            timeout_ms: 250,
            fail_closed: true,
        }
    }

    fn settings() -> WebhookSettings {
        WebhookSettings {
            name: "portcullis".into(),
            namespace: "portcullis".into(),
            target: WebhookTarget::Service {
                name: "portcullis".into(),
                port: 443,
            },
            exclude_namespaces: vec!["tenant-ops".into()],
        }
    }

    #[test]
    fn rules_are_the_minimal_union() {
        let policies = BTreeMap::from([
            (key("a"), policy(&["CREATE"], &["pods"], false)),
            (
                key("b"),
                policy(&["UPDATE"], &["pods", "deployments.apps"], false),
            ),
            (
                key("c"),
                policy(&["CREATE", "UPDATE"], &["services"], false),
            ),
            (key("d"), policy(&["*"], &["configmaps"], true)),
        ]);
        let desired = desired(&settings(), b"CA", &policies, &[]);
        let webhook = &desired.validating["webhooks"][0];
        assert_eq!(
            webhook["rules"],
            json!([
                {"apiGroups": [""], "apiVersions": ["*"], "operations": ["CREATE", "UPDATE"],
                 "resources": ["pods", "services"], "scope": "*"},
                {"apiGroups": ["apps"], "apiVersions": ["*"], "operations": ["UPDATE"],
                 "resources": ["deployments"], "scope": "*"},
            ])
        );
        assert_eq!(webhook["matchPolicy"], "Equivalent");
        assert_eq!(webhook["sideEffects"], "None");
        assert_eq!(webhook["failurePolicy"], "Fail");
        // Three validators of 250 ms: 1 s, plus one.
        assert_eq!(webhook["timeoutSeconds"], 2);
        assert_eq!(webhook["clientConfig"]["caBundle"], "Q0E=");
        assert_eq!(webhook["clientConfig"]["service"]["path"], "/validate");
        assert_eq!(
            webhook["namespaceSelector"]["matchExpressions"][0]["values"],
            json!(["kube-node-lease", "kube-system", "portcullis", "tenant-ops"])
        );
        let mutating = &desired.mutating["webhooks"][0];
        assert_eq!(mutating["failurePolicy"], "Ignore", "mutation fails open");
        assert_eq!(mutating["reinvocationPolicy"], "IfNeeded");
        assert_eq!(
            mutating["rules"],
            json!([{"apiGroups": [""], "apiVersions": ["*"], "operations": ["*"],
                    "resources": ["configmaps"], "scope": "*"}])
        );
        assert_eq!(desired.covered.len(), 4);
    }

    #[test]
    fn no_policy_no_webhook() {
        let desired = desired(&settings(), b"CA", &BTreeMap::new(), &[]);
        assert_eq!(desired.validating["webhooks"], json!([]));
        assert_eq!(desired.mutating["webhooks"], json!([]));
        // Unknown resources: not covered, no rule.
        let policies = BTreeMap::from([(key("a"), policy(&["CREATE"], &[], false))]);
        let desired = super::desired(&settings(), b"CA", &policies, &[]);
        assert!(desired.covered.is_empty());
        assert_eq!(desired.validating["webhooks"], json!([]));
    }

    #[test]
    fn config_file_policies_are_covered_too() {
        let file = PolicyRules::from(&ServedVersion {
            operations: vec!["CREATE".into()],
            resources: vec!["jobs.batch".into()],
            validates: true,
            timeout_ms: 250,
            ..ServedVersion::default()
        });
        let desired = desired(&settings(), b"CA", &BTreeMap::new(), &[file]);
        assert_eq!(
            desired.validating["webhooks"][0]["rules"],
            json!([{"apiGroups": ["batch"], "apiVersions": ["*"], "operations": ["CREATE"],
                    "resources": ["jobs"], "scope": "*"}])
        );
        assert_eq!(desired.mutating["webhooks"], json!([]));
        assert!(desired.covered.is_empty());
    }

    #[test]
    fn wildcards_and_open_policies() {
        let mut open = policy(&["CREATE"], &["*", "pods/ephemeralcontainers"], false);
        open.fail_closed = false;
        let policies = BTreeMap::from([(key("a"), open)]);
        let mut settings = settings();
        settings.target = WebhookTarget::Url("https://127.0.0.1:8443/".into());
        let desired = desired(&settings, b"CA", &policies, &[]);
        let webhook = &desired.validating["webhooks"][0];
        assert_eq!(webhook["failurePolicy"], "Ignore");
        assert_eq!(
            webhook["clientConfig"]["url"],
            "https://127.0.0.1:8443/validate"
        );
        assert_eq!(
            webhook["rules"],
            json!([
                {"apiGroups": [""], "apiVersions": ["*"], "operations": ["CREATE"],
                 "resources": ["pods/ephemeralcontainers"], "scope": "*"},
                {"apiGroups": ["*"], "apiVersions": ["*"], "operations": ["CREATE"],
                 "resources": ["*"], "scope": "*"},
            ])
        );
    }
}
