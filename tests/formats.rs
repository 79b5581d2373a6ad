//! Snapshots in: JSON array, JSON lines and CSV carry the same accounts to the same
//! decisions; a bad snapshot is that account's error with a code and the field at fault, and
//! never stops the others (README "[inputs]": every input account appears in the answer).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{Value, json};
use tierwise::engine::{self, Outcome};
use tierwise::policy::Policy;
use tierwise::snapshot::{self, Format};

const POLICY: &str = r#"
[policy]
description = "formats test policy"
version = "f1"

[inputs]
revenue = { type = "number", min = 0 }
seats = { type = "integer", min = 1, max = 10000 }
segment = { type = "string", one_of = ["smb", "mid", "ent"] }
partner = { type = "bool", default = false }
renewal = { type = "date", optional = true }
nps = { type = "integer", min = -100, max = 100, optional = true }

[score]
[[score.criteria]]
id = "revenue"
weight = 2.0
steps = { input = "revenue", at = [1000.0, 10000.0, 100000.0] }

[[score.criteria]]
id = "seats"
weight = 1.0
expr = "seats.to_float() / 10.0"

[[score.criteria]]
id = "segment"
weight = 1.0
expr = 'switch segment { "ent" => 10.0, "mid" => 6.0, _ => 2.0 }'

[[score.criteria]]
id = "extras"
weight = 1.0
expr = "(if partner { 3.0 } else { 1.0 }) + (if nps == () { 0.0 } else { nps.to_float() / 20.0 })"

[[tiers]]
id = "key"
min_score = 7.0

[[tiers]]
id = "growth"
min_score = 4.0

[[tiers]]
id = "base"

[movement]
min_tenure_days = 90

[[alerts]]
id = "renewal_soon"
severity = "medium"
when = "renewal != () && days_until(renewal) <= 60"
message = "renewal on {renewal}, in {days_until(renewal)} days"
"#;

const IDENTITY: [&str; 6] = ["id", "name", "manager", "current_tier", "tier_since", "as_of"];
const INPUTS: [&str; 6] = ["revenue", "seats", "segment", "partner", "renewal", "nps"];

fn policy() -> Policy {
    load_inline(POLICY, &[])
}

/// Valid accounts touching every type, absent optionals, defaults, integers as `3.0`,
/// names that need CSV quoting, and a field the policy does not declare.
fn valid_accounts() -> Vec<Value> {
    vec![
        json!({"id": "acme", "name": "Acme, Inc.", "manager": "jane", "current_tier": "growth", "tier_since": "2026-01-15", "as_of": "2026-11-01",
               "fields": {"revenue": 250000.5, "seats": 80, "segment": "ent", "partner": true, "renewal": "2026-12-01", "nps": 40, "crm_notes": "ignored"}}),
        json!({"id": "bolt", "name": "Bolt \"Quoted\" Ltd", "as_of": "2026-11-01",
               "fields": {"revenue": 5000, "seats": 3.0, "segment": "smb"}}),
        json!({"id": "cray", "manager": "omar", "current_tier": "key", "tier_since": "2026-09-01", "as_of": "2026-11-01",
               "fields": {"revenue": 999.99, "seats": 1, "segment": "mid", "partner": false, "nps": -100}}),
        json!({"id": "dyna", "manager": "jane", "current_tier": "base", "as_of": "2026-11-01",
               "fields": {"revenue": 100000, "seats": 10000, "segment": "ent", "renewal": "2027-06-30", "nps": null}}),
        json!({"id": "échelle", "manager": "omar", "current_tier": "key", "tier_since": "2025-01-01", "as_of": "2026-11-01",
               "fields": {"revenue": 0, "seats": 20, "segment": "smb", "nps": 100}}),
    ]
}

fn to_json(accounts: &[Value]) -> String {
    serde_json::to_string_pretty(accounts).unwrap()
}

fn to_jsonl(accounts: &[Value]) -> String {
    accounts.iter().map(|a| serde_json::to_string(a).unwrap() + "\n").collect()
}

fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// A CRM export: identity columns, then one column per input (and one undeclared column).
fn to_csv(accounts: &[Value]) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<&str> = IDENTITY.to_vec();
    header.extend(INPUTS);
    header.push("crm_notes");
    w.write_record(&header).unwrap();
    for a in accounts {
        let mut row: Vec<String> = IDENTITY.iter().map(|k| cell(a.get(*k))).collect();
        row.extend(INPUTS.iter().chain(["crm_notes"].iter()).map(|k| cell(a["fields"].get(*k))));
        w.write_record(&row).unwrap();
    }
    String::from_utf8(w.into_inner().unwrap()).unwrap()
}

fn decide(text: &str, format: Format, p: &Policy) -> Vec<Outcome> {
    let records = snapshot::read(text, format, p).unwrap();
    engine::evaluate(p, &records)
}

fn codes(out: &[Outcome]) -> Vec<(String, String)> {
    out.iter()
        .map(|o| match o {
            Outcome::Decision(d) => (d.id.clone(), format!("{} {}", d.tier, d.change.as_str())),
            Outcome::Error { id, error } => (
                id.clone().unwrap_or_default(),
                format!("error {} {}", error.code, error.field.as_deref().unwrap_or("-")),
            ),
        })
        .collect()
}

#[test]
fn the_three_formats_give_identical_decisions() {
    let p = policy();
    let accounts = valid_accounts();
    let json = decide(&to_json(&accounts), Format::Json, &p);
    let jsonl = decide(&to_jsonl(&accounts), Format::Jsonl, &p);
    let csv = decide(&to_csv(&accounts), Format::Csv, &p);
    assert_eq!(json.len(), accounts.len());
    assert!(json.iter().all(|o| o.decision().is_some()), "{json:#?}");
    let bytes = |o: &[Outcome]| serde_json::to_string_pretty(o).unwrap();
    assert_eq!(bytes(&json), bytes(&jsonl));
    assert_eq!(bytes(&json), bytes(&csv));
    // The same at portfolio level.
    let port = |text: &str, f| {
        serde_json::to_string(&engine::evaluate_portfolio(
            &p,
            &snapshot::read(text, f, &p).unwrap(),
        ))
        .unwrap()
    };
    assert_eq!(port(&to_json(&accounts), Format::Json), port(&to_csv(&accounts), Format::Csv));
    assert_eq!(port(&to_json(&accounts), Format::Json), port(&to_jsonl(&accounts), Format::Jsonl));

    // A few values checked by hand. acme: revenue 250000.5 passes 3 of 3 cuts -> 10;
    // seats 80 -> 8; ent -> 10; partner 3 + nps 40/20 = 5. (2*10 + 8 + 10 + 5) / 5 = 8.6.
    let acme = json[0].decision().unwrap();
    assert_eq!(acme.score, 8.6);
    assert_eq!((&*acme.tier, acme.change.as_str()), ("key", "promote"));
    assert_eq!(acme.alerts.len(), 1);
    assert_eq!(acme.alerts[0].message, "renewal on 2026-12-01, in 30 days");
    // bolt: 5000 -> 1 + 9 * 1/3 = 4; seats 3.0 (an integer) -> 0.3 clamped to 1; smb 2;
    // partner default false 1 + nps absent 0 = 1. (8 + 1 + 2 + 1) / 5 = 2.4.
    let bolt = json[1].decision().unwrap();
    assert_eq!(bolt.score, 2.4);
    assert_eq!((&*bolt.tier, bolt.change.as_str()), ("base", "new"));
}

#[test]
fn the_format_comes_from_the_extension() {
    assert_eq!(Format::from_path("a/b.json"), Some(Format::Json));
    assert_eq!(Format::from_path("b.JSONL"), Some(Format::Jsonl));
    assert_eq!(Format::from_path("b.ndjson"), Some(Format::Jsonl));
    assert_eq!(Format::from_path("export.csv"), Some(Format::Csv));
    assert_eq!(Format::from_path("export.txt"), None);
}

/// One valid account, then one of every kind of bad snapshot, then valid ones again.
fn mixed_jsonl() -> String {
    let ok = |id: &str| json!({"id": id, "as_of": "2026-11-01", "fields": {"revenue": 20000, "seats": 50, "segment": "mid"}});
    let with = |id: &str, key: &str, v: Value| {
        let mut a = ok(id);
        if v.is_null() {
            a["fields"].as_object_mut().unwrap().remove(key);
        } else {
            a["fields"][key] = v;
        }
        a
    };
    let lines = vec![
        serde_json::to_string(&ok("good-1")).unwrap(),
        serde_json::to_string(&with("missing", "seats", Value::Null)).unwrap(),
        serde_json::to_string(&with("wrong-type", "revenue", json!("lots"))).unwrap(),
        serde_json::to_string(&with("half-seat", "seats", json!(3.5))).unwrap(),
        serde_json::to_string(&with("too-many", "seats", json!(10001))).unwrap(),
        serde_json::to_string(&with("negative", "revenue", json!(-0.01))).unwrap(),
        serde_json::to_string(&with("not-one-of", "segment", json!("huge"))).unwrap(),
        serde_json::to_string(&with("bad-bool", "partner", json!("yes"))).unwrap(),
        serde_json::to_string(&with("bad-date", "renewal", json!("2026-02-30"))).unwrap(),
        serde_json::to_string(&json!({"id": "bad-as-of", "as_of": "1 Nov 2026", "fields": {"revenue": 1, "seats": 1, "segment": "smb"}})).unwrap(),
        serde_json::to_string(&json!({"id": "bad-since", "current_tier": "base", "tier_since": "2026-13-01", "as_of": "2026-11-01", "fields": {"revenue": 1, "seats": 1, "segment": "smb"}})).unwrap(),
        serde_json::to_string(&json!({"id": "gold", "current_tier": "gold", "as_of": "2026-11-01", "fields": {"revenue": 1, "seats": 1, "segment": "smb"}})).unwrap(),
        serde_json::to_string(&ok("twice")).unwrap(),
        "{\"id\": \"broken\", \"as_of\": \"2026-11-01\", \"fields\": {".to_string(),
        "this is not json".to_string(),
        serde_json::to_string(&json!({"name": "no id", "as_of": "2026-11-01", "fields": {}})).unwrap(),
        serde_json::to_string(&json!({"id": "no-as-of", "fields": {}})).unwrap(),
        serde_json::to_string(&with("twice", "seats", json!(60))).unwrap(),
        serde_json::to_string(&with("null-optional", "nps", Value::Null)).unwrap(),
        serde_json::to_string(&ok("good-2")).unwrap(),
    ];
    lines.join("\n") + "\n"
}

#[test]
fn bad_snapshots_are_their_own_errors_and_never_stop_the_others() {
    let p = policy();
    let out = decide(&mixed_jsonl(), Format::Jsonl, &p);
    let got = codes(&out);
    let want: Vec<(&str, &str)> = vec![
        ("good-1", "growth new"),
        ("missing", "error missing_field seats"),
        ("wrong-type", "error bad_type revenue"),
        ("half-seat", "error bad_type seats"),
        ("too-many", "error out_of_range seats"),
        ("negative", "error out_of_range revenue"),
        ("not-one-of", "error not_one_of segment"),
        ("bad-bool", "error bad_type partner"),
        ("bad-date", "error bad_date renewal"),
        ("bad-as-of", "error bad_date as_of"),
        ("bad-since", "error bad_date tier_since"),
        ("gold", "error unknown_tier current_tier"),
        ("twice", "error duplicate_id id"),
        // The line is cut off: not JSON, so its id cannot be read either.
        ("", "error bad_record -"),
        ("", "error bad_record -"),
        ("", "error bad_record -"),
        ("no-as-of", "error bad_record -"),
        ("twice", "error duplicate_id id"),
        ("null-optional", "growth new"),
        ("good-2", "growth new"),
    ];
    let want: Vec<(String, String)> =
        want.into_iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    assert_eq!(got, want);
    // Every error says which record it is (its line).
    for (i, o) in out.iter().enumerate() {
        if let Outcome::Error { error, .. } = o {
            assert_eq!(error.record, Some(i + 1), "{error:?}");
        }
    }
    // At portfolio level the errors count in no figure: N = 4.
    let records = snapshot::read(&mixed_jsonl(), Format::Jsonl, &p).unwrap();
    let r = engine::evaluate_portfolio(&p, &records);
    assert_eq!((r.summary.account_count, r.summary.error_count), (3, 17));
    insta::assert_yaml_snapshot!(out);
}

#[test]
fn bad_values_in_csv_get_the_same_codes() {
    let p = policy();
    let text = "\
id,name,manager,current_tier,tier_since,as_of,revenue,seats,segment,partner,renewal,nps
ok,,,,,2026-11-01,20000,50,mid,,,
missing,,,,,2026-11-01,20000,,mid,,,
wrong-type,,,,,2026-11-01,lots,50,mid,,,
half-seat,,,,,2026-11-01,20000,3.5,mid,,,
whole-seat,,,,,2026-11-01,20000,3.0,mid,,,
too-many,,,,,2026-11-01,20000,10001,mid,,,
not-one-of,,,,,2026-11-01,20000,50,huge,,,
bad-bool,,,,,2026-11-01,20000,50,mid,yes,,
bad-date,,,,,2026-11-01,20000,50,mid,,2026-02-30,
gold,,,gold,,2026-11-01,20000,50,mid,,,
,,,,,2026-11-01,20000,50,mid,,,
short,row
ok-2,,,,,2026-11-01,20000,50,mid,true,2026-12-01,-5
";
    let out = decide(text, Format::Csv, &p);
    let got = codes(&out);
    let want = [
        ("ok", "growth new"),
        ("missing", "error missing_field seats"),
        ("wrong-type", "error bad_type revenue"),
        ("half-seat", "error bad_type seats"),
        ("whole-seat", "growth new"),
        ("too-many", "error out_of_range seats"),
        ("not-one-of", "error not_one_of segment"),
        ("bad-bool", "error bad_type partner"),
        ("bad-date", "error bad_date renewal"),
        ("gold", "error unknown_tier current_tier"),
        ("", "error bad_record -"),
        ("", "error bad_record -"),
        ("ok-2", "growth new"),
    ];
    let want: Vec<(String, String)> =
        want.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    assert_eq!(got, want);
    // CSV errors carry their line in the file (the header is line 1).
    let Outcome::Error { error, .. } = &out[11] else { unreachable!() };
    assert_eq!(error.record, Some(13), "{error:?}");
}

#[test]
fn unreadable_inputs_are_errors_of_the_whole_input() {
    let p = policy();
    assert!(snapshot::read("{\"id\": \"not an array\"}", Format::Json, &p).is_err());
    assert!(snapshot::read("[1, 2", Format::Json, &p).is_err());
    assert!(
        snapshot::read("name,as_of\nx,2026-11-01\n", Format::Csv, &p).is_err(),
        "CSV without an id column"
    );
    // A JSON array with one bad element: that element's error only.
    let recs = snapshot::read(
        "[{\"id\": \"a\", \"as_of\": \"2026-11-01\"}, 42, {\"as_of\": \"2026-11-01\"}]",
        Format::Json,
        &p,
    )
    .unwrap();
    assert_eq!(recs.len(), 3);
    assert!(recs[0].is_ok());
    assert_eq!(recs[1].as_ref().err().map(|e| (e.code, e.record)), Some(("bad_record", Some(2))));
    assert_eq!(recs[2].as_ref().err().map(|e| (e.code, e.record)), Some(("bad_record", Some(3))));
    // Blank lines in JSON lines are skipped; the line numbers stay those of the file.
    let recs = snapshot::read(
        "\n{\"id\": \"a\", \"as_of\": \"2026-11-01\"}\n\n   \nnope\n",
        Format::Jsonl,
        &p,
    )
    .unwrap();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[1].as_ref().err().map(|e| e.record), Some(Some(5)));
}

/// The contract: "An id given twice makes every copy an error (`duplicate_id`)". When one copy is
/// a record that fails to parse (here `as_of` is a number) its id is still read and shown, but
/// `duplicates` counts only parsed records, so the other copy is decided: the output holds
/// two entries for `dup`, an error and a decision.
#[test]
fn an_id_shared_with_a_rejected_record_is_a_duplicate() {
    let p = policy();
    let text = "{\"id\": \"dup\", \"as_of\": 5}\n{\"id\": \"dup\", \"as_of\": \"2026-11-01\", \"fields\": {\"revenue\": 1, \"seats\": 1, \"segment\": \"smb\"}}\n";
    let out = decide(text, Format::Jsonl, &p);
    assert!(out.iter().all(|o| o.decision().is_none()), "{out:?}");
    let Outcome::Error { error, .. } = &out[1] else { unreachable!() };
    assert_eq!(error.code, "duplicate_id");
}
