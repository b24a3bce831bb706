//! A ready-made component served unchanged: `allowed-images` built with
//! `cargo build --target wasm32-wasip2` (rustc makes the component; the
//! host does not componentize it) answers exactly as the same policy built
//! for wasm32-wasip1 and componentized by the host.

use anyhow::{Context as _, Result, ensure};
use portcullis_e2e::{Json, json, review_of, with_library};

fn pod(images: &[&str]) -> Json {
    let containers: Vec<Json> = images
        .iter()
        .enumerate()
        .map(|(i, image)| json!({"name": format!("c{i}"), "image": image}))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"containers": containers}
    })
}

#[test]
fn a_wasip2_component_is_served_unchanged_and_answers_like_the_core_module() {
    with_library(|s| {
        let policies = s.policies()?;
        let format = |name: &str| -> Result<String> {
            let list = policies["policies"].as_array().context("policies")?;
            let entry = list
                .iter()
                .find(|p| p["name"] == name)
                .with_context(|| format!("{name} is not loaded: {policies}"))?;
            Ok(entry["format"].as_str().unwrap_or_default().to_string())
        };
        ensure!(
            format("allowed-images-wasip1")? == "coreModule",
            "{policies}"
        );
        ensure!(
            format("allowed-images-wasip2")? == "component",
            "{policies}"
        );

        for images in [
            vec!["nginx:1.27", "registry.k8s.io/pause:3.10"],
            vec!["evil.io/x:1"],
            vec!["EVIL.IO/x:1", "nginx"],
            vec!["ghcr.io/acme/api:2.1"],
        ] {
            let review = review_of(&pod(&images), "CREATE");
            let core = s.review("/validate/allowed-images-wasip1", &review)?;
            let component = s.review("/validate/allowed-images-wasip2", &review)?;
            ensure!(
                core.allowed() == component.allowed(),
                "{images:?}: wasip1 allowed={} wasip2 allowed={}",
                core.allowed(),
                component.allowed()
            );
            let strip = |m: &str, name: &str| m.trim_start_matches(name).to_string();
            ensure!(
                strip(core.message(), "allowed-images-wasip1: ")
                    == strip(component.message(), "allowed-images-wasip2: "),
                "{images:?}: messages differ:\n{}\n{}",
                core.message(),
                component.message()
            );
        }
        let denied = s.review(
            "/validate/allowed-images-wasip2",
            &review_of(&pod(&["evil.io/x:1"]), "CREATE"),
        )?;
        ensure!(
            !denied.allowed()
                && denied.message().starts_with(
                    "allowed-images-wasip2: container \"c0\" uses image \"evil.io/x:1\""
                ),
            "{denied}"
        );
        Ok(())
    });
}
