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
