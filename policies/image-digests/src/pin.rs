//! What to do with one container's image.

use portcullis_sdk::pods::ContainerRef;

use crate::settings::Digests;

/// The outcome for one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    /// Nothing to do.
    Keep,
    /// Replace the image with this reference.
    Rewrite(String),
    /// Already pinned, to a digest other than the configured one: kept
    /// (a digest is a deliberate choice), with this warning.
    Mismatch(String),
    /// Cannot be pinned, for this reason (a denial if `denyUnpinned`).
    Unpinned(String),
}

/// Decides for `container`. The new reference is the image as written
/// with `@<digest>` appended: the tag stays visible to people reading the
/// spec, the user's spelling of the name is kept, and the runtime pulls by
/// the digest alone.
pub fn pin(container: &ContainerRef<'_>, digests: &Digests) -> Pin {
    let who = container.describe();
    let image = match container.image_ref() {
        Ok(image) => image,
        Err(problem) => return Pin::Unpinned(problem),
    };
    let text = container.image().unwrap_or_default();
    let tagged = match image.tag() {
        Some(tag) => format!("{}:{tag}", image.name()),
        None => image.name(),
    };
    let configured = image.tag().and_then(|_| digests.get(&tagged));
    match (image.digest(), configured) {
        (Some(digest), Some(configured)) if digest != configured => Pin::Mismatch(format!(
            "{who} pins image {text:?} to a digest other than the {configured} configured for {tagged}; left as written"
        )),
        (Some(_), _) => Pin::Keep,
        (None, Some(configured)) => Pin::Rewrite(format!("{text}@{configured}")),
        (None, None) => Pin::Unpinned(format!(
            "{who} uses image {text:?} ({tagged}), which is not pinned by digest and has no digest configured in images"
        )),
    }
}
