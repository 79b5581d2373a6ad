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
    ]
}
