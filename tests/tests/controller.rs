//! The controller, through a real kube-apiserver: replicas started with
//! `serve --cluster-policies --controller` elect a leader, which writes
//! the webhook configurations from the policy resources and their status
//! from what every replica reports. Needs `make test-apiserver`.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use base64::Engine as _;
use portcullis_e2e::kube::{TestCluster, poll};
use portcullis_e2e::{Server, path_str};
use serde_json::Value;

const NAMESPACE: &str = "portcullis";

/// A replica and controller candidate, lease 3 s.
fn replica(cluster: &TestCluster, id: &str) -> Result<Server> {
    serve(cluster, id, &["--controller"])
}

/// A replica with `extra` flags, lease 3 s.
fn serve(cluster: &TestCluster, id: &str, extra: &[&str]) -> Result<Server> {
    let kubeconfig = cluster.kubeconfig();
    let mut flags = vec![
        "--cluster-policies",
        "--kubeconfig",
        path_str(&kubeconfig)?,
        "--namespace",
        NAMESPACE,
        "--replica-id",
        id,
        "--lease-duration",
        "3",
        // Each replica, when it leads, sends the API server to itself.
        "--webhook-url",
        "https://127.0.0.1:{port}",
    ];
    flags.extend(extra);
    Server::start_with(&flags, |_, dir| {
        let config = dir.join("policies.yaml");
        std::fs::write(&config, "policies: []\n")?;
        Ok(config)
    })
}

fn get_json(cluster: &TestCluster, args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = cluster.kubectl(&all)?;
    ensure!(out.status.success(), "{out}");
    serde_json::from_str(&out.stdout).context("kubectl -o json")
}

fn leader(cluster: &TestCluster) -> Result<String> {
    let out = cluster.kubectl(&[
        "get",
        "lease",
        "-n",
        NAMESPACE,
        "portcullis-controller",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ])?;
    Ok(out.stdout.trim().to_string())
}

/// Whether `id` comes to hold the controller lease within 30 s.
fn leads(cluster: &TestCluster, id: &str) -> Result<bool> {
    poll(Duration::from_secs(30), || Ok(leader(cluster)? == id))
}

/// The Secret the controller reads the webhooks' caBundle from.
fn ca_secret(cluster: &TestCluster, ca_pem: &[u8]) -> Result<()> {
    cluster.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{ name: portcullis-tls, namespace: {NAMESPACE} }}\ndata: {{ ca.crt: {} }}\n",
        base64::engine::general_purpose::STANDARD.encode(ca_pem)
    ))?;
    Ok(())
}

fn condition<'a>(policy: &'a Value, kind: &str) -> &'a Value {
    policy["status"]["conditions"]
        .as_array()
        .and_then(|list| list.iter().find(|c| c["type"] == kind))
        .unwrap_or(&Value::Null)
}

fn validating_rules(cluster: &TestCluster) -> Result<Value> {
    let config = get_json(
        cluster,
        &["get", "validatingwebhookconfiguration", "portcullis"],
    )?;
    Ok(config["webhooks"][0]["rules"].clone())
}

fn cap(name: &str, module: &str, resources: &str, labels: &str) -> String {
    format!(
        "apiVersion: portcullis.dev/v1alpha1
kind: ClusterAdmissionPolicy
metadata: {{ name: {name} }}
spec:
  module: {module}
  match: {{ operations: [CREATE], resources: [{resources}] }}
  settings: {{ labels: {labels} }}
"
    )
}

#[test]
fn the_controller_keeps_webhooks_and_status_in_step() -> Result<()> {
    let cluster = TestCluster::start()?;
    cluster.install_crds()?;
    cluster.apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{ name: {NAMESPACE} }}\n"
    ))?;

    let first = replica(&cluster, "replica-a")?;
    ensure!(
        leads(&cluster, "replica-a")?,
        "the first replica never led\n{}",
        first.logs()
    );
    let second = replica(&cluster, "replica-b")?;
    // The caBundle: both replicas' CAs, as a Secret the controller reads.
    let mut bundle = first.certs.ca_pem.clone();
    bundle.extend_from_slice(&second.certs.ca_pem);
    ca_secret(&cluster, &bundle)?;

    let module = path_str(&first.paths.required_labels)?.to_string();
    let dry_run = |name: &str| cluster.dry_run_pod(name, None);
    ensure!(dry_run("before")?.status.success(), "no policy yet");

    // Created: the webhook configuration gains the rule and the API server
    // refuses an unlabelled pod with the policy's message.
    let started = Instant::now();
    cluster.apply(&cap("require-team", &module, "pods", "{ team: \"^.+$\" }"))?;
    ensure!(
        poll(Duration::from_secs(30), || Ok(dry_run("created")?
            .stderr
            .contains("missing required label: team")))?,
        "the policy never enforced through the API server\n{}",
        first.logs()
    );
    let created_ms = started.elapsed().as_millis();
    let rules = validating_rules(&cluster)?;
    ensure!(
        rules
            == serde_json::json!([{"apiGroups": [""], "apiVersions": ["*"], "operations": ["CREATE"],
                                      "resources": ["pods"], "scope": "*"}]),
        "{rules}"
    );
    let config = get_json(
        &cluster,
        &["get", "validatingwebhookconfiguration", "portcullis"],
    )?;
    let webhook = &config["webhooks"][0];
    ensure!(webhook["matchPolicy"] == "Equivalent" && webhook["sideEffects"] == "None");
    ensure!(
        webhook["clientConfig"]["url"] == format!("https://127.0.0.1:{}/validate", first.port),
        "{webhook}"
    );

    // Status: Ready once both replicas enforce generation 1.
    let policy = || get_json(&cluster, &["get", "clusteradmissionpolicy", "require-team"]);
    ensure!(
        poll(Duration::from_secs(30), || {
            let p = policy()?;
            Ok(condition(&p, "Ready")["status"] == "True"
                && p["status"]["servingSummary"] == "2/2"
                && p["status"]["observedGeneration"] == 1)
        })?,
        "never Ready 2/2: {}",
        policy()?["status"]
    );
    ensure!(
        policy()?["status"]["moduleDigest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{}",
        policy()?["status"]
    );
    let table = cluster.kubectl(&["get", "cap", "require-team"])?;
    ensure!(
        table.stdout.contains("True") && table.stdout.contains("2/2"),
        "{table}"
    );

    // A spec the policy rejects: Ready=False with the policy's message; the
    // previous version keeps deciding on both replicas.
    cluster.apply(&cap("require-team", &module, "pods", "[not, a, map]"))?;
    ensure!(
        poll(Duration::from_secs(30), || {
            let p = policy()?;
            let ready = condition(&p, "Ready");
            Ok(ready["status"] == "False"
                && ready["reason"] == "SettingsRejected"
                && ready["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("settings rejected")))
        })?,
        "the rejected spec never showed: {}",
        policy()?["status"]
    );
    ensure!(condition(&policy()?, "Degraded")["status"] == "True");
    // Each replica counts the refused resource; only the leader leads.
    for (server, leads) in [(&first, 1), (&second, 0)] {
        let counted = poll(Duration::from_secs(30), || {
            let metrics = server.metrics()?;
            Ok(metrics.contains("portcullis_cluster_policies_refused 1")
                && metrics.contains(&format!("portcullis_controller_leader {leads}")))
        })?;
        ensure!(counted, "{}", server.metrics()?);
    }
    ensure!(
        dry_run("rejected")?
            .stderr
            .contains("missing required label: team")
    );

    // Fixed: the new settings decide, Ready again at generation 3.
    let started = Instant::now();
    cluster.apply(&cap("require-team", &module, "pods", "{ owner: \"^.+$\" }"))?;
    ensure!(
        poll(Duration::from_secs(30), || Ok(dry_run("edited")?
            .stderr
            .contains("missing required label: owner")))?,
        "the edited settings never enforced"
    );
    let edited_ms = started.elapsed().as_millis();
    ensure!(
        poll(Duration::from_secs(30), || {
            let p = policy()?;
            Ok(condition(&p, "Ready")["status"] == "True"
                && p["status"]["observedGeneration"] == 3
                && p["status"]["servingSummary"] == "2/2")
        })?,
        "never Ready at generation 3: {}",
        policy()?["status"]
    );

    // Kill the leader: the other replica takes over, points the webhook at
    // itself, and counts one serving replica of two.
    std::process::Command::new("kill")
        .args(["-KILL", &first.pid().to_string()])
        .status()?;
    let killed = Instant::now();
    ensure!(
        leads(&cluster, "replica-b")?,
        "the second replica never took over\n{}",
        second.logs()
    );
    let took_over_ms = killed.elapsed().as_millis();
    ensure!(
        poll(Duration::from_secs(30), || {
            let p = policy()?;
            Ok(p["status"]["servingSummary"] == "1/2"
                && condition(&p, "Ready")["status"] == "True"
                && condition(&p, "Degraded")["reason"] == "ReplicasUnavailable")
        })?,
        "never 1/2: {}",
        policy()?["status"]
    );
    ensure!(
        poll(Duration::from_secs(30), || Ok(dry_run("failover")?
            .stderr
            .contains("missing required label: owner")))?,
        "the new leader's webhook never enforced"
    );

    // The new leader reconciles: a second policy gains its rule.
    cluster.apply(&cap(
        "require-team-configmaps",
        &module,
        "configmaps",
        "{ team: \"^.+$\" }",
    ))?;
    let configmap = || {
        cluster.kubectl(&[
            "create",
            "configmap",
            "settings",
            "--from-literal=a=b",
            "--dry-run=server",
        ])
    };
    ensure!(
        poll(Duration::from_secs(30), || Ok(configmap()?
            .stderr
            .contains("missing required label: team")))?,
        "the new leader never covered the second policy: {}",
        validating_rules(&cluster)?
    );

    // Deleted: its rule is gone, pods are no longer sent.
    let out = cluster.kubectl(&["delete", "cap", "require-team"])?;
    ensure!(out.status.success(), "{out}");
    ensure!(
        poll(Duration::from_secs(30), || {
            let rules = validating_rules(&cluster)?;
            Ok(!rules.to_string().contains("\"pods\"") && rules.to_string().contains("configmaps"))
        })?,
        "the pods rule stayed: {}",
        validating_rules(&cluster)?
    );
    ensure!(dry_run("deleted")?.status.success());
    eprintln!(
        "apply -> enforced through the API server with the controller writing the webhook: \
         created {created_ms} ms, edited {edited_ms} ms; leader killed -> other leads in {took_over_ms} ms"
    );
    Ok(())
}

/// An AdmissionPolicy judges only requests in its own namespace.
#[test]
fn an_admission_policy_never_judges_another_namespace() -> Result<()> {
    let cluster = TestCluster::start()?;
    cluster.install_crds()?;
    for namespace in [NAMESPACE, "team-a", "team-b"] {
        cluster.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{ name: {namespace} }}\n"
        ))?;
    }
    let server = replica(&cluster, "only")?;
    ca_secret(&cluster, &server.certs.ca_pem)?;
    let module = path_str(&server.paths.required_labels)?.to_string();
    cluster.apply(&format!(
        "apiVersion: portcullis.dev/v1alpha1
kind: AdmissionPolicy
metadata: {{ name: require-team, namespace: team-a }}
spec:
  module: {module}
  match: {{ resources: [pods] }}
  settings: {{ labels: {{ team: \"^.+$\" }} }}
"
    ))?;
    let dry_run = |namespace: &str| cluster.dry_run_pod("p", Some(namespace));
    ensure!(
        poll(Duration::from_secs(30), || Ok(dry_run("team-a")?
            .stderr
            .contains("missing required label: team")))?,
        "never enforced in its namespace\n{}",
        server.logs()
    );
    let other = dry_run("team-b")?;
    ensure!(other.status.success(), "judged another namespace: {other}");
    let policy = || get_json(&cluster, &["get", "ap", "-n", "team-a", "require-team"]);
    ensure!(
        poll(Duration::from_secs(30), || {
            let p = policy()?;
            Ok(
                condition(&p, "Ready")["status"] == "True"
                    && p["status"]["servingSummary"] == "1/1",
            )
        })?,
        "{}",
        policy()?["status"]
    );

    // A second replica (not a controller candidate) joins: 2/2. Stopped
    // gracefully, it says so in its lease as it drains: 1/2 at once, not
    // after its lease expires.
    let spare = serve(&cluster, "spare", &["--shutdown-delay=5"])?;
    ensure!(
        poll(Duration::from_secs(30), || Ok(
            policy()?["status"]["servingSummary"] == "2/2"
        ))?,
        "{}",
        policy()?["status"]
    );
    spare.terminate()?;
    let stopped = Instant::now();
    ensure!(
        poll(Duration::from_secs(30), || {
            let p = policy()?;
            Ok(p["status"]["servingSummary"] == "1/2"
                && condition(&p, "Ready")["status"] == "True"
                && condition(&p, "Degraded")["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("spare")))
        })?,
        "{}",
        policy()?["status"]
    );
    let counted_ms = stopped.elapsed().as_millis();
    ensure!(
        spare.is_running(),
        "counted only once it exited ({counted_ms} ms): the drain should have said so first"
    );
    Ok(())
}
