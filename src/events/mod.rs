//! Events around the engine: per-account state, the outbox, pull, and webhook delivery.
//!
//! The engine's [`transition`](crate::engine::transition) is pure; this module gives it a
//! place to keep state and to put what it emits:
//! - [`EventStore`]: the state store and outbox behind one trait. [`apply`](EventStore::apply)
//!   runs the transition for a batch of decisions and, **per account, atomically**, writes the
//!   new state and appends its events (a compare-and-set: two requests deciding one account
//!   at once never both emit, and a late snapshot never rewinds it). The in-memory store
//!   ([`memory::MemoryStore`]) is the default; it is lost on restart (`/readyz` says
//!   `memory-only`).
//! - The outbox is an ordered log (a cursor per event) with bounded retention (length and
//!   age, `--events-retention`); [`EventStore::page`] reads it for `GET /v1/events` and for
//!   the webhook workers.
//! - [`webhook`]: configuration (`--webhook`, `--webhooks FILE`), CloudEvents bodies,
//!   Standard Webhooks signatures ([`sign`]), retries, dead letters.
//!
//! Layering: this is service-side (tokio, HTTP client); the engine never sees it.

pub mod memory;
pub mod redis;
pub mod sign;
pub mod webhook;

use crate::engine::transition::{
    AccountInput, AccountState, AlertRule, BookInput, BookState, Event, EventType, Level,
};
use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// One event as kept in the outbox: the CloudEvent body, rendered once when it was emitted.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Position in the outbox (strictly increasing); the pull cursor.
    pub seq: u64,
    pub id: Arc<str>,
    pub kind: EventType,
    pub policy: Arc<str>,
    pub level: Level,
    pub subject: Arc<str>,
    /// Emission time, milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// The CloudEvent (structured JSON).
    pub body: Bytes,
}

/// Which events a reader wants (every filter optional; several values: any of them).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub types: Option<Vec<EventType>>,
    pub levels: Option<Vec<Level>>,
    pub policies: Option<Vec<String>>,
}

impl Filter {
    pub fn matches(&self, e: &Stored) -> bool {
        self.types.as_ref().is_none_or(|t| t.contains(&e.kind))
            && self.levels.as_ref().is_none_or(|l| l.contains(&e.level))
            && self.policies.as_ref().is_none_or(|p| p.iter().any(|p| **p == *e.policy))
    }
}

/// A page of the outbox.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub events: Vec<Stored>,
    /// Where the next page starts (the last event's seq, or the cursor given).
    pub next: u64,
    /// The oldest seq still retained (a cursor below it missed trimmed events).
    pub first: u64,
}

/// How much of the outbox is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_len: usize,
    pub max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { max_len: 100_000, max_age: Duration::from_secs(7 * 86_400) }
    }
}

impl Retention {
    /// Parses `LEN[,AGE]`, AGE with a unit `s`, `m`, `h` or `d` (e.g. `100000,7d`).
    pub fn parse(s: &str) -> Result<Retention, String> {
        let (len, age) = s.split_once(',').map_or((s, None), |(a, b)| (a, Some(b)));
        let max_len: usize = len
            .trim()
            .replace('_', "")
            .parse()
            .map_err(|_| format!("`{len}` is not a number of events"))?;
        if max_len == 0 {
            return Err("the retention length must be at least 1".into());
        }
        let max_age = match age {
            None => Retention::default().max_age,
            Some(a) => parse_duration(a.trim())?,
        };
        Ok(Retention { max_len, max_age })
    }
}

/// `500ms`, `30s`, `15m`, `24h`, `7d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{s}` is not a duration such as `30s`, `15m`, `24h` or `7d`");
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => n,
        "s" => n.saturating_mul(1000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        "d" => n.saturating_mul(86_400_000),
        _ => return Err(bad()),
    };
    Ok(Duration::from_millis(ms))
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store unavailable: {0}")]
    Unavailable(String),
}

/// The events of one decision, as the answer lists them.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EventRef {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
}

impl EventRef {
    pub fn of(e: &Event) -> EventRef {
        EventRef { kind: e.kind.as_str(), id: e.id.clone() }
    }
}

/// The state store and outbox.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// `redis` or `memory`.
    fn backend(&self) -> &'static str;
    /// Survives a restart (Redis with AOF is the operator's part).
    fn durable(&self) -> bool;

    /// Runs the transition for each item and keeps, per account atomically, the new state and
    /// its events. Returns the events per item (empty when rejected or unchanged).
    async fn apply(
        &self,
        items: &[AccountInput<'_>],
        rules: &[AlertRule],
    ) -> Result<Vec<Vec<Event>>, StoreError>;

    /// The same for a book's portfolio alerts.
    async fn apply_book(
        &self,
        input: BookInput<'_>,
        rules: &[AlertRule],
    ) -> Result<Vec<Event>, StoreError>;

    /// Current states (for history and dry runs), in `ids` order.
    async fn states(
        &self,
        policy: &str,
        level: Level,
        ids: &[&str],
    ) -> Result<Vec<Option<AccountState>>, StoreError>;

    async fn book_state(&self, policy: &str, book: &str) -> Result<Option<BookState>, StoreError>;

    /// Events after `after` (exclusive; 0: from the oldest retained), at most `limit`.
    async fn page(&self, after: u64, limit: usize, filter: &Filter) -> Result<Page, StoreError>;

    /// Resolves when something may have been appended after `seq` (or soon, to re-check).
    async fn wait_after(&self, seq: u64);

    /// Events retained and the last seq given out.
    fn depth(&self) -> (usize, u64);

    /// Takes, or keeps, the right to deliver to webhook `name` for `ttl`. One replica at a
    /// time walks a webhook's outbox, in order; the others wait, and a replica that dies
    /// leaves the webhook to the next one after `ttl`. `holder` names this process. In memory
    /// (one process): always granted.
    async fn lease(&self, _name: &str, _holder: &str, _ttl: Duration) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// The seq up to which webhook `name` has been handled (delivered or dead-lettered), as
    /// the replicas share it; `None` before the first (or in memory, where each process has
    /// its own).
    async fn handled(&self, _name: &str) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    /// Records that webhook `name` has been handled up to `seq` (never moves it back).
    async fn set_handled(&self, _name: &str, _seq: u64) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// RFC 3339 UTC with milliseconds for a millisecond timestamp.
pub fn rfc3339_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (y, m, d) = crate::date::civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        t / 3600,
        t / 60 % 60,
        t % 60,
        ms.rem_euclid(1000)
    )
}

/// Renders an engine event into its outbox form.
pub fn store_form(e: &Event, seq: u64, time_ms: i64) -> Stored {
    let body = serde_json::to_vec(&e.cloud_event(&rfc3339_ms(time_ms))).unwrap_or_default();
    Stored {
        seq,
        id: e.id.as_str().into(),
        kind: e.kind,
        policy: e.policy.name.as_str().into(),
        level: e.level,
        subject: e.subject.as_str().into(),
        time_ms,
        body: Bytes::from(body),
    }
}

/// Runs the transition for many accounts against states read beforehand, without keeping
/// anything: what a dry run reports ("the events the candidate would emit").
pub fn would_emit(
    states: &[Option<AccountState>],
    items: &[AccountInput<'_>],
    rules: &[AlertRule],
) -> Vec<Event> {
    let mut out = Vec::new();
    for (s, item) in states.iter().zip(items) {
        let mut s = s.clone();
        crate::engine::transition::step(&mut s, *item, rules, &mut out);
    }
    out
}

/// What the service holds for events: the store, the webhooks, and the policies' alert rules.
pub struct Hub {
    pub store: Arc<dyn EventStore>,
    pub delivery: Option<Arc<webhook::Delivery>>,
    /// Alert rules per policy hash (account, portfolio), built once per version.
    rules: std::sync::Mutex<std::collections::HashMap<String, Arc<Rules>>>,
    /// Events emitted, by type (in [`EventType::ALL`] order).
    emitted: [std::sync::atomic::AtomicU64; 6],
}

/// A policy version's alert rules.
pub struct Rules {
    pub account: Vec<AlertRule>,
    pub portfolio: Vec<AlertRule>,
}

impl Hub {
    pub fn new(store: Arc<dyn EventStore>, delivery: Option<Arc<webhook::Delivery>>) -> Hub {
        Hub { store, delivery, rules: Default::default(), emitted: Default::default() }
    }

    pub fn rules(&self, p: &crate::policy::Policy) -> Arc<Rules> {
        let mut m = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = m.get(&p.hash) {
            return r.clone();
        }
        if m.len() > 64 {
            m.clear(); // old versions: rebuilt on demand
        }
        let r = Arc::new(Rules {
            account: crate::engine::transition::account_rules(p),
            portfolio: crate::engine::transition::portfolio_rules(p),
        });
        m.insert(p.hash.clone(), r.clone());
        r
    }

    pub fn count(&self, events: &[Event]) {
        use std::sync::atomic::Ordering::Relaxed;
        for e in events {
            if let Some(i) = EventType::ALL.iter().position(|t| *t == e.kind)
                && let Some(c) = self.emitted.get(i)
            {
                c.fetch_add(1, Relaxed);
            }
        }
    }

    /// The `/metrics` lines of events (emitted by type, outbox size, webhooks).
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        use std::sync::atomic::Ordering::Relaxed;
        let _ = writeln!(
            out,
            "# HELP tierwise_events_emitted Events emitted, by type.\n# TYPE tierwise_events_emitted counter"
        );
        for (t, c) in EventType::ALL.iter().zip(&self.emitted) {
            let _ = writeln!(
                out,
                "tierwise_events_emitted_total{{type=\"{}\"}} {}",
                t.as_str(),
                c.load(Relaxed)
            );
        }
        let (retained, _) = self.store.depth();
        let _ = writeln!(
            out,
            "# HELP tierwise_events_outbox_retained Events kept in the outbox (retention bounds it).\n# TYPE tierwise_events_outbox_retained gauge\ntierwise_events_outbox_retained{{backend=\"{}\"}} {retained}",
            self.store.backend()
        );
        if let Some(d) = &self.delivery {
            d.render_metrics(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_and_durations_parse() {
        assert_eq!(
            Retention::parse("1000,24h"),
            Ok(Retention { max_len: 1000, max_age: Duration::from_secs(86_400) })
        );
        assert_eq!(Retention::parse("5").map(|r| r.max_len), Ok(5));
        assert!(Retention::parse("0").is_err());
        assert!(Retention::parse("10,5y").is_err());
        assert_eq!(rfc3339_ms(1_614_265_330_123), "2021-02-25T15:02:10.123Z");
    }
}
