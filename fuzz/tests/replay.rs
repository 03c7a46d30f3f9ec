//! Replays every committed corpus file through its target on stable, so a
//! plain `cargo test --manifest-path fuzz/Cargo.toml` catches regressions
//! without libFuzzer.
//!
//! `corpus/<target>/` holds seeds, inputs the fuzzer found interesting and
//! regression cases for bugs fixed; all of them must pass. Inputs that still
//! fail because of an open bug live in `regressions/<target>/` and are
//! replayed only by the ignored test below.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

/// Runs every file under `<root>/<target>/`; returns the failures.
fn replay(root: &str) -> (usize, Vec<String>) {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join(root);
    let mut n = 0;
    let mut failures = Vec::new();
    for &(name, target) in admit_fuzz::TARGETS {
        for file in files(&base.join(name)) {
            let data = std::fs::read(&file).expect("corpus file readable");
            n += 1;
            if catch_unwind(AssertUnwindSafe(|| target(&data))).is_err() {
                failures.push(format!("{name}: {}", file.display()));
            }
        }
    }
    (n, failures)
}

#[test]
fn corpus_replays_clean() {
    let (n, failures) = replay("corpus");
    assert!(
        failures.is_empty(),
        "{} of {n} corpus inputs fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
    for &(name, _) in admit_fuzz::TARGETS {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(name);
        assert!(!files(&dir).is_empty(), "no corpus for {name}");
    }
}

/// Open bugs: each input here fails today. Run with `--ignored` to check
/// whether one has been fixed (then move it to `corpus/`).
#[test]
#[ignore]
fn open_regressions_still_fail() {
    let (n, failures) = replay("regressions");
    eprintln!("{} of {n} open regression inputs fail", failures.len());
    assert_eq!(
        failures.len(),
        n,
        "some regressions pass now: move them to corpus/"
    );
}

#[test]
fn empty_and_tiny_inputs() {
    for &(_, target) in admit_fuzz::TARGETS {
        target(b"");
        for b in 0..=255u8 {
            target(&[b]);
            target(&[b, b]);
        }
    }
}
