//! Replays every input kept under `regressions/<target>/` through the
//! target's checks: a crash the fuzzer found once stays fixed.

use std::fs;
use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("regressions")
        .join(target);
    let Ok(entries) = fs::read_dir(&dir) else {
        return;
    };
    let mut inputs: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "md"))
        .collect();
    inputs.sort();
    for input in inputs {
        let data = fs::read(&input).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
        eprintln!("replaying {}", input.display());
        check(&data);
    }
}

#[test]
fn review_parse_regressions() {
    replay("review_parse", portcullis_fuzz::review_parse);
}

#[test]
fn patch_build_regressions() {
    replay("patch_build", portcullis_fuzz::patch_build);
}
