use serde_json::json;

use super::*;

fn settings(value: Value) -> Settings {
    Settings(value)
}

/// A Deployment request by alice; `object` goes where `operation` puts it
/// (`oldObject` for DELETE).
fn request_for(operation: &str, object: Value) -> Request {
    let side = if operation == "DELETE" {
        "oldObject"
    } else {
        "object"
    };
    let text = json!({
        "uid": "1",
        "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
        "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
        "name": "web",
        "namespace": "shop",
        "operation": operation,
        "userInfo": {"username": "alice", "groups": ["dev", "system:authenticated"]},
        side: object,
    })
    .to_string();
    Request::from_json(&text).unwrap_or_else(|e| panic!("{e}"))
}

fn request(object: Value) -> Request {
    request_for("CREATE", object)
}

fn deployment(replicas: i64) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
           "spec": {"replicas": replicas, "template": {"spec": {"containers": [
               {"name": "web", "image": "nginx", "resources": {"limits": {"memory": "256Mi"}}},
               {"name": "proxy", "image": "envoy", "resources": {"limits": {"memory": "1.5Gi"}}}]}}}})
}

fn judge(settings_json: Value, object: Value) -> Result<Verdict, String> {
    let rules = settings(settings_json).compile()?;
    evaluate(&rules, &request(object))
}

#[test]
fn a_wrong_expression_is_refused_with_its_field_and_position() {
    let error = settings(json!({"validations": [
        {"expression": "object.spec.replicas <= 5"},
        {"expression": "object.spec.replicas <= "}]}))
    .compile()
    .err()
    .unwrap_or_default();
    assert!(error.starts_with("validations[1].expression: "), "{error}");
    assert!(error.contains("validations[1].expression:1:"), "{error}");
    let error =
        settings(json!({"validations": [{"expression": "true", "messageExpression": "'a' +"}]}))
            .compile()
            .err()
            .unwrap_or_default();
    assert!(
        error.starts_with("validations[0].messageExpression"),
        "{error}"
    );
}

#[test]
fn settings_mistakes_are_refused_by_name() {
    let refused = |value: Value| settings(value).compile().err().unwrap_or_default();
    assert!(refused(json!({"validation": []})).contains("unknown field `validation`"));
    assert!(refused(json!({})).contains("would do nothing"));
    assert!(
        refused(json!({"validations": [{"expression": "true", "reason": "Teapot"}]}))
            .contains("validations[0].reason")
    );
    assert!(
        refused(
            json!({"validationActions": ["Deny", "Warn"], "validations": [{"expression": "true"}]})
        )
        .contains("Deny and Warn")
    );
    assert!(
        refused(json!({"kind": "ValidatingAdmissionPolicy", "apiVersion": "admissionregistration.k8s.io/v1",
                       "spec": {"params": {}, "validations": [{"expression": "true"}]}}))
            .contains("beside spec")
    );
    assert!(
        refused(json!({"kind": "MutatingAdmissionPolicy", "apiVersion": "admissionregistration.k8s.io/v1beta1",
                       "spec": {"validations": [{"expression": "true"}]}}))
            .contains("only a ValidatingAdmissionPolicy")
    );
    assert!(
        refused(json!({"variables": [{"name": "a", "expression": "1"}, {"name": "a", "expression": "2"}],
                       "validations": [{"expression": "true"}]}))
            .contains("used twice")
    );
}

#[test]
fn a_denial_carries_every_failed_message_and_the_first_reason_code() {
    let verdict = judge(
        json!({"validations": [
            {"expression": "object.spec.replicas <= 5", "reason": "Forbidden", "message": "too many replicas"},
            {"expression": "object.metadata.name != 'web'"}]}),
        deployment(7),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(!verdict.allowed);
    assert_eq!(
        verdict.message.as_deref(),
        Some("too many replicas; failed expression: object.metadata.name != 'web'")
    );
    assert_eq!(verdict.code, Some(403));
}

#[test]
fn audit_annotations_and_the_audit_action() {
    let verdict = judge(
        json!({
            "validationActions": ["Audit"],
            "validations": [{"expression": "object.spec.replicas <= 5", "message": "too many"}],
            "auditAnnotations": [
                {"key": "high-replica-count",
                 "valueExpression": "object.spec.replicas > 5 ? 'Deployment spec.replicas set to ' + string(object.spec.replicas) : null"},
                {"key": "never", "valueExpression": "null"}]}),
        deployment(7),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(verdict.allowed, "Audit alone never denies");
    let annotations: std::collections::BTreeMap<_, _> =
        verdict.audit_annotations.iter().cloned().collect();
    assert_eq!(
        annotations.get("high-replica-count").map(String::as_str),
        Some("Deployment spec.replicas set to 7")
    );
    assert_eq!(
        annotations.get("validation_failures").map(String::as_str),
        Some("[\"too many\"]")
    );
    assert!(!annotations.contains_key("never"));
}

#[test]
fn a_failing_variable_fails_only_the_rules_that_use_it() {
    let rules = json!({
        "variables": [
            {"name": "strategy", "expression": "object.spec.strategy.type"},
            {"name": "replicas", "expression": "object.spec.replicas"}],
        "validations": [{"expression": "variables.replicas <= 5"}]});
    assert!(
        judge(rules.clone(), deployment(3))
            .unwrap_or_else(|e| panic!("{e}"))
            .allowed
    );
    let mut uses_it = rules;
    uses_it["validations"] = json!([{"expression": "variables.strategy == 'Recreate'"}]);
    let error = judge(uses_it, deployment(3)).err().unwrap_or_default();
    assert!(error.contains("validations[0].expression"), "{error}");
    assert!(
        error.contains("variables.strategy: variables[0].expression"),
        "{error}"
    );
}

#[test]
fn kubernetes_libraries_quantities_regex_and_lists() {
    let check = |expression: &str| {
        judge(
            json!({"validations": [{"expression": expression}]}),
            deployment(3),
        )
        .unwrap_or_else(|e| panic!("{expression}: {e}"))
        .allowed
    };
    let containers = "object.spec.template.spec.containers";
    assert!(check("quantity('1.5Gi').isGreaterThan(quantity('1G'))"));
    assert!(check("quantity('500m').compareTo(quantity('0.5')) == 0"));
    assert!(check("quantity('500m') == quantity('0.5')"));
    assert!(check(
        "quantity('1Gi').add(quantity('512Mi')) == quantity('1536Mi')"
    ));
    assert!(check("quantity('2k').sub(1000).asInteger() == 1000"));
    assert!(check(
        "!quantity('1500m').isInteger() && quantity('1500m').asApproximateFloat() == 1.5"
    ));
    assert!(check(
        "quantity('-1').sign() == -1 && isQuantity('1Ki') && !isQuantity('1KB')"
    ));
    assert!(check(&format!(
        "{containers}.map(c, quantity(c.resources.limits.memory)).sum() == quantity('1792Mi')"
    )));
    assert!(check(
        "[3, 1, 2].sum() == 6 && [1.5, 2.5].sum() == 4.0 && [].sum() == 0"
    ));
    assert!(check("[1, 2, 3].isSorted() && !['b', 'a'].isSorted()"));
    assert!(check(
        "[3, 9, 2].max() == 9 && [3, 9, 2].min() == 2 && ['b', 'a'].min() == 'a'"
    ));
    assert!(check(
        "[quantity('1Gi'), quantity('1G')].min() == quantity('1G')"
    ));
    assert!(check(
        "'abc-123-4567'.find('[0-9]+') == '123' && 'abc'.find('[0-9]+') == ''"
    ));
    assert!(check("'a1b22c333'.findAll('[0-9]+') == ['1', '22', '333']"));
    assert!(check("'a1b22c333'.findAll('[0-9]+', 2) == ['1', '22']"));
    assert!(check(
        "'Hello'.lowerAscii() == 'hello' && 'a,b'.split(',') == ['a', 'b']"
    ));
    assert!(check("[[1], [2, 3]].flatten() == [1, 2, 3]"));
    assert!(check(&format!(
        "cel.bind(cs, {containers}, size(cs) == 2 && cs[0].name == 'web')"
    )));
    assert!(check("cel.bind(a, 2, cel.bind(b, a * 3, b == 6))"));
    assert!(check("'%s has %d'.format(['web', 2]) == 'web has 2'"));
    assert!(check(
        "request.userInfo.groups.exists(g, g == 'dev') && request.operation == 'CREATE'"
    ));
    assert!(check(
        "request.kind.kind == 'Deployment' && request.namespace == 'shop'"
    ));
    assert!(check(
        "params == null && namespaceObject == null && oldObject == null"
    ));
    let error = judge(
        json!({"validations": [{"expression": "quantity('1KB') == quantity('1k')"}]}),
        deployment(3),
    )
    .err()
    .unwrap_or_default();
    assert!(error.contains("invalid quantity"), "{error}");
}

#[test]
fn a_non_bool_validation_is_an_error_and_a_message_expression_falls_back() {
    let error = judge(
        json!({"validations": [{"expression": "object.spec.replicas"}]}),
        deployment(3),
    )
    .err()
    .unwrap_or_default();
    assert!(error.contains("must be a bool"), "{error}");
    let verdict = judge(
        json!({"validations": [{"expression": "false", "message": "static",
                                "messageExpression": "object.spec.nope"}]}),
        deployment(3),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(verdict.message.as_deref(), Some("static"));
}

#[test]
fn match_conditions_skip_requests_they_exclude() {
    let rules = json!({
        "matchConditions": [{"name": "not-alice", "expression": "request.userInfo.username != 'alice'"}],
        "validations": [{"expression": "false"}]});
    assert!(
        judge(rules, deployment(3))
            .unwrap_or_else(|e| panic!("{e}"))
            .allowed
    );
}

#[test]
fn kubernetes_libraries_urls_ips_and_cidrs() {
    let check = |expression: &str| {
        judge(
            json!({"validations": [{"expression": expression}]}),
            deployment(3),
        )
        .unwrap_or_else(|e| panic!("{expression}: {e}"))
        .allowed
    };
    assert!(check(
        "url('https://example.com:8443/a/b?x=1&x=2&y').getScheme() == 'https'"
    ));
    assert!(check(
        "url('https://example.com:8443/a/b').getHost() == 'example.com:8443'"
    ));
    assert!(check(
        "url('https://example.com:8443/a/b').getHostname() == 'example.com'"
    ));
    assert!(check(
        "url('https://example.com:8443/a/b').getPort() == '8443'"
    ));
    assert!(check(
        "url('https://[::1]:80/').getHostname() == '::1' && url('https://[::1]:80/').getPort() == '80'"
    ));
    assert!(check(
        "url('https://example.com/a/b').getEscapedPath() == '/a/b'"
    ));
    assert!(check(
        "url('https://example.com/?x=1&x=2&y').getQuery() == {'x': ['1', '2'], 'y': ['']}"
    ));
    assert!(check(
        "url('/healthz').getEscapedPath() == '/healthz' && url('/healthz').getScheme() == ''"
    ));
    assert!(check(
        "isURL('https://example.com') && !isURL('example.com') && !isURL('a b')"
    ));
    assert!(check(
        "ip('10.0.0.1').family() == 4 && ip('::1').family() == 6"
    ));
    assert!(check(
        "ip('127.0.0.1').isLoopback() && ip('0.0.0.0').isUnspecified()"
    ));
    assert!(check(
        "ip('8.8.8.8').isGlobalUnicast() && !ip('169.254.1.1').isGlobalUnicast()"
    ));
    assert!(check(
        "ip('::1') == ip('0:0::1') && isIP('1.2.3.4') && !isIP('1.2.3') && !isIP('::ffff:1.2.3.4')"
    ));
    assert!(check(
        "cidr('10.0.0.0/8').containsIP('10.1.2.3') && !cidr('10.0.0.0/8').containsIP(ip('11.0.0.1'))"
    ));
    assert!(check(
        "cidr('10.0.0.0/8').containsCIDR('10.1.0.0/16') && !cidr('10.1.0.0/16').containsCIDR('10.0.0.0/8')"
    ));
    assert!(check(
        "cidr('10.1.2.3/8').masked() == cidr('10.0.0.0/8') && cidr('10.1.2.3/8').prefixLength() == 8"
    ));
    assert!(check(
        "cidr('10.1.2.3/8').ip() == ip('10.1.2.3') && isCIDR('::/0') && !isCIDR('1.2.3.4/33')"
    ));
    assert!(!check("cidr('fd00::/8').containsIP('10.0.0.1')"));
}

#[test]
fn a_rule_that_reads_a_missing_object_says_so() {
    let rules = settings(json!({"validations": [{"expression": "object.metadata.name != 'x'"}]}))
        .compile()
        .unwrap_or_else(|e| panic!("{e}"));
    let request = request_for("DELETE", deployment(3));
    let error = evaluate(&rules, &request).err().unwrap_or_default();
    assert!(
        error.contains("`object` is null: this DELETE request has none"),
        "{error}"
    );
}
