//! What-if (issue 6): the shipped enterprise policy over a generated book of 300 accounts,
//! against four candidates — a raised key threshold, a lowered per-manager max, a new
//! criterion (a candidate folder) and a changed alert threshold — as table, markdown and JSON;
//! overrides by path; the command line's exit codes; and two properties: a policy compared with
//! itself gives an empty diff, and a diff agrees account by account with the two evaluations.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

#[path = "../examples/gen_portfolio.rs"]
#[allow(dead_code)]
mod gen_portfolio;

use common::*;
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;
use std::sync::OnceLock;
use tierwise::engine::{Outcome, evaluate_portfolio};
use tierwise::policy::overrides::{self, Override};
use tierwise::policy::{self, Files, Policy};
use tierwise::script::Limits;
use tierwise::snapshot::Record;
use tierwise::whatif::{self, PolicyDiff, render};

const BOOK: usize = 300;

fn baseline() -> &'static Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    P.get_or_init(|| shipped("enterprise"))
}

fn enterprise_files() -> Files {
    policy::read_dir(&root().join("policies/enterprise")).unwrap()
}

/// The generated book, as the CLI reads it (JSON lines).
fn book() -> &'static [Record] {
    static B: OnceLock<Vec<Record>> = OnceLock::new();
    B.get_or_init(|| {
        tierwise::snapshot::read_jsonl(&gen_portfolio::jsonl(BOOK, gen_portfolio::SEED))
    })
}

/// The baseline's files with `--set` overrides, compiled like the CLI does.
fn with_overrides(sets: &[&str]) -> Policy {
    let list: Vec<Override> = sets.iter().map(|s| overrides::parse_set(s).unwrap()).collect();
    let files = overrides::apply_files(&enterprise_files(), &list).unwrap();
    policy::load_files("enterprise", &files, &Limits::default())
        .unwrap_or_else(|r| panic!("candidate did not load:\n{r}"))
}

/// The three renderings of one scenario.
fn snapshot_all(name: &str, d: &PolicyDiff, ctx: &render::Context) {
    insta::assert_snapshot!(format!("{name}_table"), render::table(d, ctx, 12));
    insta::assert_snapshot!(format!("{name}_markdown"), render::markdown(d, ctx, 12));
    insta::assert_json_snapshot!(format!("{name}_json"), d);
}

fn ctx(sets: &[&str]) -> render::Context {
    render::Context {
        overrides: sets.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn raised_key_threshold() {
    let sets = ["tiers.key.min_score=7.0"];
    let d = whatif::diff(baseline(), &with_overrides(&sets), book());
    // Fewer accounts qualify for key: some key accounts are demoted, and the cap (10% of the
    // book) that kept some qualified accounts out of key under the baseline now has room.
    assert!(d.summary.demoted > 0);
    assert!(d.tiers.iter().any(|t| t.id == "key" && t.after < t.before));
    assert_eq!(d.summary.scores_changed, 0, "a threshold changes no score");
    snapshot_all("raised_key_threshold", &d, &ctx(&sets));
}

#[test]
fn lowered_per_manager_max() {
    let sets = ["capacity.per_manager.max=6"];
    let d = whatif::diff(baseline(), &with_overrides(&sets), book());
    // `flag` keeps every tier: only managers and the portfolio alert change.
    assert_eq!(d.summary.promoted + d.summary.demoted, 0);
    assert!(d.summary.managers_newly_over > 0);
    assert!(d.portfolio_alerts.added.iter().any(|a| &*a.id == "kam_overloaded"));
    snapshot_all("lowered_per_manager_max", &d, &ctx(&sets));
}

#[test]
fn new_criterion_in_a_candidate_folder() {
    // A cadence criterion: QBRs held on time count toward the score.
    let mut files = enterprise_files();
    let text = String::from_utf8(files["policy.toml"].clone()).unwrap();
    let anchor = "script = \"account_health\"\n";
    assert!(text.contains(anchor));
    let text = text.replacen(
        anchor,
        &format!("{anchor}\n[[score.criteria]]\nid = \"cadence\"\nweight = 2.0\nexpr = \"if last_qbr == () {{ 1.0 }} else if days_since(last_qbr) <= 92 {{ 10.0 }} else {{ 4.0 }}\"\n"),
        1,
    );
    files.insert("policy.toml".into(), text.into_bytes());
    let candidate = policy::load_files("enterprise", &files, &Limits::default())
        .unwrap_or_else(|r| panic!("{r}"));
    let d = whatif::diff(baseline(), &candidate, book());
    assert!(d.summary.scores_changed > 0);
    let c = render::Context {
        overrides: Vec::new(),
        candidate_dir: Some("candidate/enterprise".into()),
        ..Default::default()
    };
    snapshot_all("new_criterion", &d, &c);
}

#[test]
fn changed_alert_threshold() {
    let sets = ["alerts.nps_drop.when=\"nps != () && nps_prev != () && nps_prev - nps >= 10\""];
    let d = whatif::diff(baseline(), &with_overrides(&sets), book());
    // Alerts only: nobody moves, some accounts raise `nps_drop` now.
    assert!(!d.has_moves());
    assert!(d.summary.alerts_added > 0 && d.summary.alerts_removed == 0);
    assert!(
        d.accounts
            .iter()
            .all(|a| a.from == a.to && a.alerts_added.iter().all(|x| &*x.id == "nps_drop"))
    );
    snapshot_all("changed_alert_threshold", &d, &ctx(&sets));
}

#[test]
fn a_newly_required_input_makes_accounts_fail_under_the_candidate_only() {
    let sets = ["inputs.share_of_wallet.optional=false"];
    let d = whatif::diff(baseline(), &with_overrides(&sets), book());
    assert!(d.summary.newly_failing > 0);
    assert!(d.newly_failing.iter().all(|f| f.error.code == "missing_field"));
    assert!(d.has_moves());
}

// ---------------------------------------------------------------------------------------------
// Overrides

const TOML: &str = r#"[policy]
version = "1"   # kept

[[score.criteria]]
id = "revenue"
weight = 3.0
steps = { input = "revenue_12m", at = [1.0, 2.0] }

[[tiers]]
id = "key"
min_score = 6.0 # the key line

[[tiers]]
id = "managed"

[capacity]
tiers = ["key"]
per_manager = { min = 5, max = 25 }
"#;

fn set(text: &str, sets: &[&str]) -> Result<String, String> {
    let list: Vec<Override> = sets.iter().map(|s| overrides::parse_set(s).unwrap()).collect();
    overrides::apply(text, &list)
        .map_err(|e| e.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))
}

#[test]
fn an_override_changes_one_value_and_keeps_the_layout() {
    let out = set(
        TOML,
        &[
            "tiers.key.min_score=7",
            "capacity.per_manager.max=20",
            "score.criteria[id=revenue].weight=5",
        ],
    )
    .unwrap();
    // Same lines, so the candidate's diagnostics point where the author expects.
    assert_eq!(out.lines().count(), TOML.lines().count());
    assert!(out.contains("min_score = 7.0 # the key line"), "{out}");
    assert!(out.contains("per_manager = { min = 5, max = 20 }"), "{out}");
    assert!(out.contains("weight = 5\n") || out.contains("weight = 5.0\n"), "{out}");
    assert!(out.contains("version = \"1\"   # kept"));
    // By position, and a bare word as a string.
    let out =
        set(TOML, &["tiers[1].id=standard", "score.criteria.revenue.steps.at=[1.0, 3.0]"]).unwrap();
    assert!(out.contains("id = \"standard\""), "{out}");
    assert!(out.contains("at = [1.0, 3.0]"), "{out}");
}

#[test]
fn an_absent_field_of_the_schema_is_added_and_anything_else_is_an_error() {
    let out = set(TOML, &["tiers.key.max_count=30", "capacity.total_max=50"]).unwrap();
    assert!(out.contains("max_count = 30"), "{out}");
    assert!(out.contains("total_max = 50"), "{out}");
    let errors = set(
        TOML,
        &[
            "tiers.kee.min_score=7",
            "capacity.per_manger.max=3",
            "tiers.key.min_scor=1",
            "capacity.tiers.x=1",
            "tiers.key=1",
            "policy..version=2",
        ],
    )
    .unwrap_err();
    insta::assert_snapshot!(errors, @r"
    override `tiers.kee.min_score`: no element of `tiers` has id `kee`
      help: did you mean `key`?
    override `capacity.per_manger.max`: no key `per_manger` in `capacity`
      help: did you mean `per_manager`?
    override `tiers.key.min_scor`: no key `min_scor` in `tiers.key`
      help: did you mean `min_score`?
    override `capacity.tiers.x`: no element of `capacity.tiers` has id `x`
    override `tiers.key`: `tiers.key` is a table: set one of its keys
    override `policy..version`: bad path: empty segment
    ");
    assert!(overrides::parse_set("tiers.key.min_score").is_err());
}

#[test]
fn json_values_become_toml_values() {
    let v = overrides::value_from_json(&json!(["strategic", "key"])).unwrap();
    assert_eq!(v.to_string(), r#"["strategic", "key"]"#);
    assert_eq!(overrides::value_from_json(&json!(7)).unwrap().to_string(), "7");
    assert!(overrides::value_from_json(&Value::Null).is_err());
    // As the HTTP dry run will send them.
    let map = json!({ "tiers.key.min_score": 7, "capacity.per_manager.max": 20 });
    let list = overrides::from_json_map(map.as_object().unwrap()).unwrap();
    let out = overrides::apply(TOML, &list).unwrap();
    assert!(out.contains("min_score = 7.0 # the key line") && out.contains("max = 20 }"), "{out}");
}

#[test]
fn a_csv_book_is_read_for_each_policy() {
    // CSV cells are typed by the policy's inputs; the candidate is read with its own.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("book.csv");
    let mut csv = Vec::new();
    gen_portfolio::write_accounts(&mut csv, 150, gen_portfolio::SEED, gen_portfolio::Format::Csv)
        .unwrap();
    std::fs::write(&file, &csv).unwrap();
    let jsonl = tmp.path().join("book.jsonl");
    std::fs::write(&jsonl, gen_portfolio::jsonl(150, gen_portfolio::SEED)).unwrap();
    let run = |f: &std::path::Path| {
        tierwise(&[
            "diff",
            "--baseline",
            "policies/enterprise",
            "--set",
            "tiers.key.min_score=6.5",
            "--accounts",
            f.to_str().unwrap(),
            "--format",
            "json",
        ])
    };
    let (a, b) = (run(&file), run(&jsonl));
    assert_eq!(a.status.code(), Some(0), "{}", String::from_utf8_lossy(&a.stderr));
    // The same accounts give the same diff whichever format carries them.
    assert_eq!(String::from_utf8_lossy(&a.stdout), String::from_utf8_lossy(&b.stdout));
}

// ---------------------------------------------------------------------------------------------
// Command line

fn tierwise(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tierwise"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

#[test]
fn the_command_line_exits_1_on_moves_only_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("book.jsonl");
    std::fs::write(&file, gen_portfolio::jsonl(120, gen_portfolio::SEED)).unwrap();
    let f = file.to_str().unwrap();
    let base = ["diff", "--baseline", "policies/enterprise", "--accounts", f];

    let out = tierwise(&[&base[..], &["--set", "tiers.key.min_score=7.0"]].concat());
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("transitions"));
    let out = tierwise(
        &[&base[..], &["--set", "tiers.key.min_score=7.0", "--fail-on-moves", "--format", "json"]]
            .concat(),
    );
    assert_eq!(out.status.code(), Some(1));
    let d: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(d["summary"]["demoted"].as_u64().unwrap() > 0);
    // The same policy as candidate: nothing moves.
    let out = tierwise(
        &[
            &base[..],
            &["--candidate", "policies/enterprise", "--fail-on-moves", "--format", "markdown"],
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("This change moves no account and changes no decision.")
    );
    // Overrides on top of a candidate folder: here the same folder, so the same candidate.
    let folder = tierwise(
        &[
            &base[..],
            &[
                "--candidate",
                "policies/enterprise",
                "--set",
                "tiers.key.min_score=7.0",
                "--format",
                "json",
            ],
        ]
        .concat(),
    );
    let baseline =
        tierwise(&[&base[..], &["--set", "tiers.key.min_score=7.0", "--format", "json"]].concat());
    assert_eq!(folder.stdout, baseline.stdout);
    // Usage: no candidate at all, a typo in a path.
    assert_eq!(tierwise(&base).status.code(), Some(2));
    let out = tierwise(&[&base[..], &["--set", "tiers.kee.min_score=7"]].concat());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean `key`?"));
    // A candidate that does not compile: the command ran and found a problem.
    let out = tierwise(&[&base[..], &["--set", "capacity.per_manager.max=2"]].concat());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("error[bad_capacity]"));
}

// ---------------------------------------------------------------------------------------------
// Properties

fn candidate() -> &'static Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    P.get_or_init(|| {
        with_overrides(&[
            "tiers.key.min_score=6.5",
            "capacity.per_manager.min=1",
            "capacity.per_manager.max=3",
            "score.criteria.potential.weight=4",
            "alerts.key_candidate.when=\"score >= 5.0\"",
        ])
    })
}

fn account() -> impl Strategy<Value = Value> {
    let money = || prop_oneof![3 => prop::sample::select(vec![0.0, 60_000.0, 300_000.0, 1_200_000.0, 6_000_000.0]), 1 => 0.0..8_000_000.0f64];
    (
        (money(), money(), 0.0..=1.0f64, prop::option::of(0.0..=1.0f64)),
        (
            prop::sample::select(vec!["tactical", "cooperative", "interdependent", "strategic"]),
            1i64..=5,
            prop::option::of(-100i64..=100),
            prop::option::of(-100i64..=100),
        ),
        (
            prop::option::of(prop::sample::select(vec!["amy", "bo", "cy"])),
            prop::option::of(prop::sample::select(vec!["strategic", "key", "managed"])),
            0u8..30,
        ),
    )
        .prop_map(
            |(
                (rev, pot, margin, wallet),
                (rel, fit, nps, nps_prev),
                (manager, current, broken),
            )| {
                let mut fields = Map::new();
                fields.insert("revenue_12m".into(), json!(rev));
                fields.insert("potential".into(), json!(pot));
                fields.insert("gross_margin".into(), json!(margin));
                fields.insert("share_of_wallet".into(), json!(wallet));
                fields.insert("relationship".into(), json!(rel));
                fields.insert("strategic_fit".into(), json!(if broken == 0 { 9 } else { fit }));
                fields.insert("nps".into(), json!(nps));
                fields.insert("nps_prev".into(), json!(nps_prev));
                let mut a =
                    json!({ "as_of": "2026-11-01", "tier_since": "2025-01-01", "fields": fields });
                if let Some(m) = manager {
                    a["manager"] = json!(m);
                }
                if let Some(c) = current {
                    a["current_tier"] = json!(c);
                }
                a
            },
        )
}

fn portfolio() -> impl Strategy<Value = Vec<Record>> {
    prop::collection::vec(account(), 0..60).prop_map(|v| {
        let accounts: Vec<Value> = v
            .into_iter()
            .enumerate()
            .map(|(i, mut a)| {
                a["id"] = json!(format!("a{:03}", (i * 7919) % 1000));
                a
            })
            .collect();
        records(&accounts)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_policy_compared_with_itself_changes_nothing(book in portfolio()) {
        for p in [baseline(), candidate()] {
            let d = whatif::diff(p, p, &book);
            prop_assert!(d.is_empty(), "{}", serde_json::to_string(&d).unwrap());
            prop_assert_eq!(d.summary.scores_changed, 0);
            // Only the diagonal of the matrix is filled.
            for (i, row) in d.transitions.counts.iter().enumerate() {
                for (j, c) in row.iter().enumerate() {
                    prop_assert!(i == j || *c == 0);
                }
            }
        }
    }

    #[test]
    fn a_diff_agrees_with_the_two_evaluations(book in portfolio()) {
        let (a, b) = (baseline(), candidate());
        let d = whatif::diff(a, b, &book);
        let (ra, rb) = (evaluate_portfolio(a, &book), evaluate_portfolio(b, &book));
        let mut listed = BTreeSet::new();
        let mut decided_both = 0;
        for (x, y) in ra.accounts.iter().zip(&rb.accounts) {
            if let (Outcome::Decision(x), Outcome::Decision(y)) = (x, y) {
                decided_both += 1;
                let ids = |v: &[tierwise::engine::AlertOut]| v.iter().map(|a| a.id.clone()).collect::<BTreeSet<_>>();
                let differs = x.tier != y.tier || x.change != y.change || ids(&x.alerts) != ids(&y.alerts);
                let entry = d.accounts.iter().find(|e| e.id == x.id);
                prop_assert_eq!(differs, entry.is_some(), "account {}", x.id);
                if let Some(e) = entry {
                    prop_assert_eq!(e.from.as_str(), &*x.tier);
                    prop_assert_eq!(e.to.as_str(), &*y.tier);
                    prop_assert_eq!(e.score_before, x.score);
                    prop_assert_eq!(e.score_after, y.score);
                    prop_assert_eq!((e.change_before, e.change_after), (x.change, y.change));
                    listed.insert(x.id.clone());
                }
            }
        }
        prop_assert_eq!(listed.len(), d.accounts.len());
        prop_assert_eq!(d.summary.decided_both, decided_both);
        // Counts per tier are the two summaries'; the matrix adds up to them.
        for t in &d.tiers {
            let before = ra.summary.tiers.iter().find(|x| x.id == t.id).map_or(0, |x| x.count);
            let after = rb.summary.tiers.iter().find(|x| x.id == t.id).map_or(0, |x| x.count);
            prop_assert_eq!((t.before, t.after), (before, after));
        }
        let total: u64 = d.transitions.counts.iter().flatten().sum();
        prop_assert_eq!(total, decided_both);
    }

    #[test]
    fn the_order_of_the_accounts_changes_no_diff(book in portfolio()) {
        let mut reversed = book.clone();
        reversed.reverse();
        let strip = |mut d: PolicyDiff| {
            // A failing record's position is where it is in the input, rightly.
            for f in d.newly_failing.iter_mut().chain(d.newly_decided.iter_mut()) {
                f.record = 0;
                f.error.record = None;
            }
            serde_json::to_string(&d).unwrap()
        };
        prop_assert_eq!(strip(whatif::diff(baseline(), candidate(), &book)), strip(whatif::diff(baseline(), candidate(), &reversed)));
    }
}
