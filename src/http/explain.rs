//! `POST /v1/evaluate?explain=full`: the ordinary answer (the same cache, decision log and
//! metrics), then [`crate::service::Pipeline::explain`] adds each decision's explanation.

use super::handlers::{EvaluateRequest, parse_capped, read_accounts};
use super::{ApiError, AppState, Deadline};
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
        let limits = app.service.limits();
        let req: EvaluateRequest<'_> = parse_capped(&body, limits.max_accounts)?;
        let loaded =
            app.service.policy(req.policy.as_deref()).map_err(super::handlers::lookup_error)?;
        let (records, _) = read_accounts(&req.accounts, &[&loaded.policy], limits.max_fields)?;
        let budget =
            crate::script::Budget::with_output(Some(deadline.0), limits.max_response_bytes);
        app.pipeline
            .explain(&loaded, &records, &answer, budget)
            .map_err(|e| super::handlers::pipeline_error(&app, e))
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
