//! `POST /v1/backtest`: a served policy (and optionally a candidate) replayed over a book's
//! history, asked over HTTP.
//!
//! The history comes inline, as `periods` (each a list of snapshots; snapshots without
//! `as_of` take their period's) or as one `accounts` list; either way each distinct `as_of`
//! is one period, as on the command line ([`crate::engine::backtest`]). The candidate is what
//! `/v1/dry-run` takes (a folder's files inline, `overrides`, or both) and is treated the same
//! way: checked before it is read, compiled with the service's sandbox, run under the request's
//! wall-clock budget on the dry runs' pool and priority, at most [`super::DRY_RUNS_AT_ONCE`]
//! dry runs and backtests at once. Nothing shared is touched: no cache, no state, no events,
//! no decision log lines per account.

use super::dryrun::{
    CandidateFolder, MAX_TOP, bad_request, candidate_of, dry_run_answer, on_dry_run_pool,
    one_format, query_options, text_type,
};
use super::handlers::{account_list, lookup_error, parse_capped, read_accounts};
use super::{ApiError, AppState, JsonBody};
use crate::engine::backtest::{self, BacktestResult, Level, Options, Report};
use crate::script;
use crate::snapshot::Record;
use crate::whatif::backtest as render;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::time::Instant;

const DEFAULT_TOP: usize = 10;

/// `POST /v1/backtest` body: `periods` or `accounts`, not both.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = one_history)]
pub struct BacktestRequest<'a> {
    /// The served policy to replay; absent: the default policy.
    #[serde(default)]
    pub policy: Option<String>,
    /// A candidate policy folder, sent inline, replayed beside the policy.
    #[serde(default)]
    pub candidate: Option<CandidateFolder>,
    /// Values of `policy.toml` to change for the candidate, by path (as `/v1/dry-run`):
    /// applied to the candidate's files when a candidate is sent, else to the policy's own.
    #[serde(default, borrow, deserialize_with = "crate::jsonmap::unique_opt")]
    #[schemars(with = "Option<BTreeMap<String, Value>>")]
    #[schemars(extend("maxProperties" = crate::policy::limits::MAX_CANDIDATE_FILES))]
    pub overrides: Option<BTreeMap<String, &'a RawValue>>,
    /// `portfolio` (the default) or `account`.
    #[serde(default)]
    pub level: Option<Level>,
    /// A return to a tier left at most this many periods before is a flip-flop (default 3,
    /// at least 2).
    #[serde(default)]
    #[schemars(range(min = 2))]
    pub flip_window: Option<u32>,
    /// `json` (the default), `markdown` (`text/markdown`), `table` (`text/plain`) or `jsonl`
    /// (one line per period and account, `application/x-ndjson`; without a candidate);
    /// `?format=` in the query does the same.
    #[serde(default)]
    pub format: Option<BacktestFormat>,
    /// How many accounts and managers the markdown and table forms list (default 10).
    #[serde(default)]
    #[schemars(range(max = MAX_TOP))]
    pub top: Option<u32>,
    /// The history by period: each period's snapshots.
    #[serde(default, borrow)]
    pub periods: Option<Vec<PeriodIn<'a>>>,
    /// The history as one list of snapshots, grouped by `as_of`.
    #[serde(default, borrow)]
    #[schemars(with = "Option<Vec<super::handlers::AccountItem>>")]
    pub accounts: Option<Accounts<'a>>,
}

/// The schema says what [`run`] checks first: exactly one of `periods` and `accounts` (not
/// `null`), so a fuzzer's `{}` is schema-invalid as the server says it is.
fn one_history(s: &mut schemars::Schema) {
    s.insert(
        "oneOf".into(),
        serde_json::json!([
            { "required": ["periods"], "properties": { "periods": { "type": "array" } } },
            { "required": ["accounts"], "properties": { "accounts": { "type": "array" } } }
        ]),
    );
}

/// One period sent inline.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PeriodIn<'a> {
    /// The `as_of` of snapshots that carry none (`YYYY-MM-DD`).
    #[serde(default)]
    pub as_of: Option<String>,
    #[serde(borrow)]
    #[schemars(with = "Vec<super::handlers::AccountItem>")]
    pub accounts: Accounts<'a>,
}

/// A list of snapshots, each parsed on its own later (one bad account fails only itself).
pub struct Accounts<'a>(pub Vec<&'a RawValue>);

impl<'de: 'a, 'a> Deserialize<'de> for Accounts<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        account_list(d).map(Accounts)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BacktestFormat {
    Json,
    Markdown,
    Table,
    Jsonl,
}

impl BacktestFormat {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "json" => Some(BacktestFormat::Json),
            "markdown" | "md" => Some(BacktestFormat::Markdown),
            "table" | "text" => Some(BacktestFormat::Table),
            "jsonl" | "ndjson" => Some(BacktestFormat::Jsonl),
            _ => None,
        }
    }
}

/// `POST /v1/backtest` answer (JSON).
#[derive(Serialize, JsonSchema)]
pub struct BacktestResponse<'a> {
    /// Unique id of this backtest (also the `x-decision-id` header).
    pub decision_id: &'a str,
    /// Always `true`: nothing went live, nothing was cached, no state or event was written.
    pub dry_run: bool,
    #[serde(flatten)]
    pub result: &'a BacktestResult,
}

pub async fn backtest(
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    on_dry_run_pool(app, "backtest task", move |app| run(app, &body.0, query.as_deref(), start))
        .await
}

/// The snapshots of one inline period (`i` counts from 1 across the history): one without
/// `as_of` takes the period's (`None`: each must carry its own). Read as every request reads
/// accounts: undeclared fields skipped, at most `max_fields` keys.
fn period_records(
    items: &[&RawValue],
    as_of: Option<&str>,
    inputs: &[&crate::policy::Policy],
    max_fields: usize,
) -> Result<Vec<Record>, ApiError> {
    let Some(as_of) = as_of else {
        return Ok(read_accounts(items, inputs, max_fields)?.0);
    };
    let dated: Vec<Option<Box<RawValue>>> = items
        .iter()
        .map(|raw| match serde_json::from_str::<Value>(raw.get()) {
            Ok(Value::Object(mut m)) if m.get("as_of").is_none_or(Value::is_null) => {
                m.insert("as_of".into(), Value::String(as_of.to_string()));
                serde_json::value::to_raw_value(&m).ok()
            }
            _ => None,
        })
        .collect();
    let each: Vec<&RawValue> =
        items.iter().zip(&dated).map(|(raw, d)| d.as_deref().unwrap_or(raw)).collect();
    Ok(read_accounts(&each, inputs, max_fields)?.0)
}

fn run(
    app: &AppState,
    body: &[u8],
    query: Option<&str>,
    start: Instant,
) -> Result<Response, ApiError> {
    let (q_format, q_top) =
        query_options(query, BacktestFormat::parse, "`json`, `markdown`, `table` or `jsonl`")?;
    let cap = app.service.limits().max_accounts;
    let req: BacktestRequest<'_> = parse_capped(body, cap)?;
    let format = one_format(q_format, req.format, BacktestFormat::Json)?;
    // Each is checked, whichever is used: the query's wins, the body's must still be valid.
    if let Some(t) = [q_top, req.top].into_iter().flatten().find(|t| *t > MAX_TOP) {
        return Err(bad_request(format!("`top` is at most {MAX_TOP}, got {t}")));
    }
    let top = q_top.or(req.top).map_or(DEFAULT_TOP, |t| t as usize);
    let flip_window = req.flip_window.unwrap_or(backtest::DEFAULT_FLIP_WINDOW);
    if flip_window < 2 {
        return Err(bad_request("`flip_window` must be at least 2 (a return needs a period away)"));
    }
    let with_candidate = req.candidate.is_some() || req.overrides.is_some();
    if format == BacktestFormat::Jsonl && with_candidate {
        return Err(bad_request(
            "`jsonl` is one policy's replay: drop `candidate`/`overrides`, or ask for json, markdown or table",
        ));
    }
    let total = match (&req.periods, &req.accounts) {
        (Some(_), Some(_)) => {
            return Err(bad_request("send the history as `periods` or as `accounts`, not both"));
        }
        (None, None) => {
            return Err(bad_request(
                "no history: send `periods` (a list of `{as_of, accounts}`) or `accounts`",
            ));
        }
        (Some(p), None) => p.iter().map(|p| p.accounts.0.len()).sum::<usize>(),
        (None, Some(a)) => a.0.len(),
    };
    // Every list was capped while parsing; the history as a whole is too.
    if total > cap {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_accounts",
            format!("the history carries {total} snapshots, more than {cap}; replay fewer periods or accounts (the limit is TIERWISE_MAX_ACCOUNTS)"),
        )
        .details(serde_json::json!({ "limit_accounts": cap, "accounts": total })));
    }
    // The candidate as a dry run takes it: the same budget, builder and sandbox.
    let (loaded, candidate, applied) = if with_candidate {
        let sent = candidate_of(
            app,
            req.candidate.as_ref(),
            req.overrides.as_ref(),
            req.policy.as_deref(),
            start,
        )?;
        (sent.baseline, Some(sent.candidate.policy), sent.candidate.applied)
    } else {
        (app.service.policy(req.policy.as_deref()).map_err(lookup_error)?, None, Vec::new())
    };

    let mut inputs = vec![&loaded.policy];
    inputs.extend(candidate.as_ref());
    let max_fields = app.service.limits().max_fields;
    let records: Vec<Record> = match (&req.periods, &req.accounts) {
        (Some(periods), _) => {
            let mut out: Vec<Record> = Vec::with_capacity(total);
            for p in periods {
                let before = out.len();
                let mut these =
                    period_records(&p.accounts.0, p.as_of.as_deref(), &inputs, max_fields)?;
                // Record numbers count across the whole history, in the order sent.
                for e in these.iter_mut().filter_map(|r| r.as_mut().err()) {
                    e.record = e.record.map(|n| n + before);
                }
                out.extend(these);
            }
            out
        }
        (None, Some(a)) => read_accounts(&a.0, &inputs, max_fields)?.0,
        (None, None) => Vec::new(),
    };
    let opts = Options { level: req.level.unwrap_or(Level::Portfolio), flip_window };
    let until = start.checked_add(app.config.request_timeout);
    let budget = || Some(script::Budget::new(until));
    let (periods, unplaced) = backtest::group(records);
    let mut lines = Vec::new();
    let result = match &candidate {
        None => {
            let report = script::with_budget(budget(), || {
                let mut r = backtest::Replay::new(&loaded.policy, opts);
                r.unplaced(unplaced);
                for p in periods {
                    let out = r.period(&p.as_of, p.day, p.records);
                    if format == BacktestFormat::Jsonl {
                        lines.push(out);
                    }
                }
                r.finish()
            });
            BacktestResult::Report(report)
        }
        Some(c) => {
            let copy = periods.clone();
            let base = script::with_budget(budget(), || {
                backtest::replay(&loaded.policy, periods, unplaced.clone(), opts)
            });
            let cand = script::with_budget(budget(), || backtest::replay(c, copy, unplaced, opts));
            refuse_unsafe(&base, &cand)?;
            BacktestResult::Comparison(backtest::compare(base, cand))
        }
    };

    let decision_id = uuid::Uuid::now_v7().to_string();
    let (bytes, content_type) = match format {
        BacktestFormat::Json => (
            serde_json::to_vec(&BacktestResponse {
                decision_id: &decision_id,
                dry_run: true,
                result: &result,
            })
            .map_err(|e| ApiError::internal("serialize", e))?,
            "application/json",
        ),
        BacktestFormat::Jsonl => {
            let mut out = Vec::new();
            for p in &lines {
                crate::engine::backtest::write_jsonl(&mut out, &p.as_of, &p.lines)
                    .map_err(|e| ApiError::internal("serialize", e))?;
            }
            if let BacktestResult::Report(r) = &result {
                crate::engine::backtest::write_unplaced_jsonl(&mut out, &r.unplaced)
                    .map_err(|e| ApiError::internal("serialize", e))?;
            }
            (out, "application/x-ndjson")
        }
        BacktestFormat::Markdown | BacktestFormat::Table => {
            let md = format == BacktestFormat::Markdown;
            let text = match &result {
                BacktestResult::Report(r) => {
                    if md {
                        render::markdown(r, top)
                    } else {
                        render::table(r, top)
                    }
                }
                BacktestResult::Comparison(c) => {
                    let ctx = render::Context {
                        overrides: applied.clone(),
                        candidate_dir: req.candidate.is_some().then(|| {
                            format!(
                                "candidate {}",
                                candidate.as_ref().map(|c| c.short_hash()).unwrap_or_default()
                            )
                        }),
                        ..Default::default()
                    };
                    if md {
                        render::comparison_markdown(c, &ctx, top)
                    } else {
                        render::comparison_table(c, &ctx, top)
                    }
                }
            };
            (text.into_bytes(), text_type(md))
        }
    };
    Ok(dry_run_answer(
        bytes,
        content_type,
        [
            ("x-decision-id", Some(&decision_id)),
            ("x-policy-hash", Some(&loaded.policy.hash)),
            ("x-candidate-hash", candidate.as_ref().map(|c| c.hash.as_str())),
        ],
    ))
}

/// A candidate that runs into the sandbox where the policy does not (an endless loop,
/// runaway recursion) could never go live: refused, as `/v1/dry-run` refuses it.
pub(super) fn refuse_unsafe(base: &Report, cand: &Report) -> Result<(), ApiError> {
    let limited = |r: &Report| -> std::collections::BTreeSet<(String, String)> {
        r.periods
            .iter()
            .flat_map(|p| {
                p.rejected
                    .iter()
                    .filter(|x| script::LIMIT_CODES.contains(&x.error.code))
                    .map(move |x| (p.as_of.clone(), x.id.clone().unwrap_or_default()))
            })
            .collect()
    };
    let before = limited(base);
    let mut by_code: BTreeMap<&str, usize> = BTreeMap::new();
    // The snapshots that really hit a limit name it; those stopped after it only say so.
    let (mut first_hit, mut first_any) = (None, None);
    let mut n = 0;
    for p in &cand.periods {
        for x in &p.rejected {
            let key = (p.as_of.clone(), x.id.clone().unwrap_or_default());
            if script::LIMIT_CODES.contains(&x.error.code) && !before.contains(&key) {
                n += 1;
                *by_code.entry(x.error.code).or_default() += 1;
                if x.error.message != script::BUDGET_SPENT_MESSAGE {
                    first_hit.get_or_insert_with(|| (p.as_of.clone(), x.clone()));
                }
                first_any.get_or_insert_with(|| (p.as_of.clone(), x.clone()));
            }
        }
    }
    let Some((as_of, x)) = first_hit.or(first_any) else { return Ok(()) };
    Err(ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "candidate_sandbox_limit",
        format!(
            "the candidate policy hits a sandbox limit on {n} snapshot(s) the policy decides; first: `{}` ({as_of}): {}",
            x.id.as_deref().unwrap_or("?"),
            x.error.message
        ),
    )
    .details(serde_json::json!({ "snapshots": n, "by_code": by_code, "first": { "as_of": as_of, "id": x.id, "error": x.error } })))
}
