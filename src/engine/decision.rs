//! What the engine answers: decisions, errors and portfolio summaries, as serialized.
//!
//! Field order is the JSON order; lists are in a fixed order (criteria and alerts in
//! declaration order, managers by name, moves by account id) so the same input gives the
//! same bytes.

use crate::policy::Severity;
use crate::snapshot::AccountError;
use schemars::JsonSchema;
use serde::Serialize;
use std::sync::Arc;

pub use crate::policy::PolicyRef;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Moved to a better tier.
    Promote,
    /// Moved to a lower tier.
    Demote,
    /// Would have been demoted; a margin, tenure or hold kept it.
    Hold,
    /// Stays where it was.
    None,
    /// Had no current tier.
    New,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Promote => "promote",
            Change::Demote => "demote",
            Change::Hold => "hold",
            Change::None => "none",
            Change::New => "new",
        }
    }
}

/// One criterion's contribution.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct CriterionScore {
    // Ids are shared with the policy (`Arc<str>`): a decision names ten of them, and copying
    // each would cost more than the decision's arithmetic.
    pub id: Arc<str>,
    /// On the policy's scale (clamped).
    pub score: f64,
    pub weight: f64,
}

/// Why a decision came out as it did: a machine code and a sentence.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Reason {
    /// `qualifies`, `condition`, `new`, `promote`, `promote_margin`, `demote`, `margin`,
    /// `tenure`, `hold`, `max_steps`, `stay`, `cap`, `cap_protected`, `total_max`, `capacity`.
    pub code: &'static str,
    pub message: String,
}

/// An alert raised for an account or a portfolio.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct AlertOut {
    pub id: Arc<str>,
    pub severity: Severity,
    pub message: String,
}

/// How far the account is from the tier just above its final one.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct NextTier {
    pub tier: Arc<str>,
    /// `min_score + promote_margin` of that tier.
    pub needs: f64,
    /// `needs - score` (0 when the score is already there).
    pub gap: f64,
    /// That tier's condition, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when: Option<Arc<str>>,
    /// Whether the condition holds for this account; absent when it was not evaluated (the
    /// score is below that tier's `min_score`: conditions are evaluated lazily).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when_holds: Option<bool>,
}

/// The decision for one account.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Decision {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
    pub policy: Arc<PolicyRef>,
    /// Weighted mean of the criteria, unrounded.
    pub score: f64,
    pub scores: Vec<CriterionScore>,
    /// The best tier the score (and conditions) qualify for.
    pub qualified_tier: Arc<str>,
    /// `current_tier` from the snapshot.
    pub previous_tier: Option<String>,
    /// The final tier.
    pub tier: Arc<str>,
    pub change: Change,
    pub reasons: Vec<Reason>,
    pub alerts: Vec<AlertOut>,
    /// The tier just above `tier` and what it takes (absent for the best tier).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_tier: Option<NextTier>,
    /// Where movement alone put the account, when caps, `total_max` or capacity then moved it
    /// (portfolio level only). Not serialized: what-if reads it to tell moves that come from
    /// scores from moves that come from seats.
    #[serde(skip)]
    #[schemars(skip)]
    pub movement_tier: Option<Arc<str>>,
}

/// A decision, or why there is none. Every input account gets exactly one, in input order.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Outcome {
    Decision(Box<Decision>),
    Error { id: Option<String>, error: AccountError },
}

impl Outcome {
    pub fn error(e: AccountError) -> Self {
        Outcome::Error { id: e.id.clone(), error: e }
    }

    pub fn id(&self) -> Option<&str> {
        match self {
            Outcome::Decision(d) => Some(&d.id),
            Outcome::Error { id, .. } => id.as_deref(),
        }
    }

    pub fn decision(&self) -> Option<&Decision> {
        match self {
            Outcome::Decision(d) => Some(d),
            Outcome::Error { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Load {
    Under,
    Ok,
    Over,
}

impl Load {
    pub fn as_str(self) -> &'static str {
        match self {
            Load::Under => "under",
            Load::Ok => "ok",
            Load::Over => "over",
        }
    }
}

/// One manager's book against `capacity.per_manager`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ManagerLoad {
    pub manager: String,
    /// Accounts in the capacity tiers, before any overflow action.
    pub count: u64,
    pub status: Load,
    /// `flag`: the accounts beyond `max` (lowest scores), candidates to reassign.
    pub reassign: Vec<String>,
    /// `demote`: the accounts moved out of the capacity tiers.
    pub demoted: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct TierSummary {
    pub id: String,
    pub label: String,
    pub count: u64,
    /// Of the decided accounts.
    pub share: f64,
    /// Sum of `[portfolio] revenue` over the tier.
    pub revenue: f64,
}

/// An account whose final tier differs from its current one.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Move {
    pub id: String,
    pub from: String,
    pub to: String,
    pub change: Change,
}

/// A tier that ends with more accounts than its cap allows: the accounts past the limit may
/// not go lower (movement held them, or `max_steps` does), and each carries `cap_protected`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct OverCap {
    pub tier: String,
    /// `min(floor(max_share * N + 1e-9), max_count)`.
    pub limit: u64,
    /// Accounts in the tier at the end.
    pub count: u64,
}

/// A portfolio alert that could not be evaluated.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct PortfolioError {
    pub alert: String,
    pub error: AccountError,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, JsonSchema)]
pub struct ChangeCounts {
    pub promote: u64,
    pub demote: u64,
    pub hold: u64,
    pub none: u64,
    pub new: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Summary {
    /// Accounts that got a decision (N).
    pub account_count: u64,
    /// Accounts answered with an error.
    pub error_count: u64,
    pub total_revenue: f64,
    /// Share of revenue held by the 10 largest accounts.
    pub top10_revenue_share: f64,
    pub tiers: Vec<TierSummary>,
    /// Tiers over their cap because of protected accounts, best tier first.
    pub over_cap: Vec<OverCap>,
    pub changes: ChangeCounts,
    pub managers: Vec<ManagerLoad>,
    pub portfolio_alerts: Vec<AlertOut>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub portfolio_errors: Vec<PortfolioError>,
    pub moves: Vec<Move>,
}

/// A whole book evaluated at once.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct PortfolioResult {
    pub policy: Arc<PolicyRef>,
    pub summary: Summary,
    pub accounts: Vec<Outcome>,
}
