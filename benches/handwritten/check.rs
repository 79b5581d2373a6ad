//! Does the hand-written decision agree with the engine? Used by the bench's setup and by
//! `examples/check_handwritten.rs`. Compares, account by account: tier, change, score bits,
//! alert ids and texts; then each outcome's whole JSON, and the portfolio summary line.

use crate::handwritten as hw;
use tierwise::engine::{self, Outcome};
use tierwise::policy::Policy;
use tierwise::snapshot::{Record, Snapshot};

pub fn policy_ref(p: &Policy) -> hw::PolicyRef {
    hw::PolicyRef { name: p.name.clone(), version: p.version.clone(), hash: p.hash.clone() }
}

pub fn identity(s: &Snapshot) -> hw::Identity<'_> {
    use std::borrow::Cow::Borrowed;
    hw::Identity {
        id: Borrowed(s.id.as_str()),
        manager: s.manager.as_deref().map(Borrowed),
        current_tier: s.current_tier.as_deref().map(Borrowed),
        tier_since: s.tier_since.as_deref().map(Borrowed),
        as_of: Borrowed(s.as_of.as_str()),
    }
}

/// The engine's records (already parsed) validated by the hand-written code.
pub fn hw_accounts(records: &[Record]) -> Vec<Result<hw::Account<'_>, hw::HwError>> {
    let recs: Vec<Result<&Snapshot, hw::HwError>> = records
        .iter()
        .map(|r| {
            r.as_ref().map_err(|e| hw::HwError {
                id: e.id.clone(),
                code: e.code,
                message: e.message.clone(),
                field: None,
                rule: None,
                record: e.record,
            })
        })
        .collect();
    hw::validate_all(recs, |s| s.id.as_str(), |s| hw::validate_map(identity(s), &s.fields))
}

#[derive(Debug, Default)]
pub struct Mismatches {
    pub accounts: usize,
    pub tier: usize,
    pub change: usize,
    pub score_bits: usize,
    pub alerts: usize,
    pub errors: usize,
    /// Whole outcome JSON (reasons, next_tier, error fields included).
    pub json: usize,
}

impl Mismatches {
    pub fn decision_fields(&self) -> usize {
        self.tier + self.change + self.score_bits + self.alerts + self.errors
    }
}

/// Compares outcomes one by one; prints the first few differences.
pub fn compare(label: &str, engine: &[Outcome], hand: &[hw::Outcome<'_, '_>]) -> Mismatches {
    let mut m = Mismatches { accounts: engine.len(), ..Mismatches::default() };
    let mut shown = 0;
    if engine.len() != hand.len() {
        eprintln!("{label}: {} engine outcomes, {} hand-written", engine.len(), hand.len());
        m.json += engine.len().abs_diff(hand.len());
    }
    for (e, h) in engine.iter().zip(hand) {
        match (e, h) {
            (Outcome::Decision(d), hw::Outcome::Decision(x)) => {
                if *d.tier != *x.tier {
                    m.tier += 1;
                }
                if d.change.as_str()
                    != serde_json::to_value(x.change)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                {
                    m.change += 1;
                }
                if d.score.to_bits() != x.score.to_bits() {
                    m.score_bits += 1;
                }
                let ea: Vec<(&str, &str)> =
                    d.alerts.iter().map(|a| (&*a.id, a.message.as_str())).collect();
                let ha: Vec<(&str, &str)> =
                    x.alerts.iter().map(|a| (a.id, a.message.as_str())).collect();
                if ea != ha {
                    m.alerts += 1;
                }
            }
            (Outcome::Error { error, .. }, hw::Outcome::Error { error: x, .. }) => {
                if error.code != x.code || error.message != x.message {
                    m.errors += 1;
                }
            }
            _ => {
                m.tier += 1;
                m.errors += 1;
            }
        }
        let ej = serde_json::to_string(e).unwrap_or_default();
        let hj = serde_json::to_string(h).unwrap_or_default();
        if ej != hj {
            m.json += 1;
            if shown < 5 {
                shown += 1;
                eprintln!("{label}: mismatch\n  engine:      {ej}\n  handwritten: {hj}");
            }
        }
    }
    m
}

/// Account level and portfolio level over all records; prints a summary; returns the number
/// of mismatching accounts (decision fields or whole JSON) plus 1 if the summary differs.
pub fn run(policy: &Policy, records: &[Record]) -> usize {
    let pref = policy_ref(policy);

    let engine_out = engine::evaluate(policy, records);
    let hand_out = hw::evaluate(hw_accounts(records), &pref);
    let a = compare("account", &engine_out, &hand_out);
    let decided = engine_out.iter().filter(|o| o.decision().is_some()).count();
    eprintln!(
        "check, account level: {} accounts ({decided} decided, {} errors): mismatches tier {}, change {}, score bits {}, alerts {}, errors {}; whole JSON {}",
        a.accounts,
        a.accounts - decided,
        a.tier,
        a.change,
        a.score_bits,
        a.alerts,
        a.errors,
        a.json
    );

    let er = engine::evaluate_portfolio(policy, records);
    let (hand_p, summary) = hw::evaluate_portfolio(hw_accounts(records), &pref);
    let p = compare("portfolio", &er.accounts, &hand_p);
    // The same bytes as the CLI's summary line: policy, then summary, in field order.
    let es = [
        &b"{\"policy\":"[..],
        &serde_json::to_vec(&er.policy).unwrap_or_default(),
        b",\"summary\":",
        &serde_json::to_vec(&er.summary).unwrap_or_default(),
        b"}",
    ]
    .concat();
    let hs = hw::summary_line(&pref, &summary).unwrap_or_default();
    let summary_ok = es == hs;
    if !summary_ok {
        eprintln!(
            "portfolio summary differs:\n  engine:      {}\n  handwritten: {}",
            String::from_utf8_lossy(&es),
            String::from_utf8_lossy(&hs)
        );
    }
    let c = &er.summary.changes;
    eprintln!(
        "check, portfolio level: mismatches tier {}, change {}, score bits {}, alerts {}, errors {}; whole JSON {}; summary {} \
         (tiers {:?}, changes promote {} demote {} hold {} none {} new {}, managers over {}, portfolio alerts {:?})",
        p.tier,
        p.change,
        p.score_bits,
        p.alerts,
        p.errors,
        p.json,
        if summary_ok { "identical" } else { "DIFFERS" },
        er.summary.tiers.iter().map(|t| (t.id.as_str(), t.count)).collect::<Vec<_>>(),
        c.promote,
        c.demote,
        c.hold,
        c.none,
        c.new,
        er.summary.managers.iter().filter(|m| m.status == engine::Load::Over).count(),
        er.summary.portfolio_alerts.iter().map(|a| &*a.id).collect::<Vec<_>>(),
    );
    a.decision_fields().max(a.json) + p.decision_fields().max(p.json) + usize::from(!summary_ok)
}
