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
                Some(code) => failures.push(format!("expected error `{code}`, got error `{}`: {}", error.code, error.message)),
                None => failures.push(format!("expected a decision, got error `{}`: {}", error.code, error.message)),
            },
            Some(Outcome::Decision(d)) => {
                if let Some(code) = &e.error {
                    failures.push(format!("expected error `{code}`, got a decision (tier `{}`)", d.tier));
                }
                check_decision(e, d, &mut failures);
            }
        }
    } else {
        if let Some(code) = &e.error
            && !outcomes.iter().any(|o| matches!(o, Outcome::Error { error, .. } if error.code == code))
        {
            failures.push(format!("expected some account to fail with `{code}`"));
        }
        if e.error.is_none() {
            for o in &outcomes {
                if let Outcome::Error { id, error } = o {
                    failures.push(format!("account `{}` failed: `{}`: {}", id.as_deref().unwrap_or("?"), error.code, error.message));
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
                Some(Outcome::Decision(d)) => failures.push(format!("account `{id}`: expected tier `{want}`, got `{}`", d.tier)),
                Some(Outcome::Error { error, .. }) => failures.push(format!("account `{id}`: expected tier `{want}`, got error `{}`", error.code)),
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
        let got: Vec<String> = summary.as_ref().map(|s| s.portfolio_alerts.iter().map(|a| a.id.to_string()).collect()).unwrap_or_default();
        if !same_set(want, &got) {
            failures.push(format!("expected portfolio alerts {want:?}, got {got:?}"));
        }
        if let Some(s) = &summary {
            for pe in &s.portfolio_errors {
                failures.push(format!("portfolio alert `{}` failed: {}", pe.alert, pe.error.message));
            }
        }
    }
    CaseResult { name: case.name.clone(), place: case.place.clone(), failures }
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
