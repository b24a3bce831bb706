//! The restricted checks, one per upstream `check_<id>.go`, with the same
//! reasons, details, version behaviour and overrides of baseline checks.

use std::collections::BTreeSet;

use serde_json::Value;

use super::baseline::{proc_mount_strict, seccomp_type, setters, valid_seccomp};
use super::{Check, Violation};
use crate::pod::{PodView, containers_phrase, join_quote, name, pluralize, security_context, set};
use crate::settings::Level;

const fn restricted(
    id: &'static str,
    since: u32,
    overrides: &'static [&'static str],
    run: super::CheckFn,
) -> Check {
    Check {
        id,
        level: Level::Restricted,
        since,
        overrides,
        run,
    }
}

/// From policy v1.25, checks of Linux-only fields pass Windows pods.
fn windows_exempt(pod: &PodView<'_>, minor: u32) -> bool {
    minor >= 25 && pod.is_windows()
}

// --- allowPrivilegeEscalation (1.8; Windows pods pass from 1.25) ---

pub const ALLOW_PRIVILEGE_ESCALATION: Check = restricted(
    "allowPrivilegeEscalation",
    8,
    &[],
    allow_privilege_escalation,
);

fn allow_privilege_escalation(pod: &PodView<'_>, minor: u32) -> Option<Violation> {
    if windows_exempt(pod, minor) {
        return None;
    }
    let bad: Vec<&str> = pod
        .containers()
        .into_iter()
        .filter(|c| {
            security_context(c).and_then(|sc| sc.get("allowPrivilegeEscalation")?.as_bool())
                != Some(false)
        })
        .map(name)
        .collect();
    (!bad.is_empty()).then(|| {
        Violation::new(
            "allowPrivilegeEscalation != false",
            format!(
                "{} must set securityContext.allowPrivilegeEscalation=false",
                containers_phrase(&bad)
            ),
        )
    })
}

// --- capabilities_restricted (1.22; Windows pods pass from 1.25) ---

pub const CAPABILITIES: Check = restricted(
    "capabilities_restricted",
    22,
    &["capabilities_baseline"],
    capabilities,
);

fn capabilities(pod: &PodView<'_>, minor: u32) -> Option<Violation> {
    if windows_exempt(pod, minor) {
        return None;
    }
    let mut missing_drop_all = Vec::new();
    let mut adding_forbidden = Vec::new();
    let mut forbidden_caps = BTreeSet::new();
    for c in pod.containers() {
        let Some(caps) = security_context(c).and_then(|sc| set(sc, "capabilities")) else {
            missing_drop_all.push(name(c));
            continue;
        };
        let list = |field: &str| -> Vec<&str> {
            caps.get(field)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|v| v.as_str().unwrap_or(""))
                .collect()
        };
        if !list("drop").contains(&"ALL") {
            missing_drop_all.push(name(c));
        }
        let forbidden: Vec<&str> = list("add")
            .into_iter()
            .filter(|cap| *cap != "NET_BIND_SERVICE")
            .collect();
        if !forbidden.is_empty() {
            adding_forbidden.push(name(c));
            forbidden_caps.extend(forbidden);
        }
    }
    let mut details = Vec::new();
    if !missing_drop_all.is_empty() {
        details.push(format!(
            "{} must set securityContext.capabilities.drop=[\"ALL\"]",
            containers_phrase(&missing_drop_all)
        ));
    }
    if !adding_forbidden.is_empty() {
        let caps: Vec<&str> = forbidden_caps.into_iter().collect();
        details.push(format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&adding_forbidden),
            join_quote(&caps)
        ));
    }
    (!details.is_empty()).then(|| Violation::new("unrestricted capabilities", details.join("; ")))
}

// --- procMount_restricted (1.35): no user-namespace relaxation ---

pub const PROC_MOUNT: Check = restricted("procMount_restricted", 35, &["procMount"], proc_mount);

fn proc_mount(pod: &PodView<'_>, _: u32) -> Option<Violation> {
    proc_mount_strict(pod)
}

// --- restrictedVolumes (1.0) ---

pub const VOLUMES: Check = restricted("restrictedVolumes", 0, &["hostPathVolumes"], volumes);

/// Inline volume sources the restricted level allows (`image` since the
/// upstream 1.0 function was amended for image volumes).
const ALLOWED_VOLUME_SOURCES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "image",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// Forbidden sources, in the order upstream tests for them; the first one
/// a volume sets names its type.
const RESTRICTED_VOLUME_SOURCES: &[&str] = &[
    "hostPath",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "gitRepo",
    "nfs",
    "iscsi",
    "glusterfs",
    "rbd",
    "flexVolume",
    "cinder",
    "cephfs",
    "flocker",
    "fc",
    "azureFile",
    "vsphereVolume",
    "quobyte",
    "azureDisk",
    "photonPersistentDisk",
    "portworxVolume",
    "scaleIO",
    "storageos",
];

fn volumes(pod: &PodView<'_>, _: u32) -> Option<Violation> {
    let mut bad_volumes = Vec::new();
    let mut bad_types = BTreeSet::new();
    for volume in pod.volumes() {
        if ALLOWED_VOLUME_SOURCES
            .iter()
            .any(|source| set(volume, source).is_some())
        {
            continue;
        }
        bad_volumes.push(name(volume));
        let kind = RESTRICTED_VOLUME_SOURCES
            .iter()
            .find(|source| set(volume, source).is_some())
            .copied()
            .unwrap_or("unknown");
        bad_types.insert(kind);
    }
    if bad_volumes.is_empty() {
        return None;
    }
    let types: Vec<&str> = bad_types.into_iter().collect();
    Some(Violation::new(
        "restricted volume types",
        format!(
            "{} {} {} {} {}",
            pluralize("volume", "volumes", bad_volumes.len()),
            join_quote(&bad_volumes),
            pluralize("uses", "use", bad_volumes.len()),
            pluralize(
                "restricted volume type",
                "restricted volume types",
                types.len()
            ),
            join_quote(&types)
        ),
    ))
}

// --- runAsNonRoot (1.0; user-namespace pods pass from 1.35) ---

pub const RUN_AS_NON_ROOT: Check = restricted("runAsNonRoot", 0, &[], run_as_non_root);

fn run_as_non_root(pod: &PodView<'_>, minor: u32) -> Option<Violation> {
    if minor >= 35 && pod.in_user_namespace() {
        return None;
    }
    let field = |sc: &Value| sc.get("runAsNonRoot").and_then(Value::as_bool);
    let pod_value = pod.security_context().and_then(field);
    let bad_pod = pod_value == Some(false);
    let pod_non_root = pod_value == Some(true);
    let mut explicit = Vec::new();
    let mut implicit = Vec::new();
    for c in pod.containers() {
        match security_context(c).and_then(field) {
            Some(false) => explicit.push(name(c)),
            Some(true) => {}
            None if !pod_non_root => implicit.push(name(c)),
            None => {}
        }
    }
    let bad_setters = setters(bad_pod, &explicit);
    if !bad_setters.is_empty() {
        return Some(Violation::new(
            "runAsNonRoot != true",
            format!(
                "{} must not set securityContext.runAsNonRoot=false",
                bad_setters.join(" and ")
            ),
        ));
    }
    (!implicit.is_empty()).then(|| {
        Violation::new(
            "runAsNonRoot != true",
            format!(
                "pod or {} must set securityContext.runAsNonRoot=true",
                containers_phrase(&implicit)
            ),
        )
    })
}

// --- runAsUser (1.23; user-namespace pods pass from 1.35) ---

pub const RUN_AS_USER: Check = restricted("runAsUser", 23, &[], run_as_user);

fn run_as_user(pod: &PodView<'_>, minor: u32) -> Option<Violation> {
    if minor >= 35 && pod.in_user_namespace() {
        return None;
    }
    let root = |sc: &Value| sc.get("runAsUser").and_then(Value::as_i64) == Some(0);
    let bad_pod = pod.security_context().is_some_and(root);
    let bad_containers: Vec<&str> = pod
        .containers()
        .into_iter()
        .filter(|c| security_context(c).is_some_and(root))
        .map(name)
        .collect();
    let bad_setters = setters(bad_pod, &bad_containers);
    (!bad_setters.is_empty()).then(|| {
        Violation::new(
            "runAsUser=0",
            format!("{} must not set runAsUser=0", bad_setters.join(" and ")),
        )
    })
}

// --- seccompProfile_restricted (1.19; Windows pods pass from 1.25) ---

pub const SECCOMP_PROFILE: Check = restricted(
    "seccompProfile_restricted",
    19,
    &["seccompProfile_baseline"],
    seccomp_profile,
);

fn seccomp_profile(pod: &PodView<'_>, minor: u32) -> Option<Violation> {
    if windows_exempt(pod, minor) {
        return None;
    }
    let mut bad_values = BTreeSet::new();
    let mut bad_pod = false;
    let mut pod_set = false;
    if let Some(t) = pod.security_context().and_then(seccomp_type) {
        if valid_seccomp(t) {
            pod_set = true;
        } else {
            bad_pod = true;
            bad_values.insert(t);
        }
    }
    let mut explicit = Vec::new();
    let mut implicit = Vec::new();
    for c in pod.containers() {
        match security_context(c).and_then(seccomp_type) {
            Some(t) if !valid_seccomp(t) => {
                explicit.push(name(c));
                bad_values.insert(t);
            }
            Some(_) => {}
            None if !pod_set => implicit.push(name(c)),
            None => {}
        }
    }
    let bad_setters = setters(bad_pod, &explicit);
    if !bad_setters.is_empty() {
        let values: Vec<&str> = bad_values.into_iter().collect();
        return Some(Violation::new(
            "seccompProfile",
            format!(
                "{} must not set securityContext.seccompProfile.type to {}",
                bad_setters.join(" and "),
                join_quote(&values)
            ),
        ));
    }
    (!implicit.is_empty()).then(|| {
        Violation::new(
            "seccompProfile",
            format!(
                "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
                containers_phrase(&implicit)
            ),
        )
    })
}
