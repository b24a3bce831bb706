//! `pod-security` end to end.
