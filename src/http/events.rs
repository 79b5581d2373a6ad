//! The HTTP face of events: evaluations that keep state and answer their events, the pull
//! API (`GET /v1/events`), account history, and the dead-letter admin routes.
//!
//! With events on, `/v1/evaluate` and `/v1/portfolio` take this path: decide every account
//! (no decision cache: the transition needs the decisions themselves), run the transitions
//! through the store (state and outbox change per account in one atomic step, before the
//! answer is sent), then answer each decided account with its `events` (type and id) and, at
//! portfolio level, the book's (`book: {name, events}`).

use super::handlers::{
    INLINE_MAX_BYTES, Level as HLevel, authorize, json, lookup_error, parse_capped, read_accounts,
    write_json,
};
use super::{ApiError, AppState};
use crate::cache::WriteBatch;
use crate::decision_log;
use crate::engine::transition::{self, AccountInput, BookInput, EventType, Level};
use crate::engine::{Outcome, Summary};
use crate::events::{EventRef, Filter, Hub};
use crate::script::Budget;
use crate::snapshot::Record;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;

struct Decided {
    loaded: Arc<crate::service::Loaded>,
    records: Vec<Record>,
    outcomes: Vec<Outcome>,
    summary: Option<Summary>,
    book: String,
}

fn decide(
    app: &AppState,
    body: &[u8],
    level: HLevel,
    budget: &Arc<Budget>,
) -> Result<Decided, ApiError> {
    let req: super::handlers::EvaluateRequest<'_> =
        parse_capped(body, app.service.limits().max_accounts)?;
    let loaded = app.service.policy(req.policy.as_deref()).map_err(lookup_error)?;
    let records = read_accounts(&req.accounts);
    let book = req.book.clone().unwrap_or_else(|| "default".to_string());
    let (outcomes, summary) = crate::script::with_budget(Some(budget.clone()), || match level {
        HLevel::Account => (app.service.evaluate(&loaded, &records), None),
        HLevel::Portfolio => {
            let r = app.service.portfolio(&loaded, &records);
            (r.accounts, Some(r.summary))
        }
    });
    Ok(Decided { loaded, records, outcomes, summary, book })
}

/// The days of a record's `as_of` and `tier_since` (none when it is not a snapshot).
fn days(r: &Record) -> (Option<i64>, Option<i64>) {
    match r {
        Ok(s) => (
            crate::date::parse_days(&s.as_of),
            s.tier_since.as_deref().and_then(crate::date::parse_days),
        ),
        Err(_) => (None, None),
    }
}

pub(super) async fn evaluate(
    app: AppState,
    hub: Arc<Hub>,
    body: Bytes,
    level: HLevel,
    start: Instant,
    budget: Arc<Budget>,
) -> Result<Response, ApiError> {
    let inline = body.len() <= INLINE_MAX_BYTES && level == HLevel::Account;
    let d = if inline {
        decide(&app, &body, level, &budget)?
    } else {
        let (app2, budget2) = (app.clone(), budget.clone());
        tokio::task::spawn_blocking(move || decide(&app2, &body, level, &budget2))
            .await
            .map_err(|e| ApiError::internal("evaluation task", e))??
    };
    if budget.spent() {
        return Err(ApiError::timeout(app.config.request_timeout));
    }
    let tlevel = match level {
        HLevel::Account => Level::Account,
        HLevel::Portfolio => Level::Portfolio,
    };
    let rules = hub.rules(&d.loaded.policy);
    let dated: Vec<(Option<i64>, Option<i64>)> = d.records.iter().map(days).collect();
    let items: Vec<AccountInput<'_>> = d
        .outcomes
        .iter()
        .zip(&dated)
        .map(|(o, &(as_of, tier_since))| AccountInput {
            level: tlevel,
            outcome: o,
            as_of: as_of.unwrap_or(i64::MIN),
            tier_since,
        })
        .collect();
    let unavailable = |e: crate::events::StoreError| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "state_unavailable", e.to_string())
            .retry_after(1)
    };
    let per_account = hub.store.apply(&items, &rules.account).await.map_err(unavailable)?;
    let book_events = match &d.summary {
        Some(summary) => {
            let as_of = transition::book_as_of(
                d.outcomes.iter().zip(&dated).filter_map(|(o, (a, _))| a.map(|a| (o, a))),
            );
            let input = BookInput { policy: &d.loaded.pref, book: &d.book, as_of, summary };
            hub.store.apply_book(input, &rules.portfolio).await.map_err(unavailable)?
        }
        None => Vec::new(),
    };
    drop(items);
    for e in &per_account {
        hub.count(e);
    }
    hub.count(&book_events);

    let decision_id = uuid::Uuid::now_v7().to_string();
    let n = d.outcomes.len();
    let mut buf = Vec::with_capacity(256 + n * 900);
    buf.extend_from_slice(b"{\"decision_id\":");
    write_json(&mut buf, &decision_id)?;
    buf.extend_from_slice(b",\"policy\":");
    write_json(&mut buf, &*d.loaded.pref)?;
    if let Some(s) = &d.summary {
        buf.extend_from_slice(b",\"summary\":");
        write_json(&mut buf, s)?;
    }
    buf.extend_from_slice(b",\"accounts\":[");
    let mut latest = WriteBatch::new();
    let mut one = Vec::with_capacity(1024);
    for (i, (o, events)) in d.outcomes.iter().zip(&per_account).enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        one.clear();
        write_json(&mut one, o)?;
        match o.decision() {
            Some(dec) if one.last() == Some(&b'}') => {
                if level == HLevel::Account {
                    latest.put_latest(
                        d.loaded.cache_id.latest_key(&dec.id),
                        bytes::Bytes::copy_from_slice(&one),
                    );
                }
                buf.extend_from_slice(&one[..one.len() - 1]);
                buf.extend_from_slice(b",\"events\":");
                write_json(&mut buf, &events.iter().map(EventRef::of).collect::<Vec<_>>())?;
                buf.push(b'}');
            }
            _ => buf.extend_from_slice(&one),
        }
    }
    buf.push(b']');
    if level == HLevel::Portfolio {
        buf.extend_from_slice(b",\"book\":");
        write_json(
            &mut buf,
            &serde_json::json!({
                "name": d.book,
                "events": book_events.iter().map(EventRef::of).collect::<Vec<_>>(),
            }),
        )?;
    }
    buf.push(b'}');
    if !latest.is_empty() {
        app.cache.put_many(latest);
    }

    let m = match level {
        HLevel::Account => &app.metrics.account,
        HLevel::Portfolio => &app.metrics.portfolio,
    };
    let errors = d.outcomes.iter().filter(|o| o.decision().is_none()).count() as u64;
    m.evaluations.inc();
    m.accounts.inc_by(n as u64);
    m.errors.inc_by(errors);
    m.batch.observe(n as f64);
    let hash = d.loaded.policy.hash.clone();
    if app.log.enabled() {
        app.log.record(decision_log::Job {
            at: std::time::SystemTime::now(),
            decision_id: decision_id.clone(),
            level: level_str(level),
            policy: d.loaded.pref.clone(),
            duration_ms: start.elapsed().as_secs_f64() * 1e3,
            outcomes: d.outcomes,
            summary: d.summary,
            cached: Vec::new(),
            cached_book: None,
        });
    }
    let mut res = (StatusCode::OK, buf).into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(&decision_id) {
        h.insert("x-decision-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(&hash) {
        h.insert("x-policy-hash", v);
    }
    h.insert("x-cache-hits", HeaderValue::from(0));
    Ok(res)
}

fn level_str(l: HLevel) -> &'static str {
    match l {
        HLevel::Account => "account",
        HLevel::Portfolio => "portfolio",
    }
}

fn hub(app: &AppState) -> Result<&Arc<Hub>, ApiError> {
    app.events.get().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "events_off",
            "events are off: start the service with `--events` (or a webhook) to keep them",
        )
    })
}

/// `GET /v1/events` query.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// The `next` cursor of the previous page (absent: from the oldest retained event).
    #[serde(default)]
    pub after: Option<String>,
    /// At most this many events (default 100, at most 1000).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Only this type (`tier.changed`, `alert.raised`, ...; comma-separated for several).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub policy: Option<String>,
    /// `account` or `portfolio`.
    #[serde(default)]
    pub level: Option<String>,
}

/// `GET /v1/events` answer.
#[derive(Serialize, JsonSchema)]
pub struct EventsPage {
    /// CloudEvents 1.0 (structured JSON), oldest first.
    pub events: Vec<serde_json::Value>,
    /// Give it as `after` for the next page (the same when nothing newer exists yet).
    pub next: String,
    /// True when `after` pointed before the oldest event still retained (some were trimmed).
    pub gap: bool,
}

fn bad_query(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_query", message)
}

fn filter_of(q: &EventsQuery) -> Result<Filter, ApiError> {
    let mut f = Filter::default();
    if let Some(t) = &q.kind {
        let types: Result<Vec<EventType>, ApiError> = t
            .split(',')
            .map(|t| {
                EventType::parse(t.trim()).ok_or_else(|| {
                    bad_query(format!(
                        "unknown event type `{t}`: one of {}",
                        EventType::ALL.map(EventType::as_str).join(", ")
                    ))
                })
            })
            .collect();
        f.types = Some(types?);
    }
    if let Some(l) = &q.level {
        let l = Level::parse(l)
            .ok_or_else(|| bad_query(format!("unknown level `{l}`: `account` or `portfolio`")))?;
        f.levels = Some(vec![l]);
    }
    f.policies = q.policy.clone().map(|p| vec![p]);
    Ok(f)
}

pub async fn list(
    State(app): State<AppState>,
    Query(q): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let hub = hub(&app)?;
    let filter = filter_of(&q)?;
    let after = match q.after.as_deref() {
        None | Some("") => 0,
        Some(c) => c
            .parse::<u64>()
            .map_err(|_| bad_query(format!("`after={c}` is not a cursor from `next`")))?,
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let page = hub.store.page(after, limit, &filter).await.map_err(|e| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "state_unavailable", e.to_string())
    })?;
    let events = page
        .events
        .iter()
        .map(|e| serde_json::from_slice(&e.body).unwrap_or(serde_json::Value::Null))
        .collect();
    Ok(json(
        StatusCode::OK,
        &EventsPage {
            events,
            next: page.next.to_string(),
            gap: after > 0 && after + 1 < page.first,
        },
    ))
}

/// `GET /v1/accounts/{id}/history` query.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// The policy's name (absent: the default policy).
    #[serde(default)]
    pub policy: Option<String>,
    /// `account` (default) or `portfolio`.
    #[serde(default)]
    pub level: Option<String>,
}

/// One stint in a tier.
#[derive(Serialize, JsonSchema)]
pub struct Period {
    pub tier: String,
    /// `YYYY-MM-DD`.
    pub from: String,
    /// `YYYY-MM-DD`; absent for the current period.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The reason codes of the decision that put the account there.
    pub reasons: Vec<String>,
}

/// An alert active now.
#[derive(Serialize, JsonSchema)]
pub struct ActiveAlertOut {
    pub id: String,
    /// When it became active.
    pub since: String,
    /// When it was last told (`alert.raised` or `alert.repeated`); absent while silent (it
    /// came back inside its cooldown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_told: Option<String>,
}

/// `GET /v1/accounts/{id}/history` answer.
#[derive(Serialize, JsonSchema)]
pub struct History {
    pub account: String,
    pub policy: String,
    pub level: Level,
    /// The last accepted snapshot's `as_of`.
    pub as_of: String,
    pub tier: String,
    pub tier_since: String,
    /// Oldest first; the last is the current one. Bounded (the oldest are dropped).
    pub periods: Vec<Period>,
    pub active_alerts: Vec<ActiveAlertOut>,
}

pub async fn history(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Response, ApiError> {
    let hub = hub(&app)?;
    let loaded = app.service.policy(q.policy.as_deref()).map_err(lookup_error)?;
    let level = match q.level.as_deref() {
        None => Level::Account,
        Some(l) => Level::parse(l)
            .ok_or_else(|| bad_query(format!("unknown level `{l}`: `account` or `portfolio`")))?,
    };
    let name = loaded.policy.name.clone();
    let states = hub.store.states(&name, level, &[id.as_str()]).await.map_err(|e| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "state_unavailable", e.to_string())
    })?;
    let Some(Some(s)) = states.into_iter().next() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_history",
            format!(
                "no state for account `{id}` under policy `{name}` at level `{}`",
                level.as_str()
            ),
        ));
    };
    let day = crate::date::format_days;
    let out = History {
        account: id,
        policy: name,
        level,
        as_of: day(s.as_of),
        tier: s.tier.to_string(),
        tier_since: day(s.tier_since),
        periods: s
            .history
            .iter()
            .map(|p| Period {
                tier: p.tier.to_string(),
                from: day(p.from),
                to: p.to.map(day),
                reasons: p.reasons.iter().map(|r| r.to_string()).collect(),
            })
            .collect(),
        active_alerts: s
            .alerts
            .active
            .iter()
            .map(|a| ActiveAlertOut {
                id: a.id.to_string(),
                since: day(a.since),
                last_told: a.told.map(day),
            })
            .collect(),
    };
    Ok(json(StatusCode::OK, &out))
}

/// `GET /v1/events/dead` answer.
#[derive(Serialize)]
struct DeadList {
    dead: Vec<crate::events::webhook::Dead>,
}

pub async fn dead(State(app): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let dead = hub(&app)?.delivery.as_ref().map(|d| d.dead()).unwrap_or_default();
    Ok(json(StatusCode::OK, &DeadList { dead }))
}

/// `POST /v1/events/dead/replay` body (every field optional: all dead letters).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Only this webhook's (its `name` in the dead-letter list).
    #[serde(default)]
    pub webhook: Option<String>,
    /// Only these event ids.
    #[serde(default)]
    pub ids: Option<Vec<String>>,
}

pub async fn replay(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let req: ReplayRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ReplayRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))?
    };
    let n = hub(&app)?
        .delivery
        .as_ref()
        .map_or(0, |d| d.replay(req.webhook.as_deref(), req.ids.as_deref()));
    Ok(json(StatusCode::OK, &serde_json::json!({ "replayed": n })))
}
