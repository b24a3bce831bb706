//! What is wrong with one container's image under the rules.

use portcullis_sdk::image::{DEFAULT_TAG, ImageRef};
use portcullis_sdk::pods::ContainerRef;

use crate::settings::Rules;

/// `container "app" image "nginx:latest": tag "latest" is blocked`, or
/// `None` when nothing about the image is blocked. A container without an
/// image has nothing to block (the API server rejects it anyway); an image
/// that does not parse is denied, since it cannot be shown not to be
/// blocked.
pub fn problem(container: &ContainerRef<'_>, rules: &Rules<'_>) -> Option<String> {
    let text = container.image().filter(|image| !image.is_empty())?;
    let who = format!(
        "{} {:?} image {text:?}",
        container.kind,
        container.name().unwrap_or("")
    );
    let image = match ImageRef::parse(text) {
        Ok(image) => image,
        Err(e) => {
            return Some(format!(
                "{who}: not a valid image reference ({})",
                e.reason()
            ));
        }
    };
    let reasons = reasons(&image, rules);
    (!reasons.is_empty()).then(|| format!("{who}: {}", reasons.join(", ")))
}

/// Every rule the image breaks, in the order digest, registry, tag.
fn reasons(image: &ImageRef, rules: &Rules<'_>) -> Vec<String> {
    let mut reasons = Vec::new();
    if let Some(digest) = image.digest() {
        // Digests in references may use upper-case hex; the settings are
        // lower case.
        let digest = digest.to_ascii_lowercase();
        if rules.digests.contains(&digest) {
            reasons.push(format!("digest {digest:?} is blocked"));
        }
    }
    for entry in &rules.registries {
        if entry.blocks(image.registry(), image.repository()) {
            reasons.push(format!("registry {:?} is blocked", entry.text));
        }
    }
    if image.tag_is_implicit() {
        if rules.untagged {
            reasons.push(format!(
                "untagged images are blocked (the tag is implicitly {DEFAULT_TAG:?})"
            ));
        }
    } else if let Some(tag) = image.tag() {
        // A written tag is blocked even when a digest pins the image: the
        // rule is about what the manifest says.
        if rules.tags.iter().any(|t| t == tag) {
            reasons.push(format!("tag {tag:?} is blocked"));
        }
    }
    reasons
}
