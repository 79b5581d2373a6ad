//! The router on a TCP listener, with the connection-level defences `axum::serve` lacks.
//!
//! - **Headers**: a request's headers must arrive within `header_read_timeout`, counted from
//!   the connection's start or the end of its previous response, so the same timeout closes
//!   idle keep-alive connections (hyper starts the clock as soon as it waits for a head).
//! - **Bodies**: a body is read in full *before* the router sees the request, so a client
//!   dribbling one holds a connection but never one of the `/v1` concurrency permits. It
//!   must arrive within `body_read_timeout` of its headers, or the JSON extractor answers
//!   408 `body_timeout` ([`body_timeout_of`]). Bodies being read share `body_buffer_bytes`,
//!   counted by bytes received (dribblers cost next to nothing); past it, 503 `overloaded`.
//!   A declared length over `body_limit` is left unread for the router's 413.
//! - **Writes**: a response write that makes no progress for `write_timeout` (a client that
//!   stopped reading) closes the connection.
//! - **Connections**: at most `max_connections` open at once; one more is answered a canned
//!   503 and closed at once, so its client learns quickly instead of waiting in the backlog.
//! - **Shutdown** ([`serve`]): when `signal` resolves the listener is closed (new connections
//!   are refused), idle connections are closed and busy ones finish their request (hyper
//!   answers it with `Connection: close`). After `grace`, requests still being computed are
//!   answered 503 `shutting_down`, and connections get [`ANSWER_MARGIN`] to take what they
//!   were sent; then [`serve`] returns whatever is left, so a stuck client never holds the
//!   process past `grace + ANSWER_MARGIN`.

use crate::http::ApiError;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use http_body::{Body as _, Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// Connection-level settings (the CLI fills them from flags and `TIERWISE_*`).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub write_timeout: Duration,
    pub max_connections: usize,
    /// The router's body limit: a larger declared body is not read ahead.
    pub body_limit: usize,
    /// Bytes of request bodies held at once by the read-ahead.
    pub body_buffer_bytes: usize,
    /// After the shutdown signal, how long in-flight requests may run.
    pub grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(15),
            write_timeout: Duration::from_secs(30),
            max_connections: 4096,
            body_limit: 8 * 1024 * 1024,
            body_buffer_bytes: 256 * 1024 * 1024,
            grace: Duration::from_secs(10),
        }
    }
}

/// After the grace period, how long answers already produced (and the 503s sent to requests
/// still computing) get to reach their clients before the connections are dropped.
pub const ANSWER_MARGIN: Duration = Duration::from_secs(1);

/// How [`serve`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every connection finished within the grace period.
    Drained,
    /// The grace period ran out: requests still computing were answered 503, and every
    /// connection closed within [`ANSWER_MARGIN`].
    CutShort,
    /// Connections still open after the grace period and the margin were abandoned.
    Abandoned { connections: usize },
}

/// The answer to a connection over `max_connections`: written without reading the request,
/// so it is sent in one small write or not at all.
const FULL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 75\r\n\r\n{\"code\":\"overloaded\",\"message\":\"too many open connections; retry shortly\"}\n";

/// Serves `app` on `listener` until `signal` resolves, then shuts down as the module says.
/// `overloaded` counts the requests refused for want of body buffer (the metrics' counter).
pub async fn serve<F>(
    listener: TcpListener,
    app: Router,
    cfg: &ServerConfig,
    overloaded: prometheus_client::metrics::counter::Counter,
    signal: F,
) -> Stopped
where
    F: Future<Output = ()>,
{
    let (cut_tx, cut_rx) = watch::channel(false);
    let guard = Guard {
        cut: cut_rx,
        body_read_timeout: cfg.body_read_timeout,
        body_limit: cfg.body_limit,
        buffer: Arc::new(Semaphore::new(cfg.body_buffer_bytes.clamp(1, Semaphore::MAX_PERMITS))),
        overloaded,
    };
    let svc =
        TowerToHyperService::new(app.layer(middleware::from_fn_with_state(guard, guard_request)));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(cfg.header_read_timeout).keep_alive(true);
    let graceful = GracefulShutdown::new();
    let max = cfg.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(max));
    let mut last_accept_error: Option<std::time::Instant> = None;

    let mut signal = std::pin::pin!(signal);
    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            () = &mut signal => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors, mostly: the pending connection stays in the
                    // backlog, so pause instead of spinning, and say so once a second at most.
                    if last_accept_error.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                        tracing::error!("cannot accept a connection: {e}");
                        last_accept_error = Some(std::time::Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            let _ = tcp.try_write(FULL);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let mut io = tokio_io_timeout::TimeoutStream::new(tcp);
        io.set_write_timeout(Some(cfg.write_timeout));
        // Every request learns its connection's peer (admin authentication is throttled by it).
        let inner = svc.clone();
        let ip = crate::http::throttle::Peer(peer.ip());
        let per_conn =
            hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ip);
                hyper::service::Service::call(&inner, req)
            });
        let conn = http.serve_connection(TokioIo::new(JsonErrors::new(Box::pin(io))), per_conn);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // Errors are the client's doing (a timeout, a reset, a malformed request): hyper
            // has already answered or closed; logging them would let any client fill the log.
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    drop(svc);

    let open = max - slots.available_permits();
    let done = graceful.shutdown();
    let mut done = std::pin::pin!(done);
    if tokio::time::timeout(cfg.grace, &mut done).await.is_ok() {
        return Stopped::Drained;
    }
    tracing::warn!(
        "grace period over; answering requests still in flight 503 ({open} connections were open at the signal)"
    );
    let _ = cut_tx.send(true);
    if tokio::time::timeout(ANSWER_MARGIN, &mut done).await.is_ok() {
        return Stopped::CutShort;
    }
    Stopped::Abandoned { connections: max - slots.available_permits() }
}

#[derive(Clone)]
struct Guard {
    cut: watch::Receiver<bool>,
    body_read_timeout: Duration,
    body_limit: usize,
    buffer: Arc<Semaphore>,
    overloaded: prometheus_client::metrics::counter::Counter,
}

/// Reads the body ahead (see the module) and, once the grace period is over, answers 503 in
/// place of a request still being computed.
async fn guard_request(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let mut cut = g.cut.clone();
    let cut = async move {
        // The sender lives as long as `serve`; if it is gone, the request is never cut.
        if cut.wait_for(|c| *c).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let mut res = tokio::select! {
        res = read_ahead_then_run(&g, req, next) => res,
        () = cut => ApiError::shutting_down().into_response(),
    };
    let code = res.extensions().get::<crate::http::ErrorCode>().map(|c| c.0);
    // The body was not read to its end (or the process is stopping): the connection cannot
    // carry another request.
    if matches!(code, Some("body_timeout" | "shutting_down")) {
        res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

/// RFC 9112 §3.2: an HTTP/1.1 request without a `Host` header, or any request with more than
/// one, is answered 400 (a proxy and this server could otherwise disagree on whom it is for).
fn host_problem(req: &Request) -> Option<&'static str> {
    let n = req.headers().get_all(header::HOST).iter().count();
    if n > 1 {
        return Some("the request has more than one `Host` header");
    }
    if n == 0 && req.version() == axum::http::Version::HTTP_11 {
        return Some("an HTTP/1.1 request needs a `Host` header");
    }
    None
}

async fn read_ahead_then_run(g: &Guard, req: Request, next: Next) -> Response {
    if let Some(why) = host_problem(&req) {
        let mut res =
            ApiError::new(axum::http::StatusCode::BAD_REQUEST, "bad_host", why).into_response();
        res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return res;
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if req.body().is_end_stream() || declared.is_some_and(|n| n > g.body_limit as u64) {
        return next.run(req).await;
    }
    let (parts, mut body) = req.into_parts();
    let sleep = tokio::time::sleep(g.body_read_timeout);
    let mut sleep = std::pin::pin!(sleep);
    // One buffer, sized by the declared length: the router's extractor then takes it as it
    // is, so a body is held once, not as chunks plus their copy (twice the body in RSS).
    let mut buf: Vec<u8> =
        Vec::with_capacity(declared.map_or(0, |n| (n as usize).min(g.body_limit + 1)));
    let mut held: Option<tokio::sync::OwnedSemaphorePermit> = None;
    let mut total = 0usize;
    let mut failed: Option<axum::Error> = None;
    // One byte past the limit is enough for the router to answer 413.
    while total <= g.body_limit {
        let frame = tokio::select! {
            f = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)) => f,
            () = &mut sleep => {
                failed = Some(axum::Error::new(BodyTimeout(g.body_read_timeout)));
                break;
            }
        };
        match frame {
            None => break,
            Some(Err(e)) => {
                failed = Some(e);
                break;
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else { continue };
                let Ok(permit) = u32::try_from(data.len())
                    .map_err(drop)
                    .and_then(|n| g.buffer.clone().try_acquire_many_owned(n).map_err(drop))
                else {
                    g.overloaded.inc();
                    return ApiError::overloaded().into_response();
                };
                match held.as_mut() {
                    Some(h) => h.merge(permit),
                    None => held = Some(permit),
                }
                // Past the limit one byte is enough for the router's 413: keeping the rest
                // would grow (copy) a full buffer only to refuse it.
                let data = data.slice(..data.len().min(g.body_limit + 1 - total));
                total += data.len();
                if total > buf.capacity() {
                    // Without a declared length: past 64 KiB, straight to the limit (pages are
                    // only resident once written; doubling would copy the body at each step and
                    // leave each smaller buffer behind in the allocator).
                    let target = if total > 64 << 10 {
                        g.body_limit + 1
                    } else {
                        buf.capacity().saturating_mul(2)
                    };
                    buf.reserve_exact(target.max(total) - buf.len());
                }
                buf.extend_from_slice(&data);
            }
        }
    }
    let res = next
        .run(Request::from_parts(
            parts,
            Body::new(ReadAhead {
                chunks: if buf.is_empty() { Default::default() } else { [Bytes::from(buf)].into() },
                failed,
            }),
        ))
        .await;
    drop(held);
    res
}

/// hyper answers a request it cannot parse itself (400 for a malformed request line or
/// header, 414 for a target too long, 431 for headers too large) with an empty body, then
/// closes. This stream puts the API's JSON error shape in its place: such an answer is the
/// only `4xx` with `content-length: 0` this server writes (every router answer has a body).
struct JsonErrors<S> {
    inner: S,
    /// The canned answer being written instead, how much of it is out, and the length of
    /// hyper's own answer (reported as written once the canned one is).
    pending: Option<(&'static [u8], usize, usize)>,
}

impl<S> JsonErrors<S> {
    fn new(inner: S) -> Self {
        JsonErrors { inner, pending: None }
    }
}

fn canned(status: u16, code: &str, message: &str) -> Vec<u8> {
    let body = serde_json::json!({ "code": code, "message": message }).to_string();
    let reason = match status {
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        _ => "Bad Request",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The JSON answer to put in place of hyper's empty one in `head`, if it is one.
fn json_for(head: &[u8]) -> Option<&'static [u8]> {
    static ANSWERS: std::sync::OnceLock<[Vec<u8>; 3]> = std::sync::OnceLock::new();
    let status = match head.get(..13)? {
        b"HTTP/1.1 400 " | b"HTTP/1.0 400 " => 0,
        b"HTTP/1.1 414 " | b"HTTP/1.0 414 " => 1,
        b"HTTP/1.1 431 " | b"HTTP/1.0 431 " => 2,
        _ => return None,
    };
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    let mut fields = head.get(..end)?.to_ascii_lowercase();
    fields.extend_from_slice(b"\r\n");
    if !fields.windows(21).any(|w| w == b"\r\ncontent-length: 0\r\n") {
        return None;
    }
    let all = ANSWERS.get_or_init(|| {
        [
            canned(
                400,
                "bad_request",
                "the request is not valid HTTP/1.1 (its request line or a header is malformed)",
            ),
            canned(414, "uri_too_long", "the request target is longer than the server reads"),
            canned(
                431,
                "headers_too_large",
                "the request's headers are larger than the server reads",
            ),
        ]
    });
    all.get(status).map(Vec::as_slice)
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for JsonErrors<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> JsonErrors<S> {
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        while let Some((answer, done, claimed)) = self.pending.as_mut() {
            if *done >= answer.len() {
                let n = *claimed;
                self.pending = None;
                return Poll::Ready(Ok(n));
            }
            match Pin::new(&mut self.inner).poll_write(cx, &answer[*done..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => *done += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(0))
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for JsonErrors<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.pending.is_none() {
            match json_for(buf) {
                Some(answer) => self.pending = Some((answer, 0, buf.len())),
                None => return Pin::new(&mut self.inner).poll_write(cx, buf),
            }
        }
        self.drain(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let first = bufs.iter().find(|b| !b.is_empty());
        if self.pending.is_none() {
            match first.and_then(|b| json_for(b).map(|a| (a, b.len()))) {
                Some((answer, len)) => self.pending = Some((answer, 0, len)),
                None => return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs),
            }
        }
        self.drain(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The error reading a body ends with when its deadline passes.
#[derive(Debug)]
pub struct BodyTimeout(pub Duration);

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the request body was not received within {} ms", self.0.as_millis())
    }
}

impl std::error::Error for BodyTimeout {}

/// The body timeout behind an error from reading a request body, if that is what it was.
pub fn body_timeout_of(err: &(dyn std::error::Error + 'static)) -> Option<Duration> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(BodyTimeout(after)) = e.downcast_ref::<BodyTimeout>() {
            return Some(*after);
        }
        cur = e.source();
    }
    None
}

/// A body already read: its chunks, then the error that ended the reading, if any.
struct ReadAhead {
    chunks: std::collections::VecDeque<Bytes>,
    failed: Option<axum::Error>,
}

impl http_body::Body for ReadAhead {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Some(c) = self.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(c))));
        }
        Poll::Ready(self.failed.take().map(Err))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && self.failed.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.failed {
            Some(_) => SizeHint::default(),
            None => SizeHint::with_exact(self.chunks.iter().map(|c| c.len() as u64).sum()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_canned_answer_declares_its_length() {
        let text = std::str::from_utf8(FULL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let declared: usize =
            head.lines().find_map(|l| l.strip_prefix("content-length: ")).unwrap().parse().unwrap();
        assert_eq!(declared, body.len());
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["code"], "overloaded");
    }

    #[test]
    fn a_body_timeout_is_found_through_wrappers() {
        let wrapped = axum::Error::new(axum::Error::new(BodyTimeout(Duration::from_millis(7))));
        assert_eq!(body_timeout_of(&wrapped), Some(Duration::from_millis(7)));
        assert_eq!(body_timeout_of(&std::io::Error::other("no")), None);
    }
}
