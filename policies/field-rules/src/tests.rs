use super::*;
use portcullis_sdk::testing;
use serde_json::{Value, json};

fn review(operation: &str, object: Value) -> Value {
    testing::request(operation, "shop", object)
}

fn validate(settings: &Value, object: Value) -> Verdict {
    testing::validate::<FieldRules>(&review("CREATE", object), settings).unwrap()
}

fn message(settings: &Value, object: Value) -> Option<String> {
    validate(settings, object).message
}

fn ingress_settings() -> Value {
    json!({"rules": [{
        "name": "tls-needs-issuer",
        "kinds": ["Ingress"],
        "if": {"pointer": "/spec/tls", "present": true},
        "then": {"pointer": "/metadata/annotations/cert-manager.io~1cluster-issuer", "present": true}
    }]})
}

fn ingress(annotations: Value, tls: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "shop", "namespace": "shop", "annotations": annotations},
        "spec": {
            "ingressClassName": "nginx",
            "tls": tls,
            "rules": [{"host": "shop.example.com", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}
            ]}}]
        }
    })
}

#[test]
fn ingress_with_tls_needs_the_annotation() {
    let tls = json!([{"hosts": ["shop.example.com"], "secretName": "shop-tls"}]);
    let verdict = validate(&ingress_settings(), ingress(json!({}), tls.clone()));
    assert!(!verdict.allowed);
    assert_eq!(verdict.code, None);
    assert_eq!(
        verdict.message.as_deref(),
        Some(
            "rule \"tls-needs-issuer\": /spec/tls is set, so \
             /metadata/annotations/cert-manager.io~1cluster-issuer must be set"
        )
    );
    let annotated = ingress(
        json!({"cert-manager.io/cluster-issuer": "letsencrypt"}),
        tls,
    );
    assert_eq!(validate(&ingress_settings(), annotated), Verdict::allow());
    // No TLS (missing or null): nothing required.
    assert_eq!(
        validate(&ingress_settings(), ingress(json!({}), Value::Null)),
        Verdict::allow()
    );
    let mut no_tls = ingress(json!({}), Value::Null);
    no_tls["spec"].as_object_mut().unwrap().remove("tls");
    assert_eq!(validate(&ingress_settings(), no_tls), Verdict::allow());
}

fn deployment(containers: Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": containers}
            }
        }
    })
}

fn container_settings() -> Value {
    json!({"rules": [
        {
            "name": "ports-need-probes",
            "kinds": ["Deployment"],
            "apiGroups": ["apps"],
            "if": {"pointer": "/spec/template/spec/containers/*/ports", "present": true},
            "then": {"pointer": "/spec/template/spec/containers/*/readinessProbe", "present": true}
        },
        {
            "name": "privileged-is-named",
            "if": {"pointer": "/spec/template/spec/containers/*/securityContext/privileged", "equals": true},
            "then": {"pointer": "/spec/template/spec/containers/*/name", "matches": "^priv-"}
        }
    ]})
}

#[test]
fn each_container_is_checked_on_its_own() {
    let containers = json!([
        {"name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 80}],
         "readinessProbe": {"httpGet": {"path": "/", "port": 80}}},
        {"name": "api", "image": "api:1", "ports": [{"containerPort": 8080}]},
        {"name": "sidecar", "image": "envoy:1"},
        {"name": "tool", "image": "tool:1", "securityContext": {"privileged": true}},
        {"name": "priv-ok", "image": "tool:1", "securityContext": {"privileged": true}},
        {"name": "unprivileged", "image": "tool:1", "securityContext": {"privileged": false}}
    ]);
    assert_eq!(
        message(&container_settings(), deployment(containers)).as_deref(),
        Some(
            "rule \"ports-need-probes\": /spec/template/spec/containers/1/ports is set, so \
             /spec/template/spec/containers/1/readinessProbe must be set; \
             rule \"privileged-is-named\": /spec/template/spec/containers/3/securityContext/privileged \
             is true, so /spec/template/spec/containers/3/name must match \"^priv-\" (it is \"tool\")"
        )
    );
    let fine = json!([{"name": "sidecar", "image": "envoy:1"}]);
    assert_eq!(
        validate(&container_settings(), deployment(fine)),
        Verdict::allow()
    );
    // No containers at all: nothing to check.
    assert_eq!(
        validate(&container_settings(), deployment(json!([]))),
        Verdict::allow()
    );
}

#[test]
fn unshared_wildcards_mean_any_in_if_and_every_in_then() {
    // If any container is privileged, every initContainer must run as
    // non-root.
    let settings = json!({"rules": [{
        "name": "privileged-pods-init-nonroot",
        "if": {"pointer": "/spec/containers/*/securityContext/privileged", "equals": true},
        "then": {"pointer": "/spec/initContainers/*/securityContext/runAsNonRoot", "equals": true}
    }]});
    let pod = |privileged: bool| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {
                "containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "x", "securityContext": {"privileged": privileged}}],
                "initContainers": [
                    {"name": "i0", "image": "x", "securityContext": {"runAsNonRoot": true}},
                    {"name": "i1", "image": "x"},
                    {"name": "i2", "image": "x", "securityContext": {"runAsNonRoot": false}}
                ]
            }
        })
    };
    assert_eq!(
        message(&settings, pod(true)).as_deref(),
        Some(
            "rule \"privileged-pods-init-nonroot\": /spec/containers/1/securityContext/privileged is true, \
             so /spec/initContainers/1/securityContext/runAsNonRoot must be true (it is not set); \
             rule \"privileged-pods-init-nonroot\": /spec/containers/1/securityContext/privileged is true, \
             so /spec/initContainers/2/securityContext/runAsNonRoot must be true (it is false)"
        )
    );
    assert_eq!(validate(&settings, pod(false)), Verdict::allow());
}

fn database(spec: Value) -> Value {
    json!({
        "apiVersion": "db.example.com/v1alpha1",
        "kind": "PostgresCluster",
        "metadata": {"name": "orders", "namespace": "shop"},
        "spec": spec
    })
}

fn database_settings() -> Value {
    json!({"rules": [
        {
            "name": "backups-need-schedule",
            "kinds": ["PostgresCluster"],
            "apiGroups": ["db.example.com"],
            "if": {"pointer": "/spec/backup/enabled", "equals": true},
            "then": {"pointer": "/spec/backup/schedule", "matches": "^[0-9*/,-]+( [0-9*/,-]+){4}$"},
            "message": "enabled backups need a five-field cron schedule"
        },
        {
            "name": "replicas-without-standalone",
            "kinds": ["PostgresCluster"],
            "if": {"pointer": "/spec/replicas", "matches": "^([2-9]|[1-9][0-9]+)$"},
            "then": {"pointer": "/spec/standalone", "absent": true}
        },
        {
            "name": "storage-class-null-means-default",
            "kinds": ["PostgresCluster"],
            "if": {"pointer": "/spec/storage/class", "equals": null},
            "then": {"pointer": "/spec/storage/size", "present": true}
        }
    ]})
}

#[test]
fn custom_resource_rules() {
    let good =
        database(json!({"replicas": 3, "backup": {"enabled": true, "schedule": "0 3 * * *"}}));
    assert_eq!(validate(&database_settings(), good), Verdict::allow());
    let bad = database(json!({
        "replicas": 3,
        "standalone": true,
        "backup": {"enabled": true, "schedule": "nightly"},
        "storage": {"class": null}
    }));
    assert_eq!(
        message(&database_settings(), bad).as_deref(),
        Some(
            "rule \"backups-need-schedule\": enabled backups need a five-field cron schedule \
             (at /spec/backup/schedule); \
             rule \"replicas-without-standalone\": /spec/replicas matches \"^([2-9]|[1-9][0-9]+)$\", \
             so /spec/standalone must not be set (it is true); \
             rule \"storage-class-null-means-default\": /spec/storage/class is null, \
             so /spec/storage/size must be set"
        )
    );
    // `equals: null` needs an explicit null; a missing class is not null.
    let missing_class = database(json!({"storage": {}}));
    assert_eq!(
        validate(&database_settings(), missing_class),
        Verdict::allow()
    );
    // One replica: the number 1 as text does not match.
    let single = database(json!({"replicas": 1, "standalone": true}));
    assert_eq!(validate(&database_settings(), single), Verdict::allow());
}

#[test]
fn kinds_and_api_groups_filter() {
    // The same spec in another group or kind is not covered.
    let mut other = database(json!({"backup": {"enabled": true}}));
    other["apiVersion"] = json!("db.other.io/v1");
    let verdict = validate(&database_settings(), other.clone());
    assert_eq!(verdict, Verdict::allow());
    other["apiVersion"] = json!("db.example.com/v1alpha1");
    other["kind"] = json!("MySQLCluster");
    assert_eq!(validate(&database_settings(), other), Verdict::allow());
    // Without `kinds`, a rule covers every kind.
    let settings = json!({"rules": [{
        "name": "owner", "if": {"pointer": "/metadata/labels/tier", "equals": "prod"},
        "then": {"pointer": "/metadata/labels/owner", "present": true}
    }]});
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"tier": "prod"}}});
    assert_eq!(
        message(&settings, cm).as_deref(),
        Some(
            "rule \"owner\": /metadata/labels/tier is \"prod\", so /metadata/labels/owner must be set"
        )
    );
}

#[test]
fn kind_from_the_object_when_the_request_has_none() {
    let mut request = review("CREATE", database(json!({"backup": {"enabled": true}})));
    request["kind"] = Value::Null;
    let verdict = testing::validate::<FieldRules>(&request, &database_settings()).unwrap();
    assert_eq!(
        verdict.message.as_deref(),
        Some(
            "rule \"backups-need-schedule\": enabled backups need a five-field cron schedule \
             (at /spec/backup/schedule)"
        )
    );
}

#[test]
fn update_is_checked_delete_connect_and_subresources_are_not() {
    let bad = ingress(json!({}), json!([{"secretName": "x"}]));
    let update = review("UPDATE", bad.clone());
    assert!(
        !testing::validate::<FieldRules>(&update, &ingress_settings())
            .unwrap()
            .allowed
    );
    let mut status = update.clone();
    status["subResource"] = json!("status");
    assert_eq!(
        testing::validate::<FieldRules>(&status, &ingress_settings()),
        Ok(Verdict::allow())
    );
    let mut delete = review("DELETE", Value::Null);
    delete["oldObject"] = bad;
    assert_eq!(
        testing::validate::<FieldRules>(&delete, &ingress_settings()),
        Ok(Verdict::allow())
    );
    let connect = review("CONNECT", json!({"kind": "PodExecOptions"}));
    assert_eq!(
        testing::validate::<FieldRules>(&connect, &ingress_settings()),
        Ok(Verdict::allow())
    );
}

#[test]
fn present_and_absent_treat_null_as_unset() {
    let settings = json!({"rules": [{
        "name": "r", "if": {"pointer": "/a", "present": false}, "then": {"pointer": "/b", "absent": false}
    }]});
    let object = |v: Value| json!({"kind": "Thing", "a": v});
    assert_eq!(
        message(&settings, object(Value::Null)).as_deref(),
        Some("rule \"r\": /a is not set, so /b must be set")
    );
    assert_eq!(validate(&settings, object(json!(0))), Verdict::allow());
}

#[test]
fn settings_validation() {
    let check = |settings: Value| testing::validate_settings::<FieldRules>(&settings);
    for good in [
        ingress_settings(),
        container_settings(),
        database_settings(),
    ] {
        assert_eq!(check(good), Ok(()));
    }
    assert_eq!(
        check(json!({})),
        Err("rules must list at least one rule".to_string())
    );
    assert_eq!(
        check(json!({"rules": [
            {"name": "a", "if": {"pointer": "spec/x", "present": true}, "then": {"pointer": "/x~2", "present": true}},
            {"name": "b", "if": {"pointer": "/x"}, "then": {"pointer": "/y", "present": true, "equals": 1}},
            {"name": "a", "if": {"pointer": "/x", "matches": "(unclosed"}, "then": {"pointer": "/y", "absent": true}},
            {"name": "", "kinds": [""], "if": {"pointer": "/x", "present": true}, "then": {"pointer": "/y", "present": true}, "message": ""}
        ]})),
        Err("rule \"a\": if.pointer \"spec/x\": must start with '/'; \
             rule \"a\": then.pointer \"/x~2\": segment \"x~2\": '~' must be followed by 0 or 1; \
             rule \"b\": if must give exactly one of present, absent, equals, matches, contains, notContains (found none); \
             rule \"b\": then must give exactly one of present, absent, equals, matches, contains, notContains (found present, equals); \
             rules[0] and rules[2] are both named \"a\"; \
             rule \"a\": if.matches \"(unclosed\" is not a valid regex: \
             found open group without closing ')'; \
             rules[3]: name must not be empty; rules[3]: kinds must not contain an empty string; \
             rules[3]: message must not be empty"
            .to_string())
    );
    let err = check(json!({"rules": [{
        "name": "a", "when": {"pointer": "/a", "present": true}, "then": {"pointer": "/b", "present": true}
    }]})).unwrap_err();
    assert!(
        err.starts_with("invalid settings: unknown field `when`"),
        "{err}"
    );
    let err = check(json!({"rules": [{"name": "a", "if": {"pointer": "/a", "present": true}}]}))
        .unwrap_err();
    assert!(
        err.starts_with("invalid settings: missing field `then`"),
        "{err}"
    );
}

#[test]
fn metadata() {
    let m = FieldRules::METADATA;
    assert_eq!(m.name, "field-rules");
    assert_eq!(m.resources, &["*"]);
    assert!(m.validates && !m.mutates);
}

#[test]
fn operations_must_be_create_or_update_and_lists_are_tested_by_element() {
    let refused = testing::validate_settings::<FieldRules>(&json!({"rules": [{
        "name": "r", "operations": ["DELETE"],
        "if": {"pointer": "/spec", "present": true},
        "then": {"pointer": "/spec/x", "contains": 1}
    }]}))
    .unwrap_err();
    assert!(
        refused.contains("\"DELETE\" is not CREATE or UPDATE"),
        "{refused}"
    );
    let settings = json!({"rules": [{
        "name": "r",
        "if": {"pointer": "/spec", "present": true},
        "then": {"pointer": "/spec/list", "notContains": "b"}
    }]});
    let object = |list: Value| json!({"apiVersion": "v1", "kind": "Thing", "metadata": {"name": "t"}, "spec": {"list": list}});
    assert_eq!(message(&settings, object(json!(["a"]))), None);
    assert_eq!(
        message(&settings, object(Value::Null)),
        None,
        "an unset list passes notContains"
    );
    assert!(message(&settings, object(json!(["a", "b"]))).is_some());
}
