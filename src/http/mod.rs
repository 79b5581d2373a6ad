//! The HTTP server (axum): routes, hardening layers, the JSON extractor.
//!
//! [`app`] builds the whole router from an [`App`], so tests drive it with
//! `tower::ServiceExt::oneshot` and no socket. Layers, outermost first:
//! observe (the request id — the caller's `x-request-id`, bounded and sanitised, or a new
//! one — echoed in the answer and carried by a `request` span into every log line of the
//! request and into its decision-log record; the access log line; every answer counted,
//! errors by code) → catch panic (a 500 `internal`, not a
//! dropped connection) → body limit (every route, by
//! `Content-Length` and while reading) → for `/v1/*` only: concurrency limit (503 +
//! `Retry-After` when saturated) → timeout. Probes and `/metrics` stay outside the
//! concurrency limit so a saturated server still says it is alive.

mod backtest;
mod console;
mod dryrun;
mod error;
pub(crate) mod events;
mod explain;
mod handlers;
pub mod openapi;
pub mod server;
pub mod throttle;

pub use console::CSP as CONSOLE_CSP;
pub use dryrun::{MAX_CANDIDATE_BYTES, MAX_CANDIDATE_FILES};
pub use error::{ApiError, ErrorBody, ErrorCode};
pub use handlers::log_reload;

use crate::cache::Cache;
use crate::decision_log::DecisionLog;
use crate::metrics::{Metrics, RequestLabels, RouteLabels};
use crate::service::{Pipeline, Service};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Operator settings of the server (the CLI fills them from flags and `TIERWISE_*`).
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest request body, in bytes.
    pub body_limit: usize,
    /// A request not answered by then gets 503 `timeout`.
    pub request_timeout: Duration,
    /// Requests in progress at once on `/v1/*`; more get 503 `overloaded`.
    pub max_concurrent: usize,
    /// Bearer token for admin routes; `None` disables them (404).
    pub admin_token: Option<String>,
    /// Read the cache on every evaluate and write every decision, bypassing the cost gate
    /// and the doorkeeper (`--cache-always`).
    pub cache_always: bool,
    /// CPU priority of the threads dry runs are compiled and evaluated on.
    pub dry_run_priority: DryRunPriority,
    /// Serve the console under `/ui/` (`--console off` turns it off: `/ui/` is then a 404).
    pub console: bool,
}

/// How dry runs share the cores with live requests (`--dry-run-priority`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DryRunPriority {
    /// Linux `SCHED_IDLE`: dry runs get only the CPU time live requests leave. A hostile
    /// candidate then costs live p99 nothing measurable; on cores saturated by live traffic a
    /// dry run waits (and may end in its request timeout).
    #[default]
    Idle,
    /// nice 19: live requests win the cores, dry runs keep a small share under saturation.
    Low,
    /// The same priority as live requests.
    Normal,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            body_limit: 8 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            max_concurrent: 256,
            admin_token: None,
            cache_always: false,
            dry_run_priority: DryRunPriority::default(),
            console: true,
        }
    }
}

/// Everything a handler needs; shared behind an `Arc`.
pub struct App {
    pub service: Arc<Service>,
    /// The decision cache (memory by default, Redis when configured); never a reason to fail.
    pub cache: Arc<dyn Cache>,
    /// The one path to decisions (the same cache and log as above).
    pub pipeline: Pipeline,
    pub config: Config,
    pub metrics: Metrics,
    pub log: DecisionLog,
    limiter: Semaphore,
    /// Dry runs in progress at once ([`DRY_RUNS_AT_ONCE`]): a candidate is untrusted code, and
    /// one dry run already uses every core.
    dry_runs: Semaphore,
    /// Set at SIGTERM: `/readyz` answers 503 so load balancers stop sending new requests
    /// while in-flight ones finish.
    pub draining: std::sync::atomic::AtomicBool,
    /// SHA-256 of the admin token: comparing digests in constant time hides the length too.
    admin_digest: Option<[u8; 32]>,
    /// Wrong admin tokens per client, rate-limited.
    auth_throttle: throttle::AuthThrottle,
    /// Account state and events, when on (`--events`, a webhook, or Redis events): set once
    /// at start, before serving.
    pub events: std::sync::OnceLock<Arc<crate::events::Hub>>,
    /// Rendered once: they only change with the binary.
    openapi: Bytes,
    schemas: Vec<(&'static str, Bytes)>,
}

impl App {
    /// An app with the embedded in-memory cache on its defaults.
    pub fn new(service: Arc<Service>, config: Config, log: DecisionLog) -> Arc<Self> {
        let cache: Arc<dyn Cache> =
            Arc::new(crate::cache::memory::MemoryCache::new(&crate::cache::CacheConfig::default()));
        Self::with_cache(service, config, log, cache)
    }

    pub fn with_cache(
        service: Arc<Service>,
        config: Config,
        log: DecisionLog,
        cache: Arc<dyn Cache>,
    ) -> Arc<Self> {
        use sha2::{Digest, Sha256};
        let admin_digest = config
            .admin_token
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(|t| Sha256::digest(t.as_bytes()).into());
        let schemas = crate::schema::all()
            .into_iter()
            .map(|(file, text)| (file.trim_end_matches(".schema.json"), Bytes::from(text)))
            .collect();
        let pipeline = Pipeline::new(cache.clone(), log.clone(), config.cache_always);
        Arc::new(App {
            limiter: Semaphore::new(config.max_concurrent.max(1)),
            dry_runs: Semaphore::new(DRY_RUNS_AT_ONCE),
            draining: std::sync::atomic::AtomicBool::new(false),
            service,
            cache,
            pipeline,
            config,
            metrics: Metrics::new(),
            log,
            admin_digest,
            auth_throttle: throttle::AuthThrottle::default(),
            events: std::sync::OnceLock::new(),
            openapi: Bytes::from(openapi::document_json()),
            schemas,
        })
    }
}

pub type AppState = Arc<App>;

/// Dry runs answered at once; more get 503 `overloaded` with `Retry-After`.
pub const DRY_RUNS_AT_ONCE: usize = 2;

/// Every route the server answers, for metric labels (a closed set: no allocation).
const ROUTES: &[&str] = &[
    "/v1/evaluate",
    "/v1/portfolio",
    "/v1/dry-run",
    "/v1/backtest",
    "/v1/accounts/{id}/decision",
    "/v1/accounts/{id}/history",
    "/v1/events",
    "/v1/events/dead",
    "/v1/events/dead/replay",
    "/v1/policies",
    "/v1/policies/reload",
    "/v1/policies/{name}",
    "/v1/schemas/{name}",
    "/openapi.json",
    "/healthz",
    "/readyz",
    "/metrics",
    "/ui",
    "/ui/",
    "/ui/policies",
    "/ui/book",
    "/ui/account",
    "/ui/whatif",
    "/ui/whatif/policy.toml",
    "/ui/backtest",
    "/ui/assets/console.css",
    "/ui/assets/console.js",
];

/// The whole router.
pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .route("/v1/evaluate", post(handlers::evaluate))
        .route("/v1/portfolio", post(handlers::portfolio))
        .route("/v1/dry-run", post(dryrun::dry_run))
        .route("/v1/backtest", post(backtest::backtest))
        .route("/v1/accounts/{id}/decision", get(handlers::latest_decision))
        .route("/v1/accounts/{id}/history", get(events::history))
        .route("/v1/events", get(events::list))
        .route("/v1/events/dead", get(events::dead))
        .route("/v1/events/dead/replay", post(events::replay))
        .route("/v1/policies", get(handlers::policies))
        .route("/v1/policies/reload", post(handlers::reload))
        .route("/v1/policies/{name}", get(handlers::policy))
        .route("/v1/schemas/{name}", get(handlers::schema))
        .route_layer(middleware::from_fn_with_state(state.clone(), limit_and_timeout));
    let ops = Router::new()
        .route("/openapi.json", get(handlers::openapi))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics));
    let routes = if state.config.console {
        api.merge(ops).merge(console::routes(state.clone()))
    } else {
        api.merge(ops)
    };
    with_layers(
        routes
            // An unknown path; a known path with the wrong method gets the next one.
            .fallback(|uri: axum::http::Uri| async move { ApiError::not_found(uri.path()) })
            .method_not_allowed_fallback(|method: Method, uri: axum::http::Uri| async move {
                ApiError::method_not_allowed(method.as_str(), uri.path())
            }),
        state,
    )
}

/// The layers every route gets, around any set of routes: [`app`] puts them around the real
/// ones, and tests around routes of their own (one that panics, say) to check the layers
/// themselves without a test hook in the real routes.
pub fn with_layers(routes: Router<AppState>, state: AppState) -> Router {
    let limit = state.config.body_limit;
    routes
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), body_limit))
        .layer(middleware::from_fn(catch_panic))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// A panic while answering (a bug) is that request's 500 `internal`, counted like any error;
/// without this, hyper drops the connection with no answer. A panic in a `spawn_blocking`
/// closure reaches the handler as a `JoinError`, which handlers answer as `internal` too.
/// Needs `panic = "unwind"` (the default; Cargo.toml's release profile must not abort).
async fn catch_panic(req: Request, next: Next) -> Response {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::task::Poll;
    let mut fut = Box::pin(next.run(req));
    // Unwind safety: after a panic the future is dropped, never polled again, and the
    // handlers share nothing a half-done request could leave inconsistent but the
    // `Mutex`es, which recover from poisoning where they are locked.
    let answered =
        std::future::poll_fn(|cx| match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Ready(res)) => Poll::Ready(Ok(res)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(payload)),
        })
        .await;
    match answered {
        Ok(res) => res,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("a panic");
            ApiError::internal("panic while answering", what).into_response()
        }
    }
}

/// The id of one request: the caller's `x-request-id` when it is usable (at most
/// [`MAX_REQUEST_ID`] bytes of `A-Z a-z 0-9 - _ . : / + = @`; other bytes are dropped), else a
/// new UUIDv7. Echoed in the answer's `x-request-id`, in every log line of the request (its
/// `request` span) and in its decision-log record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(pub Arc<str>);

/// The longest request id kept from a caller; the rest is cut off.
pub const MAX_REQUEST_ID: usize = 128;

impl RequestId {
    /// The caller's id, sanitised, or `None` when nothing usable is left of it.
    pub fn from_caller(raw: &[u8]) -> Option<RequestId> {
        let ok = |b: &u8| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(b);
        if raw.len() <= MAX_REQUEST_ID && raw.iter().all(ok) {
            // The common case (a proxy's or a client's UUID): kept as it is, one copy.
            return std::str::from_utf8(raw)
                .ok()
                .filter(|s| !s.is_empty())
                .map(|s| RequestId(s.into()));
        }
        let kept: String =
            raw.iter().filter(|b| ok(b)).take(MAX_REQUEST_ID).map(|&b| char::from(b)).collect();
        (!kept.is_empty()).then(|| RequestId(kept.into()))
    }

    pub fn new_random() -> RequestId {
        RequestId(uuid::Uuid::now_v7().to_string().into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        // Outside `observe` (a test's own router): an id of its own.
        Ok(parts.extensions.get::<RequestId>().cloned().unwrap_or_else(RequestId::new_random))
    }
}

/// The request id, its span and access log line; counts every answer by route, method and
/// status, its latency, and errors by code.
async fn observe(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    use tracing::Instrument as _;
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|m| ROUTES.iter().find(|r| **r == m.as_str()).copied())
        .unwrap_or("unmatched");
    let method = static_method(req.method());
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| RequestId::from_caller(v.as_bytes()))
        .unwrap_or_else(RequestId::new_random);
    req.extensions_mut().insert(id.clone());
    // Disabled (no cost but a check) when the log level is above info.
    let span = tracing::info_span!("request", request_id = %id.0);
    let m = &app.metrics;
    m.in_flight.inc();
    let mut res = next.run(req).instrument(span.clone()).await;
    m.in_flight.dec();
    let status = res.status().as_u16();
    let took = start.elapsed();
    m.requests.get_or_create(&RequestLabels { route, method, status }).inc();
    m.latency.get_or_create(&RouteLabels { route }).observe(took.as_secs_f64());
    let code = res.extensions().get::<ErrorCode>().map(|ErrorCode(c)| *c);
    if let Some(code) = code {
        m.errors.get_or_create(&crate::metrics::CodeLabels { code }).inc();
    }
    if let Ok(v) = axum::http::HeaderValue::from_str(&id.0) {
        res.headers_mut().insert(REQUEST_ID, v);
    }
    let _in = span.enter();
    tracing::info!(
        target: "tierwise::access",
        method,
        route,
        status,
        duration_ms = took.as_secs_f64() * 1e3,
        code,
        "request"
    );
    res
}

/// The header a request id comes in and goes out with.
pub const REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");

fn static_method(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Refuses a declared body over the limit before reading it (every route); bodies without
/// a length are cut off while read ([`DefaultBodyLimit`] and [`JsonBody`]).
async fn body_limit(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > app.config.body_limit as u64) {
        return ApiError::payload_too_large(app.config.body_limit).into_response();
    }
    next.run(req).await
}

/// When the request timeout fires for this request. Handlers give it to the work they start
/// off the async threads ([`crate::script::Budget`]): dropping the future at the timeout
/// answers the client but does not stop a `spawn_blocking` closure; the budget does.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub Instant);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Deadline {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        // Outside the timeout layer (never on /v1/*): no deadline of its own, a far one.
        let far =
            Instant::now().checked_add(Duration::from_secs(3600)).unwrap_or_else(Instant::now);
        Ok(parts.extensions.get::<Deadline>().copied().unwrap_or(Deadline(far)))
    }
}

/// The concurrency limit (503 + `Retry-After` at once, no queue) and the request timeout.
async fn limit_and_timeout(State(app): State<AppState>, mut req: Request, next: Next) -> Response {
    let Ok(_permit) = app.limiter.try_acquire() else {
        app.metrics.overloaded.inc();
        return ApiError::overloaded().into_response();
    };
    let after = app.config.request_timeout;
    if let Some(at) = Instant::now().checked_add(after) {
        req.extensions_mut().insert(Deadline(at));
    }
    match tokio::time::timeout(after, next.run(req)).await {
        Ok(res) => res,
        Err(_) => ApiError::timeout(after).into_response(),
    }
}

/// A request body that must be JSON: the content type is checked and the body read (within
/// the limit); parsing is the handler's, with [`parse`], so it can borrow from the bytes.
pub struct JsonBody(pub Bytes);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let ct =
            req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if !(essence == "application/json"
            || (essence.starts_with("application/") && essence.ends_with("+json")))
        {
            let got = if ct.is_empty() { "none".to_string() } else { format!("`{ct}`") };
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("expected `Content-Type: application/json`, got {got}"),
            ));
        }
        let encoding = content_encoding(req.headers())?;
        let limit = state.config.body_limit;
        let body = read_body(req, limit).await?;
        match encoding {
            Encoding::Identity => Ok(JsonBody(body)),
            Encoding::Gzip => gunzip(&body, limit).map(|b| JsonBody(Bytes::from(b))),
        }
    }
}

/// How a request body is encoded: none, or gzip (the one `Content-Encoding` the API takes).
enum Encoding {
    Identity,
    Gzip,
}

/// `Content-Encoding`: absent or `identity`, or `gzip` (`x-gzip`); anything else, or more than
/// one coding, is 415 rather than a body read as if it were plain.
fn content_encoding(h: &axum::http::HeaderMap) -> Result<Encoding, ApiError> {
    let codings: Vec<String> = h
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("\u{0}").split(','))
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity")
        .collect();
    match codings.as_slice() {
        [] => Ok(Encoding::Identity),
        [one] if one == "gzip" || one == "x-gzip" => Ok(Encoding::Gzip),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
            format!(
                "`Content-Encoding: {}` is not supported; send the body as it is or with `gzip`",
                codings.join(", ")
            ),
        )),
    }
}

/// A gzip body, decompressed to at most `limit` bytes: the body limit applies to what it
/// holds, not only to what was sent (a 8 MiB body can hold gigabytes of zeros).
fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, ApiError> {
    use std::io::Read;
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit + 1));
    let read = flate2::read::MultiGzDecoder::new(body).take(limit as u64 + 1).read_to_end(&mut out);
    match read {
        Ok(_) if out.len() > limit => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body, decompressed, is larger than the limit of {limit} bytes"),
        )
        .details(serde_json::json!({ "limit_bytes": limit, "decompressed": true }))),
        Ok(_) => Ok(out),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_body",
            format!("the body is labelled `Content-Encoding: gzip` but is not gzip: {e}"),
        )),
    }
}

/// Reads a body of at most `limit` bytes into one buffer: sized by `Content-Length` when
/// there is one, else grown up to the limit. Collecting frames and then copying them
/// into one buffer (axum's `Bytes` extractor) held twice the body at its peak.
async fn read_body(req: Request, limit: usize) -> Result<Bytes, ApiError> {
    use axum::body::HttpBody;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::payload_too_large(limit));
    }
    let mut body = req.into_body();
    // A body read ahead by the server comes as one frame: taken as it is, not copied.
    let mut whole: Option<Bytes> = None;
    let mut buf: Vec<u8> = Vec::new();
    let mut total = 0usize;
    while let Some(frame) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
    {
        let frame = frame.map_err(|e| match server::body_timeout_of(&e) {
            Some(after) => ApiError::body_timeout(after),
            None => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("cannot read the request body: {e}"),
            ),
        })?;
        let Ok(data) = frame.into_data() else { continue };
        total += data.len();
        if total > limit {
            return Err(ApiError::payload_too_large(limit));
        }
        if whole.is_none() && buf.is_empty() {
            whole = Some(data);
            continue;
        }
        if total > buf.capacity() {
            // Past 1 MiB, straight to the limit: pages are only resident once written, and
            // doubling left every smaller buffer behind in the allocator (3x the body).
            let target = if total > 1 << 20 {
                limit
            } else {
                buf.capacity().saturating_mul(2).clamp(total, limit)
            };
            buf.reserve_exact(target.max(declared.unwrap_or(0).min(limit)) - buf.len());
        }
        if let Some(first) = whole.take() {
            buf.extend_from_slice(&first);
        }
        buf.extend_from_slice(&data);
    }
    Ok(whole.unwrap_or_else(|| Bytes::from(buf)))
}

/// One path parameter, percent-decoded. A segment that is not UTF-8 once decoded is a JSON
/// 400 `invalid_request` (axum's own rejection is plain text, which the API never sends).
pub struct PathParam(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(PathParam(v)),
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("the path cannot be read: {}", e.body_text()),
            )),
        }
    }
}

/// Parses a JSON body: malformed JSON is 400 `malformed_json`, JSON of the wrong shape 422
/// `invalid_request`; both say where (line and column).
pub fn parse<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let at = serde_json::json!({ "line": e.line(), "column": e.column() });
        let msg = e.to_string();
        // serde_json appends " at line L column C"; the place is in `details`.
        let msg = msg.rsplit_once(" at line ").map_or(msg.as_str(), |(m, _)| m).to_string();
        match e.classify() {
            serde_json::error::Category::Data => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", msg).details(at)
            }
            _ => ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the body is not valid JSON: {msg}"),
            )
            .details(at),
        }
    })
}
