//! The console's pages, rendered with maud: every `(value)` is HTML-escaped, attributes too,
//! so account names and policy text (both untrusted) are always shown as text.
//!
//! Links are relative (`book`, `account?id=...`): the console works wherever a proxy mounts
//! it, as long as its pages stay one level below the same prefix.

use super::fields;
use super::svg;
use super::{ApiError, Compared};
use crate::engine::explain::{self, grouped};
use crate::engine::{Change, Decision, Num, Outcome, PortfolioResult};
use crate::policy::{self, Policy, Scoring, Severity};
use crate::service::{Loaded, Registry};
use crate::snapshot::Snapshot;
use maud::{DOCTYPE, Markup, html};
use std::collections::BTreeMap;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Policies,
    Book,
    Account,
    WhatIf,
    Backtest,
}

const PAGES: &[(Nav, &str, &str)] = &[
    (Nav::Policies, "policies", "Policies"),
    (Nav::Book, "book", "Book"),
    (Nav::Account, "account", "Account"),
    (Nav::WhatIf, "whatif", "What-if"),
    (Nav::Backtest, "backtest", "Backtest"),
];

/// A query-string component, percent-encoded (ids are anyone's text).
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High => "high",
        Severity::Critical => "critical",
    }
}

pub fn layout(title: &str, nav: Nav, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · tierwise console" }
                link rel="icon" href="data:,";
                link rel="stylesheet" href="assets/console.css";
                script src="assets/console.js" defer {}
            }
            body {
                a class="skip" href="#main" { "Skip to the content" }
                header class="top" {
                    span class="brand" { "tierwise" }
                    nav aria-label="Console pages" {
                        ul {
                            @for (n, href, label) in PAGES {
                                li {
                                    @if *n == nav {
                                        a href=(href) aria-current="page" { (label) }
                                    } @else {
                                        a href=(href) { (label) }
                                    }
                                }
                            }
                        }
                    }
                }
                main id="main" tabindex="-1" { (body) }
                footer {
                    p { "Books are processed in memory and never stored by the server. The API behind these pages: " a href="../openapi.json" { "openapi.json" } "." }
                }
            }
        }
    }
}

fn policy_select(reg: &Registry, selected: Option<&str>) -> Markup {
    let chosen = selected.filter(|s| !s.is_empty()).or(reg.default.as_deref());
    html! {
        div class="field" {
            label for="policy" { "Policy" }
            select id="policy" name="policy" {
                @for (name, e) in &reg.entries {
                    @if e.active.is_some() {
                        option value=(name) selected[chosen == Some(name.as_str())] {
                            (name) @if reg.default.as_deref() == Some(name.as_str()) { " (default)" }
                        }
                    }
                }
            }
        }
    }
}

/// A table's header row.
fn head(cols: &[&str]) -> Markup {
    html! { thead { tr { @for c in cols { th scope="col" { (c) } } } } }
}

pub fn error(e: &ApiError) -> Markup {
    html! {
        div class="problem" role="alert" data-code=(e.body.code) {
            h2 { "That did not work" }
            p { (e.body.message) }
            p class="code" { "code: " code { (e.body.code) } }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Policies

fn steps_words(p: &Policy, input: usize, at: &[f64]) -> String {
    let name = p.inputs.get(input).map_or("?", |i| i.name.as_str());
    let (lo, hi) = p.scale;
    let step = (hi - lo) / at.len().max(1) as f64;
    let cuts: Vec<String> = at.iter().map(|c| grouped(*c)).collect();
    format!(
        "{name} in {} steps: below {} scores {}, each cut point reached adds {} ({})",
        at.len(),
        cuts.first().map_or("-", String::as_str),
        Num(lo),
        Num(step),
        cuts.join(" · ")
    )
}

fn tier_words(p: &Policy, i: usize) -> String {
    let t = &p.tiers[i];
    let last = i + 1 == p.tiers.len();
    let mut s = if last {
        "every account that reaches no tier above (the catch-all)".to_string()
    } else {
        format!("score ≥ {}", Num(t.min_score))
    };
    if let Some(w) = &t.when {
        s.push_str(&format!(", and `{}`", w.source));
    }
    if let Some(share) = t.max_share {
        s.push_str(&format!("; at most {}% of the book", Num(share * 100.0)));
    }
    if let Some(c) = t.max_count {
        s.push_str(&format!("; at most {c} accounts"));
    }
    s
}

fn movement_words(p: &Policy) -> Vec<String> {
    let m = &p.movement;
    let mut v = Vec::new();
    if m.promote_margin > 0.0 {
        v.push(format!(
            "a promotion needs the tier's min_score + {} (promote margin)",
            Num(m.promote_margin)
        ));
    }
    if m.demote_margin > 0.0 {
        v.push(format!(
            "a demotion waits until the score is {} below the tier's min_score (demote margin)",
            Num(m.demote_margin)
        ));
    }
    if m.min_tenure_days > 0 {
        v.push(format!("no demotion within {} days of entering a tier", m.min_tenure_days));
    }
    if let Some(k) = m.max_steps {
        v.push(format!("at most {k} tier(s) up or down per evaluation"));
    }
    for h in &m.holds {
        v.push(format!("hold `{}`: never demoted while `{}` ({})", h.id, h.when.source, h.reason));
    }
    if v.is_empty() {
        v.push(
            "accounts move to the tier their score qualifies for, with no margin or tenure".into(),
        );
    }
    v
}

fn capacity_words(p: &Policy) -> Option<String> {
    let c = p.capacity.as_ref()?;
    let tiers: Vec<&str> =
        p.tiers.iter().zip(&c.in_book).filter(|(_, b)| **b).map(|(t, _)| t.id.as_str()).collect();
    let mut s = format!("a manager's book counts their {} accounts", tiers.join(" and "));
    match (c.min, c.max) {
        (Some(lo), Some(hi)) => s.push_str(&format!("; {lo} to {hi} per manager")),
        (None, Some(hi)) => s.push_str(&format!("; at most {hi} per manager")),
        (Some(lo), None) => s.push_str(&format!("; at least {lo} per manager")),
        (None, None) => {}
    }
    if let Some(t) = c.total_max {
        s.push_str(&format!("; at most {t} in all"));
    }
    s.push_str(match c.on_overflow {
        policy::Overflow::Flag => "; over the limit, accounts are listed to reassign",
        policy::Overflow::Demote => "; over the limit, the lowest scores are moved out",
    });
    Some(s)
}

pub fn policies(reg: &Registry) -> Markup {
    let body = html! {
        h1 { "Policies" }
        p class="lead" {
            "What the service is running: each policy's version, its content hash (which "
            "identifies it), when it went live, and its rules in plain words."
        }
        @if reg.entries.is_empty() {
            p class="problem" role="alert" { "No policy is loaded: the policies folder holds none." }
        }
        @for (name, e) in &reg.entries {
            @let hid = format!("policy-{}", enc(name));
            section class="policy" aria-labelledby=(hid) {
                h2 id=(hid) {
                    (name)
                    @if reg.default.as_deref() == Some(name.as_str()) { " " span class="badge" { "default" } }
                    @if e.active.is_none() { " " span class="badge bad" { "not serving" } }
                }
                @if let Some(l) = &e.active {
                    (policy_details(l))
                }
                @if let Some(err) = &e.last_error {
                    div class="problem" role="alert" {
                        h3 { "Last reload failed: " (err.code) }
                        p { (err.message) }
                        p { "Seen at " (err.at) @if e.active.is_some() { "; the version above keeps serving." } }
                        @if !err.diagnostics.is_empty() {
                            ul class="diagnostics" {
                                @for d in &err.diagnostics {
                                    li { code { (d.place.file) ":" (d.place.line) ":" (d.place.column) } " " (d.message)
                                        @if let Some(h) = &d.help { " — " (h) } }
                                }
                            }
                        }
                        @if !err.failed_cases.is_empty() {
                            ul {
                                @for c in &err.failed_cases {
                                    li { "test case " q { (c.name) } " (" code { (c.place.file) ":" (c.place.line) } "): " (c.failures.join("; ")) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout("Policies", Nav::Policies, body)
}

fn policy_details(l: &Loaded) -> Markup {
    let p = &l.policy;
    let wsum: f64 = p.criteria.iter().map(|c| c.weight).sum();
    html! {
        p { (p.description) }
        dl class="facts" {
            dt { "Version" } dd { (p.version) }
            dt { "Hash" } dd { code title=(p.hash) { (short(&p.hash)) } }
            dt { "Loaded at" } dd { (crate::service::timestamp(l.loaded_at)) }
            dt { "Files" } dd { (p.files.join(", ")) }
            dt { "Test cases" } dd { (p.cases.len()) }
            dt { "Score scale" } dd { (Num(p.scale.0)) " to " (Num(p.scale.1)) }
        }
        p class="actions" {
            a href={"book?policy=" (enc(&p.name))} { "Evaluate a book with " (p.name) }
            " · "
            a href={"whatif?policy=" (enc(&p.name))} { "Try a change to " (p.name) }
        }
        h3 { "Tiers, best first" }
        ol class="tiers" {
            @for (i, t) in p.tiers.iter().enumerate() {
                li { strong { (t.label) } " (" code { (t.id) } "): " (tier_words(p, i)) }
            }
        }
        h3 { "Criteria and weights" }
        table {
            caption { "The account score is the weighted mean of these criteria." }
            (head(&["Criterion", "Weight", "Share", "How it is scored"]))
            tbody {
                @for c in &p.criteria {
                    tr {
                        th scope="row" { (c.id) }
                        td class="num" { (Num(c.weight)) }
                        td class="num" { (Num(if wsum > 0.0 { 100.0 * c.weight / wsum } else { 0.0 })) "%" }
                        td { @match &c.scoring {
                            Scoring::Steps { input, at } => (steps_words(p, *input, at)),
                            Scoring::Expr(e) => { "expression " code { (e.source.trim()) } }
                            Scoring::Script { function, file, .. } => { "script " code { (function) } " in " code { (file) } }
                        } }
                    }
                }
            }
        }
        h3 { "Movement" }
        ul { @for s in movement_words(p) { li { (s) } } }
        @if let Some(s) = capacity_words(p) {
            h3 { "Capacity" }
            p { (s) }
        }
        @if !p.alerts.is_empty() {
            h3 { "Account alerts" }
            table {
                (head(&["Alert", "Severity", "Tiers", "When"]))
                tbody {
                    @for a in &p.alerts {
                        tr {
                            th scope="row" { (a.id) }
                            td { span class={"sev " (severity(a.severity))} { (severity(a.severity)) } }
                            td { @let ts: Vec<&str> = p.tiers.iter().zip(&a.applies).filter(|(_, x)| **x).map(|(t, _)| t.id.as_str()).collect(); (ts.join(", ")) }
                            td { code { (a.when.source) } }
                        }
                    }
                }
            }
        }
        @if !p.portfolio_alerts.is_empty() {
            h3 { "Portfolio alerts" }
            ul { @for a in &p.portfolio_alerts { li { strong { (a.id) } " (" (severity(a.severity)) "): " code { (a.when.source) } } } }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Book

pub fn book_page(reg: &Registry, policy: Option<&str>, result: Option<Markup>) -> Markup {
    let body = html! {
        h1 { "Book" }
        p class="lead" {
            "Upload or paste a book (a CRM export as CSV, JSON lines or a JSON array) to see it "
            "decided as a whole: tiers, revenue, each manager's load, portfolio alerts and every "
            "account."
        }
        form id="book-form" class="panel" method="post" action="book" data-fetch="result" data-store-book {
            (policy_select(reg, policy))
            div class="field" {
                label for="book-file" { "Book file (CSV, JSON lines or JSON)" }
                input type="file" id="book-file" accept=".csv,.jsonl,.ndjson,.json,text/csv,application/json" data-fill="book";
            }
            div class="field" {
                label for="book" { "Or paste the book" }
                textarea id="book" name="book" rows="6" spellcheck="false" data-book {}
            }
            button type="submit" { "Show the book" }
            p class="hint" {
                "The server decides the book in memory and keeps nothing. This browser tab keeps a "
                "copy (session storage) so the Account and What-if pages can use it."
            }
        }
        section id="result" aria-live="polite" aria-label="Result" { @if let Some(r) = result { (r) } }
    };
    layout("Book", Nav::Book, body)
}

fn change_label(c: Change) -> &'static str {
    c.as_str()
}

pub fn book_result(
    loaded: &Loaded,
    r: &PortfolioResult,
    records: &[crate::snapshot::Record],
) -> Markup {
    let p = &loaded.policy;
    let s = &r.summary;
    let cap = p.capacity.as_ref();
    let mut alert_ids: Vec<&str> = p.alerts.iter().map(|a| a.id.as_str()).collect();
    alert_ids.dedup();
    let errors: Vec<(&Option<String>, &crate::snapshot::AccountError)> = r
        .accounts
        .iter()
        .filter_map(|o| match o {
            Outcome::Error { id, error } => Some((id, error)),
            Outcome::Decision(_) => None,
        })
        .collect();
    html! {
        div class="result" data-kind="book" data-accounts=(s.account_count) {
            h2 { "The book under " (p.name) " " span class="muted" { "(" code { (short(&p.hash)) } ")" } }
            p class="summary" {
                strong { (s.account_count) } " accounts decided"
                @if s.error_count > 0 { ", " strong { (s.error_count) } " answered with an error" }
                "; total revenue " (grouped(s.total_revenue))
                "; the 10 largest hold " (Num(s.top10_revenue_share * 100.0)) "% of it."
            }
            p class="summary" {
                "Against their current tier: "
                (s.changes.promote) " promoted, " (s.changes.demote) " demoted, " (s.changes.hold) " held, "
                (s.changes.none) " unchanged, " (s.changes.new) " new."
            }
            div class="charts" {
                figure {
                    (svg::tiers("chart-tiers", &s.tiers))
                    figcaption { "Accounts and revenue per tier." }
                }
                @if cap.is_some() {
                    figure {
                        (svg::managers("chart-managers", &s.managers, cap.and_then(|c| c.min), cap.and_then(|c| c.max)))
                        figcaption { "Each manager's strategic and key accounts against the per-manager band (shaded)." }
                    }
                }
            }
            h3 { "Portfolio alerts" }
            @if s.portfolio_alerts.is_empty() { p { "None." } }
            ul class="alerts" {
                @for a in &s.portfolio_alerts {
                    li { span class={"sev " (severity(a.severity))} { (severity(a.severity)) } " " strong { (a.id) } ": " (a.message) }
                }
            }
            @if !errors.is_empty() {
                details class="problem" {
                    summary { (errors.len()) " account(s) could not be decided" }
                    ul { @for (id, e) in errors.iter().take(200) {
                        li { code { (id.as_deref().unwrap_or("(no id)")) } " " (e.code) ": " (e.message) }
                    } }
                }
            }
            h3 id="accounts-heading" { "Accounts" }
            div class="filters" role="group" aria-labelledby="accounts-heading" {
                div class="field" {
                    label for="filter-tier" { "Tier" }
                    select id="filter-tier" data-filter="tier" {
                        option value="" { "All tiers" }
                        @for t in &p.tiers { option value=(t.id) { (t.id) } }
                    }
                }
                div class="field" {
                    label for="filter-change" { "Change" }
                    select id="filter-change" data-filter="change" {
                        option value="" { "All changes" }
                        @for c in ["promote", "demote", "hold", "none", "new"] { option value=(c) { (c) } }
                    }
                }
                div class="field" {
                    label for="filter-alert" { "Alert" }
                    select id="filter-alert" data-filter="alert" {
                        option value="" { "Any or none" }
                        @for a in &alert_ids { option value=(a) { (a) } }
                    }
                }
                p class="count" id="accounts-count" aria-live="polite" { (s.account_count) " accounts" }
            }
            table class="accounts" id="accounts" {
                caption { "Every decided account; the id opens its explanation." }
                thead { tr {
                    th scope="col" { "Account" } th scope="col" { "Name" } th scope="col" { "Manager" }
                    th scope="col" { "Score" } th scope="col" { "Tier" } th scope="col" { "Change" } th scope="col" { "Alerts" }
                } }
                tbody {
                    @for (i, o) in r.accounts.iter().enumerate() {
                        @if let Outcome::Decision(d) = o {
                            @let alerts: Vec<&str> = d.alerts.iter().map(|a| &*a.id).collect();
                            tr data-tier=(d.tier) data-change=(change_label(d.change)) data-alerts=(alerts.join(" ")) {
                                td { a href={"account?policy=" (enc(&p.name)) "&id=" (enc(&d.id))} { (d.id) } }
                                td { (records.get(i).and_then(|r| r.as_ref().ok()).and_then(|s| s.name.as_deref()).unwrap_or("")) }
                                td { (d.manager.as_deref().unwrap_or("")) }
                                td class="num" { (Num(d.score)) }
                                td { (tier_cell(d)) }
                                td { (change_label(d.change)) }
                                td { (alerts.join(", ")) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn tier_cell(d: &Decision) -> Markup {
    html! {
        @match d.previous_tier.as_deref() {
            Some(prev) if prev != &*d.tier => { (prev) " → " strong { (d.tier) } }
            _ => { (d.tier) }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Account

pub fn account_page(
    reg: &Registry,
    policy: Option<&str>,
    id: Option<&str>,
    result: Option<Markup>,
) -> Markup {
    let body = html! {
        h1 { "Account" }
        p class="lead" {
            "One decision explained: what each criterion adds, the thresholds, how far the next "
            "tier is and the one change that would reach it, and what holds the account where it "
            "is."
        }
        form id="account-form" class="panel" method="post" action="account" data-fetch="result" data-autosubmit {
            (policy_select(reg, policy))
            div class="field" {
                label for="account-id" { "Account id" }
                input type="text" id="account-id" name="id" value=(id.unwrap_or("")) autocomplete="off";
            }
            details data-open-when-empty {
                summary { "The book (kept from the Book page), or one snapshot" }
                div class="field" {
                    label for="book" { "The book it is in, or one snapshot as JSON" }
                    textarea id="book" name="book" rows="4" spellcheck="false" data-book {}
                }
            }
            button type="submit" { "Explain" }
        }
        section id="result" aria-live="polite" aria-label="Result" { @if let Some(r) = result { (r) } }
    };
    layout("Account", Nav::Account, body)
}

pub fn account_result(
    loaded: &Loaded,
    outcome: &Outcome,
    snap: Option<&Snapshot>,
    level: &str,
) -> Markup {
    let p = &loaded.policy;
    let d = match outcome {
        Outcome::Decision(d) => d,
        Outcome::Error { id, error } => {
            return html! {
                div class="problem" role="alert" data-code=(error.code) {
                    h2 { "No decision for " (id.as_deref().unwrap_or("this record")) }
                    p { (error.message) }
                    p class="code" { "code: " code { (error.code) }
                        @if let Some(f) = &error.field { "; field " code { (f) } }
                        @if let Some(pl) = &error.place { "; at " code { (pl.to_string()) } } }
                }
            };
        }
    };
    let ex = snap.map(|s| explain::explain(p, s, d));
    let name = snap.and_then(|s| s.name.as_deref());
    let rows: Vec<(String, f64, f64)> =
        d.scores.iter().map(|c| (c.id.to_string(), c.score, c.weight)).collect();
    let wsum: f64 = d.scores.iter().map(|c| c.weight).sum();
    let thresholds: Vec<(String, f64)> = p
        .tiers
        .iter()
        .take(p.tiers.len().saturating_sub(1))
        .map(|t| (t.id.clone(), t.min_score))
        .collect();
    html! {
        div class="result" data-kind="account" data-account=(d.id) {
            h2 {
                @if let Some(n) = name { (n) " " span class="muted" { "(" (d.id) ")" } } @else { (d.id) }
            }
            dl class="facts" {
                dt { "Tier" } dd { strong class="tier" data-tier=(d.tier) { (d.tier) } }
                dt { "Change" } dd { (d.change.as_str()) @if let Some(prev) = &d.previous_tier { " (from " (prev) ")" } }
                dt { "Score" } dd { (Num(d.score)) " " span class="muted" { "(qualifies for " (d.qualified_tier) ")" } }
                dt { "Manager" } dd { (d.manager.as_deref().unwrap_or("none")) }
                dt { "Decided" } dd { @if level == "portfolio" { "with its book (caps and capacity included)" } @else { "on its own, as /v1/evaluate does" } }
                dt { "Policy" } dd { (p.name) " " code { (short(&p.hash)) } }
            }
            @if let Some(ex) = &ex {
                section class="explain" aria-labelledby="explain-h" {
                    h3 id="explain-h" { "What would change it" }
                    ul { @for s in &ex.sentences { li { (s) } } }
                    @if let Some(nt) = ex.next_tier.as_ref().filter(|nt| nt.gap > 0.0) {
                        details {
                            summary { "Each criterion on its own, towards " (nt.tier) }
                            table {
                                thead { tr { th scope="col" { "Criterion" } th scope="col" { "Today" } th scope="col" { "Needed" } th scope="col" { "Adds" } th scope="col" { "Reaches " (nt.tier) } } }
                                tbody { @for p in &nt.paths { tr {
                                    th scope="row" { (p.criterion) }
                                    td class="num" { @if let Some(v) = p.value_now { (p.input.as_deref().unwrap_or("")) " " (grouped(v)) " (score " (Num(p.score_now)) ")" } @else { "score " (Num(p.score_now)) } }
                                    td class="num" { @if let Some(v) = p.value_needed { "≥ " (grouped(v)) } @else if let Some(s) = p.score_needed { "score " (Num(s)) } @else { "out of reach" } }
                                    td class="num" { @if let Some(a) = p.adds { "+" (Num(a)) } }
                                    td { @if p.reaches { "yes" } @else { "no" } }
                                } } }
                            }
                        }
                    }
                }
            }
            h3 { "Criteria" }
            figure {
                (svg::criteria("chart-criteria", &rows))
                figcaption { "Each criterion's contribution: its score on the " (Num(p.scale.0)) "–" (Num(p.scale.1)) " scale times its weight, over the total weight." }
            }
            table {
                (head(&["Criterion", "Score", "Weight", "Adds"]))
                tbody { @for c in &d.scores { tr {
                    th scope="row" { (c.id) } td class="num" { (Num(c.score)) } td class="num" { (Num(c.weight)) }
                    td class="num" { (Num(if wsum > 0.0 { c.weight * c.score / wsum } else { 0.0 })) }
                } } }
            }
            h3 { "Thresholds" }
            figure {
                (svg::thresholds("chart-thresholds", &thresholds, d.score, p.scale))
                figcaption { "Where the score stands against each tier's min_score." }
            }
            ul {
                @for (i, t) in p.tiers.iter().enumerate() {
                    li { code { (t.id) } ": " (tier_words(p, i))
                        @if i + 1 < p.tiers.len() && p.movement.promote_margin > 0.0 { "; promotion from below at " (Num(t.min_score + p.movement.promote_margin)) }
                        @if i + 1 < p.tiers.len() && p.movement.demote_margin > 0.0 { "; demotion below " (Num(t.min_score - p.movement.demote_margin)) }
                    }
                }
            }
            @if let Some(nt) = &d.next_tier {
                h3 { "Distance to the next tier" }
                p { (nt.tier) " needs " (Num(nt.needs)) "; the score is " (Num(d.score))
                    @if nt.gap > 0.0 { ", " strong { (Num(nt.gap)) } " short." } @else { ", already there." }
                    @if let Some(w) = &nt.when { " Its condition " code { (w) } @match nt.when_holds { Some(true) => " holds.", Some(false) => " does not hold.", None => " is checked once the score gets there." } }
                }
            }
            h3 { "Reasons" }
            ol class="reasons" { @for r in &d.reasons { li { code { (r.code) } " " (r.message) } } }
            h3 { "Alerts" }
            @if d.alerts.is_empty() { p { "None." } }
            ul class="alerts" { @for a in &d.alerts {
                li { span class={"sev " (severity(a.severity))} { (severity(a.severity)) } " " strong { (a.id) } ": " (a.message) }
            } }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What-if

pub fn whatif_page(reg: &Registry, loaded: &Loaded, result: Option<Markup>) -> Markup {
    let p = &loaded.policy;
    let all = fields::fields(p);
    let mut groups: Vec<(&str, Vec<&fields::Field>)> = Vec::new();
    for f in &all {
        match groups.iter_mut().find(|(g, _)| *g == f.group) {
            Some((_, v)) => v.push(f),
            None => groups.push((f.group, vec![f])),
        }
    }
    let toml = loaded
        .files
        .get("policy.toml")
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    let body = html! {
        h1 { "What-if" }
        p class="lead" {
            "Change a threshold, a weight or a cap and see what it would do to the book: who "
            "moves, which managers go over or under capacity, which alerts appear or disappear. "
            "Nothing goes live from here."
        }
        form class="panel inline" method="get" action="whatif" {
            (policy_select(reg, Some(&p.name)))
            button type="submit" { "Use as the baseline" }
        }
        form id="whatif-form" method="post" action="whatif" data-fetch="result" data-live data-autosubmit {
            input type="hidden" name="policy" value=(p.name);
            div class="whatif" {
                div class="knobs" {
                    @for (g, fs) in &groups {
                        fieldset {
                            legend { (g) }
                            @for (i, f) in fs.iter().enumerate() {
                                @let id = format!("f-{}-{i}", g.replace(' ', "-").to_ascii_lowercase());
                                div class="field" {
                                    label for=(id) { (f.label) }
                                    input type="number" id=(id) name=(f.name) value=(f.value) data-default=(f.value)
                                        step=(if f.integer { "1" } else { "any" }) inputmode="decimal";
                                }
                            }
                        }
                    }
                    details {
                        summary { "Edit policy.toml instead" }
                        div class="field" {
                            label for="policy-toml" { "policy.toml of " (p.name) " (the fields above apply on top)" }
                            textarea id="policy-toml" name="policy_toml" rows="24" spellcheck="false" class="code" { (toml) }
                        }
                    }
                    details {
                        summary { "The book compared" }
                        div class="field" {
                            label for="book" { "Book (from the Book page, or paste one)" }
                            textarea id="book" name="book" rows="4" spellcheck="false" data-book {}
                        }
                    }
                    div class="buttons" {
                        button type="submit" { "Show the diff" }
                        button type="submit" formaction="whatif/policy.toml" data-no-fetch { "Download policy.toml" }
                        button type="reset" { "Back to the policy's values" }
                    }
                }
                section id="result" aria-live="polite" aria-label="Diff" { @if let Some(r) = result { (r) } }
            }
        }
    };
    layout("What-if", Nav::WhatIf, body)
}

pub fn override_problems(errs: &[policy::overrides::OverrideError]) -> Markup {
    html! {
        div class="problem" role="alert" data-code="invalid_override" {
            h2 { "These changes cannot be applied" }
            ul { @for e in errs { li { code { (e.path) } ": " (e.message) @if let Some(h) = &e.help { " — " (h) } } } }
        }
    }
}

/// Compile problems, each shown under its line of the edited file.
pub fn diagnostics(report: &policy::Report, text: &str) -> Markup {
    let lines: Vec<&str> = text.lines().collect();
    let mut at: BTreeMap<u32, Vec<&policy::Diagnostic>> = BTreeMap::new();
    for d in &report.diagnostics {
        at.entry(d.place.line).or_default().push(d);
    }
    // Two lines around each problem in policy.toml.
    let mut shown: Vec<u32> = Vec::new();
    for d in report.diagnostics.iter().filter(|d| d.place.file == "policy.toml" && d.place.line > 0)
    {
        for l in d.place.line.saturating_sub(2).max(1)..=(d.place.line + 2).min(lines.len() as u32)
        {
            if !shown.contains(&l) {
                shown.push(l);
            }
        }
    }
    shown.sort_unstable();
    let n = report.errors().count();
    html! {
        div class="problem" role="alert" data-code="candidate_invalid" {
            h2 { "The candidate has " (n) " problem" @if n != 1 { "s" } }
            ul class="diagnostics" {
                @for d in &report.diagnostics {
                    li { code { (d.place.file) ":" (d.place.line) ":" (d.place.column) } " " (d.message)
                        @if let Some(h) = &d.help { " — " (h) } }
                }
            }
            @if !shown.is_empty() {
                ol class="source" aria-label="policy.toml around the problems" {
                    @for (k, l) in shown.iter().enumerate() {
                        @if k > 0 && shown[k - 1] + 1 != *l { li class="gap" aria-hidden="true" { "…" } }
                        @let bad = at.get(l).map(|v| v.iter().any(|d| d.place.file == "policy.toml")).unwrap_or(false);
                        li value=(l) class=(if bad { "bad" } else { "" }) {
                            code { (lines.get(*l as usize - 1).copied().unwrap_or("")) }
                            @if bad { @for d in at.get(l).into_iter().flatten().filter(|d| d.place.file == "policy.toml") {
                                span class="note" { "↑ column " (d.place.column) ": " (d.message) }
                            } }
                        }
                    }
                }
            }
        }
    }
}

pub fn whatif_result(loaded: &Loaded, c: &Compared) -> Markup {
    let d = &c.diff;
    let s = &d.summary;
    let p = &loaded.policy;
    // Alerts added and removed, per alert id, over the accounts that changed.
    let mut alerts: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for a in &d.accounts {
        for x in &a.alerts_added {
            alerts.entry(&x.id).or_default().0 += 1;
        }
        for x in &a.alerts_removed {
            alerts.entry(&x.id).or_default().1 += 1;
        }
    }
    let mut moved: Vec<&crate::whatif::AccountDiff> = d.accounts.iter().collect();
    moved.sort_by(|a, b| {
        (a.from == a.to)
            .cmp(&(b.from == b.to))
            .then(b.score_before.total_cmp(&a.score_before))
            .then(a.id.as_bytes().cmp(b.id.as_bytes()))
    });
    let shown = moved.len().min(100);
    let tiers: Vec<(String, u64, u64)> =
        d.tiers.iter().map(|t| (t.id.clone(), t.before, t.after)).collect();
    html! {
        div class="result" data-kind="diff" data-changed=(s.changed) data-promoted=(s.promoted) data-demoted=(s.demoted) {
            h2 { "What the change does" }
            p class="headline" { (crate::whatif::render::headline(d)) }
            @if c.overrides.is_empty() && !c.edited {
                p class="muted" { "No change yet: edit a field (or policy.toml) to see its effect." }
            } @else {
                p { "Candidate " code { (short(&d.candidate.hash)) } " against " (p.name) " " code { (short(&d.baseline.hash)) } ":"
                    @if c.edited { " policy.toml edited" @if !c.overrides.is_empty() { ", and" } }
                    @for o in &c.overrides { " " code { (o) } } }
            }
            @if !c.failed_cases.is_empty() {
                details class="problem" role="alert" {
                    summary { (c.failed_cases.len()) " of the candidate's " (c.cases) " test cases fail, so it would not go live" }
                    ul { @for f in c.failed_cases.iter().take(20) { li { q { (f.name) } " (" code { (f.place.file) ":" (f.place.line) } "): " (f.failures.join("; ")) } } }
                }
            }
            @if !c.warnings.is_empty() {
                ul class="warnings" { @for w in &c.warnings { li { "warning " code { (w.place.file) ":" (w.place.line) } " " (w.message) } } }
            }
            div class="buttons" {
                button type="button" data-copy="markdown" { "Copy as markdown" }
                span class="copied" aria-live="polite" {}
            }
            details {
                summary { "The markdown, for a pull request" }
                div class="field" {
                    label for="markdown" { "Markdown for a pull request" }
                    textarea id="markdown" readonly rows="10" class="code" { (c.markdown) }
                }
            }
            div class="charts" {
                figure {
                    (svg::heatmap("chart-transitions", &d.transitions.from, &d.transitions.to, &d.transitions.counts))
                    figcaption { "Transition matrix: rows are the tier under " (p.name) ", columns under the candidate. The diagonal stays; red cells move." }
                }
                figure {
                    (svg::tiers_before_after("chart-before-after", &tiers))
                    figcaption { "Accounts per tier before and after." }
                }
            }
            dl class="facts" {
                dt { "Accounts" } dd { (s.accounts) " (" (s.decided_both) " decided under both)" }
                dt { "Changed" } dd { (s.changed) ": " (s.promoted) " up, " (s.demoted) " down, " (s.same_tier_changed) " same tier" }
                dt { "Scores changed" } dd { (s.scores_changed) }
                dt { "Managers" } dd { (s.managers_newly_over) " newly over, " (s.managers_no_longer_over) " no longer over, " (s.managers_newly_under) " newly under, " (s.managers_no_longer_under) " no longer under" }
                dt { "Events it would emit" } dd { "shown here once events are on in this service" }
            }
            table {
                caption { "Tiers before and after" }
                (head(&["Tier", "Before", "After", "Revenue before", "Revenue after"]))
                tbody { @for t in &d.tiers { tr {
                    th scope="row" { (t.id) } td class="num" { (t.before) } td class="num" { (t.after) }
                    td class="num" { (grouped(t.revenue_before)) } td class="num" { (grouped(t.revenue_after)) }
                } } }
            }
            h3 { "Accounts that change" }
            @if moved.is_empty() { p { "None." } } @else {
                table class="accounts" id="moved" {
                    caption { (moved.len()) " account(s); " @if shown < moved.len() { "the first " (shown) " shown (tier moves first); the markdown and the API list them all" } @else { "all shown" } "." }
                    (head(&["Account", "Manager", "Tier", "Score", "Change", "Alerts"]))
                    tbody { @for a in moved.iter().take(shown) { tr data-direction=(a.direction.as_str()) {
                        td { a href={"account?policy=" (enc(&p.name)) "&id=" (enc(&a.id))} { (a.id) } }
                        td { (a.manager.as_deref().unwrap_or("")) }
                        td { @if a.from == a.to { (a.from) } @else { (a.from) " → " strong { (a.to) } } }
                        td class="num" { (Num(a.score_before)) @if (a.score_before - a.score_after).abs() > 1e-9 { " → " (Num(a.score_after)) } }
                        td { (a.change_before.as_str()) @if a.change_before != a.change_after { " → " (a.change_after.as_str()) } }
                        td { @for x in &a.alerts_added { span class="plus" { "+" (x.id) } " " } @for x in &a.alerts_removed { span class="minus" { "−" (x.id) } " " } }
                    } } }
                }
            }
            h3 { "Managers newly over or under capacity" }
            @if d.managers.is_empty() { p { "None." } } @else {
                table {
                    (head(&["Manager", "Accounts", "Status"]))
                    tbody { @for m in &d.managers { tr {
                        th scope="row" { (m.manager) }
                        td class="num" { (m.count_before.map_or("-".into(), |c| c.to_string())) " → " (m.count_after.map_or("-".into(), |c| c.to_string())) }
                        td { (m.status_before.map_or("-", |x| x.as_str())) " → " (m.status_after.map_or("-", |x| x.as_str())) }
                    } } }
                }
            }
            h3 { "Alerts added and removed" }
            @if alerts.is_empty() && d.portfolio_alerts.added.is_empty() && d.portfolio_alerts.removed.is_empty() && d.portfolio_alerts.changed.is_empty() { p { "None." } }
            ul {
                @for (id, (add, rem)) in &alerts { li { code { (id) } ": " @if *add > 0 { "+" (add) " account(s)" } @if *add > 0 && *rem > 0 { ", " } @if *rem > 0 { "−" (rem) " account(s)" } } }
                @for a in &d.portfolio_alerts.added { li { "portfolio alert " code { (a.id) } " raised: " (a.message) } }
                @for a in &d.portfolio_alerts.removed { li { "portfolio alert " code { (a.id) } " no longer raised" } }
                @for a in &d.portfolio_alerts.changed { li { "portfolio alert " code { (a.before.id) } ": " (a.before.message) " → " (a.after.message) } }
            }
            @if !d.newly_failing.is_empty() || !d.newly_decided.is_empty() {
                h3 { "Accounts decided under one policy only" }
                ul {
                    @for f in &d.newly_failing { li { code { (f.id.as_deref().unwrap_or("?")) } " fails under the candidate: " (f.error.message) } }
                    @for f in &d.newly_decided { li { code { (f.id.as_deref().unwrap_or("?")) } " is decided under the candidate only (" (f.tier) ")" } }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Backtest

pub fn backtest_page(_reg: &Registry) -> Markup {
    let body = html! {
        h1 { "Backtest" }
        p class="lead" {
            "A policy replayed over a book's history: tier counts and moves per period, "
            "flip-flops, alerts per month."
        }
        div class="problem" role="status" {
            p { "The backtest engine is not part of this build yet; this page shows its charts once it is." }
        }
    };
    layout("Backtest", Nav::Backtest, body)
}
