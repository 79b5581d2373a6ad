//! `/openapi.json`: the API description, its schemas generated from the very types the
//! handlers serialize and parse (schemars, OpenAPI 3.0 settings), so they cannot drift.
//! Only the list of operations is written here; a test checks it against the router.

use super::dryrun::{DryRunRequest, DryRunResponse};
use super::handlers::{EvaluateRequest, EvaluateResponse, Health, LatestDecision, PolicyInfo, PolicyList, PortfolioResponse, ReloadResponse};
use super::ErrorBody;
use schemars::generate::SchemaSettings;
use schemars::Schema;
use serde_json::{json, Map, Value};

/// One operation of the API.
struct Op {
    method: &'static str,
    path: &'static str,
    id: &'static str,
    summary: &'static str,
    request: Option<Schema>,
    /// (status, description, schema, content type); a status listed twice has two content types.
    responses: Vec<(u16, &'static str, Option<Schema>, &'static str)>,
    /// Query parameters: (name, description, allowed values).
    query: Vec<(&'static str, &'static str, &'static [&'static str])>,
    admin: bool,
}

const JSON: &str = "application/json";

/// The document as JSON text.
pub fn document_json() -> String {
    serde_json::to_string_pretty(&document()).unwrap_or_default()
}

pub fn document() -> Value {
    let mut g = SchemaSettings::openapi3().for_serialize().into_generator();
    let err = g.subschema_for::<ErrorBody>();
    let e = |status: u16, what: &'static str| (status, what, Some(err.clone()), JSON);
    let eval_errors = || {
        vec![
            e(400, "malformed JSON, or no default policy"),
            e(404, "unknown policy"),
            e(408, "the body was not received within the body-read timeout (`body_timeout`)"),
            e(413, "body over the size limit"),
            e(415, "not `Content-Type: application/json`"),
            e(422, "JSON of the wrong shape"),
            e(503, "overloaded, timed out, or the policy has no version that passed its checks"),
        ]
    };
    let ops = vec![
        Op {
            method: "post",
            path: "/v1/evaluate",
            id: "evaluate",
            summary: "Decide accounts one by one (score, qualified tier, movement, account alerts)",
            request: Some(g.subschema_for::<EvaluateRequest<'static>>()),
            responses: [vec![(200, "one outcome per account, in input order", Some(g.subschema_for::<EvaluateResponse<'static>>()), JSON)], eval_errors()].concat(),
            query: vec![],
            admin: false,
        },
        Op {
            method: "post",
            path: "/v1/portfolio",
            id: "portfolio",
            summary: "Decide a whole book: caps, manager capacity, portfolio alerts, summary",
            request: Some(g.subschema_for::<EvaluateRequest<'static>>()),
            responses: [vec![(200, "the book's summary and one outcome per account", Some(g.subschema_for::<PortfolioResponse<'static>>()), JSON)], eval_errors()].concat(),
            query: vec![],
            admin: false,
        },
        Op {
            method: "post",
            path: "/v1/dry-run",
            id: "dryRun",
            summary: "What-if: decide a book under a served policy and a candidate (a folder sent inline, overrides, or both) and return the difference; changes nothing",
            request: Some(g.subschema_for::<DryRunRequest<'static>>()),
            responses: vec![
                (200, "the difference (format json)", Some(g.subschema_for::<DryRunResponse<'static>>()), JSON),
                (200, "a pull-request comment (format markdown)", None, "text/markdown"),
                (200, "a terminal summary (format table)", None, "text/plain"),
                e(400, "malformed JSON, a refused candidate file name (`bad_candidate_path`), or no default policy"),
                e(404, "unknown baseline policy"),
                e(408, "the body was not received within the body-read timeout (`body_timeout`)"),
                e(413, "body over the size limit, or a candidate over 64 files or 1 MiB (`candidate_too_large`)"),
                e(415, "not `Content-Type: application/json`"),
                e(422, "JSON of the wrong shape or nothing to compare (`invalid_request`), an override that names nothing (`invalid_override`), a candidate that does not compile (`candidate_invalid`, every diagnostic in `details`), a candidate that trips the sandbox on live accounts (`candidate_sandbox_limit`)"),
                e(503, "overloaded, timed out, or the baseline has no version that passed its checks"),
            ],
            query: vec![("format", "`json` (default), `markdown` or `table`; the body's `format` does the same", &["json", "markdown", "table"]), ("top", "accounts listed by markdown and table (default 20)", &[])],
            admin: false,
        },
        Op {
            method: "get",
            path: "/v1/accounts/{id}/decision",
            id: "latestDecision",
            summary: "The last decision /v1/evaluate made for an account under a policy (`?policy=NAME`, default: the default policy); `stale` when an older version made it",
            request: None,
            responses: vec![
                (200, "the latest decision", Some(g.subschema_for::<LatestDecision>()), JSON),
                e(404, "unknown policy, or no decision stored for the account (`unknown_account`)"),
                e(503, "the cache is unavailable (`cache_unavailable`)"),
            ],
            query: vec![("policy", "the policy's name (default: the default policy)", &[])],
            admin: false,
        },
        Op {
            method: "get",
            path: "/v1/policies",
            id: "listPolicies",
            summary: "The policies served: version, hash, loaded at, files, inputs, tiers, last reload error",
            request: None,
            responses: vec![(200, "every policy folder", Some(g.subschema_for::<PolicyList>()), JSON)],
            query: vec![],
            admin: false,
        },
        Op {
            method: "get",
            path: "/v1/policies/{name}",
            id: "getPolicy",
            summary: "One policy",
            request: None,
            responses: vec![(200, "the policy", Some(g.subschema_for::<PolicyInfo>()), JSON), e(404, "unknown policy")],
            query: vec![],
            admin: false,
        },
        Op {
            method: "post",
            path: "/v1/policies/reload",
            id: "reloadPolicies",
            summary: "Read the policies folder again now (admin; the watcher does this on every change)",
            request: None,
            responses: vec![
                (200, "what changed", Some(g.subschema_for::<ReloadResponse>()), JSON),
                e(401, "no bearer token"),
                e(403, "wrong token"),
                e(404, "admin routes disabled (no TIERWISE_ADMIN_TOKEN)"),
            ],
            query: vec![],
            admin: true,
        },
        Op {
            method: "get",
            path: "/v1/schemas/{name}",
            id: "getSchema",
            summary: "A JSON schema: policy, tests, snapshot, decision, portfolio",
            request: None,
            responses: vec![(200, "the JSON schema", None, "application/schema+json"), e(404, "unknown schema")],
            query: vec![],
            admin: false,
        },
        Op {
            method: "get",
            path: "/openapi.json",
            id: "openapi",
            summary: "This document",
            request: None,
            responses: vec![(200, "OpenAPI 3.0", None, JSON)],
            query: vec![],
            admin: false,
        },
        Op {
            method: "get",
            path: "/healthz",
            id: "healthz",
            summary: "Liveness: the process answers",
            request: None,
            responses: vec![(200, "alive", Some(g.subschema_for::<Health>()), JSON)],
            query: vec![],
            admin: false,
        },
        Op {
            method: "get",
            path: "/readyz",
            id: "readyz",
            summary: "Readiness: the default policy is serving",
            request: None,
            responses: vec![(200, "ready", Some(g.subschema_for::<Health>()), JSON), e(503, "not ready")],
            query: vec![],
            admin: false,
        },
        Op {
            method: "get",
            path: "/metrics",
            id: "metrics",
            summary: "Prometheus metrics (OpenMetrics text)",
            request: None,
            responses: vec![(200, "metrics", None, "application/openmetrics-text")],
            query: vec![],
            admin: false,
        },
    ];

    let mut paths = Map::new();
    for op in ops {
        let mut responses = Map::new();
        for (status, description, schema, ct) in op.responses {
            let media = match schema {
                Some(s) => json!({ "schema": s }),
                None => json!({}),
            };
            match responses.get_mut(&status.to_string()) {
                // The same status in another content type: one response, both media types.
                Some(r) => {
                    r["content"][ct] = media;
                    if let Some(d) = r["description"].as_str().map(|d| format!("{d}; {description}")) {
                        r["description"] = json!(d);
                    }
                }
                None => {
                    responses.insert(status.to_string(), json!({ "description": description, "content": { ct: media } }));
                }
            }
        }
        let mut o = json!({ "operationId": op.id, "summary": op.summary, "responses": responses });
        if let Some(req) = op.request {
            o["requestBody"] = json!({ "required": true, "content": { JSON: { "schema": req } } });
        }
        let mut params = Vec::new();
        if op.path.contains("{name}") {
            params.push(json!({ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } }));
        }
        for (name, description, values) in &op.query {
            let schema = if values.is_empty() { json!({ "type": "integer", "minimum": 0 }) } else { json!({ "type": "string", "enum": values }) };
            params.push(json!({ "name": name, "in": "query", "required": false, "description": description, "schema": schema }));
        }
        if !params.is_empty() {
            o["parameters"] = Value::Array(params);
        }
        if op.path.contains("{id}") {
            o["parameters"] = json!([
                { "name": "id", "in": "path", "required": true, "schema": { "type": "string" } },
                { "name": "policy", "in": "query", "required": false, "schema": { "type": "string" } }
            ]);
        }
        if op.admin {
            o["security"] = json!([{ "adminToken": [] }]);
        }
        let entry = paths.entry(op.path.to_string()).or_insert_with(|| json!({}));
        entry[op.method] = o;
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "tierwise",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Key-account tiering decisions from policies (TOML + rhai). Errors are `{code, message, details}`."
        },
        "paths": paths,
        "components": {
            "schemas": g.take_definitions(true),
            "securitySchemes": { "adminToken": { "type": "http", "scheme": "bearer" } }
        }
    })
}

/// `(method, path)` of every operation, for the test that checks them against the router.
pub fn operations() -> Vec<(String, String)> {
    let doc = document();
    let mut out = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            if let Some(methods) = item.as_object() {
                out.extend(methods.keys().map(|m| (m.to_uppercase(), path.clone())));
            }
        }
    }
    out
}
