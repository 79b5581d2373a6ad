//! The policy semantics (docs/policy-reference.md, docs/caps.md), one focused case each, on tiny inline
//! policies whose score is an input (`expr = "x"`) so every number can be checked by hand.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{Value, json};
use tierwise::engine::{self, Change, Decision, Load, Outcome, PortfolioResult};
use tierwise::policy::Policy;
use tierwise::snapshot::Record;

const AS_OF: &str = "2026-11-01";

/// An account snapshot under construction.
#[derive(Clone)]
struct A(Value);

impl A {
    fn new(id: &str, x: f64) -> A {
        A(json!({ "id": id, "as_of": AS_OF, "fields": { "x": x } }))
    }
    fn cur(mut self, tier: &str) -> A {
        self.0["current_tier"] = json!(tier);
        self
    }
    fn since(mut self, day: &str) -> A {
        self.0["tier_since"] = json!(day);
        self
    }
    fn mgr(mut self, m: &str) -> A {
        self.0["manager"] = json!(m);
        self
    }
    fn f(mut self, k: &str, v: impl Into<Value>) -> A {
        self.0["fields"][k] = v.into();
        self
    }
}

fn recs(accounts: &[A]) -> Vec<Record> {
    records(&accounts.iter().map(|a| a.0.clone()).collect::<Vec<_>>())
}

fn one(p: &Policy, a: A) -> Decision {
    match engine::evaluate(p, &recs(&[a])).remove(0) {
        Outcome::Decision(d) => *d,
        Outcome::Error { error, .. } => panic!("expected a decision, got {error:?}"),
    }
}

fn one_err(p: &Policy, a: A) -> tierwise::snapshot::AccountError {
    match engine::evaluate(p, &recs(&[a])).remove(0) {
        Outcome::Decision(d) => panic!("expected an error, got {d:?}"),
        Outcome::Error { error, .. } => error,
    }
}

fn book(p: &Policy, accounts: &[A]) -> PortfolioResult {
    engine::evaluate_portfolio(p, &recs(accounts))
}

fn dec<'a>(r: &'a PortfolioResult, id: &str) -> &'a Decision {
    r.accounts
        .iter()
        .find_map(|o| o.decision().filter(|d| d.id == id))
        .unwrap_or_else(|| panic!("no decision for `{id}`"))
}

fn tier_of<'a>(r: &'a PortfolioResult, id: &str) -> &'a str {
    &dec(r, id).tier
}

fn codes(d: &Decision) -> Vec<&'static str> {
    d.reasons.iter().map(|r| r.code).collect()
}

/// Three tiers on the default 1..10 scale; the score is `x`. `rest` is appended.
fn three(rest: &str) -> Policy {
    load_inline(
        &format!(
            "{HEAD}\n[[tiers]]\nid = \"gold\"\nmin_score = 8.0\n\n[[tiers]]\nid = \"silver\"\nmin_score = 5.0\n\n[[tiers]]\nid = \"bronze\"\n\n{rest}"
        ),
        &[],
    )
}

const HEAD: &str = r#"
[inputs]
x = { type = "number" }
ok = { type = "bool", default = true }
flag = { type = "bool", default = false }
rev = { type = "number", optional = true }
name = { type = "string", optional = true }
n = { type = "integer", default = 7 }

[score]
[[score.criteria]]
id = "x"
weight = 1.0
expr = "x"
"#;

// --- scoring -------------------------------------------------------------------------------

#[test]
fn steps_score_lo_plus_span_times_n_over_k() {
    let p = load_inline(
        r#"
[inputs]
v = { type = "number" }
i = { type = "integer", default = 0 }

[score]
scale = { min = 0, max = 100 }

[[score.criteria]]
id = "v"
weight = 1.0
steps = { input = "v", at = [10.0, 20.0, 30.0] }

[[score.criteria]]
id = "i"
weight = 0.0
steps = { input = "i", at = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0] }

[[tiers]]
id = "only"
"#,
        &[],
    );
    assert!(p.warnings.iter().any(|w| w.code == "zero_weight"), "a zero weight is a lint warning");
    let run = |v: f64, i: Option<i64>| {
        let mut a = json!({"id": "a", "as_of": AS_OF, "fields": {"v": v}});
        if let Some(i) = i {
            a["fields"]["i"] = json!(i);
        }
        let out = engine::evaluate(&p, &records(&[a])).remove(0);
        let d = out.decision().unwrap().clone();
        (d.scores[0].score, d.scores[1].score, d.score)
    };
    // n = how many cut points are <= the value; k = 3; lo + (hi - lo) * n / k.
    for (v, n) in [
        (-5.0, 0.0),
        (9.999, 0.0),
        (10.0, 1.0),
        (19.0, 1.0),
        (20.0, 2.0),
        (29.99, 2.0),
        (30.0, 3.0),
        (1e12, 3.0),
    ] {
        let want = 0.0 + (100.0 - 0.0) * n / 3.0;
        let (s, _, total) = run(v, None);
        assert_eq!(s, want, "v = {v}");
        assert_eq!(total, want, "weight 0 of the other criterion leaves the score to `v`");
    }
    assert_eq!(run(10.0, None).0, 100.0 / 3.0);
    // k = 9 on an integer input with a default: n cut points -> 100 * n / 9; absent -> default 0.
    assert_eq!(run(0.0, None).1, 0.0);
    assert_eq!(run(0.0, Some(4)).1, 100.0 * 4.0 / 9.0);
    assert_eq!(run(0.0, Some(9)).1, 100.0);
}

#[test]
fn steps_with_nine_cut_points_on_1_to_10_give_1_plus_n() {
    let p = load_inline(
        "[inputs]\nv = { type = \"integer\" }\n[score]\n[[score.criteria]]\nid = \"v\"\nweight = 1.0\nsteps = { input = \"v\", at = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0] }\n[[tiers]]\nid = \"t\"\n",
        &[],
    );
    for v in 0..=12i64 {
        let d = one(&p, A(json!({"id": "a", "as_of": AS_OF, "fields": {"v": v}})));
        assert_eq!(d.score, 1.0 + v.clamp(0, 9) as f64, "v = {v}");
    }
}

#[test]
fn expr_and_script_results_are_clamped_to_the_scale() {
    let text = format!(
        "{HEAD}\n[[score.criteria]]\nid = \"s\"\nweight = 1.0\nscript = \"twice\"\n\n[[tiers]]\nid = \"t\"\n"
    );
    let p = load_inline(
        &text,
        &[(
            "scripts/s.rhai",
            "fn twice(account) { if account.x > 100.0 { 50 } else { (account.x * 2.0).to_int() } }\n",
        )],
    );
    let cases: [(f64, f64, f64); 5] = [
        // x, clamped expr score, clamped script score (an integer result becomes a float)
        (5.0, 5.0, 10.0),
        (4.0, 4.0, 8.0),
        (15.0, 10.0, 10.0),
        (-3.0, 1.0, 1.0),
        (1e300, 10.0, 10.0),
    ];
    for (x, e, s) in cases {
        let d = one(&p, A::new("a", x));
        assert_eq!((d.scores[0].score, d.scores[1].score), (e, s), "x = {x}");
        assert_eq!(d.score, (e + s) / 2.0);
    }
    // Infinity is a number: clamped, not an error.
    let p = load_inline(
        &(HEAD.replace("expr = \"x\"", "expr = \"x * 1e308 * 10.0\"")
            + "\n[[tiers]]\nid = \"t\"\n"),
        &[],
    );
    assert_eq!(one(&p, A::new("a", 1.0)).score, 10.0);
    assert_eq!(one(&p, A::new("a", -1.0)).score, 1.0);
}

#[test]
fn the_score_is_the_weighted_mean_in_criteria_order() {
    let p = load_inline(
        r#"
[inputs]
a = { type = "number" }
b = { type = "number" }
c = { type = "number" }

[score]
[[score.criteria]]
id = "a"
weight = 3.0
expr = "a"

[[score.criteria]]
id = "b"
weight = 0.7
expr = "b"

[[score.criteria]]
id = "c"
weight = 0.1
expr = "c"

[[tiers]]
id = "t"
"#,
        &[],
    );
    let d =
        one(&p, A(json!({"id": "w", "as_of": AS_OF, "fields": {"a": 9.1, "b": 2.3, "c": 7.7}})));
    let want = (3.0 * 9.1 + 0.7 * 2.3 + 0.1 * 7.7) / (3.0 + 0.7 + 0.1);
    assert_eq!(d.score, want, "unrounded, summed in criteria order");
    assert_eq!(
        d.scores.iter().map(|s| (&*s.id, s.weight)).collect::<Vec<_>>(),
        vec![("a", 3.0), ("b", 0.7), ("c", 0.1)]
    );
}

#[test]
fn a_non_number_or_nan_criterion_is_that_accounts_bad_score() {
    let text = HEAD.replace(
        "expr = \"x\"",
        "expr = 'if x > 0.0 { x } else if x == 0.0 { \"text\" } else if x == -1.0 { (-1.0).sqrt() } else if x == -2.0 { () } else { true }'",
    ) + "\n[[tiers]]\nid = \"t\"\n";
    let p = load_inline(&text, &[]);
    let out = engine::evaluate(
        &p,
        &recs(&[
            A::new("ok", 3.0),
            A::new("text", 0.0),
            A::new("nan", -1.0),
            A::new("unit", -2.0),
            A::new("bool", -3.0),
            A::new("ok2", 4.0),
        ]),
    );
    let got: Vec<(Option<&str>, Option<&str>)> = out
        .iter()
        .map(|o| {
            (
                o.id(),
                match o {
                    Outcome::Error { error, .. } => Some(error.code),
                    _ => None,
                },
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (Some("ok"), None),
            (Some("text"), Some("bad_score")),
            (Some("nan"), Some("bad_score")),
            (Some("unit"), Some("bad_score")),
            (Some("bool"), Some("bad_score")),
            (Some("ok2"), None)
        ]
    );
    let Outcome::Error { error, .. } = &out[2] else { unreachable!() };
    assert_eq!(error.rule.as_deref(), Some("score.criteria.x"));
    assert!(error.place.is_some());
}

// --- qualified tier ------------------------------------------------------------------------

#[test]
fn the_qualified_tier_is_the_first_whose_min_score_and_when_hold() {
    let p = load_inline(
        &format!(
            "{HEAD}\n[[tiers]]\nid = \"gold\"\nmin_score = 8.0\nwhen = \"ok\"\n\n[[tiers]]\nid = \"silver\"\nmin_score = 5.0\n\n[[tiers]]\nid = \"nomin\"\n\n[[tiers]]\nid = \"bronze\"\n"
        ),
        &[],
    );
    assert_eq!(one(&p, A::new("a", 9.0)).qualified_tier, std::sync::Arc::<str>::from("gold"));
    let d = one(&p, A::new("a", 9.0).f("ok", false));
    assert_eq!(d.qualified_tier, std::sync::Arc::<str>::from("silver"));
    assert_eq!(codes(&d), vec!["condition", "qualifies", "new"]);
    assert_eq!(
        one(&p, A::new("a", 8.0)).qualified_tier,
        std::sync::Arc::<str>::from("gold"),
        "score >= min_score, unrounded"
    );
    assert_eq!(
        one(&p, A::new("a", 7.999_999_999)).qualified_tier,
        std::sync::Arc::<str>::from("silver")
    );
    // A missing min_score is 0: every score reaches `nomin`; the last tier is never reached.
    assert_eq!(one(&p, A::new("a", 1.0)).qualified_tier, std::sync::Arc::<str>::from("nomin"));
}

#[test]
fn a_when_is_evaluated_only_once_the_score_reaches_min_score() {
    // `[1][5]` is an out-of-bounds error: evaluating it makes the account an error.
    let p = load_inline(
        &format!(
            "{HEAD}\n[[tiers]]\nid = \"gold\"\nmin_score = 8.0\nwhen = \"[1][5] == 1\"\n\n[[tiers]]\nid = \"bronze\"\n"
        ),
        &[],
    );
    let d = one(&p, A::new("below", 7.9));
    assert_eq!((&*d.qualified_tier, &*d.tier), ("bronze", "bronze"));
    // The distance to gold is shown without failing the decision (`when_holds` unknown).
    let nt = d.next_tier.as_ref().unwrap();
    assert_eq!((&*nt.tier, nt.needs, nt.when_holds), ("gold", 8.0, None));
    let e = one_err(&p, A::new("reaches", 8.0));
    assert_eq!((e.code, e.rule.as_deref()), ("script_error", Some("tiers.gold")));
}

#[test]
fn holds_are_evaluated_only_when_a_demotion_would_happen_and_alerts_only_where_they_apply() {
    let p = three(
        r#"
[[movement.holds]]
id = "boom"
when = "[1][5] == 1"
reason = "never evaluated"

[[alerts]]
id = "gold_only"
severity = "info"
tiers = ["gold"]
when = "[1][5] == 1"
message = "never"
"#,
    );
    // No demotion: neither the hold nor the gold alert is evaluated.
    assert_eq!(one(&p, A::new("a", 6.0).cur("silver")).change, Change::None);
    assert_eq!(one(&p, A::new("a", 6.0)).change, Change::New);
    assert_eq!(one(&p, A::new("a", 7.0).cur("bronze")).change, Change::Promote);
    // A demotion would happen: the hold runs and fails.
    assert_eq!(
        one_err(&p, A::new("a", 2.0).cur("silver")).rule.as_deref(),
        Some("movement.holds.boom")
    );
    // Final tier gold: the alert runs and fails.
    assert_eq!(one_err(&p, A::new("a", 9.0)).rule.as_deref(), Some("alerts.gold_only"));
}

// --- movement ------------------------------------------------------------------------------

const FIVE: &str = r#"
[[tiers]]
id = "a"
min_score = 9.0

[[tiers]]
id = "b"
min_score = 7.0

[[tiers]]
id = "c"
min_score = 5.0
when = "flag"

[[tiers]]
id = "d"
min_score = 3.0

[[tiers]]
id = "e"

[movement]
promote_margin = 0.5
max_steps = 2
"#;

#[test]
fn promotion_needs_the_margin_and_lands_max_steps_away() {
    let p = load_inline(&format!("{HEAD}{FIVE}"), &[]);
    // e -> a qualifies (9.6 >= 9.5), capped at 2 steps: lands in c although c's `when` fails.
    let d = one(&p, A::new("far", 9.6).cur("e"));
    assert_eq!((&*d.qualified_tier, &*d.tier, d.change), ("a", "c", Change::Promote));
    assert_eq!(codes(&d), vec!["qualifies", "promote", "max_steps"]);
    // 9.4 < 9.5: the best tier by margin is b (9.4 >= 7.5), still 3 steps: lands in c.
    let d = one(&p, A::new("b-ish", 9.4).cur("e"));
    assert_eq!((&*d.qualified_tier, &*d.tier), ("a", "c"));
    // From d, 9.5 >= 9.5 exactly: a is 3 up, lands 2 up in b.
    let d = one(&p, A::new("exact", 9.5).cur("d"));
    assert_eq!((&*d.tier, d.change), ("b", Change::Promote));
    // c's `when` fails, so from e a score of 5.6 promotes to d (5.6 >= 3.5), not c.
    let d = one(&p, A::new("cond", 5.6).cur("e"));
    assert_eq!((&*d.qualified_tier, &*d.tier), ("d", "d"));
    // With the flag, c qualifies and is one step: c.
    let d = one(&p, A::new("cond", 5.6).cur("e").f("flag", true));
    assert_eq!((&*d.qualified_tier, &*d.tier), ("c", "c"));
    // Qualifies higher but not by the margin: stays, change none, reason promote_margin.
    let d = one(&p, A::new("near", 7.3).cur("d"));
    assert_eq!((&*d.qualified_tier, &*d.tier, d.change), ("b", "d", Change::None));
    assert!(codes(&d).contains(&"promote_margin"));
    insta::assert_json_snapshot!(
        "promote_max_steps",
        one(&p, A::new("far", 9.6).cur("e").since("2026-10-01"))
    );
}

#[test]
fn demotion_lands_max_steps_away_whatever_the_when() {
    let p = load_inline(&format!("{HEAD}{FIVE}"), &[]);
    // a -> e qualifies (score 1), at most 2 down: c, although c's `when` (flag) fails.
    let d = one(&p, A::new("fall", 1.0).cur("a"));
    assert_eq!((&*d.qualified_tier, &*d.tier, d.change), ("e", "c", Change::Demote));
    assert_eq!(codes(&d), vec!["qualifies", "demote", "max_steps"]);
}

const HOLDS: &str = r#"
[movement]
demote_margin = 1.0
min_tenure_days = 90

[[movement.holds]]
id = "renewal"
when = "flag"
reason = "renewal coming"

[[movement.holds]]
id = "boom"
when = "x < 1.5 && [1][5] == 1"
reason = "fails when evaluated"
"#;

#[test]
fn a_demotion_is_stopped_by_margin_then_tenure_then_holds() {
    let p = three(HOLDS);
    let days = |d: &str| {
        tierwise::date::parse_days(AS_OF).unwrap() - tierwise::date::parse_days(d).unwrap()
    };
    assert_eq!((days("2026-08-03"), days("2026-08-04")), (90, 89));
    let hold = |d: &Decision| {
        d.reasons.iter().find(|r| matches!(r.code, "margin" | "tenure" | "hold")).map(|r| r.code)
    };

    // 7.5 >= 8 - 1: within the margin -> hold (margin), even with tenure unmet and the hold on.
    let d = one(&p, A::new("m", 7.5).cur("gold").since("2026-10-30").f("flag", true));
    assert_eq!((&*d.tier, d.change, hold(&d)), ("gold", Change::Hold, Some("margin")));
    // 7.0 = 8 - 1 is not below: still the margin.
    let d = one(&p, A::new("m", 7.0).cur("gold"));
    assert_eq!((d.change, hold(&d)), (Change::Hold, Some("margin")));
    // 6.9 < 7: the margin lets it through; 89 days < 90: tenure, even with the hold on.
    let d = one(&p, A::new("t", 6.9).cur("gold").since("2026-08-04").f("flag", true));
    assert_eq!((&*d.tier, d.change, hold(&d)), ("gold", Change::Hold, Some("tenure")));
    // 90 days: tenure met; the first hold holds.
    let d = one(&p, A::new("h", 6.9).cur("gold").since("2026-08-03").f("flag", true));
    assert_eq!((&*d.tier, d.change, hold(&d)), ("gold", Change::Hold, Some("hold")));
    assert!(d.reasons.iter().any(|r| r.message.contains("renewal coming")), "{:?}", d.reasons);
    // No tier_since: tenure counts as met.
    let d = one(&p, A::new("h", 6.9).cur("gold").f("flag", true));
    assert_eq!(hold(&d), Some("hold"));
    // Nothing stops it: demoted to the qualified tier (silver).
    let d = one(&p, A::new("d", 6.9).cur("gold").since("2026-08-03"));
    assert_eq!((&*d.tier, d.change, hold(&d)), ("silver", Change::Demote, None));
    // Holds run in declaration order and only when reached: `boom` fails only at x < 1.5 ...
    let d = one(&p, A::new("d", 1.4).cur("gold").f("flag", true));
    assert_eq!(hold(&d), Some("hold"));
    // ... and makes the account an error when it is reached.
    assert_eq!(
        one_err(&p, A::new("d", 1.4).cur("gold")).rule.as_deref(),
        Some("movement.holds.boom")
    );
    insta::assert_json_snapshot!(
        "hold_tenure",
        one(&p, A::new("t", 6.9).cur("gold").since("2026-08-04").f("flag", true))
    );
}

#[test]
fn a_failing_current_when_demotes_even_above_the_margin() {
    let p = load_inline(
        &format!(
            "{HEAD}\n[[tiers]]\nid = \"gold\"\nmin_score = 8.0\nwhen = \"ok\"\n\n[[tiers]]\nid = \"bronze\"\n{HOLDS}"
        ),
        &[],
    );
    let d = one(&p, A::new("c", 9.5).cur("gold").f("ok", false));
    assert_eq!((&*d.tier, d.change), ("bronze", Change::Demote));
    // ... subject to tenure and holds all the same.
    let d = one(&p, A::new("c", 9.5).cur("gold").f("ok", false).since("2026-10-01"));
    assert_eq!((&*d.tier, d.change), ("gold", Change::Hold));
    assert!(codes(&d).contains(&"tenure"));
}

#[test]
fn no_current_tier_is_new_and_an_unknown_one_is_an_error() {
    let p = three("");
    let d = one(&p, A::new("n", 9.0));
    assert_eq!((&*d.tier, d.change, d.previous_tier.as_deref()), ("gold", Change::New, None));
    let e = one_err(&p, A::new("u", 9.0).cur("platinum"));
    assert_eq!((e.code, e.field.as_deref()), ("unknown_tier", Some("current_tier")));
}

// --- caps ----------------------------------------------------------------------------------

#[test]
fn caps_keep_floor_share_times_n_plus_epsilon_ranked_by_score_then_id() {
    // N = 100; gold max_share 0.29: 0.29 * 100 = 28.999999999999996 in f64 -> the 1e-9 makes it 29.
    assert_eq!((0.29f64 * 100.0).floor(), 28.0);
    let p = load_inline(
        &format!(
            "{HEAD}\n[[tiers]]\nid = \"gold\"\nmin_score = 8.0\nmax_share = 0.29\n\n[[tiers]]\nid = \"silver\"\nmin_score = 5.0\nwhen = \"false\"\nmax_count = 50\n\n[[tiers]]\nid = \"bronze\"\n"
        ),
        &[],
    );
    // 100 accounts all scoring >= 8, falling with the id, with a four-way tie across the gold
    // boundary: g027..g030 all score 9.7 and rank 28th to 31st; the ids break the tie, so
    // g027 and g028 keep gold (29 places), g029 and g030 drop to silver.
    let score = |i: usize| match i {
        0..=26 => 10.0 - i as f64 * 0.01,
        27..=30 => 9.7,
        _ => 9.6 - (i - 31) as f64 * 0.01,
    };
    let mut accounts: Vec<A> = (0..100).map(|i| A::new(&format!("g{i:03}"), score(i))).collect();
    accounts.reverse(); // input order must not matter
    let r = book(&p, &accounts);
    assert_eq!(
        (tier_of(&r, "g028"), tier_of(&r, "g029"), tier_of(&r, "g030")),
        ("gold", "silver", "silver")
    );
    let tiers: Vec<(String, String)> = r
        .accounts
        .iter()
        .map(|o| (o.id().unwrap().to_string(), o.decision().unwrap().tier.to_string()))
        .collect();
    // Ranked by score descending, then id: the first 29 gold, the next 50 silver (silver's
    // max_count), the remaining 21 bronze.
    let mut ranked: Vec<usize> = (0..100).collect();
    ranked.sort_by(|&a, &b| score(b).total_cmp(&score(a)).then(a.cmp(&b)));
    for (pos, &i) in ranked.iter().enumerate() {
        let want = if pos < 29 {
            "gold"
        } else if pos < 29 + 50 {
            "silver"
        } else {
            "bronze"
        };
        let id = format!("g{i:03}");
        assert_eq!(tiers.iter().find(|(x, _)| *x == id).unwrap().1, want, "{id} ranked {pos}");
    }
    // Silver's `when` is false for everyone: accounts capped into it stay all the same.
    assert_eq!(r.summary.tiers.iter().map(|t| t.count).collect::<Vec<_>>(), vec![29, 50, 21]);
    let capped = dec(&r, &format!("g{:03}", ranked[29]));
    assert_eq!(codes(capped), vec!["qualifies", "new", "cap"]);
    assert_eq!(capped.change, Change::New, "no current tier: new, whatever the caps did");
}

#[test]
fn ties_at_a_cap_break_by_id_bytes() {
    let p = load_inline(
        &format!("{HEAD}\n[[tiers]]\nid = \"gold\"\nmax_count = 2\n\n[[tiers]]\nid = \"rest\"\n"),
        &[],
    );
    // Equal scores: ids sort by UTF-8 bytes ("B" < "a" < "b" < "é").
    let r = book(&p, &[A::new("é", 5.0), A::new("b", 5.0), A::new("a", 5.0), A::new("B", 5.0)]);
    let tiers: Vec<&str> = ["B", "a", "b", "é"].iter().map(|id| tier_of(&r, id)).collect();
    assert_eq!(tiers, vec!["gold", "gold", "rest", "rest"]);
}

#[test]
fn caps_use_the_smaller_of_share_and_count_and_n_counts_decided_accounts_only() {
    let p = load_inline(
        &format!(
            "{HEAD}\n[[tiers]]\nid = \"gold\"\nmax_share = 0.5\nmax_count = 3\n\n[[tiers]]\nid = \"rest\"\n"
        ),
        &[],
    );
    let gold = |r: &PortfolioResult| r.summary.tiers[0].count;
    // N = 4: floor(2) = 2 < 3.
    let four: Vec<A> = (0..4).map(|i| A::new(&format!("a{i}"), 9.0)).collect();
    assert_eq!(gold(&book(&p, &four)), 2);
    // N = 10: floor(5) = 5 > max_count 3.
    let ten: Vec<A> = (0..10).map(|i| A::new(&format!("a{i}"), 9.0)).collect();
    assert_eq!(gold(&book(&p, &ten)), 3);
    // N = 4 decided + 3 errors: the errors are not counted, limit stays 2.
    let mut mixed = four.clone();
    mixed.push(A::new("bad1", 9.0).cur("nope"));
    mixed.push(A(json!({"id": "bad2", "as_of": AS_OF, "fields": {}})));
    mixed.push(A::new("bad3", 9.0).cur("nope"));
    let r = book(&p, &mixed);
    assert_eq!((r.summary.account_count, r.summary.error_count, gold(&r)), (4, 3, 2));
}

#[test]
fn held_accounts_keep_their_seat_incumbents_go_first_and_change_reflects_the_final_tier() {
    let p = load_inline(
        &format!(
            "{HEAD}\n[[tiers]]\nid = \"gold\"\nmin_score = 8.0\nmax_count = 2\n\n[[tiers]]\nid = \"silver\"\nmin_score = 5.0\nmax_count = 2\n\n[[tiers]]\nid = \"bronze\"\n\n[movement]\ndemote_margin = 2.0\n"
        ),
        &[],
    );
    let r = book(
        &p,
        &[
            A::new("held", 6.5).cur("gold"), // within the margin (>= 6): held in gold, fixed
            A::new("g1", 9.0).cur("gold"),   // incumbent of gold
            A::new("g2", 8.5),               // new in gold: an entrant
            A::new("s1", 7.0).cur("silver"), // incumbent of silver
            A::new("s2", 6.0).cur("silver"), // incumbent of silver, the lowest
            A::new("up", 8.2).cur("silver"), // promoted to gold: an entrant there
        ],
    );
    // gold seats `held` (fixed), then its incumbent g1; the entrants g2 8.5 and up 8.2 go to
    // silver. There `up` is back in its current tier (an incumbent): up 8.2, s1 7.0 keep the
    // seats, s2 6.0 and the entrant g2 go to bronze, whatever g2's score.
    let want = [
        ("held", "gold", Change::Hold),
        ("g1", "gold", Change::None),
        ("g2", "bronze", Change::New),
        ("s1", "silver", Change::None),
        ("s2", "bronze", Change::Demote),
        ("up", "silver", Change::None),
    ];
    for (id, tier, change) in want {
        let d = dec(&r, id);
        assert_eq!((&*d.tier, d.change), (tier, change), "{id}: {:?}", d.reasons);
    }
    assert_eq!(codes(dec(&r, "held")), vec!["qualifies", "margin"]);
    assert_eq!(codes(dec(&r, "up")), vec!["qualifies", "promote", "cap"]);
    assert_eq!(codes(dec(&r, "g2")), vec!["qualifies", "new", "cap", "cap"]);
    let c = &r.summary.changes;
    assert_eq!((c.promote, c.demote, c.hold, c.none, c.new), (0, 1, 1, 3, 1));
    assert!(r.summary.over_cap.is_empty());
    // Moves are sorted by id and list final tiers.
    let moves: Vec<(&str, &str, &str)> =
        r.summary.moves.iter().map(|m| (m.id.as_str(), m.from.as_str(), m.to.as_str())).collect();
    assert_eq!(moves, vec![("s2", "silver", "bronze")]);
    // A held account that the caps leave in place keeps `hold`.
    let r = book(&p, &[A::new("held", 6.5).cur("gold"), A::new("x", 9.0)]);
    assert_eq!(dec(&r, "held").change, Change::Hold);
}

// --- total_max and manager capacity ---------------------------------------------------------

fn capacity_policy(on_overflow: &str) -> Policy {
    load_inline(
        &format!(
            "{HEAD}
[[tiers]]
id = \"gold\"
min_score = 8.0

[[tiers]]
id = \"silver\"
min_score = 6.0

[[tiers]]
id = \"bronze\"
min_score = 4.0
when = \"false\"
max_count = 1

[[tiers]]
id = \"basic\"

[capacity]
tiers = [\"gold\", \"silver\"]
per_manager = {{ min = 2, max = 3 }}
total_max = 5
on_overflow = \"{on_overflow}\"

[portfolio]
revenue = \"rev\"
"
        ),
        &[],
    )
}

fn capacity_book() -> Vec<A> {
    vec![
        A::new("j1", 9.5).mgr("jane"),
        A::new("j2", 9.0).mgr("jane"),
        A::new("j3", 8.5).mgr("jane").cur("gold"),
        A::new("j4", 7.0).mgr("jane"),
        A::new("j5", 6.8).mgr("jane"),
        A::new("o1", 6.5).mgr("omar"),
        A::new("nobody", 9.9),
        A::new("z1", 3.0).mgr("zoe"),
    ]
}

#[test]
fn total_max_drops_the_lowest_to_the_best_tier_outside_capacity_and_reapplies_its_caps() {
    let p = capacity_policy("flag");
    let r = book(&p, &capacity_book());
    // Capacity tiers hold nobody 9.9, j1, j2, j3 (gold) and j4 7.0, j5 6.8, o1 6.5 (silver):
    // 7 > total_max 5 -> j5 and o1 (the lowest) go to bronze (whatever its `when`), whose
    // max_count 1 keeps j5 (6.8) and sends o1 on to basic.
    let tiers: Vec<&str> = ["j1", "j2", "j3", "j4", "j5", "o1", "nobody", "z1"]
        .iter()
        .map(|id| tier_of(&r, id))
        .collect();
    assert_eq!(tiers, vec!["gold", "gold", "gold", "silver", "bronze", "basic", "gold", "basic"]);
    assert_eq!(codes(dec(&r, "j5")), vec!["qualifies", "new", "total_max"]);
    assert_eq!(codes(dec(&r, "o1")), vec!["qualifies", "new", "total_max", "cap"]);
    // The account without a manager counts toward total_max (without it only 6 would compete
    // for 5 places and j5 would stay silver) but in no book. Books after total_max: jane j1 j2 j3 j4 = 4 > 3 -> over, flag lists the
    // lowest (j4); omar 0 < 2 -> under; zoe 0 -> under.
    let m: Vec<(&str, u64, Load, Vec<&str>, usize)> = r
        .summary
        .managers
        .iter()
        .map(|m| {
            (
                m.manager.as_str(),
                m.count,
                m.status,
                m.reassign.iter().map(String::as_str).collect(),
                m.demoted.len(),
            )
        })
        .collect();
    assert_eq!(
        m,
        vec![
            ("jane", 4, Load::Over, vec!["j4"], 0),
            ("omar", 0, Load::Under, vec![], 0),
            ("zoe", 0, Load::Under, vec![], 0)
        ]
    );
    // flag keeps the tiers.
    assert_eq!(tier_of(&r, "j4"), "silver");
}

#[test]
fn capacity_demote_moves_the_overflow_and_counts_before_it() {
    let p = capacity_policy("demote");
    let r = book(&p, &capacity_book());
    // As above, then jane's j4 (her lowest in the capacity tiers) moves to bronze; bronze
    // (max_count 1) now holds j5 6.8 and j4 7.0 -> keeps j4, j5 drops to basic.
    let jane = &r.summary.managers[0];
    assert_eq!(
        (jane.manager.as_str(), jane.count, jane.status),
        ("jane", 4, Load::Over),
        "count before the overflow action"
    );
    assert_eq!((jane.reassign.len(), jane.demoted.clone()), (0, vec!["j4".to_string()]));
    assert_eq!((tier_of(&r, "j4"), tier_of(&r, "j5")), ("bronze", "basic"));
    assert_eq!(codes(dec(&r, "j4")), vec!["qualifies", "new", "capacity"]);
    assert_eq!(codes(dec(&r, "j5")), vec!["qualifies", "new", "total_max", "cap"]);
    // j3 was gold and stays gold: none.
    assert_eq!(dec(&r, "j3").change, Change::None);
    insta::assert_json_snapshot!("capacity_demote_portfolio", r);
}

#[test]
fn demote_and_flag_pick_the_lowest_scores_then_the_highest_ids() {
    let p = capacity_policy("demote");
    // Five of jane's, all 7.0: rank by id ascending, drop from the end -> j4, j5 (ids).
    let accounts: Vec<A> =
        ["j5", "j1", "j4", "j2", "j3"].iter().map(|id| A::new(id, 7.0).mgr("jane")).collect();
    let r = book(&p, &accounts);
    assert_eq!(r.summary.managers[0].demoted, vec!["j4".to_string(), "j5".to_string()]);
    let p = capacity_policy("flag");
    let r = book(&p, &accounts);
    assert_eq!(r.summary.managers[0].reassign, vec!["j4".to_string(), "j5".to_string()]);
}

// --- aggregates, portfolio alerts, messages ------------------------------------------------

#[test]
fn portfolio_aggregates() {
    let p = load_inline(
        &format!(
            "{HEAD}
[[tiers]]
id = \"gold\"
min_score = 8.0

[[tiers]]
id = \"bronze\"

[capacity]
tiers = [\"gold\"]
per_manager = {{ min = 2, max = 2 }}

[portfolio]
revenue = \"rev\"

[[portfolio.alerts]]
id = \"figures\"
severity = \"info\"
when = \"true\"
message = \"n={{account_count}} total={{total_revenue}} top1={{top_revenue_share(1)}} top2={{top_revenue_share(2)}} top99={{top_revenue_share(99)}} gold={{tier_count(\\\"gold\\\")}} share={{tier_share(\\\"gold\\\")}} grev={{tier_revenue(\\\"gold\\\")}} none={{tier_count(\\\"nope\\\")}} over={{managers_over}} under={{managers_under}}\"

[[portfolio.alerts]]
id = \"concentration\"
severity = \"medium\"
when = \"top_revenue_share(2) > 0.30\"
message = \"top 2 hold {{round(top_revenue_share(2) * 1000.0) / 10.0}}%\"

[[portfolio.alerts]]
id = \"never\"
severity = \"low\"
when = \"account_count > 100\"
message = \"x\"
"
        ),
        &[],
    );
    let r = book(
        &p,
        &[
            A::new("a", 9.0).f("rev", 600.0).mgr("ann"),
            A::new("b", 9.0).f("rev", 200.0).mgr("ann"),
            A::new("c", 9.0).f("rev", 100.0).mgr("ann"),
            A::new("d", 2.0).f("rev", 100.0).mgr("bob"),
            A::new("e", 2.0).mgr("bob"), // absent revenue counts as 0
            A::new("bad", 2.0).cur("nope").f("rev", 1e9), // an error: in no figure
        ],
    );
    // N = 5, total 1000; top1 600/1000, top2 800/1000, top99 (fewer accounts) 1.0; gold 3 of 5,
    // gold revenue 900; ann 3 > 2 over; bob 0 < 2 under.
    let msgs: Vec<(&str, &str)> =
        r.summary.portfolio_alerts.iter().map(|a| (&*a.id, a.message.as_str())).collect();
    assert_eq!(
        msgs,
        vec![
            (
                "figures",
                "n=5 total=1000.0 top1=0.6 top2=0.8 top99=1.0 gold=3 share=0.6 grev=900.0 none=0 over=1 under=1"
            ),
            ("concentration", "top 2 hold 80.0%"),
        ]
    );
    let s = &r.summary;
    assert_eq!(
        (s.account_count, s.error_count, s.total_revenue, s.top10_revenue_share),
        (5, 1, 1000.0, 1.0)
    );
    assert_eq!((s.tiers[0].count, s.tiers[0].share, s.tiers[0].revenue), (3, 0.6, 900.0));

    // A total of 0: every share is 0.0, not NaN.
    let r = book(&p, &[A::new("a", 9.0), A::new("b", 2.0)]);
    assert!(
        r.summary.portfolio_alerts[0].message.contains("top1=0.0 top2=0.0 top99=0.0"),
        "{:?}",
        r.summary.portfolio_alerts
    );
    // No decided account at all: account_count 0, tier_share 0.0.
    let r = book(&p, &[A::new("bad", 1.0).cur("nope")]);
    assert!(
        r.summary.portfolio_alerts[0].message.starts_with("n=0 total=0.0"),
        "{:?}",
        r.summary.portfolio_alerts
    );
    assert!(r.summary.portfolio_alerts[0].message.contains("share=0.0"));
}

#[test]
fn message_templates() {
    let p = load_inline(
        &format!(
            "{HEAD}
[[tiers]]
id = \"gold\"
min_score = 8.0

[[tiers]]
id = \"bronze\"

[[alerts]]
id = \"show\"
severity = \"low\"
when = \"true\"
message = \"{{{{literal}}}} x={{x}} n={{n}} name={{name}} rev=[{{rev}}] sum={{x * 2.0 + 5.0}} t={{tier}} s={{score}} map={{ #{{a: 1}}.a }} str={{`${{n}}%`}} {{{{{{n}}}}}}\"

[[alerts]]
id = \"gold_only\"
severity = \"critical\"
tiers = [\"gold\"]
when = \"score >= 9.0\"
message = \"top\"
"
        ),
        &[],
    );
    let d = one(&p, A::new("m", 12.5).f("name", "Acme {Ltd}"));
    assert_eq!(d.alerts.len(), 2);
    // x is a number: `12.5`; score is clamped 10 -> `10.0`; n an integer `7`; absent `()` -> empty.
    assert_eq!(
        d.alerts[0].message,
        "{literal} x=12.5 n=7 name=Acme {Ltd} rev=[] sum=30.0 t=gold s=10.0 map=1 str=7% {7}"
    );
    assert_eq!((&*d.alerts[1].id, d.alerts[1].message.as_str()), ("gold_only", "top"));
    // A whole-number float shows as `25.0`.
    let d = one(&p, A::new("m", 10.0).f("rev", 25));
    assert!(
        d.alerts[0].message.contains("x=10.0 ") && d.alerts[0].message.contains("rev=[25.0]"),
        "{}",
        d.alerts[0].message
    );
    // Alerts are evaluated on the final tier: bronze gets only `show`.
    let d = one(&p, A::new("m", 3.0));
    assert_eq!(d.alerts.iter().map(|a| &*a.id).collect::<Vec<_>>(), vec!["show"]);
}

#[test]
fn account_alerts_see_the_final_tier_after_caps() {
    let p = load_inline(
        &format!(
            "{HEAD}\n[[tiers]]\nid = \"gold\"\nmin_score = 8.0\nmax_count = 1\n\n[[tiers]]\nid = \"bronze\"\n\n[[alerts]]\nid = \"where\"\nseverity = \"info\"\nwhen = \"true\"\nmessage = \"{{tier}} {{score}}\"\n\n[[alerts]]\nid = \"bronze_only\"\nseverity = \"info\"\ntiers = [\"bronze\"]\nwhen = \"true\"\nmessage = \"b\"\n"
        ),
        &[],
    );
    let r = book(&p, &[A::new("a", 9.0), A::new("b", 8.5)]);
    let show = |id| {
        dec(&r, id).alerts.iter().map(|a| format!("{}: {}", a.id, a.message)).collect::<Vec<_>>()
    };
    assert_eq!(show("a"), vec!["where: gold 9.0"]);
    assert_eq!(show("b"), vec!["where: bronze 8.5", "bronze_only: b"]);
    // Account level has no caps: b stays gold.
    let d = one(&p, A::new("b", 8.5));
    assert_eq!((&*d.tier, d.alerts.len()), ("gold", 1));
}

// --- change at portfolio level -------------------------------------------------------------

#[test]
fn change_compares_the_final_tier_with_the_current_one() {
    let p = load_inline(
        &format!(
            "{HEAD}\n[[tiers]]\nid = \"gold\"\nmin_score = 8.0\nmax_count = 1\n\n[[tiers]]\nid = \"silver\"\nmin_score = 5.0\n\n[[tiers]]\nid = \"bronze\"\n\n[movement]\ndemote_margin = 1.0\n"
        ),
        &[],
    );
    let r = book(
        &p,
        &[
            A::new("top", 9.9).cur("gold"),      // none
            A::new("capped", 9.0).cur("silver"), // promoted, capped back to silver: none
            A::new("dropped", 9.5).cur("gold"),  // stays gold by movement, capped: demote
            A::new("held", 4.5).cur("silver"),   // held by the margin: hold
            A::new("up", 6.0).cur("bronze"),     // promote
            A::new("down", 2.0).cur("silver"),   // demote
            A::new("fresh", 9.7),                // new, capped to silver: still new
        ],
    );
    let got: Vec<(&str, &str, Change)> = r
        .accounts
        .iter()
        .map(|o| o.decision().unwrap())
        .map(|d| (d.id.as_str(), &*d.tier, d.change))
        .collect();
    assert_eq!(
        got,
        vec![
            ("top", "gold", Change::None),
            ("capped", "silver", Change::None),
            ("dropped", "silver", Change::Demote),
            ("held", "silver", Change::Hold),
            ("up", "silver", Change::Promote),
            ("down", "bronze", Change::Demote),
            ("fresh", "silver", Change::New),
        ]
    );
    assert_eq!(codes(dec(&r, "capped")), vec!["qualifies", "promote", "cap"]);
    assert_eq!(codes(dec(&r, "dropped")), vec!["qualifies", "stay", "cap"]);
    // At account level, movement alone decides.
    assert_eq!(one(&p, A::new("capped", 9.0).cur("silver")).change, Change::Promote);
    assert_eq!(one(&p, A::new("dropped", 9.5).cur("gold")).change, Change::None);
}

// --- distance to the next tier -------------------------------------------------------------

#[test]
fn next_tier_shows_what_the_tier_above_needs() {
    let p = load_inline(
        &format!(
            "{HEAD}\n[[tiers]]\nid = \"gold\"\nmin_score = 8.0\nwhen = \"ok\"\nmax_count = 1\n\n[[tiers]]\nid = \"silver\"\nmin_score = 5.0\n\n[[tiers]]\nid = \"bronze\"\n\n[movement]\npromote_margin = 0.25\n"
        ),
        &[],
    );
    // Below gold's min_score its condition is not evaluated (lazy), so `when_holds` is absent.
    let d = one(&p, A::new("s", 6.5));
    let nt = d.next_tier.unwrap();
    assert_eq!(
        (&*nt.tier, nt.needs, nt.gap, nt.when.as_deref(), nt.when_holds),
        ("gold", 8.25, 8.25 - 6.5, Some("ok"), None)
    );
    // At gold's min_score the condition was evaluated to qualify, and failed: shown.
    let d = one(&p, A::new("s", 8.5).f("ok", false));
    let nt = d.next_tier.unwrap();
    assert_eq!((&*nt.tier, nt.gap, nt.when_holds), ("gold", 0.0, Some(false)));
    let d = one(&p, A::new("b", 1.0));
    let nt = d.next_tier.unwrap();
    assert_eq!(
        (&*nt.tier, nt.needs, nt.gap, nt.when, nt.when_holds),
        ("silver", 5.25, 4.25, None, None)
    );
    // The best tier has no next tier.
    assert!(one(&p, A::new("g", 9.0)).next_tier.is_none());
    // Capped below a tier it already qualifies for: gap 0.
    let r = book(&p, &[A::new("a", 9.5), A::new("b", 9.0)]);
    let nt = dec(&r, "b").next_tier.clone().unwrap();
    assert_eq!((&*nt.tier, nt.gap, nt.when_holds), ("gold", 0.0, Some(true)));
}

// --- determinism ---------------------------------------------------------------------------

#[test]
fn the_same_input_gives_the_same_bytes_and_order_changes_no_decision() {
    let p = capacity_policy("demote");
    let a = capacity_book();
    let first = serde_json::to_string(&book(&p, &a)).unwrap();
    assert_eq!(first, serde_json::to_string(&book(&p, &a)).unwrap());
    let mut b = a.clone();
    b.reverse();
    let r1 = book(&p, &a);
    let r2 = book(&p, &b);
    assert_eq!(
        serde_json::to_string(&r1.summary).unwrap(),
        serde_json::to_string(&r2.summary).unwrap()
    );
    for o in &r1.accounts {
        let id = o.id().unwrap();
        let other = r2.accounts.iter().find(|x| x.id() == Some(id)).unwrap();
        assert_eq!(serde_json::to_string(o).unwrap(), serde_json::to_string(other).unwrap());
    }
}

/// Determinism: the same bytes "whatever the order of the
/// accounts". `summarize` adds revenues in input order, and f64 addition is not associative:
/// 0.1 + 0.2 + 0.3 = 0.6000000000000001 but 0.3 + 0.2 + 0.1 = 0.6. So `total_revenue`,
/// `tiers[].revenue`, `top10_revenue_share` (and `total_revenue`/`tier_revenue()` in
/// portfolio alerts, which could flip at a threshold) change with the input order. Found by
/// the `enterprise_books` property (185030044.1985823 vs 185030044.19858232).
#[test]
fn revenue_sums_do_not_depend_on_input_order() {
    let p = three("[portfolio]\nrevenue = \"rev\"\n");
    let a = [
        A::new("a", 1.0).f("rev", 0.1),
        A::new("b", 1.0).f("rev", 0.2),
        A::new("c", 1.0).f("rev", 0.3),
    ];
    let mut b = a.clone();
    b.reverse();
    let (r1, r2) = (book(&p, &a), book(&p, &b));
    assert_eq!(
        serde_json::to_string(&r1.summary).unwrap(),
        serde_json::to_string(&r2.summary).unwrap()
    );
}
