//! `container-defaults` end to end.
