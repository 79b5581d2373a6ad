//! JSON schemas of the files and payloads people and tools write against, generated from the
//! types (schemars) so they cannot drift; `tierwise schema` writes them to `schemas/`.

use schemars::schema_for;

/// (file name, pretty JSON) for every published schema.
pub fn all() -> Vec<(&'static str, String)> {
    let pretty = |v: schemars::Schema| serde_json::to_string_pretty(&v).unwrap_or_default() + "\n";
    vec![
        ("policy.schema.json", pretty(schema_for!(crate::policy::raw::RawPolicy))),
        ("tests.schema.json", pretty(schema_for!(crate::policy::raw::RawTestFile))),
        ("snapshot.schema.json", pretty(schema_for!(crate::snapshot::Snapshot))),
        ("decision.schema.json", pretty(schema_for!(crate::engine::Outcome))),
        ("portfolio.schema.json", pretty(schema_for!(crate::engine::PortfolioResult))),
        ("diff.schema.json", pretty(schema_for!(crate::whatif::PolicyDiff))),
        ("backtest.schema.json", pretty(schema_for!(crate::engine::backtest::BacktestResult))),
    ]
}

/// `docs/policy-reference.md`: every field of `policy.toml` and `tests/*.toml`, walked from the
/// same schemas as [`all`], so the reference lists exactly what the loader accepts. Examples
/// are taken from the shipped policies where they use the field.
pub fn policy_reference() -> String {
    use serde_json::Value;
    let policy =
        serde_json::to_value(schema_for!(crate::policy::raw::RawPolicy)).unwrap_or_default();
    let tests =
        serde_json::to_value(schema_for!(crate::policy::raw::RawTestFile)).unwrap_or_default();
    let shipped: Vec<toml::Value> = [
        include_str!("../policies/enterprise/policy.toml"),
        include_str!("../policies/mid-market/policy.toml"),
    ]
    .iter()
    .filter_map(|t| toml::from_str(t).ok())
    .collect();
    let shipped_tests: Vec<toml::Value> = [
        include_str!("../policies/enterprise/tests/tiers.toml"),
        include_str!("../policies/enterprise/tests/movement.toml"),
        include_str!("../policies/enterprise/tests/portfolio.toml"),
        include_str!("../policies/enterprise/tests/alerts.toml"),
    ]
    .iter()
    .filter_map(|t| toml::from_str(t).ok())
    .collect();

    let mut out = String::from(
        "# Policy reference\n\n\
         Generated from the policy schema by `tierwise schema` (do not edit: `tierwise schema --check`\n\
         and the test suite fail when this file and the loader disagree). The README's policy\n\
         walkthrough explains the semantics; this page lists every field. Paths use `[]` for an\n\
         element of an array of tables and `<name>` for a key you choose. Examples come from the\n\
         shipped policies.\n",
    );
    for (title, schema, examples) in
        [("`policy.toml`", &policy, &shipped), ("`tests/*.toml`", &tests, &shipped_tests)]
    {
        out.push_str(&format!("\n## {title}\n\n| field | type | required | description | example |\n|---|---|---|---|---|\n"));
        let defs = schema.get("$defs").cloned().unwrap_or(Value::Null);
        let mut rows = Vec::new();
        walk(schema, &defs, "", &mut rows, 0);
        for (path, ty, required, desc) in rows {
            let example = example_at(examples, &path).unwrap_or_default();
            out.push_str(&format!(
                "| `{path}` | {ty} | {} | {} | {} |\n",
                if required { "yes" } else { "no" },
                cell(&desc),
                cell(&example)
            ));
        }
    }
    out
}

type Row = (String, String, bool, String);

fn deref<'a>(v: &'a serde_json::Value, defs: &'a serde_json::Value) -> &'a serde_json::Value {
    match v.get("$ref").and_then(|r| r.as_str()).and_then(|r| r.strip_prefix("#/$defs/")) {
        Some(name) => defs.get(name).map(|d| deref(d, defs)).unwrap_or(v),
        None => v,
    }
}

/// The non-null alternative of `anyOf: [X, null]`, or the value itself.
fn non_null<'a>(v: &'a serde_json::Value, defs: &'a serde_json::Value) -> &'a serde_json::Value {
    let v = deref(v, defs);
    if let Some(alts) = v.get("anyOf").and_then(|a| a.as_array()) {
        let real: Vec<&serde_json::Value> = alts
            .iter()
            .filter(|a| a.get("type").and_then(|t| t.as_str()) != Some("null"))
            .collect();
        if let [one] = real.as_slice() {
            return deref(one, defs);
        }
    }
    v
}

fn type_name(v: &serde_json::Value, defs: &serde_json::Value) -> String {
    let v = non_null(v, defs);
    if let Some(alts) = v.get("oneOf").and_then(|a| a.as_array()) {
        let consts: Vec<String> = alts
            .iter()
            .filter_map(|a| a.get("const").and_then(|c| c.as_str()).map(|c| format!("`\"{c}\"`")))
            .collect();
        if consts.len() == alts.len() {
            return format!("one of {}", consts.join(", "));
        }
    }
    if v.get("anyOf").is_some() {
        return "bool, integer, number or string".into();
    }
    let t: Vec<&str> = match v.get("type") {
        Some(serde_json::Value::String(s)) => vec![s.as_str()],
        Some(serde_json::Value::Array(a)) => {
            a.iter().filter_map(|x| x.as_str()).filter(|x| *x != "null").collect()
        }
        _ => vec![],
    };
    match t.first().copied() {
        Some("array") => {
            let item = v.get("items").map(|i| type_name(i, defs)).unwrap_or_default();
            let inner = non_null(v.get("items").unwrap_or(&serde_json::Value::Null), defs);
            if inner.get("properties").is_some() {
                "array of tables".into()
            } else {
                format!("array of {item}")
            }
        }
        Some("object") if v.get("properties").is_some() => "table".into(),
        Some("object") => "table of named entries".into(),
        Some("number") => "number".into(),
        Some(other) => other.to_string(),
        None => "value".into(),
    }
}

fn walk(
    v: &serde_json::Value,
    defs: &serde_json::Value,
    prefix: &str,
    rows: &mut Vec<Row>,
    depth: usize,
) {
    if depth > 8 {
        return;
    }
    let v = non_null(v, defs);
    let required: Vec<&str> = v
        .get("required")
        .and_then(|r| r.as_array())
        .map(|r| r.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    let Some(props) = v.get("properties").and_then(|p| p.as_object()) else { return };
    for (name, field) in props {
        let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
        let desc = field
            .get("description")
            .or_else(|| non_null(field, defs).get("description"))
            .and_then(|d| d.as_str())
            .unwrap_or("")
            .replace('\n', " ");
        rows.push((path.clone(), type_name(field, defs), required.contains(&name.as_str()), desc));
        let inner = non_null(field, defs);
        if let Some(items) = inner.get("items") {
            walk(items, defs, &format!("{path}[]"), rows, depth + 1);
        } else if let Some(add) = inner.get("additionalProperties").filter(|a| a.is_object()) {
            walk(add, defs, &format!("{path}.<name>"), rows, depth + 1);
        } else {
            walk(inner, defs, &path, rows, depth + 1);
        }
    }
}

/// The first value at `path` in any of the example documents, as inline TOML.
fn example_at(docs: &[toml::Value], path: &str) -> Option<String> {
    fn find<'a>(v: &'a toml::Value, segs: &[&str]) -> Option<&'a toml::Value> {
        let Some((first, rest)) = segs.split_first() else { return Some(v) };
        let (key, each) = match first.strip_suffix("[]") {
            Some(k) => (k, true),
            None => (*first, false),
        };
        let next: Vec<&toml::Value> = if key == "<name>" {
            v.as_table().map(|t| t.values().collect()).unwrap_or_default()
        } else {
            v.get(key).into_iter().collect()
        };
        for n in next {
            if each {
                for item in n.as_array().map(|a| a.iter().collect::<Vec<_>>()).unwrap_or_default() {
                    if let Some(found) = find(item, rest) {
                        return Some(found);
                    }
                }
            } else if let Some(found) = find(n, rest) {
                return Some(found);
            }
        }
        None
    }
    let segs: Vec<&str> = path.split('.').collect();
    let v = docs.iter().find_map(|d| find(d, &segs))?;
    if v.is_table()
        || (v.is_array() && v.as_array().is_some_and(|a| a.iter().any(|x| x.is_table())))
    {
        return None;
    }
    let text = v.to_string();
    (text.len() <= 120).then(|| format!("`{}`", text.replace('\n', " ")))
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}
