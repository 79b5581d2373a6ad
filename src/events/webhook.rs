//! Webhook delivery: CloudEvents POSTed, signed as Standard Webhooks do, in order, retried.
//!
//! One worker task per webhook walks the outbox in order ([`EventStore::page`] with the
//! webhook's filter), so events reach it in the order they were emitted — per account in
//! particular. A delivery (one event, or a batch of up to `batch`) is retried until a 2xx:
//! the next events wait behind it (head-of-line), which is what keeps the order. Retries back
//! off exponentially with ±20 % jitter (first about 5 s, then ×4, at most 2 h apart) until
//! the retry window (default 24 h) has passed since the first attempt; then the events go to
//! the dead-letter list (`GET /v1/events/dead`, `POST /v1/events/dead/replay`). A `410 Gone`
//! disables the webhook (logged, in `/metrics`) until the process restarts.
//!
//! Each attempt is signed afresh: `webhook-id` (the event id; for a batch `batch_` and a
//! digest of its ids, the same on every attempt), `webhook-timestamp` (now, Unix seconds) and
//! `webhook-signature: v1,<base64 HMAC-SHA256(secret, id.timestamp.body)>`.
//!
//! A webhook that hangs or refuses costs the requests nothing: the request path only
//! appends to the outbox; the worker reads it on its own task. The outbox's retention bounds
//! memory whatever the backlog (events trimmed before delivery are counted as `dropped`).
//! Only `http://` URLs are spoken here; put a TLS-terminating proxy in front for `https`.

use super::sign::Secret;
use super::{EventStore, Filter, Stored, now_ms, parse_duration};
use crate::engine::transition::{EventType, Level};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one attempt may take.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Dead letters kept (the oldest dropped first).
pub const DEAD_MAX: usize = 10_000;

/// One configured webhook.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// `host:port/path`, for logs, metrics and the dead-letter list (never the secret).
    pub name: String,
    pub url: String,
    target: Target,
    pub secret: Secret,
    pub filter: Filter,
    /// Events per POST (1: `application/cloudevents+json`; more: a batch).
    pub batch: usize,
    pub retry_window: Duration,
    pub first_retry: Duration,
}

#[derive(Debug, Clone)]
struct Target {
    host: String,
    port: u16,
    /// `Host` header value.
    authority: String,
    path: String,
}

/// `[[webhook]]` of a `--webhooks` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: String,
    secret: Option<String>,
    secret_env: Option<String>,
    types: Option<Vec<String>>,
    levels: Option<Vec<String>>,
    policies: Option<Vec<String>>,
    batch: Option<usize>,
    retry_window: Option<String>,
    first_retry: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    webhook: Vec<RawWebhook>,
}

fn parse_target(url: &str) -> Result<Target, String> {
    let rest = match url.strip_prefix("http://") {
        Some(r) => r,
        None if url.starts_with("https://") => {
            return Err(format!(
                "`{url}`: https is not spoken by this build; put a TLS-terminating proxy in front \
                 and give its http:// address"
            ));
        }
        None => return Err(format!("`{url}` is not an http:// URL")),
    };
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("`{url}` has no host (or has credentials in it)"));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h.to_string(), p.parse::<u16>().map_err(|_| format!("`{url}`: bad port `{p}`"))?)
        }
        _ => (authority.to_string(), 80),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    Ok(Target { host, port, authority: authority.to_string(), path: path.to_string() })
}

impl Webhook {
    /// One webhook from `--webhook` / `--webhook-secret`.
    pub fn new(url: &str, secret: &str) -> Result<Webhook, String> {
        let target = parse_target(url)?;
        let secret = Secret::parse(secret).map_err(|e| format!("webhook `{url}`: {e}"))?;
        Ok(Webhook {
            name: format!("{}{}", target.authority, target.path),
            url: url.to_string(),
            target,
            secret,
            filter: Filter::default(),
            batch: 1,
            retry_window: Duration::from_secs(24 * 3600),
            first_retry: Duration::from_secs(5),
        })
    }

    /// The webhooks of a `--webhooks` TOML file; `env` looks up `secret_env` names.
    pub fn from_file(
        path: &str,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<Webhook>, String> {
        let raw: RawFile = toml::from_str(text).map_err(|e| format!("{path}: {e}"))?;
        let mut out = Vec::new();
        for (i, w) in raw.webhook.into_iter().enumerate() {
            let at = format!("{path}: webhook {} (`{}`)", i + 1, w.url);
            let secret = match (&w.secret, &w.secret_env) {
                (Some(s), None) => s.clone(),
                (None, Some(var)) => env(var)
                    .ok_or_else(|| format!("{at}: environment variable `{var}` is not set"))?,
                _ => return Err(format!("{at}: give exactly one of `secret` and `secret_env`")),
            };
            let mut hook = Webhook::new(&w.url, &secret).map_err(|e| format!("{at}: {e}"))?;
            if let Some(types) = w.types {
                let parsed: Result<Vec<_>, _> = types
                    .iter()
                    .map(|t| {
                        EventType::parse(t).ok_or_else(|| {
                            format!(
                                "{at}: unknown event type `{t}` (one of {})",
                                EventType::ALL.map(EventType::as_str).join(", ")
                            )
                        })
                    })
                    .collect();
                hook.filter.types = Some(parsed?);
            }
            if let Some(levels) = w.levels {
                let parsed: Result<Vec<_>, _> = levels
                    .iter()
                    .map(|l| {
                        Level::parse(l).ok_or_else(|| {
                            format!("{at}: unknown level `{l}` (`account` or `portfolio`)")
                        })
                    })
                    .collect();
                hook.filter.levels = Some(parsed?);
            }
            hook.filter.policies = w.policies;
            if let Some(b) = w.batch {
                if b == 0 || b > 1000 {
                    return Err(format!("{at}: `batch` must be 1 to 1000"));
                }
                hook.batch = b;
            }
            if let Some(r) = w.retry_window {
                hook.retry_window = parse_duration(&r).map_err(|e| format!("{at}: {e}"))?;
            }
            if let Some(r) = w.first_retry {
                hook.first_retry = parse_duration(&r).map_err(|e| format!("{at}: {e}"))?;
            }
            out.push(hook);
        }
        Ok(out)
    }
}

/// An event that ran out of retries.
#[derive(Debug, Clone, Serialize)]
pub struct Dead {
    pub webhook: String,
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub subject: String,
    pub attempts: u32,
    pub last_error: String,
    /// When it was dead-lettered (RFC 3339).
    pub at: String,
    /// The CloudEvent as it would have been sent.
    pub event: serde_json::Value,
    #[serde(skip)]
    stored: Stored,
}

/// Per-webhook figures for `/metrics`.
#[derive(Debug, Default)]
pub struct HookStats {
    pub delivered: AtomicU64,
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub dropped: AtomicU64,
    pub disabled: AtomicBool,
    /// Seq of the last event handled (delivered or dead-lettered).
    pub cursor: AtomicU64,
    /// Emission time (ms) of the event being delivered, 0 when idle.
    pub oldest_ms: AtomicI64,
}

struct Hook {
    cfg: Webhook,
    stats: HookStats,
    replay: Mutex<VecDeque<Stored>>,
    wake: tokio::sync::Notify,
}

/// Every configured webhook and its worker.
pub struct Delivery {
    hooks: Vec<Arc<Hook>>,
    dead: Mutex<VecDeque<Dead>>,
    store: Arc<dyn EventStore>,
    /// This process, as a lease holder.
    holder: String,
    /// How long a webhook's lease lasts unrenewed: how long a replica that died keeps its
    /// webhooks from the others.
    lease: Duration,
}

/// Why a delivery ended without the next events.
enum Ended {
    /// Acknowledged or dead-lettered: go on.
    Handled,
    /// A 410: the webhook is disabled.
    Disabled,
    /// Another replica holds the webhook now (this one stalled past its lease).
    Lost,
}

/// What an attempt came to.
enum Attempt {
    Ack,
    Gone,
    Fail(String),
}

impl Delivery {
    /// Starts one worker per webhook on the current tokio runtime. Replicas sharing a store
    /// share the work: each webhook is walked by the one replica holding its `lease`.
    pub fn start(
        store: Arc<dyn EventStore>,
        hooks: Vec<Webhook>,
        lease: Duration,
    ) -> Arc<Delivery> {
        let d = Arc::new(Delivery {
            hooks: hooks
                .into_iter()
                .map(|cfg| {
                    Arc::new(Hook {
                        cfg,
                        stats: HookStats::default(),
                        replay: Mutex::new(VecDeque::new()),
                        wake: tokio::sync::Notify::new(),
                    })
                })
                .collect(),
            dead: Mutex::new(VecDeque::new()),
            store,
            holder: uuid::Uuid::new_v4().to_string(),
            lease: lease.max(Duration::from_millis(100)),
        });
        for h in &d.hooks {
            let (d2, h2) = (Arc::downgrade(&d), h.clone());
            tokio::spawn(async move { worker(d2, h2).await });
        }
        d
    }

    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty()
    }

    pub fn len(&self) -> usize {
        self.hooks.len()
    }

    /// The dead-letter list, oldest first.
    pub fn dead(&self) -> Vec<Dead> {
        self.dead.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    /// Sends dead letters again (those of `webhook` and with an id in `ids`, each filter
    /// optional); returns how many were queued.
    pub fn replay(&self, webhook: Option<&str>, ids: Option<&[String]>) -> usize {
        let mut dead = self.dead.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        dead.retain(|d| {
            let pick =
                webhook.is_none_or(|w| w == d.webhook) && ids.is_none_or(|ids| ids.contains(&d.id));
            if pick && let Some(h) = self.hooks.iter().find(|h| h.cfg.name == d.webhook) {
                h.replay.lock().unwrap_or_else(|p| p.into_inner()).push_back(d.stored.clone());
                h.wake.notify_one();
                n += 1;
                return false;
            }
            true
        });
        n
    }

    /// Prometheus text lines (OpenMetrics counters and gauges) for `/metrics`.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let (_, last) = self.store.depth();
        let now = now_ms();
        let families: [(&str, &str, &str); 7] = [
            ("tierwise_webhook_delivered", "counter", "Events acknowledged (2xx) by the webhook"),
            ("tierwise_webhook_retried", "counter", "Attempts that failed and were retried"),
            ("tierwise_webhook_dead_lettered", "counter", "Events that ran out of retries"),
            (
                "tierwise_webhook_dropped",
                "counter",
                "Events trimmed from the outbox before delivery",
            ),
            ("tierwise_webhook_disabled", "gauge", "1 once the webhook answered 410 Gone"),
            (
                "tierwise_webhook_outbox_depth",
                "gauge",
                "Events emitted and not yet handled by the webhook",
            ),
            (
                "tierwise_webhook_oldest_age_seconds",
                "gauge",
                "Age of the oldest event the webhook has not acknowledged",
            ),
        ];
        for (i, (name, kind, help)) in families.iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} {kind}");
            for h in &self.hooks {
                let s = &h.stats;
                let v: f64 = match i {
                    0 => s.delivered.load(Relaxed) as f64,
                    1 => s.retried.load(Relaxed) as f64,
                    2 => s.dead_lettered.load(Relaxed) as f64,
                    3 => s.dropped.load(Relaxed) as f64,
                    4 => f64::from(u8::from(s.disabled.load(Relaxed))),
                    5 => last.saturating_sub(s.cursor.load(Relaxed)) as f64,
                    _ => match s.oldest_ms.load(Relaxed) {
                        0 => 0.0,
                        t => (now - t).max(0) as f64 / 1000.0,
                    },
                };
                let suffix = if *kind == "counter" { "_total" } else { "" };
                let label = h.cfg.name.replace('\\', "\\\\").replace('"', "\\\"");
                let _ = writeln!(out, "{name}{suffix}{{webhook=\"{label}\"}} {v}");
            }
        }
    }

    /// `(name, disabled, depth)` per webhook, for `/readyz` details.
    pub fn summary(&self) -> Vec<(String, bool, u64)> {
        let (_, last) = self.store.depth();
        self.hooks
            .iter()
            .map(|h| {
                let s = &h.stats;
                (
                    h.cfg.name.clone(),
                    s.disabled.load(Relaxed),
                    last.saturating_sub(s.cursor.load(Relaxed)),
                )
            })
            .collect()
    }
}

async fn worker(d: std::sync::Weak<Delivery>, h: Arc<Hook>) {
    let mut cursor = 0u64;
    let mut leading = false;
    loop {
        let Some(dl) = d.upgrade() else { return };
        if h.stats.disabled.load(Relaxed) {
            return;
        }
        // Replays first (an operator asked this replica for them).
        let replayed: Vec<Stored> = {
            let mut q = h.replay.lock().unwrap_or_else(|p| p.into_inner());
            q.drain(..).collect()
        };
        for e in replayed {
            if let Ended::Disabled = deliver(&dl, &h, std::slice::from_ref(&e), false).await {
                return;
            }
        }
        // One replica at a time walks this webhook's outbox (so each event goes out once, in
        // order); taking it over, a replica starts where the last holder stopped.
        match dl.store.lease(&h.cfg.name, &dl.holder, dl.lease).await {
            Ok(true) if !leading => {
                leading = true;
                if let Ok(Some(done)) = dl.store.handled(&h.cfg.name).await {
                    cursor = cursor.max(done);
                }
            }
            Ok(true) => {}
            Ok(false) => {
                leading = false;
                let pause = dl.lease / 3;
                drop(dl);
                tokio::time::sleep(pause).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(webhook = %h.cfg.name, error = %e, "webhook lease check failed");
                leading = false;
                drop(dl);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        let page = match dl.store.page(cursor, h.cfg.batch, &h.cfg.filter).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(webhook = %h.cfg.name, error = %e, "webhook outbox read failed");
                drop(dl);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if page.first > cursor.saturating_add(1) && cursor > 0 {
            h.stats.dropped.fetch_add(page.first - cursor - 1, Relaxed);
        }
        if page.events.is_empty() {
            cursor = page.next.max(cursor);
            h.stats.cursor.store(cursor, Relaxed);
            let _ = dl.store.set_handled(&h.cfg.name, cursor).await;
            let (store, renew) = (dl.store.clone(), dl.lease / 3);
            drop(dl);
            tokio::select! {
                _ = store.wait_after(cursor) => {}
                _ = h.wake.notified() => {}
                // The lease is renewed while idle too.
                _ = tokio::time::sleep(renew) => {}
            }
            continue;
        }
        match deliver(&dl, &h, &page.events, true).await {
            Ended::Disabled => return,
            Ended::Lost => {
                leading = false;
                continue;
            }
            Ended::Handled => {}
        }
        cursor = page.next;
        h.stats.cursor.store(cursor, Relaxed);
        if let Err(e) = dl.store.set_handled(&h.cfg.name, cursor).await {
            tracing::warn!(webhook = %h.cfg.name, error = %e, "webhook delivery not recorded");
        }
    }
}

/// Sleeps `delay`, renewing the webhook's lease along the way when `leased`; false once the
/// lease is another replica's.
async fn wait_leased(d: &Delivery, h: &Hook, delay: Duration, leased: bool) -> bool {
    let until = Instant::now() + delay;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        tokio::time::sleep(left.min(d.lease / 3)).await;
        if leased && let Ok(false) = d.store.lease(&h.cfg.name, &d.holder, d.lease).await {
            return false;
        }
    }
}

/// Delivers one POST's worth until acknowledged or dead-lettered, or until the webhook is
/// disabled (410); with `leased`, until its lease is lost (another replica goes on from the
/// last handled event, so this POST may reach the receiver twice, with the same id).
async fn deliver(d: &Delivery, h: &Hook, events: &[Stored], leased: bool) -> Ended {
    let Some(first) = events.first() else { return Ended::Handled };
    h.stats.oldest_ms.store(first.time_ms, Relaxed);
    let (id, content_type, body) = payload(events);
    let start = Instant::now();
    let mut attempt: u32 = 0;
    let result = loop {
        attempt += 1;
        let ts = now_ms().div_euclid(1000);
        let sig = h.cfg.secret.sign(&id, ts, &body);
        let outcome = match tokio::time::timeout(
            ATTEMPT_TIMEOUT,
            post(&h.cfg.target, &id, ts, &sig, content_type, body.clone()),
        )
        .await
        {
            Err(_) => Attempt::Fail("no answer within 10 s".into()),
            Ok(Err(e)) => Attempt::Fail(e),
            Ok(Ok(s)) if (200..300).contains(&s) => Attempt::Ack,
            Ok(Ok(410)) => Attempt::Gone,
            Ok(Ok(s)) => Attempt::Fail(format!("answered {s}")),
        };
        match outcome {
            Attempt::Ack => break Ok(()),
            Attempt::Gone => break Err(None),
            Attempt::Fail(why) => {
                let delay = backoff(h.cfg.first_retry, attempt);
                if start.elapsed() + delay > h.cfg.retry_window {
                    break Err(Some(why));
                }
                h.stats.retried.fetch_add(1, Relaxed);
                if !wait_leased(d, h, delay, leased).await {
                    h.stats.oldest_ms.store(0, Relaxed);
                    return Ended::Lost;
                }
            }
        }
    };
    h.stats.oldest_ms.store(0, Relaxed);
    match result {
        Ok(()) => {
            h.stats.delivered.fetch_add(events.len() as u64, Relaxed);
            Ended::Handled
        }
        Err(None) => {
            tracing::warn!(webhook = %h.cfg.name, "webhook answered 410 Gone: disabled until restart");
            h.stats.disabled.store(true, Relaxed);
            Ended::Disabled
        }
        Err(Some(why)) => {
            tracing::warn!(
                webhook = %h.cfg.name,
                event = %id,
                attempts = attempt,
                reason = %why,
                "webhook event dead-lettered"
            );
            h.stats.dead_lettered.fetch_add(events.len() as u64, Relaxed);
            let mut dead = d.dead.lock().unwrap_or_else(|p| p.into_inner());
            for e in events {
                dead.push_back(Dead {
                    webhook: h.cfg.name.clone(),
                    id: e.id.to_string(),
                    kind: e.kind.as_str(),
                    subject: e.subject.to_string(),
                    attempts: attempt,
                    last_error: why.clone(),
                    at: super::rfc3339_ms(now_ms()),
                    event: serde_json::from_slice(&e.body).unwrap_or_default(),
                    stored: e.clone(),
                });
                if dead.len() > DEAD_MAX {
                    dead.pop_front();
                }
            }
            Ended::Handled
        }
    }
}

/// The `webhook-id`, content type and body of a POST.
fn payload(events: &[Stored]) -> (String, &'static str, Bytes) {
    match events {
        [one] => (one.id.to_string(), "application/cloudevents+json", one.body.clone()),
        many => {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            let mut body = Vec::with_capacity(many.iter().map(|e| e.body.len() + 1).sum());
            body.push(b'[');
            for (i, e) in many.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(&e.body);
                h.update(e.id.as_bytes());
                h.update(b"\n");
            }
            body.push(b']');
            let digest = h.finalize();
            let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
            (format!("batch_{hex}"), "application/cloudevents-batch+json", Bytes::from(body))
        }
    }
}

/// The wait before retry number `attempt` (1-based): `first × 4^(attempt-1)`, at most 2 h,
/// ±20 % jitter.
pub fn backoff(first: Duration, attempt: u32) -> Duration {
    let base = first.as_secs_f64() * 4f64.powi(attempt.saturating_sub(1).min(16) as i32);
    let capped = base.min(7200.0);
    let jitter = 0.8 + 0.4 * fastrand_f64();
    Duration::from_secs_f64(capped * jitter)
}

fn fastrand_f64() -> f64 {
    // A per-call seed from the clock and a counter: jitter needs spread, not secrecy.
    static N: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let mut x = N.fetch_add(0x9E37_79B9_7F4A_7C15, Relaxed) ^ (now_ms() as u64);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// One POST on a fresh connection; the status code.
async fn post(
    t: &Target,
    id: &str,
    ts: i64,
    sig: &str,
    content_type: &str,
    body: Bytes,
) -> Result<u16, String> {
    let stream = tokio::net::TcpStream::connect((t.host.as_str(), t.port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let req = hyper::Request::post(t.path.as_str())
        .header("host", t.authority.as_str())
        .header("content-type", content_type)
        .header("user-agent", concat!("tierwise/", env!("CARGO_PKG_VERSION")))
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .body(http_body_util::Full::new(body))
        .map_err(|e| format!("request: {e}"))?;
    let res = sender.send_request(req).await.map_err(|e| format!("send: {e}"));
    conn.abort();
    Ok(res?.status().as_u16())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_near_five_seconds_and_grows() {
        let f = Duration::from_secs(5);
        let a = backoff(f, 1).as_secs_f64();
        assert!((4.0..=6.0).contains(&a), "{a}");
        let b = backoff(f, 2).as_secs_f64();
        assert!((16.0..=24.0).contains(&b), "{b}");
        assert!(backoff(f, 30).as_secs_f64() <= 7200.0 * 1.2);
    }

    #[test]
    fn webhook_files_parse_and_say_what_is_wrong() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let text = format!(
            "[[webhook]]\nurl = \"http://127.0.0.1:9/hook\"\nsecret = \"{secret}\"\ntypes = [\"tier.changed\"]\n\n\
             [[webhook]]\nurl = \"http://crm.internal/in\"\nsecret_env = \"S\"\nlevels = [\"portfolio\"]\nbatch = 50\n"
        );
        let hooks = Webhook::from_file("w.toml", &text, |v| (v == "S").then(|| secret.to_string()))
            .unwrap();
        assert_eq!(hooks.len(), 2);
        assert_eq!(hooks[0].name, "127.0.0.1:9/hook");
        assert_eq!(hooks[1].target.port, 80);
        assert_eq!(hooks[1].batch, 50);
        let err = Webhook::from_file(
            "w.toml",
            "[[webhook]]\nurl = \"http://x/\"\nsecret_env = \"NOPE\"\n",
            |_| None,
        )
        .unwrap_err();
        assert_eq!(err, "w.toml: webhook 1 (`http://x/`): environment variable `NOPE` is not set");
        let err = Webhook::new("https://x/", secret).unwrap_err();
        assert!(err.contains("TLS-terminating proxy"), "{err}");
        let err = Webhook::from_file(
            "w.toml",
            &format!("[[webhook]]\nurl = \"http://x/\"\nsecret = \"{secret}\"\ntypes = [\"tier.moved\"]\n"),
            |_| None,
        )
        .unwrap_err();
        assert!(err.contains("unknown event type `tier.moved`"), "{err}");
    }
}
