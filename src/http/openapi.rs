//! `/openapi.json`: the API description, its schemas generated from the very types the
//! handlers serialize and parse (schemars, OpenAPI 3.0 settings), so they cannot drift.
//! Only the list of operations is written here; a test checks it against the router.

use super::handlers::{LatestDecision, EvaluateRequest, EvaluateResponse, Health, PolicyInfo, PolicyList, PortfolioResponse, ReloadResponse};
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
    /// (status, description, schema, content type)
    responses: Vec<(u16, &'static str, Option<Schema>, &'static str)>,
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
            admin: false,
        },
        Op {
            method: "post",
            path: "/v1/portfolio",
            id: "portfolio",
            summary: "Decide a whole book: caps, manager capacity, portfolio alerts, summary",
            request: Some(g.subschema_for::<EvaluateRequest<'static>>()),
            responses: [vec![(200, "the book's summary and one outcome per account", Some(g.subschema_for::<PortfolioResponse<'static>>()), JSON)], eval_errors()].concat(),
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
            admin: false,
        },
        Op {
            method: "get",
            path: "/v1/policies",
            id: "listPolicies",
            summary: "The policies served: version, hash, loaded at, files, inputs, tiers, last reload error",
            request: None,
            responses: vec![(200, "every policy folder", Some(g.subschema_for::<PolicyList>()), JSON)],
            admin: false,
        },
        Op {
            method: "get",
            path: "/v1/policies/{name}",
            id: "getPolicy",
            summary: "One policy",
            request: None,
            responses: vec![(200, "the policy", Some(g.subschema_for::<PolicyInfo>()), JSON), e(404, "unknown policy")],
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
            admin: true,
        },
        Op {
            method: "get",
            path: "/v1/schemas/{name}",
            id: "getSchema",
            summary: "A JSON schema: policy, tests, snapshot, decision, portfolio",
            request: None,
            responses: vec![(200, "the JSON schema", None, "application/schema+json"), e(404, "unknown schema")],
            admin: false,
        },
        Op {
            method: "get",
            path: "/openapi.json",
            id: "openapi",
            summary: "This document",
            request: None,
            responses: vec![(200, "OpenAPI 3.0", None, JSON)],
            admin: false,
        },
        Op {
            method: "get",
            path: "/healthz",
            id: "healthz",
            summary: "Liveness: the process answers",
            request: None,
            responses: vec![(200, "alive", Some(g.subschema_for::<Health>()), JSON)],
            admin: false,
        },
        Op {
            method: "get",
            path: "/readyz",
            id: "readyz",
            summary: "Readiness: the default policy is serving",
            request: None,
            responses: vec![(200, "ready", Some(g.subschema_for::<Health>()), JSON), e(503, "not ready")],
            admin: false,
        },
        Op {
            method: "get",
            path: "/metrics",
            id: "metrics",
            summary: "Prometheus metrics (OpenMetrics text)",
            request: None,
            responses: vec![(200, "metrics", None, "application/openmetrics-text")],
            admin: false,
        },
    ];

    let mut paths = Map::new();
    for op in ops {
        let mut responses = Map::new();
        for (status, description, schema, ct) in op.responses {
            let content = match schema {
                Some(s) => json!({ ct: { "schema": s } }),
                None => json!({ ct: {} }),
            };
            responses.insert(status.to_string(), json!({ "description": description, "content": content }));
        }
        let mut o = json!({ "operationId": op.id, "summary": op.summary, "responses": responses });
        if let Some(req) = op.request {
            o["requestBody"] = json!({ "required": true, "content": { JSON: { "schema": req } } });
        }
        if op.path.contains("{name}") {
            o["parameters"] = json!([{ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } }]);
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
