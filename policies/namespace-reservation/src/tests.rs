use super::*;
use portcullis_sdk::testing;
use serde_json::{Value, json};

fn settings() -> Value {
    json!({
        "reservations": [
            {"names": ["payments-sandbox"], "groups": ["developers"]},
            {"names": ["payments"], "prefixes": ["payments-"], "users": ["alice"], "groups": ["team-payments"]},
            {"prefixes": ["kube-", "platform-"], "groups": ["platform"]},
        ]
    })
}

fn namespace(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
        "spec": {"finalizers": ["kubernetes"]}
    })
}

/// A request as the API server sends it for a Namespace: the name both as
/// `name` and `namespace`; DELETE carries only `oldObject`.
fn review(operation: &str, name: &str, user: &str, groups: &[&str]) -> Value {
    let object = namespace(name);
    let (new, old) = match operation {
        "CREATE" => (object, Value::Null),
        "DELETE" => (Value::Null, object),
        _ => (object.clone(), object),
    };
    json!({
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": "", "version": "v1", "kind": "Namespace"},
        "resource": {"group": "", "version": "v1", "resource": "namespaces"},
        "name": name,
        "namespace": name,
        "operation": operation,
        "userInfo": {"username": user, "groups": groups},
        "object": new,
        "oldObject": old,
        "dryRun": false
    })
}

fn validate_with(request: &Value, settings: &Value) -> Verdict {
    testing::validate::<NamespaceReservation>(request, settings).unwrap()
}

fn validate(request: &Value) -> Verdict {
    validate_with(request, &settings())
}

fn message(request: &Value) -> Option<String> {
    validate(request).message
}

#[test]
fn owners_may_create_and_delete() {
    for op in ["CREATE", "DELETE"] {
        for (name, user, groups) in [
            ("payments", "alice", &["system:authenticated"][..]),
            ("payments-prod", "alice", &[][..]),
            (
                "payments-prod",
                "carol",
                &["system:authenticated", "team-payments"][..],
            ),
            ("payments-sandbox", "dave", &["developers"][..]),
            ("kube-extra", "erin", &["platform"][..]),
        ] {
            assert_eq!(
                validate(&review(op, name, user, groups)),
                Verdict::allow(),
                "{op} {name} by {user}"
            );
        }
    }
}

#[test]
fn unreserved_namespaces_are_anyones() {
    for name in ["shop", "paymentsx", "payment-prod", "my-payments"] {
        assert_eq!(
            validate(&review("CREATE", name, "bob", &[])),
            Verdict::allow(),
            "{name}"
        );
    }
}

#[test]
fn others_are_denied_with_the_reservation_and_who_may() {
    let verdict = validate(&review(
        "CREATE",
        "payments-prod",
        "bob",
        &["system:authenticated"],
    ));
    assert!(!verdict.allowed);
    assert_eq!(verdict.code, None);
    assert_eq!(
        verdict.message.as_deref(),
        Some(
            "namespace \"payments-prod\" is reserved (prefix \"payments-\") for users [alice] \
             and groups [team-payments]; user \"bob\" may not create it"
        )
    );
    assert_eq!(
        message(&review("CREATE", "payments", "bob", &[])).as_deref(),
        Some(
            "namespace \"payments\" is reserved (name \"payments\") for users [alice] \
             and groups [team-payments]; user \"bob\" may not create it"
        )
    );
}

#[test]
fn delete_is_guarded_and_named_in_the_message() {
    assert_eq!(
        message(&review(
            "DELETE",
            "platform-logs",
            "alice",
            &["team-payments"]
        ))
        .as_deref(),
        Some(
            "namespace \"platform-logs\" is reserved (prefix \"platform-\") for groups [platform]; \
             user \"alice\" may not delete it"
        )
    );
}

#[test]
fn delete_without_request_name_reads_the_old_object() {
    let mut request = review("DELETE", "payments", "bob", &[]);
    request["name"] = json!("");
    request["namespace"] = json!("");
    assert_eq!(
        message(&request).as_deref(),
        Some(
            "namespace \"payments\" is reserved (name \"payments\") for users [alice] \
             and groups [team-payments]; user \"bob\" may not delete it"
        )
    );
}

#[test]
fn first_matching_reservation_decides() {
    // payments-sandbox is carved out of payments- for developers, so the
    // payments team's own members are not in it...
    assert_eq!(
        message(&review(
            "CREATE",
            "payments-sandbox",
            "alice",
            &["team-payments"]
        ))
        .as_deref(),
        Some(
            "namespace \"payments-sandbox\" is reserved (name \"payments-sandbox\") for groups \
             [developers]; user \"alice\" may not create it"
        )
    );
    // ...and developers get only that one name.
    assert!(!validate(&review("CREATE", "payments-dev", "dave", &["developers"])).allowed);
}

#[test]
fn update_is_guarded_only_when_configured() {
    let request = review("UPDATE", "payments", "bob", &[]);
    assert_eq!(validate(&request), Verdict::allow());
    let mut settings = settings();
    settings["operations"] = json!(["CREATE", "UPDATE", "DELETE"]);
    assert_eq!(
        validate_with(&request, &settings).message.as_deref(),
        Some(
            "namespace \"payments\" is reserved (name \"payments\") for users [alice] \
             and groups [team-payments]; user \"bob\" may not update it"
        )
    );
    // And DELETE can be left out.
    settings["operations"] = json!(["CREATE"]);
    assert_eq!(
        validate_with(&review("DELETE", "payments", "bob", &[]), &settings),
        Verdict::allow()
    );
}

#[test]
fn bypass_groups_and_users() {
    let mut settings = settings();
    settings["bypassGroups"] = json!(["system:masters"]);
    settings["bypassUsers"] = json!(["system:serviceaccount:argocd:argocd-application-controller"]);
    let admin = review(
        "DELETE",
        "payments",
        "kubernetes-admin",
        &["system:masters", "system:authenticated"],
    );
    assert_eq!(validate_with(&admin, &settings), Verdict::allow());
    let argo = review(
        "CREATE",
        "payments-prod",
        "system:serviceaccount:argocd:argocd-application-controller",
        &[],
    );
    assert_eq!(validate_with(&argo, &settings), Verdict::allow());
    // Without the setting nobody is special, not even system:masters.
    assert!(!validate(&admin).allowed);
}

#[test]
fn generate_name_is_checked_against_prefixes() {
    let mut request = review("CREATE", "", "bob", &[]);
    request["object"]["metadata"] = json!({"generateName": "payments-"});
    assert_eq!(
        message(&request).as_deref(),
        Some(
            "a namespace generated from \"payments-\" is reserved (prefix \"payments-\") for users \
             [alice] and groups [team-payments]; user \"bob\" may not create it"
        )
    );
    // `payments` + random characters is never exactly `payments`, and the
    // generator never writes the `-` of `payments-`.
    request["object"]["metadata"] = json!({"generateName": "payments"});
    assert_eq!(validate(&request), Verdict::allow());
}

#[test]
fn a_generate_name_that_could_reach_a_prefix_or_name_counts_as_reserved() {
    let settings = json!({"reservations": [
        {"prefixes": ["payments"], "names": ["web-bcd24"], "users": ["alice"]}
    ]});
    let mut request = review("CREATE", "", "bob", &[]);
    // `paymen` + `ts...` from the generator is under the prefix `payments`.
    request["object"]["metadata"] = json!({"generateName": "paymen"});
    let verdict = validate_with(&request, &settings);
    assert_eq!(
        verdict.message.as_deref(),
        Some(
            "a namespace generated from \"paymen\" is reserved (prefix \"payments\") for users \
             [alice]; user \"bob\" may not create it"
        )
    );
    // The generator writes no vowels, so `pay` never becomes `payments`.
    request["object"]["metadata"] = json!({"generateName": "pay"});
    assert_eq!(validate_with(&request, &settings), Verdict::allow());
    // `web-` + five generated characters can be exactly `web-bcd24`.
    request["object"]["metadata"] = json!({"generateName": "web-"});
    let verdict = validate_with(&request, &settings);
    assert!(
        verdict
            .message
            .as_deref()
            .is_some_and(|m| m.contains("(name \"web-bcd24\")")),
        "{verdict:?}"
    );
    // `web` + five characters is one too short to be it.
    request["object"]["metadata"] = json!({"generateName": "web"});
    assert_eq!(validate_with(&request, &settings), Verdict::allow());
}

#[test]
fn other_resources_subresources_and_connect_are_ignored() {
    // A Pod in a reserved namespace is not this policy's business.
    let mut pod = review("CREATE", "web", "bob", &[]);
    pod["namespace"] = json!("payments");
    pod["kind"] = json!({"group": "", "version": "v1", "kind": "Pod"});
    pod["resource"] = json!({"group": "", "version": "v1", "resource": "pods"});
    assert_eq!(validate(&pod), Verdict::allow());
    // The namespace controller finalizes a namespace being deleted.
    let mut finalize = review(
        "UPDATE",
        "payments",
        "system:serviceaccount:kube-system:namespace-controller",
        &[],
    );
    finalize["subResource"] = json!("finalize");
    let mut settings = settings();
    settings["operations"] = json!(["UPDATE"]);
    assert_eq!(validate_with(&finalize, &settings), Verdict::allow());
    let connect = review("CONNECT", "payments", "bob", &[]);
    assert_eq!(validate(&connect), Verdict::allow());
}

#[test]
fn kind_alone_identifies_a_namespace() {
    let mut request = review("CREATE", "payments", "bob", &[]);
    request["resource"] = Value::Null;
    assert!(!validate(&request).allowed);
}

#[test]
fn settings_validation() {
    let check = |settings: Value| testing::validate_settings::<NamespaceReservation>(&settings);
    assert_eq!(check(settings()), Ok(()));
    assert_eq!(
        check(json!({})),
        Err("reservations must list at least one reservation".to_string())
    );
    assert_eq!(
        check(json!({"reservations": [{}]})),
        Err("reservations[0] must list at least one name or prefix; \
             reservations[0] must list at least one user or group"
            .to_string())
    );
    assert_eq!(
        check(json!({"reservations": [{"prefixes": [""], "names": ["Payments", ""], "users": [""], "groups": ["g"]}]})),
        Err("reservations[0].names: \"Payments\" is not a valid namespace name (lower-case letters, \
             digits and '-', at most 63); reservations[0].names: \"\" is not a valid namespace name \
             (lower-case letters, digits and '-', at most 63); reservations[0].prefixes: an empty \
             prefix would reserve every namespace; reservations[0].users must not contain an empty string"
            .to_string())
    );
    assert_eq!(
        check(json!({"reservations": [{"prefixes": ["-x"], "users": ["a"]}]})),
        Err(
            "reservations[0].prefixes: \"-x\" cannot begin a namespace name (lower-case letters, \
             digits and '-', starting with a letter or digit)"
                .to_string()
        )
    );
    assert_eq!(
        check(
            json!({"reservations": [{"names": ["a"], "users": ["a"]}], "operations": ["CREATE", "CONNECT"]})
        ),
        Err("operations: \"CONNECT\" is not one of CREATE, UPDATE, DELETE".to_string())
    );
    assert_eq!(
        check(json!({"reservations": [{"names": ["a"], "users": ["a"]}], "operations": []})),
        Err("operations must list at least one of CREATE, UPDATE, DELETE".to_string())
    );
    assert_eq!(
        check(json!({"reservations": [{"names": ["a"], "users": ["a"]}], "bypassGroups": [""]})),
        Err("bypassGroups must not contain an empty string".to_string())
    );
    let err = check(json!({"reservations": [{"name": ["a"], "users": ["a"]}]})).unwrap_err();
    assert!(
        err.starts_with("invalid settings: unknown field `name`, expected one of"),
        "{err}"
    );
    let err = check(json!({"reservation": []})).unwrap_err();
    assert!(
        err.starts_with("invalid settings: unknown field `reservation`"),
        "{err}"
    );
}

#[test]
fn metadata() {
    let m = NamespaceReservation::METADATA;
    assert_eq!(m.name, "namespace-reservation");
    assert_eq!(m.resources, &["namespaces"]);
    assert!(m.validates && !m.mutates);
}
