//! One error shape for every answer that is not a success: `{code, message, details}`.
//!
//! `code` is stable (clients and tests match on it), `message` is for people (lowercase, user
//! input in backticks, says what to do), `details` carries the place or the list when there
//! is one. Internal failures are logged and answered without their text.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ErrorBody {
    /// Stable machine code: `malformed_json`, `invalid_request`, `unsupported_media_type`,
    /// `payload_too_large`, `too_many_accounts`, `too_many_fields`, `response_too_large`, `unknown_policy`, `policy_unavailable`, `no_default_policy`,
    /// `unknown_schema`, `not_found`, `method_not_allowed`, `unauthorized`, `forbidden`,
    /// (dry runs) `bad_candidate_path`, `candidate_too_large`, `candidate_invalid`, `invalid_override`,
    /// `candidate_sandbox_limit`, `candidate_output_limit`, `overloaded`, `timeout`, `body_timeout` (408: the body did not arrive in time),
    /// `shutting_down` (503: the process stopped before the answer was ready), `not_ready`, `unknown_account`, `cache_unavailable`, `internal`.
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

/// An error answer: status, body, and `Retry-After` when waiting helps.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
    pub retry_after: Option<u32>,
    /// `WWW-Authenticate` challenge of a 401 (RFC 9110 requires one).
    pub challenge: Option<&'static str>,
}

/// Put on error responses so the metrics layer can count errors by code.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: ErrorBody { code, message: message.into(), details: None },
            retry_after: None,
            challenge: None,
        }
    }

    pub fn details(mut self, details: Value) -> Self {
        self.body.details = Some(details);
        self
    }

    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn challenge(mut self, scheme: &'static str) -> Self {
        self.challenge = Some(scheme);
        self
    }

    pub fn code(&self) -> &'static str {
        self.body.code
    }

    /// A failure of ours: logged in full, answered without its text.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::error!(context, "internal error: {context}: {err}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; it has been logged",
        )
    }

    pub fn not_found(path: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route `{path}`; see /openapi.json"),
        )
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("`{method}` is not allowed on `{path}`; see /openapi.json"),
        )
    }

    pub fn payload_too_large(limit: usize) -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
        .details(serde_json::json!({ "limit_bytes": limit }))
    }

    /// An answer that would pass the output budget (`max_response_bytes`); `rule` is the one
    /// whose output passed it, when the policy's alerts did.
    pub fn response_too_large(limit: usize, rule: Option<&str>) -> Self {
        let why = match rule {
            Some(r) => format!("; `{r}` fans out (it raised the alerts that passed it)"),
            None => String::new(),
        };
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "response_too_large",
            format!("the answer would be larger than the limit of {limit} bytes{why}; send fewer accounts per request (the limit is TIERWISE_MAX_RESPONSE_BYTES)"),
        )
        .details(serde_json::json!({ "limit_bytes": limit, "rule": rule }))
    }

    pub fn overloaded() -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many requests in progress; retry shortly",
        )
        .retry_after(1)
    }

    pub fn body_timeout(after: std::time::Duration) -> Self {
        ApiError::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", format!("the request body was not received within {} ms; send it faster or in a smaller request", after.as_millis()))
            .details(serde_json::json!({ "timeout_ms": after.as_millis() as u64 }))
    }

    pub fn shutting_down() -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down; retry on another replica",
        )
        .retry_after(1)
    }

    pub fn timeout(after: std::time::Duration) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!("the request took longer than {} ms", after.as_millis()),
        )
        .retry_after(1)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let bytes = serde_json::to_vec(&self.body)
            .unwrap_or_else(|_| br#"{"code":"internal","message":"internal error"}"#.to_vec());
        let mut res = (
            self.status,
            [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            bytes,
        )
            .into_response();
        // Every 503 says when to come back: /openapi.json promises the header, and a client
        // (or load balancer) that honours it backs off instead of hammering.
        let retry_after =
            self.retry_after.or((self.status == StatusCode::SERVICE_UNAVAILABLE).then_some(1));
        if let Some(s) = retry_after {
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if let Some(scheme) = self.challenge {
            res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(scheme));
        }
        res.extensions_mut().insert(ErrorCode(self.body.code));
        res
    }
}
