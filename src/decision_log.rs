//! The decision log: one JSON line per evaluation request, so an auditor can say why an
//! account had its tier on a given day (decision id, policy name and hash, and per account
//! its tier, change and alerts, or its error code).
//!
//! A request hands its outcomes over (moved, not copied) and goes on; one background thread
//! encodes the line, writes it through a buffer and frees the outcomes. So a request never
//! waits for the disk or the encoding. The thread works in rounds of at most [`ROUND`]: it
//! drains the queue, flushes, then sleeps out the round; meanwhile requests only enqueue (a
//! sender wakes nobody), so a busy server pays one write and one wake-up per round, not per
//! request (measured: 14 µs of CPU per request when waking the thread each time).
//!
//! A sink that fails or stalls (a full disk, a pipe nobody reads) must not slow requests
//! down: the queue is bounded ([`QUEUE`] lines, and [`QUEUE_ACCOUNTS`] accounts so big
//! portfolios cannot hold gigabytes of outcomes), and a line that does not fit is dropped at
//! once, never waited for. Dropped lines and lines lost to write errors are counted
//! ([`LogStats`], `tierwise_decision_log_dropped_total` and
//! `tierwise_decision_log_write_errors_total` in `/metrics`), and a failing sink is reported
//! on stderr at most once per [`REPORT_EVERY`], so its own log stays bounded too.

use crate::engine::{Outcome, PolicyRef, Summary};
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::value::RawValue;
use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, mpsc};
use std::time::{Instant, SystemTime};

/// Requests whose lines may wait to be written.
pub const QUEUE: usize = 16_384;

/// Accounts whose outcomes may wait in the queue, all requests together (a 10,000-account
/// portfolio holds ~20 MB of outcomes until its line is written).
pub const QUEUE_ACCOUNTS: usize = 65_536;

/// Least time between two stderr reports of a failing sink.
pub const REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// What the log lost, since start.
#[derive(Debug, Default)]
pub struct LogStats {
    /// Lines dropped because the queue was full (the sink is slow or stalled).
    pub dropped: AtomicU64,
    /// Lines lost because writing them failed (a full disk, a closed pipe).
    pub write_errors: AtomicU64,
    /// Accounts waiting in the queue now.
    queued_accounts: AtomicUsize,
}

/// Longest a line waits before it is written.
pub const ROUND: std::time::Duration = std::time::Duration::from_millis(5);

/// Where lines go.
#[derive(Clone)]
pub struct DecisionLog {
    tx: Option<mpsc::SyncSender<Msg>>,
    done: Option<Arc<std::sync::Mutex<Option<mpsc::Receiver<()>>>>>,
    stats: Arc<LogStats>,
}

/// What goes to the log thread: a line already encoded, or a big request to encode there.
enum Msg {
    Line(Vec<u8>),
    Job(Box<Job>),
}

impl Msg {
    /// Its weight against [`QUEUE_ACCOUNTS`].
    fn accounts(&self) -> usize {
        match self {
            Msg::Line(_) => 1,
            // A cached book is its answer's bytes: ~800 per account.
            Msg::Job(j) => {
                1 + j.outcomes.len()
                    + j.cached.len()
                    + j.cached_book.as_ref().map_or(0, |b| b.len() / 800)
            }
        }
    }
}

/// Requests with more accounts than this are encoded (and their outcomes freed) on the log
/// thread; smaller ones are encoded by the request, which then frees its own outcomes: freeing
/// many small allocations made by another thread costs more than encoding them here.
const ENCODE_THERE: usize = 64;

fn encode(job: &Job, line: &mut Vec<u8>) -> bool {
    if let Some(book) = &job.cached_book {
        return encode_cached_book(job, book, line);
    }
    let entry = Entry {
        ts: crate::service::timestamp(job.at),
        decision_id: &job.decision_id,
        request_id: job.request_id.as_deref(),
        level: job.level,
        policy: &job.policy,
        duration_ms: job.duration_ms,
        outcomes: Accounts { fresh: &job.outcomes, cached: &job.cached },
        summary: job.summary.as_ref(),
    };
    let ok = serde_json::to_writer(&mut *line, &entry).is_ok();
    line.push(b'\n');
    ok
}

/// A portfolio answered from the cache: the line is made from the cached answer's JSON, read
/// with borrowed slices (a 10,000-account answer is 8 MB: no tree of values is built).
fn encode_cached_book(job: &Job, book: &[u8], line: &mut Vec<u8>) -> bool {
    let mut text = Vec::with_capacity(book.len() + 2);
    text.push(b'{');
    text.extend_from_slice(book);
    text.push(b'}');
    let Ok(b) = serde_json::from_slice::<BookIn<'_>>(&text) else { return false };
    let entry = CachedBookEntry {
        ts: crate::service::timestamp(job.at),
        decision_id: &job.decision_id,
        request_id: job.request_id.as_deref(),
        level: job.level,
        policy: &job.policy,
        duration_ms: job.duration_ms,
        outcomes: &b.accounts,
        summary: SummaryOut(&b.summary),
        cached: true,
    };
    let ok = serde_json::to_writer(&mut *line, &entry).is_ok();
    line.push(b'\n');
    ok
}

#[derive(Serialize)]
struct CachedBookEntry<'a> {
    ts: String,
    decision_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    level: &'static str,
    policy: &'a PolicyRef,
    duration_ms: f64,
    outcomes: &'a [LightIn<'a>],
    summary: SummaryOut<'a>,
    cached: bool,
}

/// What the log keeps of one account, read from its answer's JSON (a cached one): the fields
/// are copied as they are written there.
#[derive(serde::Deserialize)]
struct LightIn<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    score: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tier: Option<&'a RawValue>,
    #[serde(borrow, default)]
    previous_tier: Option<&'a RawValue>,
    #[serde(borrow, default)]
    change: Option<&'a RawValue>,
    #[serde(borrow, default)]
    alerts: Vec<IdIn<'a>>,
    #[serde(borrow, default)]
    error: Option<CodeIn<'a>>,
}

#[derive(serde::Deserialize)]
struct IdIn<'a> {
    #[serde(borrow)]
    id: &'a RawValue,
}

#[derive(serde::Deserialize)]
struct CodeIn<'a> {
    #[serde(borrow)]
    code: &'a RawValue,
}

#[derive(serde::Deserialize)]
struct SummaryIn<'a> {
    #[serde(borrow)]
    account_count: &'a RawValue,
    #[serde(borrow)]
    error_count: &'a RawValue,
    #[serde(borrow)]
    changes: &'a RawValue,
    #[serde(borrow, default)]
    portfolio_alerts: Vec<IdIn<'a>>,
}

#[derive(serde::Deserialize)]
struct BookIn<'a> {
    #[serde(borrow)]
    summary: SummaryIn<'a>,
    #[serde(borrow)]
    accounts: Vec<LightIn<'a>>,
}

struct SummaryOut<'a>(&'a SummaryIn<'a>);

impl Serialize for SummaryOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(4))?;
        m.serialize_entry("account_count", self.0.account_count)?;
        m.serialize_entry("error_count", self.0.error_count)?;
        m.serialize_entry("changes", self.0.changes)?;
        let alerts: Vec<&RawValue> = self.0.portfolio_alerts.iter().map(|a| a.id).collect();
        m.serialize_entry("portfolio_alerts", &alerts)?;
        m.end()
    }
}

impl Serialize for LightIn<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if let Some(err) = &self.error {
            let mut m = s.serialize_map(Some(3))?;
            m.serialize_entry("id", &self.id)?;
            m.serialize_entry("error", err.code)?;
            m.serialize_entry("cached", &true)?;
            return m.end();
        }
        let mut m = s.serialize_map(Some(7))?;
        m.serialize_entry("id", &self.id)?;
        m.serialize_entry("score", &self.score)?;
        m.serialize_entry("tier", &self.tier)?;
        m.serialize_entry("previous_tier", &self.previous_tier)?;
        m.serialize_entry("change", &self.change)?;
        let alerts: Vec<&RawValue> = self.alerts.iter().map(|a| a.id).collect();
        m.serialize_entry("alerts", &alerts)?;
        m.serialize_entry("cached", &true)?;
        m.end()
    }
}

/// Waits for the last lines to be written once every [`DecisionLog`] clone is dropped.
pub struct Closer(Option<mpsc::Receiver<()>>);

impl Closer {
    /// Returns when the log thread has written everything and ended, or after `limit`.
    pub fn wait(self, limit: std::time::Duration) -> bool {
        self.0.is_none_or(|rx| {
            !matches!(rx.recv_timeout(limit), Err(mpsc::RecvTimeoutError::Timeout))
        })
    }
}

/// One evaluation request, handed to the log thread.
pub struct Job {
    pub at: SystemTime,
    pub decision_id: String,
    /// The request's id (`x-request-id`), so a log line, an answer and this record meet.
    pub request_id: Option<std::sync::Arc<str>>,
    /// `account` or `portfolio`.
    pub level: &'static str,
    pub policy: Arc<PolicyRef>,
    pub duration_ms: f64,
    /// The accounts decided by this request, in input order, those answered from the cache
    /// left out (they are in `cached`).
    pub outcomes: Vec<Outcome>,
    pub summary: Option<Summary>,
    /// Accounts answered from the cache: (position in the answer, the cached decision's
    /// JSON). Logged like the others, read back from the bytes on the log thread, and marked
    /// `"cached": true`.
    pub cached: Vec<(usize, bytes::Bytes)>,
    /// A whole portfolio answer from the cache (`"summary":…,"accounts":[…]`); `outcomes`
    /// and `summary` are then empty.
    pub cached_book: Option<bytes::Bytes>,
}

impl DecisionLog {
    /// No log.
    pub fn off() -> Self {
        DecisionLog { tx: None, done: None, stats: Arc::default() }
    }

    /// Lines dropped and lost so far.
    pub fn stats(&self) -> &LogStats {
        &self.stats
    }

    /// What waits for the final lines at shutdown (take it before handing the log out).
    pub fn closer(&self) -> Closer {
        Closer(self.done.as_ref().and_then(|d| d.lock().ok().and_then(|mut d| d.take())))
    }

    /// Standard output (`-`), or a file (appended to, created if missing).
    pub fn open(target: &str) -> std::io::Result<Self> {
        if target == "off" || target.is_empty() {
            return Ok(Self::off());
        }
        let out: Box<dyn Write + Send> = if target == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(std::fs::OpenOptions::new().create(true).append(true).open(target)?)
        };
        Ok(Self::to_writer(out))
    }

    /// Lines go to `out` from a background thread.
    pub fn to_writer(out: Box<dyn Write + Send>) -> Self {
        let (tx, rx) = mpsc::sync_channel::<Msg>(QUEUE);
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let stats: Arc<LogStats> = Arc::default();
        let st = stats.clone();
        let spawned = std::thread::Builder::new().name("tierwise-decision-log".into()).spawn(move || {
            let mut out = Some(std::io::BufWriter::with_capacity(1 << 16, out));
            let mut line = Vec::with_capacity(4096);
            let mut reported: Option<Instant> = None;
            let mut lost_since_report = 0u64;
            while let Ok(first) = rx.recv() {
                let start = Instant::now();
                let (mut lines, mut ok) = (0u64, true);
                let mut msg = Some(first);
                while let Some(m) = msg.take().or_else(|| rx.try_recv().ok()) {
                    st.queued_accounts.fetch_sub(m.accounts(), Relaxed);
                    lines += 1;
                    let Some(w) = out.as_mut() else { continue };
                    ok &= match m {
                        Msg::Line(l) => w.write_all(&l).is_ok(),
                        Msg::Job(job) => {
                            line.clear();
                            encode(&job, &mut line) && w.write_all(&line).is_ok()
                        }
                    };
                }
                if ok && out.as_mut().is_some_and(|w| w.flush().is_ok()) {
                    continue_round(start);
                    continue;
                }
                // The round's lines are lost: count them, and drop what the buffer still
                // holds, so a sink that recovers gets whole lines, not a stale tail.
                st.write_errors.fetch_add(lines, Relaxed);
                lost_since_report += lines;
                out = out.map(|w| std::io::BufWriter::with_capacity(1 << 16, w.into_parts().0));
                if reported.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
                    tracing::error!("cannot write the decision log: {lost_since_report} line(s) lost (reported at most every {} s; see tierwise_decision_log_write_errors_total)", REPORT_EVERY.as_secs());
                    reported = Some(Instant::now());
                    lost_since_report = 0;
                }
                continue_round(start);
            }
            let _ = done_tx.send(());
        });
        match spawned {
            Ok(_) => DecisionLog {
                tx: Some(tx),
                done: Some(Arc::new(std::sync::Mutex::new(Some(done_rx)))),
                stats,
            },
            Err(e) => {
                tracing::error!("no decision log: cannot start its thread: {e}");
                Self::off()
            }
        }
    }

    /// Queues a line, or drops it (counted) when the queue is full: never waits.
    fn send(&self, tx: &mpsc::SyncSender<Msg>, msg: Msg) {
        let weight = msg.accounts();
        let before = self.stats.queued_accounts.fetch_add(weight, Relaxed);
        // One line always fits, however big, so a big request is not refused by an idle log.
        if before > 0 && before + weight > QUEUE_ACCOUNTS {
            self.stats.queued_accounts.fetch_sub(weight, Relaxed);
            self.stats.dropped.fetch_add(1, Relaxed);
            return;
        }
        if tx.try_send(msg).is_err() {
            self.stats.queued_accounts.fetch_sub(weight, Relaxed);
            self.stats.dropped.fetch_add(1, Relaxed);
        }
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Logs one dry run (`POST /v1/dry-run`): a line of its own kind (`level: "dry_run"`,
    /// `dry_run: true`) with the two policies and the diff's counts, and no per-account
    /// outcomes, so it can never be read as a live decision.
    pub fn record_dry_run(&self, entry: &DryRun<'_>) {
        let Some(tx) = &self.tx else { return };
        let mut line = Vec::with_capacity(1024);
        if serde_json::to_writer(&mut line, entry).is_err() {
            return;
        }
        line.push(b'\n');
        self.send(tx, Msg::Line(line));
    }

    /// Logs one evaluation request (written on the log thread).
    pub fn record(&self, job: Job) {
        let Some(tx) = &self.tx else { return };
        let msg =
            if job.outcomes.len() + job.cached.len() > ENCODE_THERE || job.cached_book.is_some() {
                Msg::Job(Box::new(job))
            } else {
                let mut line = Vec::with_capacity(512 + job.outcomes.len() * 160);
                if !encode(&job, &mut line) {
                    return;
                }
                Msg::Line(line)
            };
        self.send(tx, msg);
    }
}

/// Sleeps out the rest of a round that began at `start`.
fn continue_round(start: Instant) {
    std::thread::sleep(ROUND.saturating_sub(start.elapsed()));
}

/// One dry run as logged: what was compared and what the diff counts, never decisions.
#[derive(Serialize)]
pub struct DryRun<'a> {
    /// RFC 3339, UTC.
    pub ts: String,
    pub decision_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<&'a str>,
    /// Always `dry_run`.
    pub level: &'static str,
    /// Always `true`.
    pub dry_run: bool,
    /// The baseline (a served policy).
    pub policy: &'a PolicyRef,
    pub candidate: &'a PolicyRef,
    /// SHA-256 of what was sent (files and overrides as given) and its size in bytes: the
    /// log never holds a candidate's text, which may be a megabyte of someone else's input.
    pub candidate_digest: &'a str,
    pub candidate_bytes: usize,
    /// How many files and overrides the candidate was sent as.
    pub files: usize,
    pub overrides: usize,
    pub duration_ms: f64,
    pub summary: &'a crate::whatif::DiffSummary,
}

/// One evaluation request as logged.
#[derive(Serialize)]
struct Entry<'a> {
    /// RFC 3339, UTC.
    ts: String,
    decision_id: &'a str,
    /// The request's `x-request-id` (the caller's or made by the server), as in its log lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    level: &'static str,
    policy: &'a PolicyRef,
    duration_ms: f64,
    outcomes: Accounts<'a>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "summary")]
    summary: Option<&'a Summary>,
}

/// Every account of a request in answer order: the fresh outcomes, with the cached ones
/// put back at their positions.
struct Accounts<'a> {
    fresh: &'a [Outcome],
    cached: &'a [(usize, bytes::Bytes)],
}

impl Serialize for Accounts<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        if self.cached.is_empty() {
            return s.collect_seq(self.fresh.iter().map(Account));
        }
        let total = self.fresh.len() + self.cached.len();
        let mut seq = s.serialize_seq(Some(total))?;
        let (mut fresh, mut cached) = (self.fresh.iter(), self.cached.iter().peekable());
        for i in 0..total {
            match cached.peek() {
                Some((at, bytes)) if *at == i => {
                    let light = serde_json::from_slice::<LightIn<'_>>(bytes)
                        .map_err(serde::ser::Error::custom)?;
                    seq.serialize_element(&light)?;
                    cached.next();
                }
                _ => {
                    if let Some(o) = fresh.next() {
                        seq.serialize_element(&Account(o))?;
                    }
                }
            }
        }
        seq.end()
    }
}

/// The account's id, tier, change and alert ids; or its error code.
struct Account<'a>(&'a Outcome);

impl Serialize for Account<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Outcome::Decision(d) => {
                let mut m = s.serialize_map(Some(6))?;
                m.serialize_entry("id", &d.id)?;
                m.serialize_entry("score", &d.score)?;
                m.serialize_entry("tier", &d.tier)?;
                m.serialize_entry("previous_tier", &d.previous_tier)?;
                m.serialize_entry("change", &d.change)?;
                let alerts: Vec<&str> = d.alerts.iter().map(|a| &*a.id).collect();
                m.serialize_entry("alerts", &alerts)?;
                m.end()
            }
            Outcome::Error { id, error } => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("id", id)?;
                m.serialize_entry("error", error.code)?;
                m.end()
            }
        }
    }
}

#[allow(clippy::ref_option)] // serde's serialize_with hands us `&Option<_>`
fn summary<S: Serializer>(summary: &Option<&Summary>, s: S) -> Result<S::Ok, S::Error> {
    let Some(sum) = summary else { return s.serialize_none() };
    let mut m = s.serialize_map(Some(4))?;
    m.serialize_entry("account_count", &sum.account_count)?;
    m.serialize_entry("error_count", &sum.error_count)?;
    m.serialize_entry("changes", &sum.changes)?;
    let alerts: Vec<&str> = sum.portfolio_alerts.iter().map(|a| &*a.id).collect();
    m.serialize_entry("portfolio_alerts", &alerts)?;
    m.end()
}
