//! `namespace-reservation` end to end: Namespace CREATE, UPDATE and DELETE
//! reviews by owners, outsiders and a bypass group.

use anyhow::{Result, ensure};
use portcullis_e2e::{Answer, Json, json, review_of, with_library};

const PATH: &str = "/validate/namespace-reservation";
const STRICT: &str = "/validate/namespace-reservation-strict";

fn namespace(name: &str) -> Json {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"}
    })
}

/// A review of `operation` on namespace `name` by `user` in `groups`.
fn review(operation: &str, name: &str, user: &str, groups: &[&str]) -> Json {
    let mut review = review_of(&namespace(name), operation);
    review["request"]["userInfo"] = json!({"username": user, "groups": groups});
    review
}

fn ensure_allowed(a: &Answer, what: &str) -> Result<()> {
    ensure!(a.allowed(), "{what}: expected allowed\n{a}");
    ensure!(a.message().is_empty(), "{what}: unexpected message\n{a}");
    Ok(())
}

/// A 403 whose message is the policy's, after the host's `<entry>: `.
fn ensure_denied(a: &Answer, path: &str, message: &str) -> Result<()> {
    ensure!(!a.allowed(), "expected a denial\n{a}");
    ensure!(a.code() == Some(403), "expected 403\n{a}");
    let entry = path.trim_start_matches("/validate/");
    let want = format!("{entry}: {message}");
    ensure!(
        a.message() == want,
        "message:\n  got  {}\n  want {want}",
        a.message()
    );
    Ok(())
}

#[test]
fn owners_create_and_delete_their_namespaces() {
    with_library(|s| {
        for op in ["CREATE", "DELETE"] {
            let a = s.review(
                PATH,
                &review(op, "payments", "alice", &["system:authenticated"]),
            )?;
            ensure_allowed(&a, "alice on payments")?;
            let a = s.review(
                PATH,
                &review(op, "payments-prod", "carol", &["team-payments"]),
            )?;
            ensure_allowed(&a, "team-payments on payments-prod")?;
            let a = s.review(
                PATH,
                &review(op, "payments-sandbox", "dave", &["developers"]),
            )?;
            ensure_allowed(&a, "developers on payments-sandbox")?;
            let a = s.review(PATH, &review(op, "shop", "bob", &["system:authenticated"]))?;
            ensure_allowed(&a, "unreserved shop")?;
        }
        Ok(())
    });
}

#[test]
fn outsiders_are_denied_create_and_delete() {
    with_library(|s| {
        let a = s.review(
            PATH,
            &review("CREATE", "payments-prod", "bob", &["system:authenticated"]),
        )?;
        ensure_denied(
            &a,
            PATH,
            "namespace \"payments-prod\" is reserved (prefix \"payments-\") for users [alice] and \
             groups [team-payments]; user \"bob\" may not create it",
        )?;
        let a = s.review(
            PATH,
            &review("DELETE", "platform-logs", "alice", &["team-payments"]),
        )?;
        ensure_denied(
            &a,
            PATH,
            "namespace \"platform-logs\" is reserved (prefix \"platform-\") for groups [platform]; \
             user \"alice\" may not delete it",
        )?;
        // The carve-out comes first, so it decides even for the payments team.
        let a = s.review(
            PATH,
            &review("CREATE", "payments-sandbox", "alice", &["team-payments"]),
        )?;
        ensure_denied(
            &a,
            PATH,
            "namespace \"payments-sandbox\" is reserved (name \"payments-sandbox\") for groups \
             [developers]; user \"alice\" may not create it",
        )?;
        Ok(())
    });
}

#[test]
fn bypass_group_and_update_guarding() {
    with_library(|s| {
        let admin = review(
            "DELETE",
            "payments",
            "kubernetes-admin",
            &["system:masters", "system:authenticated"],
        );
        ensure_allowed(&s.review(PATH, &admin)?, "system:masters bypasses")?;
        // The strict entry has no bypass.
        let a = s.review(STRICT, &admin)?;
        ensure_denied(
            &a,
            STRICT,
            "namespace \"payments\" is reserved (name \"payments\") for users [alice] and groups \
             [team-payments]; user \"kubernetes-admin\" may not delete it",
        )?;
        // UPDATE: guarded only by the strict entry.
        let relabel = review("UPDATE", "payments-prod", "bob", &[]);
        ensure_allowed(&s.review(PATH, &relabel)?, "UPDATE not guarded by default")?;
        let a = s.review(STRICT, &relabel)?;
        ensure_denied(
            &a,
            STRICT,
            "namespace \"payments-prod\" is reserved (prefix \"payments-\") for users [alice] and \
             groups [team-payments]; user \"bob\" may not update it",
        )?;
        Ok(())
    });
}

#[test]
fn other_resources_are_not_matched() {
    with_library(|s| {
        // A Pod in a reserved namespace: the policy declares only
        // `namespaces`, so the host does not even call it.
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "namespace": "payments"},
            "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}
        });
        let mut r = review_of(&pod, "CREATE");
        r["request"]["userInfo"] = json!({"username": "bob", "groups": []});
        ensure_allowed(&s.review(PATH, &r)?, "pod in payments")?;
        Ok(())
    });
}
