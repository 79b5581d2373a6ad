//! The evaluation pipeline: the one path from snapshots to decisions that every front end
//! takes (`tierwise eval`, `tierwise diff`, `/v1/evaluate`, `/v1/portfolio`, `/v1/dry-run`).
//!
//! One function per level:
//! - [`Pipeline::decide_accounts`]: account level, one chunk at a time (a caller streaming a
//!   million accounts hands them over in chunks and writes each chunk's outcomes before the
//!   next, so memory stays flat);
//! - [`Pipeline::decide_portfolio`]: the whole book at once (caps and capacity need it all);
//! - [`Pipeline::what_if`](super::whatif): a candidate against a baseline
//!   (`service/whatif.rs`).
//!
//! [`Pipeline::answer`] is what the server calls: the same two functions with the decision
//! cache around them and the answer's bytes, the decision log and the latest decisions after.
//! Its steps, in order:
//! 1. **plan** — the cache keys (digests of each snapshot, or of the whole book) and whether
//!    reading pays ([`crate::cache::CostGate`]);
//! 2. **read** — one `get_many` / `get`, never an error (a cache that fails is a miss);
//! 3. **evaluate** the misses under the request's [`Budget`] (its timeout, on every thread);
//! 4. **splice** cached and fresh answers back into input order, as the answer's bytes;
//! 5. **transitions** — with events on, [`Pipeline::answer_events`](super::events) takes the
//!    place of steps 1–4: every account is decided (the transition needs the decisions, not
//!    cached bytes), state and outbox change in the store, and each answer lists its events;
//! 6. **write** new entries and every decided account's latest decision (queued, never waits);
//! 7. **log** the decisions (the decision log's own thread encodes and writes them).
//!
//! Nothing here knows HTTP: the server turns an [`Answer`] into a response and a
//! [`PipelineError`] into an error body; the command line uses [`Pipeline::offline`] (no
//! cache, no log) and the same level functions.

use super::Loaded;
use super::encode::{write_json, write_outcomes};
use crate::cache::{self, AccountPlan, Cache, Key, WriteBatch};
use crate::decision_log::{self, DecisionLog};
use crate::engine::{self, Outcome, PortfolioResult};
use crate::script::{self, Budget};
use crate::snapshot::Record;
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// Portfolio answers larger than this are not cached (a 10k-account book is ~8 MB).
const MAX_CACHED_BOOK: usize = 8 << 20;

/// Records at least this many are freed on the thread pool after the answer is out.
const FREE_LATER: usize = 512;

/// Which evaluation: each account on its own, or the whole book. The engine's one type
/// (states and events are keyed by it too); `as_str` is the name in the decision log and
/// the metrics.
pub use crate::engine::transition::Level;

/// Accounts the cache did not serve, by why: for `/metrics`.
#[derive(Default)]
pub struct CacheCounters {
    /// Not looked up because the cost gate judged a read would not pay.
    pub gated: AtomicU64,
    /// Not looked up because the cache was unavailable (Redis breaker not closed).
    pub unavailable: AtomicU64,
}

/// What the server answers for one evaluation.
pub struct Answer {
    /// `{"decision_id":..,"policy":..,["summary":..,]"accounts":[..]}`.
    pub bytes: Vec<u8>,
    pub decision_id: String,
    /// The policy version's hash.
    pub hash: String,
    /// Accounts answered from the cache.
    pub hits: usize,
    /// Accounts in the request.
    pub accounts: usize,
    /// Accounts answered with an error.
    pub errors: u64,
    /// Keys of `fields` skipped because no input declares them.
    pub undeclared: usize,
}

/// One served evaluation's settings, as [`Pipeline::answer`] takes them.
pub struct Request {
    pub level: Level,
    /// Its timeout and output limit, on every thread that works for it.
    pub budget: Arc<Budget>,
    /// When the request arrived (the decision log's `duration_ms`).
    pub start: Instant,
    /// Run everything on the calling thread (a handful of accounts costs less than a hop to
    /// the blocking pool).
    pub inline: bool,
    /// The caller's `x-request-id`, kept in the decision log.
    pub request_id: Option<Arc<str>>,
}

/// A parsed request, as the caller's `input` step hands it to [`Pipeline::answer`].
pub struct Input {
    pub loaded: Arc<Loaded>,
    pub records: Vec<Record>,
    /// Keys of `fields` skipped while parsing because no input declares them.
    pub undeclared: usize,
    /// With events on, the book whose portfolio alerts have their own state (`default`).
    pub book: Option<String>,
}

/// Why an evaluation has no answer (a bad account is not one: it is that account's error).
#[derive(Debug)]
pub enum PipelineError {
    /// The request's budget ran out: the outcomes would hold `time_limit` errors no policy
    /// caused, so they are neither answered, logged nor counted.
    Timeout,
    /// The answer would pass the budget's output limit (`limit` bytes); `rule` is the one
    /// whose rendered output passed it, when one did (its alerts fan out).
    ResponseTooLarge { limit: usize, rule: Option<String> },
    /// Account state could not be read or written (events on): nothing was answered, so the
    /// caller may send the same snapshots again.
    StateUnavailable(String),
    /// A bug or a lost task: `what` failed with `detail` (logged, not shown to clients).
    Internal { what: &'static str, detail: String },
}

impl PipelineError {
    pub(super) fn internal(what: &'static str, e: impl std::fmt::Display) -> Self {
        PipelineError::Internal { what, detail: e.to_string() }
    }
}

/// The pipeline: the cache and the decision log every evaluation goes through. Cheap to
/// clone (shared parts), so a big request moves a clone to the blocking pool.
#[derive(Clone)]
pub struct Pipeline {
    /// `None` on the command line: nothing is read or written.
    cache: Option<Arc<dyn Cache>>,
    log: DecisionLog,
    /// Read the cache on every request and write every decision (`--cache-always`).
    cache_always: bool,
    counters: Arc<CacheCounters>,
}

/// The cache's part of a request, planned before the read.
enum Step {
    /// No cache (the command line, or Redis unavailable).
    Skip,
    /// Account level: one key per cacheable account; `read`: whether the gate says to read.
    Accounts { plan: AccountPlan, read: bool },
    /// Portfolio level: the key of the whole book.
    Book(Key),
}

/// What the cache answered.
enum Found {
    Skip,
    Accounts(AccountPlan, Vec<Option<Bytes>>),
    Book(Key, Option<Bytes>),
}

impl Pipeline {
    /// The server's pipeline, over `cache` and `log`.
    pub fn new(cache: Arc<dyn Cache>, log: DecisionLog, cache_always: bool) -> Self {
        Pipeline {
            cache: Some(cache),
            log,
            cache_always,
            counters: Arc::new(CacheCounters::default()),
        }
    }

    /// The command line's: no cache, no decision log.
    pub fn offline() -> Self {
        Pipeline {
            cache: None,
            log: DecisionLog::off(),
            cache_always: false,
            counters: Arc::new(CacheCounters::default()),
        }
    }

    pub fn counters(&self) -> &CacheCounters {
        &self.counters
    }

    /// Account level, one chunk: `chunk` holds the records at positions `offset..` of the
    /// whole input, and error positions (`record`) are numbered in the whole input. Call it
    /// chunk after chunk to stream. An id repeated across chunks is not seen as a
    /// duplicate (only within one chunk): a caller that needs it sends one chunk.
    pub fn decide_accounts(
        &self,
        loaded: &Loaded,
        chunk: &[Record],
        offset: usize,
    ) -> Vec<Outcome> {
        let mut outcomes = self.evaluate_accounts(loaded, chunk);
        if offset > 0 {
            renumber(chunk, &mut outcomes, |j| offset + j);
        }
        outcomes
    }

    /// Portfolio level: the whole book, caps, capacity and portfolio alerts.
    pub fn decide_portfolio(&self, loaded: &Loaded, records: &[Record]) -> PortfolioResult {
        engine::evaluate_portfolio(&loaded.policy, records)
    }

    /// The engine on `records`, timed for the cost gate.
    fn evaluate_accounts(&self, loaded: &Loaded, records: &[Record]) -> Vec<Outcome> {
        let t = Instant::now();
        let out = engine::evaluate(&loaded.policy, records);
        loaded.gate.record_eval(records.len(), t.elapsed());
        out
    }

    /// The decision cache, when there is one (not on the command line).
    pub(super) fn cache(&self) -> Option<&Arc<dyn Cache>> {
        self.cache.as_ref()
    }

    /// Step 7: the decision log's own thread encodes and writes the job (when the log is on).
    pub(super) fn log_job(&self, job: decision_log::Job) {
        if self.log.enabled() {
            self.log.record(job);
        }
    }

    /// A served evaluation: `input` (parse the request, find its policy) then steps 1–7 of
    /// the module's list. With `inline`, everything runs on the calling thread (a handful of
    /// accounts costs less than a hop to the blocking pool); otherwise the CPU parts run on
    /// the blocking pool and use every core. `start` is when the request arrived.
    pub async fn answer<E, F>(&self, req: Request, input: F) -> Result<Answer, E>
    where
        F: FnOnce() -> Result<Input, E> + Send + 'static,
        E: From<PipelineError> + Send + 'static,
    {
        let (level, inline) = (req.level, req.inline);
        let me = self.clone();
        let (loaded, records, step, undeclared) = off_thread(inline, move || {
            let Input { loaded, records, undeclared, .. } = input()?;
            let step = me.plan(&loaded, &records, level);
            Ok::<_, E>((loaded, records, step, undeclared))
        })
        .await??;
        let found = self.read(&loaded, step).await;
        let me = self.clone();
        let (answer, writes) = off_thread(inline, move || {
            script::with_budget(Some(req.budget.clone()), || {
                me.finish(&loaded, records, found, &req)
            })
        })
        .await??;
        if let (Some(cache), Some(writes)) = (&self.cache, writes)
            && !writes.is_empty()
        {
            cache.put_many(writes); // never waits
        }
        Ok(Answer { undeclared, ..answer })
    }

    /// Step 1: what to ask the cache.
    fn plan(&self, loaded: &Loaded, records: &[Record], level: Level) -> Step {
        let Some(cache) = &self.cache else { return Step::Skip };
        if !cache.available() {
            self.counters.unavailable.fetch_add(records.len() as u64, Relaxed);
            return Step::Skip;
        }
        match level {
            Level::Account => {
                let (plan, read) = if self.cache_always {
                    let plan = AccountPlan::new(&loaded.cache_id, records);
                    let read = !plan.keys().is_empty();
                    (plan, read)
                } else {
                    let plan = AccountPlan::gated(&loaded.cache_id, records, &loaded.gate);
                    let read = loaded.gate.should_read(plan.keys().len());
                    (plan, read)
                };
                if !read {
                    self.counters.gated.fetch_add(plan.keys().len() as u64, Relaxed);
                }
                Step::Accounts { plan, read }
            }
            Level::Portfolio => Step::Book(loaded.cache_id.book_key(&cache::book_digest(records))),
        }
    }

    /// Step 2: the one cache read of the request (one MGET / GET).
    async fn read(&self, loaded: &Loaded, step: Step) -> Found {
        let Some(cache) = &self.cache else { return Found::Skip };
        match step {
            Step::Skip => Found::Skip,
            Step::Accounts { plan, read } => {
                let found = if read {
                    let t = Instant::now();
                    let found = cache.get_many(plan.keys()).await;
                    let hits = found.iter().filter(|f| f.is_some()).count();
                    loaded.gate.record_read(plan.keys().len(), hits, t.elapsed());
                    found
                } else {
                    Vec::new() // all misses: the gate judged the read would cost more
                };
                Found::Accounts(plan, found)
            }
            Step::Book(key) => {
                let found = cache.get(&key).await;
                Found::Book(key, found)
            }
        }
    }

    /// Steps 3–5 and 7: evaluate the misses (under the budget installed by the caller),
    /// splice, run the transitions, log. Step 6's writes are returned for the caller.
    fn finish(
        &self,
        loaded: &Arc<Loaded>,
        records: Vec<Record>,
        found: Found,
        req: &Request,
    ) -> Result<(Answer, Option<WriteBatch>), PipelineError> {
        let Request { level, start, ref budget, ref request_id, .. } = *req;
        let decision_id = uuid::Uuid::now_v7().to_string();
        let n = records.len();
        let ser = |e| PipelineError::internal("serialize", e);
        let mut buf = Vec::with_capacity(256 + n * 800);
        buf.extend_from_slice(b"{\"decision_id\":");
        write_json(&mut buf, &decision_id).map_err(ser)?;
        buf.extend_from_slice(b",\"policy\":");
        write_json(&mut buf, &*loaded.pref).map_err(ser)?;
        let mut hits = 0;
        let mut writes = None;
        let mut cached: Vec<(usize, Bytes)> = Vec::new();
        let mut cached_book = None;
        let (outcomes, summary) = match (level, found) {
            (Level::Account, Found::Accounts(plan, found)) => {
                let (answer, w) = plan
                    .finish(&records, found, |misses| self.evaluate_accounts(loaded, misses))
                    .map_err(ser)?;
                buf.extend_from_slice(b",\"accounts\":");
                answer.write_array(&mut buf);
                buf.push(b'}');
                hits = answer.hits;
                writes = Some(w);
                if hits > 0 {
                    let mut fresh = vec![false; n];
                    for (i, _) in &answer.fresh {
                        if let Some(f) = fresh.get_mut(*i) {
                            *f = true;
                        }
                    }
                    cached = answer
                        .accounts
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| !fresh.get(*i).copied().unwrap_or(true))
                        .map(|(i, b)| (i, b.clone()))
                        .collect();
                }
                (answer.fresh.into_iter().map(|(_, o)| o).collect::<Vec<Outcome>>(), None)
            }
            (Level::Account, _) => {
                let outcomes = self.evaluate_accounts(loaded, &records);
                buf.extend_from_slice(b",\"accounts\":");
                write_outcomes(&mut buf, &outcomes).map_err(ser)?;
                buf.push(b'}');
                (outcomes, None)
            }
            (Level::Portfolio, Found::Book(_, Some(fragment))) => {
                buf.push(b',');
                buf.extend_from_slice(&fragment);
                buf.push(b'}');
                hits = n;
                cached_book = Some(fragment);
                (Vec::new(), None)
            }
            (Level::Portfolio, found) => {
                let r = engine::evaluate_portfolio(&loaded.policy, &records);
                let mut fragment = book_fragment(&r).map_err(ser)?;
                buf.push(b',');
                buf.extend_from_slice(&fragment);
                buf.push(b'}');
                if let Found::Book(key, None) = found
                    && fragment.len() <= MAX_CACHED_BOOK
                {
                    // The cache weighs a value by its length, but a `Bytes` made from a `Vec`
                    // keeps the whole allocation: reserved at 800 bytes an account, a
                    // 20-account answer held about twice what was weighed, and under a flood
                    // of distinct books RSS grew far past the cache's bound.
                    fragment.shrink_to_fit();
                    let mut w = WriteBatch::new();
                    w.put(key, Bytes::from(fragment));
                    writes = Some(w);
                }
                (r.accounts, Some(r.summary))
            }
        };
        // An answer past the output budget is refused whole (the alerts were counted while
        // rendered, so the work stopped there; the serialized size covers the rest).
        let limit = budget.output_limit();
        if let Some(rule) = budget.output_over() {
            return Err(PipelineError::ResponseTooLarge { limit, rule: Some(rule) });
        }
        if buf.len() > limit {
            return Err(PipelineError::ResponseTooLarge { limit, rule: None });
        }
        if budget.spent() {
            return Err(PipelineError::Timeout);
        }
        let errors = outcomes.iter().filter(|o| o.decision().is_none()).count() as u64;
        if records.len() > FREE_LATER {
            // Tens of thousands of small allocations: freed by the pool, after the answer.
            rayon::spawn(move || drop(records));
        }
        if self.log.enabled() {
            // The outcomes move to the log thread, which encodes the line and frees them.
            self.log.record(decision_log::Job {
                at: std::time::SystemTime::now(),
                decision_id: decision_id.clone(),
                request_id: request_id.clone(),
                level: level.as_str(),
                policy: loaded.pref.clone(),
                duration_ms: start.elapsed().as_secs_f64() * 1e3,
                outcomes,
                summary,
                cached,
                cached_book,
            });
        }
        let hash = loaded.policy.hash.clone();
        Ok((
            Answer { bytes: buf, decision_id, hash, hits, accounts: n, errors, undeclared: 0 },
            writes,
        ))
    }
}

/// `"summary":…,"accounts":[…]`: what the cache keeps of a portfolio answer (the answer
/// without its decision id and policy, which the pipeline puts around it).
fn book_fragment(r: &PortfolioResult) -> Result<Vec<u8>, serde_json::Error> {
    let mut fragment = Vec::with_capacity(4096 + r.accounts.len() * 800);
    fragment.extend_from_slice(b"\"summary\":");
    write_json(&mut fragment, &r.summary)?;
    fragment.extend_from_slice(b",\"accounts\":");
    write_outcomes(&mut fragment, &r.accounts)?;
    Ok(fragment)
}

/// The engine numbers an error's `record` by its position in what it was given (`j + 1`);
/// give it its position in the whole input instead (`at(j) + 1`), unless the record came
/// numbered already (a parse error, numbered by the reader).
pub(crate) fn renumber(records: &[Record], outcomes: &mut [Outcome], at: impl Fn(usize) -> usize) {
    for (j, o) in outcomes.iter_mut().enumerate() {
        let numbered = matches!(records.get(j), Some(Err(e)) if e.record.is_some());
        if let Outcome::Error { error, .. } = o
            && !numbered
            && error.record == Some(j + 1)
        {
            error.record = Some(at(j) + 1);
        }
    }
}

/// `f` on the calling thread (`inline`) or on the blocking pool.
pub(super) async fn off_thread<T: Send + 'static>(
    inline: bool,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PipelineError> {
    if inline {
        Ok(f())
    } else {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| PipelineError::internal("evaluation task", e))
    }
}
