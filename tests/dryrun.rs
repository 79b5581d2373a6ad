//! `POST /v1/dry-run` (issue 6, HTTP part) through the real router (`oneshot`, no socket):
//! overrides, a candidate folder sent inline, both; the diff is `whatif::diff`'s, byte for
//! byte; the active policy, its hash and live answers are untouched; every refusal (bad
//! candidate, unknown override, too many files, too big, path traversal) has its status and
//! body (snapshotted); a hostile candidate is answered quickly and the service keeps serving.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

#[path = "../examples/gen_portfolio.rs"]
#[allow(dead_code)]
mod gen_portfolio;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::*;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tierwise::decision_log::DecisionLog;
use tierwise::http::{self, App, Config};
use tierwise::policy::{self, Files, overrides};
use tierwise::script::Limits;
use tierwise::service::Service;
use tierwise::snapshot::Record;
use tierwise::whatif::{self, render};
use tower::ServiceExt;

struct Server {
    _tmp: tempfile::TempDir,
    service: Arc<Service>,
    router: Router,
    log: Captured,
}

fn server() -> Server {
    server_with(Config::default())
}

fn server_with(config: Config) -> Server {
    server_with_limits(config, Limits::default())
}

fn server_with_limits(config: Config, limits: Limits) -> Server {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policies");
    copy_dir(&root().join("policies"), &dir);
    let service = Arc::new(Service::new(&dir, limits, None));
    service.reload();
    let log = Captured::default();
    let app = App::new(service.clone(), config, DecisionLog::to_writer(Box::new(log.clone())));
    Server { _tmp: tmp, service, router: http::app(app), log }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// `(status, body)` of an error answer, for snapshots.
    fn error(&self) -> (u16, Value) {
        assert_eq!(self.headers[header::CONTENT_TYPE], "application/json", "{}", self.text());
        (self.status.as_u16(), self.json())
    }
    /// The text of the `diff` member, as sent.
    fn diff_text(&self) -> String {
        #[derive(serde::Deserialize)]
        struct Part<'a> {
            #[serde(borrow)]
            diff: &'a serde_json::value::RawValue,
        }
        let p: Part<'_> = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("no diff ({e}): {}", self.text()));
        p.diff.get().to_string()
    }
}

async fn send(router: &Router, req: Request<Body>) -> Answer {
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes().to_vec();
    Answer { status, headers, body }
}

async fn post(router: &Router, path: &str, body: &Value) -> Answer {
    let req = Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    send(router, req).await
}

async fn get(router: &Router, path: &str) -> Answer {
    send(router, Request::get(path).body(Body::empty()).unwrap()).await
}

const BOOK: usize = 300;

/// The tests that time hostile candidates on both cores take turns (the others are short).
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The generated book as JSON values (the request) and as the engine reads it.
fn book() -> (Vec<Value>, Vec<Record>) {
    let text = gen_portfolio::jsonl(BOOK, gen_portfolio::SEED);
    let values: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let records = tierwise::snapshot::read_json(&serde_json::to_string(&values).unwrap()).unwrap();
    (values, records)
}

fn enterprise_files() -> Files {
    policy::read_dir(&root().join("policies/enterprise")).unwrap()
}

/// Files as the request sends them.
fn as_json(files: &Files) -> Value {
    let map: serde_json::Map<String, Value> = files
        .iter()
        .map(|(p, b)| (p.clone(), json!(String::from_utf8(b.clone()).unwrap())))
        .collect();
    json!({ "files": map })
}

/// The enterprise folder with one more criterion (QBR cadence).
fn with_cadence() -> Files {
    add_criterion(
        "[[score.criteria]]\nid = \"cadence\"\nweight = 2.0\nexpr = \"if last_qbr == () { 1.0 } else if days_since(last_qbr) <= 92 { 10.0 } else { 4.0 }\"\n",
    )
}

fn add_criterion(criterion: &str) -> Files {
    let mut files = enterprise_files();
    let text = String::from_utf8(files["policy.toml"].clone()).unwrap();
    let anchor = "script = \"account_health\"\n";
    assert!(text.contains(anchor));
    files.insert(
        "policy.toml".into(),
        text.replacen(anchor, &format!("{anchor}\n{criterion}"), 1).into_bytes(),
    );
    files
}

fn compile(files: &Files) -> policy::Policy {
    policy::load_files("enterprise", files, &Limits::default()).unwrap_or_else(|r| panic!("{r}"))
}

fn apply(files: &Files, sets: &[&str]) -> Files {
    let list: Vec<_> = sets.iter().map(|s| overrides::parse_set(s).unwrap()).collect();
    overrides::apply_files(files, &list).unwrap()
}

// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_override_gives_the_diff_whatif_computes_and_changes_nothing_live() {
    let s = server();
    let (accounts, records) = book();
    let live = s.service.policy(None).unwrap();
    let live_hash = live.policy.hash.clone();
    let info_before = get(&s.router, "/v1/policies/enterprise").await.json();
    let probe = json!({ "accounts": accounts[..5] });
    let eval_before = post(&s.router, "/v1/evaluate", &probe).await.json();

    let a = post(
        &s.router,
        "/v1/dry-run",
        &json!({ "accounts": accounts, "overrides": { "tiers.key.min_score": 7.0 } }),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let files = apply(&enterprise_files(), &["tiers.key.min_score=7.0"]);
    let candidate = compile(&files);
    let want = whatif::diff(&live.policy, &candidate, &records);
    assert!(want.has_moves(), "the override should move accounts");
    assert_eq!(
        a.diff_text(),
        serde_json::to_string(&want).unwrap(),
        "the diff differs from whatif::diff"
    );

    let v = a.json();
    assert_eq!(v["dry_run"], true);
    assert_eq!(
        v["baseline"],
        json!({ "name": "enterprise", "version": "2026.1", "hash": live_hash })
    );
    assert_eq!(v["candidate"]["hash"], policy::content_hash(&files).as_str());
    assert_eq!(v["candidate"]["hash"], candidate.hash.as_str());
    assert_eq!(v["candidate"]["source"], "overrides");
    assert_eq!(v["candidate"]["overrides"], json!(["tiers.key.min_score=7.0"]));
    // The candidate's own test cases, run as a reload would: a key line at 7.0 breaks 21 of them.
    let cases = &v["candidate"]["test_cases"];
    assert_eq!(
        (cases["total"].as_u64(), cases["passed"].as_u64()),
        (Some(65), Some(44)),
        "{cases}"
    );
    assert_eq!(
        cases["failed"][0]["name"],
        "qbr_overdue fires for a key account with no QBR on record"
    );
    assert_eq!(cases["failed"][0]["place"]["file"], "tests/alerts.toml");
    let id = v["decision_id"].as_str().unwrap();
    assert_eq!(a.headers["x-decision-id"], id);
    assert_eq!(a.headers["x-policy-hash"], live_hash.as_str());
    assert_eq!(a.headers["x-candidate-hash"], candidate.hash.as_str());
    assert_eq!(a.headers["x-dry-run"], "true");

    // Nothing live changed: same version, same hash, same compiled form, same answers.
    let info_after = get(&s.router, "/v1/policies/enterprise").await.json();
    assert_eq!(info_after, info_before);
    assert_eq!(s.service.policy(None).unwrap().policy.hash, live_hash);
    assert!(Arc::ptr_eq(&s.service.policy(None).unwrap(), &live));
    let mut eval_after = post(&s.router, "/v1/evaluate", &probe).await.json();
    eval_after["decision_id"] = eval_before["decision_id"].clone();
    assert_eq!(eval_after, eval_before);

    // The decision log: the dry run is a line of its own kind, with no per-account decisions.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let lines = s.log.lines();
    let dry: Vec<&Value> = lines.iter().filter(|l| l["decision_id"] == id).collect();
    assert_eq!(dry.len(), 1, "{lines:?}");
    let l = dry[0];
    assert_eq!((l["level"].as_str(), l["dry_run"].as_bool()), (Some("dry_run"), Some(true)));
    assert_eq!(l["policy"]["hash"], live_hash.as_str());
    assert_eq!(l["candidate"]["hash"], candidate.hash.as_str());
    // The log keeps what the candidate was sent as, never its text: a count, a digest, a size.
    assert_eq!(l["overrides"], json!(1));
    assert_eq!(l["candidate_digest"].as_str().map(str::len), Some(64));
    assert!(l["candidate_bytes"].as_u64().is_some_and(|b| b > 0));
    assert_eq!(l["summary"], serde_json::to_value(&want.summary).unwrap());
    assert!(l.get("outcomes").is_none());
    assert_eq!(
        lines.iter().filter(|l| l["level"] != "dry_run").count(),
        2,
        "only the two /v1/evaluate calls are live decisions"
    );

    let m = get(&s.router, "/metrics").await.text();
    assert!(
        m.contains(
            r#"tierwise_http_requests_total{route="/v1/dry-run",method="POST",status="200"} 1"#
        ),
        "{m}"
    );
    assert!(
        !m.contains(r#"tierwise_evaluations_total{level="portfolio"} 1"#),
        "a dry run is not a live evaluation"
    );
}

#[tokio::test]
async fn a_candidate_folder_sent_inline() {
    let s = server();
    let (accounts, records) = book();
    let files = with_cadence();
    let a = post(
        &s.router,
        "/v1/dry-run",
        &json!({ "accounts": accounts, "candidate": as_json(&files) }),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let live = s.service.policy(None).unwrap();
    let want = whatif::diff(&live.policy, &compile(&files), &records);
    assert!(want.summary.scores_changed > 0);
    assert_eq!(a.diff_text(), serde_json::to_string(&want).unwrap());
    let v = a.json();
    assert_eq!(v["candidate"]["source"], "files");
    assert_eq!(v["candidate"]["hash"], policy::content_hash(&files).as_str());
    assert_eq!(v["candidate"]["overrides"], json!([]));
}

#[tokio::test]
async fn a_candidate_folder_with_overrides_on_top() {
    let s = server();
    let (accounts, records) = book();
    let files = with_cadence();
    let body = json!({ "accounts": accounts, "candidate": as_json(&files), "overrides": { "tiers.key.min_score": 7.0, "score.criteria[id=cadence].weight": 5 } });
    let a = post(&s.router, "/v1/dry-run", &body).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let both = apply(&files, &["score.criteria[id=cadence].weight=5", "tiers.key.min_score=7.0"]);
    let live = s.service.policy(None).unwrap();
    let want = whatif::diff(&live.policy, &compile(&both), &records);
    assert_eq!(a.diff_text(), serde_json::to_string(&want).unwrap());
    let v = a.json();
    assert_eq!(v["candidate"]["source"], "files+overrides");
    assert_eq!(v["candidate"]["hash"], policy::content_hash(&both).as_str());
    assert_eq!(
        v["candidate"]["overrides"],
        json!(["score.criteria[id=cadence].weight=5", "tiers.key.min_score=7.0"])
    );
}

#[tokio::test]
async fn another_baseline_by_name_and_markdown_or_table() {
    let s = server();
    let (accounts, records) = book();
    let body = json!({ "baseline": "mid-market", "accounts": accounts, "overrides": { "tiers[0].min_score": 9.0 } });
    let a = post(&s.router, "/v1/dry-run?format=markdown", &body).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.headers[header::CONTENT_TYPE], "text/markdown; charset=utf-8");
    let mm = s.service.policy(Some("mid-market")).unwrap();
    let files = apply(&mm.files, &["tiers[0].min_score=9.0"]);
    let cand = policy::load_files("mid-market", &files, &Limits::default()).unwrap();
    let d = whatif::diff(&mm.policy, &cand, &records);
    use tierwise::service::candidate;
    // The shared rendering, with the header the candidate builder gives: its failing test
    // cases (9.0 breaks some) come before the figures.
    let cases = candidate::TestCases::run(&cand);
    let ctx = render::Context {
        overrides: vec!["tiers[0].min_score=9.0".into()],
        notes: candidate::header_notes(&mm.policy, &cand, Some(&cases)),
        capacity_tiers: candidate::capacity_tiers(&mm.policy),
        ..Default::default()
    };
    let text = a.text();
    assert_eq!(text, render::markdown(&d, &ctx, 20));
    assert!(text.contains("\n> **13 of the candidate's 25 test cases fail, so it would not go live: checkin_overdue fires for a key account never checked in with (tests/alerts.toml:23), "), "{text}");
    assert!(text.contains(", and 8 more**\n"), "{text}");
    assert!(
        a.text().starts_with("### What-if: `mid-market` → the baseline with 1 override"),
        "{}",
        a.text()
    );
    assert!(a.headers["x-decision-id"].to_str().unwrap().len() == 36);

    let mut body = body;
    body["format"] = json!("table");
    body["top"] = json!(3);
    let t = post(&s.router, "/v1/dry-run", &body).await;
    assert_eq!(t.headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
    assert!(t.text().starts_with(&render::table(&d, &ctx, 3)));
    assert!(
        t.text().contains(
            "\n13 of the candidate's 25 test cases fail, so it would not go live: checkin_overdue"
        ),
        "{}",
        t.text()
    );
    // The query and the body must not disagree; an unknown format is refused.
    let c = post(&s.router, "/v1/dry-run?format=json", &body).await;
    assert_eq!(
        (c.status, c.json()["code"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("invalid_request"))
    );
    let c = post(&s.router, "/v1/dry-run?format=pdf", &body).await;
    assert_eq!(c.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn requests_that_compare_nothing_or_name_no_policy() {
    let s = server();
    let r = &s.router;
    insta::assert_json_snapshot!(
        "dry_run_nothing_to_compare",
        post(r, "/v1/dry-run", &json!({ "accounts": [] })).await.error()
    );
    let a = post(
        r,
        "/v1/dry-run",
        &json!({ "baseline": "enterprize", "overrides": {}, "accounts": [] }),
    )
    .await;
    assert_eq!(
        (a.status, a.json()["code"].clone()),
        (StatusCode::NOT_FOUND, json!("unknown_policy"))
    );
    // A misspelt member is not silently ignored (it would compare the wrong things).
    let a = post(
        r,
        "/v1/dry-run",
        &json!({ "overides": { "tiers.key.min_score": 7.0 }, "accounts": [] }),
    )
    .await;
    assert_eq!(
        (a.status, a.json()["code"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("invalid_request")),
        "{}",
        a.text()
    );
    assert!(a.text().contains("overides"), "{}", a.text());
    eprintln!("{}", a.text());
    // Empty overrides: the policy compared with itself, an empty diff.
    let (accounts, _) = book();
    let a = post(r, "/v1/dry-run", &json!({ "overrides": {}, "accounts": accounts })).await;
    assert_eq!(a.status, StatusCode::OK);
    let v = a.json();
    assert_eq!(v["diff"]["summary"]["changed"], 0);
    assert_eq!(v["candidate"]["hash"], v["baseline"]["hash"]);
}

#[tokio::test]
async fn a_candidate_that_does_not_compile_is_422_with_every_place() {
    let s = server();
    let mut files = enterprise_files();
    let text = String::from_utf8(files["policy.toml"].clone()).unwrap();
    let text = text.replacen(
        "when = 'relationship == \"interdependent\"",
        "when = 'revenue_13m > 0.0 && relationship == \"interdependent\"",
        1,
    );
    let text = text.replacen("min_score = 6.0", "min_scor = 6.0", 1);
    files.insert("policy.toml".into(), text.into_bytes());
    files.insert("scripts/broken.rhai".into(), b"fn broken(a) {\n  let x = ;\n}\n".to_vec());
    let a =
        post(&s.router, "/v1/dry-run", &json!({ "accounts": [], "candidate": as_json(&files) }))
            .await;
    let (status, body) = a.error();
    assert_eq!(status, 422);
    assert_eq!(body["code"], "candidate_invalid");
    for d in body["details"]["diagnostics"].as_array().unwrap() {
        assert!(
            d["place"]["file"].is_string()
                && d["place"]["line"].as_u64().unwrap() > 0
                && d["code"].is_string(),
            "{d}"
        );
    }
    insta::assert_json_snapshot!("dry_run_candidate_invalid", (status, body));

    // Overrides that make the baseline invalid are reported the same way, on the edited lines.
    let a = post(
        &s.router,
        "/v1/dry-run",
        &json!({ "accounts": [], "overrides": { "tiers.key.min_score": "high" } }),
    )
    .await;
    insta::assert_json_snapshot!("dry_run_override_makes_it_invalid", a.error());

    // No policy.toml at all.
    let a = post(
        &s.router,
        "/v1/dry-run",
        &json!({ "accounts": [], "candidate": { "files": { "scripts/x.rhai": "fn x(a) { 1 }" } } }),
    )
    .await;
    let (status, body) = a.error();
    assert_eq!(
        (status, body["details"]["diagnostics"][0]["code"].as_str()),
        (422, Some("no_policy"))
    );
}

#[tokio::test]
async fn an_override_that_names_nothing_is_422_with_a_suggestion() {
    let s = server();
    let body = json!({ "accounts": [], "overrides": { "tiers.kee.min_score": 7.0, "capacity.per_manger.max": 20, "tiers.key.min_score": 7.0 } });
    let a = post(&s.router, "/v1/dry-run", &body).await;
    insta::assert_json_snapshot!("dry_run_unknown_override", a.error());
    let a = post(
        &s.router,
        "/v1/dry-run",
        &json!({ "accounts": [], "overrides": { "tiers.key.min_score": null } }),
    )
    .await;
    insta::assert_json_snapshot!("dry_run_null_override", a.error());
}

#[tokio::test]
async fn candidate_limits_files_size_and_paths() {
    let s = server();
    let r = &s.router;
    let mut many = enterprise_files();
    for i in 0..64 {
        many.insert(format!("tests/extra{i:02}.toml"), b"".to_vec());
    }
    insta::assert_json_snapshot!(
        "dry_run_too_many_files",
        post(r, "/v1/dry-run", &json!({ "accounts": [], "candidate": as_json(&many) }))
            .await
            .error()
    );

    let mut big = enterprise_files();
    big.insert(
        "scripts/big.rhai".into(),
        format!("// {}\nfn big(a) {{ 1 }}\n", "x".repeat(2 * 1024 * 1024)).into_bytes(),
    );
    insta::assert_json_snapshot!(
        "dry_run_candidate_too_big",
        post(r, "/v1/dry-run", &json!({ "accounts": [], "candidate": as_json(&big) }))
            .await
            .error()
    );

    // A 50 MB script is refused by the body limit before anything reads it.
    let t = Instant::now();
    let huge = format!(
        "{{\"accounts\":[],\"candidate\":{{\"files\":{{\"policy.toml\":\"\",\"scripts/x.rhai\":\"{}\"}}}}}}",
        "x".repeat(50 * 1024 * 1024)
    );
    let req = Request::post("/v1/dry-run")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, huge.len())
        .body(Body::from(huge))
        .unwrap();
    let a = send(r, req).await;
    assert_eq!(
        (a.status, a.json()["code"].clone()),
        (StatusCode::PAYLOAD_TOO_LARGE, json!("payload_too_large"))
    );
    assert!(t.elapsed() < Duration::from_secs(5));

    let mut bad = enterprise_files();
    bad.insert("../../etc/cron.d/x".into(), b"* * * * * root sh".to_vec());
    bad.insert("scripts/../../outside.rhai".into(), b"fn x(a) { 1 }".to_vec());
    bad.insert("/etc/passwd".into(), b"".to_vec());
    bad.insert("README.md".into(), b"hi".to_vec());
    insta::assert_json_snapshot!(
        "dry_run_bad_candidate_path",
        post(r, "/v1/dry-run", &json!({ "accounts": [], "candidate": as_json(&bad) }))
            .await
            .error()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_candidates_are_answered_quickly_and_the_service_keeps_serving() {
    let _turn = HEAVY.lock().await;
    let s = server();
    let (accounts, _) = book();

    // An endless loop in a criterion: the sandbox stops it on every account, and a candidate
    // that cannot finish on live data is refused (422), with the places.
    let mut files =
        add_criterion("[[score.criteria]]\nid = \"spin\"\nweight = 1.0\nscript = \"spin\"\n");
    files.insert("scripts/spin.rhai".into(), b"fn spin(a) { loop { } }\n".to_vec());
    let t = Instant::now();
    let a = post(
        &s.router,
        "/v1/dry-run",
        &json!({ "accounts": accounts, "candidate": as_json(&files) }),
    )
    .await;
    let took = t.elapsed();
    eprintln!("endless loop over {BOOK} accounts answered in {took:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    let v = a.json();
    assert_eq!(
        (a.status, v["code"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("candidate_sandbox_limit")),
        "{}",
        a.text()
    );
    assert!(v["details"]["accounts"].as_u64().unwrap() > BOOK as u64 / 2, "{v}");
    let example = &v["details"]["examples"][0]["error"];
    assert!(
        ["operation_limit", "time_limit"].contains(&example["code"].as_str().unwrap()),
        "{example}"
    );
    assert_eq!(example["rule"], "score.criteria.spin", "{example}");
    eprintln!("first error: {example}");

    // Deep nesting and an import from outside the candidate: refused at compile time.
    let mut deep =
        add_criterion("[[score.criteria]]\nid = \"deep\"\nweight = 1.0\nscript = \"deep\"\n");
    deep.insert(
        "scripts/deep.rhai".into(),
        format!("fn deep(a) {{ {}1{} }}\n", "(".repeat(5000), ")".repeat(5000)).into_bytes(),
    );
    let t = Instant::now();
    let a = post(
        &s.router,
        "/v1/dry-run",
        &json!({ "accounts": accounts, "candidate": as_json(&deep) }),
    )
    .await;
    assert_eq!(
        (a.status, a.json()["code"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("candidate_invalid")),
        "{}",
        a.text()
    );
    assert!(t.elapsed() < Duration::from_secs(5));

    let mut import =
        add_criterion("[[score.criteria]]\nid = \"imp\"\nweight = 1.0\nscript = \"imp\"\n");
    import.insert(
        "scripts/imp.rhai".into(),
        b"fn imp(a) { import \"../../../etc/passwd\" as p; 1 }\n".to_vec(),
    );
    let a = post(
        &s.router,
        "/v1/dry-run",
        &json!({ "accounts": accounts, "candidate": as_json(&import) }),
    )
    .await;
    let v = a.json();
    assert_eq!(
        (a.status, v["code"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("candidate_invalid")),
        "{}",
        a.text()
    );
    assert!(
        v["details"]["diagnostics"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["code"] == "bad_import" && d["place"]["file"] == "scripts/imp.rhai"),
        "{v}"
    );

    // Still serving, under the same policy.
    let e = post(&s.router, "/v1/evaluate", &json!({ "accounts": accounts[..3] })).await;
    assert_eq!(e.status, StatusCode::OK);
    assert_eq!(e.json()["policy"]["hash"], s.service.policy(None).unwrap().policy.hash.as_str());
    assert_eq!(get(&s.router, "/readyz").await.status, StatusCode::OK);
}

fn spinning() -> Files {
    let mut files =
        add_criterion("[[score.criteria]]\nid = \"spin\"\nweight = 1.0\nscript = \"spin\"\n");
    files.insert("scripts/spin.rhai".into(), b"fn spin(a) { loop { } }\n".to_vec());
    files
}

fn big_book(n: usize) -> Vec<Value> {
    gen_portfolio::jsonl(n, gen_portfolio::SEED)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A candidate's whole evaluation has a budget: past it, every evaluation left stops at once
/// with `time_limit`, so a hostile script cannot keep the cores after its request is answered.
#[test]
fn a_spent_budget_stops_every_evaluation_left() {
    let _turn = HEAVY.blocking_lock();
    let records =
        tierwise::snapshot::read_json(&serde_json::to_string(&big_book(6000)).unwrap()).unwrap();
    let t = Instant::now();
    let limits = Limits { until: Some(t + Duration::from_millis(100)), ..Limits::default() };
    let p =
        policy::load_files("enterprise", &spinning(), &limits).unwrap_or_else(|r| panic!("{r}"));
    let r = tierwise::engine::evaluate_portfolio(&p, &records);
    let took = t.elapsed();
    eprintln!("6000 spinning accounts with a 100 ms budget: {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    let errors: Vec<_> = r
        .accounts
        .iter()
        .filter_map(|o| match o {
            tierwise::engine::Outcome::Error { error, .. } => Some(error),
            _ => None,
        })
        .collect();
    // The book has some bad snapshots of its own; the script never ends in anything but a limit.
    assert!(
        errors.iter().all(|e| e.code != "script_error"),
        "{:?}",
        errors.iter().map(|e| e.code).collect::<std::collections::BTreeSet<_>>()
    );
    let spent = errors.iter().filter(|e| e.message.contains("budget")).count();
    assert!(spent > 5000, "{spent} accounts stopped by the budget");
}

/// Over HTTP the budget is the request timeout: the client gets its 503 and the dry run's
/// slot is free again soon after, not when the hostile script would have finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_dry_run_stops_at_the_request_timeout() {
    let _turn = HEAVY.lock().await;
    let s =
        server_with(Config { request_timeout: Duration::from_millis(300), ..Config::default() });
    // Without the budget, these two keep both cores for about 4 s after their 503.
    let slow = Arc::new(json!({ "accounts": big_book(12_000), "candidate": as_json(&spinning()) }));
    let mut busy = Vec::new();
    for _ in 0..http::DRY_RUNS_AT_ONCE {
        let (router, body) = (s.router.clone(), slow.clone());
        busy.push(tokio::spawn(async move {
            post(&router, "/v1/dry-run", &body).await.json()["code"].clone()
        }));
    }
    for b in busy {
        assert_eq!(b.await.unwrap(), "timeout");
    }
    let t = Instant::now();
    loop {
        let a = post(&s.router, "/v1/dry-run", &json!({ "accounts": [], "overrides": {} })).await;
        if a.status == StatusCode::OK {
            break;
        }
        assert_eq!(a.json()["code"], "overloaded");
        assert!(
            t.elapsed() < Duration::from_millis(2500),
            "the hostile dry runs still hold their slots after {:?}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("slots free {:?} after the timeouts", t.elapsed());
}

/// Dry runs run untrusted code on every core: a few at a time, the rest get 503 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_runs_beyond_the_limit_are_refused_with_retry_after() {
    let _turn = HEAVY.lock().await;
    // A loaded machine can hold a thread past the 50 ms per-account wall clock, and one such
    // account is enough to refuse a candidate: this test is about the slots, not the clock.
    let s = server_with_limits(
        Config::default(),
        Limits { time_per_account: Duration::from_secs(5), ..Limits::default() },
    );
    // Slow but within every limit: a hostile one stops at its first account now.
    let mut files =
        add_criterion("[[score.criteria]]\nid = \"spin\"\nweight = 1.0\nscript = \"spin\"\n");
    files.insert(
        "scripts/spin.rhai".into(),
        b"fn spin(a) { let i = 0; while i < 1000 { i += 1; } 5 }\n".to_vec(),
    );
    let text = gen_portfolio::jsonl(3000, gen_portfolio::SEED);
    let accounts: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let slow = Arc::new(json!({ "accounts": accounts, "candidate": as_json(&files) }));
    let mut busy = Vec::new();
    for _ in 0..http::DRY_RUNS_AT_ONCE {
        let (router, body) = (s.router.clone(), slow.clone());
        busy.push(tokio::spawn(async move {
            let a = post(&router, "/v1/dry-run", &body).await;
            (a.status, a.text().chars().take(600).collect::<String>())
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a = post(&s.router, "/v1/dry-run", &json!({ "accounts": [], "overrides": {} })).await;
    assert_eq!(a.headers[header::RETRY_AFTER], "1");
    assert_eq!(
        (a.status, a.json()["code"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!("overloaded"))
    );
    // Live evaluations are not held up by the dry-run limit.
    assert_eq!(
        post(&s.router, "/v1/evaluate", &json!({ "accounts": accounts[..2] })).await.status,
        StatusCode::OK
    );
    for b in busy {
        let (status, text) = b.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{text}");
    }
    assert_eq!(
        post(&s.router, "/v1/dry-run", &json!({ "accounts": [], "overrides": {} })).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_openapi_document_describes_the_dry_run() {
    let s = server();
    let doc = get(&s.router, "/openapi.json").await.json();
    let op = &doc["paths"]["/v1/dry-run"]["post"];
    assert_eq!(op["operationId"], "dryRun");
    let statuses: Vec<&str> =
        op["responses"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        statuses,
        ["200", "400", "404", "408", "413", "414", "415", "422", "431", "500", "503"]
    );
    let ok = &op["responses"]["200"]["content"];
    assert!(
        ok["application/json"]["schema"].is_object()
            && ok["text/markdown"].is_object()
            && ok["text/plain"].is_object(),
        "{ok}"
    );
    assert!(
        op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "format" && p["in"] == "query")
    );
    // The answer has exactly the documented members.
    let (accounts, _) = book();
    let v = post(
        &s.router,
        "/v1/dry-run",
        &json!({ "accounts": accounts[..10], "overrides": { "tiers.key.min_score": 7.0 } }),
    )
    .await
    .json();
    let keys = |v: &Value| {
        v.as_object().unwrap().keys().cloned().collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(keys(&v), keys(&doc["components"]["schemas"]["DryRunResponse"]["properties"]));
    let req_props = keys(&doc["components"]["schemas"]["DryRunRequest"]["properties"]);
    assert_eq!(
        req_props.into_iter().collect::<Vec<_>>(),
        ["accounts", "as_of", "baseline", "candidate", "format", "overrides", "top"]
    );
}
