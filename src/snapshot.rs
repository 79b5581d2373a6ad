//! Account snapshots: JSON, JSON lines or CSV in; validated, typed accounts out.
//!
//! Reading is lenient per record: a record that is not a snapshot (bad JSON on one line, a
//! missing `id`) becomes that record's error and the others are still read, so every input
//! account is answered exactly once. Validation against the policy's `[inputs]` turns the
//! `fields` into the typed values expressions see (`number` always a float, defaults
//! applied, `()` for an absent optional input).

use crate::policy::{InputType, Place, Policy, Scalar};
use rhai::Dynamic;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

/// One account as another system sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "tierwise account snapshot")]
pub struct Snapshot {
    /// The account's id; unique within one request or file.
    pub id: String,
    /// The account's name, for people (carried into nothing the engine decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The manager (KAM) who owns the account; absent: in no book.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
    /// The tier the account has now; absent: a new account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_tier: Option<String>,
    /// When it entered `current_tier` (`YYYY-MM-DD`); absent: tenure counts as met.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier_since: Option<String>,
    /// The day the snapshot describes (`YYYY-MM-DD`); the engine's only notion of "today".
    pub as_of: String,
    /// Values of the policy's inputs; other keys are ignored. `null` is an absent value.
    #[serde(default)]
    #[schemars(with = "std::collections::BTreeMap<String, serde_json::Value>")]
    pub fields: serde_json::Map<String, Value>,
}

/// Why one account got no decision.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct AccountError {
    /// The account's id, when the record had one (serialized beside the error, not in it).
    #[serde(skip)]
    pub id: Option<String>,
    /// Stable code: `bad_record`, `missing_field`, `bad_type`, `out_of_range`, `not_one_of`,
    /// `bad_date`, `unknown_tier`, `duplicate_id`, `bad_score`, `time_limit`,
    /// `operation_limit`, `call_depth`, `size_limit`, `script_error`.
    pub code: &'static str,
    pub message: String,
    /// The snapshot field at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The rule that failed (`inputs.nps`, `score.criteria.fit`, `alerts.qbr_overdue`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Where in the policy the failing expression or script is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub place: Option<Place>,
    /// 1-based position of the record in its file or request (line for JSON lines and CSV).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<usize>,
}

impl AccountError {
    pub fn new(id: Option<&str>, code: &'static str, message: impl Into<String>) -> Self {
        AccountError {
            id: id.map(str::to_string),
            code,
            message: message.into(),
            field: None,
            rule: None,
            place: None,
            record: None,
        }
    }
    fn field(mut self, f: &str) -> Self {
        self.field = Some(f.to_string());
        self
    }
    fn rule(mut self, r: String) -> Self {
        self.rule = Some(r);
        self
    }
}

/// A snapshot checked against a policy: what the engine evaluates.
#[derive(Debug, Clone)]
pub struct Account {
    pub id: String,
    pub name: Option<String>,
    pub manager: Option<String>,
    pub current_tier: Option<String>,
    /// Day number of `tier_since`.
    pub tier_since: Option<i64>,
    /// Day number of `as_of`.
    pub as_of: i64,
    /// One value per policy input, in declaration order.
    pub values: Arc<[Dynamic]>,
}

/// A record read from a file: a snapshot, or why it is not one.
pub type Record = Result<Snapshot, AccountError>;

/// The file formats the command line reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Json,
    Jsonl,
    Csv,
}

impl Format {
    /// By extension: `.json`, `.jsonl`/`.ndjson`, `.csv`.
    pub fn from_path(path: &str) -> Option<Format> {
        let ext = path.rsplit('.').next()?.to_ascii_lowercase();
        match ext.as_str() {
            "json" => Some(Format::Json),
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }
}

/// A whole input that cannot be read at all (not a JSON array, CSV without a header).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("not a JSON array of snapshots: {0}")]
    Json(String),
    #[error("cannot read CSV: {0}")]
    Csv(String),
}

/// Reads `text` in `format`. CSV needs the policy to type its columns.
pub fn read(text: &str, format: Format, policy: &Policy) -> Result<Vec<Record>, ReadError> {
    match format {
        Format::Json => read_json(text),
        Format::Jsonl => Ok(read_jsonl(text)),
        Format::Csv => read_csv(text, policy),
    }
}

fn id_of(raw: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<Value>,
    }
    let v: IdOnly = serde_json::from_str(raw).ok()?;
    match v.id? {
        Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}

fn record_from_json(raw: &str, n: usize) -> Record {
    if not_object(raw) {
        return Err(not_an_object(raw, n));
    }
    serde_json::from_str::<Snapshot>(raw).map_err(|e| {
        let mut err =
            AccountError::new(id_of(raw).as_deref(), "bad_record", format!("not a snapshot: {e}"));
        err.record = Some(n);
        err
    })
}

/// Valid JSON that is not an object (serde's derived structs would take an array of the
/// fields in order); malformed JSON is left to the parser, which says where it breaks.
fn not_object(raw: &str) -> bool {
    !crate::jsonmap::is_object(raw) && serde_json::from_str::<serde::de::IgnoredAny>(raw).is_ok()
}

fn not_an_object(raw: &str, n: usize) -> AccountError {
    let what = match raw.trim_start().bytes().next() {
        Some(b'[') => "an array",
        Some(b'"') => "text",
        Some(b'n') => "null",
        Some(b't' | b'f') => "a bool",
        _ => "a number",
    };
    let mut err = AccountError::new(
        None,
        "bad_record",
        format!("not a snapshot: expected an object, got {what}"),
    );
    err.record = Some(n);
    err
}

/// Snapshots as the service reads them, one policy (or two, for a dry run) in view: the keys of
/// `fields` that no input declares are skipped while parsing, never stored.
pub struct FieldFilter<'a> {
    /// Whether a key of `fields` is one of the policy's inputs.
    pub keep: &'a (dyn Fn(&str) -> bool + Sync),
    /// Keys one account's `fields` may hold, declared or not; more make that record's error
    /// `too_many_fields` (the service refuses the request for it).
    pub max_fields: usize,
}

/// Longest account id the service takes, in bytes: a longer one is that record's error (it
/// would make cache keys of its size and a latest-decision URL no server reads).
pub const MAX_ID_BYTES: usize = 256;

/// The code of a record whose `fields` hold more keys than [`FieldFilter::max_fields`].
pub const TOO_MANY_FIELDS: &str = "too_many_fields";

/// One snapshot from JSON text, with `fields` filtered as `filter` says; also how many
/// undeclared keys were skipped. Duplicate keys in `fields` are the record's error, as they
/// are elsewhere in a snapshot.
pub fn parse_filtered(raw: &str, n: usize, filter: &FieldFilter<'_>) -> (Record, usize) {
    #[derive(Deserialize)]
    #[serde(rename = "Snapshot")]
    struct Shell<'a> {
        id: String,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        manager: Option<String>,
        #[serde(default)]
        current_tier: Option<String>,
        #[serde(default)]
        tier_since: Option<String>,
        as_of: String,
        #[serde(default, borrow)]
        fields: Option<&'a serde_json::value::RawValue>,
    }
    if not_object(raw) {
        return (Err(not_an_object(raw, n)), 0);
    }
    let shell: Shell<'_> = match serde_json::from_str(raw) {
        Ok(s) => s,
        Err(e) => {
            let mut err = AccountError::new(
                id_of(raw).as_deref(),
                "bad_record",
                format!("not a snapshot: {e}"),
            );
            err.record = Some(n);
            return (Err(err), 0);
        }
    };
    if shell.id.len() > MAX_ID_BYTES {
        let mut err = AccountError::new(
            None,
            "bad_record",
            format!("`id` is {} bytes long, more than the limit of {MAX_ID_BYTES}", shell.id.len()),
        )
        .field("id");
        err.record = Some(n);
        return (Err(err), 0);
    }
    let bad = |code: &'static str, msg: String| {
        let mut err = AccountError::new(Some(&shell.id), code, msg).field("fields");
        err.record = Some(n);
        err
    };
    let (fields, skipped) = match shell.fields {
        None => (serde_json::Map::new(), 0),
        Some(f) => {
            let mut de = serde_json::Deserializer::from_str(f.get());
            match serde::de::DeserializeSeed::deserialize(FieldsSeed(filter), &mut de) {
                Ok(r) => r,
                Err(e) => {
                    let msg = e.to_string();
                    let msg = msg.rsplit_once(" at line ").map_or(msg.as_str(), |(m, _)| m);
                    let code =
                        if msg.starts_with("more than") { TOO_MANY_FIELDS } else { "bad_record" };
                    return (Err(bad(code, format!("`fields`: {msg}"))), 0);
                }
            }
        }
    };
    let s = Snapshot {
        id: shell.id,
        name: shell.name,
        manager: shell.manager,
        current_tier: shell.current_tier,
        tier_since: shell.tier_since,
        as_of: shell.as_of,
        fields,
    };
    (Ok(s), skipped)
}

struct FieldsSeed<'f, 'a>(&'f FieldFilter<'a>);

impl<'de> serde::de::DeserializeSeed<'de> for FieldsSeed<'_, '_> {
    type Value = (serde_json::Map<String, Value>, usize);
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FieldsSeed<'_, '_> {
    type Value = (serde_json::Map<String, Value>, usize);
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object of input values")
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok((serde_json::Map::new(), 0))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        let mut kept = serde_json::Map::new();
        // Every key is remembered (bounded by `max_fields`), so a duplicate is found whether
        // its input is declared or not.
        let mut seen: std::collections::HashSet<std::borrow::Cow<'de, str>> =
            std::collections::HashSet::new();
        let mut skipped = 0usize;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if seen.len() >= self.0.max_fields {
                return Err(A::Error::custom(format_args!(
                    "more than {} keys, the limit per account (TIERWISE_MAX_FIELDS)",
                    self.0.max_fields
                )));
            }
            if seen.contains(&key) {
                return Err(A::Error::custom(format_args!("duplicate key `{key}`")));
            }
            if (self.0.keep)(&key) {
                let v: Value = map.next_value()?;
                kept.insert(key.to_string(), v);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
                skipped += 1;
            }
            seen.insert(key);
        }
        Ok((kept, skipped))
    }
}

/// A JSON array of snapshots; a bad element is that element's error.
pub fn read_json(text: &str) -> Result<Vec<Record>, ReadError> {
    let items: Vec<&serde_json::value::RawValue> =
        serde_json::from_str(text).map_err(|e| ReadError::Json(e.to_string()))?;
    Ok(items.iter().enumerate().map(|(i, raw)| record_from_json(raw.get(), i + 1)).collect())
}

/// One snapshot per line; blank lines are skipped, a bad line is that line's error.
pub fn read_jsonl(text: &str) -> Vec<Record> {
    let lines: Vec<(usize, &str)> =
        text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).collect();
    use rayon::prelude::*;
    // Parsing is most of the work of a large file; both cores take part.
    lines.par_iter().with_min_len(512).map(|&(i, l)| record_from_json(l, i + 1)).collect()
}

/// JSON lines read a chunk at a time from a reader, so a caller can decide and write each
/// chunk before reading the next: memory stays flat whatever the file's size. Records are
/// numbered by line in the whole input, as [`read_jsonl`] numbers them.
pub struct JsonlChunks<R> {
    reader: R,
    /// Lines read so far.
    line: usize,
    /// Records per chunk.
    size: usize,
    buf: String,
    done: bool,
}

impl<R: std::io::BufRead> JsonlChunks<R> {
    pub fn new(reader: R, size: usize) -> Self {
        JsonlChunks { reader, line: 0, size: size.max(1), buf: String::new(), done: false }
    }

    /// The next chunk (empty at the end), or the read error.
    pub fn next_chunk(&mut self) -> std::io::Result<Vec<Record>> {
        let mut lines: Vec<(usize, String)> = Vec::with_capacity(self.size);
        while !self.done && lines.len() < self.size {
            self.buf.clear();
            if self.reader.read_line(&mut self.buf)? == 0 {
                self.done = true;
                break;
            }
            self.line += 1;
            // As `str::lines`: one `\n`, then one `\r`.
            let l = self.buf.strip_suffix('\n').unwrap_or(&self.buf);
            let l = l.strip_suffix('\r').unwrap_or(l);
            if !l.trim().is_empty() {
                lines.push((self.line, l.to_string()));
            }
        }
        use rayon::prelude::*;
        Ok(lines.par_iter().with_min_len(512).map(|(i, l)| record_from_json(l, *i)).collect())
    }
}

const IDENTITY: [&str; 6] = ["id", "name", "manager", "current_tier", "tier_since", "as_of"];

/// A CRM export: identity columns, then one column per input; an empty cell is absent.
pub fn read_csv(text: &str, policy: &Policy) -> Result<Vec<Record>, ReadError> {
    let mut rdr = csv::ReaderBuilder::new().flexible(false).from_reader(text.as_bytes());
    let headers = rdr.headers().map_err(|e| ReadError::Csv(e.to_string()))?.clone();
    if !headers.iter().any(|h| h == "id") {
        return Err(ReadError::Csv("the header has no `id` column".into()));
    }
    let types: Vec<Option<InputType>> =
        headers.iter().map(|h| policy.inputs.iter().find(|i| i.name == h).map(|i| i.ty)).collect();
    let mut out = Vec::new();
    for (n, row) in rdr.records().enumerate() {
        let line = n + 2;
        let row = match row {
            Ok(r) => r,
            Err(e) => {
                let mut err = AccountError::new(None, "bad_record", format!("line {line}: {e}"));
                err.record = Some(line);
                out.push(Err(err));
                continue;
            }
        };
        let mut obj = serde_json::Map::new();
        let mut fields = serde_json::Map::new();
        for ((h, cell), ty) in headers.iter().zip(row.iter()).zip(&types) {
            if cell.is_empty() {
                continue;
            }
            if IDENTITY.contains(&h) {
                obj.insert(h.to_string(), Value::String(cell.to_string()));
            } else if let Some(ty) = ty {
                fields.insert(h.to_string(), csv_cell(cell, *ty));
            }
        }
        obj.insert("fields".into(), Value::Object(fields));
        out.push(serde_json::from_value::<Snapshot>(Value::Object(obj.clone())).map_err(|e| {
            let id = obj.get("id").and_then(Value::as_str);
            let mut err =
                AccountError::new(id, "bad_record", format!("line {line}: not a snapshot: {e}"));
            err.record = Some(line);
            err
        }));
    }
    Ok(out)
}

/// Types a CSV cell by its input; a cell that does not parse stays text, so validation names
/// the field and the expected type.
fn csv_cell(cell: &str, ty: InputType) -> Value {
    let t = cell.trim();
    match ty {
        InputType::Number | InputType::Integer => {
            if let Ok(i) = t.parse::<i64>() {
                return Value::from(i);
            }
            match t.parse::<f64>() {
                Ok(f) if f.is_finite() => serde_json::Number::from_f64(f)
                    .map_or(Value::String(cell.into()), Value::Number),
                _ => Value::String(cell.into()),
            }
        }
        InputType::Bool => match t {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::String(cell.into()),
        },
        InputType::String | InputType::Date => Value::String(cell.into()),
    }
}

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

fn shown(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 40 { format!("{}…", s.chars().take(40).collect::<String>()) } else { s }
}

fn scalar_dynamic(s: &Scalar, ty: InputType) -> Dynamic {
    match (s, ty) {
        (Scalar::Integer(i), InputType::Number) => Dynamic::from_float(*i as f64),
        (Scalar::Number(f), InputType::Integer) => Dynamic::from_int(*f as i64),
        (Scalar::Integer(i), _) => Dynamic::from_int(*i),
        (Scalar::Number(f), _) => Dynamic::from_float(*f),
        (Scalar::Bool(b), _) => Dynamic::from_bool(*b),
        (Scalar::String(s), _) => Dynamic::from(s.clone()),
    }
}

/// Checks a snapshot against the policy's inputs.
pub fn validate(policy: &Policy, s: &Snapshot) -> Result<Account, AccountError> {
    let id = Some(s.id.as_str());
    if s.id.is_empty() {
        return Err(AccountError::new(id, "bad_record", "`id` is empty").field("id"));
    }
    let as_of = crate::date::parse_days(&s.as_of).ok_or_else(|| {
        AccountError::new(
            id,
            "bad_date",
            format!("`as_of` is `{}`, not a date (YYYY-MM-DD)", s.as_of),
        )
        .field("as_of")
    })?;
    let tier_since = match &s.tier_since {
        None => None,
        Some(t) => Some(crate::date::parse_days(t).ok_or_else(|| {
            AccountError::new(
                id,
                "bad_date",
                format!("`tier_since` is `{t}`, not a date (YYYY-MM-DD)"),
            )
            .field("tier_since")
        })?),
    };
    let mut values = Vec::with_capacity(policy.inputs.len());
    for inp in &policy.inputs {
        let err = |code, msg: String| {
            AccountError::new(id, code, msg).field(&inp.name).rule(format!("inputs.{}", inp.name))
        };
        let v = match s.fields.get(&inp.name) {
            None | Some(Value::Null) => {
                if let Some(d) = &inp.default {
                    values.push(scalar_dynamic(d, inp.ty));
                    continue;
                }
                if inp.optional {
                    values.push(Dynamic::UNIT);
                    continue;
                }
                return Err(err(
                    "missing_field",
                    format!("`{}` is required ({}) and missing", inp.name, inp.ty.as_str()),
                ));
            }
            Some(v) => v,
        };
        let bad_type = || {
            err(
                "bad_type",
                format!(
                    "`{}` must be {}, got {} {}",
                    inp.name,
                    article(inp.ty),
                    type_name(v),
                    shown(v)
                ),
            )
        };
        let (dynamic, scalar) = match inp.ty {
            InputType::Number => {
                let f = v.as_f64().ok_or_else(bad_type)?;
                (Dynamic::from_float(f), Scalar::Number(f))
            }
            InputType::Integer => {
                let i = match v {
                    Value::Number(n) => n.as_i64().or_else(|| {
                        n.as_f64()
                            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                            .map(|f| f as i64)
                    }),
                    _ => None,
                }
                .ok_or_else(bad_type)?;
                (Dynamic::from_int(i), Scalar::Integer(i))
            }
            InputType::Bool => {
                let b = v.as_bool().ok_or_else(bad_type)?;
                (Dynamic::from_bool(b), Scalar::Bool(b))
            }
            InputType::String | InputType::Date => {
                let t = v.as_str().ok_or_else(bad_type)?;
                if inp.ty == InputType::Date && crate::date::parse_days(t).is_none() {
                    return Err(err(
                        "bad_date",
                        format!("`{}` is `{t}`, not a date (YYYY-MM-DD)", inp.name),
                    ));
                }
                // Text has no range: only `one_of` applies, checked without copying the text.
                let allowed = inp.one_of.as_deref().is_none_or(|list| {
                    list.iter().any(|x| matches!(x, Scalar::String(y) if y == t))
                });
                if allowed {
                    values.push(Dynamic::from(rhai::ImmutableString::from(t)));
                    continue;
                }
                (Dynamic::UNIT, Scalar::String(t.to_string()))
            }
        };
        if let Some(why) =
            crate::policy::check_scalar(&scalar, inp.min, inp.max, inp.one_of.as_deref())
        {
            let code = if why.contains("is not one of") { "not_one_of" } else { "out_of_range" };
            return Err(err(code, format!("`{}`: {why}", inp.name)));
        }
        values.push(dynamic);
    }
    Ok(Account {
        id: s.id.clone(),
        name: s.name.clone(),
        manager: s.manager.clone(),
        current_tier: s.current_tier.clone(),
        tier_since,
        as_of,
        values: values.into(),
    })
}

fn article(ty: InputType) -> &'static str {
    match ty {
        InputType::Number => "a number",
        InputType::Integer => "an integer",
        InputType::String => "text",
        InputType::Bool => "true or false",
        InputType::Date => "a date (YYYY-MM-DD)",
    }
}
