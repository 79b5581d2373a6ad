//! Runs a policy's own test cases (`tests/*.toml`): pure, so `tierwise test` and the
//! service's reload share it.

use super::*;
use crate::policy::TestCase;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CaseResult {
    pub name: String,
    pub place: Place,
    /// What did not match; empty when the case passed.
    pub failures: Vec<String>,
    /// For a failed case, what the decisions it checks were (per-criterion scores, tier,
    /// change, reasons, alerts), to read beside the expectation; empty when it passed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub got: Vec<String>,
}

impl CaseResult {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs every case of the policy, in file order.
pub fn run_cases(policy: &Policy) -> Vec<CaseResult> {
    policy.cases.iter().map(|c| run_case(policy, c)).collect()
}

fn same_set(expected: &[String], got: &[String]) -> bool {
    let mut a: Vec<&String> = expected.iter().collect();
    let mut b: Vec<&String> = got.iter().collect();
    a.sort();
    b.sort();
    a == b
}

pub fn run_case(policy: &Policy, case: &TestCase) -> CaseResult {
    let mut failures = Vec::new();
    let e = &case.expect;
    let records: Vec<Record> = case.accounts.iter().cloned().map(Ok).collect();
    let (outcomes, summary) = if case.portfolio {
        let r = evaluate_portfolio(policy, &records);
        (r.accounts, Some(r.summary))
    } else {
        (evaluate(policy, &records), None)
    };

    // Per-account expectations apply to the one account of an account-level case.
    if !case.portfolio {
        match outcomes.first() {
            None => failures.push("no outcome".into()),
            Some(Outcome::Error { error, .. }) => match &e.error {
                Some(code) if code == error.code => {}
                Some(code) => failures.push(format!(
                    "expected error `{code}`, got error `{}`: {}",
                    error.code, error.message
                )),
                None => failures.push(format!(
                    "expected a decision, got error `{}`: {}",
                    error.code, error.message
                )),
            },
            Some(Outcome::Decision(d)) => {
                if let Some(code) = &e.error {
                    failures.push(format!(
                        "expected error `{code}`, got a decision (tier `{}`)",
                        d.tier
                    ));
                }
                check_decision(e, d, &mut failures);
            }
        }
    } else {
        if let Some(code) = &e.error
            && !outcomes
                .iter()
                .any(|o| matches!(o, Outcome::Error { error, .. } if error.code == code))
        {
            failures.push(format!("expected some account to fail with `{code}`"));
        }
        if e.error.is_none() {
            for o in &outcomes {
                if let Outcome::Error { id, error } = o {
                    failures.push(format!(
                        "account `{}` failed: `{}`: {}",
                        id.as_deref().unwrap_or("?"),
                        error.code,
                        error.message
                    ));
                }
            }
        }
        // Single-account expectations in a portfolio case apply to its first account.
        if let Some(Outcome::Decision(d)) = outcomes.first() {
            check_decision(e, d, &mut failures);
        }
    }

    if let Some(tiers) = &e.tiers {
        for (id, want) in tiers {
            match outcomes.iter().find(|o| o.id() == Some(id.as_str())) {
                Some(Outcome::Decision(d)) if *d.tier == **want => {}
                Some(Outcome::Decision(d)) => failures
                    .push(format!("account `{id}`: expected tier `{want}`, got `{}`", d.tier)),
                Some(Outcome::Error { error, .. }) => failures.push(format!(
                    "account `{id}`: expected tier `{want}`, got error `{}`",
                    error.code
                )),
                None => failures.push(format!("account `{id}` is not in the case")),
            }
        }
    }
    if let Some(managers) = &e.managers {
        let listed = summary.as_ref().map(|s| s.managers.as_slice()).unwrap_or_default();
        for (m, want) in managers {
            match listed.iter().find(|l| &l.manager == m) {
                Some(l) if l.status.as_str() == want => {}
                Some(l) => failures.push(format!("manager `{m}`: expected `{want}`, got `{}` ({} accounts)", l.status.as_str(), l.count)),
                None => failures.push(format!("manager `{m}` is not listed (is `[capacity]` set and the manager on a decided account?)")),
            }
        }
    }
    if let Some(want) = &e.portfolio_alerts {
        let got: Vec<String> = summary
            .as_ref()
            .map(|s| s.portfolio_alerts.iter().map(|a| a.id.to_string()).collect())
            .unwrap_or_default();
        if !same_set(want, &got) {
            failures.push(format!("expected portfolio alerts {want:?}, got {got:?}"));
        }
        if let Some(s) = &summary {
            for pe in &s.portfolio_errors {
                failures
                    .push(format!("portfolio alert `{}` failed: {}", pe.alert, pe.error.message));
            }
        }
    }
    if let Some(s) = &summary {
        let count = |id: &str| s.tiers.iter().find(|t| &*t.id == id).map_or(0, |t| t.count);
        let share = |id: &str| s.tiers.iter().find(|t| &*t.id == id).map_or(0.0, |t| t.share);
        if let Some(want) = &e.tier_counts {
            for (t, n) in want {
                if count(t) != *n {
                    failures.push(format!(
                        "tier `{t}`: expected {n} accounts, got {} (of {} decided)",
                        count(t),
                        s.account_count
                    ));
                }
            }
        }
        if let Some(want) = &e.tier_shares {
            let tol = e.tolerance.unwrap_or(0.005);
            for (t, x) in want {
                if (share(t) - x).abs() > tol + 1e-12 {
                    failures.push(format!(
                        "tier `{t}`: expected a share of {x} (± {tol}), got {} ({} of {} decided)",
                        share(t),
                        count(t),
                        s.account_count
                    ));
                }
            }
        }
    }
    let mut got = if failures.is_empty() { Vec::new() } else { shown(case, e, &outcomes) };
    if let Some(s) = summary.as_ref().filter(|_| !failures.is_empty()) {
        let tiers: Vec<String> = s
            .tiers
            .iter()
            .map(|t| format!("{} {} ({:.1}%)", t.id, t.count, t.share * 100.0))
            .collect();
        got.push(format!(
            "book: {} decided, {} errors; {}",
            s.account_count,
            s.error_count,
            tiers.join(", ")
        ));
    }
    CaseResult { name: case.name.clone(), place: case.place.clone(), failures, got }
}

/// The decisions a failed case checks, as lines: the account of an account-level case, the
/// first account and every account named in `tiers` of a portfolio case.
fn shown(case: &TestCase, e: &crate::policy::raw::RawExpect, outcomes: &[Outcome]) -> Vec<String> {
    let mut ids: Vec<&str> = Vec::new();
    if let Some(first) = outcomes.first().and_then(Outcome::id) {
        ids.push(first);
    }
    if case.portfolio
        && let Some(tiers) = &e.tiers
    {
        for id in tiers.keys() {
            if !ids.contains(&id.as_str()) {
                ids.push(id);
            }
        }
    }
    let mut out = Vec::new();
    for id in ids {
        match outcomes.iter().find(|o| o.id() == Some(id)) {
            Some(Outcome::Decision(d)) => out.extend(explain(d)),
            Some(Outcome::Error { error, .. }) => {
                out.push(format!("account `{id}`: error `{}`: {}", error.code, error.message))
            }
            None => {}
        }
    }
    out
}

/// One decision in a few lines: what a failed expectation is compared with.
pub fn explain(d: &Decision) -> Vec<String> {
    let total: f64 = d.scores.iter().map(|c| c.weight).sum();
    let criteria: Vec<String> = d
        .scores
        .iter()
        .map(|c| {
            let share = if total > 0.0 { c.weight * c.score / total } else { 0.0 };
            format!("{} {} (weight {}, adds {:.4})", c.id, c.score, c.weight, share)
        })
        .collect();
    let from = d.previous_tier.as_deref().map(|t| format!(" from `{t}`")).unwrap_or_default();
    let mut out = vec![
        format!(
            "account `{}`: score {} → tier `{}`{from}, change `{}`, qualified for `{}`",
            d.id,
            d.score,
            d.tier,
            d.change.as_str(),
            d.qualified_tier
        ),
        format!("  criteria: {}", criteria.join("; ")),
    ];
    for r in &d.reasons {
        out.push(format!("  reason {}: {}", r.code, r.message));
    }
    let alerts: Vec<&str> = d.alerts.iter().map(|a| &*a.id).collect();
    out.push(format!(
        "  alerts: {}",
        if alerts.is_empty() { "none".to_string() } else { alerts.join(", ") }
    ));
    out
}

fn check_decision(e: &crate::policy::raw::RawExpect, d: &Decision, failures: &mut Vec<String>) {
    if let Some(t) = &e.tier
        && *d.tier != **t
    {
        failures.push(format!("expected tier `{t}`, got `{}`", d.tier));
    }
    if let Some(t) = &e.qualified_tier
        && *d.qualified_tier != **t
    {
        failures.push(format!("expected qualified tier `{t}`, got `{}`", d.qualified_tier));
    }
    if let Some(c) = &e.change
        && d.change.as_str() != c
    {
        failures.push(format!("expected change `{c}`, got `{}`", d.change.as_str()));
    }
    if let Some(want) = &e.alerts {
        let got: Vec<String> = d.alerts.iter().map(|a| a.id.to_string()).collect();
        if !same_set(want, &got) {
            failures.push(format!("expected alerts {want:?}, got {got:?}"));
        }
    }
    if let Some(want) = &e.reasons {
        for code in want {
            if !d.reasons.iter().any(|r| r.code == code) {
                let got: Vec<&str> = d.reasons.iter().map(|r| r.code).collect();
                failures.push(format!("expected reason `{code}`, got {got:?}"));
            }
        }
    }
    if let Some(s) = e.score
        && (d.score - s).abs() > 1e-9
    {
        failures.push(format!("expected score {s}, got {}", d.score));
    }
}

/// What a policy's own test cases reach (`tierwise test --coverage`, like `opa test
/// --coverage`): each tier, criterion, hold and alert, with how many decisions of the cases
/// reach it. A policy's cases should show every rule doing something: a tier no case ends in,
/// a hold that never keeps an account, an alert never raised is a rule nobody has checked.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Coverage {
    /// Decisions made while running the cases (each account of each case).
    pub decisions: u64,
    /// A tier is reached when a decision ends in it.
    pub tiers: Vec<Reach>,
    /// A criterion is reached when the cases give it at least two different scores: a
    /// criterion that always scores the same is never seen changing an outcome.
    pub criteria: Vec<Reach>,
    /// A hold is reached when it keeps an account in its tier.
    pub holds: Vec<Reach>,
    /// An alert is reached when it is raised.
    pub alerts: Vec<Reach>,
    pub portfolio_alerts: Vec<Reach>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Reach {
    pub id: String,
    /// Decisions (portfolio alerts: portfolio cases) that reach it.
    pub hits: u64,
    /// For criteria: the lowest and highest score seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<(f64, f64)>,
}

impl Reach {
    pub fn reached(&self) -> bool {
        match self.range {
            Some((lo, hi)) => hi > lo,
            None => self.hits > 0,
        }
    }
}

impl Coverage {
    /// Every rule of every kind is reached.
    pub fn complete(&self) -> bool {
        [&self.tiers, &self.criteria, &self.holds, &self.alerts, &self.portfolio_alerts]
            .iter()
            .all(|list| list.iter().all(Reach::reached))
    }
}

/// Runs the cases again and records what their decisions reach.
pub fn coverage(policy: &Policy) -> Coverage {
    let reach = |id: &str| Reach { id: id.to_string(), hits: 0, range: None };
    let mut cov = Coverage {
        decisions: 0,
        tiers: policy.tiers.iter().map(|t| reach(&t.id)).collect(),
        criteria: policy.criteria.iter().map(|c| reach(&c.id)).collect(),
        holds: policy.movement.holds.iter().map(|h| reach(&h.id)).collect(),
        alerts: policy.alerts.iter().map(|a| reach(&a.id)).collect(),
        portfolio_alerts: policy.portfolio_alerts.iter().map(|a| reach(&a.id)).collect(),
    };
    // The engine names an applied hold in its reason: "hold `<id>`: ...".
    let hold_prefix: Vec<String> =
        policy.movement.holds.iter().map(|h| format!("hold `{}`", h.id)).collect();
    for case in &policy.cases {
        let records: Vec<Record> = case.accounts.iter().cloned().map(Ok).collect();
        let outcomes = if case.portfolio {
            let r = evaluate_portfolio(policy, &records);
            for a in &r.summary.portfolio_alerts {
                if let Some(x) = cov.portfolio_alerts.iter_mut().find(|x| *x.id == *a.id) {
                    x.hits += 1;
                }
            }
            r.accounts
        } else {
            evaluate(policy, &records)
        };
        for d in outcomes.iter().filter_map(Outcome::decision) {
            cov.decisions += 1;
            if let Some(t) = cov.tiers.iter_mut().find(|t| *t.id == *d.tier) {
                t.hits += 1;
            }
            for (c, s) in cov.criteria.iter_mut().zip(&d.scores) {
                c.hits += 1;
                let (lo, hi) = c.range.unwrap_or((s.score, s.score));
                c.range = Some((lo.min(s.score), hi.max(s.score)));
            }
            for r in d.reasons.iter().filter(|r| r.code == "hold") {
                if let Some(k) = hold_prefix.iter().position(|p| r.message.starts_with(p.as_str()))
                {
                    cov.holds[k].hits += 1;
                }
            }
            for a in &d.alerts {
                if let Some(x) = cov.alerts.iter_mut().find(|x| *x.id == *a.id) {
                    x.hits += 1;
                }
            }
        }
    }
    cov
}
