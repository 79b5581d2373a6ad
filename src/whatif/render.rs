//! Text forms of a [`PolicyDiff`]: a terminal table and a pull-request comment (markdown).
//!
//! Both are for people: they show the transition matrix, counts per tier, managers and the
//! `top` accounts that change (tier moves first, then by score under the baseline, then id);
//! the JSON form (serde) lists everything. Pure: a `String` out, the same bytes for the same
//! diff.

use super::text::{code, md, plain};
use super::{AccountDiff, Cause, Direction, PolicyDiff};
use crate::engine::Load;
use std::fmt::Write as _;

/// What the candidate is, in words: `policy.toml with 2 overrides`, a folder, or both.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The overrides applied, as given (`tiers.key.min_score=7.0`).
    pub overrides: Vec<String>,
    /// The candidate folder, if one was given.
    pub candidate_dir: Option<String>,
    /// What the reader must see before the figures: the candidate's new lint warnings and
    /// its failing test cases ([`crate::service::candidate::header_notes`]), one per line.
    pub notes: Vec<String>,
    /// The baseline's `capacity.tiers`: an account that leaves one of them is listed first
    /// (a key account losing its manager's attention is what a reviewer must see).
    pub capacity_tiers: Vec<String>,
}

/// A score for a sentence: at most two decimals, no trailing zeros (as the engine's reasons
/// write them).
fn num(x: f64) -> String {
    let s = format!("{x:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.to_string() }
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// `1234567.8` → `1,234,568`.
fn money(x: f64) -> String {
    let neg = x < 0.0;
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if neg && digits != "0" { format!("-{out}") } else { out }
}

fn sev(s: crate::policy::Severity) -> &'static str {
    use crate::policy::Severity::*;
    match s {
        Info => "info",
        Low => "low",
        Medium => "medium",
        High => "high",
        Critical => "critical",
    }
}

fn signed(d: i64) -> String {
    if d > 0 { format!("+{d}") } else { d.to_string() }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn load(l: Option<Load>) -> &'static str {
    l.map_or("-", Load::as_str)
}

/// The accounts to show, what matters first: accounts that leave a capacity tier (`from`
/// is one, `to` is not), other demotions, promotions, other moves, then same-tier changes;
/// within each, by score under the baseline (highest first), then id.
fn top<'a>(d: &'a PolicyDiff, ctx: &Context, n: usize) -> Vec<&'a AccountDiff> {
    let key = |t: &str| ctx.capacity_tiers.iter().any(|c| c == t);
    let group = |a: &AccountDiff| match a.direction {
        _ if key(&a.from) && !key(&a.to) => 0,
        Direction::Down => 1,
        Direction::Up => 2,
        Direction::Unranked => 3,
        Direction::Same => 4,
    };
    let mut list: Vec<&AccountDiff> = d.accounts.iter().collect();
    list.sort_by(|a, b| {
        group(a)
            .cmp(&group(b))
            .then(b.score_before.total_cmp(&a.score_before))
            .then(a.id.as_bytes().cmp(b.id.as_bytes()))
    });
    list.truncate(n);
    list
}

fn alerts_cell(a: &AccountDiff, show: impl Fn(&str) -> String) -> String {
    let mut parts: Vec<String> =
        a.alerts_added.iter().map(|x| format!("+{}", show(&x.id))).collect();
    parts.extend(a.alerts_removed.iter().map(|x| format!("-{}", show(&x.id))));
    parts.join(" ")
}

/// The reason that decided the final tier: the last one past the score's own `qualifies`
/// (a cap's when one moved the account, else the movement's; `stays <tier>` when nothing
/// happened).
fn why(reasons: &[crate::engine::Reason]) -> &str {
    reasons
        .iter()
        .rev()
        .find(|r| r.code != "stay" && r.code != "qualifies")
        .or(reasons.last())
        .map_or("", |r| r.message.as_str())
}

/// `score`, `seats freed`, `seats taken`, or empty for an account that keeps its tier.
fn cause(a: &AccountDiff) -> &'static str {
    match (a.cause, a.direction) {
        (Some(Cause::Seats), Direction::Up) => "seats freed",
        (Some(Cause::Seats), _) => "seats taken",
        (Some(Cause::Score), _) => "score",
        (None, _) => "",
    }
}

fn arrow<T: PartialEq + std::fmt::Display>(a: T, b: T) -> String {
    if a == b { a.to_string() } else { format!("{a} → {b}") }
}

/// One sentence for a reviewer: "this change promotes 12 accounts, demotes 4, puts 2 managers
/// over capacity".
pub fn headline(d: &PolicyDiff) -> String {
    let s = &d.summary;
    let mut parts = Vec::new();
    // Moves that only follow from seats (a cap freeing or taking them) are said as such: a
    // reviewer who raised one tier's bar should read "the cap freed 31 seats", not "31 scores".
    let freed = match s.seats_freed {
        0 => String::new(),
        n if n == s.promoted => " (all into seats a cap freed)".to_string(),
        n => format!(" ({n} of them into seats a cap freed)"),
    };
    let taken = match s.seats_taken {
        0 => String::new(),
        n if n == s.demoted => " (all out of seats a cap took)".to_string(),
        n => format!(" ({n} of them out of seats a cap took)"),
    };
    match (s.promoted, s.demoted) {
        (0, 0) => {}
        (p, 0) => parts.push(format!("promotes {}{freed}", plural(p, "account", "accounts"))),
        (0, d) => parts.push(format!("demotes {}{taken}", plural(d, "account", "accounts"))),
        (p, d) => parts.push(format!(
            "promotes {}{freed}, demotes {d}{taken}",
            plural(p, "account", "accounts")
        )),
    }
    if s.moved_unranked > 0 {
        parts.push(format!(
            "moves {} between tiers only one policy has",
            plural(s.moved_unranked, "account", "accounts")
        ));
    }
    // Accounts that keep their tier: a different movement (`hold` instead of `demote` when a
    // cap sends them back, ...) or different alerts.
    let same: Vec<_> = d.accounts.iter().filter(|a| a.direction == Direction::Same).collect();
    let movement = same.iter().filter(|a| a.change_before != a.change_after).count() as u64;
    if movement > 0 {
        parts.push(format!(
            "changes the movement of {}",
            plural(movement, "account that keeps its tier", "accounts that keep their tier")
        ));
    }
    if s.alerts_added > 0 {
        parts.push(format!(
            "raises new alerts on {}",
            plural(s.alerts_added, "account", "accounts")
        ));
    }
    if s.alerts_removed > 0 {
        parts.push(format!("clears alerts on {}", plural(s.alerts_removed, "account", "accounts")));
    }
    if s.managers_newly_over > 0 {
        parts.push(format!(
            "puts {} over capacity",
            plural(s.managers_newly_over, "manager", "managers")
        ));
    }
    if s.managers_no_longer_over > 0 {
        parts.push(format!(
            "brings {} back within capacity",
            plural(s.managers_no_longer_over, "manager", "managers")
        ));
    }
    if s.managers_newly_under > 0 {
        parts.push(format!(
            "leaves {} under their minimum",
            plural(s.managers_newly_under, "manager", "managers")
        ));
    }
    if s.managers_no_longer_under > 0 {
        parts.push(format!(
            "lifts {} to their minimum",
            plural(s.managers_no_longer_under, "manager", "managers")
        ));
    }
    for a in &d.portfolio_alerts.added {
        parts.push(format!("raises portfolio alert {}", code(&a.id)));
    }
    for a in &d.portfolio_alerts.removed {
        parts.push(format!("clears portfolio alert {}", code(&a.id)));
    }
    if s.newly_failing > 0 {
        parts.push(format!(
            "leaves {} without a decision",
            plural(s.newly_failing, "account", "accounts")
        ));
    }
    if s.newly_decided > 0 {
        parts.push(format!(
            "decides {} that failed before",
            plural(s.newly_decided, "account", "accounts")
        ));
    }
    match parts.len() {
        0 => "this change moves no account and changes no decision".into(),
        1 => format!("this change {}", parts[0]),
        n => format!("this change {} and {}", parts[..n - 1].join(", "), parts[n - 1]),
    }
}

fn what(ctx: &Context) -> String {
    let mut w = match &ctx.candidate_dir {
        Some(dir) => code(dir),
        None => "the baseline".into(),
    };
    if !ctx.overrides.is_empty() {
        w.push_str(&format!(
            " with {}",
            plural(ctx.overrides.len() as u64, "override", "overrides")
        ));
    }
    w
}

/// A summary for a terminal.
pub fn table(d: &PolicyDiff, ctx: &Context, limit: usize) -> String {
    let mut o = String::new();
    let s = &d.summary;
    let _ = writeln!(
        o,
        "what-if: {} {} → {} {} ({})",
        plain(&d.baseline.name),
        short(&d.baseline.hash),
        plain(&d.candidate.name),
        short(&d.candidate.hash),
        plain(&what(ctx).replace('`', ""))
    );
    for ov in &ctx.overrides {
        let _ = writeln!(o, "  --set {}", plain(ov));
    }
    for n in &ctx.notes {
        let _ = writeln!(o, "{}", plain(&n.replace('`', "")));
    }
    let _ = writeln!(o, "{}", plain(&headline(d)));
    let _ = writeln!(
        o,
        "{} accounts, {} decided under both: {} change ({} promoted, {} demoted, {} in the same tier), {} with a new score",
        s.accounts,
        s.decided_both,
        s.changed,
        s.promoted,
        s.demoted,
        s.same_tier_changed,
        s.scores_changed
    );

    let _ = writeln!(
        o,
        "\n{:<16} {:>8} {:>8} {:>7} {:>18} {:>18}",
        "tier", "before", "after", "delta", "revenue before", "revenue after"
    );
    for t in &d.tiers {
        let _ = writeln!(
            o,
            "{:<16} {:>8} {:>8} {:>7} {:>18} {:>18}",
            plain(&t.id),
            t.before,
            t.after,
            signed(t.after as i64 - t.before as i64),
            money(t.revenue_before),
            money(t.revenue_after)
        );
    }

    let m = &d.transitions;
    let width =
        m.to.iter()
            .map(|t| t.len())
            .chain(m.from.iter().map(|t| t.len()))
            .max()
            .unwrap_or(8)
            .max(8);
    let _ = writeln!(o, "\ntransitions (rows: baseline tier, columns: candidate tier)");
    let _ = write!(o, "{:<width$}", "");
    for t in &m.to {
        let _ = write!(o, " {:>width$}", plain(t));
    }
    o.push('\n');
    for (from, row) in m.from.iter().zip(&m.counts) {
        let _ = write!(o, "{:<width$}", plain(from));
        for c in row {
            let cell = if *c == 0 { ".".to_string() } else { c.to_string() };
            let _ = write!(o, " {cell:>width$}");
        }
        o.push('\n');
    }

    if !d.managers.is_empty() {
        let _ = writeln!(o, "\nmanagers whose capacity status changes");
        for mg in &d.managers {
            let count = |c: Option<u64>| c.map_or("-".to_string(), |c| c.to_string());
            let extra = if mg.overflow_after.is_empty() {
                String::new()
            } else {
                format!("  beyond max: {}", plain(&mg.overflow_after.join(", ")))
            };
            let line = format!(
                "  {:<22} {:>4} {:<5} → {:>4} {:<5}{extra}",
                plain(&mg.manager),
                count(mg.count_before),
                load(mg.status_before),
                count(mg.count_after),
                load(mg.status_after)
            );
            let _ = writeln!(o, "{}", line.trim_end());
        }
    }

    let pa = &d.portfolio_alerts;
    if !(pa.added.is_empty() && pa.removed.is_empty() && pa.changed.is_empty()) {
        let _ = writeln!(o, "\nportfolio alerts");
        for a in &pa.added {
            let _ =
                writeln!(o, "  + [{}] {}: {}", sev(a.severity), plain(&a.id), plain(&a.message));
        }
        for a in &pa.removed {
            let _ =
                writeln!(o, "  - [{}] {}: {}", sev(a.severity), plain(&a.id), plain(&a.message));
        }
        for c in &pa.changed {
            let _ = writeln!(
                o,
                "  ~ [{}] {}: {} → {}",
                sev(c.after.severity),
                plain(&c.after.id),
                plain(&c.before.message),
                plain(&c.after.message)
            );
        }
    }

    if !d.accounts.is_empty() {
        let shown = top(d, ctx, limit);
        let _ = writeln!(
            o,
            "\naccounts that change ({} of {}, --top N for more; leaving a capacity tier first, then demotions, promotions, the rest; by score under the baseline)",
            shown.len(),
            d.accounts.len()
        );
        let _ = writeln!(
            o,
            "{:<16} {:<15} {:<22} {:<18} {:<12} alerts",
            "account", "score", "tier", "change", "cause"
        );
        for a in shown {
            let score = if (a.score_before - a.score_after).abs() > 1e-9 {
                format!("{} → {}", num(a.score_before), num(a.score_after))
            } else {
                num(a.score_before)
            };
            let line = format!(
                "{:<16} {:<15} {:<22} {:<18} {:<12} {}",
                plain(&a.id),
                score,
                plain(&arrow(&a.from, &a.to)),
                arrow(a.change_before.as_str(), a.change_after.as_str()),
                cause(a),
                alerts_cell(a, |id| plain(id).into_owned())
            );
            let _ = writeln!(o, "{}", line.trim_end());
            // Why, on both sides, for an account whose tier or movement differs (an alert-only
            // change reads from its alerts cell).
            if a.from != a.to || a.change_before != a.change_after {
                let (before, after) = (plain(why(&a.reasons_before)), plain(why(&a.reasons_after)));
                if before != after {
                    let _ = writeln!(o, "    baseline:  {before}");
                }
                let _ = writeln!(o, "    candidate: {after}");
            }
        }
    }
    for (title, list) in [
        ("newly failing under the candidate", &d.newly_failing),
        ("decided under the candidate only", &d.newly_decided),
    ] {
        if !list.is_empty() {
            let _ = writeln!(o, "\n{title}");
            for f in list.iter().take(limit) {
                let _ = writeln!(
                    o,
                    "  {} (record {}, {} before): {}: {}",
                    plain(f.id.as_deref().unwrap_or("?")),
                    f.record,
                    plain(&f.tier),
                    f.error.code,
                    plain(&f.error.message)
                );
            }
            if list.len() > limit {
                let _ = writeln!(o, "  … and {} more", list.len() - limit);
            }
        }
    }
    o
}

/// A pull-request comment.
pub fn markdown(d: &PolicyDiff, ctx: &Context, limit: usize) -> String {
    let mut o = String::new();
    let s = &d.summary;
    let _ = writeln!(o, "### What-if: {} → {}\n", code(&d.baseline.name), what(ctx));
    if !ctx.overrides.is_empty() {
        for ov in &ctx.overrides {
            let _ = writeln!(o, "- {}", code(ov));
        }
        o.push('\n');
    }
    if !ctx.notes.is_empty() {
        for n in &ctx.notes {
            let _ = writeln!(o, "> **{n}**");
        }
        o.push('\n');
    }
    let mut h = headline(d);
    if let Some(first) = h.get(..1) {
        h = first.to_uppercase() + &h[1..];
    }
    let _ = writeln!(o, "**{h}.**\n");
    let _ = writeln!(
        o,
        "{} accounts; {} decided under both policies, of which {} change and {} get a new score. Baseline `{}`, candidate `{}`.\n",
        s.accounts,
        s.decided_both,
        s.changed,
        s.scores_changed,
        short(&d.baseline.hash),
        short(&d.candidate.hash)
    );

    let _ = writeln!(o, "| tier | before | after | Δ | revenue before | revenue after |");
    let _ = writeln!(o, "|---|--:|--:|--:|--:|--:|");
    for t in &d.tiers {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} |",
            md(&t.id),
            t.before,
            t.after,
            signed(t.after as i64 - t.before as i64),
            money(t.revenue_before),
            money(t.revenue_after)
        );
    }

    let m = &d.transitions;
    let _ = writeln!(o, "\n<details><summary>Transition matrix</summary>\n");
    let _ = writeln!(
        o,
        "| baseline ↓ / candidate → | {} |",
        m.to.iter().map(|t| md(t)).collect::<Vec<_>>().join(" | ")
    );
    let _ = writeln!(o, "|---|{}", "--:|".repeat(m.to.len()));
    for (from, row) in m.from.iter().zip(&m.counts) {
        let cells: Vec<String> =
            row.iter().map(|c| if *c == 0 { "·".into() } else { c.to_string() }).collect();
        let _ = writeln!(o, "| {} | {} |", md(from), cells.join(" | "));
    }
    let _ = writeln!(o, "\n</details>");

    if !d.managers.is_empty() {
        let _ = writeln!(o, "\n**Managers whose capacity status changes**\n");
        let _ = writeln!(o, "| manager | before | after | beyond max (candidate) |");
        let _ = writeln!(o, "|---|---|---|---|");
        for mg in &d.managers {
            let side = |c: Option<u64>, l: Option<Load>| match c {
                Some(c) => format!("{c} ({})", load(l)),
                None => "-".into(),
            };
            let beyond: Vec<String> = mg.overflow_after.iter().map(|id| code(id)).collect();
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} |",
                code(&mg.manager),
                side(mg.count_before, mg.status_before),
                side(mg.count_after, mg.status_after),
                beyond.join(", ")
            );
        }
    }

    let pa = &d.portfolio_alerts;
    if !(pa.added.is_empty() && pa.removed.is_empty() && pa.changed.is_empty()) {
        let _ = writeln!(o, "\n**Portfolio alerts**\n");
        for a in &pa.added {
            let _ = writeln!(o, "- ➕ {} ({}): {}", code(&a.id), sev(a.severity), md(&a.message));
        }
        for a in &pa.removed {
            let _ = writeln!(o, "- ➖ {} ({}): {}", code(&a.id), sev(a.severity), md(&a.message));
        }
        for c in &pa.changed {
            let _ = writeln!(
                o,
                "- ✏️ {} ({}): {} → {}",
                code(&c.after.id),
                sev(c.after.severity),
                md(&c.before.message),
                md(&c.after.message)
            );
        }
    }

    if !d.accounts.is_empty() {
        let shown = top(d, ctx, limit);
        let _ = writeln!(
            o,
            "\n<details><summary>{} that change (showing {}: leaving a capacity tier first, then demotions, promotions, the rest)</summary>\n",
            plural(d.accounts.len() as u64, "account", "accounts"),
            shown.len()
        );
        let _ = writeln!(
            o,
            "| account | score | tier | change | cause | alerts | why (baseline) | why (candidate) |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|");
        for a in shown {
            let score = if (a.score_before - a.score_after).abs() > 1e-9 {
                format!("{} → {}", num(a.score_before), num(a.score_after))
            } else {
                num(a.score_before)
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                code(&a.id),
                score,
                arrow(md(&a.from), md(&a.to)),
                arrow(a.change_before.as_str(), a.change_after.as_str()),
                cause(a),
                alerts_cell(a, code),
                md(why(&a.reasons_before)),
                md(why(&a.reasons_after))
            );
        }
        let _ = writeln!(o, "\n</details>");
    }
    for (title, list) in [
        ("Newly failing under the candidate", &d.newly_failing),
        ("Decided under the candidate only", &d.newly_decided),
    ] {
        if !list.is_empty() {
            let _ = writeln!(o, "\n**{title}** ({})\n", list.len());
            for f in list.iter().take(limit) {
                let _ = writeln!(
                    o,
                    "- {} (record {}): `{}`: {}",
                    code(f.id.as_deref().unwrap_or("?")),
                    f.record,
                    f.error.code,
                    md(&f.error.message)
                );
            }
        }
    }
    o
}
