//! `*` wildcards: enough pattern syntax for image and name allow-lists,
//! without pulling a regex engine into every module.

/// Whether `text` matches `pattern`, where `*` matches any run of
/// characters (including `/` and none at all) and everything else matches
/// itself.
pub fn matches(pattern: &str, text: &str) -> bool {
    let (pattern, text) = (pattern.as_bytes(), text.as_bytes());
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and the text position it currently absorbs up
    // to: on a mismatch, let that `*` absorb one more byte and retry.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    star = Some((star_p, star_t + 1));
                    p = star_p + 1;
                    t = star_t + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn literal() {
        assert!(matches(
            "docker.io/library/nginx",
            "docker.io/library/nginx"
        ));
        assert!(!matches(
            "docker.io/library/nginx",
            "docker.io/library/nginx2"
        ));
        assert!(!matches(
            "docker.io/library/nginx",
            "docker.io/library/ngin"
        ));
        assert!(matches("", ""));
        assert!(!matches("", "a"));
    }

    #[test]
    fn stars() {
        assert!(matches("*", ""));
        assert!(matches("*", "anything/at/all"));
        assert!(matches("ghcr.io/acme/*", "ghcr.io/acme/app"));
        assert!(matches("ghcr.io/acme/*", "ghcr.io/acme/team/app"));
        assert!(!matches("ghcr.io/acme/*", "ghcr.io/acme"));
        assert!(!matches("ghcr.io/acme/*", "ghcr.io/acmecorp/app"));
        assert!(matches("*.gcr.io/x", "eu.gcr.io/x"));
        assert!(matches("ghcr.io/*/app-*", "ghcr.io/acme/app-api"));
        assert!(matches("a*b*c", "aXbYbZc"));
        assert!(!matches("a*b*c", "aXbYbZ"));
        assert!(matches("1.*", "1.27"));
        assert!(!matches("1.*", "11.2"));
        assert!(matches("**", "x"));
    }
}
