//! The what-if form, generated from a policy: every threshold, weight and cap a rev-ops user
//! tunes, with its current value, and the override path each one sets.
//!
//! Thresholds inside conditions (`share_of_wallet < 0.25`, `days_since(last_qbr) > 92`) are
//! found by a small scan of the rhai source: a number literal on one side of a comparison, the
//! comparison standing on its own in the condition (bounded by the start or end, a parenthesis,
//! `&&` or `||`), and the clause naming an input, `score` or a portfolio aggregate. Changing one
//! rewrites the whole `when` with that literal replaced, as a string override of the same
//! `toml_edit` path `--set` uses, so the candidate compiles (and fails) like any policy.

use crate::policy::overrides::{self, Override};
use crate::policy::{Policy, Scoring};

/// One form field.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// The form control's name: `o:` + an override path, or `w:` + a condition literal's key.
    pub name: String,
    pub label: String,
    /// The value today, as the form shows it (empty: not set in the policy).
    pub value: String,
    /// The group it is shown in (`Tiers`, `Movement`, ...).
    pub group: &'static str,
    /// A whole number (`step=1`) or any number.
    pub integer: bool,
}

/// A number literal in a condition that a form field may change.
#[derive(Debug, Clone, PartialEq)]
pub struct Literal {
    /// Byte range of the literal (with its sign) in the condition's source.
    pub start: usize,
    pub end: usize,
    pub text: String,
    /// The comparison it belongs to, as written (`days_since(last_qbr) > 92`).
    pub clause: String,
}

const AGGREGATES: &[&str] = &[
    "account_count",
    "total_revenue",
    "top_revenue_share",
    "tier_count",
    "tier_share",
    "tier_revenue",
    "managers_over",
    "managers_under",
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    Ident,
    Num,
    Cmp,
    Logic,
    Open,
    Close,
    Other,
}

fn tokens(src: &str) -> Vec<(Tok, usize, usize)> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'"' || c == b'\'' || c == b'`' {
            i += 1;
            while i < b.len() && b[i] != c {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(b.len());
            out.push((Tok::Other, start, i));
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push((Tok::Ident, start, i));
            continue;
        }
        if c.is_ascii_digit() {
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.' || b[i] == b'_') {
                i += 1;
            }
            // `1e6`
            if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
                i += 1;
                if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
                    i += 1;
                }
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            out.push((Tok::Num, start, i));
            continue;
        }
        let two = src.get(i..i + 2).unwrap_or("");
        let (kind, len) = match two {
            ">=" | "<=" | "==" | "!=" => (Tok::Cmp, 2),
            "&&" | "||" => (Tok::Logic, 2),
            _ => match c {
                b'>' | b'<' => (Tok::Cmp, 1),
                b'(' => (Tok::Open, 1),
                b')' => (Tok::Close, 1),
                _ => (Tok::Other, 1),
            },
        };
        i += len;
        // Keep multi-byte characters whole (the source is UTF-8).
        while i < b.len() && !src.is_char_boundary(i) {
            i += 1;
        }
        out.push((kind, start, i));
    }
    out
}

/// The thresholds of a condition: number literals compared with an input, `score` or an
/// aggregate, each comparison standing alone.
pub fn literals(src: &str, names: &[&str]) -> Vec<Literal> {
    let t = tokens(src);
    let text = |k: usize| t.get(k).map_or("", |&(_, s, e)| &src[s..e]);
    let kind = |k: Option<usize>| k.and_then(|k| t.get(k)).map(|x| x.0);
    let bound_left = |k: Option<usize>| matches!(kind(k), None | Some(Tok::Open | Tok::Logic));
    let bound_right = |k: usize| matches!(kind(Some(k)), None | Some(Tok::Close | Tok::Logic));
    let mut out = Vec::new();
    for (n, &(tk, s, e)) in t.iter().enumerate() {
        if tk != Tok::Num {
            continue;
        }
        // A sign directly before the literal belongs to it.
        let (start, before) = match n.checked_sub(1) {
            Some(m) if text(m) == "-" => (t[m].1, m.checked_sub(1)),
            m => (s, m),
        };
        // `... OP literal` up to a boundary on the right.
        let clause = if kind(before) == Some(Tok::Cmp) && bound_right(n + 1) {
            let mut k = before.unwrap_or(0);
            let mut depth = 0i32;
            while k > 0 {
                let p = k - 1;
                match kind(Some(p)) {
                    Some(Tok::Close) => depth += 1,
                    Some(Tok::Open) if depth == 0 => break,
                    Some(Tok::Open) => depth -= 1,
                    Some(Tok::Logic) if depth == 0 => break,
                    _ => {}
                }
                k = p;
            }
            Some((k, n))
        } else if kind(Some(n + 1)) == Some(Tok::Cmp) && bound_left(before) {
            // `literal OP ...` up to a boundary on the right.
            let mut k = n + 2;
            let mut depth = 0i32;
            while k < t.len() {
                match t[k].0 {
                    Tok::Open => depth += 1,
                    Tok::Close if depth == 0 => break,
                    Tok::Close => depth -= 1,
                    Tok::Logic if depth == 0 => break,
                    _ => {}
                }
                k += 1;
            }
            Some((before.map_or(0, |b| b + 1), k.saturating_sub(1)))
        } else {
            None
        };
        let Some((from, to)) = clause else { continue };
        let names_one = (from..=to).any(|k| {
            t.get(k).is_some_and(|x| x.0 == Tok::Ident)
                && (names.contains(&text(k)) || text(k) == "score" || AGGREGATES.contains(&text(k)))
        });
        if !names_one {
            continue;
        }
        let (cs, ce) = (t[from].1, t[to].2);
        out.push(Literal {
            start,
            end: e,
            text: src[start..e].to_string(),
            clause: src[cs..ce].to_string(),
        });
    }
    out
}

/// `src` with the literals at `edits` (index into [`literals`], new text) replaced.
pub fn replace_literals(src: &str, lits: &[Literal], edits: &[(usize, String)]) -> String {
    let mut edits: Vec<(&Literal, &str)> =
        edits.iter().filter_map(|(i, v)| lits.get(*i).map(|l| (l, v.as_str()))).collect();
    edits.sort_by_key(|(l, _)| std::cmp::Reverse(l.start));
    let mut out = src.to_string();
    for (l, v) in edits {
        out.replace_range(l.start..l.end, v);
    }
    out
}

fn num(x: f64) -> String {
    // As TOML would read it back: `6.0`, not `6`, so an unchanged field is not an override.
    let s = x.to_string();
    if s.contains(['.', 'e', 'E', 'i', 'N']) { s } else { format!("{s}.0") }
}

/// The conditions whose thresholds the form offers: (override path of the `when`, label,
/// source).
fn conditions(p: &Policy) -> Vec<(String, String, &str)> {
    let mut v: Vec<(String, String, &str)> = Vec::new();
    for a in &p.alerts {
        v.push((format!("alerts.{}.when", a.id), format!("alert {}", a.id), &a.when.source));
    }
    for h in &p.movement.holds {
        v.push((format!("movement.holds.{}.when", h.id), format!("hold {}", h.id), &h.when.source));
    }
    for a in &p.portfolio_alerts {
        v.push((
            format!("portfolio.alerts.{}.when", a.id),
            format!("portfolio alert {}", a.id),
            &a.when.source,
        ));
    }
    v
}

/// Every field of the what-if form for `p`, in the order shown.
pub fn fields(p: &Policy) -> Vec<Field> {
    let mut f = Vec::new();
    let mut push = |group, name: String, label: String, value: String, integer| {
        f.push(Field { name, label, value, group, integer });
    };
    let last = p.tiers.len().saturating_sub(1);
    for (i, t) in p.tiers.iter().enumerate() {
        if i == last {
            break; // the catch-all: no threshold, and a cap on it is a load error
        }
        let base = format!("o:tiers.{}", t.id);
        push(
            "Tiers",
            format!("{base}.min_score"),
            format!("{} min_score", t.id),
            num(t.min_score),
            false,
        );
        push(
            "Tiers",
            format!("{base}.max_share"),
            format!("{} max_share (fraction of the book)", t.id),
            t.max_share.map(num).unwrap_or_default(),
            false,
        );
        push(
            "Tiers",
            format!("{base}.max_count"),
            format!("{} max_count", t.id),
            t.max_count.map(|c| c.to_string()).unwrap_or_default(),
            true,
        );
    }
    let m = &p.movement;
    push(
        "Movement",
        "o:movement.promote_margin".into(),
        "promote_margin".into(),
        num(m.promote_margin),
        false,
    );
    push(
        "Movement",
        "o:movement.demote_margin".into(),
        "demote_margin".into(),
        num(m.demote_margin),
        false,
    );
    push(
        "Movement",
        "o:movement.min_tenure_days".into(),
        "min_tenure_days".into(),
        m.min_tenure_days.to_string(),
        true,
    );
    push(
        "Movement",
        "o:movement.max_steps".into(),
        "max_steps (tiers per evaluation)".into(),
        m.max_steps.map(|s| s.to_string()).unwrap_or_default(),
        true,
    );
    for c in &p.criteria {
        let how = match &c.scoring {
            Scoring::Steps { input, .. } => {
                format!("steps on {}", p.inputs.get(*input).map_or("?", |i| i.name.as_str()))
            }
            Scoring::Expr(_) => "expression".to_string(),
            Scoring::Script { function, .. } => format!("script {function}"),
        };
        push(
            "Criteria weights",
            format!("o:score.criteria.{}.weight", c.id),
            format!("{} weight ({how})", c.id),
            num(c.weight),
            false,
        );
    }
    if let Some(cap) = &p.capacity {
        let o = |x: Option<u64>| x.map(|v| v.to_string()).unwrap_or_default();
        push(
            "Capacity",
            "o:capacity.per_manager.min".into(),
            "per_manager min".into(),
            o(cap.min),
            true,
        );
        push(
            "Capacity",
            "o:capacity.per_manager.max".into(),
            "per_manager max".into(),
            o(cap.max),
            true,
        );
        push("Capacity", "o:capacity.total_max".into(), "total_max".into(), o(cap.total_max), true);
    }
    let names: Vec<&str> = p.inputs.iter().map(|i| i.name.as_str()).collect();
    for (ci, (_, label, src)) in conditions(p).iter().enumerate() {
        for (li, l) in literals(src, &names).iter().enumerate() {
            push(
                "Alert and hold thresholds",
                format!("w:{ci}:{li}"),
                format!("{label}: {}", l.clause),
                l.text.clone(),
                !l.text.contains(['.', 'e', 'E']),
            );
        }
    }
    f
}

/// The overrides a submitted form asks for: every field whose value differs from the
/// policy's (an emptied field changes nothing). Unknown names are ignored.
pub fn overrides_from_form<'a>(
    p: &Policy,
    form: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<Override> {
    let known = fields(p);
    let mut out: Vec<Override> = Vec::new();
    let mut lit_edits: std::collections::BTreeMap<usize, Vec<(usize, String)>> = Default::default();
    for (name, value) in form {
        let value = value.trim();
        let Some(field) = known.iter().find(|f| f.name == name) else { continue };
        if value.is_empty() || value == field.value {
            continue;
        }
        if let Some(path) = name.strip_prefix("o:") {
            // Same value written another way (`6` for `6.0`): not a change.
            let same = value.parse::<f64>().ok().zip(field.value.parse::<f64>().ok());
            if same.is_some_and(|(a, b)| a == b) {
                continue;
            }
            out.push(Override { path: path.to_string(), value: overrides::parse_value(value) });
        } else if let Some((c, l)) = name.strip_prefix("w:").and_then(|r| r.split_once(':'))
            && let (Ok(c), Ok(l)) = (c.parse::<usize>(), l.parse::<usize>())
        {
            // Only a number may go into a condition: the field is a threshold, not code.
            if value.parse::<f64>().is_ok_and(f64::is_finite) {
                lit_edits.entry(c).or_default().push((l, value.to_string()));
            }
        }
    }
    let names: Vec<&str> = p.inputs.iter().map(|i| i.name.as_str()).collect();
    let conds = conditions(p);
    for (c, edits) in lit_edits {
        let Some((path, _, src)) = conds.get(c) else { continue };
        let lits = literals(src, &names);
        let when = replace_literals(src, &lits, &edits);
        out.push(Override { path: path.clone(), value: toml_edit::Value::from(when) });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clauses(src: &str) -> Vec<(String, String)> {
        let names = [
            "nps",
            "nps_prev",
            "last_qbr",
            "revenue_12m",
            "revenue_prev_12m",
            "renewal_date",
            "share_of_wallet",
            "potential",
        ];
        literals(src, &names).into_iter().map(|l| (l.text, l.clause)).collect()
    }

    #[test]
    fn thresholds_are_found_in_conditions() {
        assert_eq!(
            clauses("nps != () && nps_prev != () && nps_prev - nps >= 20"),
            [("20".to_string(), "nps_prev - nps >= 20".to_string())]
        );
        assert_eq!(
            clauses("last_qbr == () || days_since(last_qbr) > 92"),
            [("92".to_string(), "days_since(last_qbr) > 92".to_string())]
        );
        // A multiplier is not a threshold.
        assert!(
            clauses("revenue_prev_12m != () && revenue_12m < 0.9 * revenue_prev_12m").is_empty()
        );
        assert_eq!(
            clauses("renewal_date != () && days_until(renewal_date) <= 90 && days_until(renewal_date) >= 0")
                .into_iter()
                .map(|c| c.0)
                .collect::<Vec<_>>(),
            ["90", "0"]
        );
        assert_eq!(clauses("score >= 5.5")[0].0, "5.5");
        assert_eq!(clauses("nps < -10")[0].0, "-10");
        assert_eq!(clauses("10 < nps")[0].1, "10 < nps");
        assert_eq!(clauses("top_revenue_share(10) > 0.30")[0].0, "0.30");
        // A literal in a string or compared with something unknown is left alone.
        assert!(clauses(r#"relationship == "5" || foo > 3"#).is_empty());
    }

    proptest::proptest! {
        /// Any condition text (policy text is untrusted): the scan never panics, every literal
        /// it finds is a number at its place, and replacing one changes only its bytes.
        #[test]
        fn any_text_scans_safely(src in "[ -~éλ→]{0,80}|[a-z_()<>=!&|. 0-9-]{0,80}") {
            let lits = literals(&src, &["nps", "a", "x_1"]);
            for (i, l) in lits.iter().enumerate() {
                proptest::prop_assert_eq!(&src[l.start..l.end], l.text.as_str());
                proptest::prop_assert!(l.text.trim_start_matches('-').starts_with(|c: char| c.is_ascii_digit()));
                let out = replace_literals(&src, &lits, &[(i, "7".into())]);
                proptest::prop_assert_eq!(&out[..l.start], &src[..l.start]);
                proptest::prop_assert_eq!(&out[l.start + 1..], &src[l.end..]);
            }
        }
    }

    #[test]
    fn replacing_keeps_the_rest() {
        let src = "days_until(renewal_date) <= 90 && days_until(renewal_date) >= 0";
        let lits = literals(src, &["renewal_date"]);
        assert_eq!(
            replace_literals(src, &lits, &[(0, "60".into())]),
            "days_until(renewal_date) <= 60 && days_until(renewal_date) >= 0"
        );
    }
}
