//! `tierwise test --coverage` (issue 6): which tiers, criteria, holds and alerts a policy's
//! own test cases never reach.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use tierwise::engine::testrun;

const POLICY: &str = r#"
[inputs]
revenue = { type = "number", min = 0.0 }
nps = { type = "integer", min = -100, max = 100, optional = true }
renewal_soon = { type = "bool", default = false }

[[score.criteria]]
id = "revenue"
weight = 2.0
steps = { input = "revenue", at = [100.0, 1000.0] }

[[score.criteria]]
id = "flat"
weight = 1.0
expr = "5.5"

[[tiers]]
id = "key"
min_score = 7.0

[[tiers]]
id = "growth"
min_score = 4.0

[[tiers]]
id = "managed"

[[movement.holds]]
id = "renewal"
when = "renewal_soon"
reason = "renewal"

[[movement.holds]]
id = "never_tested"
when = "revenue > 5000000.0"
reason = "giant"

[[alerts]]
id = "detractor"
severity = "high"
when = "nps != () && nps < 0"
message = "NPS {nps}"

[[alerts]]
id = "silent"
severity = "low"
when = "nps == ()"
message = "no NPS"

[[portfolio.alerts]]
id = "big_book"
severity = "info"
when = "account_count > 100"
message = "{account_count} accounts"
"#;

const CASES: &str = r#"
[[case]]
name = "a big account is key"
account = { id = "a", as_of = "2026-11-01", fields = { revenue = 5000.0, nps = 10 } }
expect = { tier = "key" }

[[case]]
name = "a small one is managed and held before its renewal"
account = { id = "b", as_of = "2026-11-01", current_tier = "key", fields = { revenue = 10.0, nps = -5, renewal_soon = true } }
expect = { tier = "key", change = "hold", alerts = ["detractor"] }
"#;

#[test]
fn coverage_names_what_no_case_reaches() {
    let p = load_inline(POLICY, &[("tests/cases.toml", CASES)]);
    assert!(testrun::run_cases(&p).iter().all(|r| r.passed()));
    let c = testrun::coverage(&p);
    let missed = |list: &[testrun::Reach]| {
        list.iter().filter(|r| !r.reached()).map(|r| r.id.clone()).collect::<Vec<_>>()
    };
    assert_eq!(c.decisions, 2);
    assert_eq!(missed(&c.tiers), ["growth", "managed"]);
    assert_eq!(
        missed(&c.criteria),
        ["flat"],
        "a criterion that always scores 5.5 is never seen changing anything"
    );
    assert_eq!(missed(&c.holds), ["never_tested"]);
    assert_eq!(missed(&c.alerts), ["silent"]);
    assert_eq!(missed(&c.portfolio_alerts), ["big_book"]);
    assert!(!c.complete());
}

#[test]
fn test_coverage_through_the_binary() {
    let (_tmp, dir) =
        write_policy("covered", &[("policy.toml", POLICY), ("tests/cases.toml", CASES)]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tierwise"))
        .args(["test", "--coverage"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "coverage gaps are a report, not a failure");
    let text = String::from_utf8_lossy(&out.stdout);
    let report: Vec<&str> =
        text.lines().skip_while(|l| !l.starts_with("coverage")).take(6).collect();
    insta::assert_snapshot!(report.join("\n"), @r"
    coverage (2 decisions):
      tiers             1/3  no case ends in: growth, managed
      criteria          1/2  always the same score: flat (5.5)
      holds             1/2  never applied: never_tested
      alerts            1/2  never raised: silent
      portfolio alerts  0/1  never raised: big_book
    ");
}

#[test]
fn the_shipped_policies_cases_reach_every_rule() {
    for name in ["enterprise", "mid-market"] {
        let c = testrun::coverage(&shipped(name));
        assert!(c.complete(), "{name}: {c:?}");
    }
}
