//! Explanations in business terms: what it would take to reach the next tier, and what keeps
//! an account where it is.
//!
//! A decision already carries its arithmetic (criterion scores, weights, reasons, the score
//! the next tier needs). People ask the inverse question: "which one thing would have to
//! change?". [`explain`] answers it per criterion, one at a time, the others held: for a
//! `steps` criterion the input value of the first cut point that is enough ("revenue_12m ≥
//! 1,000,000, +250,000 from today"), for an `expr` or `script` criterion the criterion score it
//! would need (their inputs cannot be inverted in general). Each path is checked by redoing the
//! weighted mean exactly as the engine does (criteria order, f64), so a path shown as reaching
//! the tier does reach it.
//!
//! Pure: the policy, the snapshot and its decision in, an [`Explanation`] out; no rhai runs.

use super::{Decision, Num, as_number};
use crate::policy::{Policy, Scoring};
use crate::snapshot::{self, Snapshot};
use schemars::JsonSchema;
use serde::Serialize;

/// What would change the decision, and what holds it.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Explanation {
    /// The tier just above the final one and the single-criterion changes that reach it;
    /// absent for the best tier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_tier: Option<NextTierPaths>,
    /// Holds, caps and conditions that keep the account where it is (or moved it), in the
    /// decision's reason order.
    pub kept_by: Vec<Keeper>,
    /// The same in sentences, for people: the reachable paths first, then what holds it.
    pub sentences: Vec<String>,
}

/// The next tier and how to get there.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct NextTierPaths {
    pub tier: String,
    /// The score it takes (`min_score + promote_margin`).
    pub needs: f64,
    pub score: f64,
    /// `needs - score`, 0 when the score is already there.
    pub gap: f64,
    /// That tier's condition, which must hold too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when_holds: Option<bool>,
    /// One per criterion with a weight above 0, in criteria order.
    pub paths: Vec<Path>,
}

/// One criterion changed alone.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Path {
    pub criterion: String,
    /// `steps` (an input value is given) or `score` (the criterion score it would need).
    pub kind: &'static str,
    /// `steps`: the input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// `steps`: the input's value today.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_now: Option<f64>,
    /// `steps`: the smallest value that reaches the tier (a cut point).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_needed: Option<f64>,
    pub score_now: f64,
    /// The criterion score it takes (`steps`: the score of that cut point); absent when no
    /// score on the scale is enough.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score_needed: Option<f64>,
    /// What the change adds to the account score.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adds: Option<f64>,
    /// Whether this change alone reaches the tier's score.
    pub reaches: bool,
    pub message: String,
}

/// A hold, cap or condition that shaped the decision.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Keeper {
    /// The reason's code (`margin`, `tenure`, `hold`, `cap`, `total_max`, `capacity`,
    /// `cap_protected`, `promote_margin`, `max_steps`, `condition`).
    pub code: String,
    /// `hold` (keeps it from going down), `cap` (keeps it from a better tier) or `rule`.
    pub kind: &'static str,
    /// In words, for a rev-ops reader.
    pub message: String,
    /// The engine's own reason, with its figures.
    pub detail: String,
}

/// `1234567.8` → `1,234,567.8`: figures people compare with their CRM.
pub fn grouped(x: f64) -> String {
    let text = Num(x).to_string();
    let (sign, rest) = text.strip_prefix('-').map_or(("", text.as_str()), |r| ("-", r));
    let (int, frac) = rest.split_once('.').map_or((rest, None), |(i, f)| (i, Some(f)));
    if int.len() <= 3 || !int.bytes().all(|b| b.is_ascii_digit()) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + int.len() / 3);
    out.push_str(sign);
    for (i, ch) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if let Some(f) = frac {
        out.push('.');
        out.push_str(f);
    }
    out
}

/// The weighted mean with criterion `i` scored `s` instead, as the engine sums it.
fn score_with(policy: &Policy, scores: &[f64], i: usize, s: f64) -> f64 {
    let (mut sum, mut wsum) = (0.0, 0.0);
    for (j, c) in policy.criteria.iter().enumerate() {
        let sc = if j == i { s } else { scores.get(j).copied().unwrap_or(0.0) };
        sum += c.weight * sc;
        wsum += c.weight;
    }
    sum / wsum
}

/// Explains `decision`, made under `policy` for `snapshot`.
pub fn explain(policy: &Policy, snapshot: &Snapshot, decision: &Decision) -> Explanation {
    let mut sentences = Vec::new();
    let next_tier = decision.next_tier.as_ref().map(|nt| {
        let paths = paths(policy, snapshot, decision, &nt.tier, nt.needs);
        let cond = nt.when.as_deref().map(|w| match nt.when_holds {
            Some(true) => format!("its condition `{w}` holds"),
            Some(false) => format!("its condition `{w}` does not hold today, and must too"),
            None => format!("its condition `{w}` must hold too"),
        });
        if nt.gap <= 0.0 {
            sentences.push(format!(
                "score {} already reaches {} (needs {}){}",
                Num(decision.score),
                nt.tier,
                Num(nt.needs),
                cond.as_ref().map(|c| format!("; {c}")).unwrap_or_default()
            ));
        } else {
            let reach: Vec<&Path> = paths.iter().filter(|p| p.reaches).collect();
            if reach.is_empty() {
                sentences.push(format!(
                    "no single criterion reaches {} (needs {}, +{} from today's {}): it takes several",
                    nt.tier,
                    Num(nt.needs),
                    Num(nt.gap),
                    Num(decision.score)
                ));
            }
            sentences.extend(reach.iter().map(|p| p.message.clone()));
            if let Some(c) = &cond {
                sentences.push(format!("to be {}, {c}", nt.tier));
            }
        }
        NextTierPaths {
            tier: nt.tier.to_string(),
            needs: nt.needs,
            score: decision.score,
            gap: nt.gap,
            when: nt.when.as_deref().map(str::to_string),
            when_holds: nt.when_holds,
            paths,
        }
    });
    let kept_by: Vec<Keeper> =
        decision.reasons.iter().filter_map(|r| keeper(r, decision)).collect();
    sentences.extend(kept_by.iter().map(|k| k.message.clone()));
    Explanation { next_tier, kept_by, sentences }
}

fn paths(
    policy: &Policy,
    snapshot: &Snapshot,
    decision: &Decision,
    tier: &str,
    needs: f64,
) -> Vec<Path> {
    let (lo, hi) = policy.scale;
    let scores: Vec<f64> = decision.scores.iter().map(|c| c.score).collect();
    let wsum: f64 = policy.criteria.iter().map(|c| c.weight).sum();
    let gap = needs - decision.score;
    // The typed input values, as the engine read them (defaults applied); only `steps`
    // criteria need one.
    let account = snapshot::validate(policy, snapshot).ok();
    let mut out = Vec::new();
    for (i, c) in policy.criteria.iter().enumerate() {
        if c.weight <= 0.0 {
            continue;
        }
        let now = scores.get(i).copied().unwrap_or(lo);
        let reached = |s: f64| score_with(policy, &scores, i, s) >= needs;
        let mut p = Path {
            criterion: c.id.clone(),
            kind: "score",
            input: None,
            value_now: None,
            value_needed: None,
            score_now: now,
            score_needed: None,
            adds: None,
            reaches: false,
            message: String::new(),
        };
        if gap <= 0.0 {
            p.reaches = true;
            p.message = format!("{} already reaches {tier}", c.id);
            out.push(p);
            continue;
        }
        match &c.scoring {
            Scoring::Steps { input, at } => {
                let name = policy.inputs.get(*input).map_or("?", |x| x.name.as_str());
                p.kind = "steps";
                p.input = Some(name.to_string());
                let x = account.as_ref().and_then(|a| a.values.get(*input)).and_then(as_number);
                p.value_now = x;
                let k = at.len() as f64;
                let n = x.map_or(0, |x| at.iter().take_while(|&&cut| cut <= x).count());
                // The first cut point above today's band whose score is enough.
                let found = (n + 1..=at.len()).find_map(|m| {
                    let s = lo + (hi - lo) * m as f64 / k;
                    reached(s).then(|| (at[m - 1], s))
                });
                match found {
                    Some((cut, s)) => {
                        let adds = score_with(policy, &scores, i, s) - decision.score;
                        p.value_needed = Some(cut);
                        p.score_needed = Some(s);
                        p.adds = Some(adds);
                        p.reaches = true;
                        let from = match x {
                            Some(x) => {
                                format!(", {}{} from today", sign(cut - x), grouped(cut - x))
                            }
                            None => String::new(),
                        };
                        p.message = format!(
                            "{name} ≥ {}{from}, adds {} and reaches {tier}",
                            grouped(cut),
                            Num(adds)
                        );
                    }
                    None => {
                        p.message = match at.last() {
                            Some(top) => format!(
                                "{name} alone cannot reach {tier}: even ≥ {} (the top step) falls short",
                                grouped(*top)
                            ),
                            None => format!("{name} alone cannot reach {tier}"),
                        };
                    }
                }
            }
            Scoring::Expr(_) | Scoring::Script { .. } => {
                let want = now + gap * wsum / c.weight;
                // Shown with two decimals, rounded up, so the figure shown is enough.
                let mut s = (want * 100.0).ceil() / 100.0;
                if !reached(s) {
                    s += 0.01;
                }
                if s <= hi && reached(s) {
                    let adds = score_with(policy, &scores, i, s) - decision.score;
                    p.score_needed = Some(s);
                    p.adds = Some(adds);
                    p.reaches = true;
                    p.message = format!(
                        "{} scored {} or more (today {}), adds {} and reaches {tier}",
                        c.id,
                        Num(s),
                        Num(now),
                        Num(adds)
                    );
                } else {
                    p.message = format!(
                        "{} alone cannot reach {tier}: it would need {}, above the scale's {}",
                        c.id,
                        Num(want),
                        Num(hi)
                    );
                }
            }
        }
        out.push(p);
    }
    out
}

fn sign(d: f64) -> &'static str {
    if d >= 0.0 { "+" } else { "" }
}

/// A reason that holds the account or moved it against its score, in words.
fn keeper(r: &super::Reason, d: &Decision) -> Option<Keeper> {
    let tier = &*d.tier;
    // A hold keeps the account in its current tier; a cap may still move it afterwards.
    let held_in = d.previous_tier.as_deref().unwrap_or(tier);
    let (kind, message) = match r.code {
        "margin" => (
            "hold",
            format!(
                "the demote margin keeps it in {held_in}: its score is below {held_in}'s threshold, but not by enough to demote"
            ),
        ),
        "tenure" => (
            "hold",
            format!(
                "the minimum tenure keeps it in {held_in}: it entered the tier too recently to be demoted"
            ),
        ),
        "hold" => (
            "hold",
            format!(
                "a hold keeps it in {held_in}: {}",
                r.message.split_once(": ").map_or(r.message.as_str(), |(_, rest)| rest)
            ),
        ),
        "cap_protected" => (
            "hold",
            format!("{tier} is over its cap, but this account is protected and keeps its seat"),
        ),
        "cap" => (
            "cap",
            format!(
                "the tier cap moved it to {tier}: the tier above was full and it ranked below the last seat"
            ),
        ),
        "total_max" => ("cap", format!("the total cap on key-account tiers moved it to {tier}")),
        "capacity" => ("cap", format!("its manager's book is over capacity: moved to {tier}")),
        "promote_margin" => (
            "rule",
            format!(
                "the promote margin keeps it in {tier}: it qualifies higher, but not by the margin a promotion needs"
            ),
        ),
        "max_steps" => {
            ("rule", "it moves at most the policy's max_steps tiers at a time".to_string())
        }
        "condition" => ("rule", format!("a tier's condition keeps it out: {}", r.message)),
        _ => return None,
    };
    Some(Keeper { code: r.code.to_string(), kind, message, detail: r.message.clone() })
}

#[cfg(test)]
mod tests {
    use super::grouped;

    #[test]
    fn figures_are_grouped() {
        assert_eq!(grouped(1_000_000.0), "1,000,000");
        assert_eq!(grouped(250_000.0), "250,000");
        assert_eq!(grouped(-1234.5), "-1,234.5");
        assert_eq!(grouped(999.0), "999");
        assert_eq!(grouped(0.33), "0.33");
    }
}
