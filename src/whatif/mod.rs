//! What-if: one portfolio under a baseline and a candidate policy, and what differs.
//!
//! Part of the pure engine layer (docs/architecture.md, layers: engine = account eval · portfolio ·
//! diff); it only reads the engine's public results, so it sits beside `engine` rather than
//! inside it.
//!
//! [`diff`] evaluates the same records under both policies ([`evaluate_portfolio`] twice) and
//! [`compare`] turns the two results into a [`PolicyDiff`]: the accounts whose final tier,
//! `change` or alerts differ, a tier-to-tier transition matrix, counts and revenue per tier
//! before and after, managers whose capacity status changes, portfolio alerts added, removed
//! or reworded, and the accounts that fail under one policy only. Each account whose tier
//! differs says why ([`Cause`]): movement placed it differently (its score, a threshold, a
//! margin, a hold), or movement placed it the same and a cap, `total_max` or capacity gave or
//! took its seat (raising one tier's bar frees seats that the next accounts in line take).
//!
//! Pure and deterministic like the rest of the engine: both results list the records in input
//! order, so accounts are paired by position (an unreadable record has no id, yet it is the
//! same record on both sides); every list of the diff is sorted (accounts by id, managers by
//! name, alerts by id) so the same input gives the same bytes. The two policies may have
//! different tiers (a candidate folder can add one): tiers are known by id, in the order the
//! two summaries list them.

pub mod backtest;
pub mod render;
pub mod text;

use crate::engine::{
    AlertOut, Change, Load, ManagerLoad, Outcome, PolicyRef, PortfolioResult, Reason,
    evaluate_portfolio,
};
use crate::policy::Policy;
use crate::snapshot::{AccountError, Record};
use schemars::JsonSchema;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The difference a candidate policy makes to one portfolio.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[schemars(title = "tierwise what-if diff")]
pub struct PolicyDiff {
    pub baseline: Arc<PolicyRef>,
    pub candidate: Arc<PolicyRef>,
    pub summary: DiffSummary,
    /// Counts and revenue per tier, before and after: the baseline's tiers in order, then any
    /// tier only the candidate has.
    pub tiers: Vec<TierDelta>,
    /// Accounts decided under both policies, by final tier before (rows) and after (columns).
    pub transitions: TransitionMatrix,
    /// Every account decided under both policies whose final tier, `change` or alerts differ,
    /// by id.
    pub accounts: Vec<AccountDiff>,
    /// Managers whose capacity status (`under`, `ok`, `over`) differs, by name.
    pub managers: Vec<ManagerDelta>,
    pub portfolio_alerts: PortfolioAlertDelta,
    /// Accounts decided under the baseline that fail under the candidate (a newly required
    /// input, a script error), by id.
    pub newly_failing: Vec<FailureDelta>,
    /// Accounts that fail under the baseline and are decided under the candidate, by id.
    pub newly_decided: Vec<FailureDelta>,
}

/// The figures a reviewer reads first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, JsonSchema)]
pub struct DiffSummary {
    /// Records in the portfolio.
    pub accounts: u64,
    /// Records decided under both policies.
    pub decided_both: u64,
    /// Accounts listed in `accounts` (final tier, `change` or alerts differ).
    pub changed: u64,
    /// Accounts whose final tier is better under the candidate.
    pub promoted: u64,
    /// Accounts whose final tier is worse under the candidate.
    pub demoted: u64,
    /// Accounts whose final tier differs but the two tiers cannot be ranked (a tier only one
    /// policy has).
    pub moved_unranked: u64,
    /// Accounts in the same final tier whose `change` or alerts differ.
    pub same_tier_changed: u64,
    /// Accounts in another final tier because movement places them differently ([`Cause::Score`]).
    pub moved_by_score: u64,
    /// Accounts in a better tier only because a cap, `total_max` or capacity now has a seat for
    /// them ([`Cause::Seats`], up).
    pub seats_freed: u64,
    /// Accounts in a worse tier only because a cap, `total_max` or capacity no longer has a seat
    /// for them ([`Cause::Seats`], down).
    pub seats_taken: u64,
    /// Accounts decided under both whose score differs (by more than 1e-9).
    pub scores_changed: u64,
    /// Accounts that raise at least one alert they did not raise before.
    pub alerts_added: u64,
    /// Accounts that no longer raise an alert they raised before.
    pub alerts_removed: u64,
    pub newly_failing: u64,
    pub newly_decided: u64,
    /// Managers over capacity under the candidate and not under the baseline.
    pub managers_newly_over: u64,
    /// Managers over capacity under the baseline and not under the candidate.
    pub managers_no_longer_over: u64,
    /// Managers under `per_manager.min` under the candidate and not under the baseline.
    pub managers_newly_under: u64,
    /// Managers under `per_manager.min` under the baseline and not under the candidate.
    pub managers_no_longer_under: u64,
    pub portfolio_alerts_added: u64,
    pub portfolio_alerts_removed: u64,
}

/// One tier, before and after.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct TierDelta {
    pub id: String,
    pub before: u64,
    pub after: u64,
    pub revenue_before: f64,
    pub revenue_after: f64,
}

/// `counts[i][j]`: accounts in `from[i]` under the baseline and `to[j]` under the candidate.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct TransitionMatrix {
    /// The baseline's tiers, best first.
    pub from: Vec<String>,
    /// The candidate's tiers, best first.
    pub to: Vec<String>,
    pub counts: Vec<Vec<u64>>,
}

/// Which way an account's final tier moves under the candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// A better tier.
    Up,
    /// A worse tier.
    Down,
    /// The same tier; `change` or alerts differ.
    Same,
    /// A different tier that cannot be ranked against the other (only one policy has it).
    Unranked,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
            Direction::Same => "same",
            Direction::Unranked => "unranked",
        }
    }
}

/// Why an account's final tier differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Cause {
    /// Movement (score, qualified tier, margins, tenure, holds, `max_steps`) places the account in
    /// another tier under the candidate; caps may have moved it too. Also every move between
    /// tiers only one policy has.
    Score,
    /// Movement places it in the same tier under both policies: only the seats differ (a cap,
    /// `total_max` or manager capacity kept it out under one policy and not the other).
    Seats,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Score => "score",
            Cause::Seats => "seats",
        }
    }
}

/// One account whose decision differs.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct AccountDiff {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
    /// Final tier under the baseline.
    pub from: String,
    /// Final tier under the candidate.
    pub to: String,
    pub direction: Direction,
    /// Why the final tier differs; absent when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
    /// Where movement alone puts the account under the baseline, when caps or capacity then
    /// moved it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub movement_before: Option<String>,
    /// Where movement alone puts it under the candidate, when caps or capacity then moved it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub movement_after: Option<String>,
    pub score_before: f64,
    pub score_after: f64,
    pub change_before: Change,
    pub change_after: Change,
    /// Alerts the candidate raises and the baseline does not (by id).
    pub alerts_added: Vec<AlertOut>,
    /// Alerts the baseline raises and the candidate does not (by id).
    pub alerts_removed: Vec<AlertOut>,
    /// Why, under the baseline.
    pub reasons_before: Vec<Reason>,
    /// Why, under the candidate.
    pub reasons_after: Vec<Reason>,
}

/// A manager whose capacity status differs; `None` where the manager has no book (no
/// `[capacity]`, or no decided account under that policy).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ManagerDelta {
    pub manager: String,
    pub count_before: Option<u64>,
    pub count_after: Option<u64>,
    pub status_before: Option<Load>,
    pub status_after: Option<Load>,
    /// Under the candidate, the accounts beyond `per_manager.max` (`flag`: to reassign;
    /// `demote`: moved out of the capacity tiers), by id.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub overflow_after: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, JsonSchema)]
pub struct PortfolioAlertDelta {
    /// Raised under the candidate only.
    pub added: Vec<AlertOut>,
    /// Raised under the baseline only.
    pub removed: Vec<AlertOut>,
    /// Raised under both, with a different severity or message.
    pub changed: Vec<AlertChange>,
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct AlertChange {
    pub before: AlertOut,
    pub after: AlertOut,
}

/// An account decided under one policy and answered with an error under the other.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct FailureDelta {
    /// Absent when the record has no readable id.
    pub id: Option<String>,
    /// 1-based position of the record in the input.
    pub record: usize,
    /// The error, under whichever policy fails.
    pub error: AccountError,
    /// The final tier under the policy that decides it.
    pub tier: String,
}

impl PolicyDiff {
    /// No account, manager, portfolio alert or error differs. Scores alone may still differ
    /// (`summary.scores_changed`): they change no decision.
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
            && self.managers.is_empty()
            && self.portfolio_alerts.added.is_empty()
            && self.portfolio_alerts.removed.is_empty()
            && self.portfolio_alerts.changed.is_empty()
            && self.newly_failing.is_empty()
            && self.newly_decided.is_empty()
    }

    /// Some account ends in another tier, or gets a decision under one policy only: what
    /// `tierwise diff --fail-on-moves` fails on.
    pub fn has_moves(&self) -> bool {
        self.accounts.iter().any(|a| a.from != a.to)
            || !self.newly_failing.is_empty()
            || !self.newly_decided.is_empty()
    }
}

/// Evaluates `records` under both policies and compares the results.
pub fn diff(baseline: &Policy, candidate: &Policy, records: &[Record]) -> PolicyDiff {
    let before = evaluate_portfolio(baseline, records);
    let after = evaluate_portfolio(candidate, records);
    compare(&before, &after)
}

fn alert_ids(alerts: &[AlertOut]) -> BTreeSet<&str> {
    alerts.iter().map(|a| &*a.id).collect()
}

/// Alerts of `a` whose id `b` does not raise, sorted by id.
fn only_in(a: &[AlertOut], b: &[AlertOut]) -> Vec<AlertOut> {
    let ids = alert_ids(b);
    let mut out: Vec<AlertOut> = a.iter().filter(|x| !ids.contains(&*x.id)).cloned().collect();
    out.sort_by(|x, y| x.id.cmp(&y.id));
    out
}

/// Compares two results of the same records (same order) under two policies.
pub fn compare(before: &PortfolioResult, after: &PortfolioResult) -> PolicyDiff {
    let rank_before: BTreeMap<&str, usize> =
        before.summary.tiers.iter().enumerate().map(|(i, t)| (t.id.as_str(), i)).collect();
    let rank_after: BTreeMap<&str, usize> =
        after.summary.tiers.iter().enumerate().map(|(i, t)| (t.id.as_str(), i)).collect();
    // Rank two tier ids: by the candidate's order when it has both, else the baseline's.
    let direction = |from: &str, to: &str| -> Direction {
        if from == to {
            return Direction::Same;
        }
        let by = |r: &BTreeMap<&str, usize>| Some((*r.get(from)?, *r.get(to)?));
        match by(&rank_after).or_else(|| by(&rank_before)) {
            Some((f, t)) if t < f => Direction::Up,
            Some(_) => Direction::Down,
            None => Direction::Unranked,
        }
    };

    let mut s = DiffSummary {
        accounts: before.accounts.len().max(after.accounts.len()) as u64,
        ..DiffSummary::default()
    };
    let mut counts = vec![vec![0u64; after.summary.tiers.len()]; before.summary.tiers.len()];
    let mut accounts = Vec::new();
    let mut newly_failing = Vec::new();
    let mut newly_decided = Vec::new();
    for (i, (b, a)) in before.accounts.iter().zip(&after.accounts).enumerate() {
        match (b, a) {
            (Outcome::Decision(b), Outcome::Decision(a)) => {
                s.decided_both += 1;
                if let (Some(&r), Some(&c)) = (rank_before.get(&*b.tier), rank_after.get(&*a.tier))
                {
                    counts[r][c] += 1;
                }
                if (b.score - a.score).abs() > 1e-9 {
                    s.scores_changed += 1;
                }
                let added = only_in(&a.alerts, &b.alerts);
                let removed = only_in(&b.alerts, &a.alerts);
                if b.tier == a.tier
                    && b.change == a.change
                    && added.is_empty()
                    && removed.is_empty()
                {
                    continue;
                }
                let dir = direction(&b.tier, &a.tier);
                match dir {
                    Direction::Up => s.promoted += 1,
                    Direction::Down => s.demoted += 1,
                    Direction::Unranked => s.moved_unranked += 1,
                    Direction::Same => s.same_tier_changed += 1,
                }
                let (mb, ma) = (
                    b.movement_tier.as_deref().unwrap_or(&b.tier),
                    a.movement_tier.as_deref().unwrap_or(&a.tier),
                );
                let cause = match dir {
                    Direction::Same => None,
                    Direction::Up | Direction::Down if mb == ma => Some(Cause::Seats),
                    _ => Some(Cause::Score),
                };
                match (cause, dir) {
                    (Some(Cause::Seats), Direction::Up) => s.seats_freed += 1,
                    (Some(Cause::Seats), _) => s.seats_taken += 1,
                    (Some(Cause::Score), _) => s.moved_by_score += 1,
                    (None, _) => {}
                }
                s.alerts_added += u64::from(!added.is_empty());
                s.alerts_removed += u64::from(!removed.is_empty());
                accounts.push(AccountDiff {
                    id: b.id.clone(),
                    manager: a.manager.clone().or_else(|| b.manager.clone()),
                    from: b.tier.to_string(),
                    to: a.tier.to_string(),
                    direction: dir,
                    cause,
                    movement_before: b.movement_tier.as_deref().map(str::to_string),
                    movement_after: a.movement_tier.as_deref().map(str::to_string),
                    score_before: b.score,
                    score_after: a.score,
                    change_before: b.change,
                    change_after: a.change,
                    alerts_added: added,
                    alerts_removed: removed,
                    reasons_before: b.reasons.clone(),
                    reasons_after: a.reasons.clone(),
                });
            }
            (Outcome::Decision(b), Outcome::Error { id, error }) => {
                newly_failing.push(FailureDelta {
                    id: id.clone().or_else(|| Some(b.id.clone())),
                    record: i + 1,
                    error: error.clone(),
                    tier: b.tier.to_string(),
                });
            }
            (Outcome::Error { id, error }, Outcome::Decision(a)) => {
                newly_decided.push(FailureDelta {
                    id: id.clone().or_else(|| Some(a.id.clone())),
                    record: i + 1,
                    error: error.clone(),
                    tier: a.tier.to_string(),
                });
            }
            (Outcome::Error { .. }, Outcome::Error { .. }) => {}
        }
    }
    let by_id = |x: &Option<String>, y: &Option<String>| {
        x.as_deref().map(str::as_bytes).cmp(&y.as_deref().map(str::as_bytes))
    };
    accounts.sort_by(|x, y| x.id.as_bytes().cmp(y.id.as_bytes()));
    newly_failing.sort_by(|x, y| by_id(&x.id, &y.id).then(x.record.cmp(&y.record)));
    newly_decided.sort_by(|x, y| by_id(&x.id, &y.id).then(x.record.cmp(&y.record)));
    s.changed = accounts.len() as u64;
    s.newly_failing = newly_failing.len() as u64;
    s.newly_decided = newly_decided.len() as u64;

    // Tiers: the baseline's in order, then the candidate's new ones.
    let mut tiers: Vec<TierDelta> = before
        .summary
        .tiers
        .iter()
        .map(|t| TierDelta {
            id: t.id.clone(),
            before: t.count,
            after: 0,
            revenue_before: t.revenue,
            revenue_after: 0.0,
        })
        .collect();
    for t in &after.summary.tiers {
        match tiers.iter_mut().find(|d| d.id == t.id) {
            Some(d) => {
                d.after = t.count;
                d.revenue_after = t.revenue;
            }
            None => tiers.push(TierDelta {
                id: t.id.clone(),
                before: 0,
                after: t.count,
                revenue_before: 0.0,
                revenue_after: t.revenue,
            }),
        }
    }

    // Managers: both lists are sorted by name; a manager may be listed on one side only.
    let mut books: BTreeMap<&str, (Option<&ManagerLoad>, Option<&ManagerLoad>)> = BTreeMap::new();
    for m in &before.summary.managers {
        books.entry(m.manager.as_str()).or_default().0 = Some(m);
    }
    for m in &after.summary.managers {
        books.entry(m.manager.as_str()).or_default().1 = Some(m);
    }
    let mut managers = Vec::new();
    for (name, (b, a)) in books {
        let (sb, sa) = (b.map(|m| m.status), a.map(|m| m.status));
        if sb == sa {
            continue;
        }
        let over = |x: Option<Load>| x == Some(Load::Over);
        let under = |x: Option<Load>| x == Some(Load::Under);
        s.managers_newly_over += u64::from(over(sa) && !over(sb));
        s.managers_no_longer_over += u64::from(over(sb) && !over(sa));
        s.managers_newly_under += u64::from(under(sa) && !under(sb));
        s.managers_no_longer_under += u64::from(under(sb) && !under(sa));
        let overflow_after =
            a.map(|m| m.reassign.iter().chain(&m.demoted).cloned().collect()).unwrap_or_default();
        managers.push(ManagerDelta {
            manager: name.to_string(),
            count_before: b.map(|m| m.count),
            count_after: a.map(|m| m.count),
            status_before: sb,
            status_after: sa,
            overflow_after,
        });
    }

    let (pb, pa) = (&before.summary.portfolio_alerts, &after.summary.portfolio_alerts);
    let mut changed = Vec::new();
    for b in pb {
        if let Some(a) = pa.iter().find(|a| a.id == b.id)
            && (a.severity != b.severity || a.message != b.message)
        {
            changed.push(AlertChange { before: b.clone(), after: a.clone() });
        }
    }
    changed.sort_by(|x, y| x.before.id.cmp(&y.before.id));
    let portfolio_alerts =
        PortfolioAlertDelta { added: only_in(pa, pb), removed: only_in(pb, pa), changed };
    s.portfolio_alerts_added = portfolio_alerts.added.len() as u64;
    s.portfolio_alerts_removed = portfolio_alerts.removed.len() as u64;

    PolicyDiff {
        baseline: before.policy.clone(),
        candidate: after.policy.clone(),
        summary: s,
        tiers,
        transitions: TransitionMatrix {
            from: before.summary.tiers.iter().map(|t| t.id.clone()).collect(),
            to: after.summary.tiers.iter().map(|t| t.id.clone()).collect(),
            counts,
        },
        accounts,
        managers,
        portfolio_alerts,
        newly_failing,
        newly_decided,
    }
}
