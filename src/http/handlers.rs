//! Handlers: parse, call the service, render. Evaluation answers are serialized once, into
//! the response bytes, straight from the engine's outcomes.

use super::{ApiError, AppState, Deadline, JsonBody, PathParam, parse};
use crate::cache;
use crate::engine::{Outcome, PolicyRef, Summary};
use crate::policy::{InputType, Scalar};
use crate::service::{
    self, Entry, Input, Level, Loaded, Lookup, PipelineError, ReloadError, ReloadOutcome, Request,
};
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
pub(super) const INLINE_MAX_BYTES: usize = 16 * 1024;

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
    /// `/v1/portfolio` with events on: the book's name, whose portfolio alerts have their own
    /// state (default `default`).
    #[serde(default)]
    pub book: Option<String>,
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
    if parsed.is_ok() && body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        // serde's derived structs take an array of their fields too; the schema says object.
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            "the body must be a JSON object (see /openapi.json)",
        ));
    }
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

pub async fn evaluate(
    State(app): State<AppState>,
    deadline: Deadline,
    rid: super::RequestId,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    body: JsonBody,
) -> Result<Response, ApiError> {
    if super::explain::wanted(query.as_deref())? {
        let res =
            run_evaluation(app.clone(), body.0.clone(), Level::Account, deadline, rid).await?;
        return super::explain::add(app, body.0, res, deadline).await;
    }
    run_evaluation(app, body.0, Level::Account, deadline, rid).await
}

pub async fn portfolio(
    State(app): State<AppState>,
    deadline: Deadline,
    rid: super::RequestId,
    body: JsonBody,
) -> Result<Response, ApiError> {
    run_evaluation(app, body.0, Level::Portfolio, deadline, rid).await
}

/// Why an evaluation request has no answer: its own fault (parsing, policy lookup), or the
/// pipeline's.
enum Failed {
    Request(ApiError),
    Pipeline(PipelineError),
}

impl From<ApiError> for Failed {
    fn from(e: ApiError) -> Self {
        Failed::Request(e)
    }
}

impl From<PipelineError> for Failed {
    fn from(e: PipelineError) -> Self {
        Failed::Pipeline(e)
    }
}

/// The answer for a pipeline that gave none.
pub(super) fn pipeline_error(app: &AppState, e: PipelineError) -> ApiError {
    match e {
        // Past the request timeout: the client has its 503 already.
        PipelineError::Timeout => ApiError::timeout(app.config.request_timeout),
        PipelineError::ResponseTooLarge { limit, rule } => {
            ApiError::response_too_large(limit, rule.as_deref())
        }
        PipelineError::StateUnavailable(why) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "state_unavailable", why).retry_after(1)
        }
        PipelineError::Internal { what, detail } => ApiError::internal(what, detail),
    }
}

/// Parse, hand to the pipeline, count, answer with its bytes.
async fn run_evaluation(
    app: AppState,
    body: Bytes,
    level: Level,
    deadline: Deadline,
    rid: super::RequestId,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    // Every evaluation of this request stops at the request timeout, on whichever thread.
    let budget = crate::script::Budget::with_output(
        Some(deadline.0),
        app.service.limits().max_response_bytes,
    );
    let inline = body.len() <= INLINE_MAX_BYTES && level == Level::Account;
    let app2 = app.clone();
    let input = move || {
        let limits = app2.service.limits();
        let req: EvaluateRequest<'_> = parse_capped(&body, limits.max_accounts)?;
        let loaded = app2.service.policy(req.policy.as_deref()).map_err(lookup_error)?;
        let (records, undeclared) =
            read_accounts(&req.accounts, &[&loaded.policy], limits.max_fields)?;
        Ok(Input { loaded, records, undeclared, book: req.book })
    };
    let req = Request { level, budget, start, inline, request_id: Some(rid.0) };
    // With events on, the pipeline keeps each account's state and answers its events.
    let answer = match app.events.get() {
        Some(hub) => app.pipeline.answer_events(hub.clone(), req, input).await,
        None => app.pipeline.answer(req, input).await,
    };
    let done = match answer {
        Ok(done) => done,
        Err(Failed::Request(e)) => return Err(e),
        Err(Failed::Pipeline(e)) => return Err(pipeline_error(&app, e)),
    };
    let skipped = done.undeclared;
    let m = match level {
        Level::Account => &app.metrics.account,
        Level::Portfolio => &app.metrics.portfolio,
    };
    m.evaluations.inc();
    m.accounts.inc_by(done.accounts as u64);
    m.errors.inc_by(done.errors);
    m.batch.observe(done.accounts as f64);
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
    if skipped > 0 {
        // Told, not kept: the values were never stored, only counted.
        h.insert("x-undeclared-fields", HeaderValue::from(skipped));
    }
    Ok(res)
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
    if id.len() > snapshot::MAX_ID_BYTES {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!(
                "the account id is {} bytes long, more than the limit of {}",
                id.len(),
                snapshot::MAX_ID_BYTES
            ),
        ));
    }
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

/// The snapshots of `accounts`, parsed on every core when there are many, keeping of each
/// `fields` only the keys `inputs` declares (the rest are skipped while parsing, never
/// stored); also how many were skipped. A bad element is that account's error. An account
/// with more keys than the limit makes the request a 413 `too_many_fields`.
pub(super) fn read_accounts(
    items: &[&RawValue],
    inputs: &[&crate::policy::Policy],
    max_fields: usize,
) -> Result<(Vec<Record>, usize), ApiError> {
    use rayon::prelude::*;
    let keep = |k: &str| inputs.iter().any(|p| p.inputs.iter().any(|i| i.name == k));
    let filter = snapshot::FieldFilter { keep: &keep, max_fields };
    let one = |i: usize, raw: &RawValue| snapshot::parse_filtered(raw.get(), i + 1, &filter);
    let parsed: Vec<(Record, usize)> = if items.len() > PARSE_CHUNK {
        items.par_iter().enumerate().with_min_len(PARSE_CHUNK).map(|(i, raw)| one(i, raw)).collect()
    } else {
        items.iter().enumerate().map(|(i, raw)| one(i, raw)).collect()
    };
    let skipped = parsed.iter().map(|(_, n)| n).sum();
    if let Some(e) = parsed.iter().find_map(|(r, _)| match r {
        Err(e) if e.code == snapshot::TOO_MANY_FIELDS => Some(e),
        _ => None,
    }) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_fields",
            format!(
                "account {} (record {}) has more than {max_fields} keys in `fields`; send only the policy's inputs (the limit is TIERWISE_MAX_FIELDS)",
                e.id.as_deref().map_or("?".to_string(), |id| format!("`{id}`")),
                e.record.unwrap_or(0)
            ),
        )
        .details(serde_json::json!({ "limit_fields": max_fields, "record": e.record })));
    }
    Ok((parsed.into_iter().map(|(r, _)| r).collect(), skipped))
}

pub(super) fn write_json<T: Serialize + ?Sized>(buf: &mut Vec<u8>, v: &T) -> Result<(), ApiError> {
    serde_json::to_writer(buf, v).map_err(|e| ApiError::internal("serialize", e))
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

pub(super) fn json<T: Serialize>(status: StatusCode, v: &T) -> Response {
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

pub async fn reload(
    State(app): State<AppState>,
    peer: Option<axum::Extension<super::throttle::Peer>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&app, &headers, peer.map(|p| p.0.0))?;
    let svc = app.service.clone();
    let outcomes = tokio::task::spawn_blocking(move || svc.reload())
        .await
        .map_err(|e| ApiError::internal("reload task", e))?;
    log_reload(&outcomes);
    Ok(json(StatusCode::OK, &ReloadResponse { outcomes }))
}

/// One log line per policy a reload changed or rejected.
pub fn log_reload(outcomes: &[ReloadOutcome]) {
    for o in outcomes {
        match &o.error {
            Some(e) => tracing::warn!(
                target: "tierwise::reload",
                policy = %o.policy,
                result = o.result,
                code = e.code,
                "policy `{}` {}: {} (still serving: {})",
                o.policy,
                o.result,
                e.message,
                o.hash.as_deref().map_or("none", |h| h.get(..12).unwrap_or(h))
            ),
            None => tracing::info!(
                target: "tierwise::reload",
                policy = %o.policy,
                result = o.result,
                hash = o.hash.as_deref().unwrap_or(""),
                "policy `{}` {} {}",
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
pub(super) fn authorize(
    app: &AppState,
    headers: &HeaderMap,
    peer: Option<std::net::IpAddr>,
) -> Result<(), ApiError> {
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
    if let Err(wait) = app.auth_throttle.check(peer) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            format!("too many wrong admin tokens from this address; retry in {wait} s"),
        )
        .retry_after(wait));
    }
    let got: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    if bool::from(got.ct_eq(want)) {
        Ok(())
    } else {
        app.auth_throttle.failed(peer);
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
    /// Account state and events; absent when events are off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<EventsHealth>,
}

/// Where account state and the outbox live, as `/readyz` shows it.
#[derive(Serialize, JsonSchema)]
pub struct EventsHealth {
    /// `memory` or `redis`.
    pub backend: &'static str,
    /// `durable` (Redis: survives a restart, with AOF on) or `memory-only` (lost on restart).
    pub state: &'static str,
    /// Webhooks configured, and those disabled by a 410.
    pub webhooks: usize,
    pub webhooks_disabled: usize,
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
                events: app.events.get().map(|hub| {
                    let hooks = hub.delivery.as_ref().map(|d| d.summary()).unwrap_or_default();
                    EventsHealth {
                        backend: hub.store.backend(),
                        state: if hub.store.durable() { "durable" } else { "memory-only" },
                        webhooks: hooks.len(),
                        webhooks_disabled: hooks.iter().filter(|h| h.1).count(),
                    }
                }),
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
    let mut text = app.metrics.render(
        &app.service,
        &app.cache.stats(),
        app.pipeline.counters().gated.load(Relaxed),
        app.pipeline.counters().unavailable.load(Relaxed),
    );
    if let Some(hub) = app.events.get() {
        // Before OpenMetrics' closing `# EOF`.
        let eof = text.rfind("# EOF").unwrap_or(text.len());
        let tail = text.split_off(eof);
        hub.render_metrics(&mut text);
        text.push_str(&tail);
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}
