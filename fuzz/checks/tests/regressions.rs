//! Replays every input kept under `regressions/<target>/` through the
//! target's checks: a crash the fuzzer found once stays fixed.

use std::fs;
use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../regressions")
        .join(target);
    // A missing folder is a broken checkout, not "no regressions".
    let entries = fs::read_dir(&dir).unwrap_or_else(|err| panic!("{}: {err}", dir.display()));
    let mut inputs: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "md"))
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{}: no inputs to replay", dir.display());
    for input in inputs {
        let data = fs::read(&input).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
        eprintln!("replaying {}", input.display());
        check(&data);
    }
}

#[test]
fn review_parse_regressions() {
    replay("review_parse", portcullis_fuzz_checks::review_parse);
}

#[test]
fn patch_build_regressions() {
    replay("patch_build", portcullis_fuzz_checks::patch_build);
}
