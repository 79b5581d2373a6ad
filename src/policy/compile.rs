//! Raw policy files → a validated [`Policy`], with every problem reported at once.
//!
//! Order: parse `policy.toml` (syntax and types stop here: nothing else can be checked
//! without them), note unknown keys with a "did you mean", compile `scripts/*.rhai`, then check
//! every section and compile every expression, collecting diagnostics as it goes. Only a
//! policy without errors is returned; warnings travel with it.

use super::diag::{Diagnostics, Level, Place, did_you_mean};
use super::limits;
use super::raw::*;
use super::scalar::{check_scalar, scalar_text};
use super::*;
use crate::script::{self, Limits, Var, native};
use indexmap::IndexMap;
use rhai::{Dynamic, ParseError, Scope};
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;

const POLICY_FILE: &str = "policy.toml";

/// Variables portfolio alert expressions may read.
const AGGREGATE_VARS: [(&str, Var); 8] = [
    ("account_count", Var::AccountCount),
    ("total_revenue", Var::TotalRevenue),
    ("managers_over", Var::ManagersOver),
    ("managers_under", Var::ManagersUnder),
    ("unassigned_count", Var::UnassignedCount),
    ("per_manager_min", Var::PerManagerMin),
    ("per_manager_max", Var::PerManagerMax),
    ("total_max", Var::TotalMax),
];

pub(crate) fn compile(name: &str, files: &Files, limits: &Limits) -> Result<Policy, Report> {
    let mut d = Diagnostics::default();
    for (path, bytes) in files {
        match std::str::from_utf8(bytes) {
            Ok(text) => {
                d.sources.insert(path.clone(), Arc::from(text));
            }
            Err(_) if path == POLICY_FILE || path.ends_with(".rhai") || path.ends_with(".toml") => {
                d.at(
                    Level::Error,
                    "not_utf8",
                    path,
                    None,
                    None,
                    format!("`{path}` is not UTF-8 text"),
                    None,
                );
            }
            Err(_) => {}
        }
    }
    let Some(text) = d.sources.get(POLICY_FILE).cloned() else {
        if !d.has_errors() {
            d.at(
                Level::Error,
                "no_policy",
                POLICY_FILE,
                None,
                None,
                "the folder has no `policy.toml`",
                None,
            );
        }
        return Err(Report::from_diagnostics(name, d));
    };
    let Some(raw) = parse_toml::<RawPolicy>(&mut d, POLICY_FILE, &text) else {
        return Err(Report::from_diagnostics(name, d));
    };
    let mut c = Compiler {
        d,
        limits,
        text: text.clone(),
        vars: HashMap::new(),
        fn_files: HashMap::new(),
        inputs: Vec::new(),
        script_asts: Vec::new(),
        scripts_broken: false,
        stopped: false,
    };
    let policy = c.policy(name, files, raw);
    match policy {
        Some(p) if !c.d.has_errors() => Ok(p),
        _ => Err(Report::from_diagnostics(name, c.d)),
    }
}

/// Parses one TOML file into `T`, reporting syntax errors, type errors and unknown keys.
fn parse_toml<T: serde::de::DeserializeOwned + schemars::JsonSchema>(
    d: &mut Diagnostics,
    file: &str,
    text: &str,
) -> Option<T> {
    let de = match toml::de::Deserializer::parse(text) {
        Ok(de) => de,
        Err(e) => {
            d.at(Level::Error, "toml_syntax", file, e.span(), None, lower(e.message()), None);
            return None;
        }
    };
    let mut unknown: Vec<Vec<Seg>> = Vec::new();
    let parsed: Result<T, _> = serde_ignored::deserialize(de, |path| unknown.push(segments(&path)));
    let value = match parsed {
        Ok(v) => v,
        Err(e) => {
            d.at(Level::Error, "toml_type", file, e.span(), None, lower(e.message()), None);
            return None;
        }
    };
    if !unknown.is_empty() {
        let doc = toml::de::DeTable::parse(text).ok();
        let schema = schemars::schema_for!(T);
        for path in unknown {
            let Some((Seg::Key(key), parent)) = path.split_last() else { continue };
            let span = doc.as_ref().and_then(|doc| key_span(doc.get_ref(), &path));
            let known = known_keys(schema.as_value(), parent);
            let help = did_you_mean(key, known.iter().map(String::as_str)).or_else(|| {
                (!known.is_empty()).then(|| {
                    format!(
                        "expected one of {}",
                        known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                    )
                })
            });
            let at = display_path(parent);
            let msg = if at.is_empty() {
                format!("unknown key `{key}`")
            } else {
                format!("unknown key `{key}` in `{at}`")
            };
            d.at(Level::Error, "unknown_key", file, span, None, msg, help);
        }
    }
    Some(value)
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

fn segments(p: &serde_ignored::Path) -> Vec<Seg> {
    let mut out = Vec::new();
    let mut cur = p;
    loop {
        match cur {
            serde_ignored::Path::Root => break,
            serde_ignored::Path::Seq { parent, index } => {
                out.push(Seg::Index(*index));
                cur = parent;
            }
            serde_ignored::Path::Map { parent, key } => {
                // toml::Spanned's private keys are plumbing, not the user's.
                if !key.starts_with("$__") {
                    out.push(Seg::Key(key.clone()));
                }
                cur = parent;
            }
            serde_ignored::Path::Some { parent }
            | serde_ignored::Path::NewtypeStruct { parent }
            | serde_ignored::Path::NewtypeVariant { parent } => cur = parent,
        }
    }
    out.reverse();
    out
}

fn display_path(p: &[Seg]) -> String {
    let mut s = String::new();
    for seg in p {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

fn key_span(table: &toml::de::DeTable, path: &[Seg]) -> Option<Range<usize>> {
    let (first, rest) = path.split_first()?;
    let Seg::Key(k) = first else { return None };
    let (key, value) = table.iter().find(|(key, _)| key.get_ref().as_ref() == k.as_str())?;
    if rest.is_empty() {
        return Some(key.span());
    }
    value_span(value.get_ref(), rest)
}

fn value_span(v: &toml::de::DeValue, path: &[Seg]) -> Option<Range<usize>> {
    match (v, path.first()?) {
        (toml::de::DeValue::Table(t), Seg::Key(_)) => key_span(t, path),
        (toml::de::DeValue::Array(a), Seg::Index(i)) => {
            let item = a.get(*i)?;
            if path.len() == 1 { Some(item.span()) } else { value_span(item.get_ref(), &path[1..]) }
        }
        _ => None,
    }
}

/// The keys the schema allows at `path`, for "did you mean".
pub(crate) fn known_keys(root: &serde_json::Value, path: &[Seg]) -> Vec<String> {
    fn resolve<'a>(
        root: &'a serde_json::Value,
        mut s: &'a serde_json::Value,
    ) -> &'a serde_json::Value {
        for _ in 0..8 {
            if let Some(r) = s.get("$ref").and_then(|r| r.as_str()) {
                let name = r.rsplit('/').next().unwrap_or_default();
                match root.get("$defs").and_then(|d| d.get(name)) {
                    Some(def) => s = def,
                    None => break,
                }
            } else if let Some(alts) =
                s.get("anyOf").or_else(|| s.get("oneOf")).and_then(|a| a.as_array())
            {
                match alts.iter().find(|a| a.get("type").and_then(|t| t.as_str()) != Some("null")) {
                    Some(a) => s = a,
                    None => break,
                }
            } else {
                break;
            }
        }
        s
    }
    let mut s = resolve(root, root);
    for seg in path {
        let next = match seg {
            Seg::Key(k) => {
                s.get("properties").and_then(|p| p.get(k)).or_else(|| s.get("additionalProperties"))
            }
            Seg::Index(_) => s.get("items"),
        };
        match next {
            Some(n) => s = resolve(root, n),
            None => return Vec::new(),
        }
    }
    s.get("properties")
        .and_then(|p| p.as_object())
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

fn lower(s: &str) -> String {
    let s = s.trim().trim_end_matches('.');
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Maps a rhai position inside a TOML string value to a byte offset of the file. rhai counts
/// characters of the value; in a basic (`"`) string an escape such as `\"` is one character
/// of the value but several of the file.
fn offset_in_string(text: &str, span: &Range<usize>, line: usize, col: usize) -> usize {
    let rest = text.get(span.start..).unwrap_or("");
    let mut start = span.start;
    let basic = rest.starts_with('"');
    if rest.starts_with("\"\"\"") || rest.starts_with("'''") {
        start += 3;
        if text.get(start..).is_some_and(|r| r.starts_with('\n')) {
            start += 1;
        } else if text.get(start..).is_some_and(|r| r.starts_with("\r\n")) {
            start += 2;
        }
    } else if rest.starts_with('"') || rest.starts_with('\'') {
        start += 1;
    }
    let body = text.get(start..span.end.min(text.len())).unwrap_or("");
    let mut lines_left = line.saturating_sub(1);
    let mut cols_left = col.saturating_sub(1);
    let mut chars = body.char_indices().peekable();
    while let Some((i, ch)) = chars.next() {
        if lines_left == 0 && cols_left == 0 {
            return start + i;
        }
        if ch == '\n' {
            lines_left = lines_left.saturating_sub(1);
            continue;
        }
        if basic && ch == '\\' {
            let skip = match chars.peek().map(|p| p.1) {
                Some('u') => 5,
                Some('U') => 9,
                _ => 1,
            };
            for _ in 0..skip {
                chars.next();
            }
        }
        if lines_left == 0 {
            cols_left -= 1;
        }
    }
    span.end.min(text.len())
}

#[derive(Clone, Copy)]
enum ExprKind {
    /// Criteria, tier conditions, holds: inputs only.
    Account,
    /// Alert conditions and messages: inputs, `score`, `tier`.
    Alert,
    /// Portfolio alerts: aggregates only.
    Portfolio,
}

struct Compiler<'a> {
    d: Diagnostics,
    limits: &'a Limits,
    text: Arc<str>,
    vars: HashMap<String, Var>,
    /// Script function name (one parameter) → the file defining it.
    fn_files: HashMap<String, String>,
    /// The declared inputs, for the authoring lints of every expression.
    inputs: Vec<Input>,
    /// Each script file's AST, for the authoring lints once the criteria are known.
    script_asts: Vec<(String, AST)>,
    /// A script file did not compile: a function it may define is not reported missing
    /// (that would bury the real error under one per criterion).
    scripts_broken: bool,
    /// Set once compiling passed [`Limits::until`] (reported once, then everything stops).
    stopped: bool,
}

impl Compiler<'_> {
    /// Whether compiling must stop: the deadline of the work ([`Limits::until`], a dry run's
    /// request timeout) has passed. Checked between steps, each of which is linear in a
    /// bounded input, so compiling ends within one step of the deadline.
    fn past_deadline(&mut self) -> bool {
        if !self.stopped && self.limits.until.is_some_and(|u| std::time::Instant::now() >= u) {
            self.stopped = true;
            self.d.at(
                Level::Error,
                "compile_deadline",
                POLICY_FILE,
                None,
                None,
                "compiling stopped: the request's time ran out",
                None,
            );
        }
        self.stopped
    }

    /// A `switch` with more arms than [`limits::MAX_LIST_ITEMS`] in `src` (rhai's optimizer
    /// takes time quadratic in the arms): reported at `span`, and `true`.
    fn too_many_arms(
        &mut self,
        file: &str,
        src: &str,
        span: Option<Range<usize>>,
        rule: Option<&str>,
    ) -> bool {
        let arms = limits::switch_arms(src);
        if arms <= limits::MAX_LIST_ITEMS {
            return false;
        }
        self.d.at(
            Level::Error,
            "too_large",
            file,
            span,
            rule,
            format!(
                "{arms} `switch` arms in one expression or script, more than the limit of {}",
                limits::MAX_LIST_ITEMS
            ),
            Some("look values up in fewer arms, or score with `steps`".into()),
        );
        true
    }

    /// A list of the policy with more items than [`limits::MAX_LIST_ITEMS`]: reported, `true`.
    fn too_long(&mut self, what: &str, n: usize, span: &Range<usize>, rule: &str) -> bool {
        if n <= limits::MAX_LIST_ITEMS {
            return false;
        }
        self.err(
            "too_large",
            Some(span.clone()),
            Some(rule),
            format!("`{what}` holds {n} items, more than the limit of {}", limits::MAX_LIST_ITEMS),
            None,
        );
        true
    }

    /// An `unknown_tier` error for each tier a case names (`verb`: how it names it) that the
    /// policy does not have, with a did-you-mean.
    fn unknown_case_tiers<'t>(
        &mut self,
        path: &str,
        case: &Loc<RawCase>,
        tiers: &[Tier],
        named: impl IntoIterator<Item = &'t String>,
        verb: &str,
    ) {
        for t in named {
            if !tiers.iter().any(|x| &x.id == t) {
                let help = did_you_mean(t, tiers.iter().map(|t| t.id.as_str()));
                self.d.at(
                    Level::Error,
                    "unknown_tier",
                    path,
                    Some(case.span.clone()),
                    Some(&case.name),
                    format!(
                        "case `{}` {verb} tier `{t}`, which the policy does not have",
                        case.name
                    ),
                    help,
                );
            }
        }
    }

    fn err(
        &mut self,
        code: &'static str,
        span: Option<Range<usize>>,
        rule: Option<&str>,
        msg: impl Into<String>,
        help: Option<String>,
    ) {
        self.d.at(Level::Error, code, POLICY_FILE, span, rule, msg, help);
    }

    fn warn(
        &mut self,
        code: &'static str,
        span: Option<Range<usize>>,
        rule: Option<&str>,
        msg: impl Into<String>,
    ) {
        self.d.at(Level::Warning, code, POLICY_FILE, span, rule, msg, None);
    }

    fn place(&self, span: &Range<usize>, rule: &str) -> Place {
        let (line, column) = diag::LineIndex::new(&self.text).line_col(span.start);
        Place { file: POLICY_FILE.into(), line, column, rule: Some(rule.to_string()) }
    }

    fn policy(&mut self, name: &str, files: &Files, raw: RawPolicy) -> Option<Policy> {
        let inputs = self.inputs(&raw.inputs);
        self.inputs = inputs.clone();
        let input_slots: HashMap<String, usize> =
            inputs.iter().enumerate().map(|(i, inp)| (inp.name.clone(), i)).collect();
        self.vars = input_slots.iter().map(|(n, &i)| (n.clone(), Var::Input(i))).collect();
        self.vars.insert("score".into(), Var::Score);
        self.vars.insert("tier".into(), Var::Tier);
        for (n, v) in AGGREGATE_VARS {
            self.vars.insert(n.into(), v);
        }

        let scripts: BTreeMap<String, String> = files
            .keys()
            .filter_map(|p| {
                let stem = p.strip_prefix("scripts/")?.strip_suffix(".rhai")?;
                (!stem.contains('/'))
                    .then(|| Some((stem.to_string(), self.d.sources.get(p)?.to_string())))?
            })
            .collect();
        let cap = raw.capacity.as_ref();
        let per = cap.and_then(|c| c.per_manager.as_ref());
        let int = |v: Option<u64>| v.and_then(|v| i64::try_from(v).ok());
        let settings = script::Settings {
            per_manager_min: int(per.and_then(|p| p.min)),
            per_manager_max: int(per.and_then(|p| p.max)),
            total_max: int(cap.and_then(|c| c.total_max.as_ref().map(|t| t.value))),
            min_scores: raw
                .tiers
                .iter()
                .map(|t| (t.id.value.clone(), t.min_score.as_ref().map_or(0.0, |m| m.value)))
                .collect(),
        };
        let engine = script::build_engine(
            self.limits,
            self.vars.clone(),
            input_slots.clone(),
            Arc::new(scripts.clone()),
            Arc::new(settings),
        );
        let lib = self.scripts(&engine, &scripts);

        let scale = match &raw.score.scale {
            None => (1.0, 10.0),
            Some(s) => {
                if !(s.min.is_finite() && s.max.is_finite() && s.min < s.max) {
                    self.err(
                        "bad_scale",
                        Some(s.span.clone()),
                        Some("score.scale"),
                        format!(
                            "the scale needs finite `min` < `max`, got {} and {}",
                            s.min, s.max
                        ),
                        None,
                    );
                }
                (s.min, s.max)
            }
        };
        let criteria = self.criteria(&raw.score, &inputs, &engine, &lib);
        self.lint_scripts(&criteria);
        let tiers = self.tiers(&raw.tiers, scale, &engine, &lib);
        let movement = self.movement(&raw.movement, &engine, &lib);
        let capacity = raw.capacity.as_ref().and_then(|c| self.capacity(c, &tiers));
        let alerts = self.alerts(&raw.alerts, &tiers, &engine, &lib);
        let revenue = raw.portfolio.revenue.as_ref().and_then(|r| {
            let found = inputs.iter().position(|i| i.name == r.value);
            match found {
                Some(i) if matches!(inputs[i].ty, InputType::Number | InputType::Integer) => Some(i),
                Some(_) => {
                    self.err("bad_revenue", Some(r.span.clone()), Some("portfolio.revenue"), format!("`portfolio.revenue` names `{}`, which is not a number or integer input", r.value), None);
                    None
                }
                None => {
                    let help = did_you_mean(&r.value, inputs.iter().map(|i| i.name.as_str()));
                    self.err("unknown_input", Some(r.span.clone()), Some("portfolio.revenue"), format!("`portfolio.revenue` names `{}`, which is not a declared input", r.value), help);
                    None
                }
            }
        });
        let portfolio_alerts = self.portfolio_alerts(&raw.portfolio.alerts, &engine, &lib);
        let columns = self.columns(&raw.columns, &inputs);
        let cases = self.cases(files, &tiers, &columns);

        if self.past_deadline() || self.d.has_errors() {
            return None;
        }
        self.lint(&raw, &inputs, &tiers, &movement, capacity.as_ref(), &engine);
        let mut warnings: Vec<Diagnostic> =
            self.d.items.iter().filter(|d| d.level == Level::Warning).cloned().collect();
        // In file order, as a report of errors is.
        warnings.sort_by(|a, b| {
            (&a.place.file, a.place.line, a.place.column).cmp(&(
                &b.place.file,
                b.place.line,
                b.place.column,
            ))
        });
        let mut criteria = criteria;
        let mut tiers = tiers;
        let mut movement = movement;
        let mut alerts = alerts;
        let mut notes = Vec::new();
        if self.limits.native {
            let domains = domains(&inputs);
            let kinds: Vec<native::Kind> = inputs
                .iter()
                .map(|i| match i.ty {
                    InputType::Number => native::Kind::Float,
                    InputType::Integer => native::Kind::Int,
                    InputType::Bool => native::Kind::Bool,
                    InputType::String | InputType::Date => native::Kind::Str,
                })
                .collect();
            let b = native::Builder {
                kinds: &kinds,
                engine: &engine,
                lib_ast: &lib,
                vars: &self.vars,
                inputs: &input_slots,
                domains: &domains,
                max_operations: self.limits.max_operations,
                max_call_levels: self.limits.max_call_levels,
                max_string_size: self.limits.max_string_size,
            };
            let nlib = Arc::new(b.lib());
            // Past the deadline an expression stays on rhai (same results), and the policy is
            // refused below: translating stops within one expression.
            let until = self.limits.until;
            let fill = |e: &mut Expr| {
                if until.is_none_or(|u| std::time::Instant::now() < u) {
                    e.native = b.code(&e.ast, &nlib);
                }
            };
            for c in &mut criteria {
                let (why, place) = match &mut c.scoring {
                    Scoring::Expr(e) => {
                        fill(e);
                        (e.native.as_ref().err().cloned(), e.place.clone())
                    }
                    Scoring::Script { function, native, place, .. } => {
                        *native = b.call_with_account(function, &nlib);
                        (native.as_ref().err().cloned(), place.clone())
                    }
                    Scoring::Steps { .. } => continue,
                };
                if let Some(why) = why {
                    notes.push(Diagnostic {
                        level: Level::Info,
                        code: "rhai_fallback",
                        message: format!(
                            "criterion `{}` runs through rhai, not the native fast path: {why}",
                            c.key
                        ),
                        place,
                        help: Some(
                            "the results are the same, only slower; `tierwise check --explain-speed` lists every such rule"
                                .into(),
                        ),
                        span: None,
                    });
                }
            }
            for t in &mut tiers {
                if let Some(w) = &mut t.when {
                    fill(w);
                }
            }
            for h in &mut movement.holds {
                fill(&mut h.when);
            }
            for a in &mut alerts {
                fill(&mut a.when);
                for part in &mut a.message.parts {
                    if let Part::Expr(e) = part {
                        fill(e);
                    }
                }
            }
        }
        if self.past_deadline() {
            return None;
        }
        Some(Policy {
            name: name.to_string(),
            description: raw.policy.description,
            version: raw.policy.version,
            hash: content_hash(files),
            files: files.keys().cloned().collect(),
            inputs,
            scale,
            criteria,
            tiers,
            movement,
            capacity,
            alerts,
            revenue,
            portfolio_alerts,
            columns,
            cases,
            warnings,
            notes,
            limits: self.limits.clone(),
            engine,
            lib,
            pref: std::sync::OnceLock::new(),
        })
    }

    /// `[columns]`: each key must be a name tierwise reads, each header given once.
    fn columns(
        &mut self,
        raw: &IndexMap<String, Loc<String>>,
        inputs: &[Input],
    ) -> Vec<(String, String)> {
        let known: Vec<&str> = crate::snapshot::IDENTITY
            .iter()
            .copied()
            .chain(inputs.iter().map(|i| i.name.as_str()))
            .collect();
        let mut out: Vec<(String, String)> = Vec::new();
        for (key, header) in raw {
            let rule = format!("columns.{key}");
            if !known.contains(&key.as_str()) {
                let help = did_you_mean(key, known.iter().copied());
                self.err(
                    "unknown_column_target",
                    Some(header.span.clone()),
                    Some(&rule),
                    format!("`columns.{key}` maps a column to `{key}`, which is neither an identity column nor a declared input"),
                    help,
                );
                continue;
            }
            let h = header.value.trim();
            if h.is_empty() {
                self.err(
                    "bad_column",
                    Some(header.span.clone()),
                    Some(&rule),
                    format!("`columns.{key}` is empty"),
                    None,
                );
                continue;
            }
            if let Some((other, _)) = out.iter().find(|(_, x)| x == h) {
                self.err(
                    "bad_column",
                    Some(header.span.clone()),
                    Some(&rule),
                    format!("column `{h}` is mapped twice, to `{other}` and to `{key}`"),
                    None,
                );
                continue;
            }
            out.push((key.clone(), h.to_string()));
        }
        out
    }

    /// Warnings that need the compiled rules (see [`super::lint`]); only for a policy
    /// without errors, whose rules are all there.
    fn lint(
        &mut self,
        raw: &RawPolicy,
        inputs: &[Input],
        tiers: &[Tier],
        movement: &Movement,
        capacity: Option<&Capacity>,
        engine: &Engine,
    ) {
        let mut findings = super::lint::tiers(tiers, &raw.tiers, inputs, engine, self.limits);
        let holds: Vec<_> = movement
            .holds
            .iter()
            .zip(&raw.movement.holds)
            .map(|(h, r)| (h.id.clone(), &h.when, Some(r.when.span.clone())))
            .collect();
        findings.extend(super::lint::holds(&holds, inputs, engine, self.limits));
        if let (Some(rc), Some(c)) = (&raw.capacity, capacity) {
            findings.extend(super::lint::capacity(rc, c, tiers));
        }
        for f in findings {
            self.d.at(
                Level::Warning,
                f.code,
                POLICY_FILE,
                f.span,
                Some(&f.rule),
                f.message,
                f.help,
            );
        }
    }

    fn inputs(&mut self, raw: &IndexMap<String, Loc<RawInput>>) -> Vec<Input> {
        let mut out = Vec::new();
        for (name, inp) in raw {
            let rule = format!("inputs.{name}");
            let span = Some(inp.span.clone());
            if !is_identifier(name) {
                self.err("bad_input_name", span.clone(), Some(&rule), format!("input name `{name}` is not usable in expressions (letters, digits and `_`, not starting with a digit)"), None);
            }
            if matches!(name.as_ref(), "score" | "tier" | "account")
                || AGGREGATE_VARS.iter().any(|(n, _)| *n == name.as_ref() as &str)
            {
                self.err(
                    "reserved_name",
                    span.clone(),
                    Some(&rule),
                    format!("input name `{name}` is reserved"),
                    None,
                );
            }
            let ty = inp.ty.value;
            let numeric = matches!(ty, InputType::Number | InputType::Integer);
            for (b, which) in [(&inp.min, "min"), (&inp.max, "max")] {
                if let Some(b) = b {
                    if !numeric {
                        self.err(
                            "bad_bound",
                            Some(b.span.clone()),
                            Some(&rule),
                            format!(
                                "`{which}` applies to number and integer inputs, not `{}`",
                                ty.as_str()
                            ),
                            None,
                        );
                    } else if !b.value.is_finite() {
                        self.err(
                            "bad_bound",
                            Some(b.span.clone()),
                            Some(&rule),
                            format!("`{which}` must be finite"),
                            None,
                        );
                    }
                }
            }
            if let (Some(lo), Some(hi)) = (&inp.min, &inp.max)
                && lo.value > hi.value
            {
                self.err(
                    "bad_bound",
                    Some(lo.span.clone()),
                    Some(&rule),
                    format!("`min` {} is above `max` {}", lo.value, hi.value),
                    None,
                );
            }
            if let Some(one_of) = &inp.one_of {
                self.too_long("one_of", one_of.len(), &one_of.span, &rule);
                if one_of.is_empty() {
                    self.err(
                        "bad_one_of",
                        Some(one_of.span.clone()),
                        Some(&rule),
                        "`one_of` is empty: no value could pass",
                        None,
                    );
                }
                for v in one_of.iter() {
                    if !scalar_fits(v, ty) {
                        self.err(
                            "bad_one_of",
                            Some(one_of.span.clone()),
                            Some(&rule),
                            format!("`one_of` value {} is not a {}", scalar_text(v), ty.as_str()),
                            None,
                        );
                    }
                }
            }
            if let Some(def) = &inp.default {
                if !scalar_fits(&def.value, ty) {
                    self.err(
                        "bad_default",
                        Some(def.span.clone()),
                        Some(&rule),
                        format!("`default` {} is not a {}", scalar_text(&def.value), ty.as_str()),
                        None,
                    );
                } else if let Some(why) = check_scalar(
                    &def.value,
                    inp.min.as_ref().map(|m| m.value),
                    inp.max.as_ref().map(|m| m.value),
                    inp.one_of.as_ref().map(|o| o.value.as_slice()),
                ) {
                    self.err(
                        "bad_default",
                        Some(def.span.clone()),
                        Some(&rule),
                        format!("`default` {why}"),
                        None,
                    );
                }
                if inp.optional {
                    self.warn(
                        "optional_with_default",
                        Some(def.span.clone()),
                        Some(&rule),
                        "`optional` has no effect on an input with a `default`",
                    );
                }
            }
            out.push(Input {
                name: name.clone(),
                ty,
                min: inp.min.as_ref().map(|m| m.value),
                max: inp.max.as_ref().map(|m| m.value),
                one_of: inp.one_of.as_ref().map(|o| o.value.clone()),
                optional: inp.optional,
                default: inp.default.as_ref().map(|d| d.value.clone()),
                description: inp.description.clone(),
            });
        }
        out
    }

    fn scripts(&mut self, engine: &Engine, scripts: &BTreeMap<String, String>) -> AST {
        let mut lib = AST::empty();
        let mut seen: HashMap<(String, usize), String> = HashMap::new();
        for (stem, src) in scripts {
            let file = format!("scripts/{stem}.rhai");
            if self.past_deadline() || self.too_many_arms(&file, src, None, None) {
                continue;
            }
            let ast = match engine.compile_into_self_contained(&Scope::new(), src) {
                Ok(ast) => ast,
                Err(e) => {
                    self.scripts_broken = true;
                    self.foreign_syntax(&file, src, 0);
                    let pos = e.position();
                    let span = self.script_span(&file, pos.line(), pos.position());
                    let (code, msg) = match *e {
                        rhai::EvalAltResult::ErrorParsing(ref p, _) => {
                            ("rhai_syntax", lower(&p.to_string()))
                        }
                        rhai::EvalAltResult::ErrorModuleNotFound(ref m, _) => {
                            ("bad_import", m.clone())
                        }
                        ref other => ("bad_import", lower(&other.to_string())),
                    };
                    // rhai resolves imports without a position: find the path in the source.
                    let span = span.or_else(|| {
                        let path = msg.split('`').nth(1)?;
                        let lit = src.find(&format!("\"{path}\""))?;
                        let at = src.get(..lit)?.rfind("import").unwrap_or(lit);
                        Some(at..lit + path.len() + 2)
                    });
                    self.d.at(Level::Error, code, &file, span, None, msg, None);
                    continue;
                }
            };
            // Only functions of a script file are ever used: a top-level `import` would never
            // run for them, so it is refused here rather than failing every account later.
            let top = format!("{:?}", ast.clone_statements_only());
            if top.contains("Import(") {
                let at = src.find("import");
                self.d.at(
                    Level::Error,
                    "bad_import",
                    &file,
                    at.map(|a| a..a + 6),
                    None,
                    "an `import` at the top of a script file is never run",
                    Some("put the `import` inside the function that uses it".into()),
                );
            }
            for f in ast.iter_functions() {
                let key = (f.name.to_string(), f.params.len());
                if let Some(other) = seen.get(&key) {
                    let at = find_fn(src, f.name);
                    self.d.at(
                        Level::Error,
                        "duplicate_function",
                        &file,
                        at,
                        Some(f.name),
                        format!(
                            "function `{}` with {} parameter(s) is also defined in `{other}`",
                            f.name,
                            f.params.len()
                        ),
                        None,
                    );
                } else {
                    seen.insert(key, file.clone());
                }
                if f.params.len() == 1 {
                    self.fn_files.entry(f.name.to_string()).or_insert_with(|| file.clone());
                }
            }
            self.script_asts.push((file.clone(), ast.clone_functions_only()));
            let mut funcs = ast.clone_functions_only();
            funcs.set_source(file.as_str());
            lib.combine(funcs);
        }
        lib
    }

    /// A source rhai could not parse: a word of another language in it is the likely cause,
    /// said before rhai's own message (see [`diag::Report`]'s order).
    fn foreign_syntax(&mut self, file: &str, src: &str, base: usize) {
        let inputs = &self.inputs;
        if let Some((at, word, hint)) =
            super::astlint::foreign_syntax(src, &|w| inputs.iter().any(|i| i.name == w))
        {
            let at = base + at;
            self.d.at(
                Level::Error,
                "foreign_syntax",
                file,
                Some(at..at + word.len()),
                None,
                format!("`{word}` is not rhai"),
                Some(hint.to_string()),
            );
        }
    }

    /// The authoring lints of every script function (see [`super::astlint`]): a function
    /// reads the account when a `script` criterion names it or its parameter is `account`.
    fn lint_scripts(&mut self, criteria: &[Criterion]) {
        let named: HashSet<String> = criteria
            .iter()
            .filter_map(|c| match &c.scoring {
                Scoring::Script { function, .. } => Some(function.clone()),
                _ => None,
            })
            .collect();
        let takes = |name: &str, param: &str| param == "account" || named.contains(name);
        for (file, ast) in std::mem::take(&mut self.script_asts) {
            for f in super::astlint::script(&ast, &self.inputs, &takes) {
                let span = self.script_span(&file, Some(f.line), Some(f.column));
                let level = if f.error { Level::Error } else { Level::Warning };
                self.d.at(level, f.code, &file, span, None, f.message, f.help);
            }
        }
    }

    fn script_span(
        &self,
        file: &str,
        line: Option<usize>,
        col: Option<usize>,
    ) -> Option<Range<usize>> {
        let text = self.d.sources.get(file)?;
        let line = line?;
        let start =
            text.split_inclusive('\n').take(line.saturating_sub(1)).map(str::len).sum::<usize>();
        let col = col.unwrap_or(1).saturating_sub(1);
        let off = text
            .get(start..)
            .map_or(start, |rest| start + rest.char_indices().nth(col).map_or(0, |(i, _)| i));
        Some(off..off + 1)
    }

    /// Compiles an expression of `policy.toml` with strict variables for its kind.
    fn expr(
        &mut self,
        engine: &Engine,
        lib: &AST,
        kind: ExprKind,
        src: &Loc<String>,
        rule: &str,
    ) -> Option<Expr> {
        if self.past_deadline()
            || self.too_many_arms(POLICY_FILE, &src.value, Some(src.span.clone()), Some(rule))
        {
            return None;
        }
        let mut scope = Scope::new();
        let mut allowed: Vec<String> = Vec::new();
        for (name, var) in &self.vars {
            let ok = matches!(
                (kind, var),
                (ExprKind::Account, Var::Input(_))
                    | (ExprKind::Alert, Var::Input(_) | Var::Score | Var::Tier)
                    | (
                        ExprKind::Alert | ExprKind::Portfolio,
                        Var::PerManagerMin | Var::PerManagerMax | Var::TotalMax
                    )
                    | (
                        ExprKind::Portfolio,
                        Var::AccountCount
                            | Var::TotalRevenue
                            | Var::ManagersOver
                            | Var::ManagersUnder
                            | Var::UnassignedCount
                    )
            );
            if ok {
                allowed.push(name.clone());
            }
        }
        allowed.sort_unstable();
        for name in &allowed {
            scope.push_dynamic(name.as_str(), Dynamic::UNIT);
        }
        match engine.compile_expression_with_scope(&scope, &src.value) {
            Ok(ast) => {
                for f in super::astlint::expression(&ast, &self.inputs) {
                    let off = offset_in_string(&self.text, &src.span, f.line, f.column);
                    let level = if f.error { Level::Error } else { Level::Warning };
                    self.d.at(
                        level,
                        f.code,
                        POLICY_FILE,
                        Some(off..off + 1),
                        Some(rule),
                        f.message,
                        f.help,
                    );
                }
                let ast = if lib.iter_functions().next().is_some() { lib.merge(&ast) } else { ast };
                Some(Expr {
                    source: src.value.clone(),
                    place: self.place(&src.span, rule),
                    ast,
                    native: Err(native::OFF.into()),
                })
            }
            Err(ParseError(kind_err, pos)) => {
                if let Some((at, word, hint)) = super::astlint::foreign_syntax(&src.value, &|w| {
                    self.inputs.iter().any(|i| i.name == w)
                }) {
                    let (l, c) = diag::LineIndex::new(&src.value).line_col(at);
                    let off = offset_in_string(&self.text, &src.span, l as usize, c as usize);
                    self.err(
                        "foreign_syntax",
                        Some(off..off + word.len()),
                        Some(rule),
                        format!("`{word}` is not rhai"),
                        Some(hint.to_string()),
                    );
                }
                let off = offset_in_string(
                    &self.text,
                    &src.span,
                    pos.line().unwrap_or(1),
                    pos.position().unwrap_or(1),
                );
                let (code, msg, help) = match &*kind_err {
                    rhai::ParseErrorType::VariableUndefined(v) => {
                        let help = did_you_mean(v, allowed.iter().map(String::as_str)).or_else(|| {
                            let hint = match kind {
                                ExprKind::Account => "expressions read declared `[inputs]` only",
                                ExprKind::Alert => "alert expressions read declared `[inputs]`, `score` and `tier`",
                                ExprKind::Portfolio => "portfolio alerts read `account_count`, `total_revenue`, `managers_over`, `managers_under`, `unassigned_count`, the policy's `per_manager_min`, `per_manager_max`, `total_max` and the aggregate functions",
                            };
                            Some(hint.to_string())
                        });
                        ("unknown_variable", format!("`{v}` is not a declared input"), help)
                    }
                    other => ("rhai_syntax", lower(&other.to_string()), None),
                };
                let msg = if code == "unknown_variable" && matches!(kind, ExprKind::Portfolio) {
                    msg.replace("is not a declared input", "is not a portfolio aggregate")
                } else {
                    msg
                };
                self.err(code, Some(off..off + 1), Some(rule), msg, help);
                None
            }
        }
    }

    fn template(
        &mut self,
        engine: &Engine,
        lib: &AST,
        kind: ExprKind,
        src: &Loc<String>,
        rule: &str,
    ) -> Option<Template> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let s = src.value.as_str();
        let mut chars = s.char_indices().peekable();
        let mut ok = true;
        while let Some((i, ch)) = chars.next() {
            match ch {
                '{' if chars.peek().map(|p| p.1) == Some('{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek().map(|p| p.1) == Some('}') => {
                    chars.next();
                    text.push('}');
                }
                '{' => {
                    let Some(end) = matching_brace(s, i) else {
                        self.err("bad_template", Some(src.span.clone()), Some(rule), "`{` without a matching `}` in the message (write `{{` for a literal brace)", None);
                        return None;
                    };
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    let inner = Loc::new(s[i + 1..end].to_string(), src.span.clone());
                    match self.expr(engine, lib, kind, &inner, rule) {
                        Some(e) => parts.push(Part::Expr(e)),
                        None => ok = false,
                    }
                    while chars.peek().is_some_and(|(j, _)| *j <= end) {
                        chars.next();
                    }
                }
                '}' => {
                    self.err("bad_template", Some(src.span.clone()), Some(rule), "`}` without a matching `{` in the message (write `}}` for a literal brace)", None);
                    return None;
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        ok.then(|| Template { source: src.value.clone(), parts })
    }

    fn criteria(
        &mut self,
        score: &Loc<RawScore>,
        inputs: &[Input],
        engine: &Engine,
        lib: &AST,
    ) -> Vec<Criterion> {
        let mut out = Vec::new();
        if score.criteria.is_empty() {
            self.err(
                "no_criteria",
                Some(score.span.clone()),
                Some("score"),
                "the policy has no `[[score.criteria]]`",
                None,
            );
        }
        let mut ids = HashSet::new();
        let mut any_positive = false;
        for c in &score.criteria {
            let rule = format!("score.criteria.{}", c.id.value);
            if !ids.insert(c.id.value.clone()) {
                self.err(
                    "duplicate_id",
                    Some(c.id.span.clone()),
                    Some(&rule),
                    format!("criterion id `{}` is used twice", c.id.value),
                    None,
                );
            }
            let w = c.weight.value;
            if !w.is_finite() || w < 0.0 {
                self.err(
                    "bad_weight",
                    Some(c.weight.span.clone()),
                    Some(&rule),
                    format!("weight must be a finite number ≥ 0, got {w}"),
                    None,
                );
            } else if w == 0.0 {
                self.warn(
                    "zero_weight",
                    Some(c.weight.span.clone()),
                    Some(&rule),
                    format!("criterion `{}` has weight 0 and never changes a score", c.id.value),
                );
            } else {
                any_positive = true;
            }
            let kinds = usize::from(c.steps.is_some())
                + usize::from(c.expr.is_some())
                + usize::from(c.script.is_some());
            if kinds != 1 {
                self.err("bad_criterion", Some(c.span.clone()), Some(&rule), format!("criterion `{}` needs exactly one of `steps`, `expr`, `script` (found {kinds})", c.id.value), None);
                continue;
            }
            let scoring = if let Some(steps) = &c.steps {
                let input = inputs.iter().position(|i| i.name == steps.input.value);
                let input = match input {
                    None => {
                        let help = did_you_mean(
                            &steps.input.value,
                            inputs.iter().map(|i| i.name.as_str()),
                        );
                        self.err(
                            "unknown_input",
                            Some(steps.input.span.clone()),
                            Some(&rule),
                            format!(
                                "`steps.input` names `{}`, which is not a declared input",
                                steps.input.value
                            ),
                            help,
                        );
                        None
                    }
                    Some(i) => {
                        let inp = &inputs[i];
                        if !matches!(inp.ty, InputType::Number | InputType::Integer) {
                            self.err(
                                "bad_steps",
                                Some(steps.input.span.clone()),
                                Some(&rule),
                                format!(
                                    "`steps` needs a number or integer input; `{}` is a {}",
                                    inp.name,
                                    inp.ty.as_str()
                                ),
                                None,
                            );
                        } else if inp.optional && inp.default.is_none() {
                            self.err("bad_steps", Some(steps.input.span.clone()), Some(&rule), format!("`steps` reads `{}`, which is optional without a `default`", inp.name), Some("give the input a `default`, or score it with `expr` and handle `()`".into()));
                        }
                        Some(i)
                    }
                };
                let at = &steps.at;
                self.too_long("steps.at", at.len(), &at.span, &rule);
                if at.is_empty() {
                    self.err(
                        "bad_steps",
                        Some(at.span.clone()),
                        Some(&rule),
                        "`at` needs at least one cut point",
                        None,
                    );
                }
                if at.iter().any(|v| !v.is_finite()) {
                    self.err(
                        "bad_steps",
                        Some(at.span.clone()),
                        Some(&rule),
                        "`at` cut points must be finite numbers",
                        None,
                    );
                }
                if let Some(k) = at.windows(2).position(|w| w[0] >= w[1]) {
                    self.err(
                        "not_ascending",
                        Some(at.span.clone()),
                        Some(&rule),
                        format!(
                            "`at` must be strictly ascending, but {} is followed by {}",
                            at[k],
                            at[k + 1]
                        ),
                        None,
                    );
                }
                input.map(|input| Scoring::Steps { input, at: at.value.clone() })
            } else if let Some(expr) = &c.expr {
                self.expr(engine, lib, ExprKind::Account, expr, &rule).map(Scoring::Expr)
            } else if let Some(f) = &c.script {
                let found: Vec<usize> = lib
                    .iter_functions()
                    .filter(|m| m.name == f.value.as_str())
                    .map(|m| m.params.len())
                    .collect();
                if found.is_empty() && self.scripts_broken {
                    None
                } else if found.is_empty() {
                    let names: Vec<&str> = lib.iter_functions().map(|m| m.name).collect();
                    let help = did_you_mean(&f.value, names.iter().copied()).or_else(|| {
                        Some("define it in a file of `scripts/`: `fn name(account) { ... }`".into())
                    });
                    self.err(
                        "unknown_function",
                        Some(f.span.clone()),
                        Some(&rule),
                        format!(
                            "`script` names `{}`, which no file of `scripts/` defines",
                            f.value
                        ),
                        help,
                    );
                    None
                } else if !found.contains(&1) {
                    self.err(
                        "bad_function",
                        Some(f.span.clone()),
                        Some(&rule),
                        format!(
                            "script function `{}` must take one argument, the account",
                            f.value
                        ),
                        None,
                    );
                    None
                } else {
                    let file = self.fn_files.get(&f.value).cloned().unwrap_or_default();
                    Some(Scoring::Script {
                        function: f.value.clone(),
                        file,
                        place: self.place(&f.span, &rule),
                        native: Err(native::OFF.into()),
                    })
                }
            } else {
                None
            };
            if let Some(scoring) = scoring {
                out.push(Criterion {
                    id: c.id.value.clone(),
                    key: c.id.value.as_str().into(),
                    weight: w,
                    scoring,
                });
            }
        }
        if !score.criteria.is_empty() && !any_positive {
            self.err(
                "bad_weight",
                Some(score.span.clone()),
                Some("score"),
                "at least one criterion needs a weight above 0",
                None,
            );
        }
        out
    }

    fn tiers(
        &mut self,
        raw: &Loc<Vec<Loc<RawTier>>>,
        scale: (f64, f64),
        engine: &Engine,
        lib: &AST,
    ) -> Vec<Tier> {
        let mut out = Vec::new();
        if raw.is_empty() {
            self.err(
                "no_tiers",
                Some(raw.span.clone()),
                Some("tiers"),
                "the policy has no `[[tiers]]`",
                None,
            );
            return out;
        }
        let mut ids = HashSet::new();
        let last = raw.len() - 1;
        let mut prev_min: Option<f64> = None;
        for (i, t) in raw.iter().enumerate() {
            let rule = format!("tiers.{}", t.id.value);
            if !ids.insert(t.id.value.clone()) {
                self.err(
                    "duplicate_id",
                    Some(t.id.span.clone()),
                    Some(&rule),
                    format!("tier id `{}` is used twice", t.id.value),
                    None,
                );
            }
            let min_score = t.min_score.as_ref().map_or(0.0, |m| m.value);
            if let Some(m) = &t.min_score {
                if !m.value.is_finite() {
                    self.err(
                        "bad_min_score",
                        Some(m.span.clone()),
                        Some(&rule),
                        "`min_score` must be a finite number",
                        None,
                    );
                } else if m.value > scale.1 && i != last {
                    self.warn(
                        "unreachable_tier",
                        Some(m.span.clone()),
                        Some(&rule),
                        format!(
                            "tier `{}` needs {} but scores end at {}",
                            t.id.value, m.value, scale.1
                        ),
                    );
                }
            }
            if let Some(p) = prev_min
                && i != last
                && min_score > p
            {
                self.warn(
                    "thresholds_not_descending",
                    t.min_score.as_ref().map(|m| m.span.clone()),
                    Some(&rule),
                    format!(
                        "tier `{}` needs {min_score}, more than the better tier above it ({p})",
                        t.id.value
                    ),
                );
            }
            prev_min = Some(min_score);
            if let Some(s) = &t.max_share
                && !(s.value.is_finite() && s.value >= 0.0 && s.value <= 1.0)
            {
                self.err(
                    "bad_cap",
                    Some(s.span.clone()),
                    Some(&rule),
                    format!(
                        "`max_share` is a fraction between 0 and 1 (0.10 for 10%), got {}",
                        s.value
                    ),
                    None,
                );
            }
            if i == last {
                if let Some(w) = &t.when {
                    self.err(
                        "catch_all",
                        Some(w.span.clone()),
                        Some(&rule),
                        format!(
                            "the last tier `{}` is the catch-all and cannot have a `when`",
                            t.id.value
                        ),
                        Some("add a tier below it without conditions".into()),
                    );
                }
                for (cap, span) in [
                    ("max_share", t.max_share.as_ref().map(|s| s.span.clone())),
                    ("max_count", t.max_count.as_ref().map(|s| s.span.clone())),
                ] {
                    if let Some(span) = span {
                        self.err("catch_all", Some(span), Some(&rule), format!("the last tier `{}` is the catch-all and cannot have `{cap}`: accounts over it would have nowhere to go", t.id.value), None);
                    }
                }
            }
            let when = match &t.when {
                Some(w) if i != last => self.expr(engine, lib, ExprKind::Account, w, &rule),
                _ => None,
            };
            let cap_priority = self.priority(t.cap_priority.as_ref(), &rule, "cap_priority");
            out.push(Tier {
                id: t.id.value.clone(),
                id_str: t.id.value.as_str().into(),
                key: t.id.value.as_str().into(),
                when_src: when.as_ref().map(|w: &Expr| w.source.as_str().into()),
                label: t.label.clone().unwrap_or_else(|| t.id.value.clone()),
                min_score,
                when,
                max_share: t.max_share.as_ref().map(|s| s.value),
                max_count: t.max_count.as_ref().map(|s| s.value),
                cap_priority,
            });
        }
        out
    }

    fn movement(&mut self, m: &RawMovement, engine: &Engine, lib: &AST) -> Movement {
        for (v, name) in
            [(&m.promote_margin, "promote_margin"), (&m.demote_margin, "demote_margin")]
        {
            if let Some(v) = v
                && !(v.value.is_finite() && v.value >= 0.0)
            {
                self.err(
                    "bad_margin",
                    Some(v.span.clone()),
                    Some("movement"),
                    format!("`{name}` must be a finite number ≥ 0, got {}", v.value),
                    None,
                );
            }
        }
        if let Some(t) = &m.min_tenure_days
            && t.value < 0
        {
            self.err(
                "bad_tenure",
                Some(t.span.clone()),
                Some("movement"),
                format!("`min_tenure_days` must be ≥ 0, got {}", t.value),
                None,
            );
        }
        if let Some(s) = &m.max_steps
            && s.value == 0
        {
            self.err(
                "bad_max_steps",
                Some(s.span.clone()),
                Some("movement"),
                "`max_steps` must be at least 1 (leave it out for no limit)",
                None,
            );
        }
        let mut holds = Vec::new();
        for (i, h) in m.holds.iter().enumerate() {
            let id = h.id.as_ref().map_or_else(|| format!("hold-{}", i + 1), |id| id.value.clone());
            let rule = format!("movement.holds.{id}");
            if let Some(when) = self.expr(engine, lib, ExprKind::Account, &h.when, &rule) {
                holds.push(Hold { id, when, reason: h.reason.clone() });
            }
        }
        Movement {
            promote_margin: m.promote_margin.as_ref().map_or(0.0, |v| v.value),
            demote_margin: m.demote_margin.as_ref().map_or(0.0, |v| v.value),
            min_tenure_days: m.min_tenure_days.as_ref().map_or(0, |v| v.value),
            max_steps: m.max_steps.as_ref().map(|v| v.value),
            holds,
        }
    }

    /// `cap_priority` or `[capacity] priority`: absent is `incumbents`; anything but the two
    /// known values is an error (a typo would otherwise silently pick the default).
    fn priority(&mut self, raw: Option<&Loc<String>>, rule: &str, field: &str) -> Priority {
        let Some(v) = raw else { return Priority::default() };
        if let Some((_, p)) = Priority::ALL.iter().find(|(name, _)| *name == v.value) {
            return *p;
        }
        let names = Priority::ALL.map(|(n, _)| n);
        let help = did_you_mean(&v.value, names)
            .unwrap_or_else(|| "expected `incumbents` (the default) or `score`".into());
        self.err(
            "bad_priority",
            Some(v.span.clone()),
            Some(rule),
            format!("`{field}` is `{}`, which is neither `incumbents` nor `score`", v.value),
            Some(help),
        );
        Priority::default()
    }

    fn tier_ref(
        &mut self,
        tiers: &[Tier],
        id: &str,
        span: &Range<usize>,
        rule: &str,
        field: &str,
    ) -> Option<usize> {
        let found = tiers.iter().position(|t| t.id == id);
        if found.is_none() {
            let help = did_you_mean(id, tiers.iter().map(|t| t.id.as_str()));
            self.err(
                "unknown_tier",
                Some(span.clone()),
                Some(rule),
                format!("`{field}` names tier `{id}`, which the policy does not have"),
                help,
            );
        }
        found
    }

    fn capacity(&mut self, c: &Loc<RawCapacity>, tiers: &[Tier]) -> Option<Capacity> {
        let rule = "capacity";
        if c.tiers.is_empty() {
            self.err(
                "bad_capacity",
                Some(c.tiers.span.clone()),
                Some(rule),
                "`capacity.tiers` is empty: name the tiers that count toward a manager's book",
                None,
            );
        }
        let mut in_book = vec![false; tiers.len()];
        for id in c.tiers.iter() {
            if let Some(i) = self.tier_ref(tiers, id, &c.tiers.span, rule, "capacity.tiers") {
                in_book[i] = true;
            }
        }
        let (min, max) = c.per_manager.as_ref().map_or((None, None), |p| (p.min, p.max));
        if let (Some(lo), Some(hi), Some(p)) = (min, max, &c.per_manager)
            && lo > hi
        {
            self.err(
                "bad_capacity",
                Some(p.span.clone()),
                Some(rule),
                format!("`per_manager.min` {lo} is above `per_manager.max` {hi}"),
                None,
            );
        }
        let lowest = in_book.iter().rposition(|&b| b);
        let outside = lowest.map(|l| l + 1).filter(|&o| o < tiers.len());
        if lowest.is_some() && outside.is_none() {
            self.err("bad_capacity", Some(c.tiers.span.clone()), Some(rule), "no tier lies below every capacity tier: accounts moved out of the capacity tiers would have nowhere to go", None);
        }
        if let (Some(total), Some(share_limit)) =
            (c.total_max.as_ref(), c.per_manager.as_ref().and_then(|p| p.max))
            && total.value == 0
            && share_limit > 0
        {
            self.warn(
                "bad_capacity",
                Some(total.span.clone()),
                Some(rule),
                "`total_max = 0` leaves no account in the capacity tiers",
            );
        }
        let priority = self.priority(c.priority.as_ref(), rule, "priority");
        Some(Capacity {
            priority,
            in_book,
            min,
            max,
            total_max: c.total_max.as_ref().map(|t| t.value),
            on_overflow: c.on_overflow,
            outside: outside?,
        })
    }

    fn alerts(
        &mut self,
        raw: &[Loc<RawAlert>],
        tiers: &[Tier],
        engine: &Engine,
        lib: &AST,
    ) -> Vec<Alert> {
        let mut out = Vec::new();
        let mut ids = HashSet::new();
        for a in raw {
            let rule = format!("alerts.{}", a.id.value);
            if !ids.insert(a.id.value.clone()) {
                self.err(
                    "duplicate_id",
                    Some(a.id.span.clone()),
                    Some(&rule),
                    format!("alert id `{}` is used twice", a.id.value),
                    None,
                );
            }
            let applies = match &a.tiers {
                None => vec![true; tiers.len()],
                Some(list) if list.is_empty() => {
                    self.err(
                        "bad_alert_tiers",
                        Some(list.span.clone()),
                        Some(&rule),
                        "`tiers = []` would never apply; leave `tiers` out to apply to every tier",
                        None,
                    );
                    vec![false; tiers.len()]
                }
                Some(list) => {
                    let mut applies = vec![false; tiers.len()];
                    for id in list.iter() {
                        if let Some(i) = self.tier_ref(tiers, id, &list.span, &rule, "alerts.tiers")
                        {
                            applies[i] = true;
                        }
                    }
                    applies
                }
            };
            for (name, v) in
                [("cooldown_days", &a.cooldown_days), ("renotify_days", &a.renotify_days)]
            {
                if let Some(v) = v
                    && v.value < 0
                {
                    self.err(
                        "bad_alert_days",
                        Some(v.span.clone()),
                        Some(&rule),
                        format!("`{name}` must be ≥ 0, got {}", v.value),
                        None,
                    );
                }
            }
            if let Some(v) = &a.renotify_days
                && v.value == 0
            {
                self.warn(
                    "renotify_every_time",
                    Some(v.span.clone()),
                    Some(&rule),
                    "`renotify_days = 0` tells the alert again on every new `as_of`; leave it out \
                     to tell the alert once, or give a number of days",
                );
            }
            let when = self.expr(engine, lib, ExprKind::Alert, &a.when, &rule);
            let message = self.template(engine, lib, ExprKind::Alert, &a.message, &rule);
            if let (Some(when), Some(message)) = (when, message) {
                let text: usize = message
                    .parts
                    .iter()
                    .map(|p| if let Part::Text(t) = p { t.len() } else { 0 })
                    .sum();
                if text > self.limits.max_message_bytes {
                    self.warn(
                        "message_cut",
                        Some(a.message.span.clone()),
                        Some(&rule),
                        format!(
                            "the message's text alone is {text} bytes: every message is cut at {} bytes (the operator's `--max-message-bytes`)",
                            self.limits.max_message_bytes
                        ),
                    );
                }
                out.push(Alert {
                    id: a.id.value.clone(),
                    key: a.id.value.as_str().into(),
                    severity: a.severity,
                    applies,
                    when,
                    message,
                    cooldown_days: a.cooldown_days.as_ref().map_or(0, |v| v.value.max(0)),
                    renotify_days: a.renotify_days.as_ref().map(|v| v.value.max(0)),
                });
            }
        }
        // Fan-out: an account can raise every alert that applies to its tier. Past the
        // operator's limit that account is answered with `output_limit`, not its decision.
        let max = self.limits.max_alerts_per_account;
        for (t, tier) in tiers.iter().enumerate() {
            let applying: Vec<&Alert> = out.iter().filter(|a| a.applies[t]).collect();
            if let Some(past) = applying.get(max) {
                let rule = format!("alerts.{}", past.id);
                let span = raw.iter().find(|r| r.id.value == past.id).map(|r| r.id.span.clone());
                self.warn(
                    "alerts_fan_out",
                    span,
                    Some(&rule),
                    format!(
                        "{} alerts apply to tier `{}`, more than the {max} one account may raise (the operator's `--max-alerts-per-account`): an account raising all of them is answered `output_limit`",
                        applying.len(),
                        tier.id
                    ),
                );
                break;
            }
        }
        out
    }

    fn portfolio_alerts(
        &mut self,
        raw: &[Loc<RawPortfolioAlert>],
        engine: &Engine,
        lib: &AST,
    ) -> Vec<PortfolioAlert> {
        let mut out = Vec::new();
        let mut ids = HashSet::new();
        for a in raw {
            let rule = format!("portfolio.alerts.{}", a.id.value);
            if !ids.insert(a.id.value.clone()) {
                self.err(
                    "duplicate_id",
                    Some(a.id.span.clone()),
                    Some(&rule),
                    format!("portfolio alert id `{}` is used twice", a.id.value),
                    None,
                );
            }
            let when = self.expr(engine, lib, ExprKind::Portfolio, &a.when, &rule);
            let message = self.template(engine, lib, ExprKind::Portfolio, &a.message, &rule);
            if let (Some(when), Some(message)) = (when, message) {
                out.push(PortfolioAlert {
                    id: a.id.value.clone(),
                    severity: a.severity,
                    when,
                    message,
                });
            }
        }
        out
    }

    fn cases(
        &mut self,
        files: &Files,
        tiers: &[Tier],
        columns: &[(String, String)],
    ) -> Vec<TestCase> {
        let mut out = Vec::new();
        for path in files.keys().filter(|p| p.starts_with("tests/") && p.ends_with(".toml")) {
            if self.past_deadline() {
                break;
            }
            let Some(text) = self.d.sources.get(path).cloned() else { continue };
            let Some(raw) = parse_toml::<RawTestFile>(&mut self.d, path, &text) else { continue };
            let lines = diag::LineIndex::new(&text);
            for case in raw.case {
                let (line, column) = lines.line_col(case.span.start);
                let place =
                    Place { file: path.clone(), line, column, rule: Some(case.name.clone()) };
                let bad = |d: &mut Diagnostics, msg: String| {
                    d.at(
                        Level::Error,
                        "bad_case",
                        path,
                        Some(case.span.clone()),
                        Some(&case.name),
                        msg,
                        None,
                    )
                };
                let (values, portfolio) = match (&case.account, &case.accounts, &case.accounts_file)
                {
                    (Some(a), None, None) => (vec![a.clone()], false),
                    (None, Some(list), None) => (list.clone(), true),
                    (None, None, Some(_)) => (Vec::new(), true),
                    _ => {
                        bad(
                            &mut self.d,
                            format!(
                                "case `{}` needs exactly one of `account`, `accounts` and `accounts_file`",
                                case.name
                            ),
                        );
                        continue;
                    }
                };
                let mut accounts = Vec::new();
                for v in values {
                    match serde_json::from_value::<crate::snapshot::Snapshot>(toml_to_json(v)) {
                        Ok(s) => accounts.push(s),
                        Err(e) => {
                            bad(&mut self.d, format!("case `{}`: bad account: {e}", case.name))
                        }
                    }
                }
                if let Some(file) = &case.accounts_file {
                    match self.accounts_file(files, path, file, columns) {
                        Ok(list) => accounts.extend(list),
                        Err(msg) => bad(&mut self.d, format!("case `{}`: {msg}", case.name)),
                    }
                }
                if let Some(d) = &case.as_of {
                    match crate::snapshot::check_as_of(d) {
                        Ok(()) => {
                            for a in accounts.iter_mut().filter(|a| a.as_of.is_empty()) {
                                a.as_of = d.clone();
                            }
                        }
                        Err(msg) => bad(&mut self.d, format!("case `{}`: {msg}", case.name)),
                    }
                }
                if let Some(t) = case.expect.tolerance
                    && !(t.is_finite() && t >= 0.0)
                {
                    bad(
                        &mut self.d,
                        format!("case `{}`: `tolerance` must be a number ≥ 0, got {t}", case.name),
                    );
                }
                let mut share_tiers: Vec<&String> = Vec::new();
                if let Some(c) = &case.expect.tier_counts {
                    share_tiers.extend(c.keys());
                }
                if let Some(c) = &case.expect.tier_shares {
                    share_tiers.extend(c.keys());
                }
                self.unknown_case_tiers(path, &case, tiers, share_tiers, "counts");
                let e = &case.expect;
                let mut tier_names: Vec<&String> =
                    e.tier.iter().chain(e.qualified_tier.iter()).collect();
                if let Some(t) = &e.tiers {
                    tier_names.extend(t.values());
                }
                self.unknown_case_tiers(path, &case, tiers, tier_names, "expects");
                if let Some(c) = &e.change
                    && !["promote", "demote", "hold", "none", "new"].contains(&c.as_str())
                {
                    self.d.at(Level::Error, "bad_case", path, Some(case.span.clone()), Some(&case.name), format!("case `{}` expects change `{c}`; changes are `promote`, `demote`, `hold`, `none`, `new`", case.name), None);
                }
                out.push(TestCase {
                    name: case.name.clone(),
                    place,
                    accounts,
                    portfolio,
                    expect: case.expect.clone(),
                });
            }
        }
        out
    }
}

impl Compiler<'_> {
    /// The snapshots of a case's `accounts_file`, relative to the case's own file: every
    /// record must be a snapshot (a bad one is the case's load error, with its line).
    fn accounts_file(
        &self,
        files: &Files,
        case_file: &str,
        file: &str,
        columns: &[(String, String)],
    ) -> Result<Vec<crate::snapshot::Snapshot>, String> {
        let dir = case_file.rsplit_once('/').map_or("", |(d, _)| d);
        let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
        for seg in file.split('/') {
            match seg {
                "" | "." => {}
                ".." => {
                    if parts.pop().is_none() {
                        return Err(format!(
                            "`accounts_file = \"{file}\"` leaves the policy folder"
                        ));
                    }
                }
                s => parts.push(s),
            }
        }
        let rel = parts.join("/");
        let Some(bytes) = files.get(&rel) else {
            let near = did_you_mean(&rel, files.keys().map(String::as_str))
                .map(|h| format!("; {h}"))
                .unwrap_or_default();
            return Err(format!("`accounts_file` `{rel}` is not in the policy folder{near}"));
        };
        let Some(format) = crate::snapshot::Format::from_path(&rel) else {
            return Err(format!("`{rel}`: use .csv, .json, .jsonl or .ndjson"));
        };
        let text = std::str::from_utf8(bytes).map_err(|_| format!("`{rel}` is not UTF-8 text"))?;
        let cols = crate::snapshot::Columns { inputs: &self.inputs, columns, policy: "" };
        let records =
            crate::snapshot::read_for(text, format, &cols).map_err(|e| format!("`{rel}`: {e}"))?;
        records
            .into_iter()
            .map(|r| {
                r.map_err(|e| {
                    let at = e.record.map(|n| format!(" (record {n})")).unwrap_or_default();
                    format!("`{rel}`{at}: {}", e.message)
                })
            })
            .collect()
    }
}

/// Where `fn name(` is defined in a script.
fn find_fn(src: &str, name: &str) -> Option<Range<usize>> {
    let mut from = 0;
    while let Some(i) = src.get(from..)?.find("fn ") {
        let at = from + i;
        let rest = src.get(at + 3..)?.trim_start();
        if rest.starts_with(name) && rest[name.len()..].trim_start().starts_with('(') {
            return Some(at..at + 2);
        }
        from = at + 3;
    }
    None
}

fn matching_brace(s: &str, open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_str: Option<char> = None;
    let mut escaped = false;
    for (i, ch) in s.char_indices().skip_while(|(i, _)| *i < open) {
        if let Some(q) = in_str {
            if escaped {
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == q {
                in_str = None;
            }
            continue;
        }
        match ch {
            '"' | '`' | '\'' => in_str = Some(ch),
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

fn is_identifier(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

fn scalar_fits(v: &Scalar, ty: InputType) -> bool {
    match (v, ty) {
        (Scalar::Number(_) | Scalar::Integer(_), InputType::Number) => true,
        (Scalar::Integer(_), InputType::Integer) => true,
        (Scalar::Number(f), InputType::Integer) => f.fract() == 0.0,
        (Scalar::String(_), InputType::String) => true,
        (Scalar::String(s), InputType::Date) => crate::date::parse_days(s).is_some(),
        (Scalar::Bool(_), InputType::Bool) => true,
        _ => false,
    }
}

/// Test-case accounts are written in TOML; snapshots are JSON-shaped. TOML dates become
/// `YYYY-MM-DD` strings.
pub(crate) fn toml_to_json(v: toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        toml::Value::String(s) => J::String(s),
        toml::Value::Integer(i) => J::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f).map_or(J::Null, J::Number),
        toml::Value::Boolean(b) => J::Bool(b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            J::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

/// The service shares one compiled policy across threads.
const _: fn() = || {
    fn is<T: Send + Sync>() {}
    is::<Policy>();
};

/// The values a `one_of` input can take (and `()` when it may be absent), as expressions see
/// them: what lets a `switch` over it run natively.
fn domains(inputs: &[Input]) -> HashMap<usize, Vec<native::V>> {
    let mut out = HashMap::new();
    for (i, inp) in inputs.iter().enumerate() {
        let Some(one_of) = &inp.one_of else { continue };
        let mut vals: Vec<native::V> = one_of
            .iter()
            .filter_map(|s| match (inp.ty, s) {
                (InputType::Number, Scalar::Number(x)) => Some(native::V::Float(*x)),
                (InputType::Number, Scalar::Integer(n)) => Some(native::V::Float(*n as f64)),
                (InputType::Integer, Scalar::Integer(n)) => Some(native::V::Int(*n)),
                (InputType::String | InputType::Date, Scalar::String(s)) => {
                    Some(native::V::Str(s.as_str().into()))
                }
                (InputType::Bool, Scalar::Bool(b)) => Some(native::V::Bool(*b)),
                _ => None,
            })
            .collect();
        if vals.len() != one_of.len() {
            continue;
        }
        if inp.optional && inp.default.is_none() {
            vals.push(native::V::Unit);
        }
        out.insert(i, vals);
    }
    out
}
