//! Charts as SVG, drawn on the server: no script, no library, the same bytes for the same data.
//!
//! Each chart is an `<svg role="img">` whose `<title>` and `<desc>` carry its content as text
//! (the figures a screen reader user needs), and uses presentation attributes only: the
//! console's Content-Security-Policy allows no inline `style`.

use crate::engine::explain::grouped;
use crate::engine::{ManagerLoad, Num, TierSummary};
use maud::{Markup, html};

/// Tier colours, best tier first; the last one repeats for longer lists.
const PALETTE: &[&str] = &["#1d4e89", "#2f7fb8", "#6baed6", "#9ecae1", "#c6dbef"];

pub fn tier_colour(i: usize) -> &'static str {
    PALETTE.get(i).or(PALETTE.last()).copied().unwrap_or("#888")
}

fn short_money(x: f64) -> String {
    let a = x.abs();
    if a >= 1e9 {
        format!("{}B", Num(x / 1e9))
    } else if a >= 1e6 {
        format!("{}M", Num(x / 1e6))
    } else if a >= 1e3 {
        format!("{}K", Num(x / 1e3))
    } else {
        Num(x).to_string()
    }
}

fn frame(id: &str, width: u32, height: u32, title: &str, desc: &str, body: Markup) -> Markup {
    let (t, d) = (format!("{id}-title"), format!("{id}-desc"));
    html! {
        svg id=(id) class="chart" role="img" aria-labelledby={(t) " " (d)}
            viewBox={"0 0 " (width) " " (height)} width=(width) height=(height)
            xmlns="http://www.w3.org/2000/svg" font-family="system-ui, sans-serif" font-size="12" {
            title id=(t) { (title) }
            desc id=(d) { (desc) }
            (body)
        }
    }
}

/// Accounts and revenue per tier, two bar panels side by side.
pub fn tiers(id: &str, tiers: &[TierSummary]) -> Markup {
    let row = 30u32;
    let height = 34 + row * tiers.len() as u32;
    let max_count = tiers.iter().map(|t| t.count).max().unwrap_or(0).max(1) as f64;
    let max_rev = tiers.iter().map(|t| t.revenue).fold(0.0, f64::max).max(1.0);
    let desc = tiers
        .iter()
        .map(|t| {
            format!(
                "{}: {} accounts ({}%), revenue {}",
                t.id,
                t.count,
                Num(t.share * 100.0),
                grouped(t.revenue)
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let bar = 200.0;
    html! {
        (frame(id, 680, height, "Accounts and revenue per tier", &desc, html! {
            text x="110" y="16" font-weight="600" { "Accounts" }
            text x="420" y="16" font-weight="600" { "Revenue" }
            @for (i, t) in tiers.iter().enumerate() {
                @let y = 28 + row * i as u32;
                @let wc = (t.count as f64 / max_count * bar).max(if t.count > 0 { 1.0 } else { 0.0 });
                @let wr = (t.revenue / max_rev * bar).max(if t.revenue > 0.0 { 1.0 } else { 0.0 });
                text x="100" y=(y + 15) text-anchor="end" { (t.id) }
                rect x="110" y=(y) width=(Num(wc)) height="20" fill=(tier_colour(i)) {}
                text x=(Num(114.0 + wc)) y=(y + 15) { (t.count) " (" (Num(t.share * 100.0)) "%)" }
                rect x="420" y=(y) width=(Num(wr)) height="20" fill=(tier_colour(i)) {}
                text x=(Num(424.0 + wr)) y=(y + 15) { (short_money(t.revenue)) }
            }
        }))
    }
}

/// Each manager's count of capacity-tier accounts, against the `per_manager` band.
pub fn managers(id: &str, managers: &[ManagerLoad], min: Option<u64>, max: Option<u64>) -> Markup {
    let n = managers.len().max(1) as u32;
    let col = (880 / n).clamp(14, 48);
    let width = 60 + col * n + 20;
    let (top, plot) = (20u32, 200u32);
    let height = top + plot + 90;
    let peak = managers
        .iter()
        .map(|m| m.count)
        .chain(max.map(|m| m + m / 5 + 1))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let y_of = |v: f64| top as f64 + plot as f64 * (1.0 - v / peak);
    let band = match (min, max) {
        (None, None) => "no per_manager band".to_string(),
        (lo, hi) => format!(
            "band {} to {}",
            lo.map_or("0".into(), |v| v.to_string()),
            hi.map_or("no limit".into(), |v| v.to_string())
        ),
    };
    let desc = format!(
        "{band}; {}",
        managers
            .iter()
            .map(|m| format!("{}: {} ({})", m.manager, m.count, m.status.as_str()))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let colour = |m: &ManagerLoad| match m.status {
        crate::engine::Load::Over => "#c0392b",
        crate::engine::Load::Under => "#e6a23c",
        crate::engine::Load::Ok => "#2e7d32",
    };
    let lo = y_of(min.unwrap_or(0) as f64);
    let hi = max.map_or(top as f64, |m| y_of(m as f64));
    html! {
        (frame(id, width, height, "Manager load against the per_manager band", &desc, html! {
            @if min.is_some() || max.is_some() {
                rect x="60" y=(Num(hi)) width=(col * n) height=(Num((lo - hi).max(0.0))) fill="#e8f5e9" {}
                @if let Some(m) = max {
                    line x1="60" x2=(60 + col * n) y1=(Num(hi)) y2=(Num(hi)) stroke="#c0392b" stroke-dasharray="4 3" {}
                    text x="55" y=(Num(hi + 4.0)) text-anchor="end" { "max " (m) }
                }
                @if let Some(m) = min {
                    line x1="60" x2=(60 + col * n) y1=(Num(lo)) y2=(Num(lo)) stroke="#e6a23c" stroke-dasharray="4 3" {}
                    text x="55" y=(Num(lo + 4.0)) text-anchor="end" { "min " (m) }
                }
            }
            line x1="60" x2=(60 + col * n) y1=(top + plot) y2=(top + plot) stroke="#555" {}
            @for (i, m) in managers.iter().enumerate() {
                @let x = 60 + col * i as u32;
                @let y = y_of(m.count as f64);
                rect x=(x + 2) y=(Num(y)) width=(col.saturating_sub(4)) height=(Num((top + plot) as f64 - y)) fill=(colour(m)) {
                    title { (m.manager) ": " (m.count) " (" (m.status.as_str()) ")" }
                }
                text x=(x + col / 2) y=(Num(y - 3.0)) text-anchor="middle" font-size="10" { (m.count) }
                text transform={"translate(" (x + col / 2 + 4) "," (top + plot + 8) ") rotate(60)"} font-size="10" { (m.manager) }
            }
        }))
    }
}

/// One bar per criterion: its contribution `weight × score / Σweight` to the account score.
pub fn criteria(id: &str, rows: &[(String, f64, f64)]) -> Markup {
    let wsum: f64 = rows.iter().map(|r| r.2).sum::<f64>().max(f64::MIN_POSITIVE);
    let row = 28u32;
    let height = 30 + row * rows.len() as u32;
    // Bars relative to the largest contribution, so small differences still show.
    let full = rows.iter().map(|(_, s, w)| w * s / wsum).fold(0.0, f64::max).max(f64::MIN_POSITIVE);
    let desc = rows
        .iter()
        .map(|(c, s, w)| {
            format!("{c}: score {} × weight {} adds {}", Num(*s), Num(*w), Num(w * s / wsum))
        })
        .collect::<Vec<_>>()
        .join("; ");
    html! {
        (frame(id, 680, height, "What each criterion adds to the score", &desc, html! {
            text x="130" y="16" font-weight="600" { "contribution to the score (weight × score ÷ total weight)" }
            @for (i, (c, s, w)) in rows.iter().enumerate() {
                @let y = 26 + row * i as u32;
                @let part = w * s / wsum;
                @let len = (part / full * 360.0).max(0.0);
                text x="120" y=(y + 15) text-anchor="end" { (c) }
                rect x="130" y=(y) width=(Num(len)) height="20" fill=(tier_colour(1)) {}
                text x=(Num(134.0 + len)) y=(y + 15) { (Num(part)) "  (score " (Num(*s)) ", weight " (Num(*w)) ")" }
            }
        }))
    }
}

/// The policy's tiers on the score scale, with the account's score marked.
pub fn thresholds(id: &str, tiers: &[(String, f64)], score: f64, scale: (f64, f64)) -> Markup {
    let (lo, hi) = scale;
    let span = (hi - lo).max(f64::MIN_POSITIVE);
    let x_of = |v: f64| 20.0 + 620.0 * ((v - lo) / span).clamp(0.0, 1.0);
    let desc = format!(
        "score {} on {}–{}; {}",
        Num(score),
        Num(lo),
        Num(hi),
        tiers.iter().map(|(t, m)| format!("{t} from {}", Num(*m))).collect::<Vec<_>>().join(", ")
    );
    html! {
        (frame(id, 680, 70, "The score against the tiers' thresholds", &desc, html! {
            rect x="20" y="28" width="620" height="10" fill="#e0e0e0" {}
            @for (i, (t, m)) in tiers.iter().enumerate() {
                @let x = x_of(*m);
                line x1=(Num(x)) x2=(Num(x)) y1="20" y2="46" stroke=(tier_colour(i)) stroke-width="2" {}
                text x=(Num(x)) y="60" text-anchor="middle" { (t) " " (Num(*m)) }
            }
            @let x = x_of(score);
            path d={"M" (Num(x - 6.0)) " 10 L" (Num(x + 6.0)) " 10 L" (Num(x)) " 24 Z"} fill="#c0392b" {}
            text x=(Num(x)) y="8" text-anchor="middle" font-weight="600" { "score " (Num(score)) }
        }))
    }
}

/// The transition matrix as a heat map: rows the baseline's tiers, columns the candidate's.
pub fn heatmap(id: &str, from: &[String], to: &[String], counts: &[Vec<u64>]) -> Markup {
    let cell = 70u32;
    let (left, top) = (110u32, 40u32);
    let width = left + cell * to.len() as u32 + 20;
    let height = top + cell * from.len() as u32 + 20;
    let peak = counts.iter().flatten().copied().max().unwrap_or(0).max(1) as f64;
    let desc = from
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let cells = to
                .iter()
                .enumerate()
                .map(|(j, t)| {
                    format!("{t} {}", counts.get(i).and_then(|r| r.get(j)).copied().unwrap_or(0))
                })
                .collect::<Vec<_>>()
                .join(", ");
            format!("from {f}: {cells}")
        })
        .collect::<Vec<_>>()
        .join("; ");
    html! {
        (frame(id, width, height, "Transition matrix: tier before (rows) and after (columns)", &desc, html! {
            text x=(left) y="14" font-weight="600" { "after →" }
            @for (j, t) in to.iter().enumerate() {
                text x=(left + cell * j as u32 + cell / 2) y=(top - 8) text-anchor="middle" { (t) }
            }
            @for (i, f) in from.iter().enumerate() {
                @let y = top + cell * i as u32;
                text x=(left - 8) y=(y + cell / 2 + 4) text-anchor="end" { (f) }
                @for (j, _) in to.iter().enumerate() {
                    @let n = counts.get(i).and_then(|r| r.get(j)).copied().unwrap_or(0);
                    // Log scale: the diagonal holds most of a book, the moves are what matter.
                    @let heat = if n == 0 { 0.0 } else { (1.0 + n as f64).ln() / (1.0 + peak).ln() };
                    @let diag = from.get(i) == to.get(j);
                    rect x=(left + cell * j as u32) y=(y) width=(cell - 2) height=(cell - 2)
                        fill=(if n == 0 { "#f5f5f5" } else if diag { "#1d4e89" } else { "#c0392b" })
                        fill-opacity=(Num(if n == 0 { 1.0 } else { 0.15 + 0.85 * heat })) {}
                    text x=(left + cell * j as u32 + cell / 2) y=(y + cell / 2 + 4) text-anchor="middle"
                        fill=(if heat > 0.6 { "#fff" } else { "#111" }) { (n) }
                }
            }
        }))
    }
}

/// Counts per tier before and after, side by side.
pub fn tiers_before_after(id: &str, rows: &[(String, u64, u64)]) -> Markup {
    let row = 34u32;
    let height = 30 + row * rows.len() as u32;
    let peak = rows.iter().map(|r| r.1.max(r.2)).max().unwrap_or(0).max(1) as f64;
    let desc = rows
        .iter()
        .map(|(t, b, a)| format!("{t}: {b} before, {a} after"))
        .collect::<Vec<_>>()
        .join("; ");
    html! {
        (frame(id, 680, height, "Accounts per tier, before and after", &desc, html! {
            rect x="110" y="4" width="12" height="12" fill="#9e9e9e" {}
            text x="126" y="14" { "before" }
            rect x="190" y="4" width="12" height="12" fill="#1d4e89" {}
            text x="206" y="14" { "after" }
            @for (i, (t, b, a)) in rows.iter().enumerate() {
                @let y = 24 + row * i as u32;
                @let wb = *b as f64 / peak * 420.0;
                @let wa = *a as f64 / peak * 420.0;
                text x="100" y=(y + 17) text-anchor="end" { (t) }
                rect x="110" y=(y) width=(Num(wb)) height="13" fill="#9e9e9e" {}
                text x=(Num(114.0 + wb)) y=(y + 11) font-size="10" { (b) }
                rect x="110" y=(y + 14) width=(Num(wa)) height="13" fill="#1d4e89" {}
                text x=(Num(114.0 + wa)) y=(y + 25) font-size="10" { (a) }
            }
        }))
    }
}

/// Tier counts per period (stacked columns), for a backtest.
#[allow(dead_code)] // drawn by the Backtest page once the engine replays history
pub fn periods(id: &str, tiers: &[String], periods: &[(String, Vec<u64>)]) -> Markup {
    let n = periods.len().max(1) as u32;
    let col = (760 / n).clamp(16, 80);
    let (left, top, plot) = (50u32, 30u32, 220u32);
    let width = left + col * n + 140;
    let height = top + plot + 70;
    let peak = periods.iter().map(|(_, c)| c.iter().sum::<u64>()).max().unwrap_or(0).max(1) as f64;
    let desc = periods
        .iter()
        .map(|(p, c)| {
            let parts =
                tiers.iter().zip(c).map(|(t, n)| format!("{t} {n}")).collect::<Vec<_>>().join(", ");
            format!("{p}: {parts}")
        })
        .collect::<Vec<_>>()
        .join("; ");
    html! {
        (frame(id, width, height, "Accounts per tier in each period", &desc, html! {
            @for (j, t) in tiers.iter().enumerate() {
                rect x=(left + col * n + 16) y=(top + 18 * j as u32) width="12" height="12" fill=(tier_colour(j)) {}
                text x=(left + col * n + 32) y=(top + 18 * j as u32 + 10) { (t) }
            }
            line x1=(left) x2=(left + col * n) y1=(top + plot) y2=(top + plot) stroke="#555" {}
            @for (i, (p, c)) in periods.iter().enumerate() {
                @let x = left + col * i as u32;
                @let below: Vec<u64> = c.iter().scan(0u64, |acc, v| { let b = *acc; *acc += v; Some(b) }).collect();
                @for (j, v) in c.iter().enumerate() {
                    @let y0 = top as f64 + plot as f64 * (1.0 - (below[j] + v) as f64 / peak);
                    @let h = plot as f64 * *v as f64 / peak;
                    rect x=(x + 2) y=(Num(y0)) width=(col.saturating_sub(4)) height=(Num(h)) fill=(tier_colour(j)) {
                        title { (p) " " (tiers.get(j).map_or("", String::as_str)) ": " (v) }
                    }
                }
                text transform={"translate(" (x + col / 2 - 4) "," (top + plot + 10) ") rotate(45)"} font-size="10" { (p) }
            }
        }))
    }
}
