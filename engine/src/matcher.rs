//! Which policies apply to a request: by operation, resource and namespace
//! (cheap, on facts the review parsed anyway), then, only for the policies
//! that have them and only once those matched, by the labels of the
//! object and of its namespace and by CEL match conditions, as the API
//! server matches a webhook.

use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::conditions::{ConditionError, MatchConditions, Variables};
use crate::selector::{LabelSelector, Labels, ObjectJson};

/// An admission operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum Operation {
    #[serde(rename = "CREATE")]
    Create,
    #[serde(rename = "UPDATE")]
    Update,
    #[serde(rename = "DELETE")]
    Delete,
    #[serde(rename = "CONNECT")]
    Connect,
    /// Any operation (config only).
    #[serde(rename = "*")]
    Any,
}

impl Operation {
    /// As the API server writes it, e.g. `CREATE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "CREATE",
            Self::Update => "UPDATE",
            Self::Delete => "DELETE",
            Self::Connect => "CONNECT",
            Self::Any => "*",
        }
    }
}

/// A resource pattern: `resource[/subresource][.group]`, e.g. `pods`,
/// `deployments.apps`, `pods/ephemeralcontainers`, `*` (every resource,
/// no subresources) or `*/*` (everything).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct ResourcePattern {
    resource: String,
    /// `None`: only the main resource; `Some("*")`: any subresource.
    subresource: Option<String>,
    /// `None`: any group (only for `*`); `Some("")`: the core group.
    group: Option<String>,
}

impl ResourcePattern {
    /// Parses a pattern.
    ///
    /// # Errors
    /// A message saying what a pattern looks like.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid resource {text:?}: expected resource[/subresource][.group], \
                 e.g. pods, deployments.apps, pods/ephemeralcontainers or *"
            )
        };
        // Resource names never contain dots; API groups do.
        let (path, group) = match text.split_once('.') {
            Some((path, group)) if !group.is_empty() => (path, Some(group.to_string())),
            Some(_) => return Err(bad()),
            None => (text, None),
        };
        let (resource, subresource) = match path.split_once('/') {
            Some((resource, sub)) if !sub.is_empty() => (resource, Some(sub.to_string())),
            Some(_) => return Err(bad()),
            None => (path, None),
        };
        let valid_name = |s: &str| {
            s == "*"
                || (!s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
        };
        if !valid_name(resource) || subresource.as_deref().is_some_and(|s| !valid_name(s)) {
            return Err(bad());
        }
        // A bare `pods` means the core group; a bare `*` means every group.
        let group = match group {
            Some(group) => Some(group),
            None if resource == "*" => None,
            None => Some(String::new()),
        };
        Ok(Self {
            resource: resource.to_string(),
            subresource,
            group,
        })
    }

    /// The resource, or `*`.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The subresource (`*`: any); `None`: only the main resource.
    pub fn subresource(&self) -> Option<&str> {
        self.subresource.as_deref()
    }

    /// The API group (`""`: core); `None`: every group.
    pub fn group(&self) -> Option<&str> {
        self.group.as_deref()
    }

    fn matches(&self, resource: &GroupResource<'_>) -> bool {
        let group_ok = self
            .group
            .as_deref()
            .is_none_or(|group| group == "*" || group == resource.group);
        let resource_ok = self.resource == "*" || self.resource == resource.resource;
        let sub_ok = match (&self.subresource, resource.subresource) {
            (None, None) => true,
            (None, Some(_)) => false,
            (Some(want), Some(got)) => want == "*" || want == got,
            (Some(want), None) => want == "*",
        };
        group_ok && resource_ok && sub_ok
    }
}

impl From<ResourcePattern> for String {
    fn from(pattern: ResourcePattern) -> String {
        let mut text = pattern.resource;
        if let Some(sub) = pattern.subresource {
            text.push('/');
            text.push_str(&sub);
        }
        if let Some(group) = pattern.group.filter(|g| !g.is_empty()) {
            text.push('.');
            text.push_str(&group);
        }
        text
    }
}

impl<'de> Deserialize<'de> for ResourcePattern {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        ResourcePattern::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The resource a request is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupResource<'a> {
    pub group: &'a str,
    pub resource: &'a str,
    pub subresource: Option<&'a str>,
}

/// What the matcher needs to know about a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub operation: Option<Operation>,
    pub resource: GroupResource<'a>,
    /// Empty for cluster-scoped objects.
    pub namespace: &'a str,
    pub name: &'a str,
}

/// The labels of the cluster's namespaces, for `namespaceSelector`: what
/// the host knows of them (in a server, a watch on the API server). The
/// engine asks only for a policy that has a namespaceSelector, and only
/// once every cheaper check matched.
pub trait NamespaceLabels: Send + Sync {
    /// The labels of `namespace`; `None` when it is not known (yet).
    fn labels(&self, namespace: &str) -> Option<Arc<Labels>>;
}

/// Why it could not be decided whether a policy applies. A policy error:
/// the policy's `onError` says what it means.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatchError {
    /// The request's namespace is not (yet) among the namespaces the host
    /// knows, so the namespaceSelector cannot be checked.
    #[error(
        "namespace {0:?} is not known to this server (yet), so its namespaceSelector cannot be checked"
    )]
    UnknownNamespace(String),
    /// No namespace labels were given to the engine (refused at load; kept
    /// for safety).
    #[error("namespaceSelector needs the cluster's namespaces (serve --cluster-policies)")]
    NoNamespaces,
    /// The object's labels are not a map of strings.
    #[error("the {which}'s metadata.labels cannot be read: {message}")]
    Labels {
        which: &'static str,
        message: String,
    },
    /// A match condition failed or gave no bool.
    #[error(transparent)]
    Condition(#[from] ConditionError),
}

impl MatchError {
    /// A short, stable name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnknownNamespace(_) | Self::NoNamespaces => "unknown_namespace",
            Self::Labels { .. } => "invalid_labels",
            Self::Condition(_) => "match_condition",
        }
    }
}

/// A policy's `match` block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matcher {
    /// `None`: every operation.
    pub operations: Option<Vec<Operation>>,
    /// `None`: the resources the policy's metadata names.
    pub resources: Option<Vec<ResourcePattern>>,
    /// Non-empty: only these namespaces.
    pub include_namespaces: Vec<String>,
    pub exclude_namespaces: Vec<String>,
    /// Set by the host for a namespaced policy resource (never from a
    /// config file): only requests in exactly this namespace match; no
    /// cluster-scoped request does, Namespace objects included.
    pub only_namespace: Option<String>,
    /// Only objects (or, for UPDATE and DELETE, their old version) whose
    /// labels it selects. Never empty (an empty selector is `None`).
    pub object_selector: Option<LabelSelector>,
    /// Only requests in namespaces whose labels it selects; a Namespace
    /// by its own labels; other cluster-scoped requests always. Never
    /// empty.
    pub namespace_selector: Option<LabelSelector>,
    /// CEL conditions that must all be true. Never empty.
    pub match_conditions: Option<Arc<MatchConditions>>,
}

/// Whether a request is about a Namespace object itself.
fn is_namespace_object(resource: &GroupResource<'_>) -> bool {
    resource.resource == "namespaces" && resource.group.is_empty()
}

/// One review as the selectors and conditions read it. Making it costs
/// nothing: labels and CEL variables are read from the JSON on first use,
/// once per review.
pub(crate) struct MatchInput<'r> {
    facts: RequestFacts<'r>,
    object: Option<ObjectJson<'r>>,
    old_object: Option<ObjectJson<'r>>,
    /// The labels of `object` and `oldObject`, once read.
    labels: [OnceLock<Result<Labels, String>>; 2],
    variables: Variables<'r>,
}

impl<'r> MatchInput<'r> {
    pub(crate) fn new(
        facts: RequestFacts<'r>,
        request: &'r RawValue,
        object: Option<ObjectJson<'r>>,
        old_object: Option<ObjectJson<'r>>,
    ) -> Self {
        Self {
            facts,
            object,
            old_object,
            labels: [OnceLock::new(), OnceLock::new()],
            variables: Variables::new(request, object, old_object),
        }
    }

    /// The labels of `object` (`old: false`) or `oldObject`; `None` when
    /// the request has no such object.
    fn labels(&self, old: bool) -> Result<Option<&Labels>, MatchError> {
        let (object, cached, which) = if old {
            (self.old_object, &self.labels[1], "oldObject")
        } else {
            (self.object, &self.labels[0], "object")
        };
        let Some(object) = object else {
            return Ok(None);
        };
        cached
            .get_or_init(|| object.labels().map_err(|e| e.to_string()))
            .as_ref()
            .map(Some)
            .map_err(|message| MatchError::Labels {
                which,
                message: message.clone(),
            })
    }
}

impl Matcher {
    /// Fills in the resources from the policy's metadata when the config
    /// named none. Patterns the policy declares that do not parse are
    /// reported.
    ///
    /// # Errors
    /// The first unparsable resource the policy declares.
    pub fn with_default_resources(mut self, declared: &[String]) -> Result<Self, String> {
        if self.resources.is_none() {
            let parsed = declared
                .iter()
                .map(|text| ResourcePattern::parse(text))
                .collect::<Result<Vec<_>, _>>()?;
            self.resources = Some(parsed);
        }
        Ok(self)
    }

    /// Whether a request falls under this policy by its operation,
    /// resource and namespace (the checks that read nothing but the facts
    /// the review parsed anyway). A policy for which [`Matcher::selects`]
    /// has more to check applies only if that says so too.
    pub fn matches(&self, request: &RequestFacts<'_>) -> bool {
        if let Some(only) = &self.only_namespace
            && (request.namespace.is_empty()
                || request.namespace != only
                || is_namespace_object(&request.resource))
        {
            return false;
        }
        let operation_ok = match (&self.operations, request.operation) {
            (None, _) => true,
            (Some(ops), Some(op)) => ops.iter().any(|o| *o == Operation::Any || *o == op),
            (Some(ops), None) => ops.contains(&Operation::Any),
        };
        let resource_ok = self
            .resources
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| p.matches(&request.resource)));
        operation_ok && resource_ok && self.namespace_matches(request)
    }

    /// Namespaced requests are matched by their namespace, a Namespace
    /// object by its own name; other cluster-scoped requests always match,
    /// as the API server's namespaceSelector does.
    fn namespace_matches(&self, request: &RequestFacts<'_>) -> bool {
        let namespace = if !request.namespace.is_empty() {
            request.namespace
        } else if is_namespace_object(&request.resource) {
            request.name
        } else {
            return true;
        };
        if self.exclude_namespaces.iter().any(|n| n == namespace) {
            return false;
        }
        self.include_namespaces.is_empty() || self.include_namespaces.iter().any(|n| n == namespace)
    }

    /// Whether [`Matcher::selects`] has anything to check.
    pub(crate) fn needs_input(&self) -> bool {
        self.object_selector.is_some()
            || self.namespace_selector.is_some()
            || self.match_conditions.is_some()
    }

    /// For a request [`Matcher::matches`] matched: whether its object
    /// selector, namespace selector and match conditions select it too,
    /// checked in that order (the cheapest first) and only as far as
    /// needed.
    ///
    /// # Errors
    /// A [`MatchError`] when that cannot be decided: the namespace is not
    /// known, a condition failed.
    pub(crate) fn selects(
        &self,
        input: &MatchInput<'_>,
        namespaces: Option<&dyn NamespaceLabels>,
    ) -> Result<bool, MatchError> {
        if let Some(selector) = &self.object_selector
            && !object_selected(selector, input)?
        {
            return Ok(false);
        }
        if let Some(selector) = &self.namespace_selector
            && !namespace_selected(selector, input, namespaces)?
        {
            return Ok(false);
        }
        match &self.match_conditions {
            Some(conditions) => Ok(conditions.evaluate(&input.variables)?),
            None => Ok(true),
        }
    }
}

/// As the API server's objectSelector: the object's labels or the old
/// object's; a request with neither object is not selected.
fn object_selected(selector: &LabelSelector, input: &MatchInput<'_>) -> Result<bool, MatchError> {
    for old in [false, true] {
        if let Some(labels) = input.labels(old)?
            && selector.matches(labels)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// As the API server's namespaceSelector: a Namespace by its own labels
/// (the object's, else the old object's), a namespaced request by its
/// namespace's, and other cluster-scoped requests always.
fn namespace_selected(
    selector: &LabelSelector,
    input: &MatchInput<'_>,
    namespaces: Option<&dyn NamespaceLabels>,
) -> Result<bool, MatchError> {
    let facts = &input.facts;
    let namespace = if is_namespace_object(&facts.resource) {
        for old in [false, true] {
            if let Some(labels) = input.labels(old)? {
                return Ok(selector.matches(labels));
            }
        }
        // Neither object (CONNECT): the namespace as known.
        if facts.namespace.is_empty() {
            facts.name
        } else {
            facts.namespace
        }
    } else if facts.namespace.is_empty() {
        return Ok(true);
    } else {
        facts.namespace
    };
    let labels = namespaces
        .ok_or(MatchError::NoNamespaces)?
        .labels(namespace)
        .ok_or_else(|| MatchError::UnknownNamespace(namespace.to_string()))?;
    Ok(selector.matches(&labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(
        op: Operation,
        group: &'a str,
        resource: &'a str,
        namespace: &'a str,
    ) -> RequestFacts<'a> {
        RequestFacts {
            operation: Some(op),
            resource: GroupResource {
                group,
                resource,
                subresource: None,
            },
            namespace,
            name: "x",
        }
    }

    fn patterns(list: &[&str]) -> Option<Vec<ResourcePattern>> {
        Some(
            list.iter()
                .map(|p| ResourcePattern::parse(p).expect("valid"))
                .collect(),
        )
    }

    #[test]
    fn resources_match_by_group() {
        let m = Matcher {
            resources: patterns(&["pods", "deployments.apps"]),
            ..Matcher::default()
        };
        assert!(m.matches(&facts(Operation::Create, "", "pods", "default")));
        assert!(m.matches(&facts(Operation::Create, "apps", "deployments", "default")));
        assert!(!m.matches(&facts(
            Operation::Create,
            "extensions",
            "deployments",
            "default"
        )));
        assert!(!m.matches(&facts(Operation::Create, "", "configmaps", "default")));
    }

    #[test]
    fn subresources_only_match_when_named() {
        let m = Matcher {
            resources: patterns(&["pods"]),
            ..Matcher::default()
        };
        let mut request = facts(Operation::Update, "", "pods", "default");
        request.resource.subresource = Some("status");
        assert!(!m.matches(&request));
        let m = Matcher {
            resources: patterns(&["pods/*"]),
            ..Matcher::default()
        };
        assert!(m.matches(&request));
        let m = Matcher {
            resources: patterns(&["*"]),
            ..Matcher::default()
        };
        assert!(m.matches(&facts(Operation::Create, "batch", "jobs", "default")));
        assert!(!m.matches(&request));
    }

    #[test]
    fn operations_and_namespaces() {
        let m = Matcher {
            operations: Some(vec![Operation::Create]),
            exclude_namespaces: vec!["kube-system".into()],
            ..Matcher::default()
        };
        assert!(m.matches(&facts(Operation::Create, "", "pods", "default")));
        assert!(!m.matches(&facts(Operation::Delete, "", "pods", "default")));
        assert!(!m.matches(&facts(Operation::Create, "", "pods", "kube-system")));
        // Cluster-scoped objects are not filtered by namespace.
        assert!(m.matches(&facts(
            Operation::Create,
            "rbac.authorization.k8s.io",
            "clusterroles",
            ""
        )));
        // A Namespace is matched by its own name.
        let mut ns = facts(Operation::Create, "", "namespaces", "");
        ns.name = "kube-system";
        assert!(!m.matches(&ns));
        let include = Matcher {
            include_namespaces: vec!["team-a".into()],
            ..Matcher::default()
        };
        assert!(include.matches(&facts(Operation::Create, "", "pods", "team-a")));
        assert!(!include.matches(&facts(Operation::Create, "", "pods", "team-b")));
    }

    #[test]
    fn defaults_come_from_metadata() {
        let m = Matcher::default()
            .with_default_resources(&["pods".to_string(), "jobs.batch".to_string()])
            .expect("valid");
        assert!(m.matches(&facts(Operation::Create, "batch", "jobs", "default")));
        assert!(!m.matches(&facts(Operation::Create, "", "services", "default")));
        assert!(
            Matcher::default()
                .with_default_resources(&["Pods!".to_string()])
                .is_err()
        );
    }

    fn selector(yaml: &str) -> Option<LabelSelector> {
        let raw = serde_yaml_ng::from_str(yaml).expect("yaml");
        Some(LabelSelector::parse(raw).expect("valid selector"))
    }

    /// Namespaces and their labels, as a host would know them.
    struct Known(Vec<(&'static str, &'static str)>);

    impl NamespaceLabels for Known {
        fn labels(&self, namespace: &str) -> Option<Arc<Labels>> {
            self.0
                .iter()
                .find(|(name, _)| *name == namespace)
                .map(|(_, team)| Arc::new(Labels::from([("team".to_string(), team.to_string())])))
        }
    }

    /// A request as JSON, with the facts the review would parse from it.
    struct Request {
        json: Box<RawValue>,
        object: Option<Box<RawValue>>,
        old_object: Option<Box<RawValue>>,
        resource: &'static str,
        namespace: &'static str,
        name: &'static str,
    }

    impl Request {
        fn new(
            resource: &'static str,
            namespace: &'static str,
            object: Option<serde_json::Value>,
            old_object: Option<serde_json::Value>,
        ) -> Self {
            let raw =
                |value: &serde_json::Value| serde_json::value::to_raw_value(value).expect("json");
            let json = serde_json::json!({
                "uid": "u", "namespace": namespace, "name": "x",
                "userInfo": {"username": "alice"},
                "object": object, "oldObject": old_object,
            });
            Self {
                json: raw(&json),
                object: object.as_ref().map(raw),
                old_object: old_object.as_ref().map(raw),
                resource,
                namespace,
                name: "x",
            }
        }

        fn input(&self) -> MatchInput<'_> {
            MatchInput::new(
                RequestFacts {
                    operation: Some(Operation::Create),
                    resource: GroupResource {
                        group: "",
                        resource: self.resource,
                        subresource: None,
                    },
                    namespace: self.namespace,
                    name: self.name,
                },
                &self.json,
                self.object.as_deref().map(ObjectJson::Raw),
                self.old_object.as_deref().map(ObjectJson::Raw),
            )
        }
    }

    fn labelled(labels: serde_json::Value) -> Option<serde_json::Value> {
        Some(serde_json::json!({"metadata": {"name": "x", "labels": labels}}))
    }

    #[test]
    fn object_selectors_read_the_object_or_the_old_object() {
        let m = Matcher {
            object_selector: selector("matchLabels: {check: \"yes\"}"),
            ..Matcher::default()
        };
        let yes = || labelled(serde_json::json!({"check": "yes"}));
        let no = || labelled(serde_json::json!({"check": "no"}));
        let cases = [
            (Request::new("pods", "a", yes(), None), true),
            (Request::new("pods", "a", no(), None), false),
            // UPDATE that removes the label, and one that adds it: either.
            (Request::new("pods", "a", no(), yes()), true),
            (Request::new("pods", "a", yes(), no()), true),
            // DELETE: the old object only.
            (Request::new("pods", "a", None, yes()), true),
            (Request::new("pods", "a", None, no()), false),
            // No object at all (CONNECT): not selected.
            (Request::new("pods", "a", None, None), false),
            // No labels.
            (
                Request::new("pods", "a", Some(serde_json::json!({"metadata": {}})), None),
                false,
            ),
        ];
        for (index, (request, expected)) in cases.iter().enumerate() {
            assert_eq!(
                m.selects(&request.input(), None),
                Ok(*expected),
                "case {index}"
            );
        }
        let bad = Request::new(
            "pods",
            "a",
            Some(serde_json::json!({"metadata": {"labels": {"n": 1}}})),
            None,
        );
        let err = m
            .selects(&bad.input(), None)
            .expect_err("labels not strings");
        assert_eq!(err.kind(), "invalid_labels");
        assert!(
            err.to_string()
                .starts_with("the object's metadata.labels cannot be read"),
            "{err}"
        );
    }

    #[test]
    fn namespace_selectors_read_the_namespace_or_the_namespace_object() {
        let m = Matcher {
            namespace_selector: selector("matchLabels: {team: a}"),
            ..Matcher::default()
        };
        let known = Known(vec![("team-a", "a"), ("team-b", "b")]);
        let known: Option<&dyn NamespaceLabels> = Some(&known);
        let pod =
            |namespace| Request::new("pods", namespace, labelled(serde_json::json!({})), None);
        assert_eq!(m.selects(&pod("team-a").input(), known), Ok(true));
        assert_eq!(m.selects(&pod("team-b").input(), known), Ok(false));
        // Unknown: an error naming the namespace, never a silent skip.
        let err = m
            .selects(&pod("nowhere").input(), known)
            .expect_err("unknown");
        assert_eq!(err, MatchError::UnknownNamespace("nowhere".to_string()));
        assert!(
            err.to_string()
                .contains("namespace \"nowhere\" is not known"),
            "{err}"
        );
        assert_eq!(err.kind(), "unknown_namespace");
        assert_eq!(
            m.selects(&pod("team-a").input(), None),
            Err(MatchError::NoNamespaces)
        );
        // Cluster-scoped objects other than namespaces always match.
        let role = Request::new("clusterroles", "", labelled(serde_json::json!({})), None);
        assert_eq!(m.selects(&role.input(), None), Ok(true));
        // A Namespace by its own labels: the new ones, else the old ones,
        // whatever the host knows of it (it may not know it yet).
        let team = |t: &str| labelled(serde_json::json!({"team": t}));
        let create = Request::new("namespaces", "", team("a"), None);
        assert_eq!(m.selects(&create.input(), known), Ok(true));
        let relabel = Request::new("namespaces", "team-a", team("b"), team("a"));
        assert_eq!(m.selects(&relabel.input(), known), Ok(false));
        let delete = Request::new("namespaces", "team-b", None, team("a"));
        assert_eq!(m.selects(&delete.input(), known), Ok(true));
        // Neither object: the namespace as known.
        let connect = Request::new("namespaces", "team-b", None, None);
        assert_eq!(m.selects(&connect.input(), known), Ok(false));
    }

    #[test]
    fn selectors_and_conditions_all_hold() {
        let conditions = crate::conditions::MatchConditions::compile(vec![
            crate::conditions::RawMatchCondition {
                name: "not-alice".to_string(),
                expression: "request.userInfo.username != 'alice'".to_string(),
            },
        ])
        .expect("valid");
        let m = Matcher {
            object_selector: selector("matchExpressions: [{key: skip, operator: DoesNotExist}]"),
            match_conditions: Some(Arc::new(conditions)),
            ..Matcher::default()
        };
        assert!(m.needs_input());
        assert!(!Matcher::default().needs_input());
        // The object is selected, the condition is false.
        let request = Request::new("pods", "a", labelled(serde_json::json!({})), None);
        assert_eq!(m.selects(&request.input(), None), Ok(false));
        // The object is not selected: the condition is not even evaluated.
        let skipped = Request::new("pods", "a", labelled(serde_json::json!({"skip": ""})), None);
        assert_eq!(m.selects(&skipped.input(), None), Ok(false));
    }

    #[test]
    fn confinement_admits_only_its_own_namespace() {
        let m = Matcher {
            only_namespace: Some("tenant".to_string()),
            ..Matcher::default()
        };
        assert!(m.matches(&facts(Operation::Create, "", "pods", "tenant")));
        assert!(m.matches(&facts(Operation::Delete, "apps", "deployments", "tenant")));
        assert!(!m.matches(&facts(Operation::Create, "", "pods", "other")));
        assert!(!m.matches(&facts(Operation::Create, "", "pods", "tenant-2")));
        // Cluster-scoped requests never match, Namespace objects included
        // (even its own: the API server names a Namespace's request with
        // its own name).
        assert!(!m.matches(&facts(
            Operation::Create,
            "rbac.authorization.k8s.io",
            "clusterroles",
            ""
        )));
        let mut own = facts(Operation::Update, "", "namespaces", "tenant");
        own.name = "tenant";
        assert!(!m.matches(&own));
        let mut created = facts(Operation::Create, "", "namespaces", "");
        created.name = "tenant";
        assert!(!m.matches(&created));
        // An empty confinement confines to nothing, not to cluster scope.
        let empty = Matcher {
            only_namespace: Some(String::new()),
            ..Matcher::default()
        };
        assert!(!empty.matches(&facts(Operation::Create, "", "clusterroles", "")));
        // The match block cannot widen it.
        let widened = Matcher {
            only_namespace: Some("tenant".to_string()),
            include_namespaces: vec!["other".to_string()],
            ..Matcher::default()
        };
        assert!(!widened.matches(&facts(Operation::Create, "", "pods", "other")));
    }

    #[test]
    fn bad_patterns_are_explained() {
        let err = ResourcePattern::parse("Deployments").expect_err("uppercase");
        assert!(err.contains("resource[/subresource][.group]"), "{err}");
        assert!(ResourcePattern::parse("pods.").is_err());
        assert!(ResourcePattern::parse("pods/").is_err());
        assert_eq!(
            String::from(ResourcePattern::parse("deployments/scale.apps").expect("valid")),
            "deployments/scale.apps"
        );
    }
}
