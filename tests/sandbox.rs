//! Hostile scripts and inputs: every sandbox limit turns into that account's error within
//! milliseconds, the other accounts of the batch are decided, and nothing overflows a stack
//! (README "Scripts": the sandbox and its defaults).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};
use tierwise::engine::{self, Outcome};
use tierwise::policy::{self, LoadError};
use tierwise::script::Limits;

const POLICY: &str = r#"
[inputs]
mode = { type = "string" }

[score]
[[score.criteria]]
id = "risky"
weight = 1.0
script = "risky"

[[tiers]]
id = "key"
min_score = 5.0

[[tiers]]
id = "other"
"#;

const SCRIPT: &str = r#"
fn risky(account) {
    let mode = account.mode;
    if mode == "loop" { loop { } }
    if mode == "recurse" { return down(1); }
    if mode == "strings" { let s = "ab"; loop { s += s; } }
    if mode == "map" { let m = #{}; let i = 0; loop { m["k" + i] = i; i += 1; } }
    if mode == "array" { let a = []; loop { a.push(1); } }
    if mode == "nest" { let a = []; loop { a = [a]; } }
    if mode == "throw" { throw "boom"; }
    7.0
}

fn down(n) { down(n + 1) + 1 }
"#;

fn account(id: &str, mode: &str) -> serde_json::Value {
    json!({ "id": id, "as_of": "2026-11-01", "fields": { "mode": mode } })
}

fn code(o: &Outcome) -> Option<&'static str> {
    match o {
        Outcome::Error { error, .. } => Some(error.code),
        Outcome::Decision(_) => None,
    }
}

fn hostile_batch() -> Vec<tierwise::snapshot::Record> {
    records(&[
        account("ok-1", "fine"),
        account("loop", "loop"),
        account("recurse", "recurse"),
        account("strings", "strings"),
        account("ok-2", "fine"),
        account("map", "map"),
        account("array", "array"),
        account("nest", "nest"),
        account("throw", "throw"),
        account("ok-3", "fine"),
    ])
}

/// The codes each account may get: the first limit a runaway script meets stops it.
const EXPECTED: [(&str, &[&str]); 10] = [
    ("ok-1", &[]),
    ("loop", &["operation_limit"]),
    ("recurse", &["call_depth"]),
    ("strings", &["size_limit"]),
    ("ok-2", &[]),
    // `m[k] = v` is not checked against the map limit while the loop runs (see
    // `a_map_grown_by_index_assignment_is_stopped_at_1000_entries`): the operation limit stops it.
    ("map", &["size_limit", "operation_limit"]),
    ("array", &["size_limit"]),
    // rhai recomputes the nested size on each assignment: the clock stops it first.
    ("nest", &["size_limit", "time_limit"]),
    ("throw", &["script_error"]),
    ("ok-3", &[]),
];

fn check_hostile_batch(out: &[Outcome]) {
    assert_eq!(out.len(), EXPECTED.len());
    for (o, (id, codes)) in out.iter().zip(EXPECTED) {
        assert_eq!(o.id(), Some(id));
        match code(o) {
            None => assert!(codes.is_empty(), "`{id}` was decided, expected one of {codes:?}"),
            Some(c) => assert!(
                codes.contains(&c),
                "`{id}` failed with `{c}`, expected one of {codes:?}: {o:?}"
            ),
        }
    }
    for o in out {
        match o {
            Outcome::Decision(d) => {
                assert_eq!((d.score, &*d.tier), (7.0, "key"));
            }
            Outcome::Error { error, .. } => {
                assert_eq!(error.rule.as_deref(), Some("score.criteria.risky"), "{error:?}");
                let place = error.place.as_ref().expect("a sandbox error says where");
                assert!(
                    place.file == "scripts/risky.rhai" || place.file == "policy.toml",
                    "{place:?}"
                );
            }
        }
    }
}

/// A clock generous enough that the operation, depth and size limits are what stop each
/// script, whatever the machine's load (rhai checks an array's size on every push: O(n²)).
fn steady() -> Limits {
    Limits { time_per_account: Duration::from_millis(300), ..Limits::default() }
}

#[test]
fn every_limit_is_that_accounts_error_and_the_others_are_decided() {
    let p = load_inline_with(POLICY, &[("scripts/risky.rhai", SCRIPT)], &steady());
    let batch = hostile_batch();
    let t = Instant::now();
    let out = engine::evaluate(&p, &batch);
    let elapsed = t.elapsed();
    check_hostile_batch(&out);
    // `nest` runs into the 300 ms clock; everything else stops within milliseconds.
    assert!(elapsed < Duration::from_secs(1), "the hostile batch took {elapsed:?}");

    // The same at portfolio level: errors keep their slot and count in no figure.
    let r = engine::evaluate_portfolio(&p, &batch);
    check_hostile_batch(&r.accounts);
    assert_eq!((r.summary.account_count, r.summary.error_count), (3, 7));
}

#[test]
fn with_the_default_limits_every_hostile_account_fails_fast() {
    let p = load_inline(POLICY, &[("scripts/risky.rhai", SCRIPT)]);
    let batch = hostile_batch();
    let t = Instant::now();
    let out = engine::evaluate(&p, &batch);
    let elapsed = t.elapsed();
    assert!(elapsed < Duration::from_secs(1), "the hostile batch took {elapsed:?}");
    let sandbox = ["time_limit", "operation_limit", "call_depth", "size_limit", "script_error"];
    for (o, (id, codes)) in out.iter().zip(EXPECTED) {
        assert_eq!(o.id(), Some(id));
        match code(o) {
            None => assert!(codes.is_empty(), "`{id}` was decided"),
            Some(c) => assert!(!codes.is_empty() && sandbox.contains(&c), "`{id}`: {o:?}"),
        }
    }
}

#[test]
fn the_limits_hold_on_a_thread_with_a_2_mib_stack() {
    let p = load_inline_with(POLICY, &[("scripts/risky.rhai", SCRIPT)], &steady());
    let batch = hostile_batch();
    let out = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || engine::evaluate(&p, &batch))
        .unwrap()
        .join()
        .expect("no stack overflow or panic on a 2 MiB stack");
    check_hostile_batch(&out);
}

/// The sandbox defaults (README "Scripts"): "maps 1,000 entries". rhai checks the value assigned by
/// `m[k] = v`, not the map it lands in, so a map grown that way is bounded by the operation
/// limit (each insertion costs several operations), not by `max_map_size`: a loop meant to
/// build a million entries is stopped long before, and the account is that loop's error.
/// (A map *returned* or assigned whole over the limit gives `size_limit`.)
#[test]
fn a_map_grown_by_index_assignment_is_bounded_by_the_operation_limit() {
    let script = "fn risky(account) { let m = #{}; let i = 0; while i < 1000000 { m[\"k\" + i] = i; i += 1; } 7.0 }";
    // A generous clock, so the operation limit is what stops it even on a loaded machine
    // (debug builds are slow: 100,000 map inserts can take longer than the default 50 ms).
    let limits = Limits { time_per_account: Duration::from_secs(30), ..Limits::default() };
    let p = load_inline_with(POLICY, &[("scripts/risky.rhai", script)], &limits);
    let out = engine::evaluate(&p, &records(&[account("map", "map")]));
    assert_eq!(code(&out[0]), Some("operation_limit"), "{out:?}");
}

#[test]
fn without_an_operation_limit_the_wall_clock_stops_a_loop() {
    let limits = Limits { max_operations: 0, ..Limits::default() };
    let p = load_inline_with(POLICY, &[("scripts/risky.rhai", SCRIPT)], &limits);
    let batch = records(&[account("a", "fine"), account("loop", "loop"), account("b", "fine")]);
    let t = Instant::now();
    let out = engine::evaluate(&p, &batch);
    let elapsed = t.elapsed();
    assert_eq!(out.iter().map(code).collect::<Vec<_>>(), vec![None, Some("time_limit"), None]);
    assert!(elapsed >= Duration::from_millis(50), "stopped before its budget: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    let Outcome::Error { error, .. } = &out[1] else { unreachable!() };
    assert!(error.message.contains("50 ms"), "{}", error.message);
}

#[test]
fn limits_in_expressions_too() {
    // A `when` and an alert message that hit limits: only when evaluated, only that account.
    let text = r#"
[inputs]
n = { type = "integer" }

[score]
[[score.criteria]]
id = "n"
weight = 1.0
expr = "n.to_float()"

[[tiers]]
id = "key"
min_score = 5.0
when = 'if n == 6 { "x".pad(100000, "y") == "" } else { true }'

[[tiers]]
id = "other"

[[alerts]]
id = "big"
severity = "low"
when = "n == 7"
message = "{ if n == 7 { down(0) } else { 0 } }"
"#;
    let p = load_inline(text, &[("scripts/r.rhai", "fn down(x) { down(x + 1) }\n")]);
    let batch = records(&[
        json!({"id": "low", "as_of": "2026-01-01", "fields": {"n": 1}}),
        json!({"id": "six", "as_of": "2026-01-01", "fields": {"n": 6}}),
        json!({"id": "seven", "as_of": "2026-01-01", "fields": {"n": 7}}),
        json!({"id": "eight", "as_of": "2026-01-01", "fields": {"n": 8}}),
    ]);
    let out = engine::evaluate(&p, &batch);
    assert_eq!(
        out.iter().map(code).collect::<Vec<_>>(),
        vec![None, Some("size_limit"), Some("call_depth"), None]
    );
    let Outcome::Error { error, .. } = &out[1] else { unreachable!() };
    assert_eq!(error.rule.as_deref(), Some("tiers.key"));
    let Outcome::Error { error, .. } = &out[2] else { unreachable!() };
    assert_eq!(error.rule.as_deref(), Some("alerts.big"));
}

#[test]
fn a_json_snapshot_nested_100000_levels_is_an_error_not_a_crash() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let run = move || {
        // The whole input nested.
        // (serde_json reads the outer array; its one element is that record's error.)
        match tierwise::snapshot::read_json(&deep) {
            Err(_) => {}
            Ok(recs) => {
                assert_eq!(recs.len(), 1);
                assert_eq!(recs[0].as_ref().err().map(|e| e.code), Some("bad_record"));
            }
        }
        // One record's field nested: that record's error, the other read.
        let text = format!(
            r#"[{{"id":"deep","as_of":"2026-11-01","fields":{{"mode":{deep}}}}}, {{"id":"ok","as_of":"2026-11-01","fields":{{"mode":"fine"}}}}]"#
        );
        let r = tierwise::snapshot::read_json(&text);
        // Either the file is refused as a whole, or the deep record alone is an error.
        if let Ok(recs) = r {
            assert_eq!(recs.len(), 2);
            assert!(recs[0].is_err());
            assert!(recs[1].is_ok());
        }
        // JSON lines: the deep line is that line's error.
        let lines = format!("{{\"id\":\"ok\",\"as_of\":\"2026-11-01\",\"fields\":{{}}}}\n{deep}\n");
        let recs = tierwise::snapshot::read_jsonl(&lines);
        assert_eq!(recs.len(), 2);
        assert!(recs[0].is_ok());
        assert_eq!(recs[1].as_ref().err().map(|e| e.code), Some("bad_record"));
    };
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(run)
        .unwrap()
        .join()
        .expect("no crash on a 2 MiB stack");
}

fn load_err(text: String) -> tierwise::policy::Report {
    let run = move || {
        let (_tmp, dir) = write_policy("deep", &[("policy.toml", &text)]);
        match policy::load_dir(&dir, &Limits::default()) {
            Ok(_) => panic!("loaded"),
            Err(LoadError::Invalid(r)) => *r,
            Err(e) => panic!("read error: {e}"),
        }
    };
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(run)
        .unwrap()
        .join()
        .expect("no crash on a 2 MiB stack")
}

#[test]
fn a_deeply_nested_toml_policy_is_a_load_error_not_a_crash() {
    for n in [1_000, 100_000] {
        let text = format!("{POLICY}\n[extra]\nx = {}1{}\n", "[".repeat(n), "]".repeat(n));
        let r = load_err(text);
        assert!(r.errors().next().is_some(), "{r}");
        let text = format!("{POLICY}\n[extra]\nx = {}1{}\n", "{ a = ".repeat(n), " }".repeat(n));
        let r = load_err(text);
        assert!(r.errors().next().is_some(), "{r}");
    }
}

#[test]
fn deep_rhai_expressions_are_load_errors() {
    for n in [100, 10_000] {
        let expr = format!("{}1.0{}", "(".repeat(n), ")".repeat(n));
        let text = POLICY.replace("script = \"risky\"", &format!("expr = \"{expr}\""));
        let r = load_err(text);
        let d = r.errors().next().unwrap();
        assert_eq!(
            (d.code, d.place.rule.as_deref()),
            ("rhai_syntax", Some("score.criteria.risky")),
            "{r}"
        );
        assert!(d.message.contains("complexity") || d.message.contains("nest"), "{r}");
    }
    // Within the limit (64) an expression loads.
    let expr = format!("{}1.0{}", "(".repeat(30), ")".repeat(30));
    load_inline(&POLICY.replace("script = \"risky\"", &format!("expr = \"{expr}\"")), &[]);
    // A script file nested too deeply is refused with its file.
    let script =
        format!("fn risky(account) {{ {}1.0{} }}\n", "(".repeat(10_000), ")".repeat(10_000));
    let run = move || {
        let (_tmp, dir) =
            write_policy("deep", &[("policy.toml", POLICY), ("scripts/risky.rhai", &script)]);
        match policy::load_dir(&dir, &Limits::default()) {
            Ok(_) => panic!("loaded"),
            Err(LoadError::Invalid(r)) => *r,
            Err(e) => panic!("read error: {e}"),
        }
    };
    let r = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(run)
        .unwrap()
        .join()
        .expect("no crash");
    assert!(
        r.errors().any(|d| d.code == "rhai_syntax" && d.place.file == "scripts/risky.rhai"),
        "{r}"
    );
}

/// The contract: an error output carries "the place". For a runtime error inside a `script`
/// criterion the place should be in the script file (or at least the criterion), but the
/// script's line/column are added to the criterion's place in `policy.toml`: an error at
/// `scripts/r.rhai:5:25` is reported at `policy.toml:12:25`, a line that has nothing to do
/// with it. (`script::call` errors raised in the called function itself are not wrapped in
/// `ErrorInFunctionCall`, so `source_of` finds no source and `script_failure` treats the
/// position as relative to an inline expression.)
#[test]
fn a_runtime_error_in_a_script_points_into_the_script() {
    let text = POLICY.replace("mode = { type = \"string\" }", "n = { type = \"integer\" }");
    let script = "// line 1\n// line 2\nfn risky(account) {\n    let x = 1;\n    if account.n == 1 { throw \"boom\"; }\n    5.0\n}\n";
    let p = load_inline(&text, &[("scripts/risky.rhai", script)]);
    let out = engine::evaluate(
        &p,
        &records(&[json!({"id": "a", "as_of": "2026-01-01", "fields": {"n": 1}})]),
    );
    let Outcome::Error { error, .. } = &out[0] else { panic!("{out:?}") };
    let place = error.place.as_ref().unwrap();
    assert_eq!((place.file.as_str(), place.line), ("scripts/risky.rhai", 5), "{place:?}");
}

#[test]
fn a_large_batch_runs_in_parallel_with_each_error_in_its_place() {
    // 300 accounts (the engine goes parallel from 256): every third recurses without end,
    // every third doubles a string; on rayon's worker threads, in input order.
    let p = load_inline(POLICY, &[("scripts/risky.rhai", SCRIPT)]);
    let modes = ["fine", "recurse", "strings"];
    let accounts: Vec<serde_json::Value> =
        (0..300).map(|i| account(&format!("a{i:03}"), modes[i % 3])).collect();
    let recs = records(&accounts);
    let t = Instant::now();
    let out = engine::evaluate(&p, &recs);
    let r = engine::evaluate_portfolio(&p, &recs);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    for outs in [&out, &r.accounts] {
        assert_eq!(outs.len(), 300);
        for (i, o) in outs.iter().enumerate() {
            assert_eq!(o.id(), Some(format!("a{i:03}").as_str()));
            assert_eq!(code(o), [None, Some("call_depth"), Some("size_limit")][i % 3], "a{i:03}");
        }
    }
    assert_eq!((r.summary.account_count, r.summary.error_count), (100, 200));
}
