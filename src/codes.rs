//! Every stable code tierwise answers with, in one place: policy load errors, `check`
//! warnings, account errors (what a test case's `expect.error` names), decision reasons
//! (`expect.reasons`), HTTP error codes and exit codes.
//!
//! `docs/codes.md` is generated from these lists ([`markdown`], written by `tierwise
//! schema`), and `tests/authoring.rs` fails when it is stale or when the source emits a code
//! that no list holds (or a list holds a code the source never emits).

/// One code and what it means to the person who meets it.
pub struct Code {
    pub code: &'static str,
    pub what: &'static str,
}

const fn c(code: &'static str, what: &'static str) -> Code {
    Code { code, what }
}

/// Problems that keep a policy from loading (`tierwise check` exits 1; a reload keeps the
/// last good version).
pub const LOAD_ERRORS: &[Code] = &[
    c("no_policy", "the folder has no `policy.toml`"),
    c("read_error", "the policy folder cannot be read (the service's last reload error)"),
    c("not_utf8", "a policy file is not UTF-8 text"),
    c("toml_syntax", "`policy.toml` or a test file is not valid TOML"),
    c("toml_type", "a value has the wrong type for its key (text where a number is expected, ...)"),
    c("unknown_key", "a key the format does not have (with a \"did you mean\")"),
    c("too_large", "a list holds more items than the loader accepts"),
    c("bad_input_name", "an input name that is not an identifier expressions can read"),
    c("reserved_name", "an input named like a variable tierwise provides (`score`, `tier`, ...)"),
    c("bad_bound", "`min`/`max` on an input that is not a number or integer, or not finite"),
    c("bad_one_of", "`one_of` empty, or holding a value of another type than the input's"),
    c("bad_default", "a `default` of the wrong type, or outside the input's own rules"),
    c("bad_scale", "`score.scale` needs finite `min` < `max`"),
    c("no_criteria", "the policy has no `[[score.criteria]]`"),
    c("bad_criterion", "a criterion needs exactly one of `steps`, `expr`, `script`"),
    c("bad_weight", "a weight that is negative or not finite, or no weight above 0"),
    c("bad_steps", "`steps` on an input that is not a required number/integer (or has no default)"),
    c("not_ascending", "`steps.at` is not strictly ascending"),
    c("unknown_input", "`steps.input` or `portfolio.revenue` names no declared input"),
    c(
        "unknown_variable",
        "an expression reads a name that is not a declared input, or a script reads `account.<name>` for an undeclared `<name>` (with a \"did you mean\")",
    ),
    c("rhai_syntax", "rhai cannot parse an expression or a script"),
    c(
        "foreign_syntax",
        "a word of another language (`elif`, `&&=`, `null`, `and`, ...) where rhai cannot parse: said first, with what rhai writes",
    ),
    c("unknown_function", "`script` names a function no file of `scripts/` defines"),
    c("bad_function", "a `script` function does not take exactly one argument, the account"),
    c("duplicate_function", "two script files define the same function (name and arity)"),
    c(
        "bad_import",
        "an `import` that is not one of the policy's own scripts, or at the top of a script file",
    ),
    c("no_tiers", "the policy has no `[[tiers]]`"),
    c("duplicate_id", "an id (tier, criterion, alert, hold, case) used twice"),
    c("catch_all", "the last tier has a `when` or a cap"),
    c("bad_min_score", "a `min_score` that is not finite"),
    c("bad_cap", "`max_share` outside 0..1, or a bad `max_count`"),
    c("bad_priority", "`cap_priority` / `capacity.priority` is not `incumbents` or `score`"),
    c(
        "unknown_tier",
        "a tier id (capacity, alert `tiers`, a test case) that the policy does not have",
    ),
    c("bad_alert_tiers", "an alert's `tiers = []` (leave it out for every tier)"),
    c(
        "bad_capacity",
        "`[capacity]` settings that contradict each other, or no tier outside `capacity.tiers`",
    ),
    c("bad_margin", "a movement margin that is negative or not finite"),
    c("bad_tenure", "`min_tenure_days` is negative"),
    c("bad_alert_days", "an alert's `cooldown_days` or `renotify_days` is negative"),
    c("bad_max_steps", "`max_steps` is 0"),
    c("bad_template", "a message with an unmatched `{` or `}` (write `{{` / `}}` for a brace)"),
    c("bad_revenue", "`portfolio.revenue` names an input that is not a number or integer"),
    c(
        "bad_case",
        "a test case that is not well formed (an unknown `change`, both `account` and `accounts`, ...)",
    ),
    c("bad_column", "a `[columns]` entry that is empty, or a column mapped twice"),
    c(
        "unknown_column_target",
        "a `[columns]` key that is neither an identity column nor a declared input",
    ),
    c(
        "alerts_fan_out",
        "more alerts apply to a tier than one account may raise (`--max-alerts-per-account`)",
    ),
    c("message_cut", "a message's text alone is longer than `--max-message-bytes`"),
    c("compile_deadline", "compiling a candidate ran out of the request's time"),
];

/// `tierwise check` warnings: the policy loads, but a rule cannot do what it says.
pub const LINTS: &[Code] = &[
    c(
        "unreachable_tier",
        "a tier no account can reach (its `min_score` above the scale, a `when` that never holds, a better tier that takes every account first, a cap of 0)",
    ),
    c("thresholds_not_descending", "a tier needs more than the better tier above it"),
    c("hold_never_applies", "a hold whose `when` holds for no value of its inputs"),
    c(
        "capacity_unmeetable",
        "the capacity tiers can never hold `per_manager.min` accounts together",
    ),
    c("priority_unused", "a `cap_priority` or `capacity.priority` with no cap to order"),
    c("zero_weight", "a criterion with weight 0 never changes a score"),
    c("optional_with_default", "`optional` does nothing on an input with a `default`"),
    c(
        "integer_division",
        "`a / b` with both sides integers: rhai rounds the result down (`3 / 4` is 0); write `a.to_float() / b`",
    ),
    c("not_one_of_value", "an input compared with a text its `one_of` does not allow: never equal"),
    c(
        "bool_compared_with_text",
        "a `bool` input compared with text (`partner == \"true\"`): never equal",
    ),
    c("renotify_every_time", "`renotify_days = 0` tells the alert again on every new `as_of`"),
];

/// `check` notes (level `info`): nothing is wrong, but the author may want to know.
pub const NOTES: &[Code] = &[c(
    "rhai_fallback",
    "a criterion runs through rhai, not the native fast path (same results, slower), with the construct that keeps it there",
)];

/// Why an account got no decision: `error.code` in an answer, `expect = { error = "..." }`
/// in a test case. The other accounts are still decided.
pub const ACCOUNT_ERRORS: &[Code] = &[
    c(
        "bad_record",
        "the record is not a snapshot (not JSON, not an object, no `id`, a CSV row of the wrong length)",
    ),
    c("missing_field", "a required input, or `as_of`, is missing"),
    c(
        "bad_type",
        "a value of the wrong type (text for a number, `maybe` for a bool, `1,250,000` with thousands separators)",
    ),
    c("out_of_range", "a number outside the input's `min`/`max`"),
    c("not_one_of", "a value its input's `one_of` does not allow"),
    c("bad_date", "`as_of`, `tier_since` or a date input that is not `YYYY-MM-DD`"),
    c("unknown_tier", "`current_tier` names a tier the policy does not have"),
    c("duplicate_id", "the id appears more than once in the input: every copy is an error"),
    c("bad_score", "an `expr`/`script` criterion gave something that is not a number, or NaN"),
    c(
        "script_error",
        "an expression or script failed at run time (a condition that is not a bool, a type error, ...)",
    ),
    c("time_limit", "the account's evaluation ran past the sandbox's wall-clock limit"),
    c("operation_limit", "the account's evaluation ran past the sandbox's operation limit"),
    c("call_depth", "too deep a chain of function calls (recursion)"),
    c("size_limit", "a string, array or map past the sandbox's size limits"),
    c("output_limit", "the account's answer would pass the output limits (alerts, message bytes)"),
    c(
        "internal",
        "a failure inside tierwise while deciding this account (logged; please report it)",
    ),
];

/// Reasons in a decision (`reasons[].code`, `expect = { reasons = [...] }`).
pub const REASONS: &[Code] = &[
    c("qualifies", "the score reaches the tier's `min_score`"),
    c("condition", "the score reaches a better tier, but that tier's `when` does not hold"),
    c("new", "no `current_tier`: the account starts in its qualified tier"),
    c("promote", "promoted: the score reaches a better tier's `min_score + promote_margin`"),
    c("promote_margin", "qualifies for a better tier, but not by the promote margin"),
    c("demote", "demoted to the qualified tier"),
    c("margin", "held: the score is within `demote_margin` of the current tier"),
    c("tenure", "held: in the tier for fewer than `min_tenure_days`"),
    c("hold", "held by a `[[movement.holds]]` (the message names it)"),
    c("max_steps", "the move was limited to `max_steps` tiers"),
    c("stay", "stays in its current tier"),
    c("cap", "moved down by a tier's `max_share`/`max_count`"),
    c(
        "cap_protected",
        "kept in a full tier because a protection (hold, `max_steps`) keeps it there",
    ),
    c("total_max", "moved out of the capacity tiers by `capacity.total_max`"),
    c(
        "capacity",
        "moved out of the capacity tiers by `on_overflow = \"demote\"` (its manager is over `per_manager.max`)",
    ),
];

/// HTTP error codes (`{code, message, details}`), with their status.
pub const HTTP: &[(u16, Code)] = &[
    (
        400,
        c("bad_request", "the request is not valid HTTP/1.1 (a malformed request line or header)"),
    ),
    (
        400,
        c(
            "bad_query",
            "a query parameter of `/v1/events` or `/v1/accounts/{id}/history` that is not valid",
        ),
    ),
    (400, c("malformed_json", "the body is not valid JSON")),
    (400, c("malformed_body", "the body is not what its `Content-Encoding` says")),
    (400, c("bad_host", "a request without a valid `Host` header (the connection is closed)")),
    (400, c("no_default_policy", "no `policy` named and no default policy configured")),
    (
        400,
        c(
            "bad_candidate_path",
            "a dry run's candidate holds a file it may not (only `policy.toml`, `scripts/*.rhai`, `tests/*.toml`)",
        ),
    ),
    (401, c("unauthorized", "an admin action without a bearer token")),
    (403, c("forbidden", "a wrong admin token")),
    (404, c("not_found", "no such route")),
    (404, c("unknown_policy", "no policy of that name is loaded (with a \"did you mean\")")),
    (404, c("unknown_schema", "no schema of that name")),
    (404, c("events_off", "events are off: start the service with `--events` (or a webhook)")),
    (404, c("no_history", "no state for that account under that policy and level")),
    (404, c("unknown_account", "no latest decision stored for that account under that policy")),
    (405, c("method_not_allowed", "the route does not take that method")),
    (408, c("body_timeout", "the body did not arrive in time")),
    (413, c("payload_too_large", "the body is larger than the limit")),
    (413, c("too_many_accounts", "more accounts in one request than `--max-accounts`")),
    (413, c("too_many_fields", "an account with more keys in `fields` than `TIERWISE_MAX_FIELDS`")),
    (413, c("response_too_large", "the answer would be larger than `TIERWISE_MAX_RESPONSE_BYTES`")),
    (413, c("candidate_too_large", "a dry run's candidate has too many files or bytes")),
    (414, c("uri_too_long", "the request target is longer than the server reads")),
    (415, c("unsupported_media_type", "a `Content-Type` the endpoint does not take")),
    (415, c("unsupported_encoding", "a `Content-Encoding` other than `gzip`")),
    (422, c("invalid_request", "valid JSON of the wrong shape (with the place)")),
    (422, c("invalid_as_of", "the request's `as_of` is not a date (`YYYY-MM-DD`)")),
    (
        422,
        c(
            "invalid_override",
            "a dry run's override names nothing, or a value of the wrong type (with a \"did you mean\")",
        ),
    ),
    (
        422,
        c(
            "candidate_invalid",
            "the dry run's candidate does not load (its diagnostics in `details`)",
        ),
    ),
    (
        422,
        c(
            "candidate_sandbox_limit",
            "the candidate runs into the sandbox on this book: it could never go live",
        ),
    ),
    (
        422,
        c(
            "candidate_output_limit",
            "the candidate's answers would pass the output limits on this book",
        ),
    ),
    (429, c("too_many_attempts", "too many wrong admin tokens from one address")),
    (431, c("headers_too_large", "the request's headers are larger than the server reads")),
    (500, c("internal", "a failure inside one request (logged, not sent)")),
    (503, c("overloaded", "too many requests at once; retry after `Retry-After`")),
    (503, c("timeout", "the request ran past the request timeout")),
    (503, c("shutting_down", "the service is stopping")),
    (503, c("not_ready", "the default policy is not loaded yet")),
    (503, c("policy_unavailable", "no version of that policy passed its checks")),
    (503, c("cache_unavailable", "latest decisions only: Redis is down")),
    (503, c("state_unavailable", "the event state store (Redis) cannot be reached")),
];

/// What the command line's exit code says.
pub const EXIT_CODES: &[(u8, &str)] = &[
    (0, "success"),
    (
        1,
        "the command ran and found a problem: policy errors, a failing test case, accounts answered with an error, moves under `diff --fail-on-moves`, a candidate that does not load",
    ),
    (
        2,
        "usage or unreadable input: a bad flag, a file that cannot be read, a malformed `--as-of` or `--columns` file, CSV without an `id` column",
    ),
];

fn table(out: &mut String, list: &[Code]) {
    out.push_str("| code | what |\n|---|---|\n");
    for x in list {
        out.push_str(&format!("| `{}` | {} |\n", x.code, x.what.replace('|', "\\|")));
    }
}

/// `docs/codes.md`.
pub fn markdown() -> String {
    let mut out = String::from(
        "# Codes: errors, warnings, reasons, exit codes\n\n\
         <!-- Generated from src/codes.rs by `cargo run -- schema`; do not edit. -->\n\n\
         Every code here is stable: tools, tests and test cases may match on it.\n\n",
    );
    out.push_str("## Policy load errors\n\n`tierwise check` prints them as `file:line:column (rule): error[code]: message`, paths relative to the policy folder; a policy with any of them does not load.\n\n");
    table(&mut out, LOAD_ERRORS);
    out.push_str("\n## Warnings (`tierwise check`, `tierwise test`, the `diff` header)\n\nThe policy loads; the rule cannot do what it says.\n\n");
    table(&mut out, LINTS);
    out.push_str("\n## Notes (`tierwise check`)\n\n");
    table(&mut out, NOTES);
    out.push_str("\n## Account errors\n\nAn account answered with `{id, error: {code, message, field, rule, place, record}}`; in a test case, `expect = { error = \"code\" }`.\n\n");
    table(&mut out, ACCOUNT_ERRORS);
    out.push_str("\n## Reasons\n\nEach decision's `reasons` (`{code, message}`); in a test case, `expect = { reasons = [\"code\", ...] }` (codes that must be present).\n\n");
    table(&mut out, REASONS);
    out.push_str("\n## HTTP errors\n\nThe body is `{code, message, details}`.\n\n| status | code | what |\n|---|---|---|\n");
    for (status, x) in HTTP {
        out.push_str(&format!("| {status} | `{}` | {} |\n", x.code, x.what.replace('|', "\\|")));
    }
    out.push_str("\n## Exit codes\n\n| code | what |\n|---|---|\n");
    for (n, what) in EXIT_CODES {
        out.push_str(&format!("| {n} | {what} |\n"));
    }
    out
}
