//! `blocked-images` end to end.
