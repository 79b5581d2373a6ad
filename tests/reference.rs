//! docs/policy-reference.md against the policy and test-case schemas, walked here on their own
//! (not with the generator): every field the loader accepts is documented, and nothing else.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use serde_json::Value;
use std::collections::BTreeSet;

fn fields(v: &Value, defs: &Value, prefix: &str, out: &mut BTreeSet<String>, depth: usize) {
    if depth > 10 {
        return;
    }
    let v = resolve(v, defs);
    if let Some(alts) = v.get("anyOf").and_then(Value::as_array) {
        for a in alts {
            fields(a, defs, prefix, out, depth + 1);
        }
    }
    if let Some(items) = v.get("items") {
        fields(items, defs, &format!("{prefix}[]"), out, depth + 1);
    }
    if let Some(add) = v.get("additionalProperties").filter(|a| a.is_object()) {
        fields(add, defs, &format!("{prefix}.<name>"), out, depth + 1);
    }
    if let Some(props) = v.get("properties").and_then(Value::as_object) {
        for (name, f) in props {
            let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
            out.insert(path.clone());
            fields(f, defs, &path, out, depth + 1);
        }
    }
}

fn resolve<'a>(v: &'a Value, defs: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/$defs/")) {
        Some(name) => resolve(&defs[name], defs),
        None => v,
    }
}

#[test]
fn the_policy_reference_lists_exactly_the_schema_fields() {
    let root = common::root();
    let reference = std::fs::read_to_string(root.join("docs/policy-reference.md")).unwrap();
    let listed: BTreeSet<String> = reference
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(p, _)| p.to_string()))
        .collect();
    let mut expected = BTreeSet::new();
    for file in ["schemas/policy.schema.json", "schemas/tests.schema.json"] {
        let schema: Value =
            serde_json::from_str(&std::fs::read_to_string(root.join(file)).unwrap()).unwrap();
        fields(&schema, &schema["$defs"], "", &mut expected, 0);
    }
    let missing: Vec<_> = expected.difference(&listed).collect();
    let extra: Vec<_> = listed.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "not in the reference: {missing:?}; not in the schemas: {extra:?}"
    );
    // Every field says what it is for.
    for line in reference.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        assert!(cells.get(3).is_some_and(|d| !d.trim().is_empty()), "no description: {line}");
    }
}
