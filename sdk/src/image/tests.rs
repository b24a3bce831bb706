use super::*;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn normalization_table() {
    let table: &[(&str, &str, &str, Option<&str>, bool)] = &[
        // reference, registry, repository, tag, tag implicit
        ("nginx", "docker.io", "library/nginx", Some("latest"), true),
        (
            "nginx:1.27",
            "docker.io",
            "library/nginx",
            Some("1.27"),
            false,
        ),
        (
            "nginx:latest",
            "docker.io",
            "library/nginx",
            Some("latest"),
            false,
        ),
        (
            "library/nginx",
            "docker.io",
            "library/nginx",
            Some("latest"),
            true,
        ),
        (
            "docker.io/nginx",
            "docker.io",
            "library/nginx",
            Some("latest"),
            true,
        ),
        (
            "docker.io/library/nginx:1.27",
            "docker.io",
            "library/nginx",
            Some("1.27"),
            false,
        ),
        (
            "index.docker.io/nginx",
            "docker.io",
            "library/nginx",
            Some("latest"),
            true,
        ),
        // Host names are case-insensitive: a policy must not be bypassed
        // by writing the registry in capitals.
        ("EVIL.IO/x:1", "evil.io", "x", Some("1"), false),
        (
            "registry-1.docker.io/library/nginx:1.27",
            "docker.io",
            "library/nginx",
            Some("1.27"),
            false,
        ),
        (
            "bitnami/redis:7.2",
            "docker.io",
            "bitnami/redis",
            Some("7.2"),
            false,
        ),
        (
            "registry.k8s.io/pause:3.10",
            "registry.k8s.io",
            "pause",
            Some("3.10"),
            false,
        ),
        ("ghcr.io/a/b:1", "ghcr.io", "a/b", Some("1"), false),
        (
            "quay.io/prometheus/node-exporter:v1.8.2",
            "quay.io",
            "prometheus/node-exporter",
            Some("v1.8.2"),
            false,
        ),
        (
            "localhost:5000/x",
            "localhost:5000",
            "x",
            Some("latest"),
            true,
        ),
        ("localhost/x", "localhost", "x", Some("latest"), true),
        ("[::1]:5000/app:v1", "[::1]:5000", "app", Some("v1"), false),
        (
            "my-registry.local:8443/team/app_name__x:1.0-rc.1",
            "my-registry.local:8443",
            "team/app_name__x",
            Some("1.0-rc.1"),
            false,
        ),
        (
            "gcr.io/distroless/static-debian12:nonroot",
            "gcr.io",
            "distroless/static-debian12",
            Some("nonroot"),
            false,
        ),
        ("a---b/c.d:_x", "docker.io", "a---b/c.d", Some("_x"), false),
    ];
    for &(reference, registry, repository, tag, implicit) in table {
        let image = ImageRef::parse(reference).unwrap_or_else(|e| panic!("{reference}: {e}"));
        assert_eq!(image.registry(), registry, "{reference}");
        assert_eq!(image.repository(), repository, "{reference}");
        assert_eq!(image.tag(), tag, "{reference}");
        assert_eq!(image.tag_is_implicit(), implicit, "{reference}");
        assert_eq!(image.digest(), None, "{reference}");
    }
}

#[test]
fn display_is_the_full_normalized_reference() {
    let table = [
        ("nginx", "docker.io/library/nginx:latest".to_string()),
        ("evil.io/x:1", "evil.io/x:1".to_string()),
        ("busybox", "docker.io/library/busybox:latest".to_string()),
        ("localhost:5000/x", "localhost:5000/x:latest".to_string()),
        (
            &*format!("ghcr.io/a/b:1@{DIGEST}"),
            format!("ghcr.io/a/b:1@{DIGEST}"),
        ),
        (
            &*format!("nginx@{DIGEST}"),
            format!("docker.io/library/nginx@{DIGEST}"),
        ),
    ];
    for (reference, expected) in table {
        assert_eq!(ImageRef::parse(reference).unwrap().to_string(), expected);
    }
}

#[test]
fn digests() {
    let image = ImageRef::parse(&format!("ghcr.io/a/b:1@{DIGEST}")).unwrap();
    assert_eq!(image.tag(), Some("1"));
    assert_eq!(image.digest(), Some(DIGEST));
    let image = ImageRef::parse(&format!("ghcr.io/a/b@{DIGEST}")).unwrap();
    assert_eq!(image.tag(), None, "no latest when a digest pins the image");
    assert!(!image.tag_is_implicit());
    assert_eq!(image.name(), "ghcr.io/a/b");
}

#[test]
fn invalid_references() {
    let table = [
        ("", "empty reference"),
        ("Nginx", "repository name must be lowercase"),
        ("ghcr.io/Acme/app", "repository name must be lowercase"),
        ("nginx:", "invalid tag"),
        ("nginx:-x", "invalid tag"),
        (":1.0", "empty repository name"),
        ("ghcr.io/", "empty repository name"),
        ("a//b", "invalid repository name"),
        ("a/-b", "invalid repository name"),
        ("a/b.", "invalid repository name"),
        ("a/b___c", "invalid repository name"),
        ("a b", "invalid repository name"),
        ("nginx@sha256:abc", "invalid digest"),
        ("nginx@sha256", "invalid digest"),
        ("nginx@", "invalid digest"),
        ("foo:bar/baz", "invalid registry port"),
        ("localhost:/x", "invalid registry port"),
        ("-bad.io/x", "invalid registry host"),
        ("bad..io/x", "invalid registry host"),
        ("[zz]:5000/x", "invalid registry host"),
        ("ghcr.io/acme/*", "invalid repository name"),
        (
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "a 64-character hexadecimal string is an image id, not a reference",
        ),
    ];
    for (reference, reason) in table {
        let err = ImageRef::parse(reference).expect_err(reference);
        assert_eq!(err.reason(), reason, "{reference}");
    }
    let long_tag = format!("nginx:{}", "a".repeat(129));
    assert_eq!(
        ImageRef::parse(&long_tag).unwrap_err().reason(),
        "invalid tag"
    );
    let long_name = format!("ghcr.io/{}", "a".repeat(250));
    assert_eq!(
        ImageRef::parse(&long_name).unwrap_err().reason(),
        "name longer than 255 characters"
    );
}

#[test]
fn error_display_names_the_reference() {
    let err = ImageRef::parse("Nginx").unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"invalid image reference "Nginx": repository name must be lowercase"#
    );
}

#[test]
fn globs_are_normalized_like_images() {
    let p = ImageRef::parse_glob("ghcr.io/acme/*").unwrap();
    assert_eq!(
        (p.registry(), p.repository(), p.tag_is_implicit()),
        ("ghcr.io", "acme/*", true)
    );
    let p = ImageRef::parse_glob("nginx:1.*").unwrap();
    assert_eq!(
        (p.registry(), p.repository(), p.tag()),
        ("docker.io", "library/nginx", Some("1.*"))
    );
    let p = ImageRef::parse_glob("*.gcr.io/team/app").unwrap();
    assert_eq!(p.registry(), "*.gcr.io");
    assert!(ImageRef::parse_glob("Acme/*").is_err());
    assert!(ImageRef::parse_glob("x@sha256:*").is_err());
}

#[test]
fn registry_detection() {
    assert!(is_registry("ghcr.io"));
    assert!(is_registry("localhost"));
    assert!(is_registry("localhost:5000"));
    assert!(is_registry("host:5000"));
    assert!(!is_registry("library"));
    assert!(!is_registry("bitnami"));
    assert_eq!(split_registry("nginx"), ("docker.io", "nginx"));
    assert_eq!(split_registry("acme/app"), ("docker.io", "acme/app"));
    assert_eq!(
        split_registry("index.docker.io/acme/app"),
        ("index.docker.io", "acme/app")
    );
    assert_eq!(normalize_registry("index.docker.io"), "docker.io");
    assert_eq!(normalize_registry("Registry-1.Docker.IO"), "docker.io");
    assert_eq!(normalize_registry("EVIL.io:5000"), "evil.io:5000");
    assert_eq!(registry_host("evil.io:5000"), "evil.io");
    assert_eq!(registry_host("[::1]:5000"), "[::1]");
    assert_eq!(registry_host("quay.io"), "quay.io");
    assert_eq!(
        split_registry("registry.k8s.io/pause"),
        ("registry.k8s.io", "pause")
    );
}

#[test]
fn from_str_parses() {
    let image: ImageRef = "nginx".parse().unwrap();
    assert_eq!(image.name(), "docker.io/library/nginx");
}
