//! `Review::parse` on arbitrary bodies, then everything the host does with
//! a review that parses (see `portcullis_fuzz::review_parse`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| portcullis_fuzz::review_parse(data));
