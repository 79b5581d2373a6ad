//! Reading snapshots the way exports arrive: CSV from a CRM or a spreadsheet, with its own
//! column names, `TRUE`/`Yes`/`1` for booleans, stray spaces, and often no `as_of` column.
//!
//! Columns are matched to the names tierwise reads (identity columns and the policy's
//! inputs) through the policy's `[columns]` and the command's `--columns` map; a column
//! that matches nothing is ignored (exports carry many) and named once in the notes, with a
//! "did you mean" when it is close to a name tierwise reads. Cells are trimmed; a `bool`
//! cell reads `true`/`false` in any case, `yes`/`no` and `1`/`0`.

use super::{
    AccountError, Format, IDENTITY, ReadError, Record, Snapshot, fill_as_of, read_json, read_jsonl,
};
use crate::policy::{Input, InputType, Policy};
use serde_json::Value;

/// What a command or a request adds to the file itself.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// `as_of` for the records that carry none (`--as-of DATE`, a request's `as_of`);
    /// checked by the caller with [`super::check_as_of`].
    pub as_of: Option<String>,
    /// CSV column names by the name tierwise reads (`--columns FILE`), on top of the
    /// policy's `[columns]` (an entry here replaces the policy's for the same name).
    pub columns: Vec<(String, String)>,
}

/// What was read: the records, and notes for the person who ran the command (columns
/// ignored, with a "did you mean").
#[derive(Debug, Default)]
pub struct Read {
    pub records: Vec<Record>,
    pub notes: Vec<String>,
}

/// Reads `text` in `format` with the command's options.
pub fn read_with(
    text: &str,
    format: Format,
    policy: &Policy,
    opts: &ReadOptions,
) -> Result<Read, ReadError> {
    let mut read = match format {
        Format::Json => Read { records: read_json(text)?, notes: Vec::new() },
        Format::Jsonl => Read { records: read_jsonl(text), notes: Vec::new() },
        Format::Csv => read_csv(text, &Columns::of(policy), &opts.columns)?,
    };
    if let Some(as_of) = &opts.as_of {
        fill_as_of(&mut read.records, as_of);
    }
    Ok(read)
}

/// A column map (`--columns FILE`): `id = "Account ID"` lines, at the top level or under
/// `[columns]` (so a policy's own section can be copied as it is). Every key must be a name
/// the policy reads; the error says which is not, with a "did you mean".
pub fn parse_columns(text: &str, policy: &Policy) -> Result<Vec<(String, String)>, String> {
    let table: toml::Table =
        toml::from_str(text).map_err(|e| format!("not TOML: {}", e.message()))?;
    let table = match table.get("columns") {
        Some(toml::Value::Table(t)) if table.len() == 1 => t.clone(),
        _ => table,
    };
    let known: Vec<&str> =
        IDENTITY.iter().copied().chain(policy.inputs.iter().map(|i| i.name.as_str())).collect();
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (k, v) in table {
        if !known.contains(&k.as_str()) {
            let hint = closest(&k, known.iter().copied())
                .map(|c| format!("; did you mean `{c}`?"))
                .unwrap_or_default();
            problems.push(format!(
                "`{k}` is neither an identity column nor an input of policy `{}`{hint}",
                policy.name
            ));
            continue;
        }
        match v {
            toml::Value::String(h) if !h.trim().is_empty() => out.push((k, h.trim().to_string())),
            other => problems.push(format!(
                "`{k}` must be the column's name as text (`{k} = \"Account ID\"`), got `{other}`"
            )),
        }
    }
    if problems.is_empty() { Ok(out) } else { Err(problems.join("\n")) }
}

/// `1,250,000` (or `1 250 000`, `1'250'000`, `1_250_000`): digits in groups of three after
/// the first, one separator throughout, an optional decimal part. Returns the number
/// without the separators, for the message that refuses it.
pub fn looks_grouped(t: &str) -> Option<String> {
    let t = t.trim();
    let (sign, body) = match t.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", t),
    };
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => (i, Some(f)),
        Some(_) => return None,
        None => (body, None),
    };
    let sep = int.chars().find(|c| !c.is_ascii_digit())?;
    if !matches!(sep, ',' | ' ' | '\'' | '_' | '\u{a0}' | '\u{202f}') {
        return None;
    }
    let groups: Vec<&str> = int.split(sep).collect();
    let first_ok = (1..=3).contains(&groups[0].len());
    let all_digits = groups.iter().all(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()));
    let rest_ok = groups[1..].iter().all(|g| g.len() == 3);
    if groups.len() < 2 || !first_ok || !all_digits || !rest_ok {
        return None;
    }
    let mut plain = format!("{sign}{}", groups.concat());
    if let Some(f) = frac {
        plain.push('.');
        plain.push_str(f);
    }
    Some(plain)
}

/// What CSV reading needs of a policy: its inputs (to type the cells), its `[columns]` and
/// its name (for notes). Test cases read their `accounts_file` while the policy compiles,
/// before there is a [`Policy`].
pub struct Columns<'a> {
    pub inputs: &'a [Input],
    pub columns: &'a [(String, String)],
    pub policy: &'a str,
}

impl<'a> Columns<'a> {
    pub fn of(p: &'a Policy) -> Self {
        Columns { inputs: &p.inputs, columns: &p.columns, policy: &p.name }
    }
}

/// The name a column gives, after the maps: `None` for a column tierwise does not read.
struct Layout {
    /// Per column: the name tierwise reads, and the input's type (`None` for identity).
    cols: Vec<Option<(String, Option<InputType>)>>,
    notes: Vec<String>,
}

/// "did you mean", compared without case (exports capitalise freely).
fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let w = word.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(&w, &c.to_lowercase()), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

fn layout(
    headers: &csv::StringRecord,
    policy: &Columns<'_>,
    extra: &[(String, String)],
) -> Result<Layout, ReadError> {
    // The command's map replaces the policy's entry for the same name.
    let mut map: Vec<(String, String)> = policy
        .columns
        .iter()
        .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
        .cloned()
        .collect();
    map.extend(extra.iter().cloned());
    let known: Vec<&str> =
        IDENTITY.iter().copied().chain(policy.inputs.iter().map(|i| i.name.as_str())).collect();
    let ty_of = |name: &str| policy.inputs.iter().find(|i| i.name == name).map(|i| i.ty);

    let mut cols = Vec::with_capacity(headers.len());
    let mut unknown = Vec::new();
    let mut seen: Vec<(String, String)> = Vec::new();
    for h in headers.iter() {
        let name = match map.iter().find(|(_, header)| header == h) {
            Some((name, _)) => Some(name.clone()),
            None => known.contains(&h).then(|| h.to_string()),
        };
        match name {
            Some(name) => {
                if let Some((_, first)) = seen.iter().find(|(n, _)| *n == name) {
                    return Err(ReadError::Csv(format!(
                        "two columns give `{name}`: `{first}` and `{h}`; keep one (or map only one in `[columns]`)"
                    )));
                }
                seen.push((name.clone(), h.to_string()));
                let ty = ty_of(&name);
                cols.push(Some((name, ty)));
            }
            None => {
                cols.push(None);
                unknown.push(h.to_string());
            }
        }
    }
    let mut notes = Vec::new();
    // A mapped column the file lacks is most likely a typo in the map: the hint is among
    // the columns nothing reads, and a column suggested here is not listed again below.
    let mut suggested: Vec<&str> = Vec::new();
    for (name, header) in &map {
        if seen.iter().any(|(n, _)| n == name) {
            continue;
        }
        let close = closest(header, unknown.iter().map(String::as_str));
        suggested.extend(close);
        let hint = close.map(|c| format!("; did you mean `{c}`?")).unwrap_or_default();
        let msg = format!("column `{header}` (mapped to `{name}`) is not in the header{hint}");
        if name == "id" {
            return Err(ReadError::Csv(msg));
        }
        notes.push(msg);
    }
    if !seen.iter().any(|(n, _)| n == "id") {
        let hint = closest("id", unknown.iter().map(String::as_str))
            .map(|c| format!("; did you mean `{c}`? "))
            .unwrap_or_else(|| "; ".to_string());
        return Err(ReadError::Csv(format!(
            "the header has no `id` column{hint}name yours in the policy's `[columns]` (`id = \"Account ID\"`) or with `--columns FILE`"
        )));
    }
    let unread: Vec<&str> =
        known.iter().copied().filter(|k| !seen.iter().any(|(n, _)| n == k)).collect();
    let mut plain = Vec::new();
    for h in unknown.iter().filter(|h| !suggested.contains(&h.as_str())) {
        match closest(h, unread.iter().copied()) {
            Some(k) => notes.push(format!(
                "column `{h}` is not read; did you mean `{k}`? (rename it, or map it: `[columns] {k} = \"{h}\"`)"
            )),
            None => plain.push(format!("`{h}`")),
        }
    }
    if !plain.is_empty() {
        notes.push(format!(
            "columns not read (not identity columns nor inputs of policy `{}`): {}",
            policy.policy,
            plain.join(", ")
        ));
    }
    Ok(Layout { cols, notes })
}

/// A CRM export: identity columns and one column per input, in any order and under any
/// names the maps give; an empty cell is absent.
pub fn read_csv(
    text: &str,
    policy: &Columns<'_>,
    extra: &[(String, String)],
) -> Result<Read, ReadError> {
    let mut rdr =
        csv::ReaderBuilder::new().flexible(false).trim(csv::Trim::All).from_reader(text.as_bytes());
    let headers = rdr.headers().map_err(|e| ReadError::Csv(e.to_string()))?.clone();
    let Layout { cols, notes } = layout(&headers, policy, extra)?;
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
        for (col, cell) in cols.iter().zip(row.iter()) {
            let Some((name, ty)) = col else { continue };
            if cell.is_empty() {
                continue;
            }
            match ty {
                None => {
                    obj.insert(name.clone(), Value::String(cell.to_string()));
                }
                Some(ty) => {
                    fields.insert(name.clone(), csv_cell(cell, *ty));
                }
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
    Ok(Read { records: out, notes })
}

/// Types a (trimmed) CSV cell by its input; a cell that does not parse stays text, so
/// validation names the field and the expected type.
fn csv_cell(cell: &str, ty: InputType) -> Value {
    match ty {
        InputType::Number | InputType::Integer => {
            if let Ok(i) = cell.parse::<i64>() {
                return Value::from(i);
            }
            match cell.parse::<f64>() {
                Ok(f) if f.is_finite() => serde_json::Number::from_f64(f)
                    .map_or(Value::String(cell.into()), Value::Number),
                _ => Value::String(cell.into()),
            }
        }
        // Spreadsheets write TRUE/FALSE, CRMs Yes/No or 1/0.
        InputType::Bool => match cell.to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => Value::Bool(true),
            "false" | "no" | "0" => Value::Bool(false),
            _ => Value::String(cell.into()),
        },
        InputType::String | InputType::Date => Value::String(cell.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::looks_grouped;

    #[test]
    fn thousands_separators_are_recognised_and_plain_numbers_are_not() {
        assert_eq!(looks_grouped("1,250,000").as_deref(), Some("1250000"));
        assert_eq!(looks_grouped("-12 345.50").as_deref(), Some("-12345.50"));
        assert_eq!(looks_grouped("1'000").as_deref(), Some("1000"));
        for plain in ["1250000", "1,5", "12,34", "1,2345", "abc", ",123", "1.250.000", ""] {
            assert_eq!(looks_grouped(plain), None, "{plain}");
        }
    }
}
