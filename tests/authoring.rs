//! The traps a new rev-ops user fell into writing a policy from the README (issue 22), each
//! with the behaviour that replaced it: exports read as they arrive (Salesforce/Excel
//! booleans, padded cells, no `as_of`, CRM column names), lints that catch the mistake at
//! load, test failures that show the decision, and the HTTP door for CSV.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::process::{Command, Output};
use tierwise::engine::{self, Outcome};
use tierwise::snapshot::{self, Format, ReadOptions};

fn tierwise(args: &[&str], dir: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tierwise")).args(args).current_dir(dir).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A small program: a bool from the CRM, a number, an integer, a one_of, CRM column names.
const KAM: &str = r#"
[policy]
description = "authoring traps"
version = "a1"

[inputs]
revenue_12m = { type = "number", min = 0 }
seats = { type = "integer", min = 0 }
strategic = { type = "bool", default = false }
segment = { type = "string", one_of = ["smb", "mid", "enterprise"] }
nps = { type = "integer", min = -100, max = 100, optional = true }

[columns]
id = "Account ID"
manager = "Account Owner"
revenue_12m = "Annual Revenue"

[score]
[[score.criteria]]
id = "revenue"
weight = 1.0
steps = { input = "revenue_12m", at = [100000.0, 1000000.0] }

[[score.criteria]]
id = "strategic"
weight = 1.0
expr = "if strategic { 10.0 } else { 1.0 }"

[[tiers]]
id = "key"
min_score = 7.0

[[tiers]]
id = "base"
"#;

/// What each account got: its tier, or its error's code and message.
fn outcomes(policy: &tierwise::policy::Policy, records: &[snapshot::Record]) -> Value {
    let out = engine::evaluate(policy, records);
    Value::Array(
        out.iter()
            .map(|o| match o {
                Outcome::Decision(d) => json!({ "id": d.id, "tier": d.tier, "score": d.score }),
                Outcome::Error { id, error } => {
                    json!({ "id": id, "error": error.code, "message": error.message })
                }
            })
            .collect(),
    )
}

#[test]
fn a_salesforce_export_reads_as_it_is() {
    let p = load_inline(KAM, &[]);
    // Excel's TRUE/FALSE, a CRM's Yes/No and 1/0, cells padded with spaces, CRM column names,
    // no `as_of` column, a column the policy does not read and one close to a name it does.
    let csv = "Account ID,Account Owner, Annual Revenue ,seats,strategic,segment,NPS,Industry\n\
               a1, jane ,2000000, 12 ,TRUE, enterprise ,x,Retail\n\
               a2,jane,50000,3,No,smb,x,Retail\n\
               a3,bo,1500000,7,1,mid,x,Retail\n\
               a4,bo,\"1,250,000\",7,yes,mid,x,Retail\n\
               a5,bo,1000,2,maybe,mid,x,Retail\n";
    let opts = ReadOptions { as_of: Some("2026-11-01".into()), ..Default::default() };
    let read = snapshot::read_with(csv, Format::Csv, &p, &opts).unwrap();
    insta::assert_yaml_snapshot!(
        "salesforce_export",
        json!({
            "notes": read.notes,
            "accounts": outcomes(&p, &read.records),
            "manager_of_a1": read.records[0].as_ref().unwrap().manager,
        })
    );
}

#[test]
fn without_as_of_the_error_says_how_to_give_it_once() {
    let p = load_inline(KAM, &[]);
    let csv = "Account ID,Annual Revenue,seats,segment\na1,10,1,smb\n";
    let recs = snapshot::read(csv, Format::Csv, &p).unwrap();
    insta::assert_yaml_snapshot!("missing_as_of", outcomes(&p, &recs));
    // A snapshot's own `as_of` wins over the one given for the input.
    let jsonl = r#"{"id":"a","as_of":"2026-01-01","fields":{"revenue_12m":1,"seats":1,"segment":"smb"}}
{"id":"b","as_of":null,"fields":{"revenue_12m":1,"seats":1,"segment":"smb"}}"#;
    let opts = ReadOptions { as_of: Some("2026-11-01".into()), ..Default::default() };
    let recs = snapshot::read_with(jsonl, Format::Jsonl, &p, &opts).unwrap().records;
    let days: Vec<&str> = recs.iter().map(|r| r.as_ref().unwrap().as_of.as_str()).collect();
    assert_eq!(days, ["2026-01-01", "2026-11-01"]);
}

#[test]
fn columns_map_problems_are_named() {
    // A `[columns]` key that is not a name tierwise reads is a load error with its place.
    let bad = KAM.replace("revenue_12m = \"Annual Revenue\"", "revenue_12 = \"Annual Revenue\"");
    let (_t, dir) = write_policy("kam", &[("policy.toml", &bad)]);
    let report = match tierwise::policy::load_dir(&dir, &Default::default()) {
        Err(tierwise::policy::LoadError::Invalid(r)) => r.to_string(),
        other => panic!("expected a load error, got {other:?}"),
    };
    insta::assert_snapshot!("columns_unknown_target", report);
    // A header missing from the file: `id` stops the read, others are noted with a hint.
    let p = load_inline(KAM, &[]);
    let err = snapshot::read("Account Id,seats\na,1\n", Format::Csv, &p).unwrap_err();
    insta::assert_snapshot!("columns_no_id", err.to_string());
    let read = snapshot::read_with(
        "Account ID,Annual revenue,seats\na,1,1\n",
        Format::Csv,
        &p,
        &ReadOptions::default(),
    )
    .unwrap();
    insta::assert_yaml_snapshot!("columns_mapped_header_missing", read.notes);
}

#[test]
fn eval_takes_as_of_and_a_column_map_on_the_command_line() {
    let (tmp, dir) = write_policy("kam", &[("policy.toml", KAM)]);
    let book = tmp.path().join("book.csv");
    std::fs::write(
        &book,
        "Acct,Owner,Annual Revenue,seats,strategic,segment\na1,jane,2000000,3,TRUE,smb\n",
    )
    .unwrap();
    let map = tmp.path().join("map.toml");
    std::fs::write(&map, "[columns]\nid = \"Acct\"\nmanager = \"Owner\"\n").unwrap();
    let args = |extra: &[&str]| {
        let mut a = vec!["eval", "--policy", "kam", "--accounts", "book.csv", "--format", "jsonl"];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        tierwise(&a, tmp.path())
    };
    let _ = dir;
    let ok = run(&["--as-of", "2026-11-01", "--columns", "map.toml"]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    let d: Value = serde_json::from_str(text(&ok.stdout).trim()).unwrap();
    assert_eq!((d["id"].as_str(), d["tier"].as_str()), (Some("a1"), Some("key")));

    let bad_date = run(&["--as-of", "2026-13-01", "--columns", "map.toml"]);
    let bad_map_file = tmp.path().join("bad.toml");
    std::fs::write(&bad_map_file, "idd = \"Acct\"\n").unwrap();
    let bad_map = run(&["--as-of", "2026-11-01", "--columns", "bad.toml"]);
    let no_map = run(&["--as-of", "2026-11-01"]);
    insta::assert_snapshot!(
        "eval_read_options_errors",
        format!(
            "--as-of 2026-13-01: exit {:?}\n{}\n--columns bad.toml: exit {:?}\n{}\nno map: exit {:?}\n{}",
            bad_date.status.code(),
            text(&bad_date.stderr),
            bad_map.status.code(),
            text(&bad_map.stderr),
            no_map.status.code(),
            text(&no_map.stderr),
        )
    );
}

// ---------------------------------------------------------------------------------------
// HTTP

mod http_door {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, header};
    use http_body_util::BodyExt;
    use std::sync::Arc;
    use tierwise::decision_log::DecisionLog;
    use tierwise::http::{self, App, Config};
    use tierwise::script::Limits;
    use tierwise::service::Service;
    use tower::ServiceExt;

    /// The KAM policy served as the only (default) policy.
    pub fn router() -> (tempfile::TempDir, axum::Router) {
        let (tmp, dir) = write_policy("kam", &[("policy.toml", KAM)]);
        let service = Arc::new(Service::new(tmp.path(), Limits::default(), None));
        service.reload();
        let _ = dir;
        let app = App::new(service, Config::default(), DecisionLog::off());
        (tmp, http::app(app))
    }

    pub async fn post(
        router: &axum::Router,
        path: &str,
        content_type: &str,
        body: String,
    ) -> (u16, String) {
        let req = Request::post(path)
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .unwrap();
        let res = router.clone().oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Per account: id and tier, or id and error code.
    pub fn tiers(body: &str) -> Vec<String> {
        let v: Value = serde_json::from_str(body).unwrap();
        v["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| match a["decision"]["tier"].as_str().or(a["tier"].as_str()) {
                Some(t) => format!(
                    "{} {t}",
                    a["id"].as_str().or(a["decision"]["id"].as_str()).unwrap_or("?")
                ),
                None => format!("{} error {}", a["id"], a["error"]["code"]),
            })
            .collect()
    }

    #[tokio::test]
    async fn csv_and_json_lines_bodies_are_read_as_the_command_line_reads_them() {
        let (_t, r) = router();
        let csv = "Account ID,Account Owner,Annual Revenue,seats,strategic,segment\n\
                   a1, jane ,2000000,3,TRUE,smb\n\
                   a2,jane,\"1,250,000\",3,yes,smb\n";
        for path in ["/v1/evaluate?as_of=2026-11-01", "/v1/portfolio?as_of=2026-11-01&policy=kam"] {
            let (status, text) = post(&r, path, "text/csv; charset=utf-8", csv.into()).await;
            assert_eq!(status, 200, "{path}: {text}");
            assert_eq!(tiers(&text), ["a1 key", "\"a2\" error \"bad_type\""], "{path}: {text}");
        }
        let ndjson = "{\"id\":\"n1\",\"fields\":{\"revenue_12m\":2000000,\"seats\":1,\"segment\":\"mid\",\"strategic\":true}}\n\nnot json\n";
        let (status, text) =
            post(&r, "/v1/portfolio?as_of=2026-11-01", "application/x-ndjson", ndjson.into()).await;
        assert_eq!(status, 200, "{text}");
        assert_eq!(tiers(&text), ["n1 key", "null error \"bad_record\""], "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["accounts"][1]["error"]["record"], 3, "numbered by line: {text}");
        // A dry run of a CSV book: the overrides in the query.
        let (status, text) = post(
            &r,
            "/v1/dry-run?as_of=2026-11-01&set=tiers.key.min_score%3D10.5&format=table",
            "text/csv",
            csv.into(),
        )
        .await;
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("--set tiers.key.min_score=10.5"), "{text}");
        assert!(text.contains("key → base"), "{text}");
        // Other types are still refused, naming the three accepted.
        let (status, text) = post(&r, "/v1/evaluate", "text/plain", csv.into()).await;
        assert_eq!(status, 415);
        insta::assert_snapshot!("http_unsupported_media_type", text);
    }

    #[tokio::test]
    async fn a_csv_body_has_the_account_limit_of_a_json_one() {
        let (tmp, _dir) = write_policy("kam", &[("policy.toml", KAM)]);
        let limits = Limits { max_accounts: 2, ..Limits::default() };
        let service = Arc::new(Service::new(tmp.path(), limits, None));
        service.reload();
        let r = http::app(App::new(service, Config::default(), DecisionLog::off()));
        let csv = "Account ID,Annual Revenue,seats,segment\na,1,1,smb\nb,1,1,smb\nc,1,1,smb\n";
        let (status, text) =
            post(&r, "/v1/evaluate?as_of=2026-11-01", "text/csv", csv.into()).await;
        assert_eq!(status, 413, "{text}");
        assert!(text.contains("too_many_accounts"), "{text}");
        let nd = "{\"id\":\"a\"}\n{\"id\":\"b\"}\n{\"id\":\"c\"}\n";
        let (status, _) = post(&r, "/v1/portfolio", "application/x-ndjson", nd.into()).await;
        assert_eq!(status, 413);
    }

    #[tokio::test]
    async fn a_request_gives_as_of_once_for_the_accounts_without_one() {
        let (_t, r) = router();
        let acct = |id: &str, as_of: Option<&str>| {
            let mut a = json!({ "id": id, "fields": { "revenue_12m": 2000000, "seats": 3, "segment": "smb", "strategic": true } });
            if let Some(d) = as_of {
                a["as_of"] = json!(d);
            }
            a
        };
        for path in ["/v1/evaluate", "/v1/portfolio"] {
            let body = json!({ "as_of": "2026-11-01", "accounts": [acct("a", None), acct("b", Some("2026-01-01"))] });
            let (status, text) = post(&r, path, "application/json", body.to_string()).await;
            assert_eq!(status, 200, "{path}: {text}");
            assert_eq!(tiers(&text), ["a key", "b key"], "{path}: {text}");
            let without = json!({ "accounts": [acct("a", None)] });
            let (status, text) = post(&r, path, "application/json", without.to_string()).await;
            assert_eq!(status, 200);
            assert!(text.contains("\"missing_field\""), "{path}: {text}");
            let bad = json!({ "as_of": "01/11/2026", "accounts": [acct("a", None)] });
            let (status, text) = post(&r, path, "application/json", bad.to_string()).await;
            assert_eq!(status, 422, "{text}");
            insta::assert_snapshot!("http_bad_as_of", text);
        }
        let dry = json!({ "as_of": "2026-11-01", "overrides": { "tiers.key.min_score": 9.9 }, "accounts": [acct("a", None)] });
        let (status, text) = post(&r, "/v1/dry-run", "application/json", dry.to_string()).await;
        assert_eq!(status, 200, "{text}");
        assert!(!text.contains("missing_field"), "{text}");
    }
}

// ---------------------------------------------------------------------------------------
// lints

/// Loads `toml` with `scripts`, and lists every diagnostic (errors, then warnings).
fn diagnostics(toml: &str, files: &[(&str, &str)]) -> String {
    let mut all = vec![("policy.toml", toml)];
    all.extend_from_slice(files);
    let (_t, dir) = write_policy("traps", &all);
    match tierwise::policy::load_dir(&dir, &Default::default()) {
        Ok(p) => p.warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>().join("\n"),
        Err(tierwise::policy::LoadError::Invalid(r)) => r.to_string(),
        Err(e) => panic!("{e}"),
    }
}

const USAGE: &str = r#"
[inputs]
seats_active = { type = "integer", min = 0 }
seats_purchased = { type = "integer", min = 1 }
segment = { type = "string", one_of = ["smb", "mid", "enterprise"] }
partner = { type = "bool", default = false }

[score]
[[score.criteria]]
id = "adoption"
weight = 1.0
expr = "10.0 * seats_active / seats_purchased"

[[score.criteria]]
id = "ratio"
weight = 1.0
expr = "1 + 9 * (seats_active / seats_purchased)"

[[score.criteria]]
id = "fit"
weight = 1.0
script = "fit"

[[tiers]]
id = "key"
min_score = 7.0
when = 'partner == "true" || segment == "enterprize"'

[[tiers]]
id = "base"
"#;

#[test]
fn integer_division_and_impossible_comparisons_are_warned_wherever_they_are() {
    let script = r#"
fn fit(account) {
    let share = account.seats_active / account.seats_purchased;
    if account.segment == "enterprize" { 10 } else if account.partner == "yes" { 5 } else { share }
}

fn helper(x) {
    let segment = "anything";
    segment == "not an input"
}
"#;
    insta::assert_snapshot!("usage_lints", diagnostics(USAGE, &[("scripts/fit.rhai", script)]));
}

#[test]
fn a_script_reading_an_undeclared_input_is_a_load_error_with_its_place() {
    let script = "fn fit(account) {\n    if account.seat_active > 10 { 8 } else { 3 }\n}\n";
    insta::assert_snapshot!(
        "script_unknown_input",
        diagnostics(USAGE, &[("scripts/fit.rhai", script)])
    );
}

#[test]
fn another_languages_keyword_is_explained_first() {
    let script = "fn fit(account) {\n    if account.seats_active > 10 { 8 }\n    elif account.seats_active > 5 { 5 }\n    else { 3 }\n}\n";
    insta::assert_snapshot!(
        "elif_in_a_script",
        diagnostics(USAGE, &[("scripts/fit.rhai", script)])
    );
    let expr = USAGE.replace(
        "expr = \"1 + 9 * (seats_active / seats_purchased)\"",
        "expr = \"if seats_active > 3 and partner { 9 } else { 1 }\"",
    );
    insta::assert_snapshot!(
        "and_in_an_expression",
        diagnostics(&expr, &[("scripts/fit.rhai", "fn fit(account) { 5 }")])
    );
}

#[test]
fn check_prints_warnings_with_the_same_paths_as_errors() {
    let (tmp, _dir) = write_policy(
        "traps",
        &[("policy.toml", USAGE), ("scripts/fit.rhai", "fn fit(account) { 5 }")],
    );
    let out = tierwise(&["check", "traps"], tmp.path());
    assert_eq!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    insta::assert_snapshot!("check_warning_paths", err);
}

// ---------------------------------------------------------------------------------------
// tierwise test

const ADOPTION: &str = r#"
[inputs]
seats_active = { type = "integer", min = 0 }
seats_purchased = { type = "integer", min = 1 }
revenue_12m = { type = "number", min = 0 }

[score]
[[score.criteria]]
id = "adoption"
weight = 1.0
expr = "1 + 9 * seats_active / seats_purchased"

[[score.criteria]]
id = "revenue"
weight = 2.0
steps = { input = "revenue_12m", at = [100000.0, 1000000.0] }

[[tiers]]
id = "key"
min_score = 8.0

[[tiers]]
id = "base"
"#;

const ADOPTION_CASES: &str = r#"
[[case]]
name = "a well-adopted big account is key"
account = { id = "t1", as_of = "2026-11-01", current_tier = "key", fields = { seats_active = 95, seats_purchased = 100, revenue_12m = 2000000.0 } }
expect = { tier = "key", change = "none" }

[[case]]
name = "the score counts adoption as a fraction"
account = { id = "t2", as_of = "2026-11-01", fields = { seats_active = 3, seats_purchased = 4, revenue_12m = 2000000.0 } }
expect = { tier = "key", score = 9.25 }
"#;

#[test]
fn a_failing_case_shows_the_decision_beside_the_expectation() {
    let (tmp, _dir) = write_policy(
        "adoption",
        &[("policy.toml", ADOPTION), ("tests/cases.toml", ADOPTION_CASES)],
    );
    let out = tierwise(&["test", "adoption"], tmp.path());
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!("test_failure_shows_the_decision", text(&out.stdout));
    // The lint that explains it is printed by `test` too.
    assert!(text(&out.stderr).contains("warning[integer_division]"), "{}", text(&out.stderr));
}

// ---------------------------------------------------------------------------------------
// the codes reference

#[test]
fn the_codes_reference_is_up_to_date() {
    let path = root().join("docs/codes.md");
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == tierwise::codes::markdown(),
        "docs/codes.md is stale: run `cargo run -- schema` and commit it"
    );
}

/// Every `"literal"` after one of `markers` (after `skip_args` arguments), in `src`.
fn literals(src: &str, marker: &str, skip_args: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(i) = rest.find(marker) {
        rest = &rest[i + marker.len()..];
        let mut s = rest;
        for _ in 0..skip_args {
            match s.find(',') {
                Some(k) => s = &s[k + 1..],
                None => s = "",
            }
        }
        let s = s.trim_start();
        if let Some(body) = s.strip_prefix('"')
            && let Some(end) = body.find('"')
        {
            let lit = &body[..end];
            if !lit.is_empty() && lit.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                out.push(lit.to_string());
            }
        }
    }
    out
}

#[test]
fn every_code_the_source_emits_is_in_the_reference_and_back() {
    use tierwise::codes::*;
    let mut listed: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    for list in [LOAD_ERRORS, LINTS, NOTES, ACCOUNT_ERRORS, REASONS] {
        listed.extend(list.iter().map(|c| c.code));
    }
    listed.extend(HTTP.iter().map(|(_, c)| c.code));
    let mut sources = String::new();
    let mut stack = vec![root().join("src")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("codes.rs") {
                // Unit tests (at the end of a file) make up codes of their own.
                let text = std::fs::read_to_string(&p).unwrap();
                sources.push_str(text.split("#[cfg(test)]").next().unwrap_or(""));
            }
        }
    }
    let markers: [(&str, usize); 9] = [
        ("self.err(", 0),
        ("self.warn(", 0),
        ("Level::Error,", 0),
        ("Level::Warning,", 0),
        ("code: ", 0),
        ("AccountError::new(", 1),
        ("ApiError::new(", 1),
        ("self.push(", 1),
        ("d.at(", 1),
    ];
    let mut missing = std::collections::BTreeSet::new();
    for (m, skip) in markers {
        for lit in literals(&sources, m, skip) {
            if !listed.contains(lit.as_str()) {
                missing.insert(lit);
            }
        }
    }
    assert!(missing.is_empty(), "codes emitted but not in src/codes.rs: {missing:?}");
    let stale: Vec<&&str> =
        listed.iter().filter(|c| !sources.contains(&format!("\"{c}\""))).collect();
    assert!(stale.is_empty(), "codes in src/codes.rs that the source never emits: {stale:?}");
}

// ---------------------------------------------------------------------------------------
// portfolio cases from a file

#[test]
fn a_portfolio_case_reads_its_book_from_a_file_and_expects_counts_and_shares() {
    let policy = KAM.replace(
        "[[tiers]]\nid = \"key\"\nmin_score = 7.0",
        "[[tiers]]\nid = \"key\"\nmin_score = 7.0\nmax_share = 0.10",
    );
    assert!(policy.contains("max_share = 0.10"));
    // 200 accounts, half of them strategic and big: the 10 % cap keeps 20 in `key`.
    let mut csv = String::from("Account ID,Account Owner,Annual Revenue,seats,strategic,segment\n");
    for i in 0..200 {
        let big = i % 2 == 0;
        csv.push_str(&format!(
            "acct-{i:03},kam-{},{},{},{},mid\n",
            i % 7,
            if big { 2_000_000 + i * 1000 } else { 5_000 },
            i,
            if big { "TRUE" } else { "FALSE" }
        ));
    }
    let cases = r#"
[[case]]
name = "the key cap keeps a tenth of the book"
accounts_file = "fixtures/book.csv"
as_of = "2026-11-01"
expect = { tier_counts = { key = 20, base = 180 }, tier_shares = { key = 0.10, base = 0.9 }, tiers = { "acct-000" = "key" } }

[[case]]
name = "a wrong expectation shows the book"
accounts_file = "fixtures/book.csv"
as_of = "2026-11-01"
expect = { tier_shares = { key = 0.5 }, tolerance = 0.01 }
"#;
    let (tmp, _dir) = write_policy(
        "kam",
        &[("policy.toml", &policy), ("tests/book.toml", cases), ("tests/fixtures/book.csv", &csv)],
    );
    let out = tierwise(&["test", "kam"], tmp.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let stdout: String =
        stdout.lines().filter(|l| !l.starts_with("running")).collect::<Vec<_>>().join("\n");
    insta::assert_snapshot!("portfolio_case_from_a_file", stdout);

    // A file that is not there is the case's load error, with a "did you mean".
    let bad = cases.replace("fixtures/book.csv", "fixture/book.csv");
    let (tmp, _dir) = write_policy(
        "kam",
        &[("policy.toml", &policy), ("tests/book.toml", &bad), ("tests/fixtures/book.csv", &csv)],
    );
    let out = tierwise(&["check", "kam"], tmp.path());
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!("portfolio_case_missing_file", text(&out.stderr));
}

// ---------------------------------------------------------------------------------------
// capacity: unassigned accounts, settings in expressions

const BOOK_POLICY: &str = r#"
[inputs]
revenue_12m = { type = "number", min = 0 }

[score]
[[score.criteria]]
id = "revenue"
weight = 1.0
steps = { input = "revenue_12m", at = [100000.0, 1000000.0] }

[[tiers]]
id = "key"
min_score = 7.0
max_share = 0.5

[[tiers]]
id = "base"

[capacity]
tiers = ["key"]
per_manager = { min = 1, max = 3 }

[[alerts]]
id = "near_threshold"
severity = "info"
tiers = ["base"]
when = 'score >= min_score("key") - 1.0'
message = "score {score}, {min_score(\"key\") - score} below key"

[[portfolio.alerts]]
id = "unowned_key_accounts"
severity = "high"
when = "unassigned_count > 0"
message = "{unassigned_count} key accounts have no manager; managers carry at most {per_manager_max}, key holds {tier_count(\"key\")} of {tier_limit(\"key\")} seats"
"#;

#[test]
fn key_accounts_without_a_manager_are_listed_and_alerts_read_the_policys_settings() {
    let book = |p: &tierwise::policy::Policy| {
        let mut lines = String::new();
        for i in 0..8 {
            let manager =
                if i % 3 == 0 { String::new() } else { format!(r#""manager":"kam-{}","#, i % 2) };
            let rev = if i < 6 { 5_000_000 } else { 150_000 };
            lines.push_str(&format!(
                "{{\"id\":\"a{i}\",{manager}\"as_of\":\"2026-11-01\",\"fields\":{{\"revenue_12m\":{rev}}}}}\n"
            ));
        }
        let recs = snapshot::read(&lines, Format::Jsonl, p).unwrap();
        engine::evaluate_portfolio(p, &recs)
    };
    let p = load_inline(BOOK_POLICY, &[]);
    let r = book(&p);
    // The same book under a what-if with `per_manager.max = 2`: the message follows.
    let q = load_inline(&BOOK_POLICY.replace("max = 3", "max = 2"), &[]);
    let r2 = book(&q);
    let account_alerts: Vec<String> = r
        .accounts
        .iter()
        .filter_map(|o| o.decision())
        .flat_map(|d| d.alerts.iter().map(move |a| format!("{}: {}", d.id, a.message)))
        .collect();
    insta::assert_yaml_snapshot!(
        "unassigned_and_settings",
        json!({
            "unassigned": r.summary.unassigned,
            "portfolio_alerts": r.summary.portfolio_alerts.iter().map(|a| &a.message).collect::<Vec<_>>(),
            "what_if_max_2": r2.summary.portfolio_alerts.iter().map(|a| &a.message).collect::<Vec<_>>(),
            "account_alerts": account_alerts,
        })
    );
}

// ---------------------------------------------------------------------------------------
// diff

#[test]
fn diff_names_a_bad_override_and_heads_with_the_candidates_warnings_and_failing_cases() {
    let root = root();
    let bad = tierwise(
        &[
            "diff",
            "--baseline",
            "policies/enterprise",
            "--set",
            "capacity.per_manager.max=sixteen",
            "--accounts",
            "samples/portfolio.jsonl",
        ],
        &root,
    );
    assert_eq!(bad.status.code(), Some(2));
    insta::assert_snapshot!("diff_bad_override_value", text(&bad.stderr));
    let out = tierwise(
        &[
            "diff",
            "--baseline",
            "policies/enterprise",
            "--set",
            "tiers.key.min_score=65",
            "--accounts",
            "samples/portfolio.jsonl",
            "--top",
            "3",
        ],
        &root,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    // The header comes before any figure; the accounts that lose the capacity tier come first.
    let header: Vec<&str> = stdout.lines().take(6).collect();
    // Hashes redacted: an edit of the shipped policy must not churn this snapshot.
    let redacted: Vec<String> = header
        .iter()
        .map(|l| {
            l.split(' ')
                .map(|w| {
                    if w.len() == 12 && w.bytes().all(|b| b.is_ascii_hexdigit()) {
                        "<hash>"
                    } else {
                        w
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    insta::assert_snapshot!("diff_header_warns", redacted.join("\n"));
    let listed = stdout.split("accounts that change").nth(1).unwrap_or("");
    let first = listed.lines().nth(2).unwrap_or("");
    assert!(first.contains("key → managed"), "{listed}");
}

// ---------------------------------------------------------------------------------------
// a policy written from the docs alone

/// examples/policies/harbor: a shipping-visibility SaaS's program, written from README.md,
/// docs/snapshots.md and docs/codes.md by someone new to tierwise. It must keep loading
/// without a warning and passing its own cases, book from a CRM export included.
#[test]
fn the_policy_written_from_the_docs_passes_check_and_its_cases() {
    let dir = root().join("examples/policies/harbor");
    let p = match tierwise::policy::load_dir(&dir, &Default::default()) {
        Ok(p) => p,
        Err(e) => panic!("examples/policies/harbor does not load: {e:?}"),
    };
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let results = tierwise::engine::testrun::run_cases(&p);
    assert_eq!(results.len(), 8);
    let failed: Vec<_> = results.iter().filter(|r| !r.passed()).collect();
    assert!(failed.is_empty(), "{failed:#?}");
    // The same export through the command line, `as_of` given once.
    let out = tierwise(
        &[
            "eval",
            "--policy",
            "examples/policies/harbor",
            "--accounts",
            "examples/policies/harbor/tests/fixtures/book.csv",
            "--as-of",
            "2026-11-01",
            "--portfolio",
            "--format",
            "table",
        ],
        &root(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(
        table.contains("unassigned: 2 account(s) of the capacity tiers have no manager: s07, s14"),
        "{table}"
    );
}
