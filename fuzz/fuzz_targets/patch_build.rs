//! Two JSON documents separated by a NUL byte: the object before and after
//! a mutation. The host's patch (`json_patch::diff`) must turn one into the
//! other (see `portcullis_fuzz_checks::patch_build`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| portcullis_fuzz_checks::patch_build(data));
