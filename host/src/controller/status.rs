//! A policy resource's status, from what the replicas report: Ready only
//! when every ready replica enforces the current generation and the
//! webhook configuration sends it requests; Degraded when a replica
//! refused the current generation or a replica is not ready.

use serde_json::{Value, json};

use crate::replica::{Refusal, ReplicaState};

/// What the controller knows of one policy resource.
pub struct Observed<'a> {
    /// As the replicas report it (`ClusterAdmissionPolicy/NAME`, ...).
    pub key: &'a str,
    pub uid: &'a str,
    pub generation: i64,
    /// The webhook configurations send it requests.
    pub covered: bool,
    /// Why it is not covered, when it is not.
    pub uncovered_because: &'a str,
}

/// One condition, without its transition time.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub kind: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

/// The status to write, without transition times: the caller keeps the
/// existing ones for conditions whose status did not change.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub observed_generation: i64,
    pub conditions: Vec<Condition>,
    pub module_digest: Option<String>,
    pub manifest: Option<String>,
    pub replicas: usize,
    pub serving_replicas: usize,
}

/// Judges one policy from every replica's report.
pub fn desired(policy: &Observed<'_>, replicas: &[ReplicaState]) -> Desired {
    let live: Vec<&ReplicaState> = replicas.iter().filter(|r| r.live).collect();
    let report = |replica: &ReplicaState| {
        replica
            .report
            .policies
            .get(policy.key)
            .filter(|p| p.uid == policy.uid)
            .cloned()
    };
    let serving: Vec<crate::replica::ServedVersion> = live
        .iter()
        .filter_map(|replica| {
            let served = report(replica)?.served?;
            (served.generation == policy.generation).then_some(served)
        })
        .collect();
    let refusal: Option<(&str, Refusal)> = live.iter().find_map(|replica| {
        let refused = report(replica)?.refused?;
        (refused.generation == policy.generation).then_some((replica.id.as_str(), refused))
    });
    let older_serving = live.iter().any(|replica| {
        report(replica)
            .and_then(|p| p.served)
            .is_some_and(|s| s.generation < policy.generation)
    });
    let generation = policy.generation;
    let ready = if live.is_empty() {
        condition(
            "Ready",
            false,
            "NoReadyReplicas",
            format!("no ready server replica ({} known)", replicas.len()),
        )
    } else if let Some((replica, refusal)) = &refusal {
        let kept = if older_serving {
            "; the previous generation keeps deciding"
        } else {
            ""
        };
        condition(
            "Ready",
            false,
            &refusal.reason,
            format!(
                "generation {generation} refused by replica {replica}: {}{kept}",
                refusal.message
            ),
        )
    } else if serving.len() < live.len() {
        condition(
            "Ready",
            false,
            "RollingOut",
            format!(
                "{} of {} ready replicas enforce generation {generation}",
                serving.len(),
                live.len()
            ),
        )
    } else if !policy.covered {
        condition(
            "Ready",
            false,
            "WebhookPending",
            policy.uncovered_because.to_string(),
        )
    } else {
        condition(
            "Ready",
            true,
            "Serving",
            format!(
                "every ready replica ({}) enforces generation {generation} and the webhook configuration sends it requests",
                live.len()
            ),
        )
    };
    let degraded = if let Some((replica, refusal)) = &refusal {
        condition(
            "Degraded",
            true,
            &refusal.reason,
            format!("replica {replica}: {}", refusal.message),
        )
    } else if live.len() < replicas.len() {
        let down: Vec<&str> = replicas
            .iter()
            .filter(|r| !r.live)
            .map(|r| r.id.as_str())
            .collect();
        condition(
            "Degraded",
            true,
            "ReplicasUnavailable",
            format!(
                "{} of {} replicas not ready: {}",
                down.len(),
                replicas.len(),
                down.join(", ")
            ),
        )
    } else {
        condition(
            "Degraded",
            false,
            "AsExpected",
            "nothing is wrong".to_string(),
        )
    };
    Desired {
        observed_generation: generation,
        conditions: vec![ready, degraded],
        module_digest: serving.first().map(|served| served.digest.clone()),
        manifest: serving.first().and_then(|served| served.manifest.clone()),
        replicas: replicas.len(),
        serving_replicas: serving.len(),
    }
}

fn condition(kind: &'static str, status: bool, reason: &str, message: String) -> Condition {
    Condition {
        kind,
        status,
        reason: reason.to_string(),
        message,
    }
}

/// The status as JSON, keeping each condition's `lastTransitionTime` from
/// `current` when its status did not change.
pub fn to_json(desired: &Desired, current: Option<&Value>, now: &str) -> Value {
    let conditions: Vec<Value> = desired
        .conditions
        .iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" };
            let previous = current
                .and_then(|s| s.get("conditions"))
                .and_then(Value::as_array)
                .and_then(|list| list.iter().find(|p| p["type"] == c.kind));
            let since = previous
                .filter(|p| p["status"] == status)
                .and_then(|p| p.get("lastTransitionTime"))
                .and_then(Value::as_str)
                .unwrap_or(now);
            json!({
                "type": c.kind,
                "status": status,
                "reason": c.reason,
                "message": c.message,
                "observedGeneration": desired.observed_generation,
                "lastTransitionTime": since,
            })
        })
        .collect();
    let mut status = json!({
        "observedGeneration": desired.observed_generation,
        "conditions": conditions,
        "replicas": desired.replicas,
        "servingReplicas": desired.serving_replicas,
        "servingSummary": format!("{}/{}", desired.serving_replicas, desired.replicas),
    });
    if let Some(digest) = &desired.module_digest {
        status["moduleDigest"] = json!(digest);
    }
    if let Some(manifest) = &desired.manifest {
        status["manifest"] = json!(manifest);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::{PolicyReport, ReplicaReport, ServedVersion};

    fn replica(id: &str, live: bool, served: Option<i64>, refused: Option<i64>) -> ReplicaState {
        let report = PolicyReport {
            uid: "u1".into(),
            served: served.map(|generation| ServedVersion {
                generation,
                digest: format!("sha256:{generation}"),
                ..ServedVersion::default()
            }),
            refused: refused.map(|generation| Refusal {
                generation,
                reason: "SettingsRejected".into(),
                message: "labels: bad".into(),
            }),
        };
        ReplicaState {
            id: id.into(),
            live,
            report: ReplicaReport {
                ready: live,
                policies: [("ClusterAdmissionPolicy/p".to_string(), report)].into(),
            },
        }
    }

    fn observed(generation: i64) -> Observed<'static> {
        Observed {
            key: "ClusterAdmissionPolicy/p",
            uid: "u1",
            generation,
            covered: true,
            uncovered_because: "",
        }
    }

    #[test]
    fn ready_only_when_every_ready_replica_serves() {
        let both = [
            replica("a", true, Some(2), None),
            replica("b", true, Some(2), None),
        ];
        let status = desired(&observed(2), &both);
        assert!(status.conditions[0].status, "{status:?}");
        assert!(!status.conditions[1].status);
        assert_eq!((status.serving_replicas, status.replicas), (2, 2));
        assert_eq!(status.module_digest.as_deref(), Some("sha256:2"));

        let rolling = [
            replica("a", true, Some(2), None),
            replica("b", true, Some(1), None),
        ];
        let status = desired(&observed(2), &rolling);
        assert!(!status.conditions[0].status);
        assert_eq!(status.conditions[0].reason, "RollingOut");
        assert_eq!(status.serving_replicas, 1);

        let one_down = [
            replica("a", true, Some(2), None),
            replica("b", false, Some(2), None),
        ];
        let status = desired(&observed(2), &one_down);
        assert!(status.conditions[0].status, "the ready replica serves");
        assert_eq!(status.conditions[1].reason, "ReplicasUnavailable");
        assert_eq!((status.serving_replicas, status.replicas), (1, 2));

        let mut uncovered = observed(2);
        uncovered.covered = false;
        uncovered.uncovered_because = "no caBundle";
        let status = desired(&uncovered, &both);
        assert_eq!(status.conditions[0].reason, "WebhookPending");
    }

    #[test]
    fn a_refused_generation_is_reported() {
        let refused = [replica("a", true, Some(1), Some(2))];
        let status = desired(&observed(2), &refused);
        let ready = &status.conditions[0];
        assert!(!ready.status);
        assert_eq!(ready.reason, "SettingsRejected");
        assert!(
            ready.message.contains("labels: bad")
                && ready.message.contains("previous generation keeps deciding"),
            "{}",
            ready.message
        );
        assert!(status.conditions[1].status);
        assert_eq!(status.serving_replicas, 0);
        assert!(desired(&observed(2), &[]).conditions[0].reason == "NoReadyReplicas");
    }

    #[test]
    fn transition_times_are_kept_while_the_status_holds() {
        let both = [replica("a", true, Some(2), None)];
        let status = desired(&observed(2), &both);
        let first = to_json(&status, None, "2026-01-01T00:00:00Z");
        assert_eq!(first["servingSummary"], "1/1");
        let again = to_json(&status, Some(&first), "2026-02-02T00:00:00Z");
        assert_eq!(
            again["conditions"][0]["lastTransitionTime"],
            "2026-01-01T00:00:00Z"
        );
        let refused = desired(&observed(2), &[replica("a", true, Some(1), Some(2))]);
        let changed = to_json(&refused, Some(&first), "2026-02-02T00:00:00Z");
        assert_eq!(
            changed["conditions"][0]["lastTransitionTime"],
            "2026-02-02T00:00:00Z"
        );
    }
}
