//! The baseline checks, one per upstream `check_<id>.go`, with the same
//! reasons, details and version behaviour.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{Check, Violation};
use crate::pod::{
    PodView, containers_phrase, go_quote, join_quote, name, pluralize, security_context, set,
    string,
};
use crate::settings::Level;

const fn baseline(id: &'static str, since: u32, run: super::CheckFn) -> Check {
    Check {
        id,
        level: Level::Baseline,
        since,
        overrides: &[],
        run,
    }
}

/// `"pod" and "containers ..."` setter lists as upstream joins them.
pub(super) fn setters(pod: bool, containers: &[&str]) -> Vec<String> {
    let mut setters = Vec::new();
    if pod {
        setters.push("pod".to_string());
    }
    if !containers.is_empty() {
        setters.push(containers_phrase(containers));
    }
    setters
}

// --- appArmorProfile (1.0; the fields since the API has them) ---

pub const APP_ARMOR_PROFILE: Check = baseline("appArmorProfile", 0, app_armor_profile);

const APPARMOR_ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";

fn app_armor_profile(pod: &PodView<'_>, _: u32) -> Option<Violation> {
    let allowed_type = |t: &str| t == "RuntimeDefault" || t == "Localhost";
    let profile_type =
        |sc: &Value| set(sc, "appArmorProfile").map(|p| string(p, "type").to_string());
    let mut bad_values = BTreeSet::new();
    let mut bad_pod = false;
    if let Some(t) = pod.security_context().and_then(profile_type)
        && !allowed_type(&t)
    {
        bad_pod = true;
        bad_values.insert(t);
    }
    let mut bad_containers = Vec::new();
    for c in pod.containers() {
        if let Some(t) = security_context(c).and_then(profile_type)
            && !allowed_type(&t)
        {
            bad_containers.push(name(c));
            bad_values.insert(t);
        }
    }
    let mut bad_setters = setters(bad_pod, &bad_containers);

    let allowed_annotation =
        |v: &str| v.is_empty() || v == "runtime/default" || v.starts_with("localhost/");
    let mut annotations: Vec<String> = pod
        .annotations()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with(APPARMOR_ANNOTATION_PREFIX))
        .filter_map(|(k, v)| {
            let v = v.as_str().unwrap_or("");
            (!allowed_annotation(v)).then(|| format!("{k}={}", go_quote(v)))
        })
        .collect();
    let mut bad_list: Vec<String> = bad_values.into_iter().collect();
    if !annotations.is_empty() {
        annotations.sort();
        bad_setters.push(pluralize("annotation", "annotations", annotations.len()).to_string());
        bad_list.extend(annotations);
    }
    if bad_setters.is_empty() {
        return None;
    }
    Some(Violation::new(
        pluralize(
            "forbidden AppArmor profile",
            "forbidden AppArmor profiles",
            bad_list.len(),
        ),
        format!(
            "{} must not set AppArmor profile type to {}",
            bad_setters.join(" and "),
            join_quote(&bad_list)
        ),
    ))
}

// --- capabilities_baseline (1.0) ---

pub const CAPABILITIES: Check = baseline("capabilities_baseline", 0, capabilities);

const DEFAULT_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// The `capabilities.add` entries of a container.
pub(super) fn added_capabilities(container: &Value) -> Option<Vec<&str>> {
    let caps = set(security_context(container)?, "capabilities")?;
    Some(
        caps.get("add")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| c.as_str().unwrap_or(""))
            .collect(),
    )
}

fn capabilities(pod: &PodView<'_>, _: u32) -> Option<Violation> {
    let mut bad_containers = Vec::new();
    let mut non_default = BTreeSet::new();
    for c in pod.containers() {
        let bad: Vec<&str> = added_capabilities(c)
            .unwrap_or_default()
            .into_iter()
            .filter(|cap| !DEFAULT_CAPABILITIES.contains(cap))
            .collect();
        if !bad.is_empty() {
            bad_containers.push(name(c));
            non_default.extend(bad);
        }
    }
    if bad_containers.is_empty() {
        return None;
    }
    let caps: Vec<&str> = non_default.into_iter().collect();
    Some(Violation::new(
        "non-default capabilities",
        format!(
            "{} must not include {} in securityContext.capabilities.add",
            containers_phrase(&bad_containers),
            join_quote(&caps)
        ),
    ))
}

// --- hostNamespaces (1.0) ---

pub const HOST_NAMESPACES: Check = baseline("hostNamespaces", 0, host_namespaces);

fn host_namespaces(pod: &PodView<'_>, _: u32) -> Option<Violation> {
    let forbidden: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
        .into_iter()
        .filter(|field| pod.flag(field))
        .map(|field| format!("{field}=true"))
        .collect();
    (!forbidden.is_empty()).then(|| Violation::new("host namespaces", forbidden.join(", ")))
}

// --- hostPathVolumes (1.0) ---

pub const HOST_PATH_VOLUMES: Check = baseline("hostPathVolumes", 0, host_path_volumes);

fn host_path_volumes(pod: &PodView<'_>, _: u32) -> Option<Violation> {
    let volumes: Vec<&str> = pod
        .volumes()
        .into_iter()
        .filter(|v| set(v, "hostPath").is_some())
        .map(name)
        .collect();
    (!volumes.is_empty()).then(|| {
        Violation::new(
            "hostPath volumes",
            format!(
                "{} {}",
                pluralize("volume", "volumes", volumes.len()),
                join_quote(&volumes)
            ),
        )
    })
}

// --- hostPorts (1.0) ---

pub const HOST_PORTS: Check = baseline("hostPorts", 0, host_ports);

fn host_ports(pod: &PodView<'_>, _: u32) -> Option<Violation> {
    let mut bad_containers = Vec::new();
    // Upstream keeps the ports as strings in a set: sorted as text.
    let mut ports = BTreeSet::new();
    for c in pod.containers() {
        let mut valid = true;
        for port in c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            match port.get("hostPort").and_then(Value::as_i64) {
                Some(0) | None => {}
                Some(p) => {
                    valid = false;
                    ports.insert(p.to_string());
                }
            }
        }
        if !valid {
            bad_containers.push(name(c));
        }
    }
    if bad_containers.is_empty() {
        return None;
    }
    let ports: Vec<String> = ports.into_iter().collect();
    Some(Violation::new(
        "hostPort",
        format!(
            "{} {} {} {}",
            containers_phrase(&bad_containers),
            pluralize("uses", "use", bad_containers.len()),
            pluralize("hostPort", "hostPorts", ports.len()),
            ports.join(", ")
        ),
    ))
}

// --- hostProbesAndHostLifecycle (1.34) ---

pub const HOST_PROBES_AND_HOST_LIFECYCLE: Check = baseline(
    "hostProbesAndHostLifecycle",
    34,
    host_probes_and_host_lifecycle,
);

fn host_probes_and_host_lifecycle(pod: &PodView<'_>, _: u32) -> Option<Violation> {
    // Both are sets upstream, so names and hosts come out sorted and unique.
    let mut bad_containers = BTreeSet::new();
    let mut hosts = BTreeSet::new();
    let handler_hosts = |handler: Option<&Value>| -> Vec<String> {
        let Some(handler) = handler.filter(|h| !h.is_null()) else {
            return Vec::new();
        };
        ["httpGet", "tcpSocket"]
            .into_iter()
            .filter_map(|kind| set(handler, kind))
            .map(|action| string(action, "host").to_string())
            .filter(|host| !host.is_empty())
            .collect()
    };
    for c in pod.containers() {
        let lifecycle = set(c, "lifecycle");
        let handlers = [
            c.get("livenessProbe"),
            c.get("readinessProbe"),
            c.get("startupProbe"),
            lifecycle.and_then(|l| l.get("postStart")),
            lifecycle.and_then(|l| l.get("preStop")),
        ];
        for handler in handlers {
            let found = handler_hosts(handler);
            if !found.is_empty() {
                bad_containers.insert(name(c));
                hosts.extend(found);
            }
        }
    }
    if bad_containers.is_empty() {
        return None;
    }
    let names: Vec<&str> = bad_containers.into_iter().collect();
    let hosts: Vec<String> = hosts.into_iter().collect();
    Some(Violation::new(
        "probe or lifecycle host",
        format!(
            "{} {} {} {}",
            containers_phrase(&names),
            pluralize("uses", "use", names.len()),
            pluralize(
                "probe or lifecycle host",
                "probe or lifecycle hosts",
                hosts.len()
            ),
            join_quote(&hosts)
        ),
    ))
}

// --- privileged (1.0) ---

pub const PRIVILEGED: Check = baseline("privileged", 0, privileged);

fn privileged(pod: &PodView<'_>, _: u32) -> Option<Violation> {
    let bad: Vec<&str> = pod
        .containers()
        .into_iter()
        .filter(|c| {
            security_context(c).and_then(|sc| sc.get("privileged")?.as_bool()) == Some(true)
        })
        .map(name)
        .collect();
    (!bad.is_empty()).then(|| {
        Violation::new(
            "privileged",
            format!(
                "{} must not set securityContext.privileged=true",
                containers_phrase(&bad)
            ),
        )
    })
}

// --- procMount (1.0; relaxed for user-namespace pods from 1.35) ---

pub const PROC_MOUNT: Check = baseline("procMount", 0, proc_mount);

fn proc_mount(pod: &PodView<'_>, minor: u32) -> Option<Violation> {
    if minor >= 35 && pod.in_user_namespace() {
        return None;
    }
    proc_mount_strict(pod)
}

/// Upstream's `procMount_1_0`, also the whole of `procMount_restricted`.
pub(super) fn proc_mount_strict(pod: &PodView<'_>) -> Option<Violation> {
    let mut bad_containers = Vec::new();
    let mut types = BTreeSet::new();
    for c in pod.containers() {
        let Some(pm) = security_context(c).and_then(|sc| set(sc, "procMount")) else {
            continue;
        };
        let pm = pm.as_str().unwrap_or("");
        if pm != "Default" {
            bad_containers.push(name(c));
            types.insert(pm);
        }
    }
    if bad_containers.is_empty() {
        return None;
    }
    let types: Vec<&str> = types.into_iter().collect();
    Some(Violation::new(
        "procMount",
        format!(
            "{} must not set securityContext.procMount to {}",
            containers_phrase(&bad_containers),
            join_quote(&types)
        ),
    ))
}

// --- seLinuxOptions (1.0; container_engine_t allowed from 1.31) ---

pub const SE_LINUX_OPTIONS: Check = baseline("seLinuxOptions", 0, se_linux_options);

fn se_linux_options(pod: &PodView<'_>, minor: u32) -> Option<Violation> {
    let mut allowed = vec!["", "container_t", "container_init_t", "container_kvm_t"];
    if minor >= 31 {
        allowed.push("container_engine_t");
    }
    let mut bad_types = BTreeSet::new();
    let (mut set_user, mut set_role) = (false, false);
    let mut valid = |opts: &Value| {
        let mut ok = true;
        let t = string(opts, "type");
        if !allowed.contains(&t) {
            ok = false;
            bad_types.insert(t.to_string());
        }
        if !string(opts, "user").is_empty() {
            ok = false;
            set_user = true;
        }
        if !string(opts, "role").is_empty() {
            ok = false;
            set_role = true;
        }
        ok
    };
    let bad_pod = pod
        .security_context()
        .and_then(|sc| set(sc, "seLinuxOptions"))
        .is_some_and(|opts| !valid(opts));
    let mut bad_containers = Vec::new();
    for c in pod.containers() {
        if let Some(opts) = security_context(c).and_then(|sc| set(sc, "seLinuxOptions"))
            && !valid(opts)
        {
            bad_containers.push(name(c));
        }
    }
    let bad_setters = setters(bad_pod, &bad_containers);
    if bad_setters.is_empty() {
        return None;
    }
    let mut bad_data = Vec::new();
    if !bad_types.is_empty() {
        let types: Vec<String> = bad_types.into_iter().collect();
        bad_data.push(format!(
            "{} {}",
            pluralize("type", "types", types.len()),
            join_quote(&types)
        ));
    }
    if set_user {
        bad_data.push("user may not be set".to_string());
    }
    if set_role {
        bad_data.push("role may not be set".to_string());
    }
    Some(Violation::new(
        "seLinuxOptions",
        format!(
            "{} set forbidden securityContext.seLinuxOptions: {}",
            bad_setters.join(" and "),
            bad_data.join("; ")
        ),
    ))
}

// --- seccompProfile_baseline (annotations before 1.19, fields from 1.19) ---

pub const SECCOMP_PROFILE: Check = baseline("seccompProfile_baseline", 0, seccomp_profile);

const SECCOMP_POD_ANNOTATION: &str = "seccomp.security.alpha.kubernetes.io/pod";
const SECCOMP_CONTAINER_ANNOTATION_PREFIX: &str = "container.seccomp.security.alpha.kubernetes.io/";

/// A seccomp profile type the standard accepts.
pub(super) fn valid_seccomp(t: &str) -> bool {
    t == "RuntimeDefault" || t == "Localhost"
}

/// The `seccompProfile.type` of a security context whose `seccompProfile`
/// is set (`""` when the type is missing, as Go's zero value).
pub(super) fn seccomp_type(sc: &Value) -> Option<&str> {
    set(sc, "seccompProfile").map(|p| string(p, "type"))
}

fn seccomp_profile(pod: &PodView<'_>, minor: u32) -> Option<Violation> {
    if minor < 19 {
        seccomp_annotations(pod)
    } else {
        seccomp_fields(pod)
    }
}

fn seccomp_annotations(pod: &PodView<'_>) -> Option<Violation> {
    let valid =
        |v: &str| v == "runtime/default" || v == "docker/default" || v.starts_with("localhost/");
    let annotation = |key: &str| -> Option<String> {
        let value = pod.annotations()?.get(key)?;
        let value = value.as_str().unwrap_or("");
        (!valid(value)).then(|| format!("{key}={}", go_quote(value)))
    };
    let mut forbidden = BTreeSet::new();
    forbidden.extend(annotation(SECCOMP_POD_ANNOTATION));
    for c in pod.containers() {
        forbidden.extend(annotation(&format!(
            "{SECCOMP_CONTAINER_ANNOTATION_PREFIX}{}",
            name(c)
        )));
    }
    if forbidden.is_empty() {
        return None;
    }
    let list: Vec<String> = forbidden.into_iter().collect();
    Some(Violation::new(
        "seccompProfile",
        format!(
            "forbidden {} {}",
            pluralize("annotation", "annotations", list.len()),
            list.join(", ")
        ),
    ))
}

fn seccomp_fields(pod: &PodView<'_>) -> Option<Violation> {
    let mut bad_values = BTreeSet::new();
    let mut bad_pod = false;
    if let Some(t) = pod.security_context().and_then(seccomp_type)
        && !valid_seccomp(t)
    {
        bad_pod = true;
        bad_values.insert(t);
    }
    let mut bad_containers = Vec::new();
    for c in pod.containers() {
        if let Some(t) = security_context(c).and_then(seccomp_type)
            && !valid_seccomp(t)
        {
            bad_containers.push(name(c));
            bad_values.insert(t);
        }
    }
    let bad_setters = setters(bad_pod, &bad_containers);
    if bad_setters.is_empty() {
        return None;
    }
    let values: Vec<&str> = bad_values.into_iter().collect();
    Some(Violation::new(
        "seccompProfile",
        format!(
            "{} must not set securityContext.seccompProfile.type to {}",
            bad_setters.join(" and "),
            join_quote(&values)
        ),
    ))
}

// --- sysctls (sets of 1.0, 1.27, 1.29, 1.32, 1.37) ---

pub const SYSCTLS: Check = baseline("sysctls", 0, sysctls);

/// Each set adds to the previous one from its version on.
const SAFE_SYSCTLS: &[(u32, &[&str])] = &[
    (
        0,
        &[
            "kernel.shm_rmid_forced",
            "net.ipv4.ip_local_port_range",
            "net.ipv4.tcp_syncookies",
            "net.ipv4.ping_group_range",
            "net.ipv4.ip_unprivileged_port_start",
        ],
    ),
    (27, &["net.ipv4.ip_local_reserved_ports"]),
    (
        29,
        &[
            "net.ipv4.tcp_keepalive_time",
            "net.ipv4.tcp_fin_timeout",
            "net.ipv4.tcp_keepalive_intvl",
            "net.ipv4.tcp_keepalive_probes",
        ],
    ),
    (32, &["net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"]),
    (
        37,
        &[
            "net.ipv4.tcp_slow_start_after_idle",
            "net.ipv4.tcp_notsent_lowat",
        ],
    ),
];

/// Whether `name` is a safe sysctl at policy minor `minor`.
pub fn safe_sysctl(name: &str, minor: u32) -> bool {
    SAFE_SYSCTLS
        .iter()
        .filter(|(since, _)| *since <= minor)
        .any(|(_, names)| names.contains(&name))
}

fn sysctls(pod: &PodView<'_>, minor: u32) -> Option<Violation> {
    let forbidden: Vec<&str> = pod
        .security_context()
        .and_then(|sc| sc.get("sysctls"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|s| string(s, "name"))
        .filter(|n| !safe_sysctl(n, minor))
        .collect();
    (!forbidden.is_empty()).then(|| Violation::new("forbidden sysctls", forbidden.join(", ")))
}

// --- windowsHostProcess (1.0) ---

pub const WINDOWS_HOST_PROCESS: Check = baseline("windowsHostProcess", 0, windows_host_process);

fn windows_host_process(pod: &PodView<'_>, _: u32) -> Option<Violation> {
    let host_process = |sc: &Value| {
        set(sc, "windowsOptions").and_then(|w| w.get("hostProcess")?.as_bool()) == Some(true)
    };
    let bad_containers: Vec<&str> = pod
        .containers()
        .into_iter()
        .filter(|c| security_context(c).is_some_and(host_process))
        .map(name)
        .collect();
    let bad_pod = pod.security_context().is_some_and(host_process);
    let bad_setters = setters(bad_pod, &bad_containers);
    (!bad_setters.is_empty()).then(|| {
        Violation::new(
            "hostProcess",
            format!(
                "{} must not set securityContext.windowsOptions.hostProcess=true",
                bad_setters.join(" and ")
            ),
        )
    })
}
