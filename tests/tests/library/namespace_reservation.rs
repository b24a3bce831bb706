//! `namespace-reservation` end to end.
