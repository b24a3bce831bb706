use super::*;
use portcullis_sdk::testing;
use serde_json::{Value, json};

/// A pod that passes restricted at every version.
fn compliant() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "app",
                "image": "nginx:1.27",
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}
            }]
        }
    })
}

/// JSON pointers and the values to put there.
type Changes = Vec<(&'static str, Value)>;

/// `compliant()` with the JSON values at `pointer`s replaced (parents are
/// created as objects).
fn tweak(mut pod: Value, changes: &[(&str, Value)]) -> Value {
    for (pointer, value) in changes {
        let mut target = &mut pod;
        for part in pointer.trim_start_matches('/').split('/') {
            if target.is_null() {
                *target = json!({});
            }
            target = if let Some(i) = part.parse::<usize>().ok().filter(|_| target.is_array()) {
                &mut target[i]
            } else {
                &mut target[part]
            };
        }
        *target = value.clone();
    }
    pod
}

fn review(operation: &str, object: Value) -> Value {
    testing::request(operation, "shop", object)
}

fn run(request: &Value, settings: Value) -> Verdict {
    testing::validate::<PodSecurity>(request, &settings).unwrap()
}

/// The denial message for `pod` at `level` and `version`, `None` if allowed.
fn message(pod: &Value, level: &str, version: &str) -> Option<String> {
    let verdict = run(
        &review("CREATE", pod.clone()),
        json!({"level": level, "version": version}),
    );
    assert_eq!(verdict.allowed, verdict.message.is_none());
    verdict.message
}

fn expect(pod: &Value, level: &str, version: &str, fragment: Option<&str>) {
    let want = fragment.map(|f| format!("violates PodSecurity \"{level}:{version}\": {f}"));
    assert_eq!(
        message(pod, level, version),
        want,
        "{level}:{version} {pod}"
    );
}

#[test]
fn compliant_pod_passes_both_levels_at_every_version() {
    for minor in 0..=LATEST_MINOR {
        for level in ["baseline", "restricted"] {
            expect(&compliant(), level, &format!("v1.{minor}"), None);
        }
    }
    expect(&compliant(), "restricted", "latest", None);
}

/// Baseline checks: each case fails exactly one check; the same pod must
/// fail restricted with the same text (or the restricted override's).
#[test]
fn baseline_checks_pass_and_fail() {
    let cases: Vec<(&str, Changes, Option<&str>)> = vec![
        (
            "hostNetwork",
            vec![("/spec/hostNetwork", json!(true))],
            Some("host namespaces (hostNetwork=true)"),
        ),
        (
            "hostNetwork false",
            vec![("/spec/hostNetwork", json!(false))],
            None,
        ),
        (
            "all host namespaces",
            vec![
                ("/spec/hostNetwork", json!(true)),
                ("/spec/hostPID", json!(true)),
                ("/spec/hostIPC", json!(true)),
            ],
            Some("host namespaces (hostNetwork=true, hostPID=true, hostIPC=true)"),
        ),
        (
            "privileged",
            vec![("/spec/containers/0/securityContext/privileged", json!(true))],
            Some(r#"privileged (container "app" must not set securityContext.privileged=true)"#),
        ),
        (
            "privileged false",
            vec![(
                "/spec/containers/0/securityContext/privileged",
                json!(false),
            )],
            None,
        ),
        (
            "hostPort",
            vec![(
                "/spec/containers/0/ports",
                json!([{"containerPort": 80, "hostPort": 80}, {"containerPort": 443, "hostPort": 443}]),
            )],
            Some(r#"hostPort (container "app" uses hostPorts 443, 80)"#),
        ),
        (
            "hostPort 0",
            vec![(
                "/spec/containers/0/ports",
                json!([{"containerPort": 80, "hostPort": 0}]),
            )],
            None,
        ),
        (
            "probe host",
            vec![(
                "/spec/containers/0/livenessProbe",
                json!({"httpGet": {"host": "10.0.0.1", "port": 8080}}),
            )],
            Some(
                r#"probe or lifecycle host (container "app" uses probe or lifecycle host "10.0.0.1")"#,
            ),
        ),
        (
            "probe without host",
            vec![(
                "/spec/containers/0/livenessProbe",
                json!({"httpGet": {"port": 8080}}),
            )],
            None,
        ),
        (
            "apparmor field",
            vec![(
                "/spec/securityContext/appArmorProfile",
                json!({"type": "Unconfined"}),
            )],
            Some(
                r#"forbidden AppArmor profile (pod must not set AppArmor profile type to "Unconfined")"#,
            ),
        ),
        (
            "apparmor runtime default",
            vec![(
                "/spec/securityContext/appArmorProfile",
                json!({"type": "RuntimeDefault"}),
            )],
            None,
        ),
        (
            "apparmor annotation",
            vec![(
                "/metadata/annotations",
                json!({"container.apparmor.security.beta.kubernetes.io/app": "unconfined"}),
            )],
            Some(
                r#"forbidden AppArmor profile (annotation must not set AppArmor profile type to "container.apparmor.security.beta.kubernetes.io/app="unconfined"")"#,
            ),
        ),
        (
            "apparmor annotation localhost",
            vec![(
                "/metadata/annotations",
                json!({"container.apparmor.security.beta.kubernetes.io/app": "localhost/foo"}),
            )],
            None,
        ),
        (
            "selinux",
            vec![(
                "/spec/containers/0/securityContext/seLinuxOptions",
                json!({"type": "spc_t", "user": "root"}),
            )],
            Some(
                r#"seLinuxOptions (container "app" set forbidden securityContext.seLinuxOptions: type "spc_t"; user may not be set)"#,
            ),
        ),
        (
            "selinux role only",
            vec![("/spec/securityContext/seLinuxOptions", json!({"role": "r"}))],
            Some(
                "seLinuxOptions (pod set forbidden securityContext.seLinuxOptions: role may not be set)",
            ),
        ),
        (
            "selinux container_t",
            vec![(
                "/spec/securityContext/seLinuxOptions",
                json!({"type": "container_t"}),
            )],
            None,
        ),
        (
            "sysctls",
            vec![(
                "/spec/securityContext/sysctls",
                json!([{"name": "kernel.msgmax", "value": "1"}, {"name": "net.ipv4.tcp_syncookies", "value": "1"}, {"name": "vm.swappiness", "value": "1"}]),
            )],
            Some("forbidden sysctls (kernel.msgmax, vm.swappiness)"),
        ),
        (
            "safe sysctls",
            vec![(
                "/spec/securityContext/sysctls",
                json!([{"name": "net.ipv4.tcp_notsent_lowat", "value": "1"}]),
            )],
            None,
        ),
        (
            "hostProcess",
            vec![
                (
                    "/spec/securityContext/windowsOptions",
                    json!({"hostProcess": true}),
                ),
                (
                    "/spec/containers/0/securityContext/windowsOptions",
                    json!({"hostProcess": true}),
                ),
            ],
            Some(
                r#"hostProcess (pod and container "app" must not set securityContext.windowsOptions.hostProcess=true)"#,
            ),
        ),
        (
            "hostProcess false",
            vec![(
                "/spec/securityContext/windowsOptions",
                json!({"hostProcess": false}),
            )],
            None,
        ),
        (
            "procMount",
            vec![(
                "/spec/containers/0/securityContext/procMount",
                json!("Unmasked"),
            )],
            Some(
                r#"procMount (container "app" must not set securityContext.procMount to "Unmasked")"#,
            ),
        ),
        (
            "procMount default",
            vec![(
                "/spec/containers/0/securityContext/procMount",
                json!("Default"),
            )],
            None,
        ),
    ];
    for (name, changes, fragment) in cases {
        let pod = tweak(compliant(), &changes);
        for level in ["baseline", "restricted"] {
            let want = fragment.map(|f| format!("violates PodSecurity \"{level}:latest\": {f}"));
            assert_eq!(message(&pod, level, "latest"), want, "{name} at {level}");
        }
    }
}

/// Checks whose baseline and restricted forms differ (the restricted one
/// overrides the baseline one), and checks only restricted has.
#[test]
fn overridden_and_restricted_only_checks() {
    // (name, changes, baseline fragment, restricted fragment)
    let cases: Vec<(&str, Changes, Option<&str>, Option<&str>)> = vec![
        (
            "hostPath volume",
            vec![(
                "/spec/volumes",
                json!([{"name": "host", "hostPath": {"path": "/"}}, {"name": "data", "emptyDir": {}}]),
            )],
            Some(r#"hostPath volumes (volume "host")"#),
            Some(
                r#"restricted volume types (volume "host" uses restricted volume type "hostPath")"#,
            ),
        ),
        (
            "nfs and unknown volumes",
            vec![(
                "/spec/volumes",
                json!([{"name": "a", "nfs": {"server": "s", "path": "/"}}, {"name": "b", "somethingNew": {}}]),
            )],
            None,
            Some(
                r#"restricted volume types (volumes "a", "b" use restricted volume types "nfs", "unknown")"#,
            ),
        ),
        (
            "allowed volumes",
            vec![(
                "/spec/volumes",
                json!([{"name": "c", "configMap": {"name": "x"}}, {"name": "i", "image": {"reference": "x"}}]),
            )],
            None,
            None,
        ),
        (
            "added capability",
            vec![(
                "/spec/containers/0/securityContext/capabilities/add",
                json!(["NET_ADMIN", "CHOWN"]),
            )],
            Some(
                r#"non-default capabilities (container "app" must not include "NET_ADMIN" in securityContext.capabilities.add)"#,
            ),
            Some(
                r#"unrestricted capabilities (container "app" must not include "CHOWN", "NET_ADMIN" in securityContext.capabilities.add)"#,
            ),
        ),
        (
            "NET_BIND_SERVICE",
            vec![(
                "/spec/containers/0/securityContext/capabilities/add",
                json!(["NET_BIND_SERVICE"]),
            )],
            None,
            None,
        ),
        (
            "no drop ALL",
            vec![(
                "/spec/containers/0/securityContext/capabilities",
                json!({"drop": ["NET_RAW"]}),
            )],
            None,
            Some(
                r#"unrestricted capabilities (container "app" must set securityContext.capabilities.drop=["ALL"])"#,
            ),
        ),
        (
            "unconfined seccomp",
            vec![(
                "/spec/containers/0/securityContext/seccompProfile",
                json!({"type": "Unconfined"}),
            )],
            Some(
                r#"seccompProfile (container "app" must not set securityContext.seccompProfile.type to "Unconfined")"#,
            ),
            Some(
                r#"seccompProfile (container "app" must not set securityContext.seccompProfile.type to "Unconfined")"#,
            ),
        ),
        (
            "no seccomp",
            vec![("/spec/securityContext/seccompProfile", Value::Null)],
            None,
            Some(
                r#"seccompProfile (pod or container "app" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#,
            ),
        ),
        (
            "container seccomp Localhost",
            vec![
                ("/spec/securityContext/seccompProfile", Value::Null),
                (
                    "/spec/containers/0/securityContext/seccompProfile",
                    json!({"type": "Localhost", "localhostProfile": "p.json"}),
                ),
            ],
            None,
            None,
        ),
        (
            "allowPrivilegeEscalation",
            vec![(
                "/spec/containers/0/securityContext/allowPrivilegeEscalation",
                json!(true),
            )],
            None,
            Some(
                r#"allowPrivilegeEscalation != false (container "app" must set securityContext.allowPrivilegeEscalation=false)"#,
            ),
        ),
        (
            "runAsNonRoot false",
            vec![("/spec/securityContext/runAsNonRoot", json!(false))],
            None,
            Some(r#"runAsNonRoot != true (pod must not set securityContext.runAsNonRoot=false)"#),
        ),
        (
            "runAsNonRoot unset",
            vec![("/spec/securityContext/runAsNonRoot", Value::Null)],
            None,
            Some(
                r#"runAsNonRoot != true (pod or container "app" must set securityContext.runAsNonRoot=true)"#,
            ),
        ),
        (
            "runAsNonRoot on container",
            vec![
                ("/spec/securityContext/runAsNonRoot", Value::Null),
                (
                    "/spec/containers/0/securityContext/runAsNonRoot",
                    json!(true),
                ),
            ],
            None,
            None,
        ),
        (
            "runAsUser 0",
            vec![
                ("/spec/securityContext/runAsUser", json!(0)),
                ("/spec/containers/0/securityContext/runAsUser", json!(0)),
            ],
            None,
            Some(r#"runAsUser=0 (pod and container "app" must not set runAsUser=0)"#),
        ),
        (
            "runAsUser 1000",
            vec![("/spec/securityContext/runAsUser", json!(1000))],
            None,
            None,
        ),
    ];
    for (name, changes, base, restricted) in cases {
        let pod = tweak(compliant(), &changes);
        expect(&pod, "baseline", "latest", base);
        assert_eq!(
            message(&pod, "restricted", "latest"),
            restricted.map(|f| format!("violates PodSecurity \"restricted:latest\": {f}")),
            "{name}"
        );
    }
}

#[test]
fn brief_example_lists_every_restricted_failure_in_order() {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "app", "image": "nginx"}]}
    });
    expect(&pod, "baseline", "latest", None);
    expect(
        &pod,
        "restricted",
        "latest",
        Some(concat!(
            r#"allowPrivilegeEscalation != false (container "app" must set securityContext.allowPrivilegeEscalation=false), "#,
            r#"unrestricted capabilities (container "app" must set securityContext.capabilities.drop=["ALL"]), "#,
            r#"runAsNonRoot != true (pod or container "app" must set securityContext.runAsNonRoot=true), "#,
            r#"seccompProfile (pod or container "app" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#
        )),
    );
}

#[test]
fn many_failures_in_upstream_order_naming_init_and_ephemeral_containers() {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "bad", "annotations": {"container.apparmor.security.beta.kubernetes.io/app": "unconfined"}},
        "spec": {
            "hostNetwork": true,
            "hostPID": true,
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
            "securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]},
            "initContainers": [{"name": "init", "image": "busybox", "securityContext": {"privileged": true}}],
            "containers": [
                {"name": "app", "image": "nginx", "ports": [{"containerPort": 80, "hostPort": 8080}],
                 "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}, "runAsUser": 0}},
                {"name": "side", "image": "nginx", "securityContext": {"privileged": true}}
            ],
            "ephemeralContainers": [{"name": "debug", "image": "busybox", "securityContext": {"capabilities": {"add": ["NET_RAW"]}}}]
        }
    });
    expect(
        &pod,
        "baseline",
        "latest",
        Some(concat!(
            r#"forbidden AppArmor profile (annotation must not set AppArmor profile type to "container.apparmor.security.beta.kubernetes.io/app="unconfined""), "#,
            r#"non-default capabilities (containers "app", "debug" must not include "NET_RAW", "SYS_ADMIN" in securityContext.capabilities.add), "#,
            r#"host namespaces (hostNetwork=true, hostPID=true), "#,
            r#"hostPath volumes (volume "root"), "#,
            r#"hostPort (container "app" uses hostPort 8080), "#,
            r#"privileged (containers "init", "side" must not set securityContext.privileged=true), "#,
            r#"forbidden sysctls (kernel.msgmax)"#
        )),
    );
    expect(
        &pod,
        "restricted",
        "latest",
        Some(concat!(
            r#"forbidden AppArmor profile (annotation must not set AppArmor profile type to "container.apparmor.security.beta.kubernetes.io/app="unconfined""), "#,
            r#"host namespaces (hostNetwork=true, hostPID=true), "#,
            r#"hostPort (container "app" uses hostPort 8080), "#,
            r#"privileged (containers "init", "side" must not set securityContext.privileged=true), "#,
            r#"forbidden sysctls (kernel.msgmax), "#,
            r#"allowPrivilegeEscalation != false (containers "init", "app", "side", "debug" must set securityContext.allowPrivilegeEscalation=false), "#,
            r#"unrestricted capabilities (containers "init", "app", "side", "debug" must set securityContext.capabilities.drop=["ALL"]; containers "app", "debug" must not include "NET_RAW", "SYS_ADMIN" in securityContext.capabilities.add), "#,
            r#"restricted volume types (volume "root" uses restricted volume type "hostPath"), "#,
            r#"runAsNonRoot != true (pod or containers "init", "app", "side", "debug" must set securityContext.runAsNonRoot=true), "#,
            r#"runAsUser=0 (container "app" must not set runAsUser=0), "#,
            r#"seccompProfile (pod or containers "init", "app", "side", "debug" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#
        )),
    );
}

#[test]
fn versions_pin_check_behaviour() {
    // hostProbesAndHostLifecycle exists from v1.34.
    let probe = tweak(
        compliant(),
        &[(
            "/spec/containers/0/readinessProbe",
            json!({"tcpSocket": {"host": "db", "port": 5432}}),
        )],
    );
    expect(&probe, "baseline", "v1.33", None);
    expect(
        &probe,
        "baseline",
        "v1.34",
        Some(r#"probe or lifecycle host (container "app" uses probe or lifecycle host "db")"#),
    );

    // Sysctl sets grow at 1.27, 1.29, 1.32 and 1.37.
    let sysctl = |name: &str| {
        tweak(
            compliant(),
            &[(
                "/spec/securityContext/sysctls",
                json!([{"name": name, "value": "1"}]),
            )],
        )
    };
    for (name, first) in [
        ("net.ipv4.ip_unprivileged_port_start", 0),
        ("net.ipv4.ip_local_reserved_ports", 27),
        ("net.ipv4.tcp_keepalive_time", 29),
        ("net.ipv4.tcp_rmem", 32),
        ("net.ipv4.tcp_slow_start_after_idle", 37),
    ] {
        if first > 0 {
            let before = format!("v1.{}", first - 1);
            expect(
                &sysctl(name),
                "baseline",
                &before,
                Some(&format!("forbidden sysctls ({name})")),
            );
        }
        expect(&sysctl(name), "baseline", &format!("v1.{first}"), None);
    }
    expect(
        &sysctl("net.ipv4.tcp_notsent_lowat"),
        "baseline",
        "v1.36",
        Some("forbidden sysctls (net.ipv4.tcp_notsent_lowat)"),
    );
    expect(
        &sysctl("net.ipv4.tcp_notsent_lowat"),
        "baseline",
        "latest",
        None,
    );

    // container_engine_t from 1.31.
    let engine = tweak(
        compliant(),
        &[(
            "/spec/securityContext/seLinuxOptions",
            json!({"type": "container_engine_t"}),
        )],
    );
    expect(
        &engine,
        "baseline",
        "v1.30",
        Some(
            r#"seLinuxOptions (pod set forbidden securityContext.seLinuxOptions: type "container_engine_t")"#,
        ),
    );
    expect(&engine, "baseline", "v1.31", None);

    // runAsUser exists from 1.23; capabilities_restricted from 1.22.
    let root = tweak(
        compliant(),
        &[("/spec/securityContext/runAsUser", json!(0))],
    );
    expect(&root, "restricted", "v1.22", None);
    expect(
        &root,
        "restricted",
        "v1.23",
        Some("runAsUser=0 (pod must not set runAsUser=0)"),
    );
    let no_drop = tweak(
        compliant(),
        &[(
            "/spec/containers/0/securityContext/capabilities",
            Value::Null,
        )],
    );
    expect(&no_drop, "restricted", "v1.21", None);
    expect(
        &no_drop,
        "restricted",
        "v1.22",
        Some(
            r#"unrestricted capabilities (container "app" must set securityContext.capabilities.drop=["ALL"])"#,
        ),
    );

    // Seccomp: annotations before 1.19, fields from 1.19 (restricted requires it only from 1.19).
    let annotated = tweak(
        compliant(),
        &[(
            "/metadata/annotations",
            json!({"seccomp.security.alpha.kubernetes.io/pod": "unconfined"}),
        )],
    );
    expect(
        &annotated,
        "baseline",
        "v1.18",
        Some(
            r#"seccompProfile (forbidden annotation seccomp.security.alpha.kubernetes.io/pod="unconfined")"#,
        ),
    );
    expect(
        &annotated,
        "restricted",
        "v1.18",
        Some(
            r#"seccompProfile (forbidden annotation seccomp.security.alpha.kubernetes.io/pod="unconfined")"#,
        ),
    );
    expect(&annotated, "baseline", "v1.19", None);
    let unset = tweak(
        compliant(),
        &[("/spec/securityContext/seccompProfile", Value::Null)],
    );
    expect(&unset, "restricted", "v1.18", None);

    // allowPrivilegeEscalation exists from 1.8.
    let escalating = tweak(
        compliant(),
        &[(
            "/spec/containers/0/securityContext/allowPrivilegeEscalation",
            Value::Null,
        )],
    );
    expect(&escalating, "restricted", "v1.7", None);
    expect(
        &escalating,
        "restricted",
        "v1.8",
        Some(
            r#"allowPrivilegeEscalation != false (container "app" must set securityContext.allowPrivilegeEscalation=false)"#,
        ),
    );
}

#[test]
fn user_namespaces_relax_checks_from_1_35() {
    let pod = tweak(
        compliant(),
        &[
            ("/spec/hostUsers", json!(false)),
            ("/spec/securityContext/runAsNonRoot", Value::Null),
            ("/spec/securityContext/runAsUser", json!(0)),
            (
                "/spec/containers/0/securityContext/procMount",
                json!("Unmasked"),
            ),
        ],
    );
    expect(&pod, "baseline", "latest", None);
    expect(
        &pod,
        "baseline",
        "v1.34",
        Some(r#"procMount (container "app" must not set securityContext.procMount to "Unmasked")"#),
    );
    expect(
        &pod,
        "restricted",
        "latest",
        Some(r#"procMount (container "app" must not set securityContext.procMount to "Unmasked")"#),
    );
    expect(
        &pod,
        "restricted",
        "v1.34",
        Some(concat!(
            r#"procMount (container "app" must not set securityContext.procMount to "Unmasked"), "#,
            r#"runAsNonRoot != true (pod or container "app" must set securityContext.runAsNonRoot=true), "#,
            r#"runAsUser=0 (pod must not set runAsUser=0)"#
        )),
    );
}

#[test]
fn windows_pods_skip_linux_only_restricted_checks_from_1_25() {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "win"},
        "spec": {"os": {"name": "windows"}, "securityContext": {"runAsNonRoot": true}, "containers": [{"name": "app", "image": "iis"}]}
    });
    expect(&pod, "restricted", "latest", None);
    expect(
        &pod,
        "restricted",
        "v1.24",
        Some(concat!(
            r#"allowPrivilegeEscalation != false (container "app" must set securityContext.allowPrivilegeEscalation=false), "#,
            r#"unrestricted capabilities (container "app" must set securityContext.capabilities.drop=["ALL"]), "#,
            r#"seccompProfile (pod or container "app" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#
        )),
    );
}

#[test]
fn workloads_are_checked_through_their_templates() {
    let template = |spec: Value| json!({"metadata": {"labels": {"app": "web"}}, "spec": spec});
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": template(json!({"containers": [{"name": "app", "image": "nginx", "securityContext": {"privileged": true}}]}))}
    });
    expect(
        &deployment,
        "baseline",
        "latest",
        Some(r#"privileged (container "app" must not set securityContext.privileged=true)"#),
    );

    let mut cron_pod = compliant();
    cron_pod["metadata"] = json!({"annotations": {"container.apparmor.security.beta.kubernetes.io/app": "unconfined"}});
    let cronjob = json!({
        "apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly"},
        "spec": {"schedule": "0 0 * * *", "jobTemplate": {"spec": {"template": {"metadata": cron_pod["metadata"], "spec": cron_pod["spec"]}}}}
    });
    expect(
        &cronjob,
        "restricted",
        "latest",
        Some(
            r#"forbidden AppArmor profile (annotation must not set AppArmor profile type to "container.apparmor.security.beta.kubernetes.io/app="unconfined"")"#,
        ),
    );
    let mut fixed = cronjob.clone();
    fixed["spec"]["jobTemplate"]["spec"]["template"]["metadata"] = json!({});
    expect(&fixed, "restricted", "latest", None);

    for kind in [
        "StatefulSet",
        "DaemonSet",
        "ReplicaSet",
        "ReplicationController",
        "Job",
    ] {
        let mut object = deployment.clone();
        object["kind"] = json!(kind);
        assert!(message(&object, "baseline", "latest").is_some(), "{kind}");
    }
    // Other kinds have no pod spec and are allowed.
    let cm =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}});
    expect(&cm, "restricted", "latest", None);
}

#[test]
fn exemptions_allow_with_an_audit_annotation() {
    let bad = tweak(compliant(), &[("/spec/hostPID", json!(true))]);
    let settings = |exemptions: Value| json!({"level": "baseline", "exemptions": exemptions});

    let verdict = run(
        &review("CREATE", bad.clone()),
        settings(json!({"namespaces": ["shop"]})),
    );
    assert!(verdict.allowed);
    assert_eq!(
        verdict.audit_annotations,
        vec![("exempt".to_string(), "namespace".to_string())]
    );

    let verdict = run(
        &review("CREATE", bad.clone()),
        settings(json!({"usernames": ["alice"]})),
    );
    assert!(verdict.allowed);
    assert_eq!(
        verdict.audit_annotations,
        vec![("exempt".to_string(), "user".to_string())]
    );

    let gvisor = tweak(bad.clone(), &[("/spec/runtimeClassName", json!("gvisor"))]);
    let verdict = run(
        &review("CREATE", gvisor),
        settings(json!({"runtimeClasses": ["gvisor"]})),
    );
    assert!(verdict.allowed);
    assert_eq!(
        verdict.audit_annotations,
        vec![("exempt".to_string(), "runtimeClass".to_string())]
    );

    // Not exempt: other namespace, user and runtime class.
    let verdict = run(
        &review("CREATE", bad),
        settings(
            json!({"namespaces": ["kube-system"], "usernames": ["bob"], "runtimeClasses": ["kata"]}),
        ),
    );
    assert_eq!(
        verdict.message.as_deref(),
        Some("violates PodSecurity \"baseline:latest\": host namespaces (hostPID=true)")
    );
    assert!(verdict.audit_annotations.is_empty());
}

#[test]
fn updates_that_change_nothing_checked_are_allowed() {
    let bad = tweak(compliant(), &[("/spec/hostNetwork", json!(true))]);
    let settings = json!({"level": "baseline"});
    let mut relabelled = bad.clone();
    relabelled["metadata"]["labels"] = json!({"app": "web", "tier": "front"});
    let mut request = review("UPDATE", relabelled.clone());
    request["oldObject"] = bad.clone();
    assert_eq!(run(&request, settings.clone()), Verdict::allow());

    // A new image is evaluated.
    let mut new_image = relabelled;
    new_image["spec"]["containers"][0]["image"] = json!("nginx:1.28");
    let mut request = review("UPDATE", new_image);
    request["oldObject"] = bad.clone();
    assert!(!run(&request, settings.clone()).allowed);

    // An UPDATE without oldObject is evaluated.
    assert!(!run(&review("UPDATE", bad.clone()), settings.clone()).allowed);

    // Workloads: scaling leaves the template alone; changing it is evaluated.
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"replicas": 1, "template": {"metadata": {}, "spec": bad["spec"]}}
    });
    let mut scaled = deployment.clone();
    scaled["spec"]["replicas"] = json!(5);
    let mut request = review("UPDATE", scaled.clone());
    request["oldObject"] = deployment.clone();
    assert_eq!(run(&request, settings.clone()), Verdict::allow());
    scaled["spec"]["template"]["metadata"] = json!({"labels": {"v": "2"}});
    let mut request = review("UPDATE", scaled);
    request["oldObject"] = deployment;
    assert!(!run(&request, settings).allowed);
}

#[test]
fn ephemeral_containers_subresource_is_evaluated_other_subresources_are_not() {
    let old = compliant();
    let mut new = old.clone();
    new["spec"]["ephemeralContainers"] =
        json!([{"name": "debugger", "image": "busybox", "targetContainerName": "app"}]);
    let mut request = review("UPDATE", new);
    request["oldObject"] = old;
    request["subResource"] = json!("ephemeralcontainers");
    let verdict = run(&request, json!({"level": "restricted"}));
    // Upstream names every kind of container `container "..."`.
    assert_eq!(
        verdict.message.as_deref(),
        Some(concat!(
            r#"violates PodSecurity "restricted:latest": "#,
            r#"allowPrivilegeEscalation != false (container "debugger" must set securityContext.allowPrivilegeEscalation=false), "#,
            r#"unrestricted capabilities (container "debugger" must set securityContext.capabilities.drop=["ALL"])"#
        ))
    );

    for sub in ["status", "exec", "binding", "eviction"] {
        let mut request = review(
            "UPDATE",
            tweak(compliant(), &[("/spec/hostPID", json!(true))]),
        );
        request["subResource"] = json!(sub);
        assert_eq!(
            run(&request, json!({"level": "baseline"})),
            Verdict::allow(),
            "{sub}"
        );
    }
}

#[test]
fn delete_and_connect_are_allowed() {
    let bad = tweak(compliant(), &[("/spec/hostPID", json!(true))]);
    for op in ["DELETE", "CONNECT"] {
        let mut request = review(op, bad.clone());
        if op == "DELETE" {
            request["oldObject"] = request["object"].take();
        }
        assert_eq!(
            run(&request, json!({"level": "restricted"})),
            Verdict::allow(),
            "{op}"
        );
    }
}

#[test]
fn settings_are_validated() {
    let check = |s: Value| testing::validate_settings::<PodSecurity>(&s);
    assert_eq!(check(json!({"level": "baseline"})), Ok(()));
    assert_eq!(
        check(json!({"level": "restricted", "version": "v1.25"})),
        Ok(())
    );
    assert_eq!(
        check(json!({"level": "restricted", "version": "v1.0"})),
        Ok(())
    );
    assert_eq!(
        check(json!({"level": "restricted", "version": "latest"})),
        Ok(())
    );
    assert_eq!(
        check(json!({})),
        Err("level is required: baseline or restricted".to_string())
    );
    let err = |s: Value| check(s).unwrap_err();
    assert!(
        err(json!({"level": "privileged"}))
            .contains("unknown variant `privileged`, expected `baseline` or `restricted`")
    );
    assert!(
        err(json!({"level": "baseline", "version": "v1.38"}))
            .contains("invalid version \"v1.38\": this module implements the standard up to v1.37")
    );
    for bad in ["1.25", "v1.025", "v2.0", "v1.", "v1.x", "Latest", "v1.-1"] {
        let e = err(json!({"level": "baseline", "version": bad}));
        assert!(
            e.contains(&format!(
                "invalid version {bad:?}: expected \"latest\" or \"v1.N\" with N from 0 to 37"
            )),
            "{bad}: {e}"
        );
    }
    assert!(err(json!({"level": "baseline", "levle": 1})).contains("unknown field `levle`"));
    assert!(
        err(json!({"level": "baseline", "exemptions": {"users": []}}))
            .contains("unknown field `users`")
    );
    assert_eq!(
        err(json!({"level": "baseline", "exemptions": {"runtimeClasses": [""]}})),
        "exemptions.runtimeClasses must not contain an empty string"
    );
}

#[test]
fn pinned_version_is_named_in_the_message() {
    let pod = tweak(compliant(), &[("/spec/hostIPC", json!(true))]);
    expect(
        &pod,
        "baseline",
        "v1.25",
        Some("host namespaces (hostIPC=true)"),
    );
}

#[test]
fn exclusions_name_real_checks_and_skip_only_what_they_say() {
    let refused = testing::validate_settings::<PodSecurity>(&json!({
        "level": "baseline", "exclude": [{"check": "Capabilities"}]
    }))
    .unwrap_err();
    assert!(
        refused.contains("exclude[0].check: \"Capabilities\" is not a check"),
        "{refused}"
    );
    assert!(refused.contains("capabilities_baseline"), "{refused}");

    let pod = tweak(
        compliant(),
        &[("/spec/containers/0/securityContext/privileged", json!(true))],
    );
    let settings = |exclude: Value| json!({"level": "baseline", "exclude": exclude});
    let denied = run(&review("CREATE", pod.clone()), settings(json!([])));
    assert!(!denied.allowed);
    // Excluded for every container.
    let all = run(
        &review("CREATE", pod.clone()),
        settings(json!([{"check": "privileged"}])),
    );
    assert!(all.allowed, "{:?}", all.message);
    // Excluded for another image only: still denied.
    let other = run(
        &review("CREATE", pod.clone()),
        settings(json!([{"check": "privileged", "images": ["registry.example.com/agent"]}])),
    );
    assert!(!other.allowed);
    // Another check excluded: still denied for privileged.
    let unrelated = run(
        &review("CREATE", pod),
        settings(json!([{"check": "hostPorts"}])),
    );
    assert!(!unrelated.allowed);
}
