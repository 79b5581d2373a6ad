//! `tierwise check` warnings (issue 6): rules that load but cannot do what they say — a tier
//! no account reaches, thresholds not descending, capacity that cannot be met, a zero
//! weight, a hold that never applies. Warnings never stop a load.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

const LINTED: &str = r#"
[inputs]
revenue = { type = "number", min = 0.0 }
relationship = { type = "string", one_of = ["tactical", "strategic"] }
flagged = { type = "bool", optional = true }
fit = { type = "integer", min = 1, max = 5 }

[[score.criteria]]
id = "revenue"
weight = 1.0
steps = { input = "revenue", at = [100.0, 1000.0] }

[[score.criteria]]
id = "unused"
weight = 0.0
expr = "5.0"

[[tiers]]
id = "platinum"
min_score = 11.0

[[tiers]]
id = "strategic"
min_score = 8.0
when = 'relationship == "partner" && fit >= 1'

[[tiers]]
id = "gold"
min_score = 5.0
when = 'relationship == "strategic" || fit > 4'

[[tiers]]
id = "silver"
min_score = 4.0

[[tiers]]
id = "bronze"
min_score = 4.5
max_count = 0

[[tiers]]
id = "rest"

[[movement.holds]]
id = "never"
when = "flagged == true && flagged == false"
reason = "impossible"

[[movement.holds]]
id = "big"
when = "revenue > 1000000.0"
reason = "cannot be judged without a solver: no warning"

[capacity]
tiers = ["platinum", "strategic", "gold"]
per_manager = { min = 5, max = 25 }
total_max = 3
"#;

#[test]
fn every_lint_warning_of_a_policy_is_listed_and_the_policy_still_loads() {
    let p = load_inline(LINTED, &[]);
    let text: Vec<String> = p.warnings.iter().map(|w| w.to_string()).collect();
    insta::assert_snapshot!(text.join("\n"));
}

#[test]
fn the_shipped_policies_have_no_warnings() {
    for name in ["enterprise", "mid-market"] {
        let p = shipped(name);
        assert!(p.warnings.is_empty(), "{name}: {:?}", p.warnings);
    }
}

#[test]
fn a_condition_that_some_value_meets_is_not_flagged() {
    let ok = LINTED
        .replace("\"partner\"", "\"strategic\"")
        .replace("flagged == true && flagged == false", "flagged == true");
    let p = load_inline(&ok, &[]);
    assert!(!p.warnings.iter().any(|w| w.code == "hold_never_applies"), "{:?}", p.warnings);
    assert!(!p.warnings.iter().any(|w| w.message.contains("`strategic`")), "{:?}", p.warnings);
}

#[test]
fn check_prints_warnings_and_still_exits_0() {
    let (_tmp, dir) = write_policy("linted", &[("policy.toml", LINTED)]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tierwise"))
        .arg("check")
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning[capacity_unmeetable]"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok "));
}
