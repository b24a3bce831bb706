//! `image-digests` end to end.
