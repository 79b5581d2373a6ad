//! Backtest: a policy replayed over a book's history, as if it had been live since the first
//! snapshot (pure: no I/O, no clock).
//!
//! A history is snapshots of the same book at several dates; each distinct `as_of` is one
//! **period**, replayed in ascending order by a [`Replay`]:
//! - period 1 is decided as given; later, an account the replay has already decided has its
//!   `current_tier` and `tier_since` replaced by the replay's own (its last final tier, and the
//!   `tier_since` the transition kept), so what the CRM says the tier was never leaks back in.
//!   An account seen for the first time (or only ever answered with an error) keeps its
//!   snapshot's; an account missing from a period is not decided then and keeps its state;
//! - each period is decided at portfolio level (caps, capacity, portfolio alerts) or account
//!   level, and its decisions go through the very transition the service uses
//!   ([`super::transition`]), from empty state, so the events counted are the ones the service
//!   would have sent.
//!
//! The figures ([`PeriodFigures`], [`Overall`]) depend on no input order: shuffling the files
//! or the accounts of a period changes no byte of a [`Report`]. Only the per-account lines a
//! caller may stream ([`PeriodOutput::lines`]) follow input order.
//!
//! Definitions (the docs and the tests use the same):
//! - a **move** is a decision whose `change` is `promote` or `demote`; it is **from caps**
//!   when its reasons hold `cap`, `total_max` or `capacity` (a cap or the capacity rules moved
//!   it, or moved it further), else **from scores**;
//! - an account's **replay tier** in a period is its final tier there, or, in a period it is
//!   missing from (or answered with an error), the one it last had; before its first decision
//!   it has none;
//! - a **flip-flop** is a return: in tier X at period p, in another tier at p+1, in X again at
//!   period q with `q - p <= flip_window`, p being the last period before q it was in X; each
//!   return counts once, in period q;
//! - a **stint** is a run of consecutive periods with the same replay tier, from an account's
//!   first decision to the last period of the replay;
//! - the **span** is last `as_of` − first `as_of`, in days; years are 365.25 days, months a
//!   twelfth of that. Rates over a span of 0 days (one period) are `null`.

pub use super::transition::Level;
use super::transition::{
    self, AccountInput, AccountState, AlertRule, BookInput, BookState, EventType,
};
use super::{Change, Load, Outcome, PolicyRef, Summary, evaluate, evaluate_portfolio, policy_ref};
use crate::policy::Policy;
use crate::snapshot::{AccountError, Record};
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// `--flip-window`: a return within this many periods is a flip-flop.
pub const DEFAULT_FLIP_WINDOW: u32 = 3;
/// The book name portfolio alerts are kept under (as `/v1/portfolio` without `book`).
pub const BOOK: &str = "default";
/// Days in a year, for rates over the span.
pub const YEAR_DAYS: f64 = 365.25;

/// The reason codes that say a cap or the capacity rules moved an account.
pub const CAP_REASONS: [&str; 3] = ["cap", "total_max", "capacity"];

/// How a replay decides each period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub level: Level,
    pub flip_window: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options { level: Level::Portfolio, flip_window: DEFAULT_FLIP_WINDOW }
    }
}

/// One period's snapshots, all with the same `as_of`.
#[derive(Debug, Clone)]
pub struct Period {
    /// `YYYY-MM-DD`.
    pub as_of: String,
    pub day: i64,
    pub records: Vec<Record>,
}

/// Groups records into periods by `as_of`, ascending, keeping input order within each. A
/// record that is not a snapshot, or whose `as_of` is not a date, belongs to no period: it is
/// returned on its own, in input order.
pub fn group(records: impl IntoIterator<Item = Record>) -> (Vec<Period>, Vec<AccountError>) {
    let mut by_day: BTreeMap<i64, Period> = BTreeMap::new();
    let mut unplaced = Vec::new();
    for (i, r) in records.into_iter().enumerate() {
        match r {
            Ok(s) => match crate::date::parse_days(&s.as_of) {
                Some(day) => by_day
                    .entry(day)
                    .or_insert_with(|| Period { as_of: s.as_of.clone(), day, records: Vec::new() })
                    .records
                    .push(Ok(s)),
                None => {
                    let mut e = bad_as_of(&s.id, &s.as_of);
                    e.record = Some(i + 1);
                    unplaced.push(e);
                }
            },
            Err(e) => unplaced.push(e),
        }
    }
    (by_day.into_values().collect(), unplaced)
}

/// The error of a snapshot whose `as_of` is not a date (it has no period to be decided in).
pub fn bad_as_of(id: &str, as_of: &str) -> AccountError {
    let mut e = AccountError::new(
        Some(id),
        "bad_date",
        format!("`as_of` is `{as_of}`, not a date (YYYY-MM-DD): the snapshot belongs to no period"),
    );
    e.field = Some("as_of".into());
    e
}

/// Moves per cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Moves {
    /// Moves whose reasons hold `cap`, `total_max` or `capacity`.
    pub from_caps: u64,
    /// The other moves: the score (or a tier's condition) moved the account.
    pub from_scores: u64,
}

/// An account answered with an error in a period (or in none, for [`Report::unplaced`]).
/// Listed by id, without the record's position (the report does not depend on input order;
/// `jsonl` lines follow it).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Rejected {
    pub id: Option<String>,
    #[serde(flatten)]
    pub error: AccountError,
}

/// One period of the replay.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct PeriodFigures {
    pub as_of: String,
    /// Accounts decided.
    pub accounts: u64,
    /// Accounts answered with an error (listed in `rejected`).
    pub errors: u64,
    /// Final tiers, best first (every tier of the policy, zeros included).
    pub tiers: IndexMap<String, u64>,
    pub promoted: u64,
    pub demoted: u64,
    pub held: u64,
    /// The moves (promoted + demoted) by cause.
    pub moves: Moves,
    /// Returns to a tier left at most `flip_window` periods before (see the module docs).
    pub flip_flops: u64,
    /// Events by type (every type, zeros included).
    pub events: BTreeMap<&'static str, u64>,
    /// Alert events by alert id, then type (only alerts with events).
    pub alert_events: BTreeMap<String, BTreeMap<&'static str, u64>>,
    /// Managers over `capacity.per_manager.max`.
    pub managers_over: u64,
    /// The accounts answered with an error, by id.
    pub rejected: Vec<Rejected>,
}

/// One manager over the whole replay.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ManagerFigures {
    pub manager: String,
    /// The most accounts in the capacity tiers in one period (before any overflow action).
    pub peak_load: u64,
    /// The first period with that load.
    pub peak_as_of: String,
    /// Periods over `capacity.per_manager.max`.
    pub periods_over: u64,
    /// Periods the manager had decided accounts in.
    pub periods: u64,
}

/// An account that flip-flopped.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct FlipFlopper {
    pub id: String,
    pub flip_flops: u64,
    /// Its replay tier in every period from its first decision (`null` before).
    pub tiers: Vec<Option<Arc<str>>>,
}

/// The whole replay.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Overall {
    pub periods: u64,
    pub first_as_of: Option<String>,
    pub last_as_of: Option<String>,
    /// Last `as_of` − first `as_of`, in days.
    pub span_days: i64,
    /// Accounts decided at least once.
    pub accounts: u64,
    /// Decisions answered with an error, over all periods (and records in no period).
    pub errors: u64,
    /// Promotions and demotions over all periods.
    pub moves: u64,
    pub moves_by_cause: Moves,
    pub flip_flops: u64,
    /// `moves / accounts / (span_days / 365.25)`; `null` over a span of 0 days.
    pub moves_per_account_year: Option<f64>,
    /// Share of `accounts` with at least one move; `null` without accounts.
    pub ever_moved_share: Option<f64>,
    /// Median length of a stint in one tier, in periods; `null` without accounts.
    pub median_stint_periods: Option<f64>,
    /// `alert.raised` events over all periods (portfolio alerts not included).
    pub alerts_raised: u64,
    /// `alerts_raised / (span_days / (365.25 / 12))`; `null` over a span of 0 days.
    pub alerts_per_month: Option<f64>,
    /// Events by type over all periods.
    pub events: BTreeMap<&'static str, u64>,
    /// Every manager seen, by name.
    pub managers: Vec<ManagerFigures>,
    /// Accounts with at least one flip-flop: most first, then by id.
    pub flip_floppers: Vec<FlipFlopper>,
}

/// What a replay reports.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Report {
    pub policy: Arc<PolicyRef>,
    pub level: Level,
    pub flip_window: u32,
    pub periods: Vec<PeriodFigures>,
    pub overall: Overall,
    /// Records that belong to no period (not a snapshot, or `as_of` not a date).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unplaced: Vec<Rejected>,
}

/// One account of one period, for line-per-account output (`--format jsonl`).
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    Decided { id: String, tier: Arc<str>, change: Change, events: Vec<EventType> },
    Error { id: Option<String>, code: &'static str, message: String },
}

/// What [`Replay::period`] returns besides what it keeps for the report.
#[derive(Debug, Clone)]
pub struct PeriodOutput {
    pub as_of: String,
    /// One per input record, in input order.
    pub lines: Vec<Line>,
}

/// An account the replay has decided at least once.
struct Track {
    /// Always `Some` once tracked (the transition's in-place form takes an `Option`).
    state: Option<AccountState>,
    /// (period index, final tier index) of each period it was decided in.
    decided: Vec<(u32, u16)>,
    moved: bool,
}

#[derive(Default)]
struct ManagerTrack {
    peak: u64,
    peak_period: usize,
    over: u64,
    periods: u64,
}

/// A replay in progress: feed it the periods in ascending order, then [`Replay::finish`].
pub struct Replay<'p> {
    policy: &'p Policy,
    pref: Arc<PolicyRef>,
    opts: Options,
    rules: Vec<AlertRule>,
    book_rules: Vec<AlertRule>,
    accounts: HashMap<String, Track>,
    book: Option<BookState>,
    periods: Vec<PeriodFigures>,
    days: Vec<i64>,
    managers: BTreeMap<String, ManagerTrack>,
    unplaced: Vec<Rejected>,
}

fn sort_rejected(list: &mut [Rejected]) {
    list.sort_by(|a, b| {
        let id = |r: &Rejected| r.id.as_deref().map(str::as_bytes).map(<[u8]>::to_vec);
        id(a)
            .cmp(&id(b))
            .then_with(|| a.error.code.cmp(b.error.code))
            .then_with(|| a.error.message.cmp(&b.error.message))
    });
}

/// The last index of the policy's tiers, as a tier index (u16 is plenty: tiers are few).
fn tier_of(p: &Policy, id: &str) -> u16 {
    p.tier_index(id).map_or(u16::MAX, |i| i.min(u16::MAX as usize - 1) as u16)
}

impl<'p> Replay<'p> {
    pub fn new(policy: &'p Policy, opts: Options) -> Self {
        Replay {
            policy,
            pref: policy_ref(policy),
            opts,
            rules: transition::account_rules(policy),
            book_rules: transition::portfolio_rules(policy),
            accounts: HashMap::new(),
            book: None,
            periods: Vec::new(),
            days: Vec::new(),
            managers: BTreeMap::new(),
            unplaced: Vec::new(),
        }
    }

    /// Records that belong to no period: reported, decided never.
    pub fn unplaced(&mut self, errors: impl IntoIterator<Item = AccountError>) {
        self.unplaced.extend(errors.into_iter().map(|mut e| {
            e.record = None;
            Rejected { id: e.id.clone(), error: e }
        }));
        sort_rejected(&mut self.unplaced);
    }

    /// Decides one period. `day` must be later than the previous period's; records whose
    /// `as_of` is another day are that period's errors (`bad_record`), never decided.
    pub fn period(&mut self, as_of: &str, day: i64, mut records: Vec<Record>) -> PeriodOutput {
        let p = self.days.len() as u32;
        if self.days.last().is_some_and(|&last| day <= last) {
            // A caller's mistake, not the data's: answer every account with an error rather
            // than rewind the replay.
            for r in records.iter_mut() {
                if let Ok(s) = r {
                    *r = Err(AccountError::new(
                        Some(&s.id),
                        "bad_record",
                        format!("period `{as_of}` comes after a later one"),
                    ));
                }
            }
        }
        // The replay's win: what the policy itself decided before, not what the CRM says.
        for r in records.iter_mut() {
            let Ok(s) = r else { continue };
            if s.as_of != as_of {
                let e = AccountError::new(
                    Some(&s.id),
                    "bad_record",
                    format!("`as_of` `{}` differs from its period's `{as_of}`", s.as_of),
                );
                *r = Err(e);
                continue;
            }
            if let Some(st) = self.accounts.get(&s.id).and_then(|t| t.state.as_ref()) {
                s.current_tier = Some(st.tier.to_string());
                s.tier_since = Some(crate::date::format_days(st.tier_since));
            }
        }
        let (outcomes, summary): (Vec<Outcome>, Option<Summary>) = match self.opts.level {
            Level::Portfolio => {
                let r = evaluate_portfolio(self.policy, &records);
                (r.accounts, Some(r.summary))
            }
            Level::Account => (evaluate(self.policy, &records), None),
        };

        let mut fig = PeriodFigures {
            as_of: as_of.to_string(),
            accounts: 0,
            errors: 0,
            tiers: self.policy.tiers.iter().map(|t| (t.id.clone(), 0)).collect(),
            promoted: 0,
            demoted: 0,
            held: 0,
            moves: Moves::default(),
            flip_flops: 0,
            events: EventType::ALL.iter().map(|t| (t.as_str(), 0)).collect(),
            alert_events: BTreeMap::new(),
            managers_over: 0,
            rejected: Vec::new(),
        };
        let mut lines = Vec::with_capacity(outcomes.len());
        let mut events = Vec::new();
        let count = |fig: &mut PeriodFigures, e: &transition::Event| {
            *fig.events.entry(e.kind.as_str()).or_default() += 1;
            if let Some(a) = e.alert_id() {
                *fig.alert_events
                    .entry(a.to_string())
                    .or_default()
                    .entry(e.kind.as_str())
                    .or_default() += 1;
            }
        };
        for (o, r) in outcomes.iter().zip(&records) {
            let d = match o {
                Outcome::Decision(d) => d,
                Outcome::Error { id, error } => {
                    fig.errors += 1;
                    lines.push(Line::Error {
                        id: id.clone(),
                        code: error.code,
                        message: error.message.clone(),
                    });
                    let mut error = error.clone();
                    error.record = None;
                    fig.rejected.push(Rejected { id: id.clone(), error });
                    continue;
                }
            };
            let tier_since = r
                .as_ref()
                .ok()
                .and_then(|s| s.tier_since.as_deref())
                .and_then(crate::date::parse_days);
            fig.accounts += 1;
            if let Some(n) = fig.tiers.get_mut(&*d.tier) {
                *n += 1;
            }
            let moved = matches!(d.change, Change::Promote | Change::Demote);
            match d.change {
                Change::Promote => fig.promoted += 1,
                Change::Demote => fig.demoted += 1,
                Change::Hold => fig.held += 1,
                Change::None | Change::New => {}
            }
            if moved {
                if d.reasons.iter().any(|r| CAP_REASONS.contains(&r.code)) {
                    fig.moves.from_caps += 1;
                } else {
                    fig.moves.from_scores += 1;
                }
            }
            events.clear();
            let tier = tier_of(self.policy, &d.tier);
            let input = AccountInput { level: self.opts.level, outcome: o, as_of: day, tier_since };
            match self.accounts.get_mut(&d.id) {
                Some(t) => {
                    transition::step(&mut t.state, input, &self.rules, &mut events);
                    t.decided.push((p, tier));
                    t.moved |= moved;
                }
                None => {
                    let mut state = None;
                    transition::step(&mut state, input, &self.rules, &mut events);
                    if state.is_some() {
                        self.accounts
                            .insert(d.id.clone(), Track { state, decided: vec![(p, tier)], moved });
                    }
                }
            }
            for e in &events {
                count(&mut fig, e);
            }
            lines.push(Line::Decided {
                id: d.id.clone(),
                tier: d.tier.clone(),
                change: d.change,
                events: events.iter().map(|e| e.kind).collect(),
            });
        }

        // By id, not input order: the report must not change when the input is reordered
        // (jsonl keeps input order and positions).
        sort_rejected(&mut fig.rejected);
        let period_index = self.days.len();
        match &summary {
            Some(s) => {
                events.clear();
                let input = BookInput {
                    policy: &self.pref,
                    book: BOOK,
                    as_of: (fig.accounts > 0).then_some(day),
                    summary: s,
                };
                transition::book_step(&mut self.book, input, &self.book_rules, &mut events);
                for e in &events {
                    count(&mut fig, e);
                }
                for m in &s.managers {
                    self.manager(&m.manager, m.count, m.status == Load::Over, period_index);
                    fig.managers_over += u64::from(m.status == Load::Over);
                }
            }
            None => {
                // Account level: the load of each book as the period's decisions leave it.
                if let Some(cap) = &self.policy.capacity {
                    let mut loads: BTreeMap<&str, u64> = BTreeMap::new();
                    for d in outcomes.iter().filter_map(Outcome::decision) {
                        let Some(m) = d.manager.as_deref() else { continue };
                        let n = loads.entry(m).or_default();
                        let t = self.policy.tier_index(&d.tier).unwrap_or(usize::MAX);
                        *n += u64::from(cap.in_book.get(t).copied().unwrap_or(false));
                    }
                    for (m, n) in loads {
                        let over = cap.max.is_some_and(|max| n > max);
                        self.manager(m, n, over, period_index);
                        fig.managers_over += u64::from(over);
                    }
                }
            }
        }
        self.days.push(day);
        self.periods.push(fig);
        PeriodOutput { as_of: as_of.to_string(), lines }
    }

    fn manager(&mut self, name: &str, load: u64, over: bool, period: usize) {
        let m = match self.managers.get_mut(name) {
            Some(m) => m,
            None => self.managers.entry(name.to_string()).or_default(),
        };
        if m.periods == 0 || load > m.peak {
            m.peak = load;
            m.peak_period = period;
        }
        m.over += u64::from(over);
        m.periods += 1;
    }

    /// The report: the periods' figures, then what only the whole replay shows.
    pub fn finish(mut self) -> Report {
        let n = self.days.len();
        let w = self.opts.flip_window as usize;
        let tiers = &self.policy.tiers;
        let mut stints: Vec<u32> = Vec::new();
        let mut flip_floppers = Vec::new();
        let mut moved = 0u64;
        let mut seq: Vec<u16> = Vec::with_capacity(n);
        let mut last_in: Vec<Option<usize>> = vec![None; tiers.len() + 1];
        for (id, t) in &self.accounts {
            moved += u64::from(t.moved);
            // The replay tier of every period from the first decision on.
            let Some(&(first, _)) = t.decided.first() else { continue };
            let first = first as usize;
            seq.clear();
            let mut k = 0;
            for p in first..n {
                while k + 1 < t.decided.len() && t.decided[k + 1].0 as usize <= p {
                    k += 1;
                }
                seq.push(t.decided[k].1);
            }
            last_in.iter_mut().for_each(|x| *x = None);
            let mut flips = 0u64;
            let mut run = 0u32;
            for (i, &tier) in seq.iter().enumerate() {
                let slot = (tier as usize).min(tiers.len());
                if i > 0 && seq[i - 1] != tier {
                    stints.push(run);
                    run = 0;
                    if let Some(p) = last_in[slot]
                        && i - p <= w
                    {
                        flips += 1;
                        if let Some(f) = self.periods.get_mut(first + i) {
                            f.flip_flops += 1;
                        }
                    }
                }
                run += 1;
                last_in[slot] = Some(i);
            }
            if run > 0 {
                stints.push(run);
            }
            if flips > 0 {
                let mut path = vec![None; first];
                path.extend(seq.iter().map(|&i| tiers.get(i as usize).map(|t| t.key.clone())));
                flip_floppers.push(FlipFlopper { id: id.clone(), flip_flops: flips, tiers: path });
            }
        }
        flip_floppers.sort_by(|a, b| {
            b.flip_flops.cmp(&a.flip_flops).then_with(|| a.id.as_bytes().cmp(b.id.as_bytes()))
        });
        stints.sort_unstable();
        let median = match stints.len() {
            0 => None,
            len if len % 2 == 1 => Some(f64::from(stints[len / 2])),
            len => Some((f64::from(stints[len / 2 - 1]) + f64::from(stints[len / 2])) / 2.0),
        };

        let accounts = self.accounts.len() as u64;
        let span = match (self.days.first(), self.days.last()) {
            (Some(a), Some(b)) => b - a,
            _ => 0,
        };
        let years = span as f64 / YEAR_DAYS;
        let mut moves = Moves::default();
        let mut events: BTreeMap<&'static str, u64> =
            EventType::ALL.iter().map(|t| (t.as_str(), 0)).collect();
        let mut errors = self.unplaced.len() as u64;
        for f in &self.periods {
            moves.from_caps += f.moves.from_caps;
            moves.from_scores += f.moves.from_scores;
            errors += f.errors;
            for (k, v) in &f.events {
                *events.entry(k).or_default() += v;
            }
        }
        let total_moves = moves.from_caps + moves.from_scores;
        let alerts_raised = events.get(EventType::AlertRaised.as_str()).copied().unwrap_or(0);
        let per = |x: u64, unit: f64| (span > 0).then(|| x as f64 / (span as f64 / unit));
        let managers = self
            .managers
            .into_iter()
            .map(|(manager, m)| ManagerFigures {
                manager,
                peak_load: m.peak,
                peak_as_of: self
                    .periods
                    .get(m.peak_period)
                    .map(|f| f.as_of.clone())
                    .unwrap_or_default(),
                periods_over: m.over,
                periods: m.periods,
            })
            .collect();
        let overall = Overall {
            periods: n as u64,
            first_as_of: self.periods.first().map(|f| f.as_of.clone()),
            last_as_of: self.periods.last().map(|f| f.as_of.clone()),
            span_days: span,
            accounts,
            errors,
            moves: total_moves,
            moves_by_cause: moves,
            flip_flops: flip_floppers.iter().map(|f| f.flip_flops).sum(),
            moves_per_account_year: (span > 0 && accounts > 0)
                .then(|| total_moves as f64 / accounts as f64 / years),
            ever_moved_share: (accounts > 0).then(|| moved as f64 / accounts as f64),
            median_stint_periods: median,
            alerts_raised,
            alerts_per_month: per(alerts_raised, YEAR_DAYS / 12.0),
            events,
            managers,
            flip_floppers,
        };
        Report {
            policy: self.pref,
            level: self.opts.level,
            flip_window: self.opts.flip_window,
            periods: self.periods,
            overall,
            unplaced: self.unplaced,
        }
    }
}

#[derive(Serialize)]
struct JsonlError<'a> {
    code: &'a str,
    message: &'a str,
}

#[derive(Serialize)]
#[serde(untagged)]
enum JsonlLine<'a> {
    Decided {
        as_of: &'a str,
        id: &'a str,
        tier: &'a str,
        change: &'static str,
        events: Vec<&'static str>,
    },
    /// `as_of` is `null` for a record in no period.
    Error { as_of: Option<&'a str>, id: Option<&'a str>, error: JsonlError<'a> },
}

/// `--format jsonl`: one line per account of a period, in input order:
/// `{as_of, id, tier, change, events: [type, ...]}` or `{as_of, id, error: {code, message}}`.
pub fn write_jsonl(
    out: &mut impl std::io::Write,
    as_of: &str,
    lines: &[Line],
) -> std::io::Result<()> {
    for l in lines {
        let line = match l {
            Line::Decided { id, tier, change, events } => JsonlLine::Decided {
                as_of,
                id,
                tier,
                change: change.as_str(),
                events: events.iter().map(|e| e.as_str()).collect(),
            },
            Line::Error { id, code, message } => JsonlLine::Error {
                as_of: Some(as_of),
                id: id.as_deref(),
                error: JsonlError { code, message },
            },
        };
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// The records in no period, as jsonl error lines with `as_of: null` (after every period:
/// they have no date to sort by).
pub fn write_unplaced_jsonl(
    out: &mut impl std::io::Write,
    unplaced: &[Rejected],
) -> std::io::Result<()> {
    for u in unplaced {
        let line = JsonlLine::Error {
            as_of: None,
            id: u.id.as_deref(),
            error: JsonlError { code: u.error.code, message: &u.error.message },
        };
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// A whole history at once: [`group`], then every period through a [`Replay`].
pub fn backtest(policy: &Policy, records: Vec<Record>, opts: Options) -> Report {
    let (periods, unplaced) = group(records);
    replay(policy, periods, unplaced, opts)
}

/// Periods already grouped (ascending, as [`group`] makes them).
pub fn replay(
    policy: &Policy,
    periods: Vec<Period>,
    unplaced: Vec<AccountError>,
    opts: Options,
) -> Report {
    let mut r = Replay::new(policy, opts);
    r.unplaced(unplaced);
    for p in periods {
        r.period(&p.as_of, p.day, p.records);
    }
    r.finish()
}

/// What a backtest answers: the replay, or both replays and their difference.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
#[schemars(title = "tierwise backtest")]
// One per request, moved once: boxing a variant would save nothing measurable.
#[allow(clippy::large_enum_variant)]
pub enum BacktestResult {
    /// One policy: `policy`, `level`, `flip_window`, `periods`, `overall`.
    Report(Report),
    /// With a candidate: `baseline`, `candidate`, `difference`.
    Comparison(Comparison),
}

/// A baseline and a candidate over the same history.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Comparison {
    pub baseline: Report,
    pub candidate: Report,
    pub difference: Difference,
}

/// Candidate minus baseline.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Difference {
    /// One sentence: what the candidate does to flip-flops, moves and alerts.
    pub headline: String,
    pub periods: Vec<PeriodDelta>,
    pub overall: OverallDelta,
}

/// One period, candidate minus baseline.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct PeriodDelta {
    pub as_of: String,
    pub accounts: i64,
    pub errors: i64,
    /// Every tier of either policy (the baseline's order, then the candidate's new ones).
    pub tiers: IndexMap<String, i64>,
    pub promoted: i64,
    pub demoted: i64,
    pub held: i64,
    pub moves_from_caps: i64,
    pub moves_from_scores: i64,
    pub flip_flops: i64,
    pub events: BTreeMap<&'static str, i64>,
    pub managers_over: i64,
}

/// The whole replay, candidate minus baseline (`null` where either side is `null`).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct OverallDelta {
    pub accounts: i64,
    pub errors: i64,
    pub moves: i64,
    pub moves_from_caps: i64,
    pub moves_from_scores: i64,
    pub flip_flops: i64,
    /// Candidate over baseline − 1 (`-0.5`: half as many); `null` when the baseline has none.
    pub flip_flops_change: Option<f64>,
    pub moves_per_account_year: Option<f64>,
    pub ever_moved_share: Option<f64>,
    pub median_stint_periods: Option<f64>,
    pub alerts_raised: i64,
    /// Candidate over baseline − 1; `null` when the baseline raises none.
    pub alerts_raised_change: Option<f64>,
    pub alerts_per_month: Option<f64>,
    pub events: BTreeMap<&'static str, i64>,
    /// Managers whose peak load or periods over capacity differ, by name.
    pub managers: Vec<ManagerDelta>,
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ManagerDelta {
    pub manager: String,
    pub peak_load: i64,
    pub periods_over: i64,
}

fn d(a: u64, b: u64) -> i64 {
    b as i64 - a as i64
}

fn d_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(b? - a?)
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (a > 0).then(|| b as f64 / a as f64 - 1.0)
}

/// `before` and `after` are replays of the same history (the same periods, by `as_of`).
pub fn compare(baseline: Report, candidate: Report) -> Comparison {
    let empty = |as_of: &str| PeriodFigures {
        as_of: as_of.to_string(),
        accounts: 0,
        errors: 0,
        tiers: IndexMap::new(),
        promoted: 0,
        demoted: 0,
        held: 0,
        moves: Moves::default(),
        flip_flops: 0,
        events: BTreeMap::new(),
        alert_events: BTreeMap::new(),
        managers_over: 0,
        rejected: Vec::new(),
    };
    let mut days: Vec<&str> =
        baseline.periods.iter().chain(&candidate.periods).map(|p| p.as_of.as_str()).collect();
    days.sort_unstable();
    days.dedup();
    let periods = days
        .iter()
        .map(|&as_of| {
            let eb = empty(as_of);
            let ec = empty(as_of);
            let b = baseline.periods.iter().find(|p| p.as_of == as_of).unwrap_or(&eb);
            let c = candidate.periods.iter().find(|p| p.as_of == as_of).unwrap_or(&ec);
            let mut tiers: IndexMap<String, i64> = IndexMap::new();
            for k in baseline
                .periods
                .first()
                .into_iter()
                .flat_map(|p| p.tiers.keys())
                .chain(candidate.periods.first().into_iter().flat_map(|p| p.tiers.keys()))
            {
                let get = |f: &PeriodFigures| f.tiers.get(k).copied().unwrap_or(0);
                tiers.insert(k.clone(), d(get(b), get(c)));
            }
            PeriodDelta {
                as_of: as_of.to_string(),
                accounts: d(b.accounts, c.accounts),
                errors: d(b.errors, c.errors),
                tiers,
                promoted: d(b.promoted, c.promoted),
                demoted: d(b.demoted, c.demoted),
                held: d(b.held, c.held),
                moves_from_caps: d(b.moves.from_caps, c.moves.from_caps),
                moves_from_scores: d(b.moves.from_scores, c.moves.from_scores),
                flip_flops: d(b.flip_flops, c.flip_flops),
                events: event_delta(&b.events, &c.events),
                managers_over: d(b.managers_over, c.managers_over),
            }
        })
        .collect();
    let (b, c) = (&baseline.overall, &candidate.overall);
    let mut managers: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for m in &b.managers {
        let e = managers.entry(&m.manager).or_default();
        e.0 -= m.peak_load as i64;
        e.1 -= m.periods_over as i64;
    }
    for m in &c.managers {
        let e = managers.entry(&m.manager).or_default();
        e.0 += m.peak_load as i64;
        e.1 += m.periods_over as i64;
    }
    let overall = OverallDelta {
        accounts: d(b.accounts, c.accounts),
        errors: d(b.errors, c.errors),
        moves: d(b.moves, c.moves),
        moves_from_caps: d(b.moves_by_cause.from_caps, c.moves_by_cause.from_caps),
        moves_from_scores: d(b.moves_by_cause.from_scores, c.moves_by_cause.from_scores),
        flip_flops: d(b.flip_flops, c.flip_flops),
        flip_flops_change: ratio(b.flip_flops, c.flip_flops),
        moves_per_account_year: d_opt(b.moves_per_account_year, c.moves_per_account_year),
        ever_moved_share: d_opt(b.ever_moved_share, c.ever_moved_share),
        median_stint_periods: d_opt(b.median_stint_periods, c.median_stint_periods),
        alerts_raised: d(b.alerts_raised, c.alerts_raised),
        alerts_raised_change: ratio(b.alerts_raised, c.alerts_raised),
        alerts_per_month: d_opt(b.alerts_per_month, c.alerts_per_month),
        events: event_delta(&b.events, &c.events),
        managers: managers
            .into_iter()
            .filter(|(_, (p, o))| *p != 0 || *o != 0)
            .map(|(m, (p, o))| ManagerDelta {
                manager: m.to_string(),
                peak_load: p,
                periods_over: o,
            })
            .collect(),
    };
    let headline = headline(b, c);
    Comparison { baseline, candidate, difference: Difference { headline, periods, overall } }
}

fn event_delta(
    b: &BTreeMap<&'static str, u64>,
    c: &BTreeMap<&'static str, u64>,
) -> BTreeMap<&'static str, i64> {
    let mut out = BTreeMap::new();
    for (k, v) in b {
        *out.entry(*k).or_default() -= *v as i64;
    }
    for (k, v) in c {
        *out.entry(*k).or_default() += *v as i64;
    }
    out
}

/// "x flip-flops instead of y (−50%)", or "as many" when equal.
fn versus(what: &str, b: u64, c: u64) -> String {
    if b == c {
        return format!("as many {what} ({c})");
    }
    match ratio(b, c) {
        Some(r) if (r + 0.5).abs() < 1e-9 => format!("half the {what} ({c} instead of {b})"),
        Some(r) if (r - 1.0).abs() < 1e-9 => format!("twice the {what} ({c} instead of {b})"),
        Some(r) => {
            let word = if r >= 0.0 { "more" } else { "fewer" };
            // Whole percents, but never a change rounded to "0%".
            let pct = (r * 100.0).abs();
            let shown = if pct >= 1.0 { format!("{pct:.0}") } else { format!("{pct:.1}") };
            format!("{shown}% {word} {what} ({c} instead of {b})")
        }
        None => format!("{c} {what} instead of none"),
    }
}

fn headline(b: &Overall, c: &Overall) -> String {
    format!(
        "the candidate makes {}, {} and raises {}",
        versus("flip-flops", b.flip_flops, c.flip_flops),
        versus("tier moves", b.moves, c.moves),
        versus("alerts", b.alerts_raised, c.alerts_raised)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versus_words() {
        assert_eq!(versus("flip-flops", 12, 6), "half the flip-flops (6 instead of 12)");
        assert_eq!(versus("alerts", 100, 130), "30% more alerts (130 instead of 100)");
        assert_eq!(versus("alerts", 100, 75), "25% fewer alerts (75 instead of 100)");
        assert_eq!(versus("alerts", 0, 3), "3 alerts instead of none");
        assert_eq!(versus("alerts", 4, 4), "as many alerts (4)");
        assert_eq!(versus("tier moves", 262, 263), "0.4% more tier moves (263 instead of 262)");
    }
}
