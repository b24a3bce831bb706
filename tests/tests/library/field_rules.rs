//! `field-rules` end to end.
