//! Caps, `total_max` and manager capacity never break a protection (docs/caps.md; settled
//! details): properties over generated books of hundreds of accounts, snapshots of a book that
//! ends over its cap and of the two `cap_priority` orders, and the what-if attribution of moves
//! to scores or to seats.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use proptest::prelude::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;
use tierwise::engine::{self, Change, Decision, Outcome, PortfolioResult};
use tierwise::policy::Policy;
use tierwise::whatif;

const AS_OF: &str = "2026-11-01";

const HEAD: &str = r#"
[inputs]
x = { type = "number" }
flag = { type = "bool", default = false }

[score]
[[score.criteria]]
id = "x"
weight = 1.0
expr = "x"
"#;

/// Four tiers with caps, every protection movement has, and capacity over gold + silver.
fn protected_policy(priority: &str, overflow: &str) -> Policy {
    load_inline(
        &format!(
            r#"{HEAD}
[[tiers]]
id = "gold"
min_score = 8.0
max_share = 0.05
cap_priority = "{priority}"

[[tiers]]
id = "silver"
min_score = 6.0
max_share = 0.15
max_count = 40
cap_priority = "{priority}"

[[tiers]]
id = "bronze"
min_score = 4.0
max_share = 0.3
cap_priority = "{priority}"

[[tiers]]
id = "basic"

[movement]
promote_margin = 0.25
demote_margin = 0.5
min_tenure_days = 90
max_steps = 1

[[movement.holds]]
id = "flagged"
when = "flag"
reason = "flagged by the account team"

[capacity]
tiers = ["gold", "silver"]
per_manager = {{ min = 2, max = 9 }}
total_max = 45
on_overflow = "{overflow}"
priority = "{priority}"
"#
        ),
        &[],
    )
}

/// (priority, on_overflow) -> policy, compiled once per test binary.
fn protected(i: usize) -> &'static Policy {
    static P: OnceLock<Vec<Policy>> = OnceLock::new();
    &P.get_or_init(|| {
        let mut v = Vec::new();
        for pr in ["incumbents", "score"] {
            for ov in ["demote", "flag"] {
                v.push(protected_policy(pr, ov));
            }
        }
        v
    })[i]
}

/// Caps with `cap_priority = "score"` and nothing that protects an account.
fn strict_policy() -> &'static Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    P.get_or_init(|| {
        load_inline(
            &format!(
                r#"{HEAD}
[[tiers]]
id = "gold"
min_score = 8.0
max_share = 0.05
cap_priority = "score"

[[tiers]]
id = "silver"
min_score = 6.0
max_count = 30
cap_priority = "score"

[[tiers]]
id = "bronze"
min_score = 3.0
max_share = 0.25
cap_priority = "score"

[[tiers]]
id = "basic"
"#
            ),
            &[],
        )
    })
}

const TIERS: [&str; 4] = ["gold", "silver", "bronze", "basic"];

fn idx(t: &str) -> usize {
    TIERS.iter().position(|x| *x == t).unwrap()
}

/// One account: a score on half points (ties are common), maybe a current tier, a tier_since
/// inside or outside the 90-day tenure, maybe the hold's flag, one of six managers or none.
fn account() -> impl Strategy<Value = Value> {
    (
        2u32..=20,
        prop::option::of(0usize..4),
        prop::bool::ANY,
        prop::bool::weighted(0.15),
        prop::option::of(0u32..6),
    )
        .prop_map(|(half, cur, recent, flag, mgr)| {
            let mut a = json!({
                "id": "",
                "as_of": AS_OF,
                "fields": { "x": f64::from(half) / 2.0, "flag": flag },
            });
            if let Some(c) = cur {
                a["current_tier"] = json!(TIERS[c]);
                a["tier_since"] = json!(if recent { "2026-09-01" } else { "2025-01-01" });
            }
            if let Some(m) = mgr {
                a["manager"] = json!(format!("m{m}"));
            }
            a
        })
}

/// A book of `lo..hi` accounts with unique ids, and the same book shuffled.
fn books(lo: usize, hi: usize) -> impl Strategy<Value = (Vec<Value>, Vec<Value>)> {
    prop::collection::vec(account(), lo..hi)
        .prop_map(|mut v| {
            for (i, a) in v.iter_mut().enumerate() {
                a["id"] = json!(format!("a{i:03}"));
            }
            v
        })
        .prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle()))
}

fn limit(max_share: Option<f64>, max_count: Option<u64>, n: u64) -> Option<u64> {
    let by_share = max_share.map(|s| (s * n as f64 + 1e-9).floor() as u64);
    match (by_share, max_count) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn by_id(r: &PortfolioResult) -> BTreeMap<String, String> {
    r.accounts
        .iter()
        .map(|o| (o.id().unwrap().to_string(), serde_json::to_string(o).unwrap()))
        .collect()
}

fn decisions(r: &PortfolioResult) -> Vec<&Decision> {
    r.accounts.iter().filter_map(Outcome::decision).collect()
}

fn check_protections(
    p: &Policy,
    accounts: &[Value],
    shuffled: &[Value],
) -> Result<(), TestCaseError> {
    let r = engine::evaluate_portfolio(p, &records(accounts));
    // Movement alone, account by account: who movement held.
    let alone = engine::evaluate(p, &records(accounts));
    let held: HashMap<&str, bool> = alone
        .iter()
        .filter_map(Outcome::decision)
        .map(|d| (d.id.as_str(), d.change == Change::Hold))
        .collect();
    let ds = decisions(&r);
    prop_assert_eq!(ds.len(), accounts.len());
    let n = ds.len() as u64;
    // May `d` not go from tier `t` down to `lower`?
    let fixed = |d: &Decision, lower: usize| {
        held[d.id.as_str()] || d.previous_tier.as_deref().is_some_and(|c| lower > idx(c) + 1)
    };
    for d in &ds {
        let t = idx(&d.tier);
        if let Some(c) = d.previous_tier.as_deref() {
            if held[d.id.as_str()] {
                prop_assert_eq!(&*d.tier, c, "{} was held in {} but ends in {}", d.id, c, d.tier);
                prop_assert_eq!(d.change, Change::Hold);
            }
            prop_assert!(
                t <= idx(c) + 1,
                "{} ends {} from {}: more than max_steps",
                d.id,
                d.tier,
                c
            );
        }
    }
    for (ti, tier) in p.tiers.iter().enumerate() {
        let Some(lim) = limit(tier.max_share, tier.max_count, n) else { continue };
        let members: Vec<&&Decision> = ds.iter().filter(|d| idx(&d.tier) == ti).collect();
        let count = members.len() as u64;
        let listed = r.summary.over_cap.iter().find(|o| o.tier == tier.id);
        if count > lim {
            for d in &members {
                prop_assert!(fixed(d, ti + 1), "{} is not protected but {} is over", d.id, tier.id);
            }
            let o = listed.unwrap_or_else(|| panic!("{} is over its cap but not listed", tier.id));
            prop_assert_eq!((o.limit, o.count), (lim, count));
            let protected =
                members.iter().filter(|d| d.reasons.iter().any(|r| r.code == "cap_protected"));
            prop_assert_eq!(protected.count() as u64, count - lim);
        } else {
            prop_assert!(
                listed.is_none(),
                "{} is listed over its cap at {} <= {}",
                tier.id,
                count,
                lim
            );
        }
    }
    let cap = p.capacity.as_ref().unwrap();
    let in_book: Vec<&&Decision> = ds.iter().filter(|d| cap.in_book[idx(&d.tier)]).collect();
    if in_book.len() as u64 > cap.total_max.unwrap() {
        for d in &in_book {
            prop_assert!(fixed(d, cap.outside), "{} is not protected but total_max is over", d.id);
        }
    }
    // Input order changes nothing.
    let s = engine::evaluate_portfolio(p, &records(shuffled));
    prop_assert_eq!(by_id(&r), by_id(&s));
    prop_assert_eq!(
        serde_json::to_string(&r.summary).unwrap(),
        serde_json::to_string(&s.summary).unwrap()
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn caps_total_max_and_capacity_never_break_a_protection(
        (accounts, shuffled) in books(150, 400),
        which in 0usize..4,
    ) {
        check_protections(protected(which), &accounts, &shuffled)?;
    }

    #[test]
    fn score_priority_without_protections_is_a_strict_top_n(
        (accounts, shuffled) in books(150, 400),
    ) {
        let p = strict_policy();
        let r = engine::evaluate_portfolio(p, &records(&accounts));
        // Reference: qualified tier by score, then best tier first keep the top `limit` by
        // score (id breaking ties) and pass the rest down.
        let n = accounts.len() as u64;
        let mut at: Vec<(f64, String, usize)> = accounts
            .iter()
            .map(|a| {
                let x = a["fields"]["x"].as_f64().unwrap();
                let q = p.tiers.iter().position(|t| x >= t.min_score).unwrap_or(3);
                (x, a["id"].as_str().unwrap().to_string(), q)
            })
            .collect();
        for (ti, tier) in p.tiers.iter().enumerate().take(3) {
            let Some(lim) = limit(tier.max_share, tier.max_count, n) else { continue };
            let mut pool: Vec<usize> = (0..at.len()).filter(|&i| at[i].2 == ti).collect();
            pool.sort_by(|&a, &b| at[b].0.total_cmp(&at[a].0).then(at[a].1.cmp(&at[b].1)));
            for &i in pool.iter().skip(lim as usize) {
                at[i].2 = ti + 1;
            }
        }
        let want: BTreeMap<&str, &str> = at.iter().map(|(_, id, t)| (id.as_str(), TIERS[*t])).collect();
        let got: BTreeMap<&str, &str> = decisions(&r).iter().map(|d| (d.id.as_str(), &*d.tier)).collect();
        prop_assert_eq!(got, want);
        prop_assert!(r.summary.over_cap.is_empty());
        let s = engine::evaluate_portfolio(p, &records(&shuffled));
        prop_assert_eq!(by_id(&r), by_id(&s));
    }
}

// --- snapshots -------------------------------------------------------------------------------

fn acc(id: &str, x: f64, cur: Option<&str>) -> Value {
    let mut a =
        json!({ "id": id, "as_of": AS_OF, "tier_since": "2025-01-01", "fields": { "x": x } });
    if let Some(c) = cur {
        a["current_tier"] = json!(c);
    }
    a
}

/// What a reviewer reads per account: where it was, where it ends, and the seat reasons.
fn seats(r: &PortfolioResult) -> Value {
    let accounts: Vec<Value> = decisions(r)
        .iter()
        .map(|d| {
            let why: Vec<String> = d
                .reasons
                .iter()
                .filter(|r| ["cap", "cap_protected", "total_max", "capacity"].contains(&r.code))
                .map(|r| format!("{}: {}", r.code, r.message))
                .collect();
            json!({
                "id": d.id,
                "score": d.score,
                "was": d.previous_tier,
                "tier": &*d.tier,
                "change": d.change.as_str(),
                "seat_reasons": why,
            })
        })
        .collect();
    json!({ "over_cap": r.summary.over_cap, "accounts": accounts })
}

#[test]
fn a_tier_ends_over_its_cap_when_its_protected_accounts_alone_exceed_it() {
    let p = load_inline(
        &format!(
            r#"{HEAD}
[[tiers]]
id = "gold"
min_score = 8.0
max_count = 1

[[tiers]]
id = "silver"
min_score = 5.0
max_count = 2

[[tiers]]
id = "bronze"

[movement]
demote_margin = 1.0
max_steps = 1

[[movement.holds]]
id = "flagged"
when = "flag"
reason = "flagged by the account team"
"#
        ),
        &[],
    );
    let mut flagged = acc("flagged", 4.0, Some("gold"));
    flagged["fields"]["flag"] = json!(true);
    let book = vec![
        acc("margin", 7.5, Some("gold")), // within gold's margin: held
        flagged,                          // below it, held by the hold
        acc("star", 9.5, None),           // new, the best score, but gold has no seat left
        acc("s1", 6.0, Some("silver")),
        acc("s2", 5.5, Some("silver")),
        acc("s3", 5.2, Some("gold")), // demoted one step to silver; bronze is two below gold
    ];
    let r = engine::evaluate_portfolio(&p, &records(&book));
    let tiers: Vec<(&str, &str, Change)> =
        decisions(&r).iter().map(|d| (d.id.as_str(), &*d.tier, d.change)).collect();
    assert_eq!(
        tiers,
        vec![
            ("margin", "gold", Change::Hold),
            ("flagged", "gold", Change::Hold),
            ("star", "bronze", Change::New),
            ("s1", "silver", Change::None),
            ("s2", "bronze", Change::Demote),
            ("s3", "silver", Change::Demote),
        ]
    );
    // gold: two held accounts for one seat, both stay (gold ends over its cap, `flagged` is
    // past the limit: cap_protected); `star` goes to silver. silver seats s3 first (bronze
    // would be two tiers below its current gold: max_steps 1), then its incumbent s1 6.0; the
    // incumbent s2 5.5 and the entrant `star` 9.5 go to bronze.
    assert_eq!(r.summary.over_cap.len(), 1);
    insta::assert_json_snapshot!("over_cap_book", seats(&r));
}

fn priority_policy(priority: &str) -> Policy {
    load_inline(
        &format!(
            r#"{HEAD}
[[tiers]]
id = "key"
min_score = 7.0
max_count = 3
cap_priority = "{priority}"

[[tiers]]
id = "standard"
"#
        ),
        &[],
    )
}

/// Three key accounts and three newcomers who score higher, for three seats.
fn contested() -> Vec<Value> {
    vec![
        acc("k1", 7.4, Some("key")),
        acc("k2", 7.2, Some("key")),
        acc("k3", 7.0, Some("key")),
        acc("n1", 9.0, None),
        acc("n2", 8.0, Some("standard")),
        acc("n3", 7.1, Some("standard")),
    ]
}

#[test]
fn incumbents_keep_their_seats_by_default_and_score_is_a_strict_top_n() {
    let incumbents =
        engine::evaluate_portfolio(&priority_policy("incumbents"), &records(&contested()));
    let score = engine::evaluate_portfolio(&priority_policy("score"), &records(&contested()));
    let key = |r: &PortfolioResult| -> Vec<String> {
        decisions(r).iter().filter(|d| &*d.tier == "key").map(|d| d.id.clone()).collect()
    };
    assert_eq!(key(&incumbents), vec!["k1", "k2", "k3"]);
    assert_eq!(key(&score), vec!["k1", "n1", "n2"]);
    // Absent is the default.
    let default = load_inline(
        &format!(
            "{HEAD}\n[[tiers]]\nid = \"key\"\nmin_score = 7.0\nmax_count = 3\n\n[[tiers]]\nid = \"standard\"\n"
        ),
        &[],
    );
    assert_eq!(
        key(&engine::evaluate_portfolio(&default, &records(&contested()))),
        key(&incumbents)
    );
    insta::assert_json_snapshot!("priority_incumbents", seats(&incumbents));
    insta::assert_json_snapshot!("priority_score", seats(&score));
}

#[test]
fn an_unknown_priority_is_a_load_error_with_a_did_you_mean() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("policy.toml"),
        format!(
            "{HEAD}\n[[tiers]]\nid = \"key\"\nmax_count = 3\ncap_priority = \"incumbent\"\n\n[[tiers]]\nid = \"rest\"\n\n[capacity]\ntiers = [\"key\"]\ntotal_max = 3\npriority = \"scores\"\n"
        ),
    )
    .unwrap();
    let err = tierwise::policy::load_dir(dir.path(), &tierwise::script::Limits::default())
        .unwrap_err()
        .to_string();
    insta::assert_snapshot!(
        "unknown_priority",
        err.replace(&dir.path().display().to_string(), "<dir>")
    );
}

// --- what-if ---------------------------------------------------------------------------------

#[test]
fn a_diff_tells_seats_a_cap_freed_from_moves_that_come_from_scores() {
    let policy = |gold: f64| {
        load_inline(
            &format!(
                r#"{HEAD}
[[tiers]]
id = "gold"
min_score = {gold}
max_count = 2

[[tiers]]
id = "silver"
min_score = 5.0

[[tiers]]
id = "bronze"
"#
            ),
            &[],
        )
    };
    let book = vec![
        acc("g1", 9.5, Some("gold")),
        acc("g2", 8.2, Some("gold")), // below a raised bar of 8.5: demoted by its score
        acc("e1", 9.0, Some("silver")), // capped out of gold under the baseline; takes g2's seat
        acc("e2", 8.8, Some("silver")), // capped under both
        acc("s1", 6.0, Some("silver")),
    ];
    let d = whatif::diff(&policy(8.0), &policy(8.5), &records(&book));
    let causes: Vec<(&str, &str, &str, &str)> = d
        .accounts
        .iter()
        .map(|a| {
            (a.id.as_str(), a.from.as_str(), a.to.as_str(), a.cause.map_or("-", |c| c.as_str()))
        })
        .collect();
    assert_eq!(causes, vec![("e1", "silver", "gold", "seats"), ("g2", "gold", "silver", "score")]);
    assert_eq!((d.summary.seats_freed, d.summary.seats_taken, d.summary.moved_by_score), (1, 0, 1));
    let ctx = whatif::render::Context::default();
    insta::assert_snapshot!("diff_seats_markdown", whatif::render::markdown(&d, &ctx, 20));
    insta::assert_snapshot!("diff_seats_table", whatif::render::table(&d, &ctx, 20));
}

#[test]
fn a_priority_with_nothing_to_order_is_a_warning() {
    let p = load_inline(
        &format!(
            "{HEAD}\n[[tiers]]\nid = \"key\"\nmin_score = 7.0\ncap_priority = \"score\"\n\n[[tiers]]\nid = \"rest\"\n\n[capacity]\ntiers = [\"key\"]\npriority = \"score\"\n"
        ),
        &[],
    );
    let warnings: Vec<(&str, String)> =
        p.warnings.iter().map(|w| (w.code, w.place.rule.clone().unwrap_or_default())).collect();
    assert_eq!(
        warnings,
        vec![
            ("priority_unused", "tiers.key".to_string()),
            ("priority_unused", "capacity".to_string())
        ]
    );
}
