//! `Review::parse` on arbitrary bodies, then everything the host does with
//! a review that parses (see `portcullis_fuzz_checks::review_parse`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| portcullis_fuzz_checks::review_parse(data));
