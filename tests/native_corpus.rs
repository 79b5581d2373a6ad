//! The rhai people write, on the fast path: a corpus of scripts and expressions in the styles
//! of the README and the rhai book (several ways of writing the same rule), each loaded with
//! the native fast path on and off and compared byte for byte over random accounts. Every
//! entry runs natively, or is listed in [`RHAI_ONLY`] with the construct that keeps it on rhai.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::result_large_err)]

mod common;

use proptest::prelude::*;
use serde_json::json;
use tierwise::engine;
use tierwise::policy::{self, Policy};
use tierwise::script::Limits;

/// What a corpus entry is: a `script` criterion (`fn fit(account)` plus helpers), or an
/// expression used as a criterion, as an alert condition and shown in an alert message.
enum Kind {
    Script,
    Expr,
}

struct Entry {
    name: &'static str,
    kind: Kind,
    src: &'static str,
}

const fn script(name: &'static str, src: &'static str) -> Entry {
    Entry { name, kind: Kind::Script, src }
}
const fn expr(name: &'static str, src: &'static str) -> Entry {
    Entry { name, kind: Kind::Expr, src }
}

const CORPUS: &[Entry] = &[
    // The issue's policy: a mutable local and compound assignment.
    script(
        "health_compound",
        r#"fn fit(account) {
    let s = 1.0 + 9.0 * (account.share_of_wallet ?? 0.0);
    if account.nps == () { } else if account.nps >= 50 { s += 2.0 } else if account.nps >= 0 { s += 1.0 }
    s
}"#,
    ),
    script(
        "health_if_chain_value",
        r#"fn fit(account) {
    let wallet = account.share_of_wallet;
    let base = if wallet == () { 1.0 } else { 1.0 + 9.0 * wallet };
    let survey = account.nps;
    let nudge = if survey == () { 0.0 } else if survey >= 50 { 1.0 } else if survey < 0 { -1.0 } else { 0.0 };
    base + nudge
}"#,
    ),
    script(
        "health_early_return",
        r#"fn fit(account) {
    if account.share_of_wallet == () { return 1.0; }
    let base = 1.0 + 9.0 * account.share_of_wallet;
    if account.nps == () { return base; }
    if account.nps >= 50 { return base + 1.0; }
    if account.nps < 0 { return base - 1.0; }
    base
}"#,
    ),
    script(
        "health_reassign",
        r#"fn fit(account) {
    let score = 5.0;
    if account.nps != () && account.nps > 30 { score = score + 2.5; }
    if account.churn_risk == "high" { score = score - 3.0; }
    score
}"#,
    ),
    script(
        "all_compound_ops",
        r#"fn fit(account) {
    let x = account.revenue_12m / 100000.0;
    x -= 1.5;
    x *= 2.0;
    x /= 3.0;
    let n = account.seats;
    n += 3;
    n *= 2;
    n -= 1;
    n /= 2;
    x + n.to_float()
}"#,
    ),
    script(
        "int_division_by_zero_falls_back",
        r#"fn fit(account) {
    let per_seat = account.open_tickets / account.seats;
    per_seat.to_float()
}"#,
    ),
    script(
        "switch_string",
        r#"fn fit(account) {
    let base = switch account.region {
        "emea" => 6.0,
        "amer" => 7.0,
        "apac" => 5.5,
        _ => 3.0,
    };
    base
}"#,
    ),
    script(
        "switch_string_alternatives",
        r#"fn fit(account) {
    switch account.industry {
        "software" | "fintech" => 8.0,
        "retail" => 4.0,
        _ => 5.0
    }
}"#,
    ),
    script(
        "switch_int_and_ranges",
        r#"fn fit(account) {
    switch account.seats {
        0 => 1.0,
        1..10 => 3.0,
        10..=99 => 6.0,
        100..1000 => 8.0,
        _ => 10.0,
    }
}"#,
    ),
    script(
        "switch_guarded_arms",
        r#"fn fit(account) {
    let nps = account.nps ?? 0;
    switch account.churn_risk {
        "low" if nps > 40 => 9.0,
        "low" => 7.0,
        "medium" if nps > 60 => 6.0,
        "medium" => 5.0,
        "high" => 2.0,
        _ => 4.0,
    }
}"#,
    ),
    script(
        "switch_as_statement",
        r#"fn fit(account) {
    let s = 3.0;
    switch account.churn_risk {
        "low" => { s += 4.0; }
        "medium" => { s += 2.0; }
    }
    s
}"#,
    ),
    script(
        "in_array_literal",
        r#"fn fit(account) {
    if account.region in ["emea", "apac"] { 7.0 } else { 4.0 }
}"#,
    ),
    script(
        "in_string",
        r#"fn fit(account) {
    let s = 2.0;
    if "soft" in account.industry { s += 5.0; }
    if account.industry.contains("tech") { s += 1.0; }
    s
}"#,
    ),
    script(
        "in_int_array",
        r#"fn fit(account) {
    if account.seats in [1, 5, 10, 50] { 8.0 } else if account.nps in [0, 100] { 6.0 } else { 2.0 }
}"#,
    ),
    script(
        "for_range_sum",
        r#"fn fit(account) {
    let total = 0;
    for i in 0..account.open_tickets.min(40) {
        total += i % 3;
    }
    total.to_float() / 4.0
}"#,
    ),
    script(
        "for_inclusive_range_break",
        r#"fn fit(account) {
    let step = 0;
    for k in 1..=10 {
        if account.revenue_12m < k * 100000 { break; }
        step = k;
    }
    step.to_float()
}"#,
    ),
    script(
        "for_first_match_break",
        r#"fn fit(account) {
    let band = 0;
    for (cut, i) in [5000000.0, 1000000.0, 250000.0, 50000.0] {
        if account.revenue_12m >= cut {
            band = 4 - i;
            break;
        }
    }
    band.to_float() * 2.0
}"#,
    ),
    script(
        "for_array_of_thresholds",
        r#"fn fit(account) {
    let points = 1.0;
    for cut in [100000.0, 250000.0, 500000.0, 1000000.0, 2500000.0] {
        if account.revenue_12m >= cut { points += 2.0; }
    }
    points
}"#,
    ),
    script(
        "for_with_counter_continue",
        r#"fn fit(account) {
    let s = 0.0;
    for (w, i) in [0.5, 1.5, 2.5, 3.5] {
        if i == 1 { continue; }
        s += w * i.to_float();
    }
    s
}"#,
    ),
    script(
        "while_loop_halving",
        r#"fn fit(account) {
    let r = account.revenue_12m;
    let n = 0;
    while r > 1.0 && n < 60 {
        r /= 2.0;
        n += 1;
    }
    n.to_float() / 3.0
}"#,
    ),
    script(
        "loop_with_break",
        r#"fn fit(account) {
    let x = account.seats;
    let steps = 0;
    loop {
        if x <= 1 || steps >= 50 { break; }
        x = if x % 2 == 0 { x / 2 } else { 3 * x + 1 };
        steps += 1;
    }
    steps.to_float() / 5.0
}"#,
    ),
    script(
        "do_while",
        r#"fn fit(account) {
    let k = 0;
    do {
        k += 1;
    } while k * k < account.seats && k < 100;
    k.to_float()
}"#,
    ),
    script(
        "unbounded_loop_hits_the_limit",
        r#"fn fit(account) {
    let i = 0;
    while i < account.revenue_12m { i += 1; }
    1.0
}"#,
    ),
    script(
        "helper_functions",
        r#"fn clamp01(x) { if x < 0.0 { 0.0 } else if x > 1.0 { 1.0 } else { x } }
fn margin_points(m) { 10.0 * clamp01(m) }
fn fit(account) {
    let m = account.gross_margin ?? 0.2;
    (margin_points(m) + scale(account.csat ?? 3.0)) / 2.0
}
fn scale(c) { 2.0 * c }"#,
    ),
    script(
        "helpers_chain",
        r#"fn base(account) { 1.0 + 9.0 * (account.share_of_wallet ?? 0.0) }
fn nudge(nps) { if nps == () { 0.0 } else if nps >= 50 { 1.0 } else { 0.0 } }
fn fit(account) { base(account) + nudge(account.nps) }"#,
    ),
    script(
        "recursion_stays_on_rhai",
        r#"fn steps(n) { if n <= 1 { 0 } else { 1 + steps(n / 2) } }
fn fit(account) { steps(account.seats).to_float() }"#,
    ),
    script(
        "method_and_function_forms",
        r#"fn fit(account) {
    let a = account.seats.to_float();
    let b = to_float(account.open_tickets);
    let c = abs(account.nps ?? -3).to_float();
    let d = (account.gross_margin ?? 0.5).abs();
    max(a, b).min(50.0) / 10.0 + min(c, 10.0) / 10.0 + d
}"#,
    ),
    script(
        "rounding",
        r#"fn fit(account) {
    let x = account.revenue_12m / 333333.0;
    floor(x) + x.ceiling() / 2.0 + round(x * 10.0) / 100.0 + sqrt(account.seats.to_float())
}"#,
    ),
    script(
        "power",
        r#"fn fit(account) {
    let g = account.growth ?? 0.0;
    let compounding = (1.0 + g) ** 3;
    let sq = account.seats ** 2;
    compounding + sq.to_float() / 1000.0
}"#,
    ),
    script(
        "strings_methods",
        r#"fn fit(account) {
    let ind = account.industry.to_upper();
    let s = 1.0;
    if ind.starts_with("SOFT") { s += 3.0; }
    if account.industry.ends_with("tech") { s += 2.0; }
    if ind.to_lower() == account.industry { s += 0.5; }
    s + account.industry.len().to_float() / 10.0
}"#,
    ),
    script(
        "optional_bool",
        r#"fn fit(account) {
    let s = if account.strategic == true { 8.0 } else { 4.0 };
    if account.strategic == () { s -= 1.0; }
    s
}"#,
    ),
    script(
        "days_in_script",
        r#"fn fit(account) {
    if account.renewal_date == () { return 5.0; }
    let d = days_until(account.renewal_date);
    if d < 0 { 1.0 } else if d < 90 { 9.0 } else { 5.0 + d.to_float() / 365.0 }
}"#,
    ),
    script(
        "const_and_shadowing",
        r#"fn fit(account) {
    const TARGET = 1000000.0;
    let ratio = account.revenue_12m / TARGET;
    let ratio = if ratio > 3.0 { 3.0 } else { ratio };
    { let ratio = ratio * 2.0; ratio + 1.0 }
}"#,
    ),
    script(
        "integer_overflow_falls_back",
        r#"fn fit(account) {
    let x = account.seats * account.seats * account.seats * account.seats;
    (x % 10).to_float()
}"#,
    ),
    script(
        "to_int_and_back",
        r#"fn fit(account) {
    let k = (account.revenue_12m / 250000.0).to_int();
    (k % 7).to_float() + 1.0
}"#,
    ),
    script(
        "nested_loops",
        r#"fn fit(account) {
    let hits = 0;
    for i in 0..6 {
        for j in 0..6 {
            if (i * j) % (account.seats % 5 + 1) == 0 { hits += 1; }
        }
    }
    hits.to_float() / 4.0
}"#,
    ),
    script(
        "index_stays_on_rhai",
        r#"fn fit(account) {
    let weights = [1.0, 2.0, 3.0];
    weights[account.seats % 3]
}"#,
    ),
    script(
        "map_stays_on_rhai",
        r#"fn fit(account) {
    let by_region = #{ emea: 6.0, amer: 7.0, apac: 5.0 };
    by_region[account.region] ?? 3.0
}"#,
    ),
    // Expressions: criteria, conditions and message values.
    expr("expr_weighted", "revenue_12m / 1000000.0 * 4.0 + (gross_margin ?? 0.0) * 10.0"),
    expr(
        "expr_if_chain",
        r#"if churn_risk == "high" { 2.0 } else if churn_risk == "medium" { 5.0 } else { 8.0 }"#,
    ),
    expr("expr_switch_region", r#"switch region { "emea" => 1, "amer" => 2, _ => 3 }"#),
    expr("expr_switch_ranges", "switch seats { 0..10 => 1.0, 10..100 => 5.0, _ => 9.0 }"),
    expr("expr_in_array", r#"region in ["emea", "amer"] && seats > 10"#),
    expr("expr_not_in", r#"!(industry in ["retail", "media"])"#),
    expr("expr_in_string", r#""tech" in industry"#),
    expr("expr_coalesce", "(nps ?? 0) >= 30 || (csat ?? 0.0) > 4.2"),
    expr(
        "expr_interp",
        r#"`${region}/${seats} seats/${revenue_12m / 1000.0}k/${strategic}/${nps}`"#,
    ),
    expr(
        "expr_interp_calls",
        r#"`${industry.to_upper()} ${abs(nps ?? 0)} ${round(gross_margin ?? 0.0)}`"#,
    ),
    expr("expr_days", "renewal_date != () && days_until(renewal_date) < 120"),
    expr("expr_helper_call", "fit_helper(seats, open_tickets)"),
    expr("expr_methods", "industry.len() > 6 && industry.starts_with(\"s\")"),
    expr("expr_power_minmax", "min(max(seats.to_float() ** 0.5, 1.0), 10.0)"),
    expr("expr_to_string", "seats.to_string() + \"/\" + region"),
];

/// Entries that run through rhai, with (a part of) the reason `Policy::speed` gives.
const RHAI_ONLY: &[(&str, &str)] = &[
    ("recursion_stays_on_rhai", "recursion"),
    ("index_stays_on_rhai", "an array value"),
    ("map_stays_on_rhai", "object map"),
];

/// Helpers every entry's policy has, for expressions that call a script function.
const HELPERS: &str = r#"
fn fit_helper(a, b) {
    let t = a - b;
    if t < 0 { t = -t; }
    t.to_float() / 3.0
}
"#;

fn policy_files(k: usize, e: &Entry) -> Vec<(String, String)> {
    let mut toml = String::from(
        r#"[policy]
description = "native corpus"
[inputs]
revenue_12m = { type = "number", min = 0 }
gross_margin = { type = "number", optional = true }
share_of_wallet = { type = "number", min = 0, max = 1, optional = true }
csat = { type = "number", optional = true }
growth = { type = "number", optional = true }
nps = { type = "integer", min = -100, max = 100, optional = true }
seats = { type = "integer", min = 0 }
open_tickets = { type = "integer", min = 0 }
region = { type = "string", one_of = ["emea", "amer", "apac", "latam"] }
industry = { type = "string" }
churn_risk = { type = "string", one_of = ["low", "medium", "high"], optional = true }
strategic = { type = "bool", optional = true }
renewal_date = { type = "date", optional = true }
[score]
scale = { min = -1000000.0, max = 1000000.0 }
[[score.criteria]]
id = "revenue"
weight = 1.0
steps = { input = "revenue_12m", at = [100000, 500000, 1000000] }
"#,
    );
    let mut script = HELPERS.to_string();
    let show = match e.kind {
        Kind::Script => {
            toml.push_str("[[score.criteria]]\nid = \"fit\"\nweight = 2.0\nscript = \"fit\"\n");
            script.push_str(e.src);
            None
        }
        Kind::Expr => Some(e.src),
    };
    toml.push_str(
        "[[tiers]]\nid = \"key\"\nmin_score = 5.0\n[[tiers]]\nid = \"growth\"\nmin_score = 2.0\n[[tiers]]\nid = \"other\"\n",
    );
    if let Some(src) = show {
        let msg = toml::Value::String(format!("{{{src}}}")).to_string();
        toml.push_str(&format!(
            "[[alerts]]\nid = \"show{k}\"\nseverity = \"info\"\nwhen = \"true\"\nmessage = {msg}\n"
        ));
        let cond = toml::Value::String(format!("({src}) == true")).to_string();
        toml.push_str(&format!(
            "[[alerts]]\nid = \"cond{k}\"\nseverity = \"low\"\nwhen = {cond}\nmessage = \"c\"\n"
        ));
    }
    vec![("policy.toml".into(), toml), ("scripts/corpus.rhai".into(), script)]
}

/// A small operation limit, so loops meet it on some accounts and the fast path has to hand
/// over to rhai at the same place.
fn limits(native: bool) -> Limits {
    Limits { native, max_operations: 5_000, ..Limits::default() }
}

fn load(k: usize, e: &Entry, native: bool) -> Policy {
    let files = policy_files(k, e);
    let refs: Vec<(&str, &str)> = files.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let (_tmp, dir) = common::write_policy("corpus", &refs);
    match policy::load_dir(&dir, &limits(native)) {
        Ok(p) => p,
        Err(err) => panic!("corpus entry `{}` did not load: {err}", e.name),
    }
}

fn policies() -> Vec<(Policy, Policy)> {
    CORPUS.iter().enumerate().map(|(k, e)| (load(k, e, true), load(k, e, false))).collect()
}

#[test]
fn the_corpus_is_big_and_runs_natively_unless_listed() {
    assert!(CORPUS.len() >= 40, "corpus has {} entries", CORPUS.len());
    let mut names: Vec<&str> = CORPUS.iter().map(|e| e.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), CORPUS.len(), "corpus names repeat");
    let mut wrong = Vec::new();
    for (k, e) in CORPUS.iter().enumerate() {
        let p = load(k, e, true);
        let slow: Vec<(String, String)> =
            p.speed().into_iter().filter_map(|s| s.rhai.map(|why| (s.source, why))).collect();
        assert_eq!(p.rhai_count(), slow.len());
        match RHAI_ONLY.iter().find(|(n, _)| *n == e.name) {
            None if slow.is_empty() => {}
            None => wrong.push(format!("`{}` runs through rhai: {slow:?}", e.name)),
            Some((_, why)) => {
                if slow.is_empty() || !slow.iter().all(|(_, r)| r.contains(why)) {
                    wrong.push(format!("`{}`: expected rhai with `{why}`, got {slow:?}", e.name));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

fn maybe<T: std::fmt::Debug + Clone + 'static>(
    s: impl Strategy<Value = T> + 'static,
) -> impl Strategy<Value = Option<T>> {
    proptest::option::weighted(0.8, s)
}

fn account() -> impl Strategy<Value = serde_json::Value> {
    let money = prop_oneof![
        Just(0.0),
        Just(100000.0),
        Just(250000.0),
        Just(999999.99),
        Just(1e6),
        Just(1e15),
        0.0..5e6f64,
        0.0..3000.0f64,
    ];
    let frac = prop_oneof![Just(0.0), Just(1.0), Just(0.5), 0.0..1.0f64];
    let small = prop_oneof![Just(0.0), Just(-0.0), Just(4.2), -2.0..6.0f64];
    let int = prop_oneof![
        Just(0i64),
        Just(1),
        Just(10),
        Just(99),
        Just(100),
        0..2000i64,
        Just(3_000_000_000)
    ];
    let nps = prop_oneof![Just(-100i64), Just(0), Just(50), Just(100), -100..=100i64];
    let region = prop_oneof![Just("emea"), Just("amer"), Just("apac"), Just("latam")];
    let industry = prop_oneof![
        Just("software"),
        Just("fintech"),
        Just("retail"),
        Just("SOFT"),
        Just(""),
        Just("médtech"),
        Just("ß")
    ];
    let risk = prop_oneof![Just("low"), Just("medium"), Just("high")];
    let date = prop_oneof![
        Just("2026-11-01"),
        Just("2027-01-15"),
        Just("2026-12-31"),
        Just("2025-02-28"),
        Just("2030-06-30")
    ];
    (
        (money, maybe(frac.clone()), maybe(frac), maybe(small.clone()), maybe(small)),
        (
            maybe(nps),
            int.clone(),
            int,
            region,
            industry,
            maybe(risk),
            maybe(any::<bool>()),
            maybe(date),
        ),
        maybe(prop_oneof![Just("key"), Just("growth"), Just("other")]),
    )
        .prop_map(
            |(
                (rev, gm, sow, csat, growth),
                (nps, seats, tickets, region, ind, risk, strat, renew),
                cur,
            )| {
                json!({ "id": "x", "as_of": "2026-11-01", "current_tier": cur,
                "fields": { "revenue_12m": rev, "gross_margin": gm, "share_of_wallet": sow,
                    "csat": csat, "growth": growth, "nps": nps, "seats": seats,
                    "open_tickets": tickets, "region": region, "industry": ind,
                    "churn_risk": risk, "strategic": strat, "renewal_date": renew } })
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 120, ..ProptestConfig::default() })]
    #[test]
    fn native_and_rhai_give_the_same_bytes(accounts in proptest::collection::vec(account(), 1..5)) {
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
                prop_assert_eq!(a, b, "corpus entry `{}`", CORPUS[k].name);
            }
            Ok(())
        })?;
    }
}

/// The limits are the sandbox's, not the fast path's: a loop that rhai stops with
/// `operation_limit` is stopped (by rhai) for the same accounts, and finishes natively below.
#[test]
fn loops_meet_the_operation_limit_where_rhai_does() {
    let k = CORPUS.iter().position(|e| e.name == "unbounded_loop_hits_the_limit").unwrap();
    let e = &CORPUS[k];
    let (fast, slow) = (load(k, e, true), load(k, e, false));
    let accounts: Vec<serde_json::Value> = [0.0, 10.0, 300.0, 2000.0, 1e6]
        .iter()
        .enumerate()
        .map(|(i, rev)| {
            json!({ "id": format!("a{i}"), "as_of": "2026-11-01",
                "fields": { "revenue_12m": rev, "seats": 1, "open_tickets": 0, "region": "emea", "industry": "x" } })
        })
        .collect();
    let recs = common::records(&accounts);
    let a = serde_json::to_value(engine::evaluate(&fast, &recs)).unwrap();
    let b = serde_json::to_value(engine::evaluate(&slow, &recs)).unwrap();
    assert_eq!(a, b);
    let codes: Vec<String> = a
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["error"]["code"].as_str().unwrap_or("ok").to_string())
        .collect();
    assert_eq!(codes, ["ok", "ok", "ok", "operation_limit", "operation_limit"]);
}

#[path = "../examples/gen_portfolio.rs"]
#[allow(dead_code)]
mod gen_portfolio;

/// The corpus policy the benches time (tests/corpus/enterprise-loops): the enterprise policy
/// with its script written with a mutable local, a loop, `break` and a `switch`. It runs
/// natively, agrees with rhai, and decides exactly as policies/enterprise does.
#[test]
fn the_loops_policy_is_native_agrees_with_rhai_and_with_enterprise() {
    let dir = common::root().join("tests/corpus/enterprise-loops");
    let fast = policy::load_dir(&dir, &Limits::default()).unwrap();
    let slow = policy::load_dir(&dir, &Limits { native: false, ..Limits::default() }).unwrap();
    let enterprise = common::shipped("enterprise");
    let slow_parts: Vec<_> = fast.speed().into_iter().filter(|s| s.rhai.is_some()).collect();
    assert!(slow_parts.is_empty(), "{slow_parts:?}");
    let recs = tierwise::snapshot::read_jsonl(&gen_portfolio::jsonl(400, gen_portfolio::SEED));
    let a = serde_json::to_string(&engine::evaluate_portfolio(&fast, &recs)).unwrap();
    let b = serde_json::to_string(&engine::evaluate_portfolio(&slow, &recs)).unwrap();
    assert!(a == b, "native and rhai differ");
    let c = serde_json::to_string(&engine::evaluate_portfolio(&enterprise, &recs)).unwrap();
    let c = c
        .replace(&enterprise.hash, &fast.hash)
        .replace("\"enterprise\"", "\"enterprise-loops\"")
        .replace("policy `enterprise`", "policy `enterprise-loops`");
    let at = a.bytes().zip(c.bytes()).position(|(x, y)| x != y).unwrap_or(a.len().min(c.len()));
    assert!(
        a == c,
        "differs from enterprise at byte {at}: {:?} vs {:?}",
        &a[at.saturating_sub(200)..(at + 100).min(a.len())],
        &c[at.saturating_sub(200)..(at + 100).min(c.len())]
    );
}

/// `tierwise check --explain-speed` names each rule and template that runs through rhai, and
/// the construct that keeps it there; the criterion also gets a lint `info`.
#[test]
fn check_explains_what_runs_through_rhai() {
    let toml = r#"[policy]
description = "one script the fast path does not cover"
[inputs]
revenue_12m = { type = "number", min = 0 }
seats = { type = "integer", min = 0 }
region = { type = "string" }
[[score.criteria]]
id = "revenue"
weight = 1.0
expr = "revenue_12m / 100000.0"
[[score.criteria]]
id = "seats"
weight = 1.0
script = "seat_points"
[[tiers]]
id = "key"
min_score = 5.0
when = "region in [\"emea\", \"amer\"]"
[[tiers]]
id = "other"
[[alerts]]
id = "big"
severity = "info"
when = "seats > 100"
message = "{seats} seats in {#{emea: \"Europe\"}[region] ?? region}"
"#;
    let script = "fn seat_points(account) {\n    let points = [1.0, 4.0, 9.0];\n    points[min(account.seats / 100, 2)]\n}\n";
    let (_tmp, dir) =
        common::write_policy("speedy", &[("policy.toml", toml), ("scripts/points.rhai", script)]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tierwise"))
        .args(["check", "--explain-speed"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap().replace(&dir.display().to_string(), "DIR");
    let stdout = stdout
        .lines()
        .map(|l| if l.starts_with("ok ") { "ok    speedy HASH ..." } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    insta::assert_snapshot!("explain_speed", format!("{stdout}\n--- stderr\n{stderr}"));
}
