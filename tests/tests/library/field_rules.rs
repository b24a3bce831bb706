//! `field-rules` end to end: an Ingress (one of them a third-party
//! capture), a Deployment with per-container rules and a made-up custom
//! resource.

use anyhow::{Result, ensure};
use portcullis_e2e::{
    Answer, Json, corpus_dir, deployment, json, read_json, review_of, with_library,
};

const PATH: &str = "/validate/field-rules";

fn ensure_allowed(a: &Answer, what: &str) -> Result<()> {
    ensure!(a.allowed(), "{what}: expected allowed\n{a}");
    ensure!(a.message().is_empty(), "{what}: unexpected message\n{a}");
    Ok(())
}

/// A 403 whose message is the policy's, after the host's `field-rules: `.
fn ensure_denied(a: &Answer, message: &str) -> Result<()> {
    ensure!(!a.allowed(), "expected a denial\n{a}");
    ensure!(a.code() == Some(403), "expected 403\n{a}");
    let want = format!("field-rules: {message}");
    ensure!(
        a.message() == want,
        "message:\n  got  {}\n  want {want}",
        a.message()
    );
    Ok(())
}

fn ingress(annotations: Json) -> Json {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "shop", "namespace": "shop", "annotations": annotations},
        "spec": {
            "ingressClassName": "nginx",
            "tls": [{"hosts": ["shop.example.com"], "secretName": "shop-tls"}],
            "rules": [{"host": "shop.example.com", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}
            ]}}]
        }
    })
}

#[test]
fn ingress_with_tls_needs_an_issuer() {
    with_library(|s| {
        let a = s.review(PATH, &review_of(&ingress(json!({})), "CREATE"))?;
        ensure_denied(
            &a,
            "rule \"tls-needs-issuer\": /spec/tls is set, so \
             /metadata/annotations/cert-manager.io~1cluster-issuer must be set",
        )?;
        let issued = ingress(json!({"cert-manager.io/cluster-issuer": "letsencrypt"}));
        ensure_allowed(&s.review(PATH, &review_of(&issued, "UPDATE"))?, "annotated")?;
        Ok(())
    });
}

#[test]
fn captured_ingress_host_outside_the_domain() {
    with_library(|s| {
        // kubewarden's kwctl capture: one rule for host foo.bar.com, no TLS.
        let request = read_json(
            &corpus_dir().join("kubewarden-controller/crates/kwctl/tests/data/ingress.json"),
        )?;
        let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request});
        let a = s.review(PATH, &review)?;
        ensure_denied(
            &a,
            "rule \"hosts-under-example-com\": /spec/rules/0/http is set, so /spec/rules/0/host \
             must match \"\\\\.example\\\\.com$\" (it is \"foo.bar.com\")",
        )
    });
}

#[test]
fn deployment_containers_each_need_a_probe() {
    with_library(|s| {
        let deployment = deployment(
            "web",
            json!({"containers": [
                {"name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 80}],
                 "readinessProbe": {"httpGet": {"path": "/", "port": 80}}},
                {"name": "sidecar", "image": "envoy:1"},
                {"name": "api", "image": "api:1", "ports": [{"containerPort": 8080}]}
            ]}),
        );
        let a = s.review(PATH, &review_of(&deployment, "CREATE"))?;
        ensure_denied(
            &a,
            "rule \"ports-need-probes\": /spec/template/spec/containers/2/ports is set, so \
             /spec/template/spec/containers/2/readinessProbe must be set",
        )?;
        let mut fixed = deployment.clone();
        fixed["spec"]["template"]["spec"]["containers"][2]["readinessProbe"] =
            json!({"tcpSocket": {"port": 8080}});
        ensure_allowed(&s.review(PATH, &review_of(&fixed, "UPDATE"))?, "fixed")?;
        Ok(())
    });
}

#[test]
fn custom_resource_rules() {
    with_library(|s| {
        let cluster = |spec: Json| {
            json!({
                "apiVersion": "db.example.com/v1alpha1",
                "kind": "PostgresCluster",
                "metadata": {"name": "orders", "namespace": "shop"},
                "spec": spec
            })
        };
        let good =
            cluster(json!({"replicas": 3, "backup": {"enabled": true, "schedule": "0 3 * * *"}}));
        ensure_allowed(
            &s.review(PATH, &review_of(&good, "CREATE"))?,
            "good cluster",
        )?;
        let bad = cluster(json!({
            "replicas": 3,
            "standalone": true,
            "backup": {"enabled": true, "schedule": "nightly"}
        }));
        let a = s.review(PATH, &review_of(&bad, "CREATE"))?;
        ensure_denied(
            &a,
            "rule \"backups-need-schedule\": enabled backups need a five-field cron schedule \
             (at /spec/backup/schedule); rule \"replicas-without-standalone\": /spec/replicas \
             matches \"^([2-9]|[1-9][0-9]+)$\", so /spec/standalone must not be set (it is true)",
        )?;
        // DELETE has no object to check.
        ensure_allowed(&s.review(PATH, &review_of(&bad, "DELETE"))?, "DELETE")?;
        Ok(())
    });
}
