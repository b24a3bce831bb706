//! `Review::parse` on arbitrary bodies, then everything the host does with
//! a review that parses (see `portcullis_fuzz::review_parse`).
//!
//! Inputs that show a host bug already reported are skipped, so that a run
//! looks for new ones; `FUZZ_KNOWN_BUGS=panic` reports them as crashes
//! (`FUZZ_KNOWN_BUGS=2`: only finding 2).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    portcullis_fuzz::review_parse_with(data, portcullis_fuzz::known_from_env())
});
