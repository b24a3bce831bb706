//! Through a real kube-apiserver (v1.36, built from its Go module by
//! `make test-apiserver`; see `portcullis_e2e::kube`): the API server
//! calls Portcullis over HTTPS, trusting it through the webhook
//! configuration's caBundle, and `kubectl` sees the policy's decision.

use anyhow::{Result, ensure};
use base64::Engine as _;
use portcullis_e2e::kube::TestCluster;
use portcullis_e2e::{Server, path_str};

/// A pod without the label `team` is refused through the API server with
/// the policy's message; one with it is created; a namespace the webhook
/// excludes is not judged at all.
#[test]
fn the_api_server_enforces_a_policy_through_the_webhook() -> Result<()> {
    let cluster = TestCluster::start()?;
    eprintln!(
        "kube-apiserver ready {} ms after start",
        cluster.started_in.as_millis()
    );
    let version = cluster.kubectl(&["version", "-o", "json"])?;
    ensure!(
        version.stdout.contains("\"gitVersion\": \"v1.36."),
        "expected a v1.36 server\n{version}"
    );

    let server = Server::start(|paths, dir| {
        let config = dir.join("policies.yaml");
        std::fs::write(
            &config,
            format!(
                "policies:\n  - name: labels\n    module: {}\n    settings: {{ labels: {{ team: null }} }}\n",
                path_str(&paths.required_labels)?
            ),
        )?;
        Ok(config)
    })?;
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(&server.certs.ca_pem);
    cluster.apply(&format!(
        "apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {{ name: portcullis }}
webhooks:
  - name: validate.portcullis.dev
    clientConfig: {{ url: \"https://127.0.0.1:{port}/validate\", caBundle: \"{ca_bundle}\" }}
    rules: [{{ operations: [CREATE], apiGroups: [\"\"], apiVersions: [v1], resources: [pods] }}]
    namespaceSelector:
      matchExpressions: [{{ key: kubernetes.io/metadata.name, operator: NotIn, values: [kube-system] }}]
    sideEffects: None
    admissionReviewVersions: [v1]
    failurePolicy: Fail
    timeoutSeconds: 5
",
        port = server.port
    ))?;

    let refused = cluster.kubectl(&["run", "unlabelled", "--image=registry.k8s.io/pause:3.10"])?;
    ensure!(
        !refused.status.success()
            && refused.stderr.contains(
                "admission webhook \"validate.portcullis.dev\" denied the request: \
                 labels: missing required label: team"
            ),
        "the unlabelled pod should be refused with the policy's message\n{refused}"
    );
    let created = cluster.kubectl(&[
        "run",
        "labelled",
        "--image=registry.k8s.io/pause:3.10",
        "--labels=team=payments",
    ])?;
    ensure!(created.status.success(), "{created}");
    let excluded = cluster.kubectl(&[
        "-n",
        "kube-system",
        "run",
        "system",
        "--image=registry.k8s.io/pause:3.10",
    ])?;
    ensure!(
        excluded.status.success(),
        "kube-system is excluded\n{excluded}"
    );
    let pods = cluster.kubectl(&["get", "pods", "-A", "-o", "name"])?;
    ensure!(
        pods.stdout.contains("pod/labelled")
            && pods.stdout.contains("pod/system")
            && !pods.stdout.contains("pod/unlabelled"),
        "{pods}"
    );
    Ok(())
}

/// The custom resources (`deploy/kubernetes/crds`): the API server
/// accepts them, `kubectl explain` documents them, printer columns show,
/// and specs that cannot work are refused by the API server itself.
#[test]
fn the_policy_resources_are_served_with_their_schema() -> Result<()> {
    let cluster = TestCluster::start()?;
    cluster.install_crds()?;
    // Discovery may lag the Established condition by a moment.
    let explained = poll_kubectl(&cluster, &["explain", "clusteradmissionpolicy.spec.mode"])?;
    ensure!(
        explained.stdout.contains("enforce: a deny denies"),
        "{explained}"
    );

    let good = "apiVersion: portcullis.dev/v1alpha1
kind: ClusterAdmissionPolicy
metadata: { name: required-labels }
spec:
  module: oci://registry.example/portcullis/policies/required-labels:0.1.0
  settings: { labels: { team: null } }
  match:
    operations: [CREATE, UPDATE]
    resources: [pods]
    namespaceSelector: { matchLabels: { tenant: a } }
  memoryLimit: 32Mi
  shadow: { settings: { labels: { team: null, owner: null } } }
---
apiVersion: v1
kind: Namespace
metadata: { name: tenant-a }
---
apiVersion: portcullis.dev/v1alpha1
kind: AdmissionPolicy
metadata: { name: images, namespace: tenant-a }
spec:
  module: /policies/allowed_images.wasm
  mode: warn
";
    cluster.apply(good)?;
    let listed = cluster.kubectl(&["get", "cap", "-o", "wide"])?;
    ensure!(
        listed.stdout.contains("MODE")
            && listed.stdout.contains("READY")
            && listed.stdout.contains("SERVING")
            && listed.stdout.contains("required-labels")
            && listed.stdout.contains("enforce"),
        "defaults and printer columns\n{listed}"
    );
    let namespaced = cluster.kubectl(&["get", "ap", "-n", "tenant-a", "-o", "name"])?;
    ensure!(
        namespaced
            .stdout
            .contains("admissionpolicy.portcullis.dev/images"),
        "{namespaced}"
    );

    for (spec, expected) in [
        (
            "module: relative.wasm",
            "module must be an oci:// reference or an absolute path",
        ),
        ("module: oci://policies/x:v1", "needs a registry host"),
        (
            "module: /p.wasm\n  mode: loud",
            "Unsupported value: \"loud\"",
        ),
        (
            "module: /p.wasm\n  timeoutMs: 0",
            "should be greater than or equal to 1",
        ),
        (
            "module: /p.wasm\n  memoryLimit: 12 parsecs",
            "spec.memoryLimit",
        ),
        (
            "module: /p.wasm\n  match: { operations: [EXPLODE] }",
            "Unsupported value: \"EXPLODE\"",
        ),
        (
            "module: /p.wasm\n  shadow: { timeoutMs: 5 }",
            "a shadow candidate needs a module, settings or both",
        ),
        ("settings: {}", "spec.module: Required value"),
    ] {
        let yaml = format!(
            "apiVersion: portcullis.dev/v1alpha1\nkind: ClusterAdmissionPolicy\nmetadata: {{ name: bad }}\nspec:\n  {spec}\n"
        );
        let out = cluster.kubectl_with_input(&["apply", "-f", "-"], Some(yaml.as_bytes()))?;
        ensure!(
            !out.status.success() && out.stderr.contains(expected),
            "expected the API server to refuse `{spec}` with {expected:?}\n{out}"
        );
    }
    Ok(())
}

/// Runs kubectl until it succeeds (at most 30 s).
fn poll_kubectl(cluster: &TestCluster, args: &[&str]) -> Result<portcullis_e2e::CliOutput> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = cluster.kubectl(args)?;
        if out.status.success() || std::time::Instant::now() >= deadline {
            return Ok(out);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A server with `--cluster-policies` follows `ClusterAdmissionPolicy`
/// resources: created, edited, broken and deleted through the API server,
/// each change decides the next request without a restart; a spec the
/// policy rejects leaves the previous version deciding.
#[test]
fn servers_follow_cluster_admission_policies() -> Result<()> {
    let cluster = TestCluster::start()?;
    cluster.install_crds()?;

    let server = cluster_policies_server(&cluster)?;
    let module = path_str(&server.paths.required_labels)?.to_string();
    let policy = |labels: &str| {
        format!(
            "apiVersion: portcullis.dev/v1alpha1\nkind: ClusterAdmissionPolicy\nmetadata: {{ name: required-labels }}\nspec:\n  module: {module}\n  settings: {{ labels: {labels} }}\n"
        )
    };
    let dry_run = |name: &str| cluster.dry_run_pod(name, None);
    ensure!(
        dry_run("before")?.status.success(),
        "no policy yet: allowed"
    );

    let started = std::time::Instant::now();
    cluster.apply(&policy("{ team: \"^.+$\" }"))?;
    let created = wait_until(|| {
        let out = dry_run("created")?;
        Ok(out.stderr.contains("missing required label: team"))
    })?;
    let created_ms = started.elapsed().as_millis();
    ensure!(
        created,
        "the created policy never enforced\n{}",
        server.logs()
    );

    let started = std::time::Instant::now();
    cluster.apply(&policy("{ owner: \"^.+$\" }"))?;
    ensure!(
        wait_until(|| Ok(dry_run("edited")?
            .stderr
            .contains("missing required label: owner")))?,
        "the edited settings never enforced"
    );
    let edited_ms = started.elapsed().as_millis();

    // Settings the policy rejects: that resource is refused (its status
    // says why, see controller.rs), the previous version keeps deciding.
    cluster.apply(&policy("[not, a, map]"))?;
    let report = || -> Result<serde_json::Value> {
        Ok(server.policies()?["clusterPolicies"]["ClusterAdmissionPolicy/required-labels"].clone())
    };
    ensure!(
        wait_until(|| {
            let report = report()?;
            Ok(report["refused"]["reason"] == "SettingsRejected"
                && report["refused"]["generation"] == 3
                && report["served"]["generation"] == 2
                && report["refused"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("settings rejected")))
        })?,
        "/policies should say generation 3 was refused and 2 serves: {}",
        report()?
    );
    ensure!(server.logs().contains("policy resource refused"));
    ensure!(
        dry_run("rejected")?
            .stderr
            .contains("missing required label: owner")
    );

    let started = std::time::Instant::now();
    let out = cluster.kubectl(&["delete", "clusteradmissionpolicy", "required-labels"])?;
    ensure!(out.status.success(), "{out}");
    ensure!(
        wait_until(|| Ok(dry_run("deleted")?.status.success()))?,
        "the deleted policy still enforced"
    );
    let deleted_ms = started.elapsed().as_millis();
    eprintln!(
        "kubectl apply -> enforced through the API server: created {created_ms} ms, settings edited \
         {edited_ms} ms; deleted -> no longer enforced {deleted_ms} ms"
    );
    Ok(())
}

/// `serve --cluster-policies` with an empty config file, registered as
/// the validating webhook for pods.
fn cluster_policies_server(cluster: &TestCluster) -> Result<Server> {
    let kubeconfig = cluster.kubeconfig();
    let flags = ["--cluster-policies", "--kubeconfig", path_str(&kubeconfig)?];
    let server = Server::start_with(&flags, |_, dir| {
        let config = dir.join("policies.yaml");
        std::fs::write(&config, "policies: []\n")?;
        Ok(config)
    })?;
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(&server.certs.ca_pem);
    register_webhook(cluster, server.port, &ca_bundle)?;
    Ok(server)
}

fn register_webhook(cluster: &TestCluster, port: u16, ca_bundle: &str) -> Result<()> {
    cluster.apply(&format!(
        "apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {{ name: portcullis }}
webhooks:
  - name: validate.portcullis.dev
    clientConfig: {{ url: \"https://127.0.0.1:{port}/validate\", caBundle: \"{ca_bundle}\" }}
    rules: [{{ operations: [CREATE], apiGroups: [\"\"], apiVersions: [v1], resources: [pods] }}]
    sideEffects: None
    admissionReviewVersions: [v1]
    failurePolicy: Fail
    timeoutSeconds: 5
"
    ))?;
    Ok(())
}

/// Polls `done` every 50 ms for at most 30 s; whether it came true.
fn wait_until(mut done: impl FnMut() -> Result<bool>) -> Result<bool> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if done()? {
            return Ok(true);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(false)
}

/// Selectors and match conditions through the real API server: a
/// `ClusterAdmissionPolicy` with a namespaceSelector judges pods only in
/// the namespaces whose labels it selects (and follows a relabelled
/// namespace), one with an objectSelector and a matchCondition only the
/// pods both select.
#[test]
fn cluster_policies_judge_only_what_their_selectors_select() -> Result<()> {
    let cluster = TestCluster::start()?;
    cluster.install_crds()?;
    cluster.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata: { name: team-a, labels: { team: a } }\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: { name: team-b, labels: { team: b } }\n",
    )?;

    let server = cluster_policies_server(&cluster)?;
    let module = path_str(&server.paths.required_labels)?.to_string();
    cluster.apply(&format!(
        "apiVersion: portcullis.dev/v1alpha1
kind: ClusterAdmissionPolicy
metadata: {{ name: by-namespace }}
spec:
  module: {module}
  match:
    namespaceSelector: {{ matchLabels: {{ team: a }} }}
  settings: {{ labels: {{ team: \"^.+$\" }} }}
---
apiVersion: portcullis.dev/v1alpha1
kind: ClusterAdmissionPolicy
metadata: {{ name: by-object }}
spec:
  module: {module}
  match:
    objectSelector:
      matchExpressions: [{{ key: checked, operator: In, values: [\"yes\"] }}]
    matchConditions:
      - name: portcullis.dev/not-exempt
        expression: \"!object.metadata.name.startsWith('exempt-')\"
  settings: {{ labels: {{ owner: \"^.+$\" }} }}
"
    ))?;
    let dry_run = |namespace: &str, name: &str, labels: &str| {
        let mut args = vec![
            "-n",
            namespace,
            "run",
            name,
            "--image=registry.k8s.io/pause:3.10",
            "--dry-run=server",
        ];
        let labels = format!("--labels={labels}");
        if labels.len() > "--labels=".len() {
            args.push(&labels);
        }
        cluster.kubectl(&args)
    };
    let by_namespace = "by-namespace: missing required label: team";
    let by_object = "by-object: missing required label: owner";
    ensure!(
        wait_until(|| Ok(dry_run("team-a", "plain", "")?
            .stderr
            .contains(by_namespace)))?,
        "the namespaceSelector policy never judged team-a\n/policies: {}",
        server.policies()?
    );
    ensure!(
        wait_until(|| Ok(dry_run("team-b", "checked", "checked=yes")?
            .stderr
            .contains(by_object)))?,
        "the objectSelector policy never judged a checked pod\n{}",
        server.logs()
    );
    // Each judges only what it selects.
    for (namespace, name, labels, judged) in [
        ("team-a", "labelled", "team=x", None),
        ("team-b", "plain", "", None),
        ("team-b", "unchecked", "checked=no", None),
        ("team-b", "exempt-pod", "checked=yes", None),
        (
            "team-a",
            "both",
            "checked=yes",
            Some(format!("{by_namespace}; {by_object}")),
        ),
        ("default", "checked", "checked=yes,owner=me", None),
    ] {
        let out = dry_run(namespace, name, labels)?;
        match judged {
            None => ensure!(
                out.status.success(),
                "{namespace}/{name} ({labels}) should not be judged\n{out}"
            ),
            Some(message) => ensure!(
                !out.status.success() && out.stderr.contains(&message),
                "{namespace}/{name} ({labels}) should be refused with {message:?}\n{out}"
            ),
        }
    }
    // A namespace relabelled to the selected team is judged from then on.
    let out = cluster.kubectl(&["label", "namespace", "team-b", "team=a", "--overwrite"])?;
    ensure!(out.status.success(), "{out}");
    ensure!(
        wait_until(|| Ok(dry_run("team-b", "plain", "")?
            .stderr
            .contains(by_namespace)))?,
        "the relabelled namespace was never selected\n{}",
        server.logs()
    );
    Ok(())
}
