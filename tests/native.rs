//! The native fast path (src/script/native.rs) against rhai itself: the same policy loaded
//! with `Limits::native` on and off must give byte-identical outcomes, errors included.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::result_large_err)]

mod common;

#[path = "../examples/gen_portfolio.rs"]
#[allow(dead_code)]
mod gen_portfolio;

use proptest::prelude::*;
use serde_json::json;
use tierwise::engine;
use tierwise::policy::{self, Policy};
use tierwise::script::Limits;

fn load(dir: &std::path::Path, native: bool) -> Policy {
    match policy::load_dir(dir, &Limits { native, ..Limits::default() }) {
        Ok(p) => p,
        Err(e) => panic!("{} did not load: {e}", dir.display()),
    }
}

fn outcomes(p: &Policy, recs: &[tierwise::snapshot::Record]) -> (String, String) {
    let acc = serde_json::to_string(&engine::evaluate(p, recs)).unwrap();
    let port = serde_json::to_string(&engine::evaluate_portfolio(p, recs)).unwrap();
    (acc, port)
}

#[test]
fn shipped_policies_run_natively_and_agree_with_rhai() {
    let text = gen_portfolio::jsonl(600, gen_portfolio::SEED);
    let recs = tierwise::snapshot::read_jsonl(&text);
    for name in ["enterprise", "mid-market"] {
        let dir = common::root().join("policies").join(name);
        let fast = load(&dir, true);
        let slow = load(&dir, false);
        // Every expression of the shipped policies is in the subset: a change that pushes one
        // out is a speed regression worth seeing.
        let rhai_only: Vec<_> = fast.native_coverage().into_iter().filter(|(_, _, n)| !n).collect();
        assert!(rhai_only.is_empty(), "{name}: not native: {rhai_only:?}");
        assert!(slow.native_coverage().iter().all(|(_, _, n)| !n));
        if name == "enterprise" {
            let (a, b) = (outcomes(&fast, &recs), outcomes(&slow, &recs));
            assert_eq!(a.0, b.0, "{name}: account level differs");
            assert_eq!(a.1, b.1, "{name}: portfolio level differs");
        }
    }
}

/// Every construct of the subset, on inputs of every type, printed through alert messages (so
/// results are compared as rhai displays them) and used as conditions and criteria.
const EXPRS: &[&str] = &[
    "a + b",
    "a - b",
    "a * b",
    "a / b",
    "a % b",
    "-a",
    "a + i",
    "i * b",
    "b - j",
    "i + j",
    "i - j",
    "i * j",
    "i / j",
    "i % j",
    "-i",
    "-j",
    "a == b",
    "a != b",
    "a < b",
    "a <= b",
    "a > b",
    "a >= b",
    "i == j",
    "i != j",
    "i < j",
    "i >= j",
    "a == i",
    "b < j",
    "b >= j",
    "s == t",
    "s != t",
    "s < t",
    "t >= s",
    "s == ()",
    "i == ()",
    "a != ()",
    "() == ()",
    "f == true",
    "f != ()",
    "i == s",
    "t < 3",
    "a > 1.0 && i > 0",
    "a > 1.0 || f",
    "f && i > 0",
    "!f",
    "!(b > 0.0)",
    "switch s { \"x\" => 1, \"y\" => 2.5, _ => \"other\" }",
    "switch s { \"x\" => i, \"z\" => b * 2.0 }",
    "days_since(d)",
    "days_until(d)",
    "days_since(d) > 30",
    "round(a)",
    "round(b * 10.0) / 10.0",
    "floor(b)",
    "ceiling(b)",
    "abs(i)",
    "abs(a)",
    "abs(b)",
    "min(i, j)",
    "max(i, j)",
    "min(a, b)",
    "max(b, 2.5)",
    "max(i, b)",
    "j.to_float()",
    "to_float(i)",
    "(j - 1).to_float() * 2.25",
    "b.to_float()",
    "a ?? b",
    "s ?? \"none\"",
    "i ?? j ?? 0",
    "`${t}-${j}-${b}`",
    "`${a}`",
    "`${s}`",
    "t + t",
    "t + s",
    "s + t",
    "score",
    "tier",
    "score * 2.0 >= 5.0",
    "tier == \"hi\"",
    "pick(i, j)",
    "pick(b, j)",
    "pick(a, 1)",
    "label(t, b)",
    "label(s, i)",
    "if a == () { \"none\" } else { a * 2.0 }",
];

const SCRIPT: &str = r#"
fn pick(x, y) {
    let z = x + y;
    if z > 10 { return z * 2; }
    let z = z - 1;
    z
}
fn label(x, n) {
    if x == () { "-" } else { `${x}:${n}` }
}
fn crit(account) {
    let v = account.b;
    let w = if account.a == () { 1.0 } else { account.a };
    if account.f == true { v / w } else { switch account.s { "x" => 3, "y" => 4.5, _ => v } }
}
"#;

/// One policy per expression (and its use as a condition), so an expression that fails for
/// an account fails only its own comparison.
fn policy_files(k: usize, e: &str) -> Vec<(String, String)> {
    let mut toml = String::from(
        r#"[policy]
description = "every native construct"
[inputs]
a = { type = "number", optional = true }
b = { type = "number" }
i = { type = "integer", optional = true }
j = { type = "integer" }
s = { type = "string", one_of = ["x", "y", "z"], optional = true }
t = { type = "string" }
f = { type = "bool", optional = true }
d = { type = "date", optional = true }
[score]
scale = { min = -1000000.0, max = 1000000.0 }
[[score.criteria]]
id = "b"
weight = 1.0
expr = "b"
[[score.criteria]]
id = "script"
weight = 1.0
script = "crit"
[[score.criteria]]
id = "mix"
weight = 2.0
expr = "if i == () { b } else { b + (i % 7).to_float() }"
[[tiers]]
id = "hi"
min_score = 10.0
when = "s != \"z\""
[[tiers]]
id = "lo"
"#,
    );
    let lit = toml::Value::String(format!("{{{e}}}")).to_string();
    toml.push_str(&format!(
        "[[alerts]]\nid = \"e{k}\"\nseverity = \"info\"\nwhen = \"true\"\nmessage = {lit}\n"
    ));
    let lit = toml::Value::String(format!("{e} == true")).to_string();
    toml.push_str(&format!(
        "[[alerts]]\nid = \"c{k}\"\nseverity = \"info\"\nwhen = {lit}\nmessage = \"c\"\n"
    ));
    vec![("policy.toml".into(), toml), ("scripts/s.rhai".into(), SCRIPT.into())]
}

/// (native, rhai) per expression.
fn policies() -> Vec<(Policy, Policy)> {
    EXPRS
        .iter()
        .enumerate()
        .map(|(k, e)| {
            let files = policy_files(k, e);
            let refs: Vec<(&str, &str)> =
                files.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            let (_tmp, dir) = common::write_policy("native", &refs);
            (load(&dir, true), load(&dir, false))
        })
        .collect()
}

#[test]
fn every_test_expression_is_native() {
    for (fast, _) in policies() {
        let rhai_only: Vec<_> = fast.native_coverage().into_iter().filter(|(_, _, n)| !n).collect();
        assert!(rhai_only.is_empty(), "not native: {rhai_only:?}");
    }
}

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        Just(-0.0),
        Just(1.0),
        Just(0.1),
        Just(0.3),
        Just(2.5),
        Just(10.0),
        Just(1e15),
        Just(-3.5),
        Just(1e-310),
        Just(1.7e308),
        -1e6..1e6f64,
        -5.0..5.0f64,
    ]
}

fn int() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(-1),
        Just(7),
        Just(11),
        Just(i64::MAX),
        Just(i64::MIN),
        Just(i64::MIN + 1),
        -20..20i64,
        any::<i64>()
    ]
}

fn account() -> impl Strategy<Value = serde_json::Value> {
    (
        proptest::option::of(float()),
        float(),
        proptest::option::of(int()),
        int(),
        proptest::option::of(prop_oneof![Just("x"), Just("y"), Just("z")]),
        prop_oneof![Just(""), Just("x"), Just("y"), Just("zz"), Just("é")],
        proptest::option::of(any::<bool>()),
        proptest::option::of(prop_oneof![
            Just("2026-11-01"),
            Just("2020-02-29"),
            Just("2027-01-15"),
            Just("1999-12-31")
        ]),
        proptest::option::of(prop_oneof![Just("hi"), Just("lo")]),
    )
        .prop_map(|(a, b, i, j, s, t, f, d, cur)| {
            json!({ "id": "x", "as_of": "2026-11-01", "current_tier": cur,
                    "fields": { "a": a, "b": b, "i": i, "j": j, "s": s, "t": t, "f": f, "d": d } })
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, ..ProptestConfig::default() })]
    #[test]
    fn native_and_rhai_agree(accounts in proptest::collection::vec(account(), 1..4)) {
        thread_local! {
            static P: Vec<(Policy, Policy)> = policies();
        }
        let accounts: Vec<serde_json::Value> = accounts.into_iter().enumerate().map(|(k, mut a)| {
            a["id"] = json!(format!("acc-{k}"));
            a
        }).collect();
        let recs = common::records(&accounts);
        P.with(|ps| {
            for (k, (fast, slow)) in ps.iter().enumerate() {
                let a = serde_json::to_string_pretty(&engine::evaluate(fast, &recs)).unwrap();
                let b = serde_json::to_string_pretty(&engine::evaluate(slow, &recs)).unwrap();
                prop_assert_eq!(a, b, "expression `{}`", EXPRS[k]);
            }
            Ok(())
        })?;
    }
}

#[test]
fn the_cli_switch_rules_the_fast_path_out_and_changes_no_byte() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("accounts.jsonl");
    std::fs::write(&file, gen_portfolio::jsonl(300, gen_portfolio::SEED)).unwrap();
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tierwise"))
            .args([
                "eval",
                "--policy",
                "policies/enterprise",
                "--portfolio",
                "--format",
                "jsonl",
                "--accounts",
            ])
            .arg(&file)
            .args(extra)
            .current_dir(common::root())
            .output()
            .unwrap();
        out.stdout
    };
    let fast = run(&[]);
    assert!(fast.len() > 10_000);
    assert_eq!(fast, run(&["--no-native"]));
}
