//! The HTTP face of events: the pull API (`GET /v1/events`), account history, and the
//! dead-letter admin routes. Evaluations with events on go through the service pipeline
//! ([`crate::service::Pipeline::answer_events`]), like every other evaluation.

use super::handlers::{authorize, json, lookup_error};
use super::{ApiError, AppState};
use crate::engine::transition::{EventType, Level};
use crate::events::{Filter, Hub};
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

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

/// axum's own rejection is a `text/plain` body; every error here is the JSON shape (an
/// unknown query parameter is the usual one).
fn query_of<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q).map_err(|e| bad_query(e.body_text()))
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
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query_of(q)?;
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
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query_of(q)?;
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

pub async fn dead(
    State(app): State<AppState>,
    peer: Option<axum::Extension<super::throttle::Peer>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&app, &headers, peer.map(|p| p.0.0))?;
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
    peer: Option<axum::Extension<super::throttle::Peer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&app, &headers, peer.map(|p| p.0.0))?;
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
