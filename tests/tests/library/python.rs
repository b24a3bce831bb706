//! A policy written in Python, built into a component by componentize-py
//! (`make components`), served unchanged: it answers every review exactly
//! as the Rust `required-labels` with the same rule, denials and messages
//! included, through the real server.

use anyhow::{Context as _, ensure};
use portcullis_e2e::{Json, deployment, json, review_of, with_library};

fn pod(labels: Json) -> Json {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop", "labels": labels},
        "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}
    })
}

#[test]
fn a_python_component_is_served_and_answers_like_the_rust_policy() {
    with_library(|s| {
        let policies = s.policies()?;
        let list = policies["policies"].as_array().context("policies")?;
        let python = list
            .iter()
            .find(|p| p["name"] == "required-labels-py")
            .with_context(|| format!("required-labels-py is not loaded: {policies}"))?;
        ensure!(python["format"] == "component", "{python}");

        // Judged by its own labels (none here), not its pod template's.
        let labelless_deployment = deployment("web", json!({"containers": []}));
        let cases = [
            (
                review_of(&pod(json!({"app": "web", "team": "shop"})), "CREATE"),
                true,
            ),
            (
                review_of(&pod(json!({"app": "web", "team": ""})), "UPDATE"),
                true,
            ),
            (review_of(&pod(json!({"app": "web"})), "CREATE"), false),
            (review_of(&pod(json!(null)), "UPDATE"), false),
            (review_of(&labelless_deployment, "CREATE"), false),
            (review_of(&pod(json!(null)), "DELETE"), true),
        ];
        for (review, allowed) in cases {
            let rust = s.review("/validate/required-labels-rust", &review)?;
            let python = s.review("/validate/required-labels-py", &review)?;
            ensure!(
                rust.allowed() == allowed && python.allowed() == allowed,
                "expected allowed={allowed}: rust {rust} python {python}"
            );
            let reason = |m: &str| m.split_once(": ").map(|(_, r)| r.to_string());
            ensure!(
                reason(rust.message()) == reason(python.message()),
                "messages differ:\n{}\n{}",
                rust.message(),
                python.message()
            );
        }
        let denied = s.review(
            "/validate/required-labels-py",
            &review_of(&pod(json!(null)), "CREATE"),
        )?;
        ensure!(
            denied.message() == "required-labels-py: missing required labels: app, team",
            "{denied}"
        );
        Ok(())
    });
}
