//! The entry points the fuzz targets drive, shared by `fuzz/fuzz_targets/*.rs` (libFuzzer)
//! and `tests/fuzz_regressions.rs` (the normal `cargo test`, which replays the seed corpus and
//! every crash input): one copy of the harness, so the tests keep it compiled and linted, and
//! a crash input replays through exactly the code that found it.
//!
//! Each function takes the raw input and returns nothing: a finding is a panic (an abort under
//! libFuzzer), whether the code under test panicked or a check here failed.
//!
//! Inputs:
//! - [`policy_load`]: `policy.toml` bytes, optionally a NUL byte and `scripts/fuzz.rhai`,
//!   optionally another NUL byte and `tests/fuzz.toml`; compiled with
//!   [`tierwise::policy::load_files`] (what a reload and the dry-run's inline candidate use)
//!   with the native fast path on and off; a policy that loads evaluates a few sample accounts
//!   (account and portfolio level) and runs its test cases; both paths must agree, and the
//!   answers must not depend on the order of the accounts.
//! - [`snapshot`]: a snapshot file's text in one format, read against the shipped enterprise
//!   policy, validated and evaluated; a book of a few must not depend on its order either.
//! - [`http`]: a request body for `POST /v1/evaluate` or `POST /v1/dry-run`, through the real
//!   router (in-process, `oneshot`) on a current-thread runtime built once: no answer may be a
//!   500, and every JSON answer must be JSON.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use tierwise::decision_log::DecisionLog;
use tierwise::engine;
use tierwise::policy::{self, Files, Policy};
use tierwise::script::Limits;
use tierwise::service::Service;
use tierwise::snapshot::{self, Format, Record};
use tower::ServiceExt;

/// The repository root: `CARGO_MANIFEST_DIR` is the repository for the tests, `fuzz/` for
/// the fuzz targets.
pub fn repo_root() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if dir.join("policies").is_dir() { dir } else { dir.join("..") }
}

/// Inputs larger than this are not looked at: the service's own limits (body limit, file
/// limit) are far above, and a fuzzer spends its time better on small inputs.
pub const MAX_INPUT: usize = 256 * 1024;

/// A few accounts of the sample book, evaluated under every policy that loads.
fn sample_records() -> &'static [Record] {
    static RECORDS: OnceLock<Vec<Record>> = OnceLock::new();
    RECORDS.get_or_init(|| {
        let text = include_str!("../samples/portfolio.csv");
        let head: String = text.lines().take(9).flat_map(|l| [l, "\n"]).collect();
        let mut recs = enterprise().map(|p| snapshot::read_csv(&head, p).unwrap_or_default()).unwrap_or_default();
        // One account with nothing but an id and one without a current tier or dates.
        recs.extend(snapshot::read_jsonl("{\"id\":\"bare\",\"fields\":{}}\n{\"id\":\"x\",\"as_of\":\"2026-11-01\",\"fields\":{\"revenue_12m\":1e308}}\n"));
        recs
    })
}

/// The shipped enterprise policy, loaded once (`None` would be a broken checkout).
fn enterprise() -> Option<&'static Policy> {
    static POLICY: OnceLock<Option<Policy>> = OnceLock::new();
    POLICY
        .get_or_init(|| {
            policy::load_dir(&repo_root().join("policies/enterprise"), &Limits::default()).ok()
        })
        .as_ref()
}

/// Splits a policy-load input into a policy folder.
pub fn policy_files(data: &[u8]) -> Files {
    let mut parts = data.splitn(3, |b| *b == 0);
    let mut files = Files::new();
    for (path, part) in
        ["policy.toml", "scripts/fuzz.rhai", "tests/fuzz.toml"].into_iter().zip(parts.by_ref())
    {
        files.insert(path.to_string(), part.to_vec());
    }
    files
}

/// The serialized outcomes of `records` under `p`, account and portfolio level.
fn outcomes(p: &Policy, records: &[Record]) -> String {
    let acc = serde_json::to_string(&engine::evaluate(p, records))
        .unwrap_or_else(|e| format!("account level does not serialize: {e}"));
    let port = serde_json::to_string(&engine::evaluate_portfolio(p, records))
        .unwrap_or_else(|e| format!("portfolio level does not serialize: {e}"));
    format!("{acc}\n{port}")
}

/// Loads `data` as a policy folder; whether it loaded.
/// DESIGN "Determinism": reordering the accounts reorders the per-account output and changes
/// no decision, and every summary is the same (its lists are sorted). Checked on the reversed
/// book, at account and portfolio level.
fn order_independent(p: &Policy, records: &[Record]) {
    if records.len() < 2 {
        return;
    }
    let reversed: Vec<Record> = records.iter().rev().cloned().collect();
    let (fwd, rev) =
        (engine::evaluate_portfolio(p, records), engine::evaluate_portfolio(p, &reversed));
    let fwd_text = format!(
        "{}\n{}",
        json(&fwd.summary),
        fwd.accounts.iter().map(json).collect::<Vec<_>>().join("\n")
    );
    let rev_text = format!(
        "{}\n{}",
        json(&rev.summary),
        rev.accounts.iter().rev().map(json).collect::<Vec<_>>().join("\n")
    );
    // Wall-clock limits are not deterministic; nothing else may differ.
    if fwd_text.contains("\"time_limit\"") || rev_text.contains("\"time_limit\"") {
        return;
    }
    assert_eq!(fwd_text, rev_text, "the portfolio answer depends on the order of the accounts");
    let (fwd, rev) = (engine::evaluate(p, records), engine::evaluate(p, &reversed));
    let fwd_text: Vec<String> = fwd.iter().map(json).collect();
    let rev_text: Vec<String> = rev.iter().rev().map(json).collect();
    if fwd_text.iter().chain(&rev_text).any(|t| t.contains("\"time_limit\"")) {
        return;
    }
    assert_eq!(fwd_text, rev_text, "an account's decision depends on the order of the accounts");
}

/// `v` as JSON text, without the `record` of an error: that is the account's position in the
/// input the engine was given, which a reordered book changes by definition.
fn json<T: serde::Serialize>(v: &T) -> String {
    let mut v = match serde_json::to_value(v) {
        Ok(v) => v,
        Err(e) => return format!("does not serialize: {e}"),
    };
    if let Some(err) = v.get_mut("error").and_then(serde_json::Value::as_object_mut) {
        err.remove("record");
    }
    v.to_string()
}

pub fn policy_load(data: &[u8]) -> bool {
    if data.len() > MAX_INPUT {
        return false;
    }
    let files = policy_files(data);
    let fast = policy::load_files("fuzz", &files, &Limits::default());
    let slow = policy::load_files("fuzz", &files, &Limits { native: false, ..Limits::default() });
    let (fast, slow) = match (fast, slow) {
        (Ok(f), Ok(s)) => (f, s),
        (Err(a), Err(b)) => {
            // A report must render (the CLI and the dry-run's 422 both print it).
            let (a, b) = (a.to_string(), b.to_string());
            assert_eq!(a, b, "the native switch changed the load report");
            return false;
        }
        (f, s) => panic!("loads with the native path: {}, without: {}", f.is_ok(), s.is_ok()),
    };
    assert_eq!(fast.hash, slow.hash);
    let records = sample_records();
    let (a, b) = (outcomes(&fast, records), outcomes(&slow, records));
    // Wall-clock limits are not deterministic (one path may be slower on a busy machine);
    // every other outcome must be byte for byte the same.
    if !a.contains("\"time_limit\"") && !b.contains("\"time_limit\"") {
        assert_eq!(a, b, "native and rhai outcomes differ");
    }
    order_independent(&fast, records);
    let _ = engine::testrun::run_cases(&fast);
    true
}

pub fn snapshot(data: &[u8], format: Format) {
    if data.len() > MAX_INPUT {
        return;
    }
    // The CLI reads its input as UTF-8 text and refuses anything else before parsing.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Some(policy) = enterprise() else { panic!("policies/enterprise does not load") };
    let Ok(records) = snapshot::read(text, format, policy) else { return };
    if format == Format::Jsonl {
        assert_eq!(
            records.len(),
            text.lines().filter(|l| !l.trim().is_empty()).count(),
            "one record per non-blank line"
        );
    }
    for s in records.iter().flatten() {
        let _ = snapshot::validate(policy, s);
    }
    let _ = outcomes(policy, &records);
    // Big books are parsed for the parser's sake; the order check is for books of a few.
    if records.len() <= 64 {
        order_independent(policy, &records);
    }
}

/// The routes [`http`] drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Evaluate,
    DryRun,
}

struct Server {
    rt: tokio::runtime::Runtime,
    router: Router,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => panic!("no tokio runtime: {e}"),
        };
        // The shipped policies, read in place: the fuzz inputs never write to the folder
        // (there is no admin token, so no reload route).
        let service = Arc::new(Service::new(
            repo_root().join("policies"),
            Limits::default(),
            Some("enterprise".into()),
        ));
        let outcome = service.reload();
        assert!(service.ready().is_ok(), "the shipped policies do not load: {outcome:?}");
        let app = tierwise::http::App::new(
            service,
            tierwise::http::Config::default(),
            DecisionLog::off(),
        );
        Server { rt, router: tierwise::http::app(app) }
    })
}

/// Sends `data` to `route`; the answer's status (`None`: the input was too large to send).
pub fn http(data: &[u8], route: Route) -> Option<StatusCode> {
    if data.len() > MAX_INPUT {
        return None;
    }
    let s = server();
    let uri = match route {
        Route::Evaluate => "/v1/evaluate",
        Route::DryRun => "/v1/dry-run",
    };
    let req = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(data.to_vec()));
    let Ok(req) = req else { panic!("request does not build") };
    let (status, content_type, body) = s.rt.block_on(async {
        let res = match s.router.clone().oneshot(req).await {
            Ok(res) => res,
            Err(e) => match e {},
        };
        let status = res.status();
        let ct = res
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = match res.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => panic!("the answer's body fails: {e}"),
        };
        (status, ct, body)
    });
    // A 500 is a bug by definition (`internal` errors are for what cannot happen); 503 is
    // load shedding or the request timeout, by design (a slow input is libFuzzer's
    // `-timeout` finding instead).
    assert!(
        !status.is_server_error() || status == StatusCode::SERVICE_UNAVAILABLE,
        "{uri} answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    if content_type.starts_with("application/json")
        && let Err(e) = serde_json::from_slice::<serde_json::Value>(&body)
    {
        panic!(
            "{uri} answered {status} with invalid JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        );
    }
    if status != StatusCode::OK {
        assert!(
            content_type.starts_with("application/json"),
            "{uri}: a {status} that is not JSON: {content_type}"
        );
    }
    Some(status)
}
