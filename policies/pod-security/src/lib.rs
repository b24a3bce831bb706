//! `pod-security`: the Kubernetes Pod Security Standards (`baseline` and
//! `restricted`), with the checks, version behaviour and messages of the
//! API server's built-in Pod Security admission (`k8s.io/pod-security-admission`)
//! up to policy version v1.37, applied to Pods and to the pod templates of
//! workloads. See README.md for settings and messages.
//!
//! Layout:
//! - `settings`: level, version (`latest` or `v1.N`), exemptions;
//! - `pod`: reading a pod spec as upstream's Go structs are read, and the
//!   message helpers (`joinQuote`, `pluralize`);
//! - `checks`: the registry (which checks run, in which order) and one
//!   function per upstream check in `checks/{baseline,restricted}.rs`;
//! - `update`: which UPDATEs are evaluated at all.

mod checks;
mod pod;
mod settings;
mod update;

use portcullis_sdk::pods::{self, PodSpecRef};
use portcullis_sdk::{Metadata, Operation, Policy, Request, Verdict};
use serde_json::Value;

pub use checks::{Violation, evaluate};
pub use pod::PodView;
pub use settings::{Exemptions, LATEST_MINOR, Level, Settings, Version};

/// The policy.
pub struct PodSecurity;

/// The audit annotation key (and values) upstream sets on exempt requests.
const EXEMPT_ANNOTATION: &str = "exempt";

/// Subresources that are evaluated; upstream ignores the others (status,
/// binding, eviction, exec, attach, log, portforward, proxy, ...).
const EVALUATED_SUBRESOURCES: &[&str] = &["", "ephemeralcontainers"];

impl Policy for PodSecurity {
    type Settings = Settings;

    const METADATA: Metadata = portcullis_sdk::metadata!(validate, pods::CONTAINER_RESOURCES);

    fn validate_settings(settings: &Settings) -> Result<(), String> {
        settings.check()
    }

    fn validate(request: &Request, settings: &Settings) -> Result<Verdict, String> {
        Ok(judge(request, settings))
    }
}

/// The decision for one request, in upstream's order: ignored operations
/// and subresources, exempt namespaces and users, unchanged updates,
/// exempt runtime classes, then the checks.
fn judge(request: &Request, settings: &Settings) -> Verdict {
    if !matches!(request.operation, Operation::Create | Operation::Update) {
        return Verdict::allow();
    }
    if !EVALUATED_SUBRESOURCES.contains(&request.sub_resource.as_str()) {
        return Verdict::allow();
    }
    let exemptions = &settings.exemptions;
    if exemptions.namespaces.contains(&request.namespace) {
        return exempt("namespace");
    }
    if exemptions.usernames.contains(&request.user_info.username) {
        return exempt("user");
    }
    let Some(object) = request.object() else {
        return Verdict::allow();
    };
    let specs = pods::pod_specs(object);
    if specs.is_empty() {
        return Verdict::allow();
    }
    if request.operation == Operation::Update
        && let Some(old) = request.old_object()
        && !changed(object, old, &specs)
    {
        return Verdict::allow();
    }

    let level = settings.level();
    let minor = settings.version.minor();
    let mut violations = Vec::new();
    for spec in &specs {
        let runtime_class = spec.spec.get("runtimeClassName").and_then(Value::as_str);
        if runtime_class.is_some_and(|rc| exemptions.runtime_classes.iter().any(|e| e == rc)) {
            return exempt("runtimeClass");
        }
        let view = PodView {
            meta: metadata_of(object, spec),
            spec: spec.spec,
        };
        violations.extend(checks::evaluate_excluding(
            &view,
            level,
            minor,
            &settings.exclude,
            &settings.exempt_images,
        ));
    }
    if violations.is_empty() {
        return Verdict::allow();
    }
    Verdict::deny(format!(
        "violates PodSecurity \"{level}:{}\": {}",
        settings.version,
        checks::describe(&violations)
    ))
}

/// An exempt request: allowed, with upstream's `exempt` audit annotation.
fn exempt(kind: &str) -> Verdict {
    Verdict::allow().with_audit_annotation(EXEMPT_ANNOTATION, kind)
}

/// The metadata that goes with a pod spec: a Pod's own, or the template's
/// (the spec's sibling), `Null` when absent.
fn metadata_of<'a>(object: &'a Value, spec: &PodSpecRef<'_>) -> &'a Value {
    let path = spec
        .path
        .strip_suffix("/spec")
        .map(|parent| format!("{parent}/metadata"))
        .unwrap_or_default();
    object.pointer(&path).unwrap_or(&Value::Null)
}

/// Whether an UPDATE may have changed what the checks look at.
fn changed(object: &Value, old: &Value, specs: &[PodSpecRef<'_>]) -> bool {
    if portcullis_sdk::object::kind(object) == Some("Pod") {
        return update::significant_pod_update(object, old);
    }
    specs.iter().any(|spec| {
        update::template_changed(
            spec.spec,
            old.pointer(spec.path),
            metadata_of(object, spec),
            metadata_of(old, spec),
        )
    })
}

portcullis_sdk::export_policy!(PodSecurity);

#[cfg(test)]
mod tests;
