//! `POST /v1/dry-run`: what a policy change would do to a book, asked over HTTP.
//!
//! The candidate is a policy folder sent inline (`candidate.files`), the baseline's own files
//! with `overrides` applied, or both (the overrides applied to the candidate's files). The
//! baseline is a served policy, and its overrides apply to the very files its live version was
//! compiled from ([`crate::service::Loaded::files`]).
//!
//! The candidate is untrusted input: its files are checked (how many, how big, which paths)
//! before anything reads them, then compiled by [`policy::load_files`] with the service's
//! sandbox [`crate::script::Limits`], exactly as a reload would, plus one more: a wall-clock
//! budget for the whole candidate evaluation (the request timeout), so a hostile script costs
//! at most that much per dry run, and at most [`super::DRY_RUNS_AT_ONCE`] run at once.
//! Everything runs on the blocking pool. Nothing shared is written: the candidate lives for this request only, both
//! evaluations go to the engine directly (not through [`crate::service::Service::portfolio`],
//! where the decision cache sits), and the decision log gets a line of its own kind
//! ([`crate::decision_log::DryRun`]), never per-account decisions.

use super::handlers::{account_list, lookup_error, parse_capped, read_accounts};
use super::{ApiError, AppState, DryRunPriority, JsonBody};
use crate::decision_log;
use crate::engine::PolicyRef;
use crate::policy::limits;
use crate::policy::{self, Diagnostic, Files, overrides};
use crate::service::candidate::{self, CandidateError, TestCases};
use crate::whatif::{self, PolicyDiff, render};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Instant;

pub use crate::policy::limits::{MAX_CANDIDATE_BYTES, MAX_CANDIDATE_FILES};
/// Most accounts the markdown and table forms may be asked to list.
pub const MAX_TOP: u32 = 10_000;
/// Accounts the markdown and table forms list by default (JSON lists every one).
const DEFAULT_TOP: usize = 20;

/// `POST /v1/dry-run` body.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = something_to_compare)]
pub struct DryRunRequest<'a> {
    /// The served policy to compare with; absent: the default policy.
    #[serde(default)]
    pub baseline: Option<String>,
    /// A whole candidate policy folder, sent inline.
    #[serde(default, deserialize_with = "crate::jsonmap::object_opt")]
    pub candidate: Option<CandidateFolder>,
    /// Values of `policy.toml` to change, by path (`"tiers.key.min_score": 7.0`,
    /// `"score.criteria[id=revenue].weight": 5`): applied to the candidate's files when a
    /// candidate is sent, else to the baseline's own files. A path that names nothing is a
    /// 422 `invalid_override` with a "did you mean".
    #[serde(default, borrow, deserialize_with = "crate::jsonmap::unique_opt")]
    #[schemars(with = "Option<BTreeMap<String, Value>>")]
    #[schemars(extend("maxProperties" = limits::MAX_CANDIDATE_FILES))]
    pub overrides: Option<BTreeMap<String, &'a RawValue>>,
    /// `json` (the default), `markdown` (a pull-request comment, `text/markdown`) or `table`
    /// (`text/plain`); `?format=` in the query does the same.
    #[serde(default)]
    pub format: Option<DiffFormat>,
    /// How many changed accounts the markdown and table forms list (default 20; JSON lists all).
    #[serde(default)]
    #[schemars(range(max = MAX_TOP))]
    pub top: Option<u32>,
    /// The book: decided under both policies, at portfolio level.
    #[serde(borrow, deserialize_with = "account_list")]
    #[schemars(with = "Vec<super::handlers::AccountItem>")]
    pub accounts: Vec<&'a RawValue>,
}

/// The schema says what [`run`] checks first: a candidate, overrides, or both (not `null`).
fn something_to_compare(s: &mut schemars::Schema) {
    s.insert(
        "anyOf".into(),
        json!([
            { "required": ["candidate"], "properties": { "candidate": { "type": "object" } } },
            { "required": ["overrides"], "properties": { "overrides": { "type": "object" } } }
        ]),
    );
}

/// A policy folder sent inline.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CandidateFolder {
    /// Relative path → text. Only `policy.toml` (required), `scripts/NAME.rhai` and
    /// `tests/NAME.toml`; at most 64 files and 1 MiB in all (with the overrides).
    #[schemars(extend("maxProperties" = MAX_CANDIDATE_FILES))]
    #[schemars(extend("required" = ["policy.toml"]))]
    #[schemars(extend("propertyNames" = { "pattern": CANDIDATE_PATH_PATTERN }))]
    #[serde(deserialize_with = "crate::jsonmap::unique")]
    pub files: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiffFormat {
    Json,
    Markdown,
    Table,
}

impl DiffFormat {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "json" => Some(DiffFormat::Json),
            "markdown" | "md" => Some(DiffFormat::Markdown),
            "table" | "text" => Some(DiffFormat::Table),
            _ => None,
        }
    }
}

/// `POST /v1/dry-run` answer (JSON).
#[derive(Serialize, JsonSchema)]
pub struct DryRunResponse<'a> {
    /// Unique id of this dry run, also in the decision log (as a dry run) and the
    /// `x-decision-id` header.
    pub decision_id: &'a str,
    /// Always `true`: nothing went live, nothing was cached, no decision was logged as live.
    pub dry_run: bool,
    /// The served policy compared with.
    pub baseline: &'a PolicyRef,
    pub candidate: CandidateInfo<'a>,
    /// The difference (`/v1/schemas/diff`).
    pub diff: &'a PolicyDiff,
}

/// What the candidate was.
#[derive(Serialize, JsonSchema)]
pub struct CandidateInfo<'a> {
    /// Named after the baseline; its hash covers the candidate's files after the overrides.
    #[serde(flatten)]
    pub policy: &'a PolicyRef,
    /// `files` (a folder sent inline), `overrides` (the baseline's files with overrides) or
    /// `files+overrides`.
    pub source: &'static str,
    /// The overrides applied, as `path=value`, in path order.
    pub overrides: &'a [String],
    /// Lint warnings of the candidate (`tierwise check`'s); they do not stop a dry run.
    pub warnings: &'a [Diagnostic],
    /// The candidate's own test cases (`tests/*.toml`), run as a reload runs them: a
    /// candidate with a failing case would be rejected, and the live version kept.
    pub test_cases: TestCases,
}

pub async fn dry_run(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    on_dry_run_pool(app, "dry-run task", move |app| run(app, &body.0, query.as_deref(), start))
        .await
}

/// Runs a candidate's work (a dry run, a backtest, the console's) on the blocking pool and
/// the dry runs' threads ([`pool`]), at most [`super::DRY_RUNS_AT_ONCE`] at once (503
/// `overloaded` past that). `task` names it in an internal error.
pub(super) async fn on_dry_run_pool<T, W>(
    app: AppState,
    task: &'static str,
    work: W,
) -> Result<T, ApiError>
where
    T: Send + 'static,
    W: FnOnce(&AppState) -> Result<T, ApiError> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        // Held by the work itself: a request that timed out still counts until its work ends.
        let Ok(_permit) = app.dry_runs.try_acquire() else {
            app.metrics.overloaded.inc();
            return Err(ApiError::overloaded());
        };
        match pool(app.config.dry_run_priority) {
            Some(p) => p.install(|| work(&app)),
            None => work(&app),
        }
    })
    .await
    .map_err(|e| ApiError::internal(task, e))?
}

/// The threads dry runs are compiled and evaluated on, one pool per priority (see
/// [`DryRunPriority`]). A candidate is untrusted and a book keeps every core busy for a
/// while: at equal priority a hostile dry run took the cores from live `/v1/evaluate` traffic
/// (its p99 rose 6-8x on 2 cores); at nice 19 still 2.4x; with `SCHED_IDLE`, 1.0x. `None` (no
/// pool could be started) runs the dry run on the blocking thread and the global pool.
pub(super) fn pool(priority: DryRunPriority) -> Option<&'static rayon::ThreadPool> {
    use thread_priority::{
        NormalThreadSchedulePolicy as Normal, ThreadPriority, ThreadSchedulePolicy as Policy,
    };
    static POOLS: [std::sync::OnceLock<Option<rayon::ThreadPool>>; 3] =
        [const { std::sync::OnceLock::new() }; 3];
    let slot = match priority {
        DryRunPriority::Idle => 0,
        DryRunPriority::Low => 1,
        DryRunPriority::Normal => 2,
    };
    POOLS[slot]
        .get_or_init(|| {
            rayon::ThreadPoolBuilder::new()
                .thread_name(|i| format!("tierwise-dry-run-{i}"))
                .start_handler(move |_| {
                    // Lowering one's own priority needs no privilege; if it fails, the pool
                    // still works, at the normal priority.
                    let _ = match priority {
                        DryRunPriority::Idle => thread_priority::set_thread_priority_and_policy(
                            thread_priority::thread_native_id(),
                            ThreadPriority::Min,
                            Policy::Normal(Normal::Idle),
                        ),
                        DryRunPriority::Low => {
                            thread_priority::set_current_thread_priority(ThreadPriority::Min)
                        }
                        DryRunPriority::Normal => Ok(()),
                    };
                })
                .build()
                .ok()
        })
        .as_ref()
}

/// The file names [`path_problem`] accepts, as the schema says them.
const CANDIDATE_PATH_PATTERN: &str = r"^(policy\.toml|scripts/[A-Za-z0-9_-][A-Za-z0-9_.-]*\.rhai|tests/[A-Za-z0-9_-][A-Za-z0-9_.-]*\.toml)$";

pub(super) fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
}

/// `?format=markdown&top=10`, the format read by `parse` (`choices` names the formats for
/// the error); other keys are left to others.
pub(super) fn query_options<F>(
    query: Option<&str>,
    parse: fn(&str) -> Option<F>,
    choices: &str,
) -> Result<(Option<F>, Option<u32>), ApiError> {
    let (mut format, mut top) = (None, None);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "format" => {
                format =
                    Some(parse(v).ok_or_else(|| {
                        bad_request(format!("unknown format `{v}`: use {choices}"))
                    })?)
            }
            "top" => {
                top =
                    Some(v.parse().map_err(|_| {
                        bad_request(format!("`top` must be a whole number, got `{v}`"))
                    })?)
            }
            _ => {}
        }
    }
    Ok((format, top))
}

/// The format asked for, in the query or the body (both: they must agree), else `default`.
pub(super) fn one_format<F: PartialEq>(
    query: Option<F>,
    body: Option<F>,
    default: F,
) -> Result<F, ApiError> {
    match (query, body) {
        (Some(a), Some(b)) if a != b => {
            Err(bad_request("`format` in the query and in the body differ"))
        }
        (a, b) => Ok(a.or(b).unwrap_or(default)),
    }
}

/// The content type of a text form: markdown or a terminal table.
pub(super) fn text_type(markdown: bool) -> &'static str {
    if markdown { "text/markdown; charset=utf-8" } else { "text/plain; charset=utf-8" }
}

/// A dry run's answer (`x-dry-run: true`): the bytes, their type and the ids that name it
/// (a header whose value is absent or not a header value is left out).
pub(super) fn dry_run_answer(
    bytes: Vec<u8>,
    content_type: &'static str,
    ids: [(&'static str, Option<&str>); 3],
) -> Response {
    let mut res = (StatusCode::OK, bytes).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    for (name, value) in ids {
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            h.insert(name, v);
        }
    }
    h.insert("x-dry-run", HeaderValue::from_static("true"));
    res
}

/// Why a candidate file name is refused, if it is.
fn path_problem(path: &str) -> Option<&'static str> {
    if path.starts_with('/') || path.starts_with('\\') || path.get(1..2) == Some(":") {
        return Some("an absolute path: paths are relative to the candidate folder");
    }
    if path.split(['/', '\\']).any(|s| s == "..") {
        return Some("`..` would leave the candidate folder");
    }
    if path.contains('\\') {
        return Some("separate folders with `/`");
    }
    if path == "policy.toml" {
        return None;
    }
    let Some((dir, name)) = path.split_once('/') else {
        return Some(
            "not part of a policy: only `policy.toml`, `scripts/NAME.rhai` and `tests/NAME.toml`",
        );
    };
    let ext = match dir {
        "scripts" => ".rhai",
        "tests" => ".toml",
        _ => {
            return Some(
                "not part of a policy: only `policy.toml`, `scripts/NAME.rhai` and `tests/NAME.toml`",
            );
        }
    };
    let Some(stem) = name.strip_suffix(ext) else {
        return Some(if dir == "scripts" {
            "a script file must be `scripts/NAME.rhai`"
        } else {
            "a test file must be `tests/NAME.toml`"
        });
    };
    if stem.is_empty()
        || stem.starts_with('.')
        || !stem.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Some("a file name is letters, digits, `_`, `-` and `.`, not starting with `.`");
    }
    None
}

/// A candidate over [`limits::check_candidate`]'s budget: 413, as every "too much content".
pub(super) fn too_large(e: limits::TooLarge) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, e.code, e.message).details(e.details)
}

/// The candidate's files, checked (their size was, with the overrides): every path (400).
pub(super) fn candidate_files(c: &CandidateFolder) -> Result<Files, ApiError> {
    let bad: Vec<Value> = c
        .files
        .keys()
        .filter_map(|p| path_problem(p).map(|why| json!({ "path": p, "problem": why })))
        .collect();
    if !bad.is_empty() {
        let first = c.files.keys().find(|p| path_problem(p).is_some()).cloned().unwrap_or_default();
        let n = bad.len();
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_candidate_path",
            format!(
                "{n} candidate file name{} refused, first `{first}`: {}",
                if n == 1 { " is" } else { "s are" },
                bad[0]["problem"].as_str().unwrap_or_default()
            ),
        )
        .details(json!({ "files": bad })));
    }
    Ok(c.files.iter().map(|(p, t)| (p.clone(), t.clone().into_bytes())).collect())
}

pub(super) fn override_error(errors: Vec<overrides::OverrideError>) -> ApiError {
    let one = |e: &overrides::OverrideError| match &e.help {
        Some(h) => format!("override `{}`: {}; {h}", e.path, e.message),
        None => format!("override `{}`: {}", e.path, e.message),
    };
    let message = match errors.as_slice() {
        [e] => one(e),
        [e, ..] => format!("{} overrides cannot be applied; first: {}", errors.len(), one(e)),
        [] => "the overrides cannot be applied".into(),
    };
    let list: Vec<Value> = errors
        .iter()
        .map(|e| match &e.help {
            Some(help) => json!({ "path": e.path, "message": e.message, "help": help }),
            None => json!({ "path": e.path, "message": e.message }),
        })
        .collect();
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_override", message)
        .details(json!({ "overrides": list }))
}

fn candidate_unsafe(tripped: &[whatif::FailureDelta]) -> ApiError {
    let mut by_code: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for f in tripped {
        *by_code.entry(f.error.code).or_default() += 1;
    }
    // The accounts that really hit a limit name it and its place; those stopped after the
    // first hit (never evaluated) only say so, so they come last.
    let (hit, stopped) = candidate::tripped_in_order(tripped);
    let first = hit
        .first()
        .or(stopped.first())
        .map(|f| format!("; first: `{}`: {}", f.id.as_deref().unwrap_or("?"), f.error.message))
        .unwrap_or_default();
    let examples: Vec<Value> = hit
        .iter()
        .chain(&stopped)
        .take(5)
        .map(|f| json!({ "id": f.id, "record": f.record, "error": f.error }))
        .collect();
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "candidate_sandbox_limit",
        format!("the candidate policy hits a sandbox limit on {} account(s) the baseline decides{first}", tripped.len()),
    )
    .details(json!({ "accounts": tripped.len(), "stopped_early": stopped.len(), "by_code": by_code, "examples": examples }))
}

pub(super) fn candidate_error(e: CandidateError) -> ApiError {
    match e {
        CandidateError::Overrides(errors) => override_error(errors),
        CandidateError::Invalid { report, with_overrides } => {
            candidate_invalid(report, with_overrides)
        }
    }
}

/// 422 `candidate_output_limit`: the candidate's alerts fan out past the output budget (too
/// many on one account, or too many bytes over the book), naming the rule.
fn candidate_output_limit(rule: &str, tripped: &[&whatif::FailureDelta], limit: usize) -> ApiError {
    let first = tripped.iter().find(|f| f.error.code == "output_limit");
    let why = first
        .map(|f| format!("; first: `{}`: {}", f.id.as_deref().unwrap_or("?"), f.error.message))
        .unwrap_or_default();
    let examples: Vec<Value> = tripped
        .iter()
        .filter(|f| f.error.code == "output_limit")
        .take(5)
        .map(|f| json!({ "id": f.id, "record": f.record, "error": f.error }))
        .collect();
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "candidate_output_limit",
        format!("the candidate policy's `{rule}` fans out past the output limits (alerts per account, or {limit} bytes of alerts over the book){why}"),
    )
    .details(json!({ "rule": rule, "limit_bytes": limit, "examples": examples }))
}

pub(super) fn candidate_invalid(report: policy::Report, with_overrides: bool) -> ApiError {
    let n = report.errors().count();
    let first = report
        .errors()
        .next()
        .map(|d| format!("; first: {}", d.to_string().lines().next().unwrap_or("")))
        .unwrap_or_default();
    let with = if with_overrides { " (with the overrides)" } else { "" };
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "candidate_invalid",
        format!(
            "the candidate policy{with} has {n} problem{}{first}",
            if n == 1 { "" } else { "s" }
        ),
    )
    .details(json!({ "policy": report.policy, "diagnostics": report.diagnostics }))
}

/// What a request's candidate part (`candidate`, `overrides`) made, over its baseline.
pub(super) struct SentCandidate {
    pub baseline: std::sync::Arc<crate::service::Loaded>,
    pub candidate: candidate::Candidate,
    pub size: limits::Size,
    /// A digest of the files and overrides as sent (the decision log keeps it, not them).
    pub digest: String,
}

/// The candidate of a dry run or a backtest: held to the candidate budget (files and
/// overrides together) before anything is looked up or parsed, then built by the one
/// candidate builder ([`candidate::build`]) over `baseline`'s files (or the folder sent),
/// compiled with the service's sandbox and a deadline at the request timeout.
pub(super) fn candidate_of(
    app: &AppState,
    folder: Option<&CandidateFolder>,
    raw_overrides: Option<&BTreeMap<String, &RawValue>>,
    baseline: Option<&str>,
    start: Instant,
) -> Result<SentCandidate, ApiError> {
    let size =
        limits::check_candidate(folder.map(|c| &c.files), raw_overrides).map_err(too_large)?;
    let digest = limits::digest_of(folder.map(|c| &c.files), raw_overrides);
    let sent = folder.map(candidate_files).transpose()?;
    let baseline = app.service.policy(baseline).map_err(lookup_error)?;
    let sent_files = sent.is_some();
    let files = sent.unwrap_or_else(|| (*baseline.files).clone());
    let list = match raw_overrides {
        Some(raw) => {
            let mut map = serde_json::Map::new();
            for (k, v) in raw {
                let v: Value = serde_json::from_str(v.get()).map_err(|e| {
                    let msg = e.to_string();
                    let msg = msg.rsplit_once(" at line ").map_or(msg.as_str(), |(m, _)| m);
                    bad_request(format!("override `{k}`: {msg}"))
                })?;
                map.insert(k.clone(), v);
            }
            Some(overrides::from_json_map(&map).map_err(override_error)?)
        }
        None => None,
    };
    // The service's sandbox, plus a deadline for the whole candidate: past the request
    // timeout (the client has its 503 by then) compiling and every evaluation left stop.
    let until = start.checked_add(app.config.request_timeout);
    let limits = crate::script::Limits { until, ..app.service.limits().clone() };
    let candidate =
        candidate::build(&baseline.policy.name, files, sent_files, list.as_deref(), &limits)
            .map_err(candidate_error)?;
    Ok(SentCandidate { baseline, candidate, size, digest })
}

/// Parse, check, compile, evaluate both, compare, log, render. Blocking.
fn run(
    app: &AppState,
    body: &[u8],
    query: Option<&str>,
    start: Instant,
) -> Result<Response, ApiError> {
    let (q_format, q_top) =
        query_options(query, DiffFormat::parse, "`json`, `markdown` or `table`")?;
    let req: DryRunRequest<'_> = parse_capped(body, app.service.limits().max_accounts)?;
    let format = one_format(q_format, req.format, DiffFormat::Json)?;
    // Each is checked, whichever is used: the query's wins, the body's must still be valid.
    if let Some(t) = [q_top, req.top].into_iter().flatten().find(|t| *t > MAX_TOP) {
        return Err(bad_request(format!("`top` is at most {MAX_TOP}, got {t}")));
    }
    let top = q_top.or(req.top).map_or(DEFAULT_TOP, |t| t as usize);
    if req.candidate.is_none() && req.overrides.is_none() {
        return Err(bad_request(
            "nothing to compare: send `candidate` (a policy folder's files), `overrides`, or both",
        ));
    }
    let sent = candidate_of(
        app,
        req.candidate.as_ref(),
        req.overrides.as_ref(),
        req.baseline.as_deref(),
        start,
    )?;
    let (baseline, cand, size, candidate_digest) =
        (sent.baseline, sent.candidate, sent.size, sent.digest);
    let until = start.checked_add(app.config.request_timeout);
    let (records, _skipped) = read_accounts(
        &req.accounts,
        &[&baseline.policy, &cand.policy],
        app.service.limits().max_fields,
    )?;
    let max_out = app.service.limits().max_response_bytes;
    let what_if =
        app.pipeline.what_if(&baseline.policy, &cand.policy, &records, None, until, max_out);
    drop(records);
    if let Some(rule) = &what_if.baseline_over {
        // The served policy itself fans out over this book: the same 413 a live request gets.
        return Err(ApiError::response_too_large(max_out, Some(rule)));
    }
    // A candidate that runs into the sandbox on live data (an endless loop, runaway recursion,
    // a string or map without bound, alerts past the output budget) could never go live:
    // refuse it, with its places.
    let tripped: Vec<&whatif::FailureDelta> = what_if.tripped.iter().collect();
    if let Some(rule) = &what_if.candidate_over {
        return Err(candidate_output_limit(rule, &tripped, what_if.candidate_limit));
    }
    if let Some(f) = tripped.iter().find(|f| f.error.code == "output_limit") {
        let rule = f.error.rule.clone().unwrap_or_default();
        return Err(candidate_output_limit(&rule, &tripped, what_if.candidate_limit));
    }
    if !what_if.tripped.is_empty() {
        return Err(candidate_unsafe(&what_if.tripped));
    }
    let test_cases = cand.test_cases();
    let diff = what_if.diff;
    let applied = cand.applied;
    let candidate = cand.policy;
    let source = cand.source.as_str();

    let decision_id = uuid::Uuid::now_v7().to_string();
    app.log.record_dry_run(&decision_log::DryRun {
        ts: crate::service::timestamp(std::time::SystemTime::now()),
        decision_id: &decision_id,
        request_id: None,
        level: "dry_run",
        dry_run: true,
        policy: &baseline.pref,
        candidate: &diff.candidate,
        candidate_digest: &candidate_digest,
        candidate_bytes: size.bytes,
        files: size.files,
        overrides: size.overrides,
        duration_ms: start.elapsed().as_secs_f64() * 1e3,
        summary: &diff.summary,
    });

    let (bytes, content_type) = match format {
        DiffFormat::Json => {
            let out = DryRunResponse {
                decision_id: &decision_id,
                dry_run: true,
                baseline: &baseline.pref,
                candidate: CandidateInfo {
                    policy: &diff.candidate,
                    source,
                    overrides: &applied,
                    warnings: &candidate.warnings,
                    test_cases,
                },
                diff: &diff,
            };
            (
                serde_json::to_vec(&out).map_err(|e| ApiError::internal("serialize", e))?,
                "application/json",
            )
        }
        DiffFormat::Markdown | DiffFormat::Table => {
            let ctx = render::Context {
                overrides: applied.clone(),
                candidate_dir: req
                    .candidate
                    .is_some()
                    .then(|| format!("candidate {}", candidate.short_hash())),
            };
            let mut text = if format == DiffFormat::Markdown {
                render::markdown(&diff, &ctx, top)
            } else {
                render::table(&diff, &ctx, top)
            };
            if let Some(note) = test_cases.note(format == DiffFormat::Markdown) {
                text.push_str(&note);
            }
            (text.into_bytes(), text_type(format == DiffFormat::Markdown))
        }
    };
    Ok(dry_run_answer(
        bytes,
        content_type,
        [
            ("x-decision-id", Some(&decision_id)),
            ("x-policy-hash", Some(&baseline.policy.hash)),
            ("x-candidate-hash", Some(&candidate.hash)),
        ],
    ))
}

#[cfg(test)]
mod tests {
    use super::path_problem;

    #[test]
    fn candidate_paths() {
        for ok in ["policy.toml", "scripts/fit.rhai", "scripts/my-fit_2.rhai", "tests/cases.toml"] {
            assert_eq!(path_problem(ok), None, "{ok}");
        }
        for bad in [
            "../policy.toml",
            "scripts/../../etc/passwd.rhai",
            "/etc/passwd",
            "C:/x/policy.toml",
            "scripts\\fit.rhai",
            "scripts/sub/fit.rhai",
            "scripts/.hidden.rhai",
            "scripts/fit.py",
            "tests/cases.json",
            "README.md",
            "other/policy.toml",
            "scripts/.rhai",
            "",
        ] {
            assert!(path_problem(bad).is_some(), "{bad:?} accepted");
        }
    }
}
