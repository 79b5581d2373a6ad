//! The console under `/ui/`: the rev-ops face of the service, server-rendered HTML over the
//! same service calls as the API.
//!
//! Pages: Policies (what is loaded, in words), Book (a book uploaded or pasted, decided at
//! portfolio level, charts and a filterable table), Account (one decision explained, with the
//! single changes that would reach the next tier), What-if (form fields generated from the
//! policy, or its `policy.toml` edited, and the diff a dry run gives), Backtest.
//!
//! Every page works as a plain form post (no script needed); `assets/console.js` only keeps
//! the uploaded book in the browser's session storage (so the other pages can use it), reads
//! a chosen file into the form, re-renders the what-if diff as fields change, filters the
//! book table and copies the markdown. The server keeps nothing: a book lives for one request.
//!
//! Safety, as for `/v1/dry-run`: the same body limit (the router's), the request timeout as a
//! budget for every evaluation, candidates compiled with the service's sandbox, work done on
//! the dry-run pool (`--dry-run-priority`, idle by default) and at most
//! [`super::DRY_RUNS_AT_ONCE`] at once. Every value reaches the page through maud, which
//! escapes it; the Content-Security-Policy allows only this origin's script and stylesheet
//! and no inline script or style at all.

mod fields;
mod pages;
mod svg;

use super::{ApiError, AppState, Deadline};
use crate::policy::{self, overrides};
use crate::script;
use crate::service::{Loaded, Registry, candidate};
use crate::snapshot::{self, Record};
use crate::whatif::{self, PolicyDiff};
use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use maud::Markup;
use std::sync::Arc;

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// The policy every console page is sent with: same-origin script and style only, nothing
/// inline, no framing, forms only to this origin.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The console's routes (mounted by [`super::app`] unless `--console off`).
pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(policies))
        .route("/ui/policies", get(policies))
        .route("/ui/book", get(book_page).post(book_post))
        .route("/ui/account", get(account_page).post(account_post))
        .route("/ui/whatif", get(whatif_page).post(whatif_post))
        .route("/ui/whatif/policy.toml", axum::routing::post(whatif_download))
        .route("/ui/backtest", get(backtest_page).post(backtest_post))
        .route("/ui/assets/console.css", get(|| async { asset(CSS, "text/css; charset=utf-8") }))
        .route(
            "/ui/assets/console.js",
            get(|| async { asset(JS, "text/javascript; charset=utf-8") }),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), super::limit_and_timeout))
        .route_layer(middleware::from_fn(security_headers))
}

/// Security headers on every console answer; pages are never cached (they may show a book).
async fn security_headers(req: axum::extract::Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

fn asset(body: &'static str, ct: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(ct)),
            // The bytes change only with the binary; an hour keeps a page change visible soon.
            (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600")),
        ],
        body,
    )
        .into_response()
}

/// A page (or, for the script's requests, only its result section) as an answer.
fn html(status: StatusCode, m: Markup) -> Response {
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"))], m.0)
        .into_response()
}

/// The script asks for the result section only (`x-console: fragment`).
fn wants_fragment(h: &HeaderMap) -> bool {
    h.get("x-console").is_some_and(|v| v.as_bytes() == b"fragment")
}

/// A form as posted: every pair, in order (the what-if form's names are the policy's own).
type Pairs = Vec<(String, String)>;

fn field<'a>(form: &'a Pairs, name: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[derive(serde::Deserialize, Default)]
pub(super) struct PageQuery {
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    id: Option<String>,
}

fn nonempty(s: Option<&str>) -> Option<&str> {
    s.map(str::trim).filter(|s| !s.is_empty())
}

/// The policy a page asked for (`None`: the default), or the error to show.
fn lookup(app: &AppState, name: Option<&str>) -> Result<Arc<Loaded>, ApiError> {
    app.service.policy(nonempty(name)).map_err(super::handlers::lookup_error)
}

/// Runs console work as a dry run runs ([`super::dryrun::on_dry_run_pool`]: the blocking
/// pool, one of the [`super::DRY_RUNS_AT_ONCE`] slots, the dry-run threads' priority), every
/// evaluation under the request's deadline.
async fn offload(
    app: &AppState,
    deadline: Deadline,
    work: impl FnOnce(&AppState) -> Result<Markup, ApiError> + Send + 'static,
) -> Result<Markup, ApiError> {
    super::dryrun::on_dry_run_pool(app.clone(), "console task", move |app| {
        let budget = script::Budget::new(Some(deadline.0));
        script::with_budget(Some(budget), || work(app))
    })
    .await
}

/// A posted form's answer: the result section alone when the script asks for a fragment,
/// else the whole page around it (`page`); an error as the page (`title`, `nav`) shows one.
fn answer(
    app: &AppState,
    done: Result<Markup, ApiError>,
    fragment: bool,
    (title, nav): (&str, pages::Nav),
    page: impl FnOnce(&Registry, Markup) -> Markup,
) -> Response {
    match done {
        Ok(m) if fragment => html(StatusCode::OK, m),
        Ok(m) => html(StatusCode::OK, page(&app.service.registry(), m)),
        Err(e) => error_page(title, nav, &e, fragment),
    }
}

/// A book as pasted or uploaded: JSON (an array), JSON lines or CSV, told apart by the first
/// character. CSV columns are typed by `policy`'s inputs.
fn read_book(app: &AppState, text: &str, policy: &policy::Policy) -> Result<Vec<Record>, ApiError> {
    let t = text.trim_start_matches('\u{feff}').trim();
    if t.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            "the book is empty: paste a CSV export, JSON lines or a JSON array, or choose a file",
        ));
    }
    let format = match t.as_bytes()[0] {
        b'[' => snapshot::Format::Json,
        b'{' => snapshot::Format::Jsonl,
        _ => snapshot::Format::Csv,
    };
    let records = snapshot::read(t, format, policy).map_err(|e| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", e.to_string())
    })?;
    let cap = app.service.limits().max_accounts;
    if records.len() > cap {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_accounts",
            format!("the book holds {} accounts, more than the limit of {cap}", records.len()),
        ));
    }
    Ok(records)
}

fn error_page(title: &str, nav: pages::Nav, e: &ApiError, fragment: bool) -> Response {
    let body = pages::error(e);
    if fragment {
        return html(e.status, body);
    }
    html(e.status, pages::layout(title, nav, body))
}

// ---------------------------------------------------------------------------------------------
// Policies

async fn policies(State(app): State<AppState>) -> Response {
    let reg = app.service.registry();
    html(StatusCode::OK, pages::policies(&reg))
}

// ---------------------------------------------------------------------------------------------
// Book

async fn book_page(State(app): State<AppState>, Query(q): Query<PageQuery>) -> Response {
    let reg = app.service.registry();
    html(StatusCode::OK, pages::book_page(&reg, q.policy.as_deref(), None))
}

async fn book_post(
    State(app): State<AppState>,
    deadline: Deadline,
    headers: HeaderMap,
    form: Result<Form<Pairs>, axum::extract::rejection::FormRejection>,
) -> Response {
    let fragment = wants_fragment(&headers);
    let form = match form {
        Ok(Form(f)) => f,
        Err(e) => return error_page("Book", pages::Nav::Book, &form_error(e), fragment),
    };
    let policy = field(&form, "policy").map(str::to_string);
    let done = offload(&app, deadline, move |app| -> Result<Markup, ApiError> {
        let loaded = lookup(app, policy.as_deref())?;
        let records = read_book(app, field(&form, "book").unwrap_or(""), &loaded.policy)?;
        let result = app.pipeline.decide_portfolio(&loaded, &records);
        Ok(pages::book_result(&loaded, &result, &records))
    })
    .await;
    answer(&app, done, fragment, ("Book", pages::Nav::Book), |reg, m| {
        pages::book_page(reg, None, Some(m))
    })
}

fn form_error(e: axum::extract::rejection::FormRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the form is larger than the server's body limit (TIERWISE_BODY_LIMIT)",
        );
    }
    ApiError::new(
        e.status(),
        "invalid_request",
        format!("the form cannot be read: {}", e.body_text()),
    )
}

// ---------------------------------------------------------------------------------------------
// Account

async fn account_page(State(app): State<AppState>, Query(q): Query<PageQuery>) -> Response {
    let reg = app.service.registry();
    html(StatusCode::OK, pages::account_page(&reg, q.policy.as_deref(), q.id.as_deref(), None))
}

async fn account_post(
    State(app): State<AppState>,
    deadline: Deadline,
    headers: HeaderMap,
    form: Result<Form<Pairs>, axum::extract::rejection::FormRejection>,
) -> Response {
    let fragment = wants_fragment(&headers);
    let form = match form {
        Ok(Form(f)) => f,
        Err(e) => return error_page("Account", pages::Nav::Account, &form_error(e), fragment),
    };
    let policy = field(&form, "policy").map(str::to_string);
    let id = nonempty(field(&form, "id")).map(str::to_string);
    let id2 = id.clone();
    let done = offload(&app, deadline, move |app| -> Result<Markup, ApiError> {
        let loaded = lookup(app, policy.as_deref())?;
        let records = read_book(app, field(&form, "book").unwrap_or(""), &loaded.policy)?;
        // One snapshot: decided on its own, as /v1/evaluate does; a book: at portfolio level,
        // as the Book page shows it (caps and capacity included).
        let (outcomes, level) = if records.len() == 1 {
            (app.pipeline.decide_accounts(&loaded, &records, 0), "account")
        } else {
            (app.pipeline.decide_portfolio(&loaded, &records).accounts, "portfolio")
        };
        let pos = match &id2 {
            Some(id) => outcomes.iter().position(|o| o.id() == Some(id.as_str())),
            None if outcomes.len() == 1 => Some(0),
            None => None,
        };
        let Some(pos) = pos else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_account",
                match &id2 {
                    Some(id) => format!("no account `{id}` in this book"),
                    None => "name the account to explain (its id)".to_string(),
                },
            ));
        };
        let snap = records.get(pos).and_then(|r| r.as_ref().ok());
        Ok(pages::account_result(&loaded, &outcomes[pos], snap, level))
    })
    .await;
    answer(&app, done, fragment, ("Account", pages::Nav::Account), |reg, m| {
        pages::account_page(reg, None, id.as_deref(), Some(m))
    })
}

// ---------------------------------------------------------------------------------------------
// What-if

async fn whatif_page(State(app): State<AppState>, Query(q): Query<PageQuery>) -> Response {
    match lookup(&app, q.policy.as_deref()) {
        Ok(loaded) => {
            let reg = app.service.registry();
            html(StatusCode::OK, pages::whatif_page(&reg, &loaded, None))
        }
        Err(e) => error_page("What-if", pages::Nav::WhatIf, &e, false),
    }
}

/// What the candidate is made of: the baseline's files, `policy.toml` as edited on the page
/// (if it was), the form's overrides on top.
pub(super) struct CandidateFiles {
    pub files: policy::Files,
    pub overrides: Vec<overrides::Override>,
    pub edited: bool,
}

/// Why a candidate cannot be compared: overrides that do not apply, or compile problems
/// (shown at their lines of the edited text).
pub(super) enum CandidateProblem {
    Api(ApiError),
    Overrides(Vec<overrides::OverrideError>),
    Invalid { report: policy::Report, text: String },
}

impl From<ApiError> for CandidateProblem {
    fn from(e: ApiError) -> Self {
        CandidateProblem::Api(e)
    }
}

fn candidate_files(loaded: &Loaded, form: &Pairs) -> Result<CandidateFiles, CandidateProblem> {
    let mut files = (*loaded.files).clone();
    let mut edited = false;
    if let Some(text) = field(form, "policy_toml") {
        // Browsers send a text area's lines ended by CRLF.
        let text = text.replace("\r\n", "\n");
        let same = files.get("policy.toml").is_some_and(|t| t.as_slice() == text.as_bytes());
        if !same && !text.trim().is_empty() {
            if text.len() > super::MAX_CANDIDATE_BYTES {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "candidate_too_large",
                    format!("policy.toml is larger than {} bytes", super::MAX_CANDIDATE_BYTES),
                )
                .into());
            }
            files.insert("policy.toml".into(), text.into_bytes());
            edited = true;
        }
    }
    let list = fields::overrides_from_form(
        &loaded.policy,
        form.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    if !list.is_empty() {
        files = overrides::apply_files(&files, &list).map_err(CandidateProblem::Overrides)?;
    }
    Ok(CandidateFiles { files, overrides: list, edited })
}

/// A compared candidate, for the page.
pub(super) struct Compared {
    pub diff: PolicyDiff,
    pub markdown: String,
    pub overrides: Vec<String>,
    pub edited: bool,
    pub warnings: Vec<policy::Diagnostic>,
    pub failed_cases: Vec<crate::service::FailedCase>,
    pub cases: usize,
}

/// The page's candidate through the one candidate builder (the form's overrides are in the
/// files already), compiled with the service's sandbox and `until`; compile problems keep
/// the text they are shown against.
fn build_candidate(
    app: &AppState,
    loaded: &Loaded,
    c: CandidateFiles,
    until: Option<std::time::Instant>,
) -> Result<candidate::Candidate, CandidateProblem> {
    let limits = crate::script::Limits { until, ..app.service.limits().clone() };
    let text = c
        .files
        .get("policy.toml")
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    candidate::build(&loaded.policy.name, c.files, true, None, &limits).map_err(|e| match e {
        candidate::CandidateError::Overrides(errs) => CandidateProblem::Overrides(errs),
        candidate::CandidateError::Invalid { report, .. } => {
            CandidateProblem::Invalid { report, text }
        }
    })
}

fn compare(
    app: &AppState,
    loaded: &Loaded,
    form: &Pairs,
    until: Option<std::time::Instant>,
) -> Result<Compared, CandidateProblem> {
    let c = candidate_files(loaded, form)?;
    let (given, edited) = (c.overrides.clone(), c.edited);
    let cand = build_candidate(app, loaded, c, until)?;
    let candidate = &cand.policy;
    let book = field(form, "book").unwrap_or("");
    let before_records = read_book(app, book, &loaded.policy)?;
    // CSV columns are typed by each policy's own inputs (a candidate may change them).
    let after_records = if book.trim_start().starts_with(['[', '{']) {
        None
    } else {
        Some(read_book(app, book, candidate)?)
    };
    // As a dry run: the candidate stops at its first sandbox limit on an account the baseline
    // decides, and such a candidate is refused.
    let max_out = app.service.limits().max_response_bytes;
    let w = app.pipeline.what_if(
        &loaded.policy,
        candidate,
        &before_records,
        after_records.as_deref(),
        until,
        max_out,
    );
    if let Some(rule) = w.baseline_over.as_deref().or(w.candidate_over.as_deref()) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "candidate_output_limit",
            format!("`{rule}` fans out past the output limits over this book (alerts per account, or {} bytes of alerts)", w.candidate_limit),
        )
        .into());
    }
    if let Some(first) = w.tripped.first() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "candidate_sandbox_limit",
            format!(
                "the candidate hits a sandbox limit on {} account(s) the baseline decides; first: `{}`: {}",
                w.tripped.len(),
                first.id.as_deref().unwrap_or("?"),
                first.error.message
            ),
        )
        .into());
    }
    let diff = w.diff;
    let cases = cand.test_cases();
    // The same header as `tierwise diff` and the dry run: new warnings, failing cases.
    let notes = crate::service::candidate::header_notes(&loaded.policy, candidate, Some(&cases));
    let (total, failed_cases) = (cases.total, cases.failed);
    let overrides: Vec<String> = given.iter().map(ToString::to_string).collect();
    let ctx = whatif::render::Context {
        overrides: overrides.clone(),
        candidate_dir: edited.then(|| format!("policy.toml edited ({})", candidate.short_hash())),
        notes,
        capacity_tiers: crate::service::candidate::capacity_tiers(&loaded.policy),
    };
    let markdown = whatif::render::markdown(&diff, &ctx, 20);
    Ok(Compared {
        diff,
        markdown,
        overrides,
        edited,
        warnings: candidate.warnings.clone(),
        failed_cases,
        cases: total,
    })
}

async fn whatif_post(
    State(app): State<AppState>,
    deadline: Deadline,
    headers: HeaderMap,
    form: Result<Form<Pairs>, axum::extract::rejection::FormRejection>,
) -> Response {
    let fragment = wants_fragment(&headers);
    let form = match form {
        Ok(Form(f)) => f,
        Err(e) => return error_page("What-if", pages::Nav::WhatIf, &form_error(e), fragment),
    };
    let policy = field(&form, "policy").map(str::to_string);
    let loaded = match lookup(&app, policy.as_deref()) {
        Ok(l) => l,
        Err(e) => return error_page("What-if", pages::Nav::WhatIf, &e, fragment),
    };
    let l2 = loaded.clone();
    let done =
        offload(&app, deadline, move |app| match compare(app, &l2, &form, Some(deadline.0)) {
            Ok(c) => Ok(pages::whatif_result(&l2, &c)),
            Err(CandidateProblem::Api(e)) => Err(e),
            Err(CandidateProblem::Overrides(errs)) => Ok(pages::override_problems(&errs)),
            Err(CandidateProblem::Invalid { report, text }) => {
                Ok(pages::diagnostics(&report, &text))
            }
        })
        .await;
    answer(&app, done, fragment, ("What-if", pages::Nav::WhatIf), |reg, m| {
        pages::whatif_page(reg, &loaded, Some(m))
    })
}

/// `policy.toml` with the form's overrides applied (and the page's edits), as a download.
async fn whatif_download(
    State(app): State<AppState>,
    form: Result<Form<Pairs>, axum::extract::rejection::FormRejection>,
) -> Response {
    let form = match form {
        Ok(Form(f)) => f,
        Err(e) => return error_page("What-if", pages::Nav::WhatIf, &form_error(e), false),
    };
    let loaded = match lookup(&app, field(&form, "policy")) {
        Ok(l) => l,
        Err(e) => return error_page("What-if", pages::Nav::WhatIf, &e, false),
    };
    match candidate_files(&loaded, &form) {
        Ok(c) => {
            let text = c.files.get("policy.toml").cloned().unwrap_or_default();
            (
                StatusCode::OK,
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/toml; charset=utf-8"),
                    ),
                    (
                        header::CONTENT_DISPOSITION,
                        HeaderValue::from_static("attachment; filename=\"policy.toml\""),
                    ),
                ],
                text,
            )
                .into_response()
        }
        Err(CandidateProblem::Api(e)) => error_page("What-if", pages::Nav::WhatIf, &e, false),
        Err(CandidateProblem::Overrides(errs)) => html(
            StatusCode::UNPROCESSABLE_ENTITY,
            pages::layout("What-if", pages::Nav::WhatIf, pages::override_problems(&errs)),
        ),
        Err(CandidateProblem::Invalid { .. }) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

// ---------------------------------------------------------------------------------------------
// Backtest

async fn backtest_page(State(app): State<AppState>, Query(q): Query<PageQuery>) -> Response {
    match lookup(&app, q.policy.as_deref()) {
        Ok(loaded) => {
            let reg = app.service.registry();
            html(StatusCode::OK, pages::backtest_page(&reg, &loaded, app.config.body_limit, None))
        }
        Err(e) => error_page("Backtest", pages::Nav::Backtest, &e, false),
    }
}

/// One uploaded history file: its name (for messages) and its text.
struct Upload {
    name: String,
    text: String,
}

/// The backtest form as posted (`multipart/form-data`, so the files go as they are, not
/// percent-encoded): its text fields in order, and every file of `history`.
async fn read_multipart(mut m: axum::extract::Multipart) -> Result<(Pairs, Vec<Upload>), ApiError> {
    let mut pairs = Pairs::new();
    let mut files = Vec::new();
    let problem = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the history is larger than the server's body limit (TIERWISE_BODY_LIMIT): upload fewer periods, or ask the operator to raise it",
            );
        }
        ApiError::new(
            e.status(),
            "invalid_request",
            format!("the form cannot be read: {}", e.body_text()),
        )
    };
    while let Some(f) = m.next_field().await.map_err(problem)? {
        let name = f.name().unwrap_or("").to_string();
        let file = f.file_name().map(str::to_string);
        let bytes = f.bytes().await.map_err(problem)?;
        match file {
            // A file input with nothing chosen still sends one empty part.
            Some(file) if name == "history" => {
                if file.is_empty() && bytes.is_empty() {
                    continue;
                }
                let text = String::from_utf8(bytes.to_vec()).map_err(|e| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid_request",
                        format!(
                            "`{file}` is not UTF-8 text (byte {}): export it as UTF-8 CSV or JSON",
                            e.utf8_error().valid_up_to()
                        ),
                    )
                })?;
                files.push(Upload { name: file, text });
            }
            Some(_) => {}
            None => pairs.push((name, String::from_utf8_lossy(&bytes).into_owned())),
        }
    }
    Ok((pairs, files))
}

/// Reads, groups and replays a history, as `POST /v1/backtest` does; with the form's
/// overrides, the candidate too (built, checked and refused like a dry run's).
fn run_backtest(
    app: &AppState,
    loaded: &Loaded,
    form: &Pairs,
    files: &[Upload],
    until: Option<std::time::Instant>,
) -> Result<Markup, CandidateProblem> {
    use crate::engine::backtest::{self, BacktestResult, Level, Options};
    use crate::whatif::backtest as render;
    const TOP: usize = 20;
    if files.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            "no history: choose one or more files (CSV, JSON lines or JSON), each holding one or more `as_of` dates",
        )
        .into());
    }
    let flip_window = match nonempty(field(form, "flip_window")) {
        None => backtest::DEFAULT_FLIP_WINDOW,
        Some(v) => v.parse::<u32>().ok().filter(|w| *w >= 2).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                format!("the flip window must be a whole number of periods, at least 2 (a return needs a period away); got `{v}`"),
            )
        })?,
    };
    let level = match field(form, "level") {
        Some("account") => Level::Account,
        _ => Level::Portfolio,
    };
    // The candidate: the form's overrides on the baseline's files, through the one builder.
    let c = candidate_files(loaded, form)?;
    let given = c.overrides.clone();
    let candidate =
        if given.is_empty() { None } else { Some(build_candidate(app, loaded, c, until)?.policy) };
    // Every file read as the Book page reads its upload (the form's overrides change no
    // input, so the baseline's inputs type the CSV columns for both), the history capped
    // as a whole.
    let cap = app.service.limits().max_accounts;
    let mut records = Vec::new();
    for f in files {
        let these = read_book(app, &f.text, &loaded.policy).map_err(|e| {
            ApiError::new(e.status, e.body.code, format!("`{}`: {}", f.name, e.body.message))
        })?;
        records.extend(these);
        if records.len() > cap {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_accounts",
                format!("the history carries more than {cap} snapshots (the limit is TIERWISE_MAX_ACCOUNTS); replay fewer periods or accounts"),
            )
            .into());
        }
    }
    let opts = Options { level, flip_window };
    let (periods, unplaced) = backtest::group(records);
    let result = match &candidate {
        None => BacktestResult::Report(backtest::replay(&loaded.policy, periods, unplaced, opts)),
        Some(cand) => {
            let base = backtest::replay(&loaded.policy, periods.clone(), unplaced.clone(), opts);
            let after = backtest::replay(cand, periods, unplaced, opts);
            super::backtest::refuse_unsafe(&base, &after)?;
            BacktestResult::Comparison(backtest::compare(base, after))
        }
    };
    let overrides: Vec<String> = given.iter().map(ToString::to_string).collect();
    let markdown = match &result {
        BacktestResult::Report(r) => render::markdown(r, TOP),
        BacktestResult::Comparison(cmp) => {
            let ctx = render::Context { overrides: overrides.clone(), ..Default::default() };
            render::comparison_markdown(cmp, &ctx, TOP)
        }
    };
    let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    Ok(pages::backtest_result(loaded, &result, &overrides, &names, &markdown))
}

async fn backtest_post(
    State(app): State<AppState>,
    deadline: Deadline,
    headers: HeaderMap,
    form: Result<axum::extract::Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    let fragment = wants_fragment(&headers);
    let read = match form {
        Ok(m) => read_multipart(m).await,
        Err(e) => Err(ApiError::new(
            e.status(),
            "invalid_request",
            format!(
                "the backtest form is sent as multipart/form-data (it carries files): {}",
                e.body_text()
            ),
        )),
    };
    let (form, files) = match read {
        Ok(x) => x,
        Err(e) => return error_page("Backtest", pages::Nav::Backtest, &e, fragment),
    };
    let loaded = match lookup(&app, field(&form, "policy")) {
        Ok(l) => l,
        Err(e) => return error_page("Backtest", pages::Nav::Backtest, &e, fragment),
    };
    let l2 = loaded.clone();
    let done = offload(&app, deadline, move |app| {
        match run_backtest(app, &l2, &form, &files, Some(deadline.0)) {
            Ok(m) => Ok(m),
            Err(CandidateProblem::Api(e)) => Err(e),
            Err(CandidateProblem::Overrides(errs)) => Ok(pages::override_problems(&errs)),
            Err(CandidateProblem::Invalid { report, text }) => {
                Ok(pages::diagnostics(&report, &text))
            }
        }
    })
    .await;
    let limit = app.config.body_limit;
    answer(&app, done, fragment, ("Backtest", pages::Nav::Backtest), |reg, m| {
        pages::backtest_page(reg, &loaded, limit, Some(m))
    })
}
