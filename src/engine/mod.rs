//! The evaluation engine: `(policy, snapshots) -> decisions`, pure and deterministic.
//!
//! No I/O, no clock (the snapshot's `as_of` is "today"), no randomness; the same input gives
//! the same bytes whatever the order of the accounts. [`evaluate`] decides accounts one by one
//! (score, qualified tier, movement, alerts); [`portfolio::evaluate_portfolio`] adds what needs
//! the whole book (caps, `total_max`, manager capacity, portfolio alerts). The exact semantics
//! are the policy reference's (docs/policy-reference.md); the comments here point at the rule each branch implements.

pub mod backtest;
pub mod decision;
pub mod explain;
pub mod portfolio;
pub mod testrun;
pub mod transition;

pub use decision::*;
pub use portfolio::evaluate_portfolio;

use crate::policy::{Expr, Part, Place, Policy, Scoring, Template};
use crate::script::{self, AccountView, ScriptError};
use crate::snapshot::{self, Account, AccountError, Record};
use rayon::prelude::*;
use rhai::Dynamic;
use std::collections::HashMap;
use std::sync::Arc;

/// Batches at least this large are evaluated on every core.
const PARALLEL_MIN: usize = 256;

pub fn policy_ref(p: &Policy) -> Arc<PolicyRef> {
    p.pref
        .get_or_init(|| {
            Arc::new(PolicyRef {
                name: p.name.clone(),
                version: p.version.clone(),
                hash: p.hash.clone(),
            })
        })
        .clone()
}

/// An account after scoring and movement: what the portfolio steps work on.
#[derive(Debug, Clone)]
pub(crate) struct Scored {
    pub account: Account,
    pub score: f64,
    pub scores: Vec<f64>,
    pub qualified: usize,
    pub current: Option<usize>,
    /// Tier after movement (then after caps and capacity, at portfolio level).
    pub tier: usize,
    /// Tier after movement, before caps and capacity.
    pub movement_tier: usize,
    pub change: Change,
    /// Movement kept the account in its current tier (`hold`), and what did: caps, `total_max`
    /// and capacity never move such an account, and name this when that leaves a tier over.
    pub held: Option<HeldBy>,
    pub reasons: Vec<Reason>,
    /// Cached `when` results per tier (`None`: not evaluated).
    pub when: Vec<Option<bool>>,
}

/// What stopped a demotion, in the order movement checks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeldBy {
    /// Within `demote_margin` of the current tier's `min_score`.
    Margin,
    /// Fewer than `min_tenure_days` in the current tier.
    Tenure,
    /// `[[movement.holds]]` number `.0` (declaration order).
    Hold(usize),
}

/// A `number` or `integer` input's value as f64 (`None` for `()` or another type).
pub(crate) fn as_number(v: &Dynamic) -> Option<f64> {
    v.as_float().ok().or_else(|| v.as_int().ok().map(|i| i as f64))
}

/// Formats a figure for a sentence: at most two decimals, no trailing zeros.
pub(crate) fn num(x: f64) -> String {
    Num(x).to_string()
}

/// [`num`] as a `Display`, so reason sentences format their figures in place: a sentence has
/// two to four of them, and each `num()` would allocate twice.
#[derive(Clone, Copy)]
pub(crate) struct Num(pub f64);

impl std::fmt::Display for Num {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        struct Buf {
            b: [u8; 48],
            n: usize,
        }
        impl Write for Buf {
            fn write_str(&mut self, s: &str) -> std::fmt::Result {
                let end = self.n + s.len();
                let dst = self.b.get_mut(self.n..end).ok_or(std::fmt::Error)?;
                dst.copy_from_slice(s.as_bytes());
                self.n = end;
                Ok(())
            }
        }
        let mut buf = Buf { b: [0; 48], n: 0 };
        let owned;
        let text: &str = if write!(buf, "{:.2}", self.0).is_ok() {
            std::str::from_utf8(buf.b.get(..buf.n).unwrap_or_default()).unwrap_or_default()
        } else {
            // Huge magnitudes print hundreds of digits.
            owned = format!("{:.2}", self.0);
            &owned
        };
        let t = text.trim_end_matches('0').trim_end_matches('.');
        f.write_str(if t == "-0" { "0" } else { t })
    }
}

/// Turns a script failure into the account's error, with the place in the policy.
pub(crate) fn script_failure(id: &str, e: &ScriptError, rule: &str, at: &Place) -> AccountError {
    if script::LIMIT_CODES.contains(&e.code) {
        script::note_limit_hit(id);
    }
    let place = match (&e.source, e.position) {
        (Some(src), Some((line, col))) => {
            Place { file: src.clone(), line, column: col, rule: Some(rule.to_string()) }
        }
        (None, Some((line, col))) => Place {
            file: at.file.clone(),
            line: at.line + line.saturating_sub(1),
            // the value's place is its opening quote
            column: if line <= 1 { at.column + col } else { col },
            rule: Some(rule.to_string()),
        },
        _ => at.clone(),
    };
    let mut err = AccountError::new(Some(id), e.code, format!("{} (in `{rule}`)", e.message));
    err.rule = Some(rule.to_string());
    err.place = Some(place);
    err
}

pub(crate) struct Ctx<'p> {
    pub policy: &'p Policy,
}

impl<'p> Ctx<'p> {
    fn run(&self, id: &str, expr: &Expr) -> Result<Dynamic, AccountError> {
        if let Some(v) = expr.native.as_ref().ok().and_then(script::eval_native) {
            return Ok(v);
        }
        script::eval(&self.policy.engine, &expr.ast).map_err(|e| {
            let rule = expr.place.rule.clone().unwrap_or_default();
            script_failure(id, &ScriptError::from_rhai(&e, &self.policy.limits), &rule, &expr.place)
        })
    }

    pub fn condition(&self, id: &str, expr: &Expr) -> Result<bool, AccountError> {
        let v = self.run(id, expr)?;
        v.as_bool().map_err(|t| {
            let rule = expr.place.rule.clone().unwrap_or_default();
            let mut e = AccountError::new(
                Some(id),
                "script_error",
                format!(
                    "condition `{}` gave {t} `{v}`, not true or false (in `{rule}`)",
                    expr.source
                ),
            );
            e.rule = Some(rule);
            e.place = Some(expr.place.clone());
            e
        })
    }

    /// A message template, rendered and cut at the operator's `max_message_bytes` (with
    /// [`script::CUT_MARKER`]): parts past the cut are not evaluated.
    pub fn render(&self, id: &str, t: &Template) -> Result<String, AccountError> {
        let max = self.policy.limits.max_message_bytes;
        let mut out = String::with_capacity((t.source.len() + 16).min(max + 8));
        for part in &t.parts {
            if out.len() > max {
                break;
            }
            match part {
                Part::Text(s) => out.push_str(s),
                Part::Expr(e) => {
                    let v = self.run(id, e)?;
                    if !v.is_unit() {
                        out.push_str(&v.to_string());
                    }
                }
            }
        }
        script::cut_message(&mut out, max);
        Ok(out)
    }

    fn number(&self, id: &str, rule: &str, v: Dynamic, place: &Place) -> Result<f64, AccountError> {
        let Some(x) = as_number(&v) else {
            let mut e = AccountError::new(
                Some(id),
                "bad_score",
                format!("criterion gave {} `{v}`, not a number (in `{rule}`)", v.type_name()),
            );
            e.rule = Some(rule.to_string());
            e.place = Some(place.clone());
            return Err(e);
        };
        if x.is_nan() {
            let mut e = AccountError::new(
                Some(id),
                "bad_score",
                format!("criterion gave NaN (in `{rule}`)"),
            );
            e.rule = Some(rule.to_string());
            e.place = Some(place.clone());
            return Err(e);
        }
        let (lo, hi) = self.policy.scale;
        Ok(x.clamp(lo, hi))
    }

    /// `when` of tier `t`, evaluated at most once per account.
    fn when(&self, s: &mut Scored, t: usize) -> Result<bool, AccountError> {
        if let Some(v) = s.when[t] {
            return Ok(v);
        }
        let v = match &self.policy.tiers[t].when {
            None => true,
            Some(w) => self.condition(&s.account.id, w)?,
        };
        s.when[t] = Some(v);
        Ok(v)
    }

    /// Validate → score → qualified tier → movement.
    pub fn score_and_move(&self, account: Account) -> Result<Scored, AccountError> {
        let p = self.policy;
        script::set_account(account.values.clone(), account.as_of, p.limits.time_per_account);
        let id = account.id.clone();
        let current = match &account.current_tier {
            None => None,
            Some(t) => Some(p.tier_index(t).ok_or_else(|| {
                let known: Vec<&str> = p.tiers.iter().map(|t| t.id.as_str()).collect();
                let mut e = AccountError::new(
                    Some(&id),
                    "unknown_tier",
                    format!(
                        "`current_tier` is `{t}`, which policy `{}` does not have (tiers: {})",
                        p.name,
                        known.join(", ")
                    ),
                );
                e.field = Some("current_tier".into());
                e
            })?),
        };

        // Score: weighted mean in criteria order, unrounded.
        let (lo, hi) = p.scale;
        let mut scores = Vec::with_capacity(p.criteria.len());
        let (mut sum, mut wsum) = (0.0, 0.0);
        for c in &p.criteria {
            let sc = match &c.scoring {
                Scoring::Steps { input, at } => {
                    let v = &account.values[*input];
                    let x = as_number(v).unwrap_or(f64::NAN);
                    let n = at.iter().take_while(|&&cut| cut <= x).count();
                    lo + (hi - lo) * n as f64 / at.len() as f64
                }
                Scoring::Expr(e) => {
                    let v = self.run(&id, e)?;
                    self.number(&id, e.place.rule.as_deref().unwrap_or(""), v, &e.place)?
                }
                Scoring::Script { function, file, place, native } => {
                    let rule = place.rule.as_deref().unwrap_or("");
                    let v = match native.as_ref().ok().and_then(script::eval_native) {
                        Some(v) => Ok(v),
                        None => script::call(
                            &p.engine,
                            &p.lib,
                            function,
                            AccountView(account.values.clone()),
                        )
                        .map_err(|e| {
                            // An error raised in the function itself carries no source: it is
                            // in the file that defines the function.
                            let mut err = ScriptError::from_rhai(&e, &p.limits);
                            err.source.get_or_insert_with(|| file.clone());
                            script_failure(&id, &err, rule, place)
                        }),
                    }?;
                    self.number(&id, rule, v, place)?
                }
            };
            sum += c.weight * sc;
            wsum += c.weight;
            scores.push(sc);
        }
        let score = sum / wsum;

        let n = p.tiers.len();
        let mut s = Scored {
            account,
            score,
            scores,
            qualified: n - 1,
            current,
            tier: n - 1,
            movement_tier: n - 1,
            change: Change::None,
            held: None,
            reasons: Vec::new(),
            when: vec![None; n],
        };

        // Qualified tier: the first with score >= min_score whose `when` holds; the last
        // always qualifies. `when` is evaluated only once the score reaches min_score.
        let mut failed_when: Vec<usize> = Vec::new();
        for t in 0..n {
            if t == n - 1 {
                s.qualified = t;
                break;
            }
            if score >= p.tiers[t].min_score {
                if self.when(&mut s, t)? {
                    s.qualified = t;
                    break;
                }
                failed_when.push(t);
            }
        }
        let q = &p.tiers[s.qualified];
        for &t in &failed_when {
            let tier = &p.tiers[t];
            let cond = tier.when.as_ref().map_or("", |w| w.source.as_str());
            s.reasons.push(Reason {
                code: "condition",
                message: format!(
                    "score {} reaches {}'s {} but its condition `{cond}` does not hold",
                    Num(score),
                    tier.id,
                    Num(tier.min_score)
                ),
            });
        }
        s.reasons.push(Reason {
            code: "qualifies",
            message: if s.qualified == n - 1 && score < q.min_score {
                format!("score {} qualifies for {} (the catch-all tier)", Num(score), q.id)
            } else {
                format!("score {} qualifies for {} (needs {})", Num(score), q.id, Num(q.min_score))
            },
        });

        self.movement(&mut s)?;
        s.movement_tier = s.tier;
        Ok(s)
    }

    fn movement(&self, s: &mut Scored) -> Result<(), AccountError> {
        let p = self.policy;
        let m = &p.movement;
        let score = s.score;
        let Some(cur) = s.current else {
            s.tier = s.qualified;
            s.change = Change::New;
            s.reasons.push(Reason {
                code: "new",
                message: format!("no current tier: starts in {}", p.tiers[s.qualified].id),
            });
            return Ok(());
        };
        let max_steps = m.max_steps.map(|x| x as usize);

        // Promote: the best tier above the current one with score >= min + promote_margin
        // whose `when` holds, at most max_steps up.
        for t in 0..cur {
            let tier = &p.tiers[t];
            if score >= tier.min_score + m.promote_margin && self.when(s, t)? {
                let target = match max_steps {
                    Some(k) if cur - t > k => cur - k,
                    _ => t,
                };
                s.tier = target;
                s.change = Change::Promote;
                let margin = if m.promote_margin > 0.0 {
                    format!(" + promote margin {}", Num(m.promote_margin))
                } else {
                    String::new()
                };
                s.reasons.push(Reason {
                    code: "promote",
                    message: format!(
                        "promoted from {} to {}: score {} ≥ {}'s {}{margin}",
                        p.tiers[cur].id,
                        p.tiers[target].id,
                        Num(score),
                        tier.id,
                        Num(tier.min_score)
                    ),
                });
                if target != t {
                    s.reasons.push(Reason {
                        code: "max_steps",
                        message: format!(
                            "qualifies for {} but moves at most {} tier(s) at a time",
                            tier.id,
                            max_steps.unwrap_or(0)
                        ),
                    });
                }
                return Ok(());
            }
        }

        if s.qualified < cur {
            // Qualifies higher but not by the promote margin.
            let q = &p.tiers[s.qualified];
            s.tier = cur;
            s.change = Change::None;
            s.reasons.push(Reason {
                code: "promote_margin",
                message: format!("score {} qualifies for {} but promotion needs {} ({} + promote margin {}): stays {}", Num(score), q.id, Num(q.min_score + m.promote_margin), Num(q.min_score), Num(m.promote_margin), p.tiers[cur].id),
            });
            return Ok(());
        }

        if s.qualified > cur {
            // Demote only if below the margin or the current tier's condition fails, tenure
            // is met, and no hold applies; the first of these that stops it is the reason.
            let ct = &p.tiers[cur];
            let below = score < ct.min_score - m.demote_margin;
            let cond_fails = !below && !self.when(s, cur)?;
            if !(below || cond_fails) {
                return self.hold(s, cur, HeldBy::Margin, format!("score {} is below {}'s {} but within the demote margin {} (demotion below {}): stays {}", Num(score), ct.id, Num(ct.min_score), Num(m.demote_margin), Num(ct.min_score - m.demote_margin), ct.id));
            }
            let tenure_ok = match s.account.tier_since {
                None => true,
                Some(since) => s.account.as_of - since >= m.min_tenure_days,
            };
            if !tenure_ok {
                let days = s.account.tier_since.map_or(0, |since| s.account.as_of - since);
                return self.hold(
                    s,
                    cur,
                    HeldBy::Tenure,
                    format!(
                        "in {} for {days} days, fewer than the {} days before a demotion: stays {}",
                        ct.id, m.min_tenure_days, ct.id
                    ),
                );
            }
            for (k, h) in m.holds.iter().enumerate() {
                if self.condition(&s.account.id, &h.when)? {
                    return self.hold(
                        s,
                        cur,
                        HeldBy::Hold(k),
                        format!("hold `{}`: {}: stays {}", h.id, h.reason, ct.id),
                    );
                }
            }
            let target = match max_steps {
                Some(k) if s.qualified - cur > k => cur + k,
                _ => s.qualified,
            };
            s.tier = target;
            s.change = Change::Demote;
            let why = if below {
                if m.demote_margin > 0.0 {
                    format!(
                        "score {} < {} ({}'s {} - demote margin {})",
                        Num(score),
                        Num(ct.min_score - m.demote_margin),
                        ct.id,
                        Num(ct.min_score),
                        Num(m.demote_margin)
                    )
                } else {
                    format!("score {} < {}'s {}", Num(score), ct.id, Num(ct.min_score))
                }
            } else {
                format!(
                    "{}'s condition `{}` no longer holds",
                    ct.id,
                    ct.when.as_ref().map_or("", |w| w.source.as_str())
                )
            };
            s.reasons.push(Reason {
                code: "demote",
                message: format!("demoted from {} to {}: {why}", ct.id, p.tiers[target].id),
            });
            if target != s.qualified {
                s.reasons.push(Reason {
                    code: "max_steps",
                    message: format!(
                        "qualifies for {} but moves at most {} tier(s) at a time",
                        p.tiers[s.qualified].id,
                        max_steps.unwrap_or(0)
                    ),
                });
            }
            return Ok(());
        }

        s.tier = cur;
        s.change = Change::None;
        s.reasons.push(Reason { code: "stay", message: format!("stays {}", p.tiers[cur].id) });
        Ok(())
    }

    fn hold(
        &self,
        s: &mut Scored,
        cur: usize,
        by: HeldBy,
        message: String,
    ) -> Result<(), AccountError> {
        s.tier = cur;
        s.change = Change::Hold;
        s.held = Some(by);
        let code = match by {
            HeldBy::Margin => "margin",
            HeldBy::Tenure => "tenure",
            HeldBy::Hold(_) => "hold",
        };
        s.reasons.push(Reason { code, message });
        Ok(())
    }

    /// Account alerts on the final tier, then the decision.
    pub fn finish(&self, mut s: Scored, pref: &Arc<PolicyRef>) -> Result<Decision, AccountError> {
        let p = self.policy;
        let tier = &p.tiers[s.tier];
        script::keep_or_set_account(&s.account.values, s.account.as_of, p.limits.time_per_account);
        script::set_outcome(s.score, &tier.id_str);
        let mut alerts = Vec::new();
        for a in p.alerts.iter().filter(|a| a.applies[s.tier]) {
            if self.condition(&s.account.id, &a.when)? {
                let rule = || format!("alerts.{}", a.id);
                if alerts.len() >= p.limits.max_alerts_per_account {
                    return Err(output_limit(
                        &s.account.id,
                        rule(),
                        format!(
                            "raises more than {} alerts, the limit per account; the first past it is `{}`",
                            p.limits.max_alerts_per_account, a.key
                        ),
                    ));
                }
                let message = self.render(&s.account.id, &a.message)?;
                if !script::note_output(a.key.len() + message.len() + ALERT_OVERHEAD, &rule()) {
                    return Err(output_limit(
                        &s.account.id,
                        rule(),
                        format!(
                            "the answer would pass its limit of {} bytes; alert `{}` adds the most recent",
                            p.limits.max_response_bytes, a.key
                        ),
                    ));
                }
                alerts.push(AlertOut { id: a.key.clone(), severity: a.severity, message });
            }
        }
        let next_tier = if s.tier > 0 {
            let up = s.tier - 1;
            let t = &p.tiers[up];
            let needs = t.min_score + p.movement.promote_margin;
            // Lazy like everything else: known only if the score reached that tier's
            // min_score and its condition was evaluated for the decision.
            let when_holds = if t.when.is_some() { s.when[up] } else { None };
            Some(NextTier {
                tier: t.key.clone(),
                needs,
                gap: (needs - s.score).max(0.0),
                when: t.when_src.clone(),
                when_holds,
            })
        } else {
            None
        };
        let scores = p
            .criteria
            .iter()
            .zip(&s.scores)
            .map(|(c, &sc)| CriterionScore { id: c.key.clone(), score: sc, weight: c.weight })
            .collect();
        let a = &mut s.account;
        Ok(Decision {
            id: std::mem::take(&mut a.id),
            manager: a.manager.take(),
            policy: pref.clone(),
            score: s.score,
            scores,
            qualified_tier: p.tiers[s.qualified].key.clone(),
            previous_tier: a.current_tier.take(),
            tier: tier.key.clone(),
            change: s.change,
            reasons: s.reasons,
            alerts,
            next_tier,
            movement_tier: (s.movement_tier != s.tier)
                .then(|| p.tiers[s.movement_tier].key.clone()),
        })
    }
}

/// Bytes an alert adds to an answer beyond its id and message (keys, severity, quotes).
const ALERT_OVERHEAD: usize = 48;

/// An account stopped by an output limit (`output_limit`): too many alerts, or an answer past
/// its byte budget. Named after the rule that fans out, and counted like a sandbox limit.
fn output_limit(id: &str, rule: String, why: String) -> AccountError {
    script::note_limit_hit(id);
    let mut e = AccountError::new(Some(id), "output_limit", format!("{why} (in `{rule}`)"));
    e.rule = Some(rule);
    e
}

/// Marks every record whose id appears more than once (`duplicate_id`).
pub(crate) fn duplicates(records: &[Record]) -> Vec<bool> {
    let mut counts: HashMap<&str, u32> = HashMap::with_capacity(records.len());
    // A rejected record with an id still claims it: otherwise its valid twin would be
    // decided and the output would hold two answers for one id.
    for id in records.iter().filter_map(|r| match r {
        Ok(s) => Some(s.id.as_str()),
        Err(e) => e.id.as_deref(),
    }) {
        *counts.entry(id).or_default() += 1;
    }
    let twice = |id: Option<&str>| id.is_some_and(|id| counts.get(id).copied().unwrap_or(0) > 1);
    records
        .iter()
        .map(|r| match r {
            Ok(s) => twice(Some(&s.id)),
            Err(e) => twice(e.id.as_deref()),
        })
        .collect()
}

/// An account not evaluated because the work's [`script::Budget`] was spent before its turn:
/// a big book stops within one account's time of its deadline, whatever its size.
pub(crate) fn budget_spent(id: &str) -> AccountError {
    AccountError::new(Some(id), "time_limit", script::BUDGET_SPENT_MESSAGE)
}

pub(crate) fn duplicate_error(id: &str) -> AccountError {
    let mut e = AccountError::new(
        Some(id),
        "duplicate_id",
        format!("id `{id}` appears more than once in the input; every copy is refused"),
    );
    e.field = Some("id".into());
    e
}

/// Runs `f` over the records, on every core when there are many, keeping input order. The
/// caller's [`script::Budget`] goes with the work to every thread.
pub(crate) fn map_records<T: Send>(
    records: &[Record],
    f: impl Fn(usize, &Record) -> T + Sync + Send,
) -> Vec<T> {
    if records.len() >= PARALLEL_MIN {
        let budget = script::budget();
        records
            .par_iter()
            .enumerate()
            .with_min_len(64)
            .map(|(i, r)| script::with_budget(budget.clone(), || f(i, r)))
            .collect()
    } else {
        records.iter().enumerate().map(|(i, r)| f(i, r)).collect()
    }
}

/// Account level (`/v1/evaluate`): each account on its own — score, qualified tier,
/// movement, alerts. One outcome per record, in order.
pub fn evaluate(policy: &Policy, records: &[Record]) -> Vec<Outcome> {
    let ctx = Ctx { policy };
    let pref = policy_ref(policy);
    // One account cannot repeat itself: skip the id count (a map) for it.
    let dup = if records.len() > 1 { duplicates(records) } else { Vec::new() };
    map_records(records, |i, r| {
        let result = match r {
            Err(e) => Err(e.clone()),
            Ok(s) if dup.get(i).copied().unwrap_or(false) => Err(duplicate_error(&s.id)),
            Ok(s) if script::budget_spent() => Err(budget_spent(&s.id)),
            Ok(s) => snapshot::validate(policy, s)
                .and_then(|a| ctx.score_and_move(a))
                .and_then(|sc| ctx.finish(sc, &pref)),
        };
        match result {
            Ok(d) => Outcome::Decision(Box::new(d)),
            Err(mut e) => {
                if e.record.is_none() {
                    e.record = Some(i + 1);
                }
                Outcome::error(e)
            }
        }
    })
}
