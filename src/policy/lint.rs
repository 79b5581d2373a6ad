//! Lint: rules that load but cannot do what their author meant (`tierwise check` warnings).
//!
//! Checked here, on the compiled rules (the simpler ones — zero weight, a `min_score` above
//! the scale, thresholds not descending — are found while compiling):
//! - a tier (or hold) whose `when` holds for no account: when every input the condition reads
//!   has a small finite domain (`bool`, `one_of`, a narrow integer range, plus `()` when
//!   optional) and it calls no function, the condition is evaluated for every combination, in
//!   the sandbox. Conditions that read anything else are not judged (no false alarm, no
//!   solver);
//! - a tier no score qualifies for, because a tier above it without a `when` needs no more;
//! - a tier whose caps keep no account (`max_share = 0`, `max_count = 0`);
//! - a `cap_priority` on a tier without a cap, or a `[capacity] priority` without
//!   `total_max` or `per_manager.max`: there is never a full tier or book for it to order;
//! - capacity that cannot be met: the capacity tiers hold fewer accounts together
//!   (`total_max`, or the sum of their `max_count`) than `per_manager.min`, so every manager
//!   ends `under`.
//!
//! Warnings never stop a load: the policy may be a work in progress.

use super::raw::{InputType, Loc, RawCapacity, RawTier, Scalar};
use super::{Capacity, Expr, Input, Tier};
use crate::script::{self, Limits};
use rhai::{Dynamic, Engine};
use std::collections::BTreeSet;
use std::ops::Range;

/// One warning, placed at a span of `policy.toml`.
pub(crate) struct Finding {
    pub code: &'static str,
    pub span: Option<Range<usize>>,
    pub rule: String,
    pub message: String,
    pub help: Option<String>,
}

/// Combinations of input values tried at most, per condition.
const MAX_COMBINATIONS: usize = 512;

/// Does the source call a function (`name(`)? Such conditions are not judged: a script
/// function could spend its whole sandbox budget on every combination (a hostile candidate
/// would make loading slow), and a condition without calls is a plain expression that cannot
/// loop.
fn calls_a_function(source: &str) -> bool {
    let b = source.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_alphabetic() || b[i] == b'_' {
            let mut j = i;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                j += 1;
            }
            let mut k = j;
            while k < b.len() && b[k] == b' ' {
                k += 1;
            }
            if k < b.len() && b[k] == b'(' {
                return true;
            }
            i = j;
        } else {
            i += 1;
        }
    }
    false
}

/// The values an input can take when there are few of them, as expressions see them.
fn domain(inp: &Input) -> Option<Vec<Dynamic>> {
    let as_dynamic = |s: &Scalar| -> Option<Dynamic> {
        Some(match (s, inp.ty) {
            (Scalar::Bool(b), InputType::Bool) => Dynamic::from(*b),
            (Scalar::Integer(i), InputType::Integer) => Dynamic::from(*i),
            (Scalar::Number(f), InputType::Integer) => Dynamic::from(*f as i64),
            (Scalar::Integer(i), InputType::Number) => Dynamic::from(*i as f64),
            (Scalar::Number(f), InputType::Number) => Dynamic::from(*f),
            (Scalar::String(s), InputType::String | InputType::Date) => Dynamic::from(s.clone()),
            _ => return None,
        })
    };
    let mut values: Vec<Dynamic> = match (&inp.one_of, inp.ty) {
        (Some(list), _) => list.iter().map(as_dynamic).collect::<Option<_>>()?,
        (None, InputType::Bool) => vec![Dynamic::from(true), Dynamic::from(false)],
        (None, InputType::Integer) => {
            let (lo, hi) = (inp.min?, inp.max?);
            if hi - lo > 32.0 {
                return None;
            }
            (lo as i64..=hi as i64).map(Dynamic::from).collect()
        }
        _ => return None,
    };
    if inp.optional && inp.default.is_none() {
        values.push(Dynamic::UNIT);
    }
    Some(values)
}

/// The inputs an expression's source names (an over-approximation: a name inside a string
/// literal counts too, which only makes the check give up more often).
fn inputs_read(source: &str, inputs: &[Input]) -> BTreeSet<usize> {
    let words: BTreeSet<&str> = source
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect();
    inputs
        .iter()
        .enumerate()
        .filter(|(_, i)| words.contains(i.name.as_str()))
        .map(|(k, _)| k)
        .collect()
}

/// `Some(false)` when the condition is false for every combination of the values of the
/// inputs it reads; `None` when that cannot be decided cheaply (or some combination errs).
pub(crate) fn ever_holds(
    expr: &Expr,
    inputs: &[Input],
    engine: &Engine,
    limits: &Limits,
) -> Option<bool> {
    if calls_a_function(&expr.source) {
        return None;
    }
    let read: Vec<usize> = inputs_read(&expr.source, inputs).into_iter().collect();
    let domains: Vec<Vec<Dynamic>> =
        read.iter().map(|&i| domain(&inputs[i])).collect::<Option<_>>()?;
    let total = domains.iter().try_fold(1usize, |acc, d| acc.checked_mul(d.len().max(1)))?;
    if total > MAX_COMBINATIONS {
        return None;
    }
    let mut values = vec![Dynamic::UNIT; inputs.len()];
    for n in 0..total {
        let mut k = n;
        for (slot, d) in read.iter().zip(&domains) {
            if let Some(v) = d.get(k % d.len().max(1)) {
                values[*slot] = v.clone();
            }
            k /= d.len().max(1);
        }
        script::set_account(values.clone().into(), 0, limits.time_per_account);
        match script::eval(engine, &expr.ast).ok()?.as_bool() {
            Ok(true) => return Some(true),
            Ok(false) => {}
            Err(_) => return None,
        }
    }
    Some(false)
}

/// Tier conditions that hold for no account, tiers no score qualifies for, caps that keep
/// nobody.
pub(crate) fn tiers(
    tiers: &[Tier],
    raw: &[Loc<RawTier>],
    inputs: &[Input],
    engine: &Engine,
    limits: &Limits,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let last = tiers.len().saturating_sub(1);
    for (i, (t, r)) in tiers.iter().zip(raw).enumerate() {
        let rule = format!("tiers.{}", t.id);
        if let Some(w) = &t.when
            && ever_holds(w, inputs, engine, limits) == Some(false)
        {
            out.push(Finding {
                code: "unreachable_tier",
                span: r.when.as_ref().map(|w| w.span.clone()),
                rule: rule.clone(),
                message: format!("no account can reach tier `{}`: its condition `{}` holds for no value of the inputs it reads", t.id, w.source),
                help: Some("check what it compares each input with: the input's type, and the values of its `one_of`".into()),
            });
        }
        if i < last {
            // A better tier without a condition that needs no more takes every account first.
            if let Some((j, above)) = tiers[..i].iter().enumerate().find(|(_, a)| {
                a.when.is_none()
                    && a.min_score <= t.min_score
                    && a.max_share.is_none()
                    && a.max_count.is_none()
            }) {
                out.push(Finding {
                    code: "unreachable_tier",
                    span: r.min_score.as_ref().map(|m| m.span.clone()).or_else(|| Some(r.id.span.clone())),
                    rule: rule.clone(),
                    message: format!("no score qualifies for tier `{}`: tier `{}` above it needs {} and has no `when` or cap, so it takes every account first", t.id, above.id, above.min_score),
                    help: (j + 1 == i).then(|| "give the better tier a higher `min_score`, a `when` or a cap".into()),
                });
            }
            if let Some(cp) = &r.cap_priority
                && t.max_share.is_none()
                && t.max_count.is_none()
            {
                out.push(Finding {
                    code: "priority_unused",
                    span: Some(cp.span.clone()),
                    rule: rule.clone(),
                    message: format!(
                        "`cap_priority` does nothing: tier `{}` has no `max_share` or `max_count`",
                        t.id
                    ),
                    help: Some("give the tier a cap, or remove `cap_priority`".into()),
                });
            }
            for (cap, zero, span) in [
                (
                    "max_share",
                    t.max_share == Some(0.0),
                    r.max_share.as_ref().map(|s| s.span.clone()),
                ),
                ("max_count", t.max_count == Some(0), r.max_count.as_ref().map(|s| s.span.clone())),
            ] {
                if zero {
                    out.push(Finding {
                        code: "unreachable_tier",
                        span,
                        rule: rule.clone(),
                        message: format!(
                            "`{cap} = 0`: tier `{}` keeps no account in a portfolio",
                            t.id
                        ),
                        help: None,
                    });
                }
            }
        }
    }
    out
}

/// Holds whose condition is never true: they never keep an account.
pub(crate) fn holds(
    holds: &[(String, &Expr, Option<Range<usize>>)],
    inputs: &[Input],
    engine: &Engine,
    limits: &Limits,
) -> Vec<Finding> {
    holds
        .iter()
        .filter(|(_, w, _)| ever_holds(w, inputs, engine, limits) == Some(false))
        .map(|(id, w, span)| Finding {
            code: "hold_never_applies",
            span: span.clone(),
            rule: format!("movement.holds.{id}"),
            message: format!("hold `{id}` never applies: its condition `{}` holds for no value of the inputs it reads", w.source),
            help: None,
        })
        .collect()
}

/// Capacity that cannot be met: the capacity tiers can never hold `per_manager.min` accounts.
pub(crate) fn capacity(raw: &Loc<RawCapacity>, cap: &Capacity, tiers: &[Tier]) -> Vec<Finding> {
    let mut out = Vec::new();
    if let Some(p) = &raw.priority
        && cap.total_max.is_none()
        && cap.max.is_none()
    {
        out.push(Finding {
            code: "priority_unused",
            span: Some(p.span.clone()),
            rule: "capacity".into(),
            message:
                "`priority` does nothing: `[capacity]` has no `total_max` or `per_manager.max`"
                    .into(),
            help: None,
        });
    }
    let Some(min) = cap.min.filter(|&m| m > 0) else { return out };
    let span = raw.per_manager.as_ref().map(|p| p.span.clone());
    // The most accounts the capacity tiers can hold together, when some rule says.
    let counts: Option<u64> =
        tiers.iter().zip(&cap.in_book).filter(|(_, b)| **b).map(|(t, _)| t.max_count).sum();
    let mut bounds: Vec<(u64, String)> = Vec::new();
    if let Some(total) = cap.total_max {
        bounds.push((total, format!("`total_max` is {total}")));
    }
    if let Some(c) = counts {
        bounds.push((c, format!("their `max_count`s add up to {c}")));
    }
    if let Some((bound, why)) = bounds.into_iter().min_by_key(|b| b.0)
        && bound < min
    {
        out.push(Finding {
            code: "capacity_unmeetable",
            span,
            rule: "capacity".into(),
            message: format!("every manager will be `under`: `per_manager.min` is {min} but the capacity tiers hold at most {bound} accounts together ({why})"),
            help: None,
        });
    }
    out
}
