//! The securityContext defaults of one container.

use serde_json::{Map, Value, json};

use crate::settings::Settings;

/// What the pod spec around a container already decides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodLevel {
    /// `securityContext.runAsNonRoot` is set at pod level (to anything: a
    /// pod-level `false` is an explicit choice a container default would
    /// override).
    run_as_non_root: bool,
    /// `securityContext.seccompProfile` is set at pod level.
    seccomp_profile: bool,
    /// `securityContext.runAsUser: 0` at pod level.
    runs_as_root: bool,
    /// `os.name: windows`: the API server rejects the Linux-only fields
    /// (seccompProfile, capabilities, allowPrivilegeEscalation) there, and
    /// restricted does not ask for them.
    windows: bool,
}

impl PodLevel {
    /// Reads the pod-level settings from a pod spec.
    pub fn of(spec: &Value) -> Self {
        let context = &spec["securityContext"];
        PodLevel {
            run_as_non_root: is_set(context, "runAsNonRoot"),
            seccomp_profile: is_set(context, "seccompProfile"),
            runs_as_root: context["runAsUser"].as_i64() == Some(0),
            windows: spec["os"]["name"].as_str() == Some("windows"),
        }
    }
}

/// Adds the securityContext defaults `settings` turn on to `container`,
/// and returns the fields added (as `securityContext.<field>`).
///
/// Skipped on purpose, beyond fields already set:
/// - `runAsNonRoot` when the container (or the pod, for a container that
///   sets no `runAsUser`) runs as UID 0: the kubelet would refuse to start
///   it, and restricted denies it with a clearer message anyway;
/// - `allowPrivilegeEscalation: false` on a `privileged` container or one
///   adding `SYS_ADMIN`: the API server rejects that combination.
///
/// `securityContext` is created only when something is added.
pub fn add_defaults(
    container: &mut Map<String, Value>,
    pod: &PodLevel,
    settings: &Settings,
) -> Result<Vec<&'static str>, String> {
    let current = container.get("securityContext").unwrap_or(&Value::Null);
    if !current.is_null() && !current.is_object() {
        return Err("securityContext is not a JSON object".to_string());
    }
    let mut context = current.as_object().cloned().unwrap_or_default();
    let mut added = Vec::new();

    let runs_as_root = match context.get("runAsUser").and_then(Value::as_i64) {
        Some(uid) => uid == 0,
        None => pod.runs_as_root,
    };
    if settings.run_as_non_root
        && !pod.run_as_non_root
        && !runs_as_root
        && !is_set_in(&context, "runAsNonRoot")
    {
        context.insert("runAsNonRoot".into(), json!(true));
        added.push("securityContext.runAsNonRoot");
    }
    if !pod.windows {
        if settings.seccomp_profile
            && !pod.seccomp_profile
            && !is_set_in(&context, "seccompProfile")
        {
            context.insert("seccompProfile".into(), json!({"type": "RuntimeDefault"}));
            added.push("securityContext.seccompProfile");
        }
        if settings.allow_privilege_escalation
            && !is_set_in(&context, "allowPrivilegeEscalation")
            && !escalation_required(&context)
        {
            context.insert("allowPrivilegeEscalation".into(), json!(false));
            added.push("securityContext.allowPrivilegeEscalation");
        }
        if let Some(field) = drop_all(&mut context, settings)? {
            added.push(field);
        }
    }
    if !added.is_empty() {
        container.insert("securityContext".into(), Value::Object(context));
    }
    Ok(added)
}

/// Adds `drop: ["ALL"]` where no drop list exists, or appends `"ALL"` to
/// one that lacks it when `addDropAll` says so (appending, not rewriting,
/// so the patch is one `add` at the end of the list).
fn drop_all(
    context: &mut Map<String, Value>,
    settings: &Settings,
) -> Result<Option<&'static str>, String> {
    let Some(capabilities) = context.get_mut("capabilities").filter(|c| !c.is_null()) else {
        if !settings.drop_all_capabilities {
            return Ok(None);
        }
        context.insert("capabilities".into(), json!({"drop": ["ALL"]}));
        return Ok(Some("securityContext.capabilities"));
    };
    let Some(capabilities) = capabilities.as_object_mut() else {
        return Err("securityContext.capabilities is not a JSON object".to_string());
    };
    match capabilities.get_mut("drop").filter(|d| !d.is_null()) {
        None if settings.drop_all_capabilities => {
            capabilities.insert("drop".into(), json!(["ALL"]));
            Ok(Some("securityContext.capabilities.drop"))
        }
        None => Ok(None),
        Some(Value::Array(drop)) => {
            if settings.add_drop_all && !drop.contains(&json!("ALL")) {
                drop.push(json!("ALL"));
                return Ok(Some("securityContext.capabilities.drop[ALL]"));
            }
            Ok(None)
        }
        Some(_) => Err("securityContext.capabilities.drop is not a JSON array".to_string()),
    }
}

/// Whether the container needs privilege escalation: the API server
/// rejects `allowPrivilegeEscalation: false` together with
/// `privileged: true` or an added `SYS_ADMIN`.
fn escalation_required(context: &Map<String, Value>) -> bool {
    let privileged = context.get("privileged").and_then(Value::as_bool) == Some(true);
    let sys_admin = context
        .get("capabilities")
        .and_then(|c| c.get("add"))
        .and_then(Value::as_array)
        .is_some_and(|add| {
            add.iter()
                .any(|cap| matches!(cap.as_str(), Some("SYS_ADMIN" | "CAP_SYS_ADMIN")))
        });
    privileged || sys_admin
}

/// A field present and not `null` (Go's encoding/json reads `null` as
/// unset for these pointer fields).
fn is_set(object: &Value, field: &str) -> bool {
    object.get(field).is_some_and(|v| !v.is_null())
}

fn is_set_in(object: &Map<String, Value>, field: &str) -> bool {
    object.get(field).is_some_and(|v| !v.is_null())
}
