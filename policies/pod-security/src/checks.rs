//! The check registry: which checks run for a level and version, in which
//! order, and how their results become one message.
//!
//! Mirrors upstream `policy/registry.go`: baseline runs every baseline check
//! that exists at the version; restricted runs the baseline checks that no
//! restricted check overrides at that version, plus the restricted checks.
//! Results are ordered by check ID (Go byte order), baseline IDs first, then
//! restricted IDs, so `CHECKS` is kept in exactly that order (a unit test
//! asserts it).

mod baseline;
mod restricted;

use std::borrow::Cow;

use portcullis_sdk::image::{ImagePatterns, ImageRef};
use serde_json::Value;

use crate::pod::PodView;
use crate::settings::{Exclusion, Level};

/// A failed check: upstream's `ForbiddenReason` and `ForbiddenDetail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Short reason, e.g. `host namespaces`.
    pub reason: String,
    /// What exactly, e.g. `hostNetwork=true`; may be empty.
    pub detail: String,
}

impl Violation {
    pub(crate) fn new(reason: impl Into<String>, detail: impl Into<String>) -> Self {
        Violation {
            reason: reason.into(),
            detail: detail.into(),
        }
    }
}

/// Runs one check at a policy minor version (already known to be at least
/// the check's first version); `None` allows.
type CheckFn = fn(&PodView<'_>, u32) -> Option<Violation>;

/// One check of the standard.
pub struct Check {
    /// Upstream's check ID; the sort key for message order.
    pub id: &'static str,
    /// The level it belongs to.
    pub level: Level,
    /// The first policy minor version (of 1.x) it applies to.
    pub since: u32,
    /// Baseline check IDs it replaces in restricted evaluations.
    pub overrides: &'static [&'static str],
    /// The check itself; version-dependent behaviour is inside.
    pub run: CheckFn,
}

/// Every check, baseline IDs sorted, then restricted IDs sorted.
pub const CHECKS: &[Check] = &[
    baseline::APP_ARMOR_PROFILE,
    baseline::CAPABILITIES,
    baseline::HOST_NAMESPACES,
    baseline::HOST_PATH_VOLUMES,
    baseline::HOST_PORTS,
    baseline::HOST_PROBES_AND_HOST_LIFECYCLE,
    baseline::PRIVILEGED,
    baseline::PROC_MOUNT,
    baseline::SE_LINUX_OPTIONS,
    baseline::SECCOMP_PROFILE,
    baseline::SYSCTLS,
    baseline::WINDOWS_HOST_PROCESS,
    restricted::ALLOW_PRIVILEGE_ESCALATION,
    restricted::CAPABILITIES,
    restricted::PROC_MOUNT,
    restricted::VOLUMES,
    restricted::RUN_AS_NON_ROOT,
    restricted::RUN_AS_USER,
    restricted::SECCOMP_PROFILE,
];

/// The checks that run for `level` at policy minor version `minor`, in
/// message order.
pub fn checks_for(level: Level, minor: u32) -> Vec<&'static Check> {
    let exists = |check: &&Check| check.since <= minor;
    let overridden: Vec<&str> = match level {
        Level::Baseline => Vec::new(),
        Level::Restricted => CHECKS
            .iter()
            .filter(exists)
            .filter(|c| c.level == Level::Restricted)
            .flat_map(|c| c.overrides.iter().copied())
            .collect(),
    };
    CHECKS
        .iter()
        .filter(exists)
        .filter(|c| match (level, c.level) {
            (Level::Baseline, Level::Baseline) => true,
            (Level::Baseline, Level::Restricted) => false,
            (Level::Restricted, Level::Baseline) => !overridden.contains(&c.id),
            (Level::Restricted, Level::Restricted) => true,
        })
        .collect()
}

/// Every violation of `pod` for `level` at `minor`, in message order.
pub fn evaluate(pod: &PodView<'_>, level: Level, minor: u32) -> Vec<Violation> {
    checks_for(level, minor)
        .into_iter()
        .filter_map(|check| (check.run)(pod, minor))
        .collect()
}

/// [`evaluate`] with the settings' `exclude` and `exemptImages`: an
/// excluded check does not run; a check excluded for some images, and
/// every check when images are exempt, runs on the pod without the
/// containers whose image matches (its pod-level fields still count).
pub fn evaluate_excluding(
    pod: &PodView<'_>,
    level: Level,
    minor: u32,
    exclude: &[Exclusion],
    exempt_images: &ImagePatterns,
) -> Vec<Violation> {
    if exclude.is_empty() && exempt_images.is_empty() {
        return evaluate(pod, level, minor);
    }
    let without_exempt = without_images(pod.spec, |image| exempt_images.matches(image));
    checks_for(level, minor)
        .into_iter()
        .filter_map(|check| {
            let exclusions: Vec<&Exclusion> =
                exclude.iter().filter(|e| e.check == check.id).collect();
            if exclusions.iter().any(|e| e.images.is_empty()) {
                return None;
            }
            let own;
            let spec: &Value = if exclusions.is_empty() {
                &without_exempt
            } else {
                own = without_images(pod.spec, |image| {
                    exempt_images.matches(image)
                        || exclusions.iter().any(|e| e.images.matches(image))
                });
                &own
            };
            (check.run)(
                &PodView {
                    meta: pod.meta,
                    spec,
                },
                minor,
            )
        })
        .collect()
}

/// `spec` without the containers whose image `exempt` says so (borrowed
/// when there are none).
fn without_images(spec: &Value, exempt: impl Fn(&ImageRef) -> bool) -> Cow<'_, Value> {
    const LISTS: [&str; 3] = ["initContainers", "containers", "ephemeralContainers"];
    let is_exempt = |container: &Value| {
        container
            .get("image")
            .and_then(Value::as_str)
            .and_then(|image| ImageRef::parse(image).ok())
            .is_some_and(|image| exempt(&image))
    };
    let any = LISTS.iter().any(|list| {
        spec.get(list)
            .and_then(Value::as_array)
            .is_some_and(|containers| containers.iter().any(is_exempt))
    });
    if !any {
        return Cow::Borrowed(spec);
    }
    let mut copy = spec.clone();
    for list in LISTS {
        if let Some(containers) = copy.get_mut(list).and_then(Value::as_array_mut) {
            containers.retain(|container| !is_exempt(container));
        }
    }
    Cow::Owned(copy)
}

/// Upstream's `AggregateCheckResult.ForbiddenDetail`: `reason (detail)`
/// joined with `, `; a violation without detail is its reason alone.
pub fn describe(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| {
            if v.detail.is_empty() {
                v.reason.clone()
            } else {
                format!("{} ({})", v.reason, v.detail)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_are_in_upstream_order() {
        let ids = |level| -> Vec<&str> {
            CHECKS
                .iter()
                .filter(|c| c.level == level)
                .map(|c| c.id)
                .collect()
        };
        for level in [Level::Baseline, Level::Restricted] {
            let listed = ids(level);
            let mut sorted = listed.clone();
            // Go compares strings bytewise, as Rust's `str` ordering does.
            sorted.sort_unstable();
            assert_eq!(listed, sorted, "{level} checks out of order");
        }
        let first_restricted = CHECKS
            .iter()
            .position(|c| c.level == Level::Restricted)
            .unwrap();
        assert!(
            CHECKS[first_restricted..]
                .iter()
                .all(|c| c.level == Level::Restricted)
        );
    }

    #[test]
    fn overrides_name_baseline_checks() {
        for check in CHECKS {
            for id in check.overrides {
                assert_eq!(check.level, Level::Restricted);
                let target = CHECKS.iter().find(|c| c.id == *id).unwrap();
                assert_eq!(target.level, Level::Baseline, "{id}");
            }
        }
    }

    #[test]
    fn restricted_at_latest_runs_the_expected_checks() {
        let ids: Vec<&str> = checks_for(Level::Restricted, 37)
            .iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(
            ids,
            [
                "appArmorProfile",
                "hostNamespaces",
                "hostPorts",
                "hostProbesAndHostLifecycle",
                "privileged",
                "seLinuxOptions",
                "sysctls",
                "windowsHostProcess",
                "allowPrivilegeEscalation",
                "capabilities_restricted",
                "procMount_restricted",
                "restrictedVolumes",
                "runAsNonRoot",
                "runAsUser",
                "seccompProfile_restricted",
            ]
        );
        // Before 1.19/1.22/1.35 the restricted variants do not exist, so the
        // baseline ones they override still run.
        let old: Vec<&str> = checks_for(Level::Restricted, 18)
            .iter()
            .map(|c| c.id)
            .collect();
        assert!(old.contains(&"capabilities_baseline"));
        assert!(old.contains(&"seccompProfile_baseline"));
        assert!(old.contains(&"procMount"));
        assert!(!old.contains(&"hostPathVolumes"));
        assert!(!old.contains(&"runAsUser"));
    }

    #[test]
    fn describe_formats_like_upstream() {
        let v = [
            Violation::new("host ports", "8080, 9090"),
            Violation::new("privileged", ""),
        ];
        assert_eq!(describe(&v), "host ports (8080, 9090), privileged");
    }
}
