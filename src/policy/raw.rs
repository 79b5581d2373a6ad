//! The policy files exactly as written: serde mirrors of `policy.toml` and `tests/*.toml`.
//!
//! Nothing here is validated beyond types; [`super::compile`] turns a [`RawPolicy`] into
//! a [`super::Policy`] and reports every problem at once. Fields that need a place in a
//! diagnostic are wrapped in [`Loc`], which keeps the byte span the TOML parser saw.
//! The JSON schemas in `schemas/` are generated from these types, so a doc comment here
//! is what a TOML editor shows on hover.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;

/// A value with the byte range it came from in its file.
#[derive(Debug, Clone, PartialEq)]
pub struct Loc<T> {
    pub value: T,
    pub span: Range<usize>,
}

impl<T> Loc<T> {
    pub fn new(value: T, span: Range<usize>) -> Self {
        Loc { value, span }
    }
}

impl<T> std::ops::Deref for Loc<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Loc<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = toml::Spanned::<T>::deserialize(d)?;
        let span = s.span();
        Ok(Loc { value: s.into_inner(), span })
    }
}

impl<T: JsonSchema> JsonSchema for Loc<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }
    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> Cow<'static, str> {
        T::schema_id()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(g)
    }
}

/// A tierwise policy (`policy.toml`). One folder under `policies/` is one policy; its name is
/// the folder's name.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields, title = "tierwise policy")]
pub struct RawPolicy {
    /// Who wrote the policy and which revision it is.
    #[serde(default)]
    pub policy: RawMeta,
    /// Every snapshot field the policy reads. Expressions may read only these: a typo is a
    /// load error. Example: `[inputs.revenue_12m] type = "number", min = 0`.
    #[serde(default)]
    pub inputs: IndexMap<String, Loc<RawInput>>,
    /// How inputs become one score on a fixed scale.
    pub score: Loc<RawScore>,
    /// Tiers, best first; the last one is the catch-all.
    pub tiers: Loc<Vec<Loc<RawTier>>>,
    /// When an account moves between tiers (hysteresis, tenure, holds).
    #[serde(default)]
    pub movement: RawMovement,
    /// How many accounts of the capacity tiers each manager may carry.
    pub capacity: Option<Loc<RawCapacity>>,
    /// Account alerts, evaluated on the final tier.
    #[serde(default)]
    pub alerts: Vec<Loc<RawAlert>>,
    /// Whole-book settings: which input is revenue, portfolio alerts.
    #[serde(default)]
    pub portfolio: RawPortfolio,
    /// CSV column names of your export, by the name tierwise reads: an identity column
    /// (`id`, `name`, `manager`, `current_tier`, `tier_since`, `as_of`) or a declared input.
    /// Example: `id = "Account ID"`, `manager = "Account Owner"`, `revenue_12m = "Annual
    /// Revenue"`. A column already named as tierwise reads it needs no entry. Applies to CSV
    /// only (JSON keeps its keys); `--columns FILE` on the command line adds to it.
    #[serde(default)]
    pub columns: IndexMap<String, Loc<String>>,
}

/// `[policy]`: free text from the author. The content hash, not `version`, identifies a
/// policy.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawMeta {
    /// What this policy is for. Example: `"Enterprise key-account tiering"`.
    #[serde(default)]
    pub description: String,
    /// The author's revision label. Example: `"2026.11"`.
    #[serde(default)]
    pub version: String,
}

/// The type of an input as expressions see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    /// Always a float in expressions (an integer in the snapshot becomes a float).
    Number,
    /// A whole number; `3` and `3.0` are accepted, `3.5` is not.
    Integer,
    /// Text.
    String,
    /// `true` or `false`.
    Bool,
    /// `YYYY-MM-DD`; a string in expressions, with `days_since(d)` / `days_until(d)`.
    Date,
}

impl InputType {
    pub fn as_str(self) -> &'static str {
        match self {
            InputType::Number => "number",
            InputType::Integer => "integer",
            InputType::String => "string",
            InputType::Bool => "bool",
            InputType::Date => "date",
        }
    }
}

/// A literal in `one_of` or `default`.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Scalar {
    Bool(bool),
    Integer(i64),
    Number(f64),
    String(String),
}

/// `[inputs.NAME]`: one snapshot field.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawInput {
    /// `number`, `integer`, `string`, `bool` or `date`.
    #[serde(rename = "type")]
    pub ty: Loc<InputType>,
    /// Smallest accepted value (inclusive), for `number` and `integer`.
    pub min: Option<Loc<f64>>,
    /// Largest accepted value (inclusive), for `number` and `integer`.
    pub max: Option<Loc<f64>>,
    /// The only accepted values. Example: `one_of = ["tactical", "cooperative"]`.
    pub one_of: Option<Loc<Vec<Scalar>>>,
    /// The snapshot may leave this field out (expressions then see `()`).
    #[serde(default)]
    pub optional: bool,
    /// The value used when the snapshot leaves this field out.
    pub default: Option<Loc<Scalar>>,
    /// What the field means, for people reading the policy.
    #[serde(default)]
    pub description: String,
}

/// `[score]`: the scale and the weighted criteria.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawScore {
    /// The scale every criterion scores on. Default `{ min = 1, max = 10 }`.
    pub scale: Option<Loc<RawScale>>,
    /// The criteria; the account score is their weighted mean.
    #[serde(default)]
    pub criteria: Vec<Loc<RawCriterion>>,
}

/// `scale = { min = 1, max = 10 }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawScale {
    /// The bottom of the scale.
    pub min: f64,
    /// The top of the scale.
    pub max: f64,
}

/// `[[score.criteria]]`: one way to turn inputs into a score on the scale. Exactly one of
/// `steps`, `expr`, `script`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawCriterion {
    /// Unique id, shown in every decision's per-criterion scores. Example: `"revenue"`.
    pub id: Loc<String>,
    /// Weight in the weighted mean (≥ 0; at least one criterion above 0).
    pub weight: Loc<f64>,
    /// Declarative bands: `steps = { input = "revenue_12m", at = [1e5, 2.5e5, 5e5] }`.
    pub steps: Option<Loc<RawSteps>>,
    /// A rhai expression over the inputs, clamped to the scale. Example:
    /// `expr = "1.0 + gross_margin * 9.0"`.
    pub expr: Option<Loc<String>>,
    /// The name of a function in `scripts/*.rhai` taking the account. Example: `"fit"`.
    pub script: Option<Loc<String>>,
    /// What the criterion measures, for people reading the policy.
    #[serde(default)]
    pub description: String,
}

/// `steps = { input, at }`: with `n` cut points `<=` the value out of `k`, the score is
/// `lo + (hi - lo) * n / k`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawSteps {
    /// A required input (or one with a `default`) of type `number` or `integer`.
    pub input: Loc<String>,
    /// Cut points, strictly ascending.
    pub at: Loc<Vec<f64>>,
}

/// `[[tiers]]`: one tier. Listed best first.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawTier {
    /// Unique id used in snapshots (`current_tier`) and decisions. Example: `"key"`.
    pub id: Loc<String>,
    /// Human name. Example: `"Key account"`.
    pub label: Option<String>,
    /// The score needed to qualify (absent: 0).
    pub min_score: Option<Loc<f64>>,
    /// A rhai condition that must also hold. Example: `when = "relationship != \"tactical\""`.
    pub when: Option<Loc<String>>,
    /// At most this fraction of the portfolio (by score rank), e.g. `0.10`.
    pub max_share: Option<Loc<f64>>,
    /// At most this many accounts.
    pub max_count: Option<Loc<u64>>,
    /// Who keeps a seat when the tier is full: `"incumbents"` (the default: accounts already in
    /// the tier before those entering it, each by score) or `"score"` (a strict top-N by
    /// score). Accounts that movement held, or that `max_steps` keeps from going lower, keep
    /// their seats first either way.
    #[schemars(with = "Option<Priority>")]
    pub cap_priority: Option<Loc<String>>,
    /// What the tier means, for people reading the policy.
    #[serde(default)]
    pub description: String,
}

/// `[movement]`: hysteresis and holds.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawMovement {
    /// Promotion needs `score >= min_score + promote_margin` (default 0).
    pub promote_margin: Option<Loc<f64>>,
    /// Demotion needs `score < min_score - demote_margin` (default 0).
    pub demote_margin: Option<Loc<f64>>,
    /// No demotion sooner than this many days after entering a tier (default 0).
    pub min_tenure_days: Option<Loc<i64>>,
    /// At most this many tiers per evaluation (default: no limit).
    pub max_steps: Option<Loc<u32>>,
    /// Conditions that stop a demotion, checked in order.
    #[serde(default)]
    pub holds: Vec<Loc<RawHold>>,
}

/// `[[movement.holds]]`: while `when` holds, an account is not demoted.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawHold {
    /// Optional id for diagnostics (default `hold-1`, `hold-2`, ...).
    pub id: Option<Loc<String>>,
    /// A rhai condition. Example: `"renewal_date != () && days_until(renewal_date) <= 90"`.
    pub when: Loc<String>,
    /// Why, shown in the decision. Example: `"renewal within 90 days"`.
    pub reason: String,
}

/// What to do with a manager's accounts beyond `per_manager.max`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Overflow {
    /// Keep the tiers; list the lowest-scored accounts beyond `max` as candidates to reassign.
    #[default]
    Flag,
    /// Move those accounts to the best tier outside `capacity.tiers`.
    Demote,
}

/// `[capacity]`: managers' books.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawCapacity {
    /// Tiers whose accounts count toward a manager's book. Example: `["strategic", "key"]`.
    pub tiers: Loc<Vec<String>>,
    /// Book size per manager: `{ min = 5, max = 25 }`.
    pub per_manager: Option<Loc<RawRange>>,
    /// At most this many accounts in the capacity tiers together.
    pub total_max: Option<Loc<u64>>,
    /// `flag` (default) or `demote`.
    #[serde(default)]
    pub on_overflow: Overflow,
    /// Who keeps a place when `total_max` or a manager's `per_manager.max` is exceeded (and who
    /// `flag` lists): `"incumbents"` (the default) or `"score"`, as a tier's `cap_priority`.
    #[schemars(with = "Option<Priority>")]
    pub priority: Option<Loc<String>>,
}

/// Who keeps a seat when a tier, the capacity tiers together or a manager's book is full.
/// Accounts that may not go lower (held by movement, or at `max_steps` below their current
/// tier) are seated first either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Accounts already in the tier (their `current_tier`) before those entering it, each by
    /// score descending, then id.
    #[default]
    Incumbents,
    /// Every account by score descending, then id: a strict top-N.
    Score,
}

impl Priority {
    pub const ALL: [(&'static str, Priority); 2] =
        [("incumbents", Priority::Incumbents), ("score", Priority::Score)];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Incumbents => "incumbents",
            Priority::Score => "score",
        }
    }
}

/// `{ min, max }`, both optional and inclusive.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawRange {
    /// Fewest accounts of the capacity tiers per manager; below it the manager is `under`.
    pub min: Option<u64>,
    /// Most accounts of the capacity tiers per manager; above it the manager is `over`.
    pub max: Option<u64>,
}

/// How urgent an alert is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

/// `[[alerts]]`: raised for an account when `when` holds on its final tier.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawAlert {
    /// Unique id. Example: `"nps_drop"`.
    pub id: Loc<String>,
    /// `info`, `low`, `medium`, `high` or `critical`.
    pub severity: Severity,
    /// Tiers it applies to (absent: every tier; `[]` is an error).
    pub tiers: Option<Loc<Vec<String>>>,
    /// A rhai condition over the inputs, `score` and `tier`.
    pub when: Loc<String>,
    /// Text with `{expr}` placeholders. Example: `"NPS fell {nps_prev - nps} points"`.
    pub message: Loc<String>,
    #[serde(default)]
    /// What the alert watches, for people reading the policy.
    pub description: String,
    /// Days after an `alert.cleared` during which the alert coming back is silent (it
    /// flapped): no `alert.raised` until this many days have passed since the clearing.
    /// Default 0; negative is a load error. Example: `14`.
    pub cooldown_days: Option<Loc<i64>>,
    /// While the alert stays raised, tell it again (`alert.repeated`) once this many days
    /// have passed since it was last told. Absent: never repeated; negative is a load
    /// error. Example: `30`.
    pub renotify_days: Option<Loc<i64>>,
}

/// `[portfolio]`: the whole book.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawPortfolio {
    /// The `number` input that holds revenue, for `total_revenue`, `top_revenue_share(n)`,
    /// `tier_revenue(id)` and the per-tier revenue in summaries.
    pub revenue: Option<Loc<String>>,
    /// Alerts on the whole book.
    #[serde(default)]
    pub alerts: Vec<Loc<RawPortfolioAlert>>,
}

/// `[[portfolio.alerts]]`: over aggregates such as `top_revenue_share(10) > 0.30`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawPortfolioAlert {
    /// Unique id. Example: `"revenue_concentration"`.
    pub id: Loc<String>,
    pub severity: Severity,
    /// A rhai condition over portfolio aggregates.
    pub when: Loc<String>,
    /// Text with `{expr}` placeholders.
    pub message: Loc<String>,
    #[serde(default)]
    /// What the alert watches, for people reading the policy.
    pub description: String,
}

/// A file of `tests/*.toml`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields, title = "tierwise policy test cases")]
pub struct RawTestFile {
    #[serde(default)]
    /// The cases of this file, each `[[case]]`.
    pub case: Vec<Loc<RawCase>>,
}

/// `[[case]]`: one account (`account`) or a whole portfolio (`accounts`) and what to expect.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawCase {
    /// Shown by `tierwise test`.
    pub name: String,
    /// An account-level case: one snapshot.
    #[schemars(with = "Option<crate::snapshot::Snapshot>")]
    pub account: Option<toml::Value>,
    /// A portfolio-level case: several snapshots.
    #[schemars(with = "Option<Vec<crate::snapshot::Snapshot>>")]
    pub accounts: Option<Vec<toml::Value>>,
    /// A portfolio-level case whose accounts are in a file, relative to the case's own file
    /// (`accounts_file = "fixtures/book.csv"` is `tests/fixtures/book.csv`): `.csv` (read with
    /// the policy's `[columns]`), `.json` (an array) or `.jsonl`/`.ndjson`.
    pub accounts_file: Option<String>,
    /// `as_of` for the case's accounts that carry none (an export without the column).
    pub as_of: Option<String>,
    pub expect: RawExpect,
}

/// A subset of the decision that must match.
#[derive(Debug, Default, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawExpect {
    /// Expected final tier.
    pub tier: Option<String>,
    /// Expected `qualified_tier` (the tier the score and conditions qualify for).
    pub qualified_tier: Option<String>,
    /// Expected `change`: `promote`, `demote`, `hold`, `none` or `new`.
    pub change: Option<String>,
    /// Alert ids, exactly (order aside).
    pub alerts: Option<Vec<String>>,
    /// Reason codes that must be present.
    pub reasons: Option<Vec<String>>,
    /// The score, ± 1e-9.
    pub score: Option<f64>,
    /// An error code instead of a decision.
    pub error: Option<String>,
    /// Portfolio: account id → final tier.
    pub tiers: Option<BTreeMap<String, String>>,
    /// Portfolio: manager → `under`, `ok` or `over`.
    pub managers: Option<BTreeMap<String, String>>,
    /// Portfolio: ids of portfolio alerts, exactly.
    pub portfolio_alerts: Option<Vec<String>>,
    /// Portfolio: tier id → how many accounts end in it, exactly.
    pub tier_counts: Option<BTreeMap<String, u64>>,
    /// Portfolio: tier id → the fraction of decided accounts that end in it (0.05 for 5%),
    /// within `tolerance`.
    pub tier_shares: Option<BTreeMap<String, f64>>,
    /// How far a `tier_shares` value may be from the book's (default 0.005, half a percent).
    pub tolerance: Option<f64>,
}
