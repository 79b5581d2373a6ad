//! The HTTP service through the real router (`oneshot`, no socket): every endpoint, every
//! error class (bodies snapshotted), hot reload from disk, broken edits rejected, reloads
//! under concurrent requests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::*;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tierwise::decision_log::DecisionLog;
use tierwise::http::{self, App, Config};
use tierwise::script::Limits;
use tierwise::service::Service;
use tower::ServiceExt;

struct Server {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    service: Arc<Service>,
    router: Router,
    log: Captured,
    app: Arc<App>,
}

/// The shipped policies copied to a tempdir, loaded, behind a router.
fn server_with(config: Config) -> Server {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policies");
    copy_dir(&root().join("policies"), &dir);
    server_in(tmp, dir, config)
}

fn server_in(tmp: tempfile::TempDir, dir: PathBuf, config: Config) -> Server {
    let service = Arc::new(Service::new(&dir, Limits::default(), None));
    service.reload();
    let log = Captured::default();
    let app = App::new(service.clone(), config, DecisionLog::to_writer(Box::new(log.clone())));
    Server { _tmp: tmp, dir, service, router: http::app(app.clone()), log, app }
}

fn server() -> Server {
    server_with(Config { admin_token: Some("s3cret".into()), ..Config::default() })
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn send(router: &Router, req: Request<Body>) -> Answer {
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes().to_vec();
    Answer { status, headers, body }
}

async fn get(router: &Router, path: &str) -> Answer {
    send(router, Request::get(path).body(Body::empty()).unwrap()).await
}

async fn post_json(router: &Router, path: &str, body: &Value) -> Answer {
    let req = Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    send(router, req).await
}

async fn post_raw(router: &Router, path: &str, content_type: Option<&str>, body: &str) -> Answer {
    let mut req = Request::post(path);
    if let Some(ct) = content_type {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    send(router, req.body(Body::from(body.to_string())).unwrap()).await
}

fn account(id: &str) -> Value {
    json!({
        "id": id, "name": "Acme", "manager": "jane", "current_tier": "key", "tier_since": "2025-06-01", "as_of": "2026-11-01",
        "fields": { "revenue_12m": 1_250_000.0, "potential": 2_000_000.0, "gross_margin": 0.31, "relationship": "cooperative", "strategic_fit": 4 }
    })
}

fn accounts(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let mut a = account(&format!("acct-{i:05}"));
            a["fields"]["revenue_12m"] = json!((i % 70) as f64 * 100_000.0);
            a["manager"] = json!(["amy", "bo", "cy"][i % 3]);
            a
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// endpoints

#[tokio::test]
async fn evaluate_one_account() {
    let s = server();
    let a =
        post_json(&s.router, "/v1/evaluate", &json!({ "accounts": [account("acme-001")] })).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let v = a.json();
    let hash = s.service.policy(Some("enterprise")).unwrap().policy.hash.clone();
    assert_eq!(v["policy"]["name"], "enterprise");
    assert_eq!(v["policy"]["hash"], hash.as_str());
    assert_eq!(a.headers["x-policy-hash"], hash.as_str());
    let id = v["decision_id"].as_str().unwrap();
    assert_eq!(id.len(), 36);
    assert_eq!(a.headers["x-decision-id"], id);
    assert_eq!(a.headers[header::CONTENT_TYPE], "application/json");
    let d = &v["accounts"][0];
    assert_eq!(d["id"], "acme-001");
    assert_eq!(d["tier"], "key");
    assert_eq!(d["change"], "hold");
    assert_eq!(d["policy"]["hash"], hash.as_str());

    // The decision log has one line for the request, with what an auditor needs.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let lines = s.log.lines();
    assert_eq!(lines.len(), 1);
    let l = &lines[0];
    assert_eq!(l["decision_id"], id);
    assert_eq!(l["level"], "account");
    assert_eq!(l["policy"]["hash"], hash.as_str());
    assert_eq!(
        l["outcomes"],
        json!([{ "id": "acme-001", "score": d["score"], "tier": "key", "previous_tier": "key", "change": "hold", "alerts": ["qbr_overdue"] }])
    );
    assert!(l["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(l["ts"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn evaluate_names_a_policy_and_answers_every_account_in_order() {
    let s = server();
    let mut list = accounts(150); // over the inline size: decided off the async threads
    list[7] = json!({ "id": "broken", "as_of": "yesterday" });
    list[9] = json!("not an object");
    let a =
        post_json(&s.router, "/v1/evaluate", &json!({ "policy": "mid-market", "accounts": list }))
            .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let v = a.json();
    assert_eq!(v["policy"]["name"], "mid-market");
    let out = v["accounts"].as_array().unwrap();
    assert_eq!(out.len(), 150);
    for (i, o) in out.iter().enumerate() {
        match i {
            7 => assert_eq!(o["error"]["code"], "bad_date", "{o}"),
            9 => assert_eq!(o["error"]["code"], "bad_record", "{o}"),
            _ => assert_eq!(o["id"], format!("acct-{i:05}")),
        }
    }
}

#[tokio::test]
async fn portfolio_answers_the_whole_book() {
    let s = server();
    let a = post_json(&s.router, "/v1/portfolio", &json!({ "accounts": accounts(300) })).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let v = a.json();
    assert!(v["decision_id"].is_string());
    assert_eq!(v["policy"]["name"], "enterprise");
    assert_eq!(v["summary"]["account_count"], 300);
    assert_eq!(v["accounts"].as_array().unwrap().len(), 300);
    assert!(v["summary"]["managers"].as_array().unwrap().len() == 3);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let l = &s.log.lines()[0];
    assert_eq!(l["level"], "portfolio");
    assert_eq!(l["summary"]["account_count"], 300);
    assert_eq!(l["outcomes"].as_array().unwrap().len(), 300);
}

#[tokio::test]
async fn policies_and_one_policy() {
    let s = server();
    let v = get(&s.router, "/v1/policies").await.json();
    assert_eq!(v["default"], "enterprise");
    let names: Vec<&str> =
        v["policies"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["enterprise", "mid-market"]);
    let a = get(&s.router, "/v1/policies/enterprise").await;
    assert_eq!(a.status, StatusCode::OK);
    let p = a.json();
    assert_eq!(p["status"], "active");
    assert_eq!(p["default"], true);
    assert_eq!(p["version"], "2026.1");
    assert_eq!(p["hash"].as_str().unwrap().len(), 64);
    assert!(p["loaded_at"].as_str().unwrap().ends_with('Z'));
    assert!(p["files"].as_array().unwrap().iter().any(|f| f == "policy.toml"));
    assert!(
        p["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "revenue_12m" && i["type"] == "number")
    );
    let tiers: Vec<&str> =
        p["tiers"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(tiers, ["strategic", "key", "managed"]);
    assert_eq!(p["last_error"], Value::Null);
}

#[tokio::test]
async fn schemas_openapi_health_metrics() {
    let s = server();
    for name in ["policy", "tests", "snapshot", "decision", "portfolio", "snapshot.schema.json"] {
        let a = get(&s.router, &format!("/v1/schemas/{name}")).await;
        assert_eq!(a.status, StatusCode::OK, "{name}");
        assert!(a.json()["$schema"].is_string());
    }
    let doc = get(&s.router, "/openapi.json").await.json();
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(
        doc["components"]["schemas"]["EvaluateResponse"]["properties"]["decision_id"].is_object()
    );
    assert_eq!(get(&s.router, "/healthz").await.json(), json!({ "status": "ok" }));
    let ready = get(&s.router, "/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json()["default_policy"], "enterprise");
    // At SIGTERM the server drains: not ready, still answering.
    s.app.draining.store(true, std::sync::atomic::Ordering::Relaxed);
    let draining = get(&s.router, "/readyz").await;
    assert_eq!(
        (draining.status, draining.json()["message"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!("shutting down"))
    );
    s.app.draining.store(false, std::sync::atomic::Ordering::Relaxed);

    post_json(&s.router, "/v1/evaluate", &json!({ "accounts": [account("a")] })).await;
    post_raw(&s.router, "/v1/evaluate", None, "{}").await;
    let m = get(&s.router, "/metrics").await;
    assert_eq!(m.status, StatusCode::OK);
    let text = m.text();
    for needle in [
        r#"tierwise_http_requests_total{route="/v1/evaluate",method="POST",status="200"} 1"#,
        r#"tierwise_http_request_duration_seconds_count{route="/v1/evaluate"} 2"#,
        r#"tierwise_http_errors_total{code="unsupported_media_type"} 1"#,
        r#"tierwise_evaluations_total{level="account"} 1"#,
        r#"tierwise_accounts_evaluated_total{level="account"} 1"#,
        r#"tierwise_cache_lookups_total{result="miss"} 1"#,
        r#"tierwise_policy_reloads{result="applied"} 2"#,
        r#"tierwise_policy_reload_failing{policy="enterprise"} 0"#,
        "tierwise_policy_info{policy=\"enterprise\",hash=",
    ] {
        assert!(text.contains(needle), "metrics lack `{needle}`:\n{text}");
    }
}

/// Every operation the OpenAPI document lists is routed (not a 404/405 from the router).
#[tokio::test]
async fn openapi_lists_exactly_the_routes() {
    let s = server();
    let ops = http::openapi::operations();
    assert_eq!(ops.len(), 17, "{ops:?}");
    for (method, path) in ops {
        let path = path.replace("{name}", "enterprise");
        let req =
            Request::builder().method(method.as_str()).uri(&path).body(Body::empty()).unwrap();
        let a = send(&s.router, req).await;
        let code = serde_json::from_slice::<Value>(&a.body)
            .ok()
            .and_then(|v| v["code"].as_str().map(String::from));
        assert!(
            !matches!(code.as_deref(), Some("not_found" | "method_not_allowed"))
                || path.contains("schemas"),
            "{method} {path}: {}",
            a.text()
        );
    }
}

// ---------------------------------------------------------------------------------------
// error classes: status and body, snapshotted

async fn error_of(a: Answer) -> (u16, Value) {
    assert_eq!(a.headers[header::CONTENT_TYPE], "application/json", "{}", a.text());
    (a.status.as_u16(), a.json())
}

#[tokio::test]
async fn errors_of_the_request() {
    let s = server();
    let r = &s.router;
    let body = r#"{"accounts": []}"#;
    insta::assert_json_snapshot!(
        "wrong_content_type",
        error_of(post_raw(r, "/v1/evaluate", Some("text/plain"), body).await).await
    );
    insta::assert_json_snapshot!(
        "no_content_type",
        error_of(post_raw(r, "/v1/evaluate", None, body).await).await
    );
    insta::assert_json_snapshot!(
        "malformed_json",
        error_of(
            post_raw(
                r,
                "/v1/evaluate",
                Some("application/json"),
                "{\"accounts\": [\n  {\"id\": 1,}\n]}"
            )
            .await
        )
        .await
    );
    insta::assert_json_snapshot!(
        "missing_accounts",
        error_of(post_raw(r, "/v1/evaluate", Some("application/json"), r#"{"acounts": []}"#).await)
            .await
    );
    insta::assert_json_snapshot!(
        "accounts_not_an_array",
        error_of(
            post_raw(r, "/v1/portfolio", Some("application/json"), r#"{"accounts": {"id": "x"}}"#)
                .await
        )
        .await
    );
    insta::assert_json_snapshot!(
        "unknown_policy",
        error_of(
            post_json(r, "/v1/evaluate", &json!({ "policy": "enterprize", "accounts": [] })).await
        )
        .await
    );
    insta::assert_json_snapshot!(
        "unknown_policy_get",
        error_of(get(r, "/v1/policies/nope").await).await
    );
    insta::assert_json_snapshot!(
        "unknown_schema",
        error_of(get(r, "/v1/schemas/nope").await).await
    );
    insta::assert_json_snapshot!("no_route", error_of(get(r, "/v2/evaluate").await).await);
    insta::assert_json_snapshot!("wrong_method", error_of(get(r, "/v1/evaluate").await).await);
    // A JSON content type with parameters or a +json suffix is fine.
    assert_eq!(
        post_raw(r, "/v1/evaluate", Some("application/json; charset=utf-8"), body).await.status,
        StatusCode::OK
    );
    assert_eq!(
        post_raw(r, "/v1/evaluate", Some("application/vnd.tierwise+json"), body).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn body_limit_on_every_route() {
    let s = server_with(Config { body_limit: 1024, ..Config::default() });
    let big = json!({ "accounts": accounts(20) });
    insta::assert_json_snapshot!(
        "payload_too_large",
        error_of(post_json(&s.router, "/v1/evaluate", &big).await).await
    );
    // Also where no handler reads a body, and without a declared length (streamed).
    let a = send(
        &s.router,
        Request::get("/healthz")
            .header(header::CONTENT_LENGTH, "4096")
            .body(Body::from(vec![b' '; 4096]))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    let chunks = vec![Ok::<_, std::io::Error>(vec![b' '; 800]), Ok(vec![b' '; 800])];
    let stream = Body::new(chunked::iter(chunks));
    let a = send(
        &s.router,
        Request::post("/v1/portfolio")
            .header(header::CONTENT_TYPE, "application/json")
            .body(stream)
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", a.text());
    assert_eq!(a.json()["code"], "payload_too_large");
}

/// A body without a Content-Length, delivered in chunks.
mod chunked {
    use std::pin::Pin;
    use std::task::{Context, Poll};
    pub struct Iter(std::vec::IntoIter<std::io::Result<Vec<u8>>>);
    pub fn iter(v: Vec<std::io::Result<Vec<u8>>>) -> Iter {
        Iter(v.into_iter())
    }
    impl http_body::Body for Iter {
        type Data = axum::body::Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
            Poll::Ready(
                self.0
                    .next()
                    .map(|r| r.map(|b| http_body::Frame::data(axum::body::Bytes::from(b)))),
            )
        }
    }
}

#[tokio::test]
async fn admin_token() {
    let s = server();
    let r = &s.router;
    insta::assert_json_snapshot!(
        "reload_without_token",
        error_of(send(r, Request::post("/v1/policies/reload").body(Body::empty()).unwrap()).await)
            .await
    );
    let wrong = Request::post("/v1/policies/reload")
        .header(header::AUTHORIZATION, "Bearer nope")
        .body(Body::empty())
        .unwrap();
    insta::assert_json_snapshot!("reload_wrong_token", error_of(send(r, wrong).await).await);
    let right = Request::post("/v1/policies/reload")
        .header(header::AUTHORIZATION, "Bearer s3cret")
        .body(Body::empty())
        .unwrap();
    let a = send(r, right).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json(), json!({ "outcomes": [] }));

    let off = server_with(Config::default());
    let req = Request::post("/v1/policies/reload")
        .header(header::AUTHORIZATION, "Bearer s3cret")
        .body(Body::empty())
        .unwrap();
    insta::assert_json_snapshot!("reload_disabled", error_of(send(&off.router, req).await).await);
}

#[tokio::test]
async fn not_ready_without_the_default_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("empty");
    std::fs::create_dir_all(&dir).unwrap();
    let s = server_in(tmp, dir, Config::default());
    let a = get(&s.router, "/readyz").await;
    assert_eq!(a.headers[header::RETRY_AFTER], "1");
    // The folder's path is not in the answer (it is the server's business only).
    let (status, body) = error_of(a).await;
    insta::assert_json_snapshot!("not_ready", (status, body));
    insta::assert_json_snapshot!(
        "no_default_policy",
        error_of(post_json(&s.router, "/v1/evaluate", &json!({ "accounts": [] })).await).await
    );
}

/// A policy whose every account costs a few milliseconds (a loop stopped by the sandbox).
fn slow_policy() -> (tempfile::TempDir, PathBuf) {
    let toml = r#"
[policy]
version = "slow"
[inputs]
x = { type = "number" }
[[score.criteria]]
id = "spin"
weight = 1.0
script = "spin"
[[tiers]]
id = "a"
label = "A"
min_score = 5.0
[[tiers]]
id = "b"
label = "B"
"#;
    let script = "fn spin(a) { let i = 0; while i < 12000 { i += 1; } a.x }";
    let (tmp, dir) = write_policy("slow", &[("policy.toml", toml), ("scripts/spin.rhai", script)]);
    let _ = dir;
    let root = tmp.path().to_path_buf();
    (tmp, root)
}

fn slow_accounts(n: usize) -> Value {
    let list: Vec<Value> = (0..n)
        .map(|i| json!({ "id": format!("s{i}"), "as_of": "2026-11-01", "fields": { "x": 5.0 } }))
        .collect();
    json!({ "accounts": list })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overloaded_and_timeout() {
    let (tmp, dir) = slow_policy();
    let s = server_in(
        tmp,
        dir,
        Config { max_concurrent: 1, request_timeout: Duration::from_secs(30), ..Config::default() },
    );
    let t = Instant::now();
    assert_eq!(
        post_json(&s.router, "/v1/portfolio", &slow_accounts(2)).await.status,
        StatusCode::OK
    );
    let per_account = t.elapsed() / 2;
    // Enough accounts to keep the only permit busy for a while.
    let n = ((Duration::from_millis(600).as_secs_f64() / per_account.as_secs_f64()) as usize * 2)
        .clamp(20, 20_000);
    let router = s.router.clone();
    let busy =
        tokio::spawn(async move { post_json(&router, "/v1/portfolio", &slow_accounts(n)).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let a = post_json(&s.router, "/v1/evaluate", &json!({ "accounts": [] })).await;
    assert_eq!(a.headers[header::RETRY_AFTER], "1");
    insta::assert_json_snapshot!("overloaded", error_of(a).await);
    // Probes are outside the limit.
    assert_eq!(get(&s.router, "/healthz").await.status, StatusCode::OK);
    assert_eq!(busy.await.unwrap().status, StatusCode::OK);

    let (tmp, dir) = slow_policy();
    let s = server_in(
        tmp,
        dir,
        Config { request_timeout: Duration::from_millis(50), ..Config::default() },
    );
    let a = post_json(&s.router, "/v1/portfolio", &slow_accounts(n)).await;
    insta::assert_json_snapshot!("timeout", error_of(a).await);
}

// ---------------------------------------------------------------------------------------
// hot reload

async fn policy_info(s: &Server, name: &str) -> Value {
    get(&s.router, &format!("/v1/policies/{name}")).await.json()
}

/// Polls until `check` holds (or panics after `limit`); returns how long it took.
async fn within(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let t = Instant::now();
    while t.elapsed() < limit {
        if check().await {
            return t.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not seen within {limit:?}");
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "`{from}` not in {}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

/// Like an editor that saves by writing a temp file and renaming it over the old one.
fn edit_by_rename(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from));
    let tmp = path.with_file_name(".policy.toml.swp");
    std::fs::write(&tmp, text.replacen(from, to, 1)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_on_disk_is_served_within_a_second() {
    let s = server();
    let _w = tierwise::watch::spawn(s.service.clone(), Duration::from_millis(100), |_| {}).unwrap();
    let before = policy_info(&s, "enterprise").await;
    let loaded_mid = policy_info(&s, "mid-market").await["loaded_at"].clone();
    edit(&s.dir.join("enterprise/policy.toml"), "version = \"2026.1\"", "version = \"2026.2\"");
    let took = within(Duration::from_secs(1), async || {
        policy_info(&s, "enterprise").await["version"] == "2026.2"
    })
    .await;
    eprintln!("edit seen after {took:?}");
    let after = policy_info(&s, "enterprise").await;
    assert_ne!(after["hash"], before["hash"]);
    let a =
        post_json(&s.router, "/v1/evaluate", &json!({ "accounts": [account("x")] })).await.json();
    assert_eq!(a["policy"]["version"], "2026.2");
    assert_eq!(a["policy"]["hash"], after["hash"]);
    // The untouched policy kept its compiled form.
    assert_eq!(policy_info(&s, "mid-market").await["loaded_at"], loaded_mid);

    // Saved by rename, as many editors do.
    edit_by_rename(
        &s.dir.join("enterprise/policy.toml"),
        "version = \"2026.2\"",
        "version = \"2026.3\"",
    );
    within(Duration::from_secs(1), async || {
        policy_info(&s, "enterprise").await["version"] == "2026.3"
    })
    .await;

    // Several files at once, and a folder added then removed.
    edit(&s.dir.join("mid-market/policy.toml"), "version = \"2026.1\"", "version = \"mm-2\"");
    edit(&s.dir.join("enterprise/policy.toml"), "version = \"2026.3\"", "version = \"2026.4\"");
    copy_dir(&s.dir.join("mid-market"), &s.dir.join("smb"));
    within(Duration::from_secs(1), async || {
        policy_info(&s, "enterprise").await["version"] == "2026.4"
            && policy_info(&s, "mid-market").await["version"] == "mm-2"
            && policy_info(&s, "smb").await["status"] == "active"
    })
    .await;
    let a = post_json(&s.router, "/v1/evaluate", &json!({ "policy": "smb", "accounts": [] })).await;
    assert_eq!(a.status, StatusCode::OK);
    std::fs::remove_dir_all(s.dir.join("smb")).unwrap();
    within(Duration::from_secs(1), async || {
        get(&s.router, "/v1/policies/smb").await.status == StatusCode::NOT_FOUND
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_edit_is_rejected_and_the_old_policy_keeps_serving() {
    let s = server();
    let _w = tierwise::watch::spawn(s.service.clone(), Duration::from_millis(100), |_| {}).unwrap();
    let good = policy_info(&s, "enterprise").await["hash"].clone();
    let file = s.dir.join("enterprise/policy.toml");
    let original = std::fs::read_to_string(&file).unwrap();

    // A typo in an expression: a load error with the place.
    edit(
        &file,
        "when = 'relationship == \"interdependent\"",
        "when = 'revenue_13m > 0.0 && relationship == \"interdependent\"",
    );
    let err = within_error(&s).await;
    assert_eq!(err["code"], "invalid_policy");
    let d = &err["diagnostics"][0];
    assert_eq!(d["place"]["file"], "policy.toml");
    assert!(d["place"]["line"].as_u64().unwrap() > 0);
    assert!(err["message"].as_str().unwrap().contains("revenue_13m"), "{err}");
    let info = policy_info(&s, "enterprise").await;
    assert_eq!(info["status"], "active");
    assert_eq!(info["hash"], good);
    let a = post_json(&s.router, "/v1/evaluate", &json!({ "accounts": [account("x")] })).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["policy"]["hash"], good);
    let m = get(&s.router, "/metrics").await.text();
    assert!(m.contains(r#"tierwise_policy_reload_failing{policy="enterprise"} 1"#), "{m}");

    // Valid but failing its own test cases: rejected too.
    std::fs::write(&file, original.replacen("min_score = 8.0", "min_score = 9.5", 1)).unwrap();
    let err = within(Duration::from_secs(2), async || {
        policy_info(&s, "enterprise").await["last_error"]["code"] == "tests_failed"
    })
    .await;
    let _ = err;
    let info = policy_info(&s, "enterprise").await;
    assert_eq!(info["hash"], good);
    assert!(!info["last_error"]["failed_cases"].as_array().unwrap().is_empty());

    // Back to the good files: the error clears, nothing recompiled.
    let loaded_at = info["loaded_at"].clone();
    std::fs::write(&file, &original).unwrap();
    within(Duration::from_secs(1), async || {
        policy_info(&s, "enterprise").await["last_error"].is_null()
    })
    .await;
    assert_eq!(policy_info(&s, "enterprise").await["loaded_at"], loaded_at);
}

async fn within_error(s: &Server) -> Value {
    within(Duration::from_secs(1), async || {
        !policy_info(s, "enterprise").await["last_error"].is_null()
    })
    .await;
    policy_info(s, "enterprise").await["last_error"].clone()
}

/// Requests keep coming while the policy flips between two versions: none fails, and each
/// answer is wholly under one version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_concurrent_requests() {
    let s = Arc::new(server());
    let file = s.dir.join("enterprise/policy.toml");
    let original = std::fs::read_to_string(&file).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (s, stop) = (s.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut seen = std::collections::BTreeMap::<String, String>::new();
            let mut n = 0;
            let body = json!({ "accounts": accounts(if c % 2 == 0 { 3 } else { 40 }) });
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let a = post_json(&s.router, "/v1/evaluate", &body).await;
                assert_eq!(a.status, StatusCode::OK, "{}", a.text());
                let v = a.json();
                let (version, hash) = (
                    v["policy"]["version"].as_str().unwrap().to_string(),
                    v["policy"]["hash"].as_str().unwrap().to_string(),
                );
                for d in v["accounts"].as_array().unwrap() {
                    assert_eq!(d["policy"]["hash"], hash.as_str(), "mixed answer");
                    assert_eq!(d["policy"]["version"], version.as_str(), "mixed answer");
                }
                // One hash per version, ever.
                assert_eq!(*seen.entry(version).or_insert_with(|| hash.clone()), hash);
                n += 1;
            }
            (n, seen)
        }));
    }
    let service = s.service.clone();
    tokio::task::spawn_blocking(move || {
        for i in 0..10 {
            let v = if i % 2 == 0 { "version = \"flip\"" } else { "version = \"2026.1\"" };
            std::fs::write(&file, original.replacen("version = \"2026.1\"", v, 1)).unwrap();
            let out = service.reload();
            assert_eq!(out.len(), 1, "{out:?}");
            assert_eq!(out[0].result, "applied");
            std::thread::sleep(Duration::from_millis(30));
        }
    })
    .await
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    let mut versions = std::collections::BTreeSet::new();
    for c in clients {
        let (n, seen) = c.await.unwrap();
        total += n;
        versions.extend(seen.into_keys());
    }
    assert!(total > 20, "only {total} requests");
    assert_eq!(versions.into_iter().collect::<Vec<_>>(), ["2026.1", "flip"]);
}

/// The answers are encoded by hand (in parallel chunks when large): they must be the bytes
/// serde_json gives for the same outcomes, with the keys the OpenAPI document promises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_the_engine_outcomes_byte_for_byte() {
    let s = server();
    let mut list = accounts(2500);
    // Bad elements are answered as the snapshot reader answers them, at their position.
    list[3] = json!({ "name": "no id", "as_of": "2026-11-01" });
    list[1700] = json!([1, 2]);
    list[2100] = json!({ "id": 7, "as_of": "2026-11-01" });
    let recs = tierwise::snapshot::read_json(&serde_json::to_string(&list).unwrap()).unwrap();
    assert!(recs[1700].is_err() && recs[3].is_err() && recs[2100].is_err());
    let p = s.service.policy(Some("enterprise")).unwrap();
    let doc = get(&s.router, "/openapi.json").await.json();
    let keys = |v: &Value| {
        v.as_object().unwrap().keys().cloned().collect::<std::collections::BTreeSet<_>>()
    };

    let a = post_json(&s.router, "/v1/evaluate", &json!({ "accounts": list })).await;
    let v = a.json();
    assert_eq!(keys(&v), keys(&doc["components"]["schemas"]["EvaluateResponse"]["properties"]));
    let want = serde_json::to_string(&tierwise::engine::evaluate(&p.policy, &recs)).unwrap();
    let got = String::from_utf8(a.body.clone()).unwrap();
    assert!(
        got.contains(&format!(",\"accounts\":{want}}}")),
        "evaluate answer differs from the engine's outcomes"
    );

    let a = post_json(&s.router, "/v1/portfolio", &json!({ "accounts": list })).await;
    let v = a.json();
    assert_eq!(keys(&v), keys(&doc["components"]["schemas"]["PortfolioResponse"]["properties"]));
    let r = tierwise::engine::evaluate_portfolio(&p.policy, &recs);
    let want = format!(
        ",\"summary\":{},\"accounts\":{}}}",
        serde_json::to_string(&r.summary).unwrap(),
        serde_json::to_string(&r.accounts).unwrap()
    );
    assert!(
        String::from_utf8(a.body.clone()).unwrap().ends_with(&want),
        "portfolio answer differs from the engine's result"
    );
}

/// A policy that is broken at start is listed with its problems and not served; the others are.
#[tokio::test]
async fn a_policy_broken_at_start_is_listed_not_served() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policies");
    copy_dir(&root().join("policies"), &dir);
    edit(&dir.join("mid-market/policy.toml"), "[[tiers]]", "[[tiers]]\nmin_scor = 1.0");
    let s = server_in(tmp, dir, Config::default());
    let p = policy_info(&s, "mid-market").await;
    assert_eq!(p["status"], "failed");
    assert_eq!(p["hash"], Value::Null);
    let err = &p["last_error"];
    assert_eq!(err["code"], "invalid_policy");
    assert_eq!(err["diagnostics"][0]["code"], "unknown_key");
    assert_eq!(err["diagnostics"][0]["place"]["file"], "policy.toml");
    insta::assert_json_snapshot!(
        "policy_unavailable",
        error_of(
            post_json(
                &s.router,
                "/v1/evaluate",
                &json!({ "policy": "mid-market", "accounts": [] })
            )
            .await
        )
        .await
    );
    assert_eq!(get(&s.router, "/readyz").await.status, StatusCode::OK, "the default policy serves");
}

// ---------------------------------------------------------------------------------------
// the decision cache through the router (in memory)

fn hits(a: &Answer) -> u64 {
    a.headers["x-cache-hits"].to_str().unwrap().parse().unwrap()
}

/// The answer without its decision id: what must be byte-identical between a hit and a miss.
fn without_id(a: &Answer) -> String {
    let id = a.headers["x-decision-id"].to_str().unwrap();
    a.text().replacen(id, "", 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_identical_evaluate_is_a_hit_and_a_policy_edit_misses() {
    let s = server_with(Config { cache_always: true, ..Config::default() });
    let body = json!({ "accounts": [account("c1"), account("c2"), { "id": "bad" }] });
    let first = post_json(&s.router, "/v1/evaluate", &body).await;
    assert_eq!((first.status, hits(&first)), (StatusCode::OK, 0), "{}", first.text());
    s.app.cache.flush().await;
    let second = post_json(&s.router, "/v1/evaluate", &body).await;
    assert_eq!(hits(&second), 2, "both decisions from the cache; the bad record is never cached");
    assert_eq!(
        without_id(&second),
        without_id(&first),
        "a hit answers the bytes of a fresh evaluation"
    );

    // The decision log lists every account, the cached ones marked.
    let lines = within_log(&s, 2).await;
    let accts = lines[1]["outcomes"].as_array().unwrap();
    assert_eq!(accts.len(), 3);
    assert_eq!((accts[0]["id"].clone(), accts[0]["cached"].clone()), (json!("c1"), json!(true)));
    assert_eq!(accts[0]["tier"], lines[0]["outcomes"][0]["tier"]);
    assert_eq!(accts[2]["error"], lines[0]["outcomes"][2]["error"]);
    assert!(accts[2].get("cached").is_none());

    // The latest decision of c1, then a policy edit: the next evaluate misses, and the
    // stored latest decision says it came from the older version until it is made again.
    let latest = get(&s.router, "/v1/accounts/c1/decision").await;
    assert_eq!(latest.status, StatusCode::OK, "{}", latest.text());
    let l = latest.json();
    assert_eq!((l["stale"].clone(), l["decision"]["id"].clone()), (json!(false), json!("c1")));
    assert_eq!(l["decision"], first.json()["accounts"][0]);
    let _w = tierwise::watch::spawn(s.service.clone(), Duration::from_millis(100), |_| {}).unwrap();
    edit(&s.dir.join("enterprise/policy.toml"), "version = \"2026.1\"", "version = \"2026.9\"");
    within(Duration::from_secs(2), async || {
        policy_info(&s, "enterprise").await["version"] == "2026.9"
    })
    .await;
    let l = get(&s.router, "/v1/accounts/c1/decision").await.json();
    assert_eq!(l["stale"], true);
    assert_eq!(l["decided_under"], first.json()["policy"]["hash"]);
    assert_ne!(l["active_hash"], l["decided_under"]);
    let third = post_json(&s.router, "/v1/evaluate", &body).await;
    assert_eq!(hits(&third), 0, "a new policy version misses every entry");
    assert_eq!(third.json()["policy"]["version"], "2026.9");
    s.app.cache.flush().await;
    let l = get(&s.router, "/v1/accounts/c1/decision").await.json();
    assert_eq!(
        (l["stale"].clone(), l["decision"]["policy"]["version"].clone()),
        (json!(false), json!("2026.9"))
    );

    // Unknown account: a stable code; another policy's latest decisions are its own.
    let none = get(&s.router, "/v1/accounts/nobody/decision").await;
    assert_eq!(
        error_of(none).await,
        (
            404,
            json!({ "code": "unknown_account", "message": "no decision for account `nobody` under policy `enterprise`: none was made through /v1/evaluate, or it expired", "details": { "account": "nobody", "policy": "enterprise" } })
        )
    );
    assert_eq!(
        get(&s.router, "/v1/accounts/c1/decision?policy=mid-market").await.json()["code"],
        "unknown_account"
    );
    assert_eq!(
        get(&s.router, "/v1/accounts/c1/decision?policy=nope").await.json()["code"],
        "unknown_policy"
    );

    let text = get(&s.router, "/metrics").await.text();
    for needle in [
        r#"tierwise_cache_lookups_total{result="hit"} 5"#, // 2 decisions + 3 latest-decision reads
        r#"tierwise_cache_breaker_state 0"#,
        r#"tierwise_cache_backend{backend="memory"} 1"#,
    ] {
        assert!(text.contains(needle), "metrics lack `{needle}`:\n{text}");
    }
    let ready = get(&s.router, "/readyz").await.json();
    assert_eq!(
        (ready["cache"].clone(), ready["details"]["cache"]["backend"].clone()),
        (json!("ok"), json!("memory"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portfolio_is_cached_whole() {
    let s = server();
    let body = json!({ "accounts": accounts(50) });
    let first = post_json(&s.router, "/v1/portfolio", &body).await;
    assert_eq!((first.status, hits(&first)), (StatusCode::OK, 0));
    s.app.cache.flush().await;
    let second = post_json(&s.router, "/v1/portfolio", &body).await;
    assert_eq!(hits(&second), 50);
    assert_eq!(without_id(&second), without_id(&first));
    let lines = within_log(&s, 2).await;
    assert_eq!(lines[1]["cached"], true);
    assert_eq!(lines[1]["outcomes"].as_array().unwrap().len(), 50);
    assert_eq!(lines[1]["summary"]["account_count"], lines[0]["summary"]["account_count"]);
    assert_eq!(lines[1]["outcomes"][7]["tier"], lines[0]["outcomes"][7]["tier"]);
}

/// With the cost gate (the default), answers are the same bytes whatever the gate decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gated_answers_are_the_fresh_bytes() {
    let s = server();
    let body = json!({ "accounts": accounts(20) });
    let first = post_json(&s.router, "/v1/evaluate", &body).await;
    let mut seen_hits = false;
    for _ in 0..40 {
        let a = post_json(&s.router, "/v1/evaluate", &body).await;
        seen_hits |= hits(&a) > 0;
        assert_eq!(without_id(&a), without_id(&first));
        s.app.cache.flush().await;
    }
    assert!(seen_hits, "the gate reads one request in 32 whatever it estimates");
}

async fn within_log(s: &Server, n: usize) -> Vec<Value> {
    within(Duration::from_secs(2), async || s.log.lines().len() >= n).await;
    s.log.lines()
}

/// The command line and the server go through the same pipeline: for the same book, the
/// bytes of every decision (and of a portfolio's summary) are the same, and a what-if gives
/// the same diff.
#[tokio::test]
async fn cli_and_http_give_the_same_bytes() {
    #[derive(serde::Deserialize)]
    struct Raw<'a> {
        #[serde(borrow)]
        accounts: Vec<&'a serde_json::value::RawValue>,
        #[serde(borrow, default)]
        summary: Option<&'a serde_json::value::RawValue>,
    }
    let s = server();
    let tmp = tempfile::tempdir().unwrap();
    let mut book = accounts(40);
    book.push(json!({ "id": "bad", "as_of": "2026-11-01", "fields": { "revenue_12m": "lots" } }));
    let file = tmp.path().join("book.jsonl");
    let lines: Vec<String> = book.iter().map(|v| v.to_string()).collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tierwise"))
            .args(args)
            .current_dir(root())
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let policy = s.dir.join("enterprise").display().to_string();
    let accounts = file.display().to_string();

    // Account level: `eval --format jsonl` lines are `/v1/evaluate`'s elements.
    let http = post_json(&s.router, "/v1/evaluate", &json!({ "accounts": book })).await;
    let raw: Raw = serde_json::from_slice(&http.body).unwrap();
    let out = cli(&["eval", "--policy", &policy, "--accounts", &accounts, "--format", "jsonl"]);
    let from_cli: Vec<&str> = out.lines().collect();
    let from_http: Vec<&str> = raw.accounts.iter().map(|r| r.get()).collect();
    assert_eq!(from_cli, from_http);

    // Portfolio level: `eval --portfolio --format json` and `/v1/portfolio`.
    let http = post_json(&s.router, "/v1/portfolio", &json!({ "accounts": book })).await;
    let raw: Raw = serde_json::from_slice(&http.body).unwrap();
    let out = cli(&["eval", "--policy", &policy, "--accounts", &accounts, "--portfolio"]);
    let cli_raw: Raw = serde_json::from_str(&out).unwrap();
    assert_eq!(cli_raw.summary.unwrap().get(), raw.summary.unwrap().get());
    let a: Vec<&str> = cli_raw.accounts.iter().map(|r| r.get()).collect();
    let b: Vec<&str> = raw.accounts.iter().map(|r| r.get()).collect();
    assert_eq!(a, b);

    // What-if: `diff --set` and `/v1/dry-run` with the same override.
    let body = json!({ "accounts": book, "overrides": { "tiers.key.min_score": 7.0 } });
    let http = post_json(&s.router, "/v1/dry-run", &body).await;
    assert_eq!(http.status, StatusCode::OK, "{}", http.text());
    let out = cli(&[
        "diff",
        "--baseline",
        &policy,
        "--set",
        "tiers.key.min_score=7.0",
        "--accounts",
        &accounts,
        "--format",
        "json",
    ]);
    let cli_diff: Value = serde_json::from_str(&out).unwrap();
    // Pretty-printed on the command line, compact over HTTP: the same value.
    assert_eq!(cli_diff, http.json()["diff"]);
}

// ---------------------------------------------------------------------------------------
// request ids

#[tokio::test]
async fn a_request_id_is_taken_or_made_echoed_and_in_the_decision_log() {
    let s = server();
    let body = json!({ "accounts": [account("rid-1")] });
    let with = |id: &str| {
        Request::post("/v1/evaluate")
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-request-id", axum::http::HeaderValue::from_bytes(id.as_bytes()).unwrap())
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    // The caller's own id, kept as it is.
    let a = send(&s.router, with("checkout-7f3a:01")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["x-request-id"], "checkout-7f3a:01");
    // Sanitised: only `A-Z a-z 0-9 - _ . : / + = @` kept, at most 128 bytes.
    let b = send(&s.router, with("evil id\"}{\\n<script>")).await;
    assert_eq!(b.headers["x-request-id"], "evilidnscript");
    let long = "x".repeat(500);
    let c = send(&s.router, with(&long)).await;
    assert_eq!(c.headers["x-request-id"], "x".repeat(128));
    // None (or nothing usable): a new UUIDv7, on every route, errors included.
    let d = post_json(&s.router, "/v1/evaluate", &body).await;
    let made = d.headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!((made.len(), &made[14..15]), (36, "7"), "{made}");
    let e = send(&s.router, with("\u{e9}\u{e8}")).await;
    assert_eq!(e.headers["x-request-id"].len(), 36);
    let missing = get(&s.router, "/nope").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.headers.contains_key("x-request-id"));
    assert!(get(&s.router, "/healthz").await.headers.contains_key("x-request-id"));

    let t = Instant::now();
    while s.log.lines().len() < 5 && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ids: Vec<Value> = s.log.lines().iter().map(|l| l["request_id"].clone()).collect();
    assert_eq!(
        ids,
        vec![
            json!("checkout-7f3a:01"),
            json!("evilidnscript"),
            json!("x".repeat(128)),
            json!(made),
            ids[4].clone()
        ],
        "each decision-log record carries its request's id"
    );
    // The decision id and the request id are two ids: one per evaluation, one per request.
    assert_ne!(s.log.lines()[0]["decision_id"], s.log.lines()[0]["request_id"]);
}
