//! `POST /v1/evaluate?explain=full`: each decision with its explanation in business terms
//! ([`crate::engine::explain`]): the single criterion changes that reach the next tier and
//! what holds the account where it is.
//!
//! The answer is the ordinary one (the same cache, decision log and metrics), with an
//! `explanation` added to every decision. Explaining needs each account's inputs, which a
//! cached decision does not keep, so the accounts are decided once more here, off the async
//! threads and under the request's deadline: evaluation is deterministic, so these are the
//! decisions the answer holds (checked by policy hash; a reload in between leaves the
//! answer without explanations rather than with another version's).

use super::handlers::{EvaluateRequest, parse_capped, read_accounts};
use super::{ApiError, AppState, Deadline};
use crate::engine::{self, Outcome};
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Whether the query asks for explanations: `explain=full`; `explain=none` or no `explain`
/// does not; anything else is a 422 naming the choices.
pub(super) fn wanted(query: Option<&str>) -> Result<bool, ApiError> {
    let mut want = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "explain" {
            want = match v {
                "full" => true,
                "none" | "" => false,
                other => {
                    return Err(ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid_request",
                        format!("unknown `explain` value `{other}`: use `full` or `none`"),
                    ));
                }
            }
        }
    }
    Ok(want)
}

/// Adds an `explanation` to every decision of `res`, the answer to `body`.
pub(super) async fn add(
    app: AppState,
    body: Bytes,
    res: Response,
    deadline: Deadline,
) -> Result<Response, ApiError> {
    if res.status() != StatusCode::OK {
        return Ok(res);
    }
    let (parts, answer) = res.into_parts();
    let answer = axum::body::to_bytes(answer, usize::MAX)
        .await
        .map_err(|e| ApiError::internal("explain: read the answer", e))?;
    let bytes = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, ApiError> {
        let req: EvaluateRequest<'_> = parse_capped(&body, app.service.limits().max_accounts)?;
        let loaded =
            app.service.policy(req.policy.as_deref()).map_err(super::handlers::lookup_error)?;
        // Spliced into the answer's own bytes, so every other field keeps its order.
        #[derive(serde::Deserialize)]
        struct Answer<'a> {
            #[serde(borrow)]
            policy: &'a serde_json::value::RawValue,
            #[serde(borrow)]
            accounts: Vec<&'a serde_json::value::RawValue>,
        }
        let parsed: Answer<'_> = serde_json::from_slice(&answer)
            .map_err(|e| ApiError::internal("explain: parse the answer", e))?;
        #[derive(serde::Deserialize)]
        struct Hash {
            hash: String,
        }
        let hash: Option<Hash> = serde_json::from_str(parsed.policy.get()).ok();
        if hash.is_none_or(|h| h.hash != loaded.policy.hash) {
            return Ok(answer.to_vec());
        }
        let records = read_accounts(&req.accounts);
        let budget = crate::script::Budget::new(Some(deadline.0));
        let outcomes = crate::script::with_budget(Some(budget.clone()), || {
            engine::evaluate(&loaded.policy, &records)
        });
        if budget.spent() {
            return Err(ApiError::timeout(app.config.request_timeout));
        }
        let head = answer
            .windows(12)
            .position(|w| w == b"\"accounts\":[")
            .map(|i| i + 12)
            .ok_or_else(|| ApiError::internal("explain", "no accounts in the answer"))?;
        let mut out = Vec::with_capacity(answer.len() * 2);
        out.extend_from_slice(&answer[..head]);
        for (i, raw) in parsed.accounts.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let text = raw.get().trim_end();
            match (outcomes.get(i), records.get(i), text.strip_suffix('}')) {
                (Some(Outcome::Decision(d)), Some(Ok(snap)), Some(open)) => {
                    out.extend_from_slice(open.as_bytes());
                    out.extend_from_slice(b",\"explanation\":");
                    let ex = engine::explain::explain(&loaded.policy, snap, d);
                    serde_json::to_writer(&mut out, &ex)
                        .map_err(|e| ApiError::internal("explain: serialize", e))?;
                    out.push(b'}');
                }
                _ => out.extend_from_slice(text.as_bytes()),
            }
        }
        out.extend_from_slice(b"]}");
        Ok(out)
    })
    .await
    .map_err(|e| ApiError::internal("explain task", e))??;
    let mut res = (StatusCode::OK, bytes).into_response();
    let h = res.headers_mut();
    for (k, v) in &parts.headers {
        if k != axum::http::header::CONTENT_LENGTH {
            h.insert(k.clone(), v.clone());
        }
    }
    Ok(res)
}
