//! Portfolio level: the whole book at once.
//!
//! Order (docs/policy-reference.md and docs/caps.md): validate → score → qualified tier → movement (per
//! account, on every core) → tier caps, best tier first → `total_max` → manager capacity →
//! account alerts on the final tier → aggregates → portfolio alerts. Ranking is always by
//! score descending, then id ascending (UTF-8 bytes), so input order never matters.

use super::*;
use crate::policy::{Capacity, Overflow, Priority};
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

/// Where an account stands when seats are short: fixed accounts are seated first (all of them),
/// then incumbents before entrants under `incumbents`, or both together under `score`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Seat {
    Fixed,
    Incumbent,
    Entrant,
}

/// Why an account may not go lower than its tier: movement held it, or `lower` (the tier a
/// cap, `total_max` or capacity would send it to) is more than `max_steps` below its
/// `current_tier`.
fn fixed(p: &Policy, s: &Scored, lower: usize) -> bool {
    s.held.is_some()
        || match (s.current, p.movement.max_steps) {
            (Some(c), Some(k)) => lower > c + k as usize,
            _ => false,
        }
}

fn seat(p: &Policy, s: &Scored, lower: usize) -> Seat {
    if fixed(p, s, lower) {
        Seat::Fixed
    } else if s.current == Some(s.tier) {
        Seat::Incumbent
    } else {
        Seat::Entrant
    }
}

/// Orders `members` (indices into `scored`) for seats: fixed first, then by `priority`, each
/// group by score descending, then id ascending. Returns each member's seat class, in order.
fn seat_order(
    p: &Policy,
    scored: &[Scored],
    members: Vec<usize>,
    lower: usize,
    priority: Priority,
) -> Vec<(Seat, usize)> {
    let mut order: Vec<(Seat, usize)> =
        members.into_iter().map(|i| (seat(p, &scored[i], lower), i)).collect();
    let group = |c: Seat| match (c, priority) {
        (Seat::Fixed, _) => 0u8,
        (Seat::Incumbent, _) | (Seat::Entrant, Priority::Score) => 1,
        (Seat::Entrant, Priority::Incumbents) => 2,
    };
    order
        .sort_by(|a, b| group(a.0).cmp(&group(b.0)).then_with(|| rank(&scored[a.1], &scored[b.1])));
    order
}

/// `1 account`, `5 accounts`.
fn accounts(n: u64) -> String {
    if n == 1 { "1 account".into() } else { format!("{n} accounts") }
}

/// Who was seated before whom, counted once per ordering, for the reasons.
#[derive(Clone, Copy)]
struct Groups {
    of: usize,
    fixed: usize,
    incumbents: usize,
    priority: Priority,
}

impl Groups {
    fn of(order: &[(Seat, usize)], priority: Priority) -> Self {
        let count = |c: Seat| order.iter().filter(|(x, _)| *x == c).count();
        Groups {
            of: order.len(),
            fixed: count(Seat::Fixed),
            incumbents: count(Seat::Incumbent),
            priority,
        }
    }

    /// Where the account ranked and why: `ranked 12 of 15 (an entrant: 9 incumbents are seated
    /// first, then by score)`.
    fn ranked(&self, pos: usize, class: Seat) -> String {
        let mut why = match (self.priority, class) {
            (Priority::Incumbents, Seat::Entrant) if self.incumbents > 0 => match self.incumbents {
                1 => "an entrant: the 1 incumbent goes first, then by score".to_string(),
                k => format!("an entrant: the {k} incumbents go first, then by score"),
            },
            (Priority::Incumbents, Seat::Incumbent) => "incumbents first, by score".to_string(),
            _ => "by score".to_string(),
        };
        if self.fixed > 0 && class != Seat::Fixed {
            why.push_str(&format!(", after {} that may not go lower", accounts(self.fixed as u64)));
        }
        if class == Seat::Fixed {
            why = "it may not go lower".into();
        }
        format!("ranked {pos} of {} ({why})", self.of)
    }
}

/// What keeps a fixed account where it is, for `cap_protected`.
fn protection(p: &Policy, s: &Scored, lower: usize) -> String {
    let t = &p.tiers[s.tier].id;
    match s.held {
        Some(HeldBy::Margin) => format!(
            "movement held it in {t} (within the demote margin {})",
            Num(p.movement.demote_margin)
        ),
        Some(HeldBy::Tenure) => format!(
            "movement held it in {t} (fewer than {} days in the tier)",
            p.movement.min_tenure_days
        ),
        Some(HeldBy::Hold(k)) => match p.movement.holds.get(k) {
            Some(h) => format!("movement held it in {t} (hold `{}`: {})", h.id, h.reason),
            None => format!("movement held it in {t}"),
        },
        None => {
            let k = p.movement.max_steps.unwrap_or(0);
            let cur = s.current.map_or("", |c| p.tiers[c].id.as_str());
            format!(
                "max_steps {k}: {} would be {} tiers below its current tier {cur}",
                p.tiers.get(lower).map_or("", |x| x.id.as_str()),
                lower - s.current.unwrap_or(0)
            )
        }
    }
}

/// Applies the tier caps from tier `from` down: the accounts without a seat drop to the next
/// tier (whatever its `when`) and compete there with its own accounts.
fn apply_caps(p: &Policy, scored: &mut [Scored], from: usize, n: usize) {
    let last = p.tiers.len() - 1;
    for t in from..last {
        let tier = &p.tiers[t];
        let Some(lim) = limit(tier.max_share, tier.max_count, n) else { continue };
        let members: Vec<usize> = (0..scored.len()).filter(|&i| scored[i].tier == t).collect();
        if members.len() as u64 <= lim {
            continue;
        }
        let order = seat_order(p, scored, members, t + 1, tier.cap_priority);
        let groups = Groups::of(&order, tier.cap_priority);
        let what = match (tier.max_share, tier.max_count) {
            (Some(s), Some(c)) => format!("max_share {} of {n} accounts, max_count {c}", num(s)),
            (Some(s), None) => format!("max_share {} of {n} accounts", num(s)),
            (None, Some(c)) => format!("max_count {c}"),
            (None, None) => String::new(),
        };
        let next = &p.tiers[t + 1].id;
        for (pos, &(class, i)) in order.iter().enumerate().skip(lim as usize) {
            let s = &mut scored[i];
            let rank = groups.ranked(pos + 1, class);
            if class == Seat::Fixed {
                // Re-applied after `total_max` or capacity moved accounts in: the account keeps
                // one `cap_protected`, with its latest rank.
                let message = format!(
                    "{} keeps at most {} ({what}); {rank}, so it stays {}: {}",
                    tier.id,
                    accounts(lim),
                    tier.id,
                    protection(p, s, t + 1)
                );
                match s.reasons.iter_mut().find(|r| r.code == "cap_protected") {
                    Some(r) => r.message = message,
                    None => s.reasons.push(Reason { code: "cap_protected", message }),
                }
                continue;
            }
            s.tier = t + 1;
            s.reasons.push(Reason {
                code: "cap",
                message: format!(
                    "{} keeps at most {} ({what}); {rank}, moves to {next}",
                    tier.id,
                    accounts(lim)
                ),
            });
        }
    }
}

pub(crate) struct Placed {
    pub managers: Vec<ManagerLoad>,
    pub over_cap: Vec<OverCap>,
}

/// Caps, `total_max` and manager capacity over the decided accounts.
fn place_accounts(p: &Policy, scored: &mut [Scored]) -> Placed {
    let n = scored.len();
    apply_caps(p, scored, 0, n);
    let managers = match &p.capacity {
        Some(cap) => capacity(p, cap, scored, n),
        None => Vec::new(),
    };
    // Only fixed accounts can leave a tier above its limit (nothing moves them).
    let mut counts = vec![0u64; p.tiers.len()];
    for s in scored.iter() {
        counts[s.tier] += 1;
    }
    let over_cap = p
        .tiers
        .iter()
        .zip(counts)
        .filter_map(|(t, count)| {
            let limit = limit(t.max_share, t.max_count, n)?;
            (count > limit).then(|| OverCap { tier: t.id.clone(), limit, count })
        })
        .collect();
    Placed { managers, over_cap }
}

/// `total_max`, then each manager's book against `per_manager`.
fn capacity(p: &Policy, cap: &Capacity, scored: &mut [Scored], n: usize) -> Vec<ManagerLoad> {
    let outside = &p.tiers[cap.outside].id;
    if let Some(total) = cap.total_max {
        let members: Vec<usize> = (0..n).filter(|&i| cap.in_book[scored[i].tier]).collect();
        if members.len() as u64 > total {
            let order = seat_order(p, scored, members, cap.outside, cap.priority);
            let groups = Groups::of(&order, cap.priority);
            let mut moved = false;
            for (pos, &(class, i)) in order.iter().enumerate().skip(total as usize) {
                if class == Seat::Fixed {
                    continue;
                }
                let s = &mut scored[i];
                let message = format!(
                    "the capacity tiers hold at most {} together; {}, moves from {} to {outside}",
                    accounts(total),
                    groups.ranked(pos + 1, class),
                    p.tiers[s.tier].id
                );
                s.tier = cap.outside;
                s.reasons.push(Reason { code: "total_max", message });
                moved = true;
            }
            if moved {
                apply_caps(p, scored, cap.outside, n);
            }
        }
    }

    let mut books: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, s) in scored.iter().enumerate() {
        if let Some(m) = &s.account.manager {
            let book = books.entry(m.as_str()).or_default();
            if cap.in_book[s.tier] {
                book.push(i);
            }
        }
    }
    let mut managers = Vec::with_capacity(books.len());
    let mut to_demote: Vec<(usize, String)> = Vec::new();
    for (m, members) in books {
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
            let order = seat_order(p, scored, members, cap.outside, cap.priority);
            let groups = Groups::of(&order, cap.priority);
            for (pos, &(class, i)) in order.iter().enumerate().skip(hi as usize) {
                let id = scored[i].account.id.clone();
                match cap.on_overflow {
                    Overflow::Flag => load.reassign.push(id),
                    Overflow::Demote if class == Seat::Fixed => {}
                    Overflow::Demote => {
                        load.demoted.push(id);
                        to_demote.push((i, format!(
                            "manager {m}'s book keeps at most {} in the capacity tiers; {}, moves from {} to {outside}",
                            accounts(hi),
                            groups.ranked(pos + 1, class),
                            p.tiers[scored[i].tier].id
                        )));
                    }
                }
            }
            load.reassign.sort();
            load.demoted.sort();
        }
        managers.push(load);
    }
    if !to_demote.is_empty() {
        for (i, message) in to_demote {
            let s = &mut scored[i];
            s.tier = cap.outside;
            s.reasons.push(Reason { code: "capacity", message });
        }
        apply_caps(p, scored, cap.outside, n);
    }
    managers
}

fn final_change(s: &Scored) -> Change {
    match s.current {
        None => Change::New,
        Some(c) if s.tier == c => {
            if s.held.is_some() {
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
    Failed(Box<AccountError>, bool, Option<String>),
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
            Err(e) => Err(Slot::Failed(Box::new(e.clone()), false, e.id.clone())),
            Ok(s) if dup.get(i).copied().unwrap_or(false) => {
                Err(Slot::Failed(Box::new(duplicate_error(&s.id)), true, Some(s.id.clone())))
            }
            Ok(s) if crate::script::budget_spent() => {
                Err(Slot::Failed(Box::new(super::budget_spent(&s.id)), true, Some(s.id.clone())))
            }
            Ok(s) => snapshot::validate(policy, s)
                .and_then(|a| ctx.score_and_move(a))
                .map_err(|e| Slot::Failed(Box::new(e), true, Some(s.id.clone()))),
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
                Slot::Failed(e, _, _) => Err(*e),
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
    let over_cap = book.over_cap;
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
        over_cap,
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
