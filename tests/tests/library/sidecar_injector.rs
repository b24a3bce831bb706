//! `sidecar-injector` end to end.
