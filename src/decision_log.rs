//! The decision log: one JSON line per evaluation request, so an auditor can say why an
//! account had its tier on a given day (decision id, policy name and hash, and per account
//! its tier, change and alerts, or its error code).
//!
//! A request hands its outcomes over (moved, not copied) and goes on; one background thread
//! encodes the line, writes it through a buffer and frees the outcomes. So a request never
//! waits for the disk or the encoding. The thread works in rounds of at most [`ROUND`]: it
//! drains the queue, flushes, then sleeps out the round; meanwhile requests only enqueue (a
//! sender wakes nobody), so a busy server pays one write and one wake-up per round, not per
//! request (measured: 14 µs of CPU per request when waking the thread each time). The queue is bounded ([`QUEUE`] requests): if the disk
//! cannot keep up, requests wait for it rather than lines being lost or memory growing.

use crate::engine::{Outcome, PolicyRef, Summary};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::value::RawValue;
use std::io::Write;
use std::sync::{mpsc, Arc};
use std::time::SystemTime;

/// Requests whose lines may wait to be written.
pub const QUEUE: usize = 16_384;

/// Longest a line waits before it is written.
pub const ROUND: std::time::Duration = std::time::Duration::from_millis(5);

/// Where lines go.
#[derive(Clone)]
pub struct DecisionLog {
    tx: Option<mpsc::SyncSender<Msg>>,
    done: Option<Arc<std::sync::Mutex<Option<mpsc::Receiver<()>>>>>,
}

/// What goes to the log thread: a line already encoded, or a big request to encode there.
enum Msg {
    Line(Vec<u8>),
    Job(Box<Job>),
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
        self.0.is_none_or(|rx| !matches!(rx.recv_timeout(limit), Err(mpsc::RecvTimeoutError::Timeout)))
    }
}

/// One evaluation request, handed to the log thread.
pub struct Job {
    pub at: SystemTime,
    pub decision_id: String,
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
        DecisionLog { tx: None, done: None }
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
        let spawned = std::thread::Builder::new().name("tierwise-decision-log".into()).spawn(move || {
            let mut out = std::io::BufWriter::with_capacity(1 << 16, out);
            let mut line = Vec::with_capacity(4096);
            let mut write = |msg: Msg, out: &mut std::io::BufWriter<Box<dyn Write + Send>>| match msg {
                Msg::Line(l) => out.write_all(&l).is_ok(),
                Msg::Job(job) => {
                    line.clear();
                    encode(&job, &mut line) && out.write_all(&line).is_ok()
                }
            };
            while let Ok(job) = rx.recv() {
                let start = std::time::Instant::now();
                let mut ok = write(job, &mut out);
                while let Ok(more) = rx.try_recv() {
                    ok &= write(more, &mut out);
                }
                if !(ok && out.flush().is_ok()) {
                    eprintln!("tierwise: cannot write the decision log");
                }
                std::thread::sleep(ROUND.saturating_sub(start.elapsed()));
            }
            let _ = done_tx.send(());
        });
        match spawned {
            Ok(_) => DecisionLog { tx: Some(tx), done: Some(Arc::new(std::sync::Mutex::new(Some(done_rx)))) },
            Err(e) => {
                eprintln!("tierwise: no decision log: cannot start its thread: {e}");
                Self::off()
            }
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
        let _ = tx.send(Msg::Line(line));
    }

    /// Logs one evaluation request (written on the log thread).
    pub fn record(&self, job: Job) {
        let Some(tx) = &self.tx else { return };
        let msg = if job.outcomes.len() + job.cached.len() > ENCODE_THERE || job.cached_book.is_some() {
            Msg::Job(Box::new(job))
        } else {
            let mut line = Vec::with_capacity(512 + job.outcomes.len() * 160);
            if !encode(&job, &mut line) {
                return;
            }
            Msg::Line(line)
        };
        let _ = tx.send(msg);
    }
}

/// One dry run as logged: what was compared and what the diff counts, never decisions.
#[derive(Serialize)]
pub struct DryRun<'a> {
    /// RFC 3339, UTC.
    pub ts: String,
    pub decision_id: &'a str,
    /// Always `dry_run`.
    pub level: &'static str,
    /// Always `true`.
    pub dry_run: bool,
    /// The baseline (a served policy).
    pub policy: &'a PolicyRef,
    pub candidate: &'a PolicyRef,
    /// The overrides applied, as `path=value`.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub overrides: &'a [String],
    pub duration_ms: f64,
    pub summary: &'a crate::whatif::DiffSummary,
}

/// One evaluation request as logged.
#[derive(Serialize)]
struct Entry<'a> {
    /// RFC 3339, UTC.
    ts: String,
    decision_id: &'a str,
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
                    let light = serde_json::from_slice::<LightIn<'_>>(bytes).map_err(serde::ser::Error::custom)?;
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
