//! Fuzzing's regressions (HARDENING: fuzzing; `scripts/fuzz` runs the targets of `fuzz/`).
//!
//! Replays, through the very harness the libFuzzer targets drive (`fuzz/harness.rs`, included
//! here), the committed seed corpus (`fuzz/seeds/TARGET/`) and every input a fuzzer found to
//! crash (`tests/fuzz-crashes/TARGET/`, one file each, named after what it broke). So each
//! fixed crash stays fixed, and the harness stays compiled and linted with the crate. Quick:
//! a few seconds in a debug build.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::Path;
use tierwise::snapshot::Format;

/// Every file of `dir` (sorted; none when the folder does not exist).
fn inputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut v: Vec<_> = rd
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect();
    v.sort();
    v
}

/// Runs `f` on every seed and crash input of `target`; returns how many.
fn replay(target: &str, f: impl Fn(&[u8])) -> usize {
    let root = harness::repo_root();
    let mut n = 0;
    for dir in [root.join("fuzz/seeds").join(target), root.join("tests/fuzz-crashes").join(target)]
    {
        for (name, bytes) in inputs(&dir) {
            // A panic names the input it came from.
            if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&bytes))) {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("{target}: {}/{name}: {msg}", dir.display());
            }
            n += 1;
        }
    }
    n
}

#[test]
fn policy_load() {
    assert!(
        replay("policy_load", |d| {
            harness::policy_load(d);
        }) >= 7
    );
}

/// The policy seeds load (so the fuzzer starts from policies that reach evaluation and
/// their test cases, not from load errors).
#[test]
fn policy_seeds_load() {
    for (name, bytes) in inputs(&harness::repo_root().join("fuzz/seeds/policy_load")) {
        // `invalid-*` seeds are there for the load errors they reach.
        assert_eq!(harness::policy_load(&bytes), !name.starts_with("invalid-"), "{name}");
    }
}

#[test]
fn snapshot_json() {
    assert!(replay("snapshot_json", |d| harness::snapshot(d, Format::Json)) >= 3);
}

#[test]
fn snapshot_jsonl() {
    assert!(replay("snapshot_jsonl", |d| harness::snapshot(d, Format::Jsonl)) >= 2);
}

#[test]
fn snapshot_csv() {
    assert!(replay("snapshot_csv", |d| harness::snapshot(d, Format::Csv)) >= 3);
}

/// Both routes in one test: the harness's server runs on one current-thread runtime.
#[test]
fn http_bodies() {
    assert!(
        replay("http_evaluate", |d| {
            let _ = harness::http(d, harness::Route::Evaluate);
        }) >= 4
    );
    assert!(
        replay("http_dry_run", |d| {
            let _ = harness::http(d, harness::Route::DryRun);
        }) >= 4
    );
}

/// The HTTP seeds are answered 200: the fuzzers start from requests that reach the engine
/// (and, for dry runs, compile a candidate), not from ones refused at the door.
#[test]
fn http_seeds_reach_the_engine() {
    let root = harness::repo_root().join("fuzz/seeds");
    for (target, route) in
        [("http_evaluate", harness::Route::Evaluate), ("http_dry_run", harness::Route::DryRun)]
    {
        for (name, bytes) in inputs(&root.join(target)) {
            // `refused-*` seeds are there for the refusals they reach: a 4xx, never a 200.
            let status = harness::http(&bytes, route);
            if name.starts_with("refused-") {
                assert!(status.is_some_and(|s| s.is_client_error()), "{target}/{name}: {status:?}");
            } else {
                assert_eq!(status, Some(axum::http::StatusCode::OK), "{target}/{name}");
            }
        }
    }
}

/// The harness's own splitting: a policy-load input is policy.toml, then NUL-separated the
/// script and the test file.
#[test]
fn policy_inputs_split_on_nul() {
    let files = harness::policy_files(b"[policy]\0fn f() { 1 }\0[[case]]\0more");
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(names, ["policy.toml", "scripts/fuzz.rhai", "tests/fuzz.toml"]);
    assert_eq!(files["tests/fuzz.toml"], b"[[case]]\0more");
    assert_eq!(harness::policy_files(b"only").len(), 1);
}
