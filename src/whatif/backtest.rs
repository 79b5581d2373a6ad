//! Text forms of a backtest ([`Report`], [`Comparison`]): a terminal table and a pull-request
//! comment (markdown).
//!
//! For people: a line per period (tiers, moves by cause, flip-flops, alerts), the whole
//! replay's figures, the `top` accounts that flip-flop most and the managers over capacity;
//! with a candidate, the headline sentence and both sides with their difference. The JSON form
//! (serde) holds everything. Pure: a `String` out, the same bytes for the same report.

use crate::engine::backtest::{
    Comparison, FlipFlopper, ManagerFigures, Overall, PeriodFigures, Report,
};
use std::fmt::Write as _;

pub use super::render::Context;

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// A rate for people: two decimals at most, `-` for none.
fn rate(x: Option<f64>) -> String {
    match x {
        None => "-".into(),
        Some(x) => {
            let s = format!("{x:.2}");
            let s = s.trim_end_matches('0').trim_end_matches('.');
            if s == "-0" { "0".into() } else { s.to_string() }
        }
    }
}

fn pct(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{}%", rate(Some(x * 100.0))))
}

fn signed(d: i64) -> String {
    if d > 0 { format!("+{d}") } else { d.to_string() }
}

/// A difference of rates: three decimals at most, so a small change does not read `+0`.
fn signed_f(d: Option<f64>) -> String {
    let Some(x) = d else { return "-".into() };
    let s = format!("{x:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    match s {
        "0" | "-0" => "0".into(),
        s if x > 0.0 => format!("+{s}"),
        s => s.to_string(),
    }
}

fn signed_pct(d: Option<f64>) -> String {
    match d {
        Some(x) if x > 0.0 => format!("+{}", pct(Some(x))),
        other => pct(other),
    }
}

fn md(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn ev(p: &PeriodFigures, kind: &str) -> u64 {
    p.events.get(kind).copied().unwrap_or(0)
}

pub fn title(r: &Report) -> String {
    let o = &r.overall;
    let span = match (&o.first_as_of, &o.last_as_of) {
        (Some(a), Some(b)) if a != b => format!("{a} … {b} ({} days)", o.span_days),
        (Some(a), _) => a.clone(),
        _ => "no period".into(),
    };
    format!(
        "`{}` {} at {} level: {} period{}, {span}; {} accounts decided at least once",
        r.policy.name,
        short(&r.policy.hash),
        r.level.as_str(),
        o.periods,
        if o.periods == 1 { "" } else { "s" },
        o.accounts
    )
}

/// The whole replay in sentences (shared by both forms).
pub fn overall_lines(o: &Overall, window: u32) -> Vec<String> {
    vec![
        format!(
            "{} tier moves ({} from caps, {} from scores): {} per account per year; {} of accounts ever moved",
            o.moves,
            o.moves_by_cause.from_caps,
            o.moves_by_cause.from_scores,
            rate(o.moves_per_account_year),
            pct(o.ever_moved_share)
        ),
        format!(
            "{} flip-flops (back in a tier within {window} periods of leaving it) by {} accounts; median stint {} periods",
            o.flip_flops,
            o.flip_floppers.len(),
            rate(o.median_stint_periods)
        ),
        format!(
            "{} alerts raised ({} per month); {} answered with an error",
            o.alerts_raised,
            rate(o.alerts_per_month),
            o.errors
        ),
    ]
}

fn tier_ids(r: &Report) -> Vec<String> {
    r.periods.first().map(|p| p.tiers.keys().cloned().collect()).unwrap_or_default()
}

pub fn path(f: &FlipFlopper) -> String {
    let mut out: Vec<&str> = Vec::new();
    for t in f.tiers.iter().flatten() {
        out.push(t);
    }
    out.join(" → ")
}

/// A period's counts after its tiers, in the columns of both forms: promoted, demoted, held,
/// moves from caps, from scores, flip-flops, alerts raised, cleared, managers over.
fn period_counts(p: &PeriodFigures) -> [u64; 9] {
    [
        p.promoted,
        p.demoted,
        p.held,
        p.moves.from_caps,
        p.moves.from_scores,
        p.flip_flops,
        ev(p, "alert.raised"),
        ev(p, "alert.cleared"),
        p.managers_over,
    ]
}

/// The terminal table's widths for [`period_counts`], those of its headings.
const COUNT_WIDTHS: [usize; 9] = [5, 5, 5, 5, 6, 5, 6, 7, 5];

/// The managers over capacity in some period, most periods over first (then by name).
fn managers_over(r: &Report) -> Vec<&ManagerFigures> {
    let mut over: Vec<_> = r.overall.managers.iter().filter(|m| m.periods_over > 0).collect();
    over.sort_by(|a, b| b.periods_over.cmp(&a.periods_over).then(a.manager.cmp(&b.manager)));
    over
}

/// A terminal list of the `top` first of `total` items under `label (shown of total):`;
/// nothing when there are none.
fn list_txt(
    o: &mut String,
    label: &str,
    total: usize,
    top: usize,
    rows: impl Iterator<Item = String>,
) {
    if total == 0 {
        return;
    }
    let _ = writeln!(o, "\n{label} ({} of {total}):", total.min(top));
    for row in rows.take(top) {
        let _ = writeln!(o, "  {row}");
    }
}

/// A folded markdown table of the `top` first of `total` rows, under a summary
/// `label (shown of total)`; nothing when there are none. `head` is the header row,
/// `align` the row under it.
fn details_md(
    o: &mut String,
    label: &str,
    (total, top): (usize, usize),
    (head, align): (&str, &str),
    rows: impl Iterator<Item = String>,
) {
    if total == 0 {
        return;
    }
    let _ = writeln!(o, "\n<details><summary>{label} ({} of {total})</summary>\n", total.min(top));
    let _ = writeln!(o, "{head}");
    let _ = writeln!(o, "{align}");
    for row in rows.take(top) {
        let _ = writeln!(o, "{row}");
    }
    let _ = writeln!(o, "\n</details>");
}

fn flip_flopper_txt(f: &FlipFlopper) -> String {
    format!("{:<16} {:>2}  {}", f.id, f.flip_flops, path(f))
}

/// The flip-flopping accounts as a folded markdown table.
fn flip_floppers_md(o: &mut String, label: &str, ff: &[FlipFlopper], top: usize) {
    details_md(
        o,
        label,
        (ff.len(), top),
        ("| account | flip-flops | tiers, period by period |", "|---|--:|---|"),
        ff.iter().map(|f| format!("| `{}` | {} | {} |", md(&f.id), f.flip_flops, md(&path(f)))),
    );
}

/// A terminal summary of one replay.
pub fn table(r: &Report, top: usize) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "Backtest of {}\n", title(r).replace('`', ""));
    let tiers = tier_ids(r);
    let mut head = format!("{:<11} {:>8} {:>6}", "as_of", "accounts", "errors");
    for t in &tiers {
        let _ = write!(head, " {:>9}", t);
    }
    let _ = write!(
        head,
        " {:>5} {:>5} {:>5} {:>5} {:>6} {:>5} {:>6} {:>7} {:>5}",
        "up", "down", "held", "caps", "scores", "flips", "raised", "cleared", "over"
    );
    let _ = writeln!(o, "{head}");
    for p in &r.periods {
        let mut line = format!("{:<11} {:>8} {:>6}", p.as_of, p.accounts, p.errors);
        for t in &tiers {
            let _ = write!(line, " {:>9}", p.tiers.get(t).copied().unwrap_or(0));
        }
        for (n, w) in period_counts(p).into_iter().zip(COUNT_WIDTHS) {
            let _ = write!(line, " {n:>w$}");
        }
        let _ = writeln!(o, "{line}");
    }
    o.push('\n');
    for l in overall_lines(&r.overall, r.flip_window) {
        let _ = writeln!(o, "{l}");
    }
    let ff = &r.overall.flip_floppers;
    list_txt(&mut o, "Flip-flopping accounts", ff.len(), top, ff.iter().map(flip_flopper_txt));
    let over = managers_over(r);
    list_txt(
        &mut o,
        "Managers over capacity",
        over.len(),
        top,
        over.iter().map(|m| {
            format!(
                "{:<16} over in {} of {} periods, peak {} accounts ({})",
                m.manager, m.periods_over, m.periods, m.peak_load, m.peak_as_of
            )
        }),
    );
    o
}

/// A pull-request comment for one replay.
pub fn markdown(r: &Report, top: usize) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "### Backtest: {}\n", title(r));
    for l in overall_lines(&r.overall, r.flip_window) {
        let _ = writeln!(o, "- {l}");
    }
    o.push('\n');
    period_table_md(&mut o, r);
    flip_floppers_md(&mut o, "Flip-flopping accounts", &r.overall.flip_floppers, top);
    let over = managers_over(r);
    details_md(
        &mut o,
        "Managers over capacity",
        (over.len(), top),
        ("| manager | periods over | peak load | peak on |", "|---|--:|--:|---|"),
        over.iter().map(|m| {
            format!(
                "| `{}` | {} of {} | {} | {} |",
                md(&m.manager),
                m.periods_over,
                m.periods,
                m.peak_load,
                m.peak_as_of
            )
        }),
    );
    o
}

fn period_table_md(o: &mut String, r: &Report) {
    let tiers = tier_ids(r);
    let _ = writeln!(
        o,
        "| as_of | accounts | errors | {} | promoted | demoted | held | from caps | from scores | flip-flops | alerts raised | alerts cleared | managers over |",
        tiers.iter().map(|t| md(t)).collect::<Vec<_>>().join(" | ")
    );
    let _ = writeln!(
        o,
        "|---|--:|--:|{}--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        "--:|".repeat(tiers.len())
    );
    for p in &r.periods {
        let counts: Vec<String> =
            tiers.iter().map(|t| p.tiers.get(t).copied().unwrap_or(0).to_string()).collect();
        let rest: Vec<String> = period_counts(p).iter().map(u64::to_string).collect();
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} |",
            p.as_of,
            p.accounts,
            p.errors,
            counts.join(" | "),
            rest.join(" | ")
        );
    }
}

fn what(ctx: &Context) -> String {
    match (&ctx.candidate_dir, ctx.overrides.len()) {
        (Some(d), 0) => format!("`{d}`"),
        (Some(d), n) => format!("`{d}` with {n} override{}", if n == 1 { "" } else { "s" }),
        (None, n) => format!("{n} override{}", if n == 1 { "" } else { "s" }),
    }
}

/// (label, baseline, candidate, difference) rows of the whole replay.
fn overall_rows(c: &Comparison) -> Vec<[String; 4]> {
    let (b, k, d) = (&c.baseline.overall, &c.candidate.overall, &c.difference.overall);
    vec![
        [
            "flip-flops".into(),
            b.flip_flops.to_string(),
            k.flip_flops.to_string(),
            format!("{} ({})", signed(d.flip_flops), signed_pct(d.flip_flops_change)),
        ],
        ["tier moves".into(), b.moves.to_string(), k.moves.to_string(), signed(d.moves)],
        [
            "  from caps".into(),
            b.moves_by_cause.from_caps.to_string(),
            k.moves_by_cause.from_caps.to_string(),
            signed(d.moves_from_caps),
        ],
        [
            "  from scores".into(),
            b.moves_by_cause.from_scores.to_string(),
            k.moves_by_cause.from_scores.to_string(),
            signed(d.moves_from_scores),
        ],
        [
            "moves per account per year".into(),
            rate(b.moves_per_account_year),
            rate(k.moves_per_account_year),
            signed_f(d.moves_per_account_year),
        ],
        [
            "accounts ever moved".into(),
            pct(b.ever_moved_share),
            pct(k.ever_moved_share),
            signed_pct(d.ever_moved_share),
        ],
        [
            "median stint (periods)".into(),
            rate(b.median_stint_periods),
            rate(k.median_stint_periods),
            signed_f(d.median_stint_periods),
        ],
        [
            "alerts raised".into(),
            b.alerts_raised.to_string(),
            k.alerts_raised.to_string(),
            format!("{} ({})", signed(d.alerts_raised), signed_pct(d.alerts_raised_change)),
        ],
        [
            "alerts per month".into(),
            rate(b.alerts_per_month),
            rate(k.alerts_per_month),
            signed_f(d.alerts_per_month),
        ],
        ["errors".into(), b.errors.to_string(), k.errors.to_string(), signed(d.errors)],
    ]
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

/// A terminal summary of a baseline and a candidate replayed over the same history.
pub fn comparison_table(c: &Comparison, ctx: &Context, top: usize) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "Backtest of {}", title(&c.baseline).replace('`', ""));
    let _ = writeln!(
        o,
        "Candidate: {} ({})",
        what(ctx).replace('`', ""),
        short(&c.candidate.policy.hash)
    );
    for ov in &ctx.overrides {
        let _ = writeln!(o, "  {ov}");
    }
    let _ = writeln!(o, "\n{}.\n", capitalized(&c.difference.headline));
    let _ = writeln!(o, "{:<28} {:>10} {:>10} {:>16}", "", "baseline", "candidate", "difference");
    for [l, b, k, d] in overall_rows(c) {
        let _ = writeln!(o, "{l:<28} {b:>10} {k:>10} {d:>16}");
    }
    let _ = writeln!(
        o,
        "\n{:<11} {:>13} {:>13} {:>13} {:>13}",
        "as_of", "moves", "from caps", "flip-flops", "alerts raised"
    );
    for (pb, pc) in c.baseline.periods.iter().zip(&c.candidate.periods) {
        let pair = |a: u64, b: u64| format!("{a} → {b}");
        let _ = writeln!(
            o,
            "{:<11} {:>13} {:>13} {:>13} {:>13}",
            pb.as_of,
            pair(pb.promoted + pb.demoted, pc.promoted + pc.demoted),
            pair(pb.moves.from_caps, pc.moves.from_caps),
            pair(pb.flip_flops, pc.flip_flops),
            pair(ev(pb, "alert.raised"), ev(pc, "alert.raised"))
        );
    }
    let managers = &c.difference.overall.managers;
    list_txt(
        &mut o,
        "Managers whose load changes",
        managers.len(),
        top,
        managers.iter().map(|m| {
            format!(
                "{:<16} peak load {}, periods over capacity {}",
                m.manager,
                signed(m.peak_load),
                signed(m.periods_over)
            )
        }),
    );
    let ff = &c.candidate.overall.flip_floppers;
    list_txt(
        &mut o,
        "Flip-flopping under the candidate",
        ff.len(),
        top,
        ff.iter().map(flip_flopper_txt),
    );
    o
}

/// A pull-request comment: what the candidate does over the history, before it goes live.
pub fn comparison_markdown(c: &Comparison, ctx: &Context, top: usize) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "### Backtest: `{}` → {}\n", c.baseline.policy.name, what(ctx));
    for ov in &ctx.overrides {
        let _ = writeln!(o, "- `{}`", md(ov));
    }
    if !ctx.overrides.is_empty() {
        o.push('\n');
    }
    let _ = writeln!(o, "**{}.**\n", capitalized(&c.difference.headline));
    let _ = writeln!(
        o,
        "{}. Baseline `{}`, candidate `{}`.\n",
        title(&c.baseline),
        short(&c.baseline.policy.hash),
        short(&c.candidate.policy.hash)
    );
    let _ = writeln!(o, "| | baseline | candidate | difference |");
    let _ = writeln!(o, "|---|--:|--:|--:|");
    for [l, b, k, d] in overall_rows(c) {
        let _ = writeln!(o, "| {} | {b} | {k} | {d} |", l.trim());
    }
    let _ = writeln!(o, "\n<details><summary>Period by period</summary>\n");
    let _ =
        writeln!(o, "| as_of | moves | from caps | flip-flops | alerts raised | managers over |");
    let _ = writeln!(o, "|---|--:|--:|--:|--:|--:|");
    for (pb, pc) in c.baseline.periods.iter().zip(&c.candidate.periods) {
        let pair = |a: u64, b: u64| if a == b { a.to_string() } else { format!("{a} → {b}") };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} |",
            pb.as_of,
            pair(pb.promoted + pb.demoted, pc.promoted + pc.demoted),
            pair(pb.moves.from_caps, pc.moves.from_caps),
            pair(pb.flip_flops, pc.flip_flops),
            pair(ev(pb, "alert.raised"), ev(pc, "alert.raised")),
            pair(pb.managers_over, pc.managers_over)
        );
    }
    let _ = writeln!(o, "\n</details>");
    let managers = &c.difference.overall.managers;
    details_md(
        &mut o,
        "Managers whose load changes",
        (managers.len(), top),
        ("| manager | peak load | periods over capacity |", "|---|--:|--:|"),
        managers.iter().map(|m| {
            format!(
                "| `{}` | {} | {} |",
                md(&m.manager),
                signed(m.peak_load),
                signed(m.periods_over)
            )
        }),
    );
    flip_floppers_md(
        &mut o,
        "Flip-flopping under the candidate",
        &c.candidate.overall.flip_floppers,
        top,
    );
    o
}
