//! `policies/standard.yaml`, the set `make run` serves, end to end: the
//! standard mutation makes an ordinary workload pass the standard
//! validation, Pod Security "restricted" included.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context as _, Result, ensure};
use portcullis_e2e::{Json, Paths, Server, json, repo_root, review_of};

/// A server with `policies/standard.yaml` as shipped, its module paths
/// pointed at the modules this build made.
fn standard() -> &'static Server {
    static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
    let server =
        SERVER.get_or_init(|| Server::in_process(write_standard).map_err(|e| format!("{e:?}")));
    match server {
        Ok(server) => server,
        Err(e) => panic!("could not start a server with policies/standard.yaml:\n{e}"),
    }
}

fn write_standard(paths: &Paths, dir: &Path) -> Result<PathBuf> {
    let shipped = repo_root().join("policies/standard.yaml");
    let text = std::fs::read_to_string(&shipped)
        .with_context(|| format!("reading {}", shipped.display()))?;
    let modules = format!("{}/", paths.modules.display());
    let text = text.replace("../target/wasm32-wasip1/policy/", &modules);
    ensure!(
        !text.contains("../target"),
        "policies/standard.yaml names a module outside target/wasm32-wasip1/policy"
    );
    let path = dir.join("standard.yaml");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn deployment(image: &str) -> Json {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "nginx", "image": image, "ports": [{"containerPort": 80}]}]}
            }
        }
    })
}

#[test]
fn a_plain_deployment_is_denied_as_sent_and_allowed_after_the_standard_mutation() {
    standard().test(|s| {
        let sent = deployment("nginx:1.27");
        let as_sent = s.review("/validate", &review_of(&sent, "CREATE"))?;
        ensure!(!as_sent.allowed(), "the unmutated deployment was allowed\n{as_sent}");
        ensure!(
            as_sent.message().starts_with(
                "pod-security: violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false \
                 (container \"nginx\" must set securityContext.allowPrivilegeEscalation=false)"
            ),
            "unexpected message: {}",
            as_sent.message()
        );

        let mutated = s.review("/mutate", &review_of(&sent, "CREATE"))?;
        ensure!(mutated.allowed(), "mutation denied\n{mutated}");
        let object = mutated.patched_object()?;
        let container = &object["spec"]["template"]["spec"]["containers"][0];
        ensure!(
            container["securityContext"]
                == json!({
                    "runAsNonRoot": true,
                    "seccompProfile": {"type": "RuntimeDefault"},
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]}
                }),
            "securityContext after mutation: {}",
            container["securityContext"]
        );
        ensure!(
            container["resources"] == json!({"requests": {"cpu": "50m", "memory": "64Mi"}}),
            "resources after mutation: {}",
            container["resources"]
        );
        ensure!(
            object["metadata"]["labels"]["portcullis.dev/admitted"] == "true",
            "default-labels did not run after container-defaults: {}",
            object["metadata"]
        );

        let judged = s.review("/validate", &review_of(&object, "CREATE"))?;
        ensure!(
            judged.allowed(),
            "the mutated deployment was denied: {}",
            judged.message()
        );
        // And the mutation is done: nothing more to add.
        let again = s.review("/mutate", &review_of(&object, "CREATE"))?;
        ensure!(again.patch()?.is_none(), "mutating twice patched again\n{again}");
        Ok(())
    });
}

#[test]
fn an_image_from_an_unknown_registry_is_denied_even_after_mutation() {
    standard().test(|s| {
        let sent = deployment("evil.example.com/miner:1");
        let object = s
            .review("/mutate", &review_of(&sent, "CREATE"))?
            .patched_object()?;
        let judged = s.review("/validate", &review_of(&object, "CREATE"))?;
        ensure!(!judged.allowed(), "allowed\n{judged}");
        ensure!(
            judged.message().starts_with("allowed-images: ")
                && judged.message().contains("evil.example.com/miner:1"),
            "unexpected message: {}",
            judged.message()
        );
        Ok(())
    });
}
