//! Overrides: a candidate policy made of the baseline's `policy.toml` with some values changed
//! by path (`tiers.key.min_score=7.0`, `capacity.per_manager.max=20`,
//! `score.criteria[id=revenue].weight=5`).
//!
//! The edit is made on the document (toml_edit), not on a parsed model: comments, layout and
//! every other line stay as written, so the candidate compiles through the same
//! [`super::load_files`] path as any policy and its diagnostics point at the lines the author
//! knows. A replaced value keeps its place; a key that is absent but allowed by the schema
//! (`tiers.key.max_count` on a tier without one) is added to its table.
//!
//! Paths: segments separated by `.`; a segment on an array of tables (`tiers`, `alerts`,
//! `score.criteria`, `movement.holds`, `portfolio.alerts`) selects the element whose `id`
//! equals it, or by position when it is a number; `name[id=x]` and `name[2]` select
//! explicitly. A path that names nothing is an error with a "did you mean" (no silent typo).
//! Values are TOML values (`7.0`, `20`, `"flag"`, `true`, `["key"]`); a bare word that is not
//! TOML (`demote`) is taken as a string. The override API takes values as TOML or JSON
//! ([`value_from_json`]) so the HTTP dry run can send `{"tiers.key.min_score": 7.0}`.

use super::Files;
use super::compile::{Seg, known_keys};
use super::diag::did_you_mean;
use std::fmt;
use toml_edit::{DocumentMut, Item, Value};

/// One change: a path in `policy.toml` and its new value.
#[derive(Debug, Clone)]
pub struct Override {
    pub path: String,
    pub value: Value,
}

impl fmt::Display for Override {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.path, self.value.to_string().trim())
    }
}

/// Why an override could not be applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("override `{path}`: {message}{}", help.as_ref().map(|h| format!("\n  help: {h}")).unwrap_or_default())]
pub struct OverrideError {
    pub path: String,
    pub message: String,
    pub help: Option<String>,
}

impl OverrideError {
    fn new(path: &str, message: impl Into<String>, help: Option<String>) -> Self {
        OverrideError { path: path.to_string(), message: message.into(), help }
    }
}

/// Parses `PATH=VALUE` (the command line's `--set`).
pub fn parse_set(arg: &str) -> Result<Override, OverrideError> {
    // The first `=` outside brackets: `score.criteria[id=revenue].weight=5`.
    let mut depth = 0i32;
    let eq = arg.char_indices().find(|&(_, c)| {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            _ => {}
        }
        c == '=' && depth == 0
    });
    let Some((path, value)) = eq.map(|(i, _)| (&arg[..i], &arg[i + 1..])) else {
        return Err(OverrideError::new(
            arg,
            "expected PATH=VALUE",
            Some("e.g. `--set tiers.key.min_score=7.0`".into()),
        ));
    };
    let path = path.trim();
    if path.is_empty() {
        return Err(OverrideError::new(arg, "the path is empty", None));
    }
    Ok(Override { path: path.to_string(), value: parse_value(value.trim()) })
}

/// A TOML value; a bare word that is not one is a string.
pub fn parse_value(text: &str) -> Value {
    match text.parse::<Value>() {
        Ok(v) => v.decorated("", ""),
        Err(_) => Value::from(text),
    }
}

/// A JSON value as a TOML one (`null` has no TOML form).
pub fn value_from_json(v: &serde_json::Value) -> Result<Value, String> {
    use serde_json::Value as J;
    Ok(match v {
        J::Null => return Err("`null` is not a TOML value".into()),
        J::Bool(b) => Value::from(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::from(i),
            None => Value::from(n.as_f64().ok_or("number out of range")?),
        },
        J::String(s) => Value::from(s.as_str()),
        J::Array(a) => {
            let mut arr = toml_edit::Array::new();
            for x in a {
                arr.push(value_from_json(x)?);
            }
            Value::Array(arr)
        }
        J::Object(o) => {
            let mut t = toml_edit::InlineTable::new();
            for (k, x) in o {
                t.insert(k, value_from_json(x)?);
            }
            Value::InlineTable(t)
        }
    })
}

/// Overrides sent as JSON (`{"tiers.key.min_score": 7.0, "capacity.per_manager.max": 20}`),
/// in key order; every bad value is reported.
pub fn from_json_map(
    map: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<Override>, Vec<OverrideError>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (path, v) in map {
        match value_from_json(v) {
            Ok(value) => out.push(Override { path: path.clone(), value }),
            Err(why) => errors.push(OverrideError::new(path, why, None)),
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

/// Applies the overrides to the files' `policy.toml`; the other files are unchanged. Every
/// override is tried, so all the bad ones are reported at once.
pub fn apply_files(files: &Files, overrides: &[Override]) -> Result<Files, Vec<OverrideError>> {
    let text = files
        .get("policy.toml")
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    let edited = apply(&text, overrides)?;
    let mut out = files.clone();
    out.insert("policy.toml".into(), edited.into_bytes());
    Ok(out)
}

/// Applies the overrides to the text of a `policy.toml`.
pub fn apply(text: &str, overrides: &[Override]) -> Result<String, Vec<OverrideError>> {
    let mut doc: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        vec![OverrideError::new(
            "policy.toml",
            format!("the baseline's policy.toml is not valid TOML: {}", e.message()),
            None,
        )]
    })?;
    let schema = schemars::schema_for!(super::raw::RawPolicy);
    let mut errors = Vec::new();
    // Each value is checked against the policy's types as it is applied, so a value that
    // does not fit (`capacity.per_manager.max=sixteen`) is that override's error, named,
    // rather than a type error in a policy.toml the user never wrote. Only when the text
    // fitted before: a broken candidate folder is the compiler's to report.
    let fits = |d: &DocumentMut| toml::from_str::<super::raw::RawPolicy>(&d.to_string()).err();
    let mut fitted = fits(&doc).is_none();
    for o in overrides {
        match apply_one(&mut doc, o, schema.as_value()) {
            Err(e) => errors.push(e),
            Ok(()) if fitted => {
                if let Some(e) = fits(&doc) {
                    errors.push(OverrideError::new(
                        &o.path,
                        format!(
                            "`{}` does not fit: {}",
                            o.value.to_string().trim(),
                            plain_type_message(e.message())
                        ),
                        Some(format!(
                            "the value of `{}` in policy.toml, as TOML (text in quotes)",
                            o.path
                        )),
                    ));
                    fitted = false;
                }
            }
            Ok(()) => {}
        }
    }
    if errors.is_empty() { Ok(doc.to_string()) } else { Err(errors) }
}

/// serde's "invalid type: string \"sixteen\", expected u64" in a rev-ops user's words.
fn plain_type_message(m: &str) -> String {
    let m = m.trim().replace("invalid type: ", "got ");
    let m = m
        .replace("expected u64", "expected a whole number ≥ 0")
        .replace("expected u32", "expected a whole number ≥ 0")
        .replace("expected usize", "expected a whole number ≥ 0")
        .replace("expected i64", "expected a whole number")
        .replace("expected f64", "expected a number")
        .replace("expected a boolean", "expected true or false");
    m.lines().next().unwrap_or("").to_string()
}

/// One step of a path: a key, then an optional element selector.
#[derive(Debug)]
enum Step {
    Key(String),
    Index(usize),
    /// The element of an array of tables whose `field` equals `value`.
    Where(String, String),
}

fn parse_path(path: &str) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    let mut chars = path.chars().peekable();
    let mut after_dot = true;
    while let Some(&c) = chars.peek() {
        match c {
            '.' => {
                if after_dot {
                    return Err("empty segment".into());
                }
                chars.next();
                after_dot = true;
            }
            '[' => {
                chars.next();
                let mut inner = String::new();
                loop {
                    match chars.next() {
                        Some(']') => break,
                        Some(ch) => inner.push(ch),
                        None => return Err("`[` without `]`".into()),
                    }
                }
                let inner = inner.trim();
                steps.push(match inner.split_once('=') {
                    Some((k, v)) => Step::Where(
                        k.trim().to_string(),
                        v.trim().trim_matches(|c| c == '"' || c == '\'').to_string(),
                    ),
                    None => Step::Index(inner.parse().map_err(|_| {
                        format!("`[{inner}]` is neither a position nor `field=value`")
                    })?),
                });
                after_dot = false;
            }
            '"' => {
                chars.next();
                let mut key = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some(ch) => key.push(ch),
                        None => return Err("unclosed quote".into()),
                    }
                }
                steps.push(Step::Key(key));
                after_dot = false;
            }
            _ => {
                let mut key = String::new();
                while let Some(&ch) = chars.peek() {
                    if ch == '.' || ch == '[' {
                        break;
                    }
                    key.push(ch);
                    chars.next();
                }
                steps.push(Step::Key(key.trim().to_string()));
                after_dot = false;
            }
        }
    }
    if after_dot {
        return Err("the path ends with `.`".into());
    }
    Ok(steps)
}

/// Where the walk is: a table-like item, an array, or a plain value.
enum Node<'a> {
    Item(&'a mut Item),
    Value(&'a mut Value),
    /// An element of an array of tables (`[[tiers]]`).
    Table(&'a mut toml_edit::Table),
}

fn describe(shown: &str) -> String {
    if shown.is_empty() { "the top level".into() } else { format!("`{shown}`") }
}

fn apply_one(
    doc: &mut DocumentMut,
    o: &Override,
    schema: &serde_json::Value,
) -> Result<(), OverrideError> {
    let steps = parse_path(&o.path)
        .map_err(|why| OverrideError::new(&o.path, format!("bad path: {why}"), None))?;
    let err = |msg: String, help: Option<String>| OverrideError::new(&o.path, msg, help);
    let mut node = Node::Item(doc.as_item_mut());
    // The path so far, as written (`tiers.key`) and as the schema sees it (`tiers[0]`).
    let mut shown = String::new();
    let mut seg_path: Vec<Seg> = Vec::new();
    let count = steps.len();
    for (k, step) in steps.into_iter().enumerate() {
        let last = k + 1 == count;
        let is_array = match &node {
            Node::Item(i) => i.is_array_of_tables() || i.is_array(),
            Node::Value(v) => v.is_array(),
            Node::Table(_) => false,
        };
        // A plain key on an array of tables selects by id (or by position when numeric).
        let step = match step {
            Step::Key(key) if is_array => match key.parse::<usize>() {
                Ok(n) => Step::Index(n),
                Err(_) => Step::Where("id".into(), key),
            },
            s => s,
        };
        node = match step {
            Step::Key(key) => {
                let inline = matches!(
                    node,
                    Node::Value(Value::InlineTable(_))
                        | Node::Item(Item::Value(Value::InlineTable(_)))
                );
                let table = match node {
                    Node::Item(i) => i.as_table_like_mut(),
                    Node::Value(v) => {
                        v.as_inline_table_mut().map(|t| t as &mut dyn toml_edit::TableLike)
                    }
                    Node::Table(t) => Some(t as &mut dyn toml_edit::TableLike),
                };
                let Some(table) = table else {
                    return Err(err(
                        format!(
                            "{} is a value, not a table: it has no key `{key}`",
                            describe(&shown)
                        ),
                        None,
                    ));
                };
                let exists = table.contains_key(&key);
                seg_path.push(Seg::Key(key.clone()));
                if !exists {
                    let existing: Vec<String> = table.iter().map(|(k, _)| k.to_string()).collect();
                    let allowed = known_keys(schema, &seg_path[..seg_path.len() - 1]);
                    if last && allowed.contains(&key) {
                        // Absent but a field of this table: add it.
                        let v = o.value.clone().decorated(" ", if inline { " " } else { "" });
                        table.insert(&key, Item::Value(v));
                        return Ok(());
                    }
                    let mut names: Vec<&str> = existing.iter().map(String::as_str).collect();
                    names.extend(allowed.iter().map(String::as_str));
                    let help = did_you_mean(&key, names.iter().copied()).or_else(|| {
                        (!existing.is_empty()).then(|| {
                            format!(
                                "{} has {}",
                                describe(&shown),
                                existing
                                    .iter()
                                    .map(|k| format!("`{k}`"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        })
                    });
                    return Err(err(format!("no key `{key}` in {}", describe(&shown)), help));
                }
                if !shown.is_empty() {
                    shown.push('.');
                }
                shown.push_str(&key);
                match table.get_mut(&key) {
                    Some(i) => Node::Item(i),
                    None => {
                        return Err(err(format!("no key `{key}` in {}", describe(&shown)), None));
                    }
                }
            }
            Step::Index(_) | Step::Where(_, _) if !is_array => {
                return Err(err(
                    format!("{} is not an array: nothing to select", describe(&shown)),
                    None,
                ));
            }
            step => {
                let (field, wanted, index) = match &step {
                    Step::Index(n) => (None, String::new(), Some(*n)),
                    Step::Where(f, v) => (Some(f.clone()), v.clone(), None),
                    Step::Key(_) => (None, String::new(), None),
                };
                // The value of `field` in every element, to select and to suggest.
                let label = |t: &dyn toml_edit::TableLike| -> Option<String> {
                    let f = field.as_deref()?;
                    let item = t.get(f)?;
                    Some(
                        item.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| item.to_string().trim().to_string()),
                    )
                };
                let (labels, len) = match &node {
                    Node::Item(Item::ArrayOfTables(a)) => {
                        (a.iter().map(|t| label(t)).collect::<Vec<_>>(), a.len())
                    }
                    Node::Item(Item::Value(Value::Array(a))) | Node::Value(Value::Array(a)) => (
                        a.iter().map(|v| v.as_inline_table().and_then(|t| label(t))).collect(),
                        a.len(),
                    ),
                    _ => (Vec::new(), 0),
                };
                let pos = match index {
                    Some(n) if n < len => n,
                    Some(n) => {
                        return Err(err(
                            format!("{} has {len} element(s); there is no [{n}]", describe(&shown)),
                            None,
                        ));
                    }
                    None => match labels.iter().position(|l| l.as_deref() == Some(wanted.as_str()))
                    {
                        Some(p) => p,
                        None => {
                            let f = field.clone().unwrap_or_default();
                            let names: Vec<&str> =
                                labels.iter().flatten().map(String::as_str).collect();
                            let help = did_you_mean(&wanted, names.iter().copied()).or_else(|| {
                                (!names.is_empty()).then(|| {
                                    format!(
                                        "{} {f}s: {}",
                                        describe(&shown),
                                        names
                                            .iter()
                                            .map(|n| format!("`{n}`"))
                                            .collect::<Vec<_>>()
                                            .join(", ")
                                    )
                                })
                            });
                            return Err(err(
                                format!("no element of {} has {f} `{wanted}`", describe(&shown)),
                                help,
                            ));
                        }
                    },
                };
                shown.push_str(&match &step {
                    Step::Index(n) => format!("[{n}]"),
                    _ => format!(".{wanted}"),
                });
                seg_path.push(Seg::Index(pos));
                match node {
                    Node::Item(Item::ArrayOfTables(a)) => match a.get_mut(pos) {
                        Some(t) => Node::Table(t),
                        None => return Err(err("no such element".into(), None)),
                    },
                    Node::Item(Item::Value(Value::Array(a))) | Node::Value(Value::Array(a)) => {
                        match a.get_mut(pos) {
                            Some(v) => Node::Value(v),
                            None => return Err(err("no such element".into(), None)),
                        }
                    }
                    _ => return Err(err("not an array".into(), None)),
                }
            }
        };
    }
    // The node the path names: replace it, keeping its decoration and, where lossless, its type.
    match node {
        Node::Item(Item::Value(v)) | Node::Value(v) => {
            replace(v, &o.value);
            Ok(())
        }
        Node::Item(Item::None) => Err(err("names nothing".into(), None)),
        Node::Item(_) | Node::Table(_) => {
            Err(err(format!("{} is a table: set one of its keys", describe(&shown)), None))
        }
    }
}

/// Replaces `old` by `new`, keeping the spaces and comments around it and, where no value is
/// lost, its type (`min_score = 6.0` set to `7` stays a float: `7.0`).
fn replace(old: &mut Value, new: &Value) {
    let decor = old.decor().clone();
    let mut v = match (&*old, new) {
        (Value::Float(_), Value::Integer(i)) => Value::from(*i.value() as f64),
        (Value::Integer(_), Value::Float(f))
            if f.value().fract() == 0.0 && f.value().abs() < 9.0e15 =>
        {
            Value::from(*f.value() as i64)
        }
        _ => new.clone(),
    };
    *v.decor_mut() = decor;
    *old = v;
}
