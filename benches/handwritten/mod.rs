//! `policies/enterprise` written out by hand in Rust: the lower bound the engine is measured
//! against (benches/engine.rs, examples/handwritten.rs, examples/check_handwritten.rs).
//!
//! Same semantics as the engine (docs/policy-reference.md), decision for decision: input validation (same
//! codes and messages, same order), the six criteria (steps, the three `expr` formulas and the
//! `account_health` script translated), the weighted mean, the qualified tier with strategic's
//! `when`, movement (margins, tenure, holds, `max_steps`), alerts with the same texts (rhai's
//! float formatting: `25.0`), the reasons' sentences, `next_tier`, and at portfolio level the
//! caps (protected accounts first, then incumbents before entrants), `total_max`, manager
//! capacity, `over_cap`, aggregates and portfolio alerts. The output
//! types serialize to the same JSON as the engine's, so outputs can be compared byte for byte.
//!
//! Nothing here uses the engine: only serde / serde_json. If policy.toml changes, this file
//! has to change too (the check example will say so).
#![allow(dead_code)]

use serde::ser::{Serialize, SerializeStruct, Serializer};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

// ---------------------------------------------------------------------------------------------
// The policy, as constants.

pub const POLICY_NAME: &str = "enterprise";
pub const TIERS: [&str; 3] = ["strategic", "key", "managed"];
pub const TIER_LABELS: [&str; 3] = [
    "Strategic account (KAM + executive sponsor)",
    "Key account (KAM)",
    "Managed account (account management)",
];
/// `min_score` per tier (managed has none: 0).
pub const MIN_SCORE: [f64; 3] = [8.0, 6.0, 0.0];
pub const MAX_SHARE: [Option<f64>; 3] = [Some(0.02), Some(0.10), None];
pub const STRATEGIC_WHEN: &str =
    r#"relationship == "interdependent" || relationship == "strategic""#;
const PROMOTE_MARGIN: f64 = 0.25;
const DEMOTE_MARGIN: f64 = 0.75;
const MIN_TENURE_DAYS: i64 = 180;
const MAX_STEPS: usize = 1;
const TOTAL_MAX: usize = 99;
const PER_MANAGER_MIN: u64 = 5;
const PER_MANAGER_MAX: u64 = 25;
/// The best tier outside `capacity.tiers`.
const OUTSIDE: u8 = 2;
const SCALE: (f64, f64) = (1.0, 10.0);

const REVENUE_AT: [f64; 9] =
    [50000.0, 100000.0, 250000.0, 500000.0, 750000.0, 1000000.0, 2000000.0, 3500000.0, 5000000.0];
const POTENTIAL_AT: [f64; 9] = [
    100000.0, 250000.0, 500000.0, 1000000.0, 2000000.0, 3000000.0, 5000000.0, 7500000.0, 10000000.0,
];
pub const CRITERIA: [(&str, f64); 6] = [
    ("revenue", 3.0),
    ("potential", 2.0),
    ("profitability", 1.0),
    ("relationship", 2.0),
    ("fit", 1.0),
    ("health", 1.0),
];

/// Declared inputs: name, type name, `rule` of their errors.
const IN_REVENUE: usize = 0;
const IN_REVENUE_PREV: usize = 1;
const IN_POTENTIAL: usize = 2;
const IN_MARGIN: usize = 3;
const IN_WALLET: usize = 4;
const IN_RELATIONSHIP: usize = 5;
const IN_FIT: usize = 6;
const IN_NPS: usize = 7;
const IN_NPS_PREV: usize = 8;
const IN_QBR: usize = 9;
const IN_EBR: usize = 10;
const IN_RENEWAL: usize = 11;
pub const INPUTS: [(&str, &str, &str); 12] = [
    ("revenue_12m", "number", "inputs.revenue_12m"),
    ("revenue_prev_12m", "number", "inputs.revenue_prev_12m"),
    ("potential", "number", "inputs.potential"),
    ("gross_margin", "number", "inputs.gross_margin"),
    ("share_of_wallet", "number", "inputs.share_of_wallet"),
    ("relationship", "string", "inputs.relationship"),
    ("strategic_fit", "integer", "inputs.strategic_fit"),
    ("nps", "integer", "inputs.nps"),
    ("nps_prev", "integer", "inputs.nps_prev"),
    ("last_qbr", "date", "inputs.last_qbr"),
    ("last_ebr", "date", "inputs.last_ebr"),
    ("renewal_date", "date", "inputs.renewal_date"),
];
const RELATIONSHIPS: [&str; 4] = ["tactical", "cooperative", "interdependent", "strategic"];

// ---------------------------------------------------------------------------------------------
// Dates and number formatting.

/// Strict `YYYY-MM-DD` → day number (1970-01-01 = 0).
pub fn parse_days(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let mut n = [0i64; 3];
    for (k, r) in [(0usize, 0..4), (1, 5..7), (2, 8..10)] {
        for &c in &b[r] {
            if !c.is_ascii_digit() {
                return None;
            }
            n[k] = n[k] * 10 + i64::from(c - b'0');
        }
    }
    let (y, m, d) = (n[0], n[1], n[2]);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let dim = match m {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return None,
    };
    if d < 1 || d > dim {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// A date input: its day number and its text (for messages).
#[derive(Debug, Clone, Copy)]
pub struct Date {
    pub day: i64,
    text: [u8; 10],
}

impl Date {
    fn parse(s: &str) -> Option<Date> {
        let day = parse_days(s)?;
        let mut text = [0u8; 10];
        text.copy_from_slice(s.as_bytes());
        Some(Date { day, text })
    }
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.text).unwrap_or("")
    }
}

/// rhai's `to_string()` of a float: Rust's shortest form, `.0` on whole numbers, exponent form
/// outside [1e-13, 1e13] (rhai's limits are f32 constants).
pub fn push_rhai_float(out: &mut String, x: f64) {
    let abs = x.abs();
    if abs == 0.0 {
        out.push_str("0.0");
    } else if abs > f64::from(10_000_000_000_000.0f32) || abs < f64::from(0.000_000_000_000_1f32) {
        let _ = write!(out, "{x:e}");
    } else {
        let _ = write!(out, "{x}");
        if abs.fract() == 0.0 {
            out.push_str(".0");
        }
    }
}

/// rhai's float comparisons (without its `unchecked` feature) are relative to `f64::EPSILON`,
/// not exact: `5.499999999999999 >= 5.5` is true in an expression. Comparisons written in the
/// policy's expressions go through these; the engine's own (tiers, margins) are exact f64.
#[inline]
fn rhai_scale(x: f64, y: f64) -> f64 {
    if x * y == 0.0 { 1.0 } else { x.abs().max(y.abs()) }
}
#[inline]
pub fn rhai_ge(x: f64, y: f64) -> bool {
    let m = rhai_scale(x, y);
    m == 0.0 || (x - y) / m > -f64::EPSILON
}
#[inline]
pub fn rhai_gt(x: f64, y: f64) -> bool {
    let m = rhai_scale(x, y);
    m != 0.0 && (x - y) / m > f64::EPSILON
}
#[inline]
pub fn rhai_lt(x: f64, y: f64) -> bool {
    let m = rhai_scale(x, y);
    m != 0.0 && (y - x) / m > f64::EPSILON
}

/// The engine's figure in sentences: at most two decimals, no trailing zeros.
pub fn num(x: f64) -> String {
    let s = format!("{x:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.to_string() }
}

// ---------------------------------------------------------------------------------------------
// Accounts, errors, validation.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rel {
    Tactical,
    Cooperative,
    Interdependent,
    Strategic,
}

/// The twelve inputs, typed.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub revenue_12m: f64,
    pub revenue_prev_12m: Option<f64>,
    pub potential: f64,
    pub gross_margin: f64,
    pub share_of_wallet: Option<f64>,
    pub relationship: Rel,
    pub strategic_fit: i64,
    pub nps: Option<i64>,
    pub nps_prev: Option<i64>,
    pub last_qbr: Option<Date>,
    pub last_ebr: Option<Date>,
    pub renewal_date: Option<Date>,
}

/// A validated account.
#[derive(Debug, Clone)]
pub struct Account<'a> {
    pub id: Cow<'a, str>,
    pub manager: Option<Cow<'a, str>>,
    pub current_tier: Option<Cow<'a, str>>,
    pub tier_since: Option<i64>,
    pub as_of: i64,
    pub inp: Inputs,
}

/// Why an account got no decision (serialized like the engine's `AccountError`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct HwError {
    #[serde(skip)]
    pub id: Option<String>,
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<usize>,
}

impl HwError {
    fn new(
        id: &str,
        code: &'static str,
        message: String,
        field: Option<&'static str>,
        rule: Option<&'static str>,
    ) -> Self {
        HwError { id: Some(id.to_string()), code, message, field, rule, record: None }
    }
    fn input(id: &str, k: usize, code: &'static str, message: String) -> Self {
        HwError::new(id, code, message, Some(INPUTS[k].0), Some(INPUTS[k].2))
    }
}

/// The identity part of a snapshot.
#[derive(Debug, Clone)]
pub struct Identity<'a> {
    pub id: Cow<'a, str>,
    pub manager: Option<Cow<'a, str>>,
    pub current_tier: Option<Cow<'a, str>>,
    pub tier_since: Option<Cow<'a, str>>,
    pub as_of: Cow<'a, str>,
}

fn check_identity(s: &Identity<'_>) -> Result<(i64, Option<i64>), HwError> {
    let id = &*s.id;
    if id.is_empty() {
        return Err(HwError::new(id, "bad_record", "`id` is empty".into(), Some("id"), None));
    }
    let as_of = parse_days(&s.as_of).ok_or_else(|| {
        HwError::new(
            id,
            "bad_date",
            format!("`as_of` is `{}`, not a date (YYYY-MM-DD)", s.as_of),
            Some("as_of"),
            None,
        )
    })?;
    let since = match &s.tier_since {
        None => None,
        Some(t) => Some(parse_days(t).ok_or_else(|| {
            HwError::new(
                id,
                "bad_date",
                format!("`tier_since` is `{t}`, not a date (YYYY-MM-DD)"),
                Some("tier_since"),
                None,
            )
        })?),
    };
    Ok((as_of, since))
}

fn missing(id: &str, k: usize) -> HwError {
    HwError::input(
        id,
        k,
        "missing_field",
        format!("`{}` is required ({}) and missing", INPUTS[k].0, INPUTS[k].1),
    )
}

fn range_f(id: &str, k: usize, x: f64, min: Option<f64>, max: Option<f64>) -> Result<f64, HwError> {
    if let Some(lo) = min
        && x < lo
    {
        return Err(HwError::input(
            id,
            k,
            "out_of_range",
            format!("`{}`: {x} is below the minimum {lo}", INPUTS[k].0),
        ));
    }
    if let Some(hi) = max
        && x > hi
    {
        return Err(HwError::input(
            id,
            k,
            "out_of_range",
            format!("`{}`: {x} is above the maximum {hi}", INPUTS[k].0),
        ));
    }
    Ok(x)
}

fn range_i(id: &str, k: usize, i: i64, lo: f64, hi: f64) -> Result<i64, HwError> {
    if (i as f64) < lo {
        return Err(HwError::input(
            id,
            k,
            "out_of_range",
            format!("`{}`: {i} is below the minimum {lo}", INPUTS[k].0),
        ));
    }
    if (i as f64) > hi {
        return Err(HwError::input(
            id,
            k,
            "out_of_range",
            format!("`{}`: {i} is above the maximum {hi}", INPUTS[k].0),
        ));
    }
    Ok(i)
}

fn relationship(id: &str, s: &str) -> Result<Rel, HwError> {
    match s {
        "tactical" => Ok(Rel::Tactical),
        "cooperative" => Ok(Rel::Cooperative),
        "interdependent" => Ok(Rel::Interdependent),
        "strategic" => Ok(Rel::Strategic),
        _ => Err(HwError::input(
            id,
            IN_RELATIONSHIP,
            "not_one_of",
            format!(
                "`relationship`: `{s}` is not one of {}",
                RELATIONSHIPS.iter().map(|r| format!("`{r}`")).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

fn date_in(id: &str, k: usize, s: &str) -> Result<Date, HwError> {
    Date::parse(s).ok_or_else(|| {
        HwError::input(
            id,
            k,
            "bad_date",
            format!("`{}` is `{s}`, not a date (YYYY-MM-DD)", INPUTS[k].0),
        )
    })
}

// --- from a JSON object of fields (the engine's `Snapshot::fields`) ---

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn bad_type(id: &str, k: usize, v: &Value) -> HwError {
    let article = match INPUTS[k].1 {
        "number" => "a number",
        "integer" => "an integer",
        "string" => "text",
        _ => "a date (YYYY-MM-DD)",
    };
    let s = v.to_string();
    let shown =
        if s.len() > 40 { format!("{}…", s.chars().take(40).collect::<String>()) } else { s };
    HwError::input(
        id,
        k,
        "bad_type",
        format!("`{}` must be {article}, got {} {shown}", INPUTS[k].0, type_name(v)),
    )
}

fn field(f: &Map<String, Value>, k: usize) -> Option<&Value> {
    match f.get(INPUTS[k].0) {
        None | Some(Value::Null) => None,
        Some(v) => Some(v),
    }
}

fn m_num(
    id: &str,
    f: &Map<String, Value>,
    k: usize,
    min: Option<f64>,
    max: Option<f64>,
) -> Result<Option<f64>, HwError> {
    match field(f, k) {
        None => Ok(None),
        Some(v) => {
            let x = v.as_f64().ok_or_else(|| bad_type(id, k, v))?;
            range_f(id, k, x, min, max).map(Some)
        }
    }
}

fn m_int(
    id: &str,
    f: &Map<String, Value>,
    k: usize,
    lo: f64,
    hi: f64,
) -> Result<Option<i64>, HwError> {
    match field(f, k) {
        None => Ok(None),
        Some(v) => {
            let i = match v {
                Value::Number(n) => n.as_i64().or_else(|| {
                    n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15).map(|f| f as i64)
                }),
                _ => None,
            }
            .ok_or_else(|| bad_type(id, k, v))?;
            range_i(id, k, i, lo, hi).map(Some)
        }
    }
}

fn m_str<'m>(id: &str, f: &'m Map<String, Value>, k: usize) -> Result<Option<&'m str>, HwError> {
    match field(f, k) {
        None => Ok(None),
        Some(v) => v.as_str().map(Some).ok_or_else(|| bad_type(id, k, v)),
    }
}

fn m_date(id: &str, f: &Map<String, Value>, k: usize) -> Result<Option<Date>, HwError> {
    match m_str(id, f, k)? {
        None => Ok(None),
        Some(s) => date_in(id, k, s).map(Some),
    }
}

/// Validates a snapshot whose fields are a JSON object (what the engine's `Snapshot` holds).
pub fn validate_map<'a>(s: Identity<'a>, f: &Map<String, Value>) -> Result<Account<'a>, HwError> {
    let (as_of, tier_since) = check_identity(&s)?;
    let id = &*s.id;
    let req = |k: usize, v: Option<f64>| v.ok_or_else(|| missing(id, k));
    let revenue_12m = req(IN_REVENUE, m_num(id, f, IN_REVENUE, Some(0.0), None)?)?;
    let revenue_prev_12m = m_num(id, f, IN_REVENUE_PREV, Some(0.0), None)?;
    let potential = req(IN_POTENTIAL, m_num(id, f, IN_POTENTIAL, Some(0.0), None)?)?;
    let gross_margin = req(IN_MARGIN, m_num(id, f, IN_MARGIN, Some(0.0), Some(1.0))?)?;
    let share_of_wallet = m_num(id, f, IN_WALLET, Some(0.0), Some(1.0))?;
    let rel = relationship(
        id,
        m_str(id, f, IN_RELATIONSHIP)?.ok_or_else(|| missing(id, IN_RELATIONSHIP))?,
    )?;
    let strategic_fit = m_int(id, f, IN_FIT, 1.0, 5.0)?.ok_or_else(|| missing(id, IN_FIT))?;
    let nps = m_int(id, f, IN_NPS, -100.0, 100.0)?;
    let nps_prev = m_int(id, f, IN_NPS_PREV, -100.0, 100.0)?;
    let last_qbr = m_date(id, f, IN_QBR)?;
    let last_ebr = m_date(id, f, IN_EBR)?;
    let renewal_date = m_date(id, f, IN_RENEWAL)?;
    Ok(Account {
        id: s.id,
        manager: s.manager,
        current_tier: s.current_tier,
        tier_since,
        as_of,
        inp: Inputs {
            revenue_12m,
            revenue_prev_12m,
            potential,
            gross_margin,
            share_of_wallet,
            relationship: rel,
            strategic_fit,
            nps,
            nps_prev,
            last_qbr,
            last_ebr,
            renewal_date,
        },
    })
}

// --- from typed serde structs (the whole-process program) ---

/// An integer input as JSON gives it: `3` and `3.0` are integers, `3.5` is not.
#[derive(Debug, Clone, Copy)]
pub enum IntLike {
    I(i64),
    /// Anything else numeric (a fraction, a huge value): the slow path names it.
    Other,
}

impl<'de> serde::Deserialize<'de> for IntLike {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = IntLike;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number")
            }
            fn visit_i64<E>(self, v: i64) -> Result<IntLike, E> {
                Ok(IntLike::I(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<IntLike, E> {
                Ok(i64::try_from(v).map_or(IntLike::Other, IntLike::I))
            }
            fn visit_f64<E>(self, v: f64) -> Result<IntLike, E> {
                Ok(if v.fract() == 0.0 && v.abs() < 9.0e15 {
                    IntLike::I(v as i64)
                } else {
                    IntLike::Other
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct RawFields<'a> {
    pub revenue_12m: Option<f64>,
    pub revenue_prev_12m: Option<f64>,
    pub potential: Option<f64>,
    pub gross_margin: Option<f64>,
    pub share_of_wallet: Option<f64>,
    #[serde(borrow)]
    pub relationship: Option<Cow<'a, str>>,
    pub strategic_fit: Option<IntLike>,
    pub nps: Option<IntLike>,
    pub nps_prev: Option<IntLike>,
    #[serde(borrow)]
    pub last_qbr: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub last_ebr: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub renewal_date: Option<Cow<'a, str>>,
}

/// One JSON line, typed; strings borrowed from the input where they have no escapes.
#[derive(Debug, serde::Deserialize)]
pub struct RawSnapshot<'a> {
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    #[serde(default, borrow)]
    pub name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub manager: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub current_tier: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub tier_since: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub as_of: Cow<'a, str>,
    #[serde(default, borrow)]
    pub fields: RawFields<'a>,
}

/// The same shape as the engine's snapshot, for lines the typed struct refuses (a value of the
/// wrong type): its validation names the value as the engine does.
#[derive(Debug, serde::Deserialize)]
pub struct LooseSnapshot {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub manager: Option<String>,
    #[serde(default)]
    pub current_tier: Option<String>,
    #[serde(default)]
    pub tier_since: Option<String>,
    pub as_of: String,
    #[serde(default)]
    pub fields: Map<String, Value>,
}

/// Ok(Err(())) = a value of the wrong type: take the slow path.
pub fn validate_raw<'a>(r: RawSnapshot<'a>) -> Result<Result<Account<'a>, HwError>, ()> {
    let s = Identity {
        id: r.id,
        manager: r.manager,
        current_tier: r.current_tier,
        tier_since: r.tier_since,
        as_of: r.as_of,
    };
    let f = r.fields;
    let (as_of, tier_since) = match check_identity(&s) {
        Ok(x) => x,
        Err(e) => return Ok(Err(e)),
    };
    let id = &*s.id;
    macro_rules! tri {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => return Ok(Err(e)),
            }
        };
    }
    let int = |k: usize,
               v: Option<IntLike>,
               lo: f64,
               hi: f64|
     -> Result<Option<Result<i64, HwError>>, ()> {
        match v {
            None => Ok(None),
            Some(IntLike::I(i)) => Ok(Some(range_i(id, k, i, lo, hi))),
            Some(IntLike::Other) => Err(()),
        }
    };
    let revenue_12m = tri!(range_f(
        id,
        IN_REVENUE,
        tri!(f.revenue_12m.ok_or_else(|| missing(id, IN_REVENUE))),
        Some(0.0),
        None
    ));
    let revenue_prev_12m = match f.revenue_prev_12m {
        None => None,
        Some(x) => Some(tri!(range_f(id, IN_REVENUE_PREV, x, Some(0.0), None))),
    };
    let potential = tri!(range_f(
        id,
        IN_POTENTIAL,
        tri!(f.potential.ok_or_else(|| missing(id, IN_POTENTIAL))),
        Some(0.0),
        None
    ));
    let gross_margin = tri!(range_f(
        id,
        IN_MARGIN,
        tri!(f.gross_margin.ok_or_else(|| missing(id, IN_MARGIN))),
        Some(0.0),
        Some(1.0)
    ));
    let share_of_wallet = match f.share_of_wallet {
        None => None,
        Some(x) => Some(tri!(range_f(id, IN_WALLET, x, Some(0.0), Some(1.0)))),
    };
    let rel = tri!(relationship(
        id,
        tri!(f.relationship.as_deref().ok_or_else(|| missing(id, IN_RELATIONSHIP)))
    ));
    let strategic_fit = match int(IN_FIT, f.strategic_fit, 1.0, 5.0)? {
        None => return Ok(Err(missing(id, IN_FIT))),
        Some(r) => tri!(r),
    };
    let nps = match int(IN_NPS, f.nps, -100.0, 100.0)? {
        None => None,
        Some(r) => Some(tri!(r)),
    };
    let nps_prev = match int(IN_NPS_PREV, f.nps_prev, -100.0, 100.0)? {
        None => None,
        Some(r) => Some(tri!(r)),
    };
    let date = |k: usize, v: &Option<Cow<'_, str>>| -> Result<Option<Date>, HwError> {
        match v {
            None => Ok(None),
            Some(s) => date_in(id, k, s).map(Some),
        }
    };
    let last_qbr = tri!(date(IN_QBR, &f.last_qbr));
    let last_ebr = tri!(date(IN_EBR, &f.last_ebr));
    let renewal_date = tri!(date(IN_RENEWAL, &f.renewal_date));
    Ok(Ok(Account {
        id: s.id,
        manager: s.manager,
        current_tier: s.current_tier,
        tier_since,
        as_of,
        inp: Inputs {
            revenue_12m,
            revenue_prev_12m,
            potential,
            gross_margin,
            share_of_wallet,
            relationship: rel,
            strategic_fit,
            nps,
            nps_prev,
            last_qbr,
            last_ebr,
            renewal_date,
        },
    }))
}

/// A JSON line the engine could not read as a snapshot at all.
pub fn bad_record(raw: &str, e: &serde_json::Error, line: usize) -> HwError {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: Option<Value>,
    }
    let id = serde_json::from_str::<IdOnly>(raw).ok().and_then(|v| v.id).map(|v| match v {
        Value::String(s) => s,
        other => other.to_string(),
    });
    HwError {
        id,
        code: "bad_record",
        message: format!("not a snapshot: {e}"),
        field: None,
        rule: None,
        record: Some(line),
    }
}

// ---------------------------------------------------------------------------------------------
// The decision.

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Promote,
    Demote,
    Hold,
    None,
    New,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Reason {
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct AlertOut {
    pub id: &'static str,
    pub severity: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PolicyRef {
    pub name: String,
    pub version: String,
    pub hash: String,
}

#[derive(Debug, Clone, Copy)]
pub struct CriterionScore {
    pub id: &'static str,
    pub score: f64,
    pub weight: f64,
}

impl Serialize for CriterionScore {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("CriterionScore", 3)?;
        st.serialize_field("id", self.id)?;
        st.serialize_field("score", &self.score)?;
        st.serialize_field("weight", &self.weight)?;
        st.end()
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct NextTier {
    pub tier: &'static str,
    pub needs: f64,
    pub gap: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when_holds: Option<bool>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Decision<'a, 'p> {
    pub id: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manager: Option<Cow<'a, str>>,
    pub policy: &'p PolicyRef,
    pub score: f64,
    pub scores: [CriterionScore; 6],
    pub qualified_tier: &'static str,
    pub previous_tier: Option<Cow<'a, str>>,
    pub tier: &'static str,
    pub change: Change,
    pub reasons: Vec<Reason>,
    pub alerts: Vec<AlertOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_tier: Option<NextTier>,
}

/// A decision or an error, in input order (the engine's `Outcome`).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(untagged)]
pub enum Outcome<'a, 'p> {
    Decision(Box<Decision<'a, 'p>>),
    Error { id: Option<String>, error: HwError },
}

impl Outcome<'_, '_> {
    pub fn error(e: HwError) -> Self {
        Outcome::Error { id: e.id.clone(), error: e }
    }
}

/// After score and movement.
#[derive(Debug, Clone)]
pub struct Scored<'a> {
    pub acc: Account<'a>,
    pub score: f64,
    pub scores: [f64; 6],
    pub qualified: u8,
    pub current: Option<u8>,
    pub tier: u8,
    pub change: Change,
    pub held: bool,
    /// What held it, for `cap_protected`: `movement held it in key (...)`.
    pub held_by: &'static str,
    pub reasons: Vec<Reason>,
    /// Strategic's `when` (relationship interdependent or strategic).
    pub strategic_ok: bool,
    /// Whether the decision evaluated strategic's `when` (it is lazy: `next_tier.when_holds`
    /// shows it only then).
    pub strategic_seen: bool,
}

#[inline]
fn steps(x: f64, at: &[f64; 9]) -> f64 {
    let n = at.iter().take_while(|&&c| c <= x).count();
    SCALE.0 + (SCALE.1 - SCALE.0) * n as f64 / at.len() as f64
}

#[inline]
fn clamp(x: f64) -> f64 {
    x.clamp(SCALE.0, SCALE.1)
}

/// The six criteria, clamped to the scale, and the weighted mean (criteria order, unrounded).
pub fn score(inp: &Inputs) -> ([f64; 6], f64) {
    let revenue = steps(inp.revenue_12m, &REVENUE_AT);
    let potential = steps(inp.potential, &POTENTIAL_AT);
    let profitability = clamp(1.0 + 15.0 * inp.gross_margin);
    let relationship = clamp(match inp.relationship {
        Rel::Tactical => 2.0,
        Rel::Cooperative => 5.0,
        Rel::Interdependent => 8.0,
        Rel::Strategic => 10.0,
    });
    let fit = clamp(1.0 + 2.25 * (inp.strategic_fit - 1) as f64);
    // scripts/health.rhai: account_health
    let base = match inp.share_of_wallet {
        None => 1.0,
        Some(w) => 1.0 + 9.0 * w,
    };
    let nudge = match inp.nps {
        None => 0.0,
        Some(n) if n >= 50 => 1.0,
        Some(n) if n < 0 => -1.0,
        Some(_) => 0.0,
    };
    let health = clamp(base + nudge);
    let scores = [revenue, potential, profitability, relationship, fit, health];
    let (mut sum, mut wsum) = (0.0, 0.0);
    for (k, &sc) in scores.iter().enumerate() {
        sum += CRITERIA[k].1 * sc;
        wsum += CRITERIA[k].1;
    }
    (scores, sum / wsum)
}

fn renewal_hold(inp: &Inputs, as_of: i64) -> bool {
    inp.renewal_date.is_some_and(|d| {
        let until = d.day - as_of;
        (0..=90).contains(&until)
    })
}

/// Validate (done) → score → qualified tier → movement.
pub fn score_and_move<'a>(acc: Account<'a>) -> Result<Scored<'a>, HwError> {
    let current = match acc.current_tier.as_deref() {
        None => None,
        Some(t) => Some(TIERS.iter().position(|x| *x == t).ok_or_else(|| {
            HwError::new(
                &acc.id,
                "unknown_tier",
                format!("`current_tier` is `{t}`, which policy `{POLICY_NAME}` does not have (tiers: {})", TIERS.join(", ")),
                Some("current_tier"),
                None,
            )
        })? as u8),
    };
    let (scores, score) = score(&acc.inp);
    let strategic_ok = matches!(acc.inp.relationship, Rel::Interdependent | Rel::Strategic);

    let mut reasons = Vec::with_capacity(3);
    let qualified: u8 = if score >= MIN_SCORE[0] && strategic_ok {
        0
    } else if score >= MIN_SCORE[1] {
        1
    } else {
        2
    };
    if score >= MIN_SCORE[0] && !strategic_ok {
        reasons.push(Reason {
            code: "condition",
            message: format!(
                "score {} reaches {}'s {} but its condition `{STRATEGIC_WHEN}` does not hold",
                num(score),
                TIERS[0],
                num(MIN_SCORE[0])
            ),
        });
    }
    let q = qualified as usize;
    reasons.push(Reason {
        code: "qualifies",
        message: if q == 2 && score < MIN_SCORE[2] {
            format!("score {} qualifies for {} (the catch-all tier)", num(score), TIERS[q])
        } else {
            format!("score {} qualifies for {} (needs {})", num(score), TIERS[q], num(MIN_SCORE[q]))
        },
    });
    let mut s = Scored {
        acc,
        score,
        scores,
        qualified,
        current,
        tier: qualified,
        change: Change::None,
        held: false,
        held_by: "",
        reasons,
        strategic_ok,
        // the qualified tier evaluates it once the score reaches strategic's min_score
        strategic_seen: score >= MIN_SCORE[0],
    };
    movement(&mut s);
    Ok(s)
}

fn when(s: &mut Scored<'_>, t: usize) -> bool {
    if t == 0 {
        s.strategic_seen = true;
        s.strategic_ok
    } else {
        true
    }
}

fn movement(s: &mut Scored<'_>) {
    let score = s.score;
    let q = s.qualified as usize;
    let Some(cur) = s.current.map(usize::from) else {
        s.tier = s.qualified;
        s.change = Change::New;
        s.reasons.push(Reason {
            code: "new",
            message: format!("no current tier: starts in {}", TIERS[q]),
        });
        return;
    };
    for t in 0..cur {
        if score >= MIN_SCORE[t] + PROMOTE_MARGIN && when(s, t) {
            let target = if cur - t > MAX_STEPS { cur - MAX_STEPS } else { t };
            s.tier = target as u8;
            s.change = Change::Promote;
            s.reasons.push(Reason {
                code: "promote",
                message: format!(
                    "promoted from {} to {}: score {} ≥ {}'s {} + promote margin {}",
                    TIERS[cur],
                    TIERS[target],
                    num(score),
                    TIERS[t],
                    num(MIN_SCORE[t]),
                    num(PROMOTE_MARGIN)
                ),
            });
            if target != t {
                s.reasons.push(Reason {
                    code: "max_steps",
                    message: format!(
                        "qualifies for {} but moves at most {MAX_STEPS} tier(s) at a time",
                        TIERS[t]
                    ),
                });
            }
            return;
        }
    }
    if q < cur {
        s.tier = cur as u8;
        s.change = Change::None;
        s.reasons.push(Reason {
            code: "promote_margin",
            message: format!(
                "score {} qualifies for {} but promotion needs {} ({} + promote margin {}): stays {}",
                num(score),
                TIERS[q],
                num(MIN_SCORE[q] + PROMOTE_MARGIN),
                num(MIN_SCORE[q]),
                num(PROMOTE_MARGIN),
                TIERS[cur]
            ),
        });
        return;
    }
    if q > cur {
        let ct = TIERS[cur];
        let below = score < MIN_SCORE[cur] - DEMOTE_MARGIN;
        let cond_fails = !below && !when(s, cur);
        let hold = |s: &mut Scored<'_>, code: &'static str, message: String| {
            s.tier = cur as u8;
            s.change = Change::Hold;
            s.held = true;
            s.held_by = HELD_BY[cur][match code {
                "margin" => 0,
                "tenure" => 1,
                _ if message.starts_with("hold `renewal`") => 2,
                _ => 3,
            }];
            s.reasons.push(Reason { code, message });
        };
        if !(below || cond_fails) {
            let m = format!(
                "score {} is below {ct}'s {} but within the demote margin {} (demotion below {}): stays {ct}",
                num(score),
                num(MIN_SCORE[cur]),
                num(DEMOTE_MARGIN),
                num(MIN_SCORE[cur] - DEMOTE_MARGIN)
            );
            return hold(s, "margin", m);
        }
        let tenure_ok = match s.acc.tier_since {
            None => true,
            Some(since) => s.acc.as_of - since >= MIN_TENURE_DAYS,
        };
        if !tenure_ok {
            let days = s.acc.tier_since.map_or(0, |since| s.acc.as_of - since);
            return hold(
                s,
                "tenure",
                format!(
                    "in {ct} for {days} days, fewer than the {MIN_TENURE_DAYS} days before a demotion: stays {ct}"
                ),
            );
        }
        if renewal_hold(&s.acc.inp, s.acc.as_of) {
            return hold(
                s,
                "hold",
                format!(
                    "hold `renewal`: renewal within 90 days: no demotion during the negotiation: stays {ct}"
                ),
            );
        }
        if rhai_ge(s.acc.inp.potential, 5000000.0) {
            return hold(
                s,
                "hold",
                format!(
                    "hold `star`: potential of 5M or more (a 'star' account, 003): keep investing: stays {ct}"
                ),
            );
        }
        let target = if q - cur > MAX_STEPS { cur + MAX_STEPS } else { q };
        s.tier = target as u8;
        s.change = Change::Demote;
        let why = if below {
            format!(
                "score {} < {} ({ct}'s {} - demote margin {})",
                num(score),
                num(MIN_SCORE[cur] - DEMOTE_MARGIN),
                num(MIN_SCORE[cur]),
                num(DEMOTE_MARGIN)
            )
        } else {
            format!("{ct}'s condition `{STRATEGIC_WHEN}` no longer holds")
        };
        s.reasons.push(Reason {
            code: "demote",
            message: format!("demoted from {ct} to {}: {why}", TIERS[target]),
        });
        if target != q {
            s.reasons.push(Reason {
                code: "max_steps",
                message: format!(
                    "qualifies for {} but moves at most {MAX_STEPS} tier(s) at a time",
                    TIERS[q]
                ),
            });
        }
        return;
    }
    s.tier = cur as u8;
    s.change = Change::None;
    s.reasons.push(Reason { code: "stay", message: format!("stays {}", TIERS[cur]) });
}

fn last_seen(out: &mut String, d: Option<Date>, as_of: i64) {
    match d {
        None => out.push_str("never"),
        Some(d) => {
            let _ = write!(out, "{}, {} days ago", d.as_str(), as_of - d.day);
        }
    }
}

/// Account alerts on the final tier, in declaration order.
pub fn alerts(inp: &Inputs, as_of: i64, tier: u8, score: f64) -> Vec<AlertOut> {
    let mut out = Vec::new();
    let kam = tier <= 1;
    if let (Some(n), Some(p)) = (inp.nps, inp.nps_prev)
        && p - n >= 20
    {
        out.push(AlertOut {
            id: "nps_drop",
            severity: "high",
            message: format!("NPS fell {} points, from {p} to {n}", p - n),
        });
    }
    if kam && inp.last_qbr.is_none_or(|d| as_of - d.day > 92) {
        let mut m = format!(
            "quarterly business review overdue for this {} account (last QBR: ",
            TIERS[tier as usize]
        );
        last_seen(&mut m, inp.last_qbr, as_of);
        m.push(')');
        out.push(AlertOut { id: "qbr_overdue", severity: "medium", message: m });
    }
    if tier == 0 && inp.last_ebr.is_none_or(|d| as_of - d.day > 365) {
        let mut m = String::from("executive business review overdue (last EBR: ");
        last_seen(&mut m, inp.last_ebr, as_of);
        m.push(')');
        out.push(AlertOut { id: "ebr_overdue", severity: "high", message: m });
    }
    if let Some(prev) = inp.revenue_prev_12m
        && rhai_lt(inp.revenue_12m, 0.9 * prev)
    {
        let mut m = String::from("revenue down ");
        push_rhai_float(&mut m, (100.0 - 100.0 * inp.revenue_12m / prev).round());
        m.push_str("% on the previous 12 months (");
        push_rhai_float(&mut m, prev);
        m.push_str(" -> ");
        push_rhai_float(&mut m, inp.revenue_12m);
        m.push(')');
        out.push(AlertOut { id: "revenue_decline", severity: "medium", message: m });
    }
    if kam
        && let Some(d) = inp.renewal_date
        && let Some(n) = inp.nps
    {
        let until = d.day - as_of;
        if (0..=90).contains(&until) && n < 0 {
            out.push(AlertOut {
                id: "renewal_at_risk",
                severity: "critical",
                message: format!(
                    "renewal on {} ({until} days) with a negative NPS ({n})",
                    d.as_str()
                ),
            });
        }
    }
    if kam
        && let Some(w) = inp.share_of_wallet
        && rhai_lt(w, 0.25)
    {
        let mut m = String::from("share of wallet only ");
        push_rhai_float(&mut m, (w * 100.0).round());
        m.push_str("%: whitespace to convert (potential ");
        push_rhai_float(&mut m, inp.potential);
        m.push(')');
        out.push(AlertOut { id: "whitespace", severity: "low", message: m });
    }
    if tier == 2 && rhai_ge(score, 5.5) {
        let mut m = String::from("score ");
        push_rhai_float(&mut m, (score * 100.0).round() / 100.0);
        m.push_str(" is close to key (promotion at 6.25)");
        out.push(AlertOut { id: "key_candidate", severity: "info", message: m });
    }
    out
}

/// Alerts on the final tier, then the decision.
pub fn finish<'a, 'p>(s: Scored<'a>, pol: &'p PolicyRef) -> Decision<'a, 'p> {
    let t = s.tier as usize;
    let alerts = alerts(&s.acc.inp, s.acc.as_of, s.tier, s.score);
    let next_tier = (t > 0).then(|| {
        let up = t - 1;
        let needs = MIN_SCORE[up] + PROMOTE_MARGIN;
        NextTier {
            tier: TIERS[up],
            needs,
            gap: (needs - s.score).max(0.0),
            when: (up == 0).then_some(STRATEGIC_WHEN),
            when_holds: (up == 0 && s.strategic_seen).then_some(s.strategic_ok),
        }
    });
    let scores = std::array::from_fn(|k| CriterionScore {
        id: CRITERIA[k].0,
        score: s.scores[k],
        weight: CRITERIA[k].1,
    });
    Decision {
        id: s.acc.id,
        manager: s.acc.manager,
        policy: pol,
        score: s.score,
        scores,
        qualified_tier: TIERS[s.qualified as usize],
        previous_tier: s.acc.current_tier,
        tier: TIERS[t],
        change: s.change,
        reasons: s.reasons,
        alerts,
        next_tier,
    }
}

/// Account level for one validated account.
pub fn decide<'a, 'p>(acc: Account<'a>, pol: &'p PolicyRef) -> Result<Decision<'a, 'p>, HwError> {
    score_and_move(acc).map(|s| finish(s, pol))
}

fn duplicate_error(id: &str) -> HwError {
    HwError::new(
        id,
        "duplicate_id",
        format!("id `{id}` appears more than once in the input; every copy is refused"),
        Some("id"),
        None,
    )
}

/// Marks the snapshots whose id appears more than once (a rejected record with an id claims
/// it too).
pub fn duplicates<T>(records: &[Result<T, HwError>], id: impl Fn(&T) -> &str) -> Vec<bool> {
    let mut counts: HashMap<&str, u32> = HashMap::with_capacity(records.len());
    for r in records {
        let k = match r {
            Ok(s) => Some(id(s)),
            Err(e) => e.id.as_deref(),
        };
        if let Some(k) = k {
            *counts.entry(k).or_default() += 1;
        }
    }
    records
        .iter()
        .map(|r| r.as_ref().is_ok_and(|s| counts.get(id(s)).copied().unwrap_or(0) > 1))
        .collect()
}

/// Validation step shared by both levels: duplicates, then `validate`.
pub fn validate_all<'a, T>(
    records: Vec<Result<T, HwError>>,
    id: impl Fn(&T) -> &str,
    validate: impl Fn(T) -> Result<Account<'a>, HwError>,
) -> Vec<Result<Account<'a>, HwError>> {
    let dup = duplicates(&records, &id);
    records
        .into_iter()
        .zip(dup)
        .map(|(r, d)| match r {
            Err(e) => Err(e),
            Ok(s) if d => Err(duplicate_error(id(&s))),
            Ok(s) => validate(s),
        })
        .collect()
}

fn with_record(mut e: HwError, i: usize) -> HwError {
    if e.record.is_none() {
        e.record = Some(i + 1);
    }
    e
}

/// Account level over validated accounts (`tierwise::engine::evaluate`).
pub fn evaluate<'a, 'p>(
    accounts: Vec<Result<Account<'a>, HwError>>,
    pol: &'p PolicyRef,
) -> Vec<Outcome<'a, 'p>> {
    accounts
        .into_iter()
        .enumerate()
        .map(|(i, r)| match r.and_then(|a| decide(a, pol)) {
            Ok(d) => Outcome::Decision(Box::new(d)),
            Err(e) => Outcome::error(with_record(e, i)),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Portfolio.

#[derive(Debug, Clone, serde::Serialize)]
pub struct ManagerLoad {
    pub manager: String,
    pub count: u64,
    pub status: &'static str,
    pub reassign: Vec<String>,
    pub demoted: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TierSummary {
    pub id: &'static str,
    pub label: &'static str,
    pub count: u64,
    pub share: f64,
    pub revenue: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct OverCap {
    pub tier: &'static str,
    pub limit: u64,
    pub count: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Move {
    pub id: String,
    pub from: String,
    pub to: &'static str,
    pub change: Change,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ChangeCounts {
    pub promote: u64,
    pub demote: u64,
    pub hold: u64,
    pub none: u64,
    pub new: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub account_count: u64,
    pub error_count: u64,
    pub total_revenue: f64,
    pub top10_revenue_share: f64,
    pub tiers: Vec<TierSummary>,
    pub over_cap: Vec<OverCap>,
    pub changes: ChangeCounts,
    pub managers: Vec<ManagerLoad>,
    pub portfolio_alerts: Vec<AlertOut>,
    pub moves: Vec<Move>,
}

fn rank(a: &Scored<'_>, b: &Scored<'_>) -> std::cmp::Ordering {
    b.score.total_cmp(&a.score).then_with(|| a.acc.id.as_bytes().cmp(b.acc.id.as_bytes()))
}

/// `cap_protected`'s "what protected it", per current tier: margin, tenure, renewal, star.
const HELD_BY: [[&str; 4]; 3] = [
    [
        "movement held it in strategic (within the demote margin 0.75)",
        "movement held it in strategic (fewer than 180 days in the tier)",
        "movement held it in strategic (hold `renewal`: renewal within 90 days: no demotion during the negotiation)",
        "movement held it in strategic (hold `star`: potential of 5M or more (a 'star' account, 003): keep investing)",
    ],
    [
        "movement held it in key (within the demote margin 0.75)",
        "movement held it in key (fewer than 180 days in the tier)",
        "movement held it in key (hold `renewal`: renewal within 90 days: no demotion during the negotiation)",
        "movement held it in key (hold `star`: potential of 5M or more (a 'star' account, 003): keep investing)",
    ],
    ["", "", "", ""],
];

/// Seat classes: 0 fixed (may not go lower), 1 incumbent, 2 entrant (`incumbents` priority
/// everywhere in this policy).
fn class(s: &Scored<'_>, lower: usize) -> u8 {
    if s.held || s.current.is_some_and(|c| lower > c as usize + MAX_STEPS) {
        0
    } else if s.current == Some(s.tier) {
        1
    } else {
        2
    }
}

fn order(scored: &[Scored<'_>], members: Vec<usize>, lower: usize) -> Vec<(u8, usize)> {
    let mut o: Vec<(u8, usize)> =
        members.into_iter().map(|i| (class(&scored[i], lower), i)).collect();
    o.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| rank(&scored[a.1], &scored[b.1])));
    o
}

fn accounts(n: usize) -> String {
    if n == 1 { "1 account".into() } else { format!("{n} accounts") }
}

fn ranked(o: &[(u8, usize)], pos: usize, c: u8) -> String {
    let fixed = o.iter().filter(|x| x.0 == 0).count();
    let inc = o.iter().filter(|x| x.0 == 1).count();
    let mut why = match c {
        2 if inc == 1 => "an entrant: the 1 incumbent goes first, then by score".to_string(),
        2 if inc > 1 => format!("an entrant: the {inc} incumbents go first, then by score"),
        1 => "incumbents first, by score".to_string(),
        _ => "by score".to_string(),
    };
    if fixed > 0 && c != 0 {
        why.push_str(&format!(", after {} that may not go lower", accounts(fixed)));
    }
    if c == 0 {
        why = "it may not go lower".into();
    }
    format!("ranked {pos} of {} ({why})", o.len())
}

fn limit(t: usize, n: usize) -> Option<usize> {
    MAX_SHARE[t].map(|share| (share * n as f64 + 1e-9).floor().max(0.0) as usize)
}

fn apply_caps(scored: &mut [Scored<'_>], from: usize, n: usize) {
    for t in from..TIERS.len() - 1 {
        let (Some(share), Some(lim)) = (MAX_SHARE[t], limit(t, n)) else { continue };
        let members: Vec<usize> =
            (0..scored.len()).filter(|&i| scored[i].tier as usize == t).collect();
        if members.len() <= lim {
            continue;
        }
        let o = order(scored, members, t + 1);
        for (pos, &(c, i)) in o.iter().enumerate().skip(lim) {
            let rank = ranked(&o, pos + 1, c);
            let s = &mut scored[i];
            if c == 0 {
                let protection = if s.held {
                    s.held_by.to_string()
                } else {
                    let cur = s.current.unwrap_or(0) as usize;
                    format!(
                        "max_steps {MAX_STEPS}: {} would be {} tiers below its current tier {}",
                        TIERS[t + 1],
                        t + 1 - cur,
                        TIERS[cur]
                    )
                };
                let message = format!(
                    "{} keeps at most {} (max_share {} of {n} accounts); {rank}, so it stays {}: {protection}",
                    TIERS[t],
                    accounts(lim),
                    num(share),
                    TIERS[t]
                );
                match s.reasons.iter_mut().find(|r| r.code == "cap_protected") {
                    Some(r) => r.message = message,
                    None => s.reasons.push(Reason { code: "cap_protected", message }),
                }
                continue;
            }
            s.tier = (t + 1) as u8;
            s.reasons.push(Reason {
                code: "cap",
                message: format!(
                    "{} keeps at most {} (max_share {} of {n} accounts); {rank}, moves to {}",
                    TIERS[t],
                    accounts(lim),
                    num(share),
                    TIERS[t + 1]
                ),
            });
        }
    }
}

fn in_book(t: u8) -> bool {
    t <= 1
}

/// Caps, `total_max`, manager capacity (`flag`), and the tiers left over their caps.
fn place_accounts(scored: &mut [Scored<'_>]) -> (Vec<ManagerLoad>, Vec<OverCap>) {
    let n = scored.len();
    apply_caps(scored, 0, n);
    let members: Vec<usize> = (0..n).filter(|&i| in_book(scored[i].tier)).collect();
    if members.len() > TOTAL_MAX {
        let o = order(scored, members, OUTSIDE as usize);
        let mut moved = false;
        for (pos, &(c, i)) in o.iter().enumerate().skip(TOTAL_MAX) {
            if c == 0 {
                continue;
            }
            let rank = ranked(&o, pos + 1, c);
            let s = &mut scored[i];
            let from = TIERS[s.tier as usize];
            s.tier = OUTSIDE;
            s.reasons.push(Reason {
                code: "total_max",
                message: format!(
                    "the capacity tiers hold at most {} together; {rank}, moves from {from} to {}",
                    accounts(TOTAL_MAX),
                    TIERS[OUTSIDE as usize]
                ),
            });
            moved = true;
        }
        if moved {
            apply_caps(scored, OUTSIDE as usize, n);
        }
    }
    let mut books: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, s) in scored.iter().enumerate() {
        if let Some(m) = &s.acc.manager {
            let b = books.entry(m).or_default();
            if in_book(s.tier) {
                b.push(i);
            }
        }
    }
    let managers = books
        .into_iter()
        .map(|(m, members)| {
            let count = members.len() as u64;
            let status = if count < PER_MANAGER_MIN {
                "under"
            } else if count > PER_MANAGER_MAX {
                "over"
            } else {
                "ok"
            };
            let mut reassign = Vec::new();
            if count > PER_MANAGER_MAX {
                let o = order(scored, members, OUTSIDE as usize);
                reassign = o[PER_MANAGER_MAX as usize..]
                    .iter()
                    .map(|&(_, i)| scored[i].acc.id.to_string())
                    .collect();
                reassign.sort();
            }
            ManagerLoad { manager: m.to_string(), count, status, reassign, demoted: Vec::new() }
        })
        .collect();
    let mut counts = [0usize; 3];
    for s in scored.iter() {
        counts[s.tier as usize] += 1;
    }
    let over_cap = (0..TIERS.len())
        .filter_map(|t| {
            let lim = limit(t, n)?;
            (counts[t] > lim).then(|| OverCap {
                tier: TIERS[t],
                limit: lim as u64,
                count: counts[t] as u64,
            })
        })
        .collect();
    (managers, over_cap)
}

fn final_change(s: &Scored<'_>) -> Change {
    match s.current {
        None => Change::New,
        Some(c) if s.tier == c => {
            if s.held {
                Change::Hold
            } else {
                Change::None
            }
        }
        Some(c) if s.tier < c => Change::Promote,
        Some(_) => Change::Demote,
    }
}

/// Portfolio level over validated accounts (`tierwise::engine::evaluate_portfolio`).
pub fn evaluate_portfolio<'a, 'p>(
    accounts: Vec<Result<Account<'a>, HwError>>,
    pol: &'p PolicyRef,
) -> (Vec<Outcome<'a, 'p>>, Summary) {
    let mut slots: Vec<Result<usize, HwError>> = Vec::with_capacity(accounts.len());
    let mut scored: Vec<Scored<'a>> = Vec::with_capacity(accounts.len());
    for r in accounts {
        match r.and_then(score_and_move) {
            Ok(s) => {
                slots.push(Ok(scored.len()));
                scored.push(s);
            }
            Err(e) => slots.push(Err(e)),
        }
    }
    let (managers, over_cap) = place_accounts(&mut scored);
    for s in &mut scored {
        s.change = final_change(s);
    }
    let n = scored.len();
    let mut revenues: Vec<f64> = Vec::with_capacity(n);
    let mut tiers: Vec<TierSummary> = (0..3)
        .map(|t| TierSummary {
            id: TIERS[t],
            label: TIER_LABELS[t],
            count: 0,
            share: 0.0,
            revenue: 0.0,
        })
        .collect();
    let mut by_tier: Vec<Vec<f64>> = vec![Vec::new(); TIERS.len()];
    let mut changes = ChangeCounts::default();
    let mut moves = Vec::new();
    for s in &scored {
        let rev = s.acc.inp.revenue_12m;
        revenues.push(rev);
        tiers[s.tier as usize].count += 1;
        by_tier[s.tier as usize].push(rev);
        match s.change {
            Change::Promote => changes.promote += 1,
            Change::Demote => changes.demote += 1,
            Change::Hold => changes.hold += 1,
            Change::None => changes.none += 1,
            Change::New => changes.new += 1,
        }
        if let Some(prev) = &s.acc.current_tier
            && **prev != *TIERS[s.tier as usize]
        {
            moves.push(Move {
                id: s.acc.id.to_string(),
                from: prev.to_string(),
                to: TIERS[s.tier as usize],
                change: s.change,
            });
        }
    }
    for t in &mut tiers {
        t.share = if n == 0 { 0.0 } else { t.count as f64 / n as f64 };
    }
    // Sums over values sorted descending (input order must not change a total).
    revenues.sort_by(|a, b| b.total_cmp(a));
    let total = revenues.iter().fold(0.0, |a, b| a + b);
    for (t, mut revs) in tiers.iter_mut().zip(by_tier) {
        revs.sort_by(|a, b| b.total_cmp(a));
        t.revenue = revs.iter().fold(0.0, |a, b| a + b);
    }
    moves.sort_by(|a, b| a.id.as_bytes().cmp(b.id.as_bytes()));
    let top10 =
        if total == 0.0 { 0.0 } else { revenues.iter().take(10).fold(0.0, |a, b| a + b) / total };
    let managers_over = managers.iter().filter(|m| m.status == "over").count();

    let mut portfolio_alerts = Vec::new();
    if rhai_gt(top10, 0.30) {
        let mut m = String::from("the top 10 accounts hold ");
        push_rhai_float(&mut m, (top10 * 1000.0).round() / 10.0);
        m.push_str("% of revenue (KAM trigger: more than 30%)");
        portfolio_alerts.push(AlertOut {
            id: "revenue_concentration",
            severity: "medium",
            message: m,
        });
    }
    if managers_over > 0 {
        portfolio_alerts.push(AlertOut {
            id: "kam_overloaded",
            severity: "high",
            message: format!(
                "{managers_over} key account manager(s) above 25 strategic/key accounts"
            ),
        });
    }
    if n > 0 && rhai_gt(total, 250000.0 * n as f64) {
        let mut m = String::from("average revenue per account is above $250K (");
        push_rhai_float(&mut m, (total / n as f64).round());
        m.push(')');
        portfolio_alerts.push(AlertOut {
            id: "enterprise_deal_size",
            severity: "info",
            message: m,
        });
    }

    let mut finished: Vec<Option<Decision<'a, 'p>>> =
        scored.into_iter().map(|s| Some(finish(s, pol))).collect();
    let outcomes: Vec<Outcome<'a, 'p>> = slots
        .into_iter()
        .enumerate()
        .map(|(i, slot)| match slot {
            Ok(k) => match finished[k].take() {
                Some(d) => Outcome::Decision(Box::new(d)),
                None => Outcome::error(HwError {
                    id: None,
                    code: "internal",
                    message: "missing outcome".into(),
                    field: None,
                    rule: None,
                    record: Some(i + 1),
                }),
            },
            Err(e) => Outcome::error(with_record(e, i)),
        })
        .collect();
    let error_count = (outcomes.len() - n) as u64;
    let summary = Summary {
        account_count: n as u64,
        error_count,
        total_revenue: total,
        top10_revenue_share: top10,
        tiers,
        over_cap,
        changes,
        managers,
        portfolio_alerts,
        moves,
    };
    (outcomes, summary)
}

/// The last line of `eval --portfolio --format jsonl`: policy and summary, in field order.
pub fn summary_line(pol: &PolicyRef, summary: &Summary) -> serde_json::Result<Vec<u8>> {
    #[derive(serde::Serialize)]
    struct Tail<'a> {
        policy: &'a PolicyRef,
        summary: &'a Summary,
    }
    serde_json::to_vec(&Tail { policy: pol, summary })
}
