//! `/openapi.json`: the API description, its schemas generated from the very types the
//! handlers serialize and parse (schemars, OpenAPI 3.0 settings), so they cannot drift.
//! Only the list of operations is written here; a test checks it against the router.

use super::ErrorBody;
use super::backtest::{BacktestRequest, BacktestResponse};
use super::dryrun::{DryRunRequest, DryRunResponse};
use super::handlers::{
    EvaluateRequest, EvaluateResponse, Health, LatestDecision, PolicyInfo, PolicyList,
    PortfolioResponse, ReloadResponse,
};
use schemars::Schema;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

/// One operation of the API.
struct Op {
    method: &'static str,
    path: &'static str,
    id: &'static str,
    summary: &'static str,
    request: Option<Schema>,
    /// (status, description, schema, content type); a status listed twice has two content types.
    responses: Vec<(u16, &'static str, Option<Schema>, &'static str)>,
    /// Headers of the 200 answer: (name, description); always sent.
    ok_headers: &'static [(&'static str, &'static str)],
    /// Query parameters: (name, description, allowed values).
    query: Vec<(&'static str, &'static str, &'static [&'static str])>,
    admin: bool,
}

const JSON: &str = "application/json";

const EVAL_HEADERS: &[(&str, &str)] = &[
    ("x-decision-id", "the answer's `decision_id`"),
    ("x-policy-hash", "SHA-256 of the policy version that decided"),
    ("x-cache-hits", "accounts answered from the decision cache"),
];

const DRY_RUN_HEADERS: &[(&str, &str)] = &[
    ("x-decision-id", "the dry run's id"),
    ("x-policy-hash", "SHA-256 of the baseline"),
    ("x-candidate-hash", "SHA-256 of the candidate's files after the overrides"),
    ("x-dry-run", "always `true`"),
];

const BACKTEST_HEADERS: &[(&str, &str)] = &[
    ("x-decision-id", "the backtest's id"),
    ("x-policy-hash", "SHA-256 of the replayed policy"),
    ("x-dry-run", "always `true`"),
];

/// The document as JSON text.
pub fn document_json() -> String {
    serde_json::to_string_pretty(&document()).unwrap_or_default()
}

/// Where an operation sits, for the statuses every operation of its kind can send whatever
/// its handler does (the layers of [`super::app`]).
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// `/v1/*` with a JSON body: body limit, concurrency limit and timeout, body read timeout.
    V1Post,
    /// `/v1/*` without a body: concurrency limit and timeout.
    V1Get,
    /// Probes, `/metrics`, `/openapi.json`: only the body limit (on every route).
    Ops,
}

pub fn document() -> Value {
    let mut g = SchemaSettings::openapi3().for_serialize().into_generator();
    // Request bodies are what the handlers *accept*: a field with a default may be left out.
    // The serialize-mode generator would list every `Option` as required.
    let mut de = SchemaSettings::openapi3().for_deserialize().into_generator();
    let err = g.subschema_for::<ErrorBody>();
    let e = |status: u16, what: &'static str| (status, what, Some(err.clone()), JSON);
    // Only where the handler has a path to `ApiError::internal` (a panicked task, a failed
    // serialization): the static answers (schemas, this document, metrics) have none.
    let internal =
        || e(500, "a failure of the service (`internal`; logged, answered without its text)");
    // What the layers and extractors send, beside each handler's own answers.
    let common = |kind: Kind| {
        let mut v = vec![
            e(
                413,
                "body over the size limit (`payload_too_large`; every route, by `Content-Length`)",
            ),
            e(
                400,
                "a request the HTTP layer cannot read (`bad_request`), or without exactly one `Host` header on HTTP/1.1 (`bad_host`)",
            ),
            e(414, "a request target longer than the server reads (`uri_too_long`)"),
            e(431, "request headers larger than the server reads (`headers_too_large`)"),
        ];
        if kind != Kind::Ops {
            v.push(e(503, "too many requests in progress (`overloaded`), the request timed out (`timeout`), or the server is stopping (`shutting_down`); see `Retry-After`"));
        }
        if kind == Kind::V1Post {
            v.push(e(
                408,
                "the request body was not received within the body-read timeout (`body_timeout`)",
            ));
        }
        v
    };
    let eval_errors = || {
        let mut v = vec![
            e(
                400,
                "malformed JSON (`malformed_json`), an unreadable body, or no default policy (`no_default_policy`)",
            ),
            e(404, "unknown policy (`unknown_policy`)"),
            e(
                413,
                "more accounts than the limit (`too_many_accounts`), an account with more `fields` keys than the limit (`too_many_fields`), or an answer past the output budget (`response_too_large`)",
            ),
            e(
                415,
                "not `Content-Type: application/json`, or a `Content-Encoding` other than gzip (`unsupported_encoding`)",
            ),
            e(422, "JSON of the wrong shape, or not an object (`invalid_request`)"),
            internal(),
        ];
        v.extend(common(Kind::V1Post));
        v
    };
    let path_400 =
        || e(400, "a path segment that is not UTF-8 once percent-decoded (`invalid_request`)");
    let with = |mut v: Vec<(u16, &'static str, Option<Schema>, &'static str)>, kind: Kind| {
        v.extend(common(kind));
        v
    };
    let schema_names: Vec<String> = crate::schema::all()
        .into_iter()
        .map(|(f, _)| f.trim_end_matches(".schema.json").to_string())
        .collect();
    let ops = vec![
        Op {
            method: "post",
            path: "/v1/evaluate",
            id: "evaluate",
            summary: "Decide accounts one by one (score, qualified tier, movement, account alerts)",
            request: Some(de.subschema_for::<EvaluateRequest<'static>>()),
            responses: [
                vec![(
                    200,
                    "one outcome per account, in input order",
                    Some(g.subschema_for::<EvaluateResponse<'static>>()),
                    JSON,
                )],
                eval_errors(),
            ]
            .concat(),
            ok_headers: EVAL_HEADERS,
            query: vec![(
                "explain",
                "`full`: every decision also carries `explanation` (the single criterion changes that reach the next tier, and what holds the account where it is); `none` (default): not",
                &["full", "none"],
            )],
            admin: false,
        },
        Op {
            method: "post",
            path: "/v1/portfolio",
            id: "portfolio",
            summary: "Decide a whole book: caps, manager capacity, portfolio alerts, summary",
            request: Some(de.subschema_for::<EvaluateRequest<'static>>()),
            responses: [
                vec![(
                    200,
                    "the book's summary and one outcome per account",
                    Some(g.subschema_for::<PortfolioResponse<'static>>()),
                    JSON,
                )],
                eval_errors(),
            ]
            .concat(),
            ok_headers: EVAL_HEADERS,
            query: vec![],
            admin: false,
        },
        Op {
            method: "post",
            path: "/v1/dry-run",
            id: "dryRun",
            summary: "What-if: decide a book under a served policy and a candidate (a folder sent inline, overrides, or both) and return the difference; changes nothing",
            request: Some(de.subschema_for::<DryRunRequest<'static>>()),
            responses: with(
                vec![
                    (
                        200,
                        "the difference (format json)",
                        Some(g.subschema_for::<DryRunResponse<'static>>()),
                        JSON,
                    ),
                    (200, "a pull-request comment (format markdown)", None, "text/markdown"),
                    (200, "a terminal summary (format table)", None, "text/plain"),
                    e(
                        400,
                        "malformed JSON, a refused candidate file name (`bad_candidate_path`), or no default policy",
                    ),
                    e(404, "unknown baseline policy"),
                    e(
                        413,
                        "body over the size limit, a candidate over 64 files, 64 overrides, 1 MiB or 1,000 items in one list (`candidate_too_large`), too many accounts or `fields` keys, or the served policy's own answer past the output budget (`response_too_large`)",
                    ),
                    e(415, "not `Content-Type: application/json`"),
                    e(
                        422,
                        "JSON of the wrong shape or nothing to compare (`invalid_request`), an override that names nothing (`invalid_override`), a candidate that does not compile (`candidate_invalid`, every diagnostic in `details`), a candidate that trips the sandbox on live accounts (`candidate_sandbox_limit`), a candidate whose alerts fan out past the output budget (`candidate_output_limit`, naming the rule)",
                    ),
                    internal(),
                    e(
                        503,
                        "two dry runs already in progress (`overloaded`), or the baseline has no version that passed its checks (`policy_unavailable`)",
                    ),
                ],
                Kind::V1Post,
            ),
            ok_headers: DRY_RUN_HEADERS,
            query: vec![
                (
                    "format",
                    "`json` (default), `markdown` (or `md`) or `table` (or `text`); the body's `format` does the same",
                    &["json", "markdown", "table", "md", "text"],
                ),
                ("top", "accounts listed by markdown and table (default 20)", &[]),
            ],
            admin: false,
        },
        Op {
            method: "post",
            path: "/v1/backtest",
            id: "backtest",
            summary: "Backtest: replay a served policy (and optionally a candidate, as in /v1/dry-run) over a book's history, one period per distinct `as_of`; tier moves, flip-flops, alerts and manager load per period and overall; changes nothing",
            request: Some(de.subschema_for::<BacktestRequest<'static>>()),
            responses: with(
                vec![
                    (
                        200,
                        "the replay, or both replays and their difference (format json)",
                        Some(g.subschema_for::<BacktestResponse<'static>>()),
                        JSON,
                    ),
                    (200, "a pull-request comment (format markdown)", None, "text/markdown"),
                    (200, "a terminal summary (format table)", None, "text/plain"),
                    (
                        200,
                        "one line per period and account (format jsonl, without a candidate)",
                        None,
                        "application/x-ndjson",
                    ),
                    e(
                        400,
                        "malformed JSON, a refused candidate file name (`bad_candidate_path`), or no default policy",
                    ),
                    e(404, "unknown policy"),
                    e(
                        413,
                        "body over the size limit, more snapshots than the account limit (`too_many_accounts`), or a candidate over 64 files or 1 MiB (`candidate_too_large`)",
                    ),
                    e(415, "not `Content-Type: application/json`"),
                    e(
                        422,
                        "JSON of the wrong shape, no history or both `periods` and `accounts` (`invalid_request`), an override that names nothing (`invalid_override`), a candidate that does not compile (`candidate_invalid`), a candidate that trips the sandbox where the policy does not (`candidate_sandbox_limit`)",
                    ),
                    internal(),
                    e(
                        503,
                        "two dry runs or backtests already in progress (`overloaded`), or the policy has no version that passed its checks (`policy_unavailable`)",
                    ),
                ],
                Kind::V1Post,
            ),
            ok_headers: BACKTEST_HEADERS,
            query: vec![
                (
                    "format",
                    "`json` (default), `markdown` (or `md`), `table` (or `text`) or `jsonl` (or `ndjson`); the body's `format` does the same",
                    &["json", "markdown", "table", "jsonl", "md", "text", "ndjson"],
                ),
                ("top", "accounts and managers listed by markdown and table (default 10)", &[]),
            ],
            admin: false,
        },
        Op {
            method: "get",
            path: "/v1/accounts/{id}/decision",
            id: "latestDecision",
            summary: "The last decision /v1/evaluate made for an account under a policy (`?policy=NAME`, default: the default policy); `stale` when an older version made it",
            request: None,
            responses: with(
                vec![
                    (200, "the latest decision", Some(g.subschema_for::<LatestDecision>()), JSON),
                    path_400(),
                    e(
                        404,
                        "unknown policy, or no decision stored for the account (`unknown_account`)",
                    ),
                    e(422, "a malformed query (`invalid_request`)"),
                    internal(),
                    e(503, "the cache is unavailable (`cache_unavailable`)"),
                ],
                Kind::V1Get,
            ),
            ok_headers: &[],
            query: vec![],
            admin: false,
        },
        Op {
            method: "get",
            path: "/v1/accounts/{id}/history",
            id: "accountHistory",
            summary: "With events on: an account's tier periods (from, to, reason codes) and active alerts (since, last told) under a policy (`?policy=`, `?level=account|portfolio`)",
            request: None,
            responses: with(
                vec![
                    (200, "the history", Some(g.subschema_for::<super::events::History>()), JSON),
                    path_400(),
                    e(400, "a bad query (`bad_query`)"),
                    e(
                        404,
                        "events off (`events_off`), unknown policy, or no state for the account (`no_history`)",
                    ),
                    internal(),
                    e(503, "the state store is unavailable (`state_unavailable`)"),
                ],
                Kind::V1Get,
            ),
            ok_headers: &[],
            query: vec![("level", "`account` (default) or `portfolio`", &["account", "portfolio"])],
            admin: false,
        },
        Op {
            method: "get",
            path: "/v1/events",
            id: "listEvents",
            summary: "With events on: the retained outbox, oldest first, cursor-paged (`after` = the previous page's `next`); filters `type`, `policy`, `level`",
            request: None,
            responses: with(
                vec![
                    (
                        200,
                        "a page of CloudEvents",
                        Some(g.subschema_for::<super::events::EventsPage>()),
                        JSON,
                    ),
                    e(400, "a bad query (`bad_query`)"),
                    e(404, "events are off (`events_off`)"),
                    internal(),
                    e(503, "the state store is unavailable (`state_unavailable`)"),
                ],
                Kind::V1Get,
            ),
            ok_headers: &[],
            query: vec![
                ("after", "the `next` cursor of the previous page", &[]),
                ("limit", "events per page (default 100, at most 1000)", &[]),
                (
                    "type",
                    "only this event type",
                    &[
                        "tier.changed",
                        "alert.raised",
                        "alert.repeated",
                        "alert.cleared",
                        "portfolio_alert.raised",
                        "portfolio_alert.cleared",
                    ],
                ),
                ("level", "only this level", &["account", "portfolio"]),
            ],
            admin: false,
        },
        Op {
            method: "get",
            path: "/v1/events/dead",
            id: "deadEvents",
            summary: "Events that ran out of retries, per webhook (admin)",
            request: None,
            responses: with(
                vec![
                    (
                        200,
                        "the dead-letter list (`dead`: webhook, id, type, subject, attempts, last_error, at, event)",
                        None,
                        JSON,
                    ),
                    e(401, "no bearer token (none, another scheme, or empty)"),
                    e(403, "wrong token"),
                    e(404, "admin routes disabled, or events off"),
                    internal(),
                ],
                Kind::V1Get,
            ),
            ok_headers: &[],
            query: vec![],
            admin: true,
        },
        Op {
            method: "post",
            path: "/v1/events/dead/replay",
            id: "replayDeadEvents",
            summary: "Send dead letters again (admin); body `{webhook?, ids?}` narrows which (empty: all); answers `{replayed: N}`",
            request: None,
            responses: with(
                vec![
                    (200, "how many were queued again", None, JSON),
                    e(400, "a bad body (`bad_request`)"),
                    e(401, "no bearer token (none, another scheme, or empty)"),
                    e(403, "wrong token"),
                    e(404, "admin routes disabled, or events off"),
                    internal(),
                ],
                Kind::V1Post,
            ),
            ok_headers: &[],
            query: vec![],
            admin: true,
        },
        Op {
            method: "get",
            path: "/v1/policies",
            id: "listPolicies",
            summary: "The policies served: version, hash, loaded at, files, inputs, tiers, last reload error",
            request: None,
            responses: with(
                vec![
                    (200, "every policy folder", Some(g.subschema_for::<PolicyList>()), JSON),
                    internal(),
                ],
                Kind::V1Get,
            ),
            ok_headers: &[],
            query: vec![],
            admin: false,
        },
        Op {
            method: "get",
            path: "/v1/policies/{name}",
            id: "getPolicy",
            summary: "One policy",
            request: None,
            responses: with(
                vec![
                    (200, "the policy", Some(g.subschema_for::<PolicyInfo>()), JSON),
                    path_400(),
                    e(404, "unknown policy"),
                    internal(),
                ],
                Kind::V1Get,
            ),
            ok_headers: &[],
            query: vec![],
            admin: false,
        },
        Op {
            method: "post",
            path: "/v1/policies/reload",
            id: "reloadPolicies",
            summary: "Read the policies folder again now (admin; the watcher does this on every change)",
            request: None,
            responses: with(
                vec![
                    (200, "what changed", Some(g.subschema_for::<ReloadResponse>()), JSON),
                    e(401, "no bearer token (none, another scheme, or empty)"),
                    e(403, "wrong token"),
                    e(
                        429,
                        "too many wrong tokens from this address (`too_many_attempts`); see `Retry-After`",
                    ),
                    e(404, "admin routes disabled (no TIERWISE_ADMIN_TOKEN)"),
                    internal(),
                ],
                Kind::V1Post,
            ),
            ok_headers: &[],
            query: vec![],
            admin: true,
        },
        Op {
            method: "get",
            path: "/v1/schemas/{name}",
            id: "getSchema",
            summary: "A JSON schema: policy, tests, snapshot, decision, portfolio, diff (also as `NAME.json` and `NAME.schema.json`)",
            request: None,
            responses: with(
                vec![
                    (200, "the JSON schema", None, "application/schema+json"),
                    path_400(),
                    e(404, "unknown schema"),
                ],
                Kind::V1Get,
            ),
            ok_headers: &[],
            query: vec![],
            admin: false,
        },
        Op {
            method: "get",
            path: "/openapi.json",
            id: "openapi",
            summary: "This document",
            request: None,
            responses: with(vec![(200, "OpenAPI 3.0", None, JSON)], Kind::Ops),
            ok_headers: &[],
            query: vec![],
            admin: false,
        },
        Op {
            method: "get",
            path: "/healthz",
            id: "healthz",
            summary: "Liveness: the process answers",
            request: None,
            responses: with(
                vec![(200, "alive", Some(g.subschema_for::<Health>()), JSON), internal()],
                Kind::Ops,
            ),
            ok_headers: &[],
            query: vec![],
            admin: false,
        },
        Op {
            method: "get",
            path: "/readyz",
            id: "readyz",
            summary: "Readiness: the default policy is serving",
            request: None,
            responses: with(
                vec![
                    (200, "ready", Some(g.subschema_for::<Health>()), JSON),
                    internal(),
                    e(503, "not ready (`not_ready`): no default policy serving, or shutting down"),
                ],
                Kind::Ops,
            ),
            ok_headers: &[],
            query: vec![],
            admin: false,
        },
        Op {
            method: "get",
            path: "/metrics",
            id: "metrics",
            summary: "Prometheus metrics (OpenMetrics text)",
            request: None,
            responses: with(
                vec![(200, "metrics", None, "application/openmetrics-text")],
                Kind::Ops,
            ),
            ok_headers: &[],
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
                Some(r) if r["content"].get(ct).is_none() => {
                    r["content"][ct] = media;
                    if let Some(d) =
                        r["description"].as_str().map(|d| format!("{d}; {description}"))
                    {
                        r["description"] = json!(d);
                    }
                }
                // The same error status again (a layer's, after the handler's): one description.
                Some(r) => {
                    if let Some(d) =
                        r["description"].as_str().map(|d| format!("{d}; or {description}"))
                    {
                        r["description"] = json!(d);
                    }
                }
                None => {
                    responses.insert(
                        status.to_string(),
                        json!({ "description": description, "content": { ct: media } }),
                    );
                }
            }
        }
        let string = json!({ "type": "string" });
        let header = |description: &str, schema: Value| json!({ "description": description, "required": true, "schema": schema });
        for (status, r) in responses.iter_mut() {
            match status.as_str() {
                "200" if !op.ok_headers.is_empty() => {
                    let h: Map<String, Value> = op
                        .ok_headers
                        .iter()
                        .map(|(n, d)| (n.to_string(), header(d, string.clone())))
                        .collect();
                    r["headers"] = Value::Object(h);
                }
                "401" => {
                    r["headers"] = json!({ "WWW-Authenticate": header("`Bearer`", string.clone()) })
                }
                "503" => {
                    r["headers"] = json!({ "Retry-After": header("seconds to wait before trying again", json!({ "type": "integer", "minimum": 0 })) })
                }
                _ => {}
            }
        }
        if op.id == "evaluate"
            && let Some(ok) = responses.get_mut("200")
        {
            // What a client (and a stateful fuzzer) does next: ask for an account's decision.
            ok["links"] = json!({ "latestDecision": {
                "operationId": "latestDecision",
                "parameters": { "id": "$response.body#/accounts/0/id", "policy": "$response.body#/policy/name" },
                "description": "the decision just made for the first account, as stored for later"
            } });
        }
        let mut o = json!({ "operationId": op.id, "summary": op.summary, "responses": responses });
        if let Some(req) = op.request {
            let mut media = json!({ "schema": req });
            if let Some(example) = example(op.id) {
                media["example"] = example;
            }
            o["requestBody"] = json!({ "required": true, "content": { JSON: media } });
        }
        let mut params = Vec::new();
        let segment = |name: &str, schema: Value| json!({ "name": name, "in": "path", "required": true, "schema": schema });
        if op.path.contains("{name}") {
            let schema = if op.id == "getSchema" {
                json!({ "type": "string", "pattern": format!("^({})(\\.schema\\.json|\\.json)?$", schema_names.join("|")) })
            } else {
                json!({ "type": "string", "minLength": 1 })
            };
            params.push(segment("name", schema));
        }
        if op.path.contains("{id}") {
            params.push(segment(
                "id",
                json!({ "type": "string", "minLength": 1, "maxLength": crate::snapshot::MAX_ID_BYTES }),
            ));
            params.push(json!({ "name": "policy", "in": "query", "required": false, "description": "the policy's name (default: the default policy)", "schema": { "type": "string" } }));
        }
        for (name, description, values) in &op.query {
            let schema = if values.is_empty() {
                json!({ "type": "integer", "minimum": 0, "maximum": super::dryrun::MAX_TOP })
            } else {
                json!({ "type": "string", "enum": values })
            };
            params.push(json!({ "name": name, "in": "query", "required": false, "description": description, "schema": schema }));
        }
        if op.id == "listEvents" {
            params.push(json!({ "name": "policy", "in": "query", "required": false, "description": "only this policy's events", "schema": { "type": "string" } }));
        }
        if !params.is_empty() {
            o["parameters"] = Value::Array(params);
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
            "schemas": definitions(g.take_definitions(true), de.take_definitions(true)),
            "securitySchemes": { "adminToken": { "type": "http", "scheme": "bearer" } }
        }
    })
}

/// A request that the shipped `enterprise` policy decides: for readers, and the first case
/// a fuzzer sends, so the success path (and the latest decision it stores) is exercised.
fn example(op: &str) -> Option<Value> {
    let account = json!({
        "id": "acc-0000001", "name": "Helinwen Holdings", "manager": "kam.00010", "current_tier": "managed",
        "tier_since": "2023-09-12", "as_of": "2026-11-01",
        "fields": {
            "revenue_12m": 279821, "revenue_prev_12m": 203681, "potential": 195000, "gross_margin": 0.204,
            "share_of_wallet": 0.65, "relationship": "tactical", "strategic_fit": 2, "nps": -1, "nps_prev": 4,
            "last_qbr": "2026-10-12", "last_ebr": "2026-03-05", "region": "amer", "segment": "enterprise"
        }
    });
    match op {
        "evaluate" | "portfolio" => Some(json!({ "accounts": [account] })),
        "dryRun" => {
            Some(json!({ "overrides": { "tiers.key.min_score": 7.0 }, "accounts": [account] }))
        }
        _ => None,
    }
}

/// The schemas of answers and of requests in one map. A type used by both with two
/// different schemas would make one of their `$ref`s lie: `no_type_has_two_schemas` fails
/// the day that happens (rename one side then).
fn definitions(mut out: Map<String, Value>, requests: Map<String, Value>) -> Map<String, Value> {
    for (name, schema) in requests {
        out.entry(name).or_insert(schema);
    }
    out
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn no_type_has_two_schemas() {
        let mut g = SchemaSettings::openapi3().for_serialize().into_generator();
        let mut de = SchemaSettings::openapi3().for_deserialize().into_generator();
        // Everything `document` asks each generator for.
        g.subschema_for::<EvaluateResponse<'static>>();
        g.subschema_for::<PortfolioResponse<'static>>();
        g.subschema_for::<DryRunResponse<'static>>();
        g.subschema_for::<BacktestResponse<'static>>();
        g.subschema_for::<LatestDecision>();
        g.subschema_for::<PolicyList>();
        g.subschema_for::<PolicyInfo>();
        g.subschema_for::<ReloadResponse>();
        g.subschema_for::<Health>();
        g.subschema_for::<ErrorBody>();
        de.subschema_for::<EvaluateRequest<'static>>();
        de.subschema_for::<DryRunRequest<'static>>();
        de.subschema_for::<BacktestRequest<'static>>();
        let (out, requests) = (g.take_definitions(true), de.take_definitions(true));
        for (name, schema) in &requests {
            if let Some(other) = out.get(name) {
                assert_eq!(other, schema, "`{name}` differs between answers and requests");
            }
        }
    }

    #[test]
    fn every_operation_declares_its_errors_with_the_error_schema() {
        let doc = document();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let responses = op["responses"].as_object().unwrap();
                assert!(responses.contains_key("413"), "{method} {path}");
                if path.starts_with("/v1/") {
                    assert!(responses.contains_key("503"), "{method} {path}");
                }
                if method == "post" {
                    assert!(responses.contains_key("408"), "{method} {path}");
                }
                for (status, r) in responses {
                    if status.starts_with('4') || status.starts_with('5') {
                        assert_eq!(
                            r["content"][JSON]["schema"]["$ref"], "#/components/schemas/ErrorBody",
                            "{method} {path} {status}"
                        );
                    }
                    if status == "503" {
                        assert_eq!(
                            r["headers"]["Retry-After"]["required"], true,
                            "{method} {path}"
                        );
                    }
                }
            }
        }
    }
}
