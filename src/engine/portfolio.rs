//! Portfolio level: the whole book at once.
//!
//! Order (DESIGN.md, settled details): validate → score → qualified tier → movement (per
//! account, on every core) → tier caps, best tier first → `total_max` → manager capacity →
//! account alerts on the final tier → aggregates → portfolio alerts. Ranking is always by
//! score descending, then id ascending (UTF-8 bytes), so input order never matters.

use super::*;
use crate::policy::Overflow;
use crate::script::Aggregates;
use std::cmp::Ordering;
use std::collections::BTreeMap;

fn rank(a: &Scored, b: &Scored) -> Ordering {
    b.score.total_cmp(&a.score).then_with(|| a.account.id.as_bytes().cmp(b.account.id.as_bytes()))
}

/// A tier's limit: `min(floor(max_share * N + 1e-9), max_count)`; `None` when it has neither.
fn limit(max_share: Option<f64>, max_count: Option<u64>, n: usize) -> Option<u64> {
    let by_share = max_share.map(|s| (s * n as f64 + 1e-9).floor().max(0.0) as u64);
    match (by_share, max_count) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Applies the tier caps from tier `from` down: accounts over a tier's limit drop to the
/// next tier (whatever its `when`) and are ranked there with its own accounts.
fn apply_caps(p: &Policy, scored: &mut [Scored], from: usize, n: usize) {
    let last = p.tiers.len() - 1;
    for t in from..last {
        let tier = &p.tiers[t];
        let Some(lim) = limit(tier.max_share, tier.max_count, n) else { continue };
        let mut members: Vec<usize> = (0..scored.len()).filter(|&i| scored[i].tier == t).collect();
        if members.len() as u64 <= lim {
            continue;
        }
        members.sort_by(|&a, &b| rank(&scored[a], &scored[b]));
        let what = match (tier.max_share, tier.max_count) {
            (Some(s), Some(c)) => format!("max_share {} of {n} accounts, max_count {c}", num(s)),
            (Some(s), None) => format!("max_share {} of {n} accounts", num(s)),
            (None, Some(c)) => format!("max_count {c}"),
            (None, None) => String::new(),
        };
        for (pos, &i) in members.iter().enumerate().skip(lim as usize) {
            let s = &mut scored[i];
            s.tier = t + 1;
            s.reasons.push(Reason {
                code: "cap",
                message: format!(
                    "{} keeps at most {lim} accounts ({what}); ranked {} by score, moves to {}",
                    tier.id,
                    pos + 1,
                    p.tiers[t + 1].id
                ),
            });
        }
    }
}

pub(crate) struct Placed {
    pub managers: Vec<ManagerLoad>,
}

/// Caps, `total_max` and manager capacity over the decided accounts.
fn place_accounts(p: &Policy, scored: &mut [Scored]) -> Placed {
    let n = scored.len();
    apply_caps(p, scored, 0, n);
    let Some(cap) = &p.capacity else { return Placed { managers: Vec::new() } };

    if let Some(total) = cap.total_max {
        let mut members: Vec<usize> = (0..n).filter(|&i| cap.in_book[scored[i].tier]).collect();
        if members.len() as u64 > total {
            members.sort_by(|&a, &b| rank(&scored[a], &scored[b]));
            for (pos, &i) in members.iter().enumerate().skip(total as usize) {
                let s = &mut scored[i];
                let from = p.tiers[s.tier].id.clone();
                s.tier = cap.outside;
                s.reasons.push(Reason {
                    code: "total_max",
                    message: format!("the capacity tiers hold at most {total} accounts together; ranked {} by score, moves from {from} to {}", pos + 1, p.tiers[cap.outside].id),
                });
            }
            apply_caps(p, scored, cap.outside, n);
        }
    }

    let mut books: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, s) in scored.iter().enumerate() {
        if let Some(m) = &s.account.manager {
            books.entry(m.as_str()).or_default();
            if cap.in_book[s.tier] {
                books.entry(m.as_str()).or_default().push(i);
            }
        }
    }
    let mut managers = Vec::with_capacity(books.len());
    let mut to_demote: Vec<(usize, String)> = Vec::new();
    for (m, mut members) in books {
        let count = members.len() as u64;
        let status = match (cap.min, cap.max) {
            (Some(lo), _) if count < lo => Load::Under,
            (_, Some(hi)) if count > hi => Load::Over,
            _ => Load::Ok,
        };
        let mut load = ManagerLoad {
            manager: m.to_string(),
            count,
            status,
            reassign: Vec::new(),
            demoted: Vec::new(),
        };
        if let Some(hi) = cap.max
            && count > hi
        {
            members.sort_by(|&a, &b| rank(&scored[a], &scored[b]));
            for &i in &members[hi as usize..] {
                let id = scored[i].account.id.clone();
                match cap.on_overflow {
                    Overflow::Flag => load.reassign.push(id),
                    Overflow::Demote => {
                        load.demoted.push(id);
                        to_demote.push((i, m.to_string()));
                    }
                }
            }
            load.reassign.sort();
            load.demoted.sort();
        }
        managers.push(load);
    }
    if !to_demote.is_empty() {
        let max = cap.max.unwrap_or(0);
        for (i, m) in to_demote {
            let s = &mut scored[i];
            let from = p.tiers[s.tier].id.clone();
            s.tier = cap.outside;
            s.reasons.push(Reason {
                code: "capacity",
                message: format!("manager {m} carries more than {max} accounts in the capacity tiers; among the lowest scores of the book, moves from {from} to {}", p.tiers[cap.outside].id),
            });
        }
        apply_caps(p, scored, cap.outside, n);
    }
    Placed { managers }
}

fn final_change(s: &Scored) -> Change {
    match s.current {
        None => Change::New,
        Some(c) if s.tier == c => {
            if s.held {
                Change::Hold
            } else {
                Change::None
            }
        }
        Some(c) if s.tier < c => Change::Promote,
        Some(_) => Change::Demote,
    }
}

/// Portfolio level (`/v1/portfolio`): everything [`evaluate`] does, then caps by rank,
/// `total_max`, manager capacity, alerts on the final tier, aggregates and portfolio alerts.
pub fn evaluate_portfolio(policy: &Policy, records: &[Record]) -> PortfolioResult {
    let mut b = Book::new(policy);
    b.push(records);
    let (policy_ref, summary, accounts) = b.finish(|o| o);
    PortfolioResult { policy: policy_ref, summary, accounts }
}

/// What a record became before the book-wide steps.
enum Slot {
    /// The record could not be read; `bool`: it is a snapshot (a read error keeps its own
    /// error even when its id repeats).
    Failed(AccountError, bool, Option<String>),
    /// Index into [`Book::scored`].
    Scored(usize),
}

/// A book evaluated as its records arrive: each chunk pushed is validated, scored and moved
/// at once (on every core), so the caller can drop its raw snapshots before reading the
/// next; the book-wide steps run in [`Book::finish`], which hands each finished outcome to
/// the caller's function instead of keeping it (a caller that writes them out holds their
/// bytes, not the decisions). Duplicate ids are found over the whole book, at the end.
pub struct Book<'p> {
    policy: &'p Policy,
    slots: Vec<Slot>,
    scored: Vec<Scored>,
}

impl<'p> Book<'p> {
    pub fn new(policy: &'p Policy) -> Self {
        Book { policy, slots: Vec::new(), scored: Vec::new() }
    }

    /// Validate → score → qualified tier → movement for the next records of the book.
    pub fn push(&mut self, records: &[Record]) {
        let ctx = Ctx { policy: self.policy };
        let policy = self.policy;
        // Repeats within the chunk are not evaluated at all (a hostile copy cannot spend the
        // budget); repeats across chunks are found in `finish`.
        let dup = duplicates(records);
        let first: Vec<Result<Scored, Slot>> = map_records(records, |i, r| match r {
            Err(e) => Err(Slot::Failed(e.clone(), false, e.id.clone())),
            Ok(s) if dup.get(i).copied().unwrap_or(false) => {
                Err(Slot::Failed(duplicate_error(&s.id), true, Some(s.id.clone())))
            }
            Ok(s) if crate::script::budget_spent() => {
                Err(Slot::Failed(super::budget_spent(&s.id), true, Some(s.id.clone())))
            }
            Ok(s) => snapshot::validate(policy, s)
                .and_then(|a| ctx.score_and_move(a))
                .map_err(|e| Slot::Failed(e, true, Some(s.id.clone()))),
        });
        self.slots.reserve(first.len());
        for r in first {
            match r {
                Ok(sc) => {
                    self.slots.push(Slot::Scored(self.scored.len()));
                    self.scored.push(sc);
                }
                Err(slot) => self.slots.push(slot),
            }
        }
    }

    /// The book-wide steps, then each outcome through `f` (on every core, in input order),
    /// with the policy and the summary.
    pub fn finish<T: Send>(
        self,
        f: impl Fn(Outcome) -> T + Sync + Send,
    ) -> (Arc<PolicyRef>, Summary, Vec<T>) {
        let Book { policy, slots, scored } = self;
        let ctx = Ctx { policy };
        let pref = policy_ref(policy);

        // An id given twice makes every copy that is a snapshot an error.
        let dup = {
            let mut counts: HashMap<&str, u32> = HashMap::with_capacity(slots.len());
            for slot in &slots {
                let id = match slot {
                    Slot::Failed(_, _, id) => id.as_deref(),
                    Slot::Scored(k) => scored.get(*k).map(|s| s.account.id.as_str()),
                };
                if let Some(id) = id {
                    *counts.entry(id).or_default() += 1;
                }
            }
            let twice: std::collections::HashSet<String> =
                counts.into_iter().filter(|(_, n)| *n > 1).map(|(id, _)| id.to_string()).collect();
            twice
        };
        let mut keep: Vec<Option<Scored>> = scored.into_iter().map(Some).collect();
        let mut scored: Vec<Scored> = Vec::with_capacity(keep.len());
        let slots: Vec<Result<usize, AccountError>> = slots
            .into_iter()
            .map(|slot| match slot {
                Slot::Failed(_, true, Some(id)) if dup.contains(&id) => Err(duplicate_error(&id)),
                Slot::Failed(e, _, _) => Err(e),
                Slot::Scored(k) => match keep.get_mut(k).and_then(Option::take) {
                    Some(s) if dup.contains(&s.account.id) => Err(duplicate_error(&s.account.id)),
                    Some(s) => {
                        scored.push(s);
                        Ok(scored.len() - 1)
                    }
                    None => Err(AccountError::new(None, "internal", "missing account")),
                },
            })
            .collect();
        drop(keep);

        let book = place_accounts(policy, &mut scored);
        for s in &mut scored {
            s.change = final_change(s);
        }
        // What the summary needs of each decided account, taken before `f` has it.
        let mut revenue = vec![0.0; slots.len()];
        for (i, slot) in slots.iter().enumerate() {
            if let Ok(k) = slot {
                revenue[i] = revenue_value(policy, &scored[*k]);
            }
        }

        // Alerts, then the outcome goes straight to `f`: the finished decisions are never
        // all held at once.
        let mut at = vec![0usize; scored.len()];
        for (i, slot) in slots.iter().enumerate() {
            if let Ok(k) = slot
                && let Some(p) = at.get_mut(*k)
            {
                *p = i;
            }
        }
        let one = |(s, i): (Scored, usize)| {
            let o = match ctx.finish(s, &pref) {
                Ok(d) => Outcome::Decision(Box::new(d)),
                Err(mut e) => {
                    if e.record.is_none() {
                        e.record = Some(i + 1);
                    }
                    Outcome::error(e)
                }
            };
            (Light::of(policy, &o), f(o))
        };
        let pairs = scored.into_iter().zip(at);
        let finished: Vec<(Option<Light>, T)> = if pairs.len() >= 256 {
            let budget = crate::script::budget();
            pairs
                .collect::<Vec<_>>()
                .into_par_iter()
                .with_min_len(64)
                .map(|p| crate::script::with_budget(budget.clone(), || one(p)))
                .collect()
        } else {
            pairs.map(one).collect()
        };
        let mut finished: Vec<Option<(Option<Light>, T)>> =
            finished.into_iter().map(Some).collect();
        let mut light: Vec<Option<Light>> = Vec::with_capacity(slots.len());
        let mut out: Vec<T> = Vec::with_capacity(slots.len());
        for (i, slot) in slots.into_iter().enumerate() {
            match slot {
                Ok(k) => match finished.get_mut(k).and_then(Option::take) {
                    Some((l, t)) => {
                        light.push(l);
                        out.push(t);
                    }
                    None => {
                        light.push(None);
                        let e = AccountError::new(None, "internal", "missing outcome");
                        out.push(f(Outcome::error(e)));
                    }
                },
                Err(mut e) => {
                    if e.record.is_none() {
                        e.record = Some(i + 1);
                    }
                    light.push(None);
                    out.push(f(Outcome::error(e)));
                }
            }
        }
        drop(finished);
        let summary = summarize(policy, &light, &revenue, book);
        (pref, summary, out)
    }
}

/// What the summary reads of one decision.
struct Light {
    tier: Option<usize>,
    change: Change,
    moved: Option<Move>,
}

impl Light {
    fn of(policy: &Policy, o: &Outcome) -> Option<Light> {
        let d = o.decision()?;
        let moved = match &d.previous_tier {
            Some(prev) if **prev != *d.tier => Some(Move {
                id: d.id.clone(),
                from: prev.clone(),
                to: d.tier.to_string(),
                change: d.change,
            }),
            _ => None,
        };
        Some(Light { tier: policy.tier_index(&d.tier), change: d.change, moved })
    }
}

fn revenue_value(policy: &Policy, s: &Scored) -> f64 {
    let Some(r) = policy.revenue else { return 0.0 };
    s.account.values.get(r).and_then(as_number).unwrap_or(0.0)
}

fn summarize(
    policy: &Policy,
    accounts: &[Option<Light>],
    revenue: &[f64],
    book: Placed,
) -> Summary {
    let mut tiers: Vec<TierSummary> = policy
        .tiers
        .iter()
        .map(|t| TierSummary {
            id: t.id.clone(),
            label: t.label.clone(),
            count: 0,
            share: 0.0,
            revenue: 0.0,
        })
        .collect();
    let mut changes = ChangeCounts::default();
    let mut revenues = Vec::new();
    let mut moves = Vec::new();
    let mut errors = 0u64;
    // f64 addition is not associative: sums run over values sorted descending, never in input
    // order, so reordering the accounts cannot change a total (or flip a portfolio alert).
    let mut by_tier: Vec<Vec<f64>> = vec![Vec::new(); policy.tiers.len()];
    for (i, o) in accounts.iter().enumerate() {
        let Some(d) = o else {
            errors += 1;
            continue;
        };
        let rev = revenue.get(i).copied().unwrap_or(0.0);
        revenues.push(rev);
        if let Some(t) = d.tier {
            tiers[t].count += 1;
            by_tier[t].push(rev);
        }
        match d.change {
            Change::Promote => changes.promote += 1,
            Change::Demote => changes.demote += 1,
            Change::Hold => changes.hold += 1,
            Change::None => changes.none += 1,
            Change::New => changes.new += 1,
        }
        if let Some(m) = &d.moved {
            moves.push(m.clone());
        }
    }
    let n = revenues.len();
    for t in &mut tiers {
        t.share = if n == 0 { 0.0 } else { t.count as f64 / n as f64 };
    }
    revenues.sort_by(|a, b| b.total_cmp(a));
    // fold from +0.0: `Sum` for f64 starts at -0.0, which would print as `-0.0`.
    let total = revenues.iter().fold(0.0, |a, b| a + b);
    for (t, mut revs) in tiers.iter_mut().zip(by_tier) {
        revs.sort_by(|a, b| b.total_cmp(a));
        t.revenue = revs.iter().fold(0.0, |a, b| a + b);
    }
    moves.sort_by(|a, b| a.id.as_bytes().cmp(b.id.as_bytes()));
    // Managers are counted from decided accounts only (an alert error removes an account).
    let managers = book.managers;
    let agg = Arc::new(Aggregates {
        account_count: n as i64,
        total_revenue: total,
        revenues_desc: revenues,
        tiers: tiers.iter().map(|t| (t.id.clone(), (t.count as i64, t.revenue))).collect(),
        managers_over: managers.iter().filter(|m| m.status == Load::Over).count() as i64,
        managers_under: managers.iter().filter(|m| m.status == Load::Under).count() as i64,
    });
    let top10 = agg.top_revenue_share(10);
    let (portfolio_alerts, portfolio_errors) = portfolio_alerts(policy, agg.clone());
    Summary {
        account_count: n as u64,
        error_count: errors,
        total_revenue: total,
        top10_revenue_share: top10,
        tiers,
        changes,
        managers,
        portfolio_alerts,
        portfolio_errors,
        moves,
    }
}

fn portfolio_alerts(policy: &Policy, agg: Arc<Aggregates>) -> (Vec<AlertOut>, Vec<PortfolioError>) {
    let ctx = Ctx { policy };
    script::set_portfolio(agg, policy.limits.time_per_account);
    let mut out = Vec::new();
    let mut errs = Vec::new();
    for a in &policy.portfolio_alerts {
        let r = ctx
            .condition("", &a.when)
            .and_then(|fired| if fired { ctx.render("", &a.message).map(Some) } else { Ok(None) });
        match r {
            Ok(Some(message)) => {
                out.push(AlertOut { id: a.id.as_str().into(), severity: a.severity, message })
            }
            Ok(None) => {}
            Err(mut e) => {
                e.id = None;
                errs.push(PortfolioError { alert: a.id.clone(), error: e });
            }
        }
    }
    (out, errs)
}
