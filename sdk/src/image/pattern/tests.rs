use super::*;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const OTHER_DIGEST: &str =
    "sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

fn allows(pattern: &str, image: &str) -> bool {
    let pattern = ImagePattern::parse(pattern).unwrap_or_else(|e| panic!("{e}"));
    let image = ImageRef::parse(image).unwrap_or_else(|e| panic!("{e}"));
    pattern.matches(&image)
}

#[test]
fn prefixes_match_at_path_boundaries() {
    assert!(allows("registry.k8s.io/", "registry.k8s.io/pause:3.10"));
    assert!(allows(
        "registry.k8s.io/",
        "registry.k8s.io/kube-apiserver/x:v1.36.2"
    ));
    assert!(!allows(
        "registry.k8s.io/",
        "registry.k8s.io.evil.com/pause"
    ));
    assert!(!allows(
        "registry.k8s.io/",
        "docker.io/registry.k8s.io/pause"
    ));
    assert!(allows("ghcr.io/acme/", "ghcr.io/acme/app:1"));
    assert!(allows(
        "ghcr.io/acme/",
        &format!("ghcr.io/acme/team/app@{DIGEST}")
    ));
    assert!(!allows("ghcr.io/acme/", "ghcr.io/acmecorp/app"));
    assert!(!allows("ghcr.io/acme/", "ghcr.io/acme"));
    assert!(allows("localhost:5000/", "localhost:5000/x"));
    assert!(!allows("localhost:5000/", "localhost:5001/x"));
    assert!(allows("index.docker.io/", "nginx"));
    assert!(allows("docker.io/", "bitnami/redis"));
    assert!(allows("library/", "busybox"));
    assert!(!allows("library/", "bitnami/redis"));
    assert!(allows("bitnami/", "bitnami/redis:7.2"));
    assert!(!allows("bitnami/", "ghcr.io/bitnami/redis"));
}

#[test]
fn names_allow_any_tag_or_digest() {
    for pattern in [
        "nginx",
        "library/nginx",
        "docker.io/library/nginx",
        "index.docker.io/nginx",
    ] {
        for image in [
            "nginx",
            "nginx:1.27",
            "docker.io/library/nginx:1.27-alpine",
            &format!("nginx@{DIGEST}"),
        ] {
            assert!(allows(pattern, image), "{pattern} {image}");
        }
        assert!(!allows(pattern, "nginx-unprivileged"), "{pattern}");
        assert!(!allows(pattern, "bitnami/nginx"), "{pattern}");
        assert!(!allows(pattern, "ghcr.io/library/nginx"), "{pattern}");
    }
}

#[test]
fn tags_match_exactly() {
    assert!(allows("nginx:1.27", "nginx:1.27"));
    assert!(allows("nginx:1.27", "docker.io/library/nginx:1.27"));
    assert!(allows("nginx:1.27", &format!("nginx:1.27@{DIGEST}")));
    assert!(!allows("nginx:1.27", "nginx:1.27.1"));
    assert!(!allows("nginx:1.27", "nginx"));
    assert!(!allows("nginx:1.27", &format!("nginx@{DIGEST}")));
    assert!(allows("nginx:latest", "nginx"));
}

#[test]
fn digests_match_exactly() {
    let pattern = format!("ghcr.io/a/b@{DIGEST}");
    assert!(allows(&pattern, &format!("ghcr.io/a/b@{DIGEST}")));
    assert!(allows(&pattern, &format!("ghcr.io/a/b:1@{DIGEST}")));
    assert!(!allows(&pattern, &format!("ghcr.io/a/b@{OTHER_DIGEST}")));
    assert!(!allows(&pattern, "ghcr.io/a/b:1"));
    assert!(!allows(&pattern, &format!("ghcr.io/a/c@{DIGEST}")));
}

#[test]
fn globs() {
    assert!(allows("ghcr.io/acme/*", "ghcr.io/acme/app:1"));
    assert!(allows("ghcr.io/acme/*", "ghcr.io/acme/team/app"));
    assert!(!allows("ghcr.io/acme/*", "ghcr.io/other/app"));
    assert!(allows(
        "*.gcr.io/distroless/*",
        "eu.gcr.io/distroless/static:nonroot"
    ));
    assert!(!allows("*.gcr.io/distroless/*", "gcr.io/distroless/static"));
    // A `*` in the registry stays in the registry: another registry's path
    // that spells the trusted one is not the trusted registry.
    for image in [
        "attacker.example/eu.gcr.io/distroless/x",
        "evil.io/x.gcr.io/distroless/static",
        "eu.gcr.io.evil.io/distroless/static",
    ] {
        assert!(!allows("*.gcr.io/distroless/*", image), "{image}");
    }
    assert!(!allows("ghcr.io*/acme/*", "ghcr.io.evil.io/x/acme/app"));
    assert!(allows("nginx:1.*", "nginx:1.27"));
    assert!(!allows("nginx:1.*", "nginx:2.0"));
    assert!(!allows("nginx:1.*", "nginx"));
    assert!(allows("nginx*", "nginx-unprivileged"));
    for image in [
        "nginx",
        "evil.io/x:1",
        "localhost:5000/x",
        &format!("a/b@{DIGEST}"),
    ] {
        assert!(allows("*", image), "{image}");
    }
}

#[test]
fn invalid_patterns() {
    let table = [
        ("", "invalid image pattern \"\": empty reference"),
        (
            "Nginx",
            "invalid image pattern \"Nginx\": repository name must be lowercase",
        ),
        ("nginx:", "invalid image pattern \"nginx:\": invalid tag"),
        (
            "nginx@sha256:abc",
            "invalid image pattern \"nginx@sha256:abc\": invalid digest",
        ),
        ("/", "invalid image pattern \"/\": invalid repository name"),
        (
            "ghcr.io/acme:1/",
            "invalid image pattern \"ghcr.io/acme:1/\": invalid tag",
        ),
        (
            "ghcr.io//",
            "invalid image pattern \"ghcr.io//\": invalid repository name",
        ),
    ];
    for (text, message) in table {
        assert_eq!(
            ImagePattern::parse(text),
            Err(message.to_string()),
            "{text}"
        );
    }
}

#[test]
fn display_is_the_text_as_written() {
    assert_eq!(ImagePattern::parse("nginx").unwrap().to_string(), "nginx");
    assert_eq!(
        ImagePattern::parse("registry.k8s.io/").unwrap().to_string(),
        "registry.k8s.io/"
    );
}
