//! Handlers: parse, call the service, render. Evaluation answers are serialized once, into
//! the response bytes, straight from the engine's outcomes.

use super::{ApiError, AppState, Deadline, JsonBody, PathParam, parse};
use crate::cache::{self, AccountPlan, Key, WriteBatch};
use crate::decision_log;
use crate::engine::{Outcome, PolicyRef, Summary};
use crate::policy::{InputType, Scalar};
use crate::service::{self, Entry, Loaded, Lookup, ReloadError, ReloadOutcome};
use crate::snapshot::{self, Record};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Instant;

/// Bodies up to this size are decided on the async thread: a handful of accounts costs less
/// than a hop to the blocking pool. Larger ones move off it (and use every core).
const INLINE_MAX_BYTES: usize = 16 * 1024;

/// `POST /v1/evaluate` and `POST /v1/portfolio` bodies.
#[derive(Deserialize, JsonSchema)]
pub struct EvaluateRequest<'a> {
    /// The policy's name; absent: the default policy.
    #[serde(default)]
    pub policy: Option<String>,
    /// The snapshots, decided in order; a bad one is answered with its own error.
    #[serde(borrow, deserialize_with = "account_list")]
    #[schemars(with = "Vec<AccountItem>")]
    pub accounts: Vec<&'a RawValue>,
}

/// The schema of one element of `accounts`: a snapshot, or anything else, which is answered
/// (200) with that account's own error rather than failing the request. The document says so,
/// so that a client, or a fuzzer, does not expect a 4xx for a bad element.
pub struct AccountItem;

impl JsonSchema for AccountItem {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AccountItem".into()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let snapshot = g.subschema_for::<crate::snapshot::Snapshot>();
        schemars::json_schema!({
            "description": "An account snapshot. Any other value is answered with its own error in the answer's `accounts` (at the same position); the other accounts are still decided.",
            "anyOf": [snapshot, { "description": "not a snapshot: that account's error" }]
        })
    }
}

thread_local! {
    /// The most accounts [`account_list`] takes on this thread ([`parse_capped`] sets it).
    static ACCOUNT_CAP: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
    /// Set when [`account_list`] stopped at the cap.
    static OVER_CAP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// [`parse`] a body with an `accounts` list of at most `cap` elements: more is 413
/// `too_many_accounts`, found while parsing, so a body of a million tiny elements costs no
/// more than `cap` of them.
pub(super) fn parse_capped<'a, T: Deserialize<'a>>(
    body: &'a [u8],
    cap: usize,
) -> Result<T, ApiError> {
    ACCOUNT_CAP.set(cap);
    OVER_CAP.set(false);
    let parsed = parse(body);
    ACCOUNT_CAP.set(usize::MAX);
    if OVER_CAP.replace(false) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_accounts",
            format!("the request carries more than {cap} accounts; split it (the limit is TIERWISE_MAX_ACCOUNTS)"),
        )
        .details(serde_json::json!({ "limit_accounts": cap })));
    }
    parsed
}

/// Splits the array into its elements' text in the one pass over the body; each element is
/// parsed on its own afterwards, so one bad account does not fail the request.
pub(super) fn account_list<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<&'de RawValue>, D::Error> {
    struct Elements;
    impl<'de> serde::de::Visitor<'de> for Elements {
        type Value = Vec<&'de RawValue>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("`accounts` to be an array of account snapshots")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let cap = ACCOUNT_CAP.get();
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(cap));
            while let Some(raw) = seq.next_element::<&'de RawValue>()? {
                if v.len() >= cap {
                    OVER_CAP.set(true);
                    return Err(serde::de::Error::custom(format_args!("more than {cap} accounts")));
                }
                v.push(raw);
            }
            Ok(v)
        }
    }
    d.deserialize_seq(Elements)
}

/// `POST /v1/evaluate` answer: one outcome per account, in input order.
#[derive(Serialize, JsonSchema)]
pub struct EvaluateResponse<'a> {
    /// Unique id of this evaluation, also in the decision log and the `x-decision-id` header.
    pub decision_id: &'a str,
    /// The policy every decision was made under.
    pub policy: &'a PolicyRef,
    pub accounts: &'a [Outcome],
}

/// `POST /v1/portfolio` answer.
#[derive(Serialize, JsonSchema)]
pub struct PortfolioResponse<'a> {
    pub decision_id: &'a str,
    pub policy: &'a PolicyRef,
    pub summary: &'a Summary,
    pub accounts: &'a [Outcome],
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Account,
    Portfolio,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Account => "account",
            Level::Portfolio => "portfolio",
        }
    }
}

pub async fn evaluate(
    State(app): State<AppState>,
    deadline: Deadline,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    body: JsonBody,
) -> Result<Response, ApiError> {
    if super::explain::wanted(query.as_deref())? {
        let res = run_evaluation(app.clone(), body.0.clone(), Level::Account, deadline).await?;
        return super::explain::add(app, body.0, res, deadline).await;
    }
    run_evaluation(app, body.0, Level::Account, deadline).await
}

pub async fn portfolio(
    State(app): State<AppState>,
    deadline: Deadline,
    body: JsonBody,
) -> Result<Response, ApiError> {
    run_evaluation(app, body.0, Level::Portfolio, deadline).await
}

async fn run_evaluation(
    app: AppState,
    body: Bytes,
    level: Level,
    deadline: Deadline,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    // Every evaluation of this request stops at the request timeout, on whichever thread.
    let budget = crate::script::Budget::new(Some(deadline.0));
    let inline = body.len() <= INLINE_MAX_BYTES && level == Level::Account;
    // Parse (and digest, for the cache keys) on the async thread when small, else off it.
    let prep = if inline {
        prepare(&app, &body, level)?
    } else {
        let app2 = app.clone();
        tokio::task::spawn_blocking(move || prepare(&app2, &body, level))
            .await
            .map_err(|e| ApiError::internal("evaluation task", e))??
    };
    // The one cache read of the request (one MGET / GET), bounded by the cache's deadline.
    let Prepared { loaded, records, step } = prep;
    let found = match step {
        CacheStep::Skip => Found::Skip,
        CacheStep::Accounts { plan, read } => {
            let found = if read {
                let t = Instant::now();
                let found = app.cache.get_many(plan.keys()).await;
                let hits = found.iter().filter(|f| f.is_some()).count();
                loaded.gate.record_read(plan.keys().len(), hits, t.elapsed());
                found
            } else {
                Vec::new() // all misses: the gate judged the read would cost more than it saves
            };
            Found::Accounts(plan, found)
        }
        CacheStep::Book(key) => {
            let found = app.cache.get(&key).await;
            Found::Book(key, found)
        }
    };
    let done = if inline {
        decide(&app, &loaded, records, found, level, start, &budget)?
    } else {
        let app2 = app.clone();
        tokio::task::spawn_blocking(move || {
            decide(&app2, &loaded, records, found, level, start, &budget)
        })
        .await
        .map_err(|e| ApiError::internal("evaluation task", e))??
    };
    if let Some(writes) = done.writes
        && !writes.is_empty()
    {
        app.cache.put_many(writes); // never waits
    }
    let mut res = (StatusCode::OK, done.bytes).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(&done.decision_id) {
        h.insert("x-decision-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(&done.hash) {
        h.insert("x-policy-hash", v);
    }
    h.insert("x-cache-hits", HeaderValue::from(done.hits));
    Ok(res)
}

/// A parsed request: its policy version, its snapshots, and what to ask the cache.
struct Prepared {
    loaded: Arc<Loaded>,
    records: Vec<Record>,
    step: CacheStep,
}

enum CacheStep {
    /// No cache for this request: the cache is unavailable (Redis breaker not closed).
    Skip,
    /// Account level: one key per cacheable account; `read`: whether the gate says to read
    /// (without a read every account is evaluated, and the decisions are still written).
    Accounts { plan: AccountPlan, read: bool },
    /// Portfolio level: the key of the whole book.
    Book(Key),
}

/// What the cache answered.
enum Found {
    Skip,
    Accounts(AccountPlan, Vec<Option<bytes::Bytes>>),
    Book(Key, Option<bytes::Bytes>),
}

fn prepare(app: &AppState, body: &[u8], level: Level) -> Result<Prepared, ApiError> {
    use std::sync::atomic::Ordering::Relaxed;
    let req: EvaluateRequest<'_> = parse_capped(body, app.service.limits().max_accounts)?;
    let loaded = app.service.policy(req.policy.as_deref()).map_err(lookup_error)?;
    let records = read_accounts(&req.accounts);
    let step = if !app.cache.available() {
        app.cache_unavailable.fetch_add(records.len() as u64, Relaxed);
        CacheStep::Skip
    } else {
        match level {
            Level::Account => {
                let (plan, read) = if app.config.cache_always {
                    let plan = AccountPlan::new(&loaded.cache_id, &records);
                    let read = !plan.keys().is_empty();
                    (plan, read)
                } else {
                    let plan = AccountPlan::gated(&loaded.cache_id, &records, &loaded.gate);
                    let read = loaded.gate.should_read(plan.keys().len());
                    (plan, read)
                };
                if !read {
                    app.cache_gated.fetch_add(plan.keys().len() as u64, Relaxed);
                }
                CacheStep::Accounts { plan, read }
            }
            Level::Portfolio => {
                CacheStep::Book(loaded.cache_id.book_key(&cache::book_digest(&records)))
            }
        }
    };
    Ok(Prepared { loaded, records, step })
}

/// A decided request: the answer's bytes, its ids, how many accounts came from the cache,
/// and what to write to it.
struct Done {
    bytes: Vec<u8>,
    decision_id: String,
    hash: String,
    hits: usize,
    writes: Option<WriteBatch>,
}

/// Portfolio answers larger than this are not cached (a 10k-account book is ~8 MB).
const MAX_CACHED_BOOK: usize = 8 << 20;

/// Decide what the cache did not answer (under the request's `budget`), serialize, log.
fn decide(
    app: &AppState,
    loaded: &Arc<Loaded>,
    records: Vec<Record>,
    found: Found,
    level: Level,
    start: Instant,
    budget: &Arc<crate::script::Budget>,
) -> Result<Done, ApiError> {
    crate::script::with_budget(Some(budget.clone()), || {
        decide_within(app, loaded, records, found, level, start, budget)
    })
}

fn decide_within(
    app: &AppState,
    loaded: &Arc<Loaded>,
    records: Vec<Record>,
    found: Found,
    level: Level,
    start: Instant,
    budget: &crate::script::Budget,
) -> Result<Done, ApiError> {
    let decision_id = uuid::Uuid::now_v7().to_string();
    let m = match level {
        Level::Account => &app.metrics.account,
        Level::Portfolio => &app.metrics.portfolio,
    };
    let n = records.len();
    let mut buf = Vec::with_capacity(256 + n * 800);
    buf.extend_from_slice(b"{\"decision_id\":");
    write_json(&mut buf, &decision_id)?;
    buf.extend_from_slice(b",\"policy\":");
    write_json(&mut buf, &*loaded.pref)?;
    let mut hits = 0;
    let mut writes = None;
    let mut cached: Vec<(usize, bytes::Bytes)> = Vec::new();
    let mut cached_book = None;
    let (outcomes, summary) = match (level, found) {
        (Level::Account, Found::Accounts(plan, found)) => {
            let gate = &loaded.gate;
            let policy = &loaded.policy;
            let (answer, w) = plan
                .finish(&records, found, |misses| {
                    let t = Instant::now();
                    let out = crate::engine::evaluate(policy, misses);
                    gate.record_eval(misses.len(), t.elapsed());
                    out
                })
                .map_err(|e| ApiError::internal("serialize", e))?;
            buf.extend_from_slice(b",\"accounts\":");
            answer.write_array(&mut buf);
            buf.push(b'}');
            hits = answer.hits;
            writes = Some(w);
            if app.log.enabled() && hits > 0 {
                let mut fresh = vec![false; n];
                for (i, _) in &answer.fresh {
                    if let Some(f) = fresh.get_mut(*i) {
                        *f = true;
                    }
                }
                cached = answer
                    .accounts
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !fresh.get(*i).copied().unwrap_or(true))
                    .map(|(i, b)| (i, b.clone()))
                    .collect();
            }
            (answer.fresh.into_iter().map(|(_, o)| o).collect::<Vec<Outcome>>(), None)
        }
        (Level::Account, _) => {
            let outcomes = app.service.evaluate(loaded, &records);
            buf.extend_from_slice(b",\"accounts\":");
            write_outcomes(&mut buf, &outcomes)?;
            buf.push(b'}');
            (outcomes, None)
        }
        (Level::Portfolio, Found::Book(_, Some(fragment))) => {
            buf.push(b',');
            buf.extend_from_slice(&fragment);
            buf.push(b'}');
            hits = n;
            cached_book = Some(fragment);
            (Vec::new(), None)
        }
        (Level::Portfolio, found) => {
            let r = app.service.portfolio(loaded, &records);
            // `"summary":…,"accounts":[…]`: what the cache keeps of a portfolio answer.
            let mut fragment = Vec::with_capacity(4096 + r.accounts.len() * 800);
            fragment.extend_from_slice(b"\"summary\":");
            write_json(&mut fragment, &r.summary)?;
            fragment.extend_from_slice(b",\"accounts\":");
            write_outcomes(&mut fragment, &r.accounts)?;
            buf.push(b',');
            buf.extend_from_slice(&fragment);
            buf.push(b'}');
            if let Found::Book(key, None) = found
                && fragment.len() <= MAX_CACHED_BOOK
            {
                // The cache weighs a value by its length, but a `Bytes` made from a `Vec`
                // keeps the whole allocation: reserved at 800 bytes an account, a 20-account
                // answer held about twice what was weighed, and under a flood of distinct
                // books RSS grew far past the cache's bound.
                fragment.shrink_to_fit();
                let mut w = WriteBatch::new();
                w.put(key, bytes::Bytes::from(fragment));
                writes = Some(w);
            }
            (r.accounts, Some(r.summary))
        }
    };
    if budget.spent() {
        // Past the request timeout: the client has its 503 and these outcomes hold
        // `time_limit` errors that no policy caused; neither logged nor counted.
        return Err(ApiError::timeout(app.config.request_timeout));
    }
    let errors = outcomes.iter().filter(|o| o.decision().is_none()).count() as u64;
    m.evaluations.inc();
    m.accounts.inc_by(n as u64);
    m.errors.inc_by(errors);
    m.batch.observe(n as f64);
    let hash = loaded.policy.hash.clone();
    if records.len() > PARSE_CHUNK {
        // Tens of thousands of small allocations: freed by the pool, after the answer is out.
        rayon::spawn(move || drop(records));
    }
    if app.log.enabled() {
        // The outcomes move to the log thread, which encodes the line and frees them.
        app.log.record(decision_log::Job {
            at: std::time::SystemTime::now(),
            decision_id: decision_id.clone(),
            level: level.as_str(),
            policy: loaded.pref.clone(),
            duration_ms: start.elapsed().as_secs_f64() * 1e3,
            outcomes,
            summary,
            cached,
            cached_book,
        });
    }
    Ok(Done { bytes: buf, decision_id, hash, hits, writes })
}

/// `?policy=NAME` of `GET /v1/accounts/{id}/decision`.
#[derive(Deserialize)]
pub struct LatestQuery {
    #[serde(default)]
    pub policy: Option<String>,
}

/// `GET /v1/accounts/{id}/decision` answer: the last decision `/v1/evaluate` made for the
/// account under the policy's name (from Redis when configured, else this replica's memory).
#[derive(Serialize, JsonSchema)]
pub struct LatestDecision {
    pub account: String,
    pub policy: String,
    /// The hash of the policy version serving now.
    pub active_hash: String,
    /// The hash of the version that made this decision (also in `decision.policy.hash`).
    pub decided_under: Option<String>,
    /// `true` when an older version of the policy made it: the next evaluate of the account
    /// may answer differently.
    pub stale: bool,
    /// The decision, the bytes `/v1/evaluate` answered for the account.
    pub decision: crate::engine::Decision,
}

pub async fn latest_decision(
    State(app): State<AppState>,
    PathParam(id): PathParam,
    query: Result<axum::extract::Query<LatestQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query.map_err(|e| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", e.body_text())
    })?;
    let loaded = app.service.policy(q.policy.as_deref()).map_err(lookup_error)?;
    let name = &*loaded.cache_id.name;
    let active = &*loaded.cache_id.hash;
    if !app.cache.available() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "cache_unavailable",
            "the decision cache is unavailable (Redis is down or not answering); evaluate the account instead",
        )
        .details(serde_json::json!({ "reason": app.cache.degraded() }))
        .retry_after(1));
    }
    let Some(bytes) = app.cache.get_latest(name, &id).await else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_account",
            format!("no decision for account `{id}` under policy `{name}`: none was made through /v1/evaluate, or it expired"),
        )
        .details(serde_json::json!({ "account": id, "policy": name })));
    };
    let decided_under = cache::decision_policy_hash(&bytes);
    let stale = decided_under.as_deref() != Some(active);
    let mut buf = Vec::with_capacity(bytes.len() + 256);
    buf.extend_from_slice(b"{\"account\":");
    write_json(&mut buf, &id)?;
    buf.extend_from_slice(b",\"policy\":");
    write_json(&mut buf, name)?;
    buf.extend_from_slice(b",\"active_hash\":");
    write_json(&mut buf, active)?;
    buf.extend_from_slice(b",\"decided_under\":");
    write_json(&mut buf, &decided_under)?;
    buf.extend_from_slice(b",\"stale\":");
    write_json(&mut buf, &stale)?;
    buf.extend_from_slice(b",\"decision\":");
    buf.extend_from_slice(&bytes);
    buf.push(b'}');
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        buf,
    )
        .into_response())
}

/// Accounts per parallel parsing chunk.
const PARSE_CHUNK: usize = 512;

/// The snapshots of `accounts`, parsed on every core when there are many. A bad element is
/// that account's error, made by [`snapshot::read_json`] itself so it reads the same as on
/// the command line.
pub(super) fn read_accounts(items: &[&RawValue]) -> Vec<Record> {
    use rayon::prelude::*;
    let one = |i: usize, raw: &RawValue| -> Record {
        serde_json::from_str::<snapshot::Snapshot>(raw.get()).or_else(|_| {
            // The rare path: let the snapshot reader explain, then give the position.
            let mut r = snapshot::read_json(&format!("[{}]", raw.get()))
                .ok()
                .and_then(|mut v| v.pop())
                .unwrap_or_else(|| {
                    Err(crate::snapshot::AccountError::new(None, "bad_record", "not a snapshot"))
                });
            if let Err(e) = &mut r {
                e.record = Some(i + 1);
            }
            r
        })
    };
    if items.len() > PARSE_CHUNK {
        items.par_iter().enumerate().with_min_len(PARSE_CHUNK).map(|(i, raw)| one(i, raw)).collect()
    } else {
        items.iter().enumerate().map(|(i, raw)| one(i, raw)).collect()
    }
}

fn write_json<T: Serialize + ?Sized>(buf: &mut Vec<u8>, v: &T) -> Result<(), ApiError> {
    serde_json::to_writer(buf, v).map_err(|e| ApiError::internal("serialize", e))
}

/// Accounts per serialization chunk; larger answers are encoded on every core.
const ENCODE_CHUNK: usize = 1024;

/// `[outcome, ...]`, the same bytes as serde_json's, in parallel chunks for big answers.
fn write_outcomes(buf: &mut Vec<u8>, outcomes: &[Outcome]) -> Result<(), ApiError> {
    use rayon::prelude::*;
    if outcomes.len() <= ENCODE_CHUNK {
        return write_json(buf, outcomes);
    }
    let parts: Vec<Result<Vec<u8>, ApiError>> = outcomes
        .par_chunks(ENCODE_CHUNK)
        .map(|chunk| {
            let mut part = Vec::with_capacity(chunk.len() * 800);
            for (i, o) in chunk.iter().enumerate() {
                if i > 0 {
                    part.push(b',');
                }
                write_json(&mut part, o)?;
            }
            Ok(part)
        })
        .collect();
    buf.push(b'[');
    for (i, part) in parts.into_iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(&part?);
    }
    buf.push(b']');
    Ok(())
}

pub(super) fn lookup_error(e: Lookup) -> ApiError {
    match e {
        Lookup::Unknown { name, known } => {
            let close =
                known.iter().filter(|k| strsim::jaro_winkler(k, &name) > 0.8).max_by(|a, b| {
                    strsim::jaro_winkler(a, &name).total_cmp(&strsim::jaro_winkler(b, &name))
                });
            let hint = match close {
                Some(k) => format!("; did you mean `{k}`?"),
                None => format!(
                    "; served: {}",
                    known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                ),
            };
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_policy",
                format!("no policy `{name}`{hint}"),
            )
            .details(serde_json::json!({ "policy": name, "known": known }))
        }
        Lookup::NotLoaded { name } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "policy_unavailable",
            format!(
                "policy `{name}` has no version that passed its checks; see /v1/policies/{name}"
            ),
        )
        .details(serde_json::json!({ "policy": name })),
        Lookup::NoDefault => ApiError::new(
            StatusCode::BAD_REQUEST,
            "no_default_policy",
            "no default policy is loaded; name one in `policy`",
        ),
    }
}

/// What `/v1/policies` shows of one policy.
#[derive(Serialize, JsonSchema)]
pub struct PolicyInfo {
    pub name: String,
    /// `active` (serving), or `failed` (no version passed its checks).
    pub status: &'static str,
    pub default: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// SHA-256 of the serving version's files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// When the serving version went live (RFC 3339, UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loaded_at: Option<String>,
    pub files: Vec<String>,
    pub inputs: Vec<InputInfo>,
    pub tiers: Vec<TierInfo>,
    pub test_cases: usize,
    /// The last failed reload of this folder (the serving version, if any, is older).
    pub last_error: Option<ReloadError>,
}

#[derive(Serialize, JsonSchema)]
pub struct InputInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: InputType,
    pub optional: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<Scalar>>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
}

#[derive(Serialize, JsonSchema)]
pub struct TierInfo {
    pub id: String,
    pub label: String,
    pub min_score: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_share: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_count: Option<u64>,
}

/// `GET /v1/policies` answer.
#[derive(Serialize, JsonSchema)]
pub struct PolicyList {
    /// The policy used when a request names none.
    pub default: Option<String>,
    pub policies: Vec<PolicyInfo>,
}

fn info(name: &str, e: &Entry, default: Option<&str>) -> PolicyInfo {
    let l: Option<&Arc<Loaded>> = e.active.as_ref();
    let p = l.map(|l| &l.policy);
    PolicyInfo {
        name: name.to_string(),
        status: if l.is_some() { "active" } else { "failed" },
        default: default == Some(name),
        version: p.map(|p| p.version.clone()),
        description: p.map(|p| p.description.clone()),
        hash: p.map(|p| p.hash.clone()),
        loaded_at: l.map(|l| service::timestamp(l.loaded_at)),
        files: p.map(|p| p.files.clone()).unwrap_or_default(),
        inputs: p
            .map(|p| {
                p.inputs
                    .iter()
                    .map(|i| InputInfo {
                        name: i.name.clone(),
                        ty: i.ty,
                        optional: i.optional,
                        default: i.default.clone(),
                        min: i.min,
                        max: i.max,
                        one_of: i.one_of.clone(),
                        description: i.description.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        tiers: p
            .map(|p| {
                p.tiers
                    .iter()
                    .map(|t| TierInfo {
                        id: t.id.clone(),
                        label: t.label.clone(),
                        min_score: t.min_score,
                        when: t.when.as_ref().map(|w| w.source.clone()),
                        max_share: t.max_share,
                        max_count: t.max_count,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        test_cases: p.map_or(0, |p| p.cases.len()),
        last_error: e.last_error.clone(),
    }
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(b) => {
            (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], b)
                .into_response()
        }
        Err(e) => ApiError::internal("serialize", e).into_response(),
    }
}

pub async fn policies(State(app): State<AppState>) -> Response {
    let reg = app.service.registry();
    let list = PolicyList {
        default: reg.default.clone(),
        policies: reg.entries.iter().map(|(n, e)| info(n, e, reg.default.as_deref())).collect(),
    };
    json(StatusCode::OK, &list)
}

pub async fn policy(State(app): State<AppState>, PathParam(name): PathParam) -> Response {
    let reg = app.service.registry();
    match reg.entries.get(&name) {
        Some(e) => json(StatusCode::OK, &info(&name, e, reg.default.as_deref())),
        None => {
            lookup_error(Lookup::Unknown { name, known: reg.entries.keys().cloned().collect() })
                .into_response()
        }
    }
}

/// `POST /v1/policies/reload` answer: what changed (unchanged policies are not listed).
#[derive(Serialize, JsonSchema)]
pub struct ReloadResponse {
    pub outcomes: Vec<ReloadOutcome>,
}

pub async fn reload(State(app): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let svc = app.service.clone();
    let outcomes = tokio::task::spawn_blocking(move || svc.reload())
        .await
        .map_err(|e| ApiError::internal("reload task", e))?;
    log_reload(&outcomes);
    Ok(json(StatusCode::OK, &ReloadResponse { outcomes }))
}

/// One stderr line per policy a reload changed or rejected.
pub fn log_reload(outcomes: &[ReloadOutcome]) {
    for o in outcomes {
        match &o.error {
            Some(e) => eprintln!(
                "tierwise: policy `{}` {}: {} (still serving: {})",
                o.policy,
                o.result,
                e.message,
                o.hash.as_deref().map_or("none", |h| h.get(..12).unwrap_or(h))
            ),
            None => eprintln!(
                "tierwise: policy `{}` {} {}",
                o.policy,
                o.result,
                o.hash.as_deref().map_or("", |h| h.get(..12).unwrap_or(h))
            ),
        }
    }
}

/// Admin routes: 404 when no token is configured, 401 without a bearer token (none, another
/// scheme, an empty token, a header that is not visible ASCII), 403 for a wrong one. Only
/// SHA-256 digests are compared, in constant time: neither the token's bytes nor its length
/// leak through timing. No answer repeats what was sent.
fn authorize(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let Some(want) = &app.admin_digest else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "admin routes are disabled: set TIERWISE_ADMIN_TOKEN to enable them",
        ));
    };
    let Some(given) = bearer(headers) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send the admin token as `Authorization: Bearer <token>`",
        )
        .challenge("Bearer"));
    };
    let got: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    if bool::from(got.ct_eq(want)) {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "the admin token is wrong"))
    }
}

/// The token of `Authorization: Bearer <token>`; the scheme is case-insensitive (RFC 9110).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

pub async fn schema(State(app): State<AppState>, PathParam(name): PathParam) -> Response {
    // `policy`, `policy.json` or `policy.schema.json`, exactly as /openapi.json's pattern says.
    let key =
        name.strip_suffix(".schema.json").or_else(|| name.strip_suffix(".json")).unwrap_or(&name);
    match app.schemas.iter().find(|(n, _)| *n == key) {
        Some((_, text)) => (
            [(header::CONTENT_TYPE, HeaderValue::from_static("application/schema+json"))],
            text.clone(),
        )
            .into_response(),
        None => {
            let known: Vec<&str> = app.schemas.iter().map(|(n, _)| *n).collect();
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_schema",
                format!("no schema `{name}`; known: {}", known.join(", ")),
            )
            .details(serde_json::json!({ "known": known }))
            .into_response()
        }
    }
}

pub async fn openapi(State(app): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], app.openapi.clone())
        .into_response()
}

/// `GET /healthz` and `GET /readyz` answers.
#[derive(Serialize, JsonSchema)]
pub struct Health {
    /// `ok` (alive) or `ready` (the default policy is serving).
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_policy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// `/readyz` only: `ok`, or `degraded` (Redis down or slow: requests are answered by
    /// evaluating, so the service stays ready; the reason is in `details.cache`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<HealthDetails>,
}

#[derive(Serialize, JsonSchema)]
pub struct HealthDetails {
    pub cache: CacheHealth,
}

/// The decision cache as `/readyz` shows it.
#[derive(Serialize, JsonSchema)]
pub struct CacheHealth {
    /// `memory` or `redis`.
    pub backend: &'static str,
    /// The Redis circuit breaker: `closed` (in use), `open` or `half_open`.
    pub breaker: &'static str,
    /// Why the cache is degraded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

pub async fn healthz() -> Response {
    json(
        StatusCode::OK,
        &Health { status: "ok", default_policy: None, hash: None, cache: None, details: None },
    )
}

pub async fn readyz(State(app): State<AppState>) -> Response {
    if app.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "shutting down")
            .retry_after(1)
            .into_response();
    }
    match app.service.ready() {
        Ok(name) => {
            let hash = app.service.policy(Some(&name)).ok().map(|l| l.policy.hash.clone());
            // Asking starts the breaker's probe when it is due, so an idle service notices
            // Redis is back too.
            let _ = app.cache.available();
            let stats = app.cache.stats();
            let reason = app.cache.degraded();
            let cache = Some(if reason.is_some() { "degraded" } else { "ok" });
            let details = Some(HealthDetails {
                cache: CacheHealth {
                    backend: stats.backend,
                    breaker: stats.breaker.as_str(),
                    reason,
                },
            });
            json(
                StatusCode::OK,
                &Health { status: "ready", default_policy: Some(name), hash, cache, details },
            )
        }
        Err(why) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", why)
            .retry_after(1)
            .into_response(),
    }
}

pub async fn metrics(State(app): State<AppState>) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    app.metrics.observe_log(app.log.stats());
    let text = app.metrics.render(
        &app.service,
        &app.cache.stats(),
        app.cache_gated.load(Relaxed),
        app.cache_unavailable.load(Relaxed),
    );
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}
