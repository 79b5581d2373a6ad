//! Hostile input against the real service (`tierwise serve` as a process, its own threads
//! and stacks): hostile dry-run candidates (time, memory, sandbox escapes), the request
//! timeout stopping blocking work, deep nesting in every input format, size limits, and a
//! panic becoming a 500. Hardening items 1, 2, 3, 4 and 9; `drill` (ignored, run by
//! `scripts/drill-hostile` on a release build) prints the figures with pass/fail lines.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "../examples/gen_portfolio.rs"]
#[allow(dead_code)]
mod gen_portfolio;
#[path = "common/live.rs"]
mod live;

use live::*;
use serde_json::{Value, json};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Tests that start a server and load both cores take turns.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

/// The sandbox's limit codes: a refusal must name one.
const LIMITS: &[&str] = &["time_limit", "operation_limit", "call_depth", "size_limit"];

/// Hostile candidates that try to keep the CPU.
fn time_attacks() -> Vec<(&'static str, String)> {
    vec![
        ("loop {}", "fn hostile(a) { loop { } }\n".into()),
        ("unbounded recursion", "fn hostile(a) { hostile(a) + 1 }\n".into()),
        ("long computation", "fn hostile(a) { let n = 0; for i in 0..1000000 { for j in 0..1000000 { n += i * j; } } n }\n".into()),
        ("while true, no operations counted in between", "fn hostile(a) { let x = 0; while true { x = x; } }\n".into()),
    ]
}

/// Hostile candidates that try to take memory.
fn memory_attacks() -> Vec<(&'static str, String)> {
    let big = "x".repeat(900 * 1024);
    vec![
        ("string doubling", "fn hostile(a) { let s = \"0123456789abcdef\"; loop { s += s; } }\n".into()),
        ("array past its cap", "fn hostile(a) { let v = []; loop { v.push(v.len()); } }\n".into()),
        ("array of big strings", "fn hostile(a) { let s = \"x\"; while s.len() < 60000 { s += s; } let v = []; loop { v.push(s + v.len()); } }\n".into()),
        ("map past its cap by m[k] = v", "fn hostile(a) { let m = #{}; let i = 0; loop { m[\"k\" + i] = i; i += 1; } }\n".into()),
        ("map of big strings by m[k] = v", "fn hostile(a) { let s = \"x\"; while s.len() < 60000 { s += s; } let m = #{}; let i = 0; loop { m[\"k\" + i] = s + i; i += 1; } }\n".into()),
        ("nested arrays of big strings", "fn hostile(a) { let s = \"x\"; while s.len() < 60000 { s += s; } let v = []; loop { v.push([s + v.len()]); } }\n".into()),
        ("string repeat", "fn hostile(a) { let s = \"x\"; let t = s.pad(100000000, \"y\"); t.len() }\n".into()),
        ("huge literal", format!("fn hostile(a) {{ let s = \"{big}\"; s.len() }}\n")),
    ]
}

/// The outcome of one hostile dry run.
struct Refusal {
    name: &'static str,
    status: u16,
    code: String,
    /// The limit (or diagnostic) the answer names.
    named: String,
    message: String,
    took: Duration,
}

fn refusal(name: &'static str, a: &Answer) -> Refusal {
    let v = a.json();
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    // The error code(s) named, and what they say.
    let (named, message) = match (a.status, v["code"].as_str()) {
        (_, Some("candidate_sandbox_limit")) => (
            s(&v["details"]["examples"][0]["error"]["code"]),
            s(&v["details"]["examples"][0]["error"]["message"]),
        ),
        (_, Some("candidate_invalid")) => {
            // A script that does not compile also leaves its criterion's function undefined:
            // the script's own diagnostic is the one that names the problem.
            let d = v["details"]["diagnostics"].as_array().cloned().unwrap_or_default();
            let codes: Vec<String> =
                d.iter().map(|d| s(&d["code"])).filter(|c| c != "unknown_function").collect();
            let messages: Vec<String> = d
                .iter()
                .filter(|d| d["code"] != "unknown_function")
                .map(|d| s(&d["message"]))
                .collect();
            (codes.join(","), messages.join("; "))
        }
        // Accepted, with the accounts the candidate fails and why.
        (200, _) => (
            s(&v["diff"]["newly_failing"][0]["error"]["code"]),
            s(&v["diff"]["newly_failing"][0]["error"]["message"]),
        ),
        _ => (String::new(), s(&v["message"])),
    };
    Refusal { name, status: a.status, code: a.code(), named, message, took: a.took }
}

fn dry_run(addr: &str, script: &str, accounts: &[Value]) -> Answer {
    post(addr, "/v1/dry-run", &dry_run_body(&candidate(script), accounts))
}

/// Each time attack: refused (422 `candidate_sandbox_limit`) naming a limit.
fn run_time_attacks(addr: &str, accounts: &[Value]) -> Vec<Refusal> {
    time_attacks()
        .into_iter()
        .map(|(name, script)| refusal(name, &dry_run(addr, &script, accounts)))
        .collect()
}

fn assert_refused_by_a_limit(r: &Refusal) {
    assert_eq!(
        (r.status, r.code.as_str()),
        (422, "candidate_sandbox_limit"),
        "{}: {}",
        r.name,
        r.message
    );
    assert!(LIMITS.contains(&r.named.as_str()), "{}: names {:?}: {}", r.name, r.named, r.message);
    assert!(r.message.contains("limit"), "{}: {}", r.name, r.message);
}

#[test]
fn hostile_time_candidates_are_refused_fast_naming_the_limit_while_evaluate_keeps_answering() {
    let _t = turn();
    let srv = serve(&[]);
    let accounts = book(200);
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = traffic(&srv.addr, 2, stop.clone());
    for r in run_time_attacks(&srv.addr, &accounts) {
        eprintln!("{}: {} {} ({}) in {:?}", r.name, r.status, r.code, r.named, r.took);
        assert_refused_by_a_limit(&r);
        // 200 ms on a quiet machine in release (the drill); a debug build on shared cores gets more.
        assert!(r.took < Duration::from_secs(2), "{}: {:?}", r.name, r.took);
    }
    stop.store(true, Ordering::Relaxed);
    let (lat, errors) = traffic.join().unwrap();
    assert_eq!(errors, 0, "evaluate failed during the hostile dry runs");
    assert!(!lat.is_empty());
}

/// A served policy whose every account costs ~1 ms: `n` accounts are seconds of CPU.
fn slow_policies() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("slow");
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    let toml = "[policy]\nversion = \"slow\"\n[inputs]\nx = { type = \"number\" }\n[[score.criteria]]\nid = \"spin\"\nweight = 1.0\nscript = \"spin\"\n[[tiers]]\nid = \"a\"\nlabel = \"A\"\nmin_score = 5.0\n[[tiers]]\nid = \"b\"\nlabel = \"B\"\n";
    std::fs::write(dir.join("policy.toml"), toml).unwrap();
    std::fs::write(
        dir.join("scripts/spin.rhai"),
        "fn spin(a) { let i = 0; while i < 12000 { i += 1; } a.x }",
    )
    .unwrap();
    tmp
}

fn slow_book(n: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({ "accounts": (0..n).map(|i| json!({ "id": format!("s{i}"), "as_of": "2026-11-01", "fields": { "x": 5.0 } })).collect::<Vec<_>>() })).unwrap()
}

/// The request timeout stops the work itself, not only the answer: after the 503 the
/// process is idle again within a few milliseconds, for evaluate and portfolio alike.
#[test]
fn a_request_timeout_stops_the_blocking_work_of_evaluate_and_portfolio() {
    let _t = turn();
    let tmp = slow_policies();
    let srv = serve_with(tmp.path(), &["--request-timeout-ms", "300"]);
    let body = slow_book(6000);
    for path in ["/v1/portfolio", "/v1/evaluate"] {
        let a = post(&srv.addr, path, &body);
        assert_eq!((a.status, a.code().as_str()), (503, "timeout"), "{path}: {}", a.text());
        assert!(a.took < Duration::from_secs(2), "{path}: {:?}", a.took);
        // Let the work notice its deadline (it checks every 256 operations), then measure.
        std::thread::sleep(Duration::from_millis(100));
        let cpu = srv.cpu();
        std::thread::sleep(Duration::from_millis(1000));
        let spent = srv.cpu().saturating_sub(cpu);
        eprintln!("{path}: 503 after {:?}; CPU in the next second: {spent:?}", a.took);
        // Without the budget: ~3 s of CPU on both cores after the answer.
        assert!(
            spent < Duration::from_millis(250),
            "{path}: the work went on after the timeout: {spent:?} of CPU"
        );
    }
    // Under the timeout, the same policy answers.
    let a = post(&srv.addr, "/v1/evaluate", &slow_book(3));
    assert_eq!(a.status, 200, "{}", a.text());
}

/// One memory attack at a time, then `together` at once: how much the peak RSS grew.
fn memory_growth(srv: &Live, accounts: &[Value], together: usize) -> (u64, Vec<Refusal>) {
    let before = srv.status_kb("VmHWM");
    let mut out = Vec::new();
    for (name, script) in memory_attacks() {
        let bodies: Vec<Vec<u8>> =
            (0..together).map(|_| dry_run_body(&candidate(&script), accounts)).collect();
        let threads: Vec<_> = bodies
            .into_iter()
            .map(|b| {
                let addr = srv.addr.clone();
                std::thread::spawn(move || post(&addr, "/v1/dry-run", &b))
            })
            .collect();
        for t in threads {
            out.push(refusal(name, &t.join().unwrap()));
        }
    }
    (srv.status_kb("VmHWM").saturating_sub(before), out)
}

fn assert_memory_refusal(r: &Refusal) {
    match r.code.as_str() {
        "candidate_sandbox_limit" => {
            assert!(LIMITS.contains(&r.named.as_str()), "{}: {}", r.name, r.message)
        }
        // Caught when compiling (a literal over the string size limit).
        "candidate_invalid" => assert!(!r.message.is_empty(), "{}", r.name),
        // More than DRY_RUNS_AT_ONCE at once.
        "overloaded" => assert_eq!(r.status, 503),
        other => panic!("{}: answered {} {other}: {}", r.name, r.status, r.message),
    }
}

#[test]
fn hostile_memory_candidates_are_refused_and_the_rss_stays_bounded() {
    let _t = turn();
    let srv = serve(&[]);
    let accounts = book(50);
    // Warm up (thread pools, allocator arenas) so the peak measures the attacks.
    for _ in 0..2 {
        assert_eq!(dry_run(&srv.addr, "fn hostile(a) { 1 }", &accounts).status, 200);
    }
    let (one, refusals) = memory_growth(&srv, &accounts, 1);
    for r in &refusals {
        eprintln!("{}: {} {} ({}) in {:?}", r.name, r.status, r.code, r.named, r.took);
        assert_memory_refusal(r);
    }
    eprintln!("peak RSS growth, one at a time: {} KiB", one);
    assert!(one <= 64 * 1024, "one hostile request grew the peak RSS by {one} KiB");
    let (sixteen, refusals) = memory_growth(&srv, &accounts, 16);
    refusals.iter().for_each(assert_memory_refusal);
    eprintln!("peak RSS growth, 16 at once: {} KiB", sixteen);
    assert!(
        one + sixteen <= 256 * 1024,
        "16 hostile requests grew the peak RSS by {} KiB",
        one + sixteen
    );
}

/// Sandbox escapes: each is a clear error, the canary file outside the candidate is never
/// opened (an inotify watch on it sees every open, root or not), and stderr stays short.
fn escapes(canary: &std::path::Path) -> Vec<(&'static str, String)> {
    let abs = canary.with_extension("").display().to_string();
    let up = format!("{}{}", "../".repeat(12), abs.trim_start_matches('/'));
    let flood = "print(\"x\");\n".repeat(20_000);
    vec![
        ("import of an absolute path", format!("fn hostile(a) {{ import \"{abs}\" as c; 1 }}\n")),
        ("import with ..", format!("fn hostile(a) {{ import \"{up}\" as c; 1 }}\n")),
        ("top-level import with ..", format!("import \"{up}\" as c;\nfn hostile(a) {{ 1 }}\n")),
        ("eval", "fn hostile(a) { eval(\"1 + 1\") }\n".into()),
        ("print flood", format!("fn hostile(a) {{\n{flood} 1 }}\n")),
        ("debug", "fn hostile(a) { debug(\"x\"); 1 }\n".into()),
        ("undefined function", "fn hostile(a) { launch_missiles(a) }\n".into()),
    ]
}

#[derive(Default)]
struct EscapeReport {
    answers: Vec<Refusal>,
    canary_opened: bool,
    stderr_lines: usize,
    longest_line: usize,
}

fn run_escapes(srv: &Live, accounts: &[Value], rounds: usize) -> EscapeReport {
    use notify::{EventKind, RecursiveMode, Watcher};
    let dir = tempfile::tempdir().unwrap();
    let canary = dir.path().join("canary.rhai");
    std::fs::write(&canary, "fn hostile(a) { 1 }\n").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(tx).unwrap();
    watcher.watch(&canary, RecursiveMode::NonRecursive).unwrap();
    srv.drain_stderr();
    let mut report = EscapeReport::default();
    for round in 0..rounds {
        for (name, script) in escapes(&canary) {
            let a = dry_run(&srv.addr, &script, accounts);
            if round == 0 {
                report.answers.push(refusal(name, &a));
            }
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let opened = |rx: &std::sync::mpsc::Receiver<notify::Result<notify::Event>>| {
        rx.try_iter().filter_map(Result::ok).any(|e| matches!(e.kind, EventKind::Access(_)))
    };
    report.canary_opened = opened(&rx);
    // The watch does see opens: reading the canary ourselves is noticed.
    let _ = std::fs::read(&canary).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        opened(&rx),
        "the inotify watch did not see an open of the canary: the check proves nothing"
    );
    // One access line per request is the log working as configured (`tierwise::access`);
    // what must not grow with hostile requests is everything else.
    let lines: Vec<String> =
        srv.drain_stderr().into_iter().filter(|l| !l.contains("tierwise::access")).collect();
    report.stderr_lines = lines.len();
    report.longest_line = lines.iter().map(String::len).max().unwrap_or(0);
    report
}

/// Refused when compiled (422 `candidate_invalid` naming the problem), or, for a call rhai
/// can only resolve at run time, accepted with every account failing on it (`script_error`).
fn escape_answered(a: &Refusal) -> bool {
    match a.code.as_str() {
        "candidate_invalid" => a.status == 422 && !a.named.is_empty(),
        "" => a.status == 200 && a.named == "script_error",
        _ => false,
    }
}

#[test]
fn sandbox_escapes_are_clear_errors_and_never_read_the_canary() {
    let _t = turn();
    let srv = serve(&[]);
    let accounts = book(20);
    let r = run_escapes(&srv, &accounts, 3);
    for a in &r.answers {
        eprintln!(
            "{}: {} {} ({}): {}",
            a.name,
            a.status,
            a.code,
            a.named,
            a.message.chars().take(160).collect::<String>()
        );
        assert!(
            escape_answered(a),
            "{}: {} {} ({}) {}",
            a.name,
            a.status,
            a.code,
            a.named,
            a.message
        );
        assert!(a.message.len() < 2000, "{}: a message of {} bytes", a.name, a.message.len());
    }
    let msg = |name: &str| r.answers.iter().find(|a| a.name == name).unwrap().message.clone();
    assert!(
        msg("import of an absolute path").contains("absolute path"),
        "{}",
        msg("import of an absolute path")
    );
    assert!(msg("import with ..").contains("`..`"), "{}", msg("import with .."));
    assert!(msg("undefined function").contains("launch_missiles"), "{}", msg("undefined function"));
    assert!(!r.canary_opened, "the service opened the canary");
    eprintln!("stderr: {} lines, longest {} bytes", r.stderr_lines, r.longest_line);
    assert!(
        r.stderr_lines <= 3,
        "stderr grew by {} lines for {} hostile requests",
        r.stderr_lines,
        3 * r.answers.len()
    );
}

const DEEP: usize = 100_000;

/// Deeply nested inputs over HTTP: JSON bodies (decided on an async worker thread when
/// small, on a blocking thread when big), and candidate files (rhai, TOML) compiled on a
/// blocking thread. Each is a 4xx or an account's error, and the process lives on.
fn nested_requests() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let arrays = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let objects = |n: usize| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n));
    let in_field = |deep: String| {
        format!(
            "{{\"accounts\":[{{\"id\":\"d\",\"as_of\":\"2026-11-01\",\"fields\":{{\"revenue_12m\":{deep}}}}}]}}"
        )
    };
    let enterprise = |extra: &str| {
        let mut c = candidate("fn hostile(a) { 1 }\n");
        let toml = c["files"]["policy.toml"].as_str().unwrap().to_string();
        c["files"]["policy.toml"] = json!(format!("{toml}\n{extra}\n"));
        serde_json::to_vec(&json!({ "candidate": c, "accounts": [] })).unwrap()
    };
    vec![
        // ≤ 16 KiB: parsed on the async worker thread.
        (
            "JSON arrays, 7,000 deep (worker thread)",
            "/v1/evaluate",
            format!("{{\"accounts\":[{}]}}", arrays(7_000)).into_bytes(),
        ),
        (
            "JSON objects in a field, 2,500 deep (worker thread)",
            "/v1/evaluate",
            in_field(objects(2_500)).into_bytes(),
        ),
        (
            "JSON arrays, 100,000 deep",
            "/v1/evaluate",
            format!("{{\"accounts\":[{}]}}", arrays(DEEP)).into_bytes(),
        ),
        (
            "JSON objects in a field, 100,000 deep",
            "/v1/portfolio",
            in_field(objects(DEEP)).into_bytes(),
        ),
        ("JSON body, 100,000 deep", "/v1/evaluate", arrays(DEEP).into_bytes()),
        (
            "JSON override value, 100,000 deep",
            "/v1/dry-run",
            format!(
                "{{\"accounts\":[],\"overrides\":{{\"tiers.key.min_score\":{}}}}}",
                arrays(DEEP)
            )
            .into_bytes(),
        ),
        (
            "rhai, 100,000 nested parentheses",
            "/v1/dry-run",
            dry_run_body(
                &candidate(&format!(
                    "fn hostile(a) {{ {}1{} }}\n",
                    "(".repeat(DEEP),
                    ")".repeat(DEEP)
                )),
                &[],
            ),
        ),
        (
            "rhai, 100,000 nested blocks",
            "/v1/dry-run",
            dry_run_body(
                &candidate(&format!(
                    "fn hostile(a) {{ {}1{} }}\n",
                    "{".repeat(DEEP),
                    "}".repeat(DEEP)
                )),
                &[],
            ),
        ),
        (
            "rhai, 100,000 nested arrays",
            "/v1/dry-run",
            dry_run_body(
                &candidate(&format!(
                    "fn hostile(a) {{ {}1{} }}\n",
                    "[".repeat(DEEP),
                    "]".repeat(DEEP)
                )),
                &[],
            ),
        ),
        (
            "TOML arrays, 100,000 deep",
            "/v1/dry-run",
            enterprise(&format!("deep = {}", arrays(DEEP))),
        ),
        (
            "TOML inline tables, 100,000 deep",
            "/v1/dry-run",
            enterprise(&format!("deep = {}1{}", "{ a = ".repeat(DEEP), " }".repeat(DEEP))),
        ),
    ]
}

#[test]
fn deep_nesting_over_http_is_a_4xx_or_an_account_error_never_a_crash() {
    let _t = turn();
    let mut srv = serve(&[]);
    for (name, path, body) in nested_requests() {
        let a = post(&srv.addr, path, &body);
        eprintln!("{name}: {} {} in {:?}", a.status, a.code(), a.took);
        assert!(srv.alive(), "{name}: the process died");
        let ok = (400..500).contains(&a.status)
            || (a.status == 200 && a.json()["accounts"][0]["error"]["code"].is_string());
        assert!(ok, "{name}: {} {}", a.status, a.text());
    }
    assert_eq!(get(&srv.addr, "/healthz").status, 200);
}

/// The command line on JSON lines and CSV nested 100,000 deep: a diagnostic and exit 1 or 2,
/// never a signal (a stack overflow aborts the process).
#[test]
fn deep_nesting_on_the_command_line_is_a_diagnostic() {
    let dir = tempfile::tempdir().unwrap();
    let deep = format!("{}{}", "[".repeat(DEEP), "]".repeat(DEEP));
    let files = [
        (
            "deep.jsonl",
            format!(
                "{deep}\n{{\"id\":\"x\",\"as_of\":\"2026-11-01\",\"fields\":{{\"revenue_12m\":{deep}}}}}\n"
            ),
        ),
        ("deep.json", deep.clone()),
        (
            "deep.csv",
            format!(
                "id,as_of,revenue_12m,relationship\nx,2026-11-01,\"{deep}\",\"{}\"\n",
                "{".repeat(DEEP)
            ),
        ),
    ];
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tierwise"))
            .args(["eval", "--policy"])
            .arg(common::root().join("policies/enterprise"))
            .arg("--accounts")
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!("{name}: {:?}: {}", out.status, err.lines().next().unwrap_or(""));
        assert!(matches!(out.status.code(), Some(1 | 2)), "{name}: {:?}\n{err}", out.status);
        assert!(!err.contains("overflow") || err.contains("error"), "{name}: {err}");
    }
}

/// Size limits: a declared length over the limit, a chunked body without one, too many
/// accounts, too many candidate files: 413 at once, and the peak RSS grows by less than
/// twice the body limit.
fn size_limit_requests(
    srv: &Live,
    limit: usize,
) -> Vec<(&'static str, u16, String, Duration, u64)> {
    let addr = &srv.addr[..];
    let mut out = Vec::new();
    // Declared too big: answered before the body is sent.
    let rss0 = srv.reset_peak();
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "POST /v1/evaluate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", limit + 1).unwrap();
    let (status, body) = read_answer(&mut std::io::BufReader::new(s)).unwrap();
    out.push((
        "Content-Length: limit + 1",
        status,
        code_of(&body),
        t.elapsed(),
        srv.status_kb("VmHWM").saturating_sub(rss0),
    ));

    // Chunked, no length, one byte over.
    let rss0 = srv.reset_peak();
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "POST /v1/portfolio HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
    let chunk = vec![b' '; 64 * 1024];
    let mut sent = 0;
    while sent <= limit {
        let n = chunk.len().min(limit + 1 - sent).max(1);
        if write!(s, "{n:x}\r\n")
            .and_then(|_| s.write_all(&chunk[..n]))
            .and_then(|_| s.write_all(b"\r\n"))
            .is_err()
        {
            break;
        }
        sent += n;
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let (status, body) = read_answer(&mut std::io::BufReader::new(s)).unwrap();
    out.push((
        "chunked, limit + 1 bytes",
        status,
        code_of(&body),
        t.elapsed(),
        srv.status_kb("VmHWM").saturating_sub(rss0),
    ));

    // Accounts: far more than the cap, each tiny (a body just under the byte limit).
    let n = (limit - 64) / 3;
    let mut body = b"{\"accounts\":[".to_vec();
    for i in 0..n {
        body.extend_from_slice(if i == 0 { b"{}" } else { b",{}" });
    }
    body.extend_from_slice(b"]}");
    let rss0 = srv.reset_peak();
    let a = post(addr, "/v1/portfolio", &body);
    out.push((
        "2.8 million tiny accounts",
        a.status,
        a.code(),
        a.took,
        srv.status_kb("VmHWM").saturating_sub(rss0),
    ));

    // Candidate files: one more than allowed.
    let files: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("tests/t{i}.toml"), json!(""))).collect();
    let rss0 = srv.reset_peak();
    let a = post(
        addr,
        "/v1/dry-run",
        &serde_json::to_vec(&json!({ "candidate": { "files": files }, "accounts": [] })).unwrap(),
    );
    out.push((
        "65 candidate files",
        a.status,
        a.code(),
        a.took,
        srv.status_kb("VmHWM").saturating_sub(rss0),
    ));
    out
}

/// Big requests that succeed, so thread pools, their stacks and allocator heaps exist
/// before memory is measured.
fn warm_up(addr: &str) {
    let body = serde_json::to_vec(&json!({ "accounts": book(3000) })).unwrap();
    for _ in 0..3 {
        assert_eq!(post(addr, "/v1/portfolio", &body).status, 200);
        assert_eq!(post(addr, "/v1/evaluate", &body).status, 200);
    }
}

fn code_of(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["code"].as_str().map(String::from))
        .unwrap_or_default()
}

#[test]
fn size_limits_answer_413_at_once_with_bounded_memory() {
    let _t = turn();
    let limit = 8 * 1024 * 1024;
    let srv = serve(&[]);
    warm_up(&srv.addr);
    let mut grew = 0;
    for (name, status, code, took, peak) in size_limit_requests(&srv, limit) {
        eprintln!("{name}: {status} {code} in {took:?}, peak RSS growth {peak} KiB");
        assert_eq!(status, 413, "{name}: {code}");
        assert!(
            ["payload_too_large", "too_many_accounts", "candidate_too_large"]
                .contains(&code.as_str()),
            "{name}: {code}"
        );
        assert!(took < Duration::from_secs(2), "{name}: {took:?}");
        grew = grew.max(peak);
    }
    eprintln!("largest peak RSS growth of one request: {grew} KiB (limit {} KiB)", limit / 1024);
    // Per request: the peak is reset before each one, so memory the allocator kept from an
    // earlier request on another thread does not count against it. The drill's (release)
    // line is the issue's 2x; here, in debug beside other tests, 6-14 MiB were seen: 3x keeps
    // the test from flaking and still fails if a request held its body twice.
    assert!(grew * 1024 <= 3 * limit as u64, "one request's peak RSS grew by {grew} KiB");
}

/// Accounts over `--max-accounts` are 413 `too_many_accounts`, on every route that takes a book.
#[test]
fn accounts_over_the_flag_are_refused() {
    let srv = serve(&["--max-accounts", "10"]);
    let eleven = serde_json::to_vec(&json!({ "accounts": book(11) })).unwrap();
    let ten = serde_json::to_vec(&json!({ "accounts": book(10) })).unwrap();
    for path in ["/v1/evaluate", "/v1/portfolio"] {
        let a = post(&srv.addr, path, &eleven);
        assert_eq!(
            (a.status, a.code().as_str()),
            (413, "too_many_accounts"),
            "{path}: {}",
            a.text()
        );
        assert_eq!(a.json()["details"]["limit_accounts"], 10);
        assert_eq!(post(&srv.addr, path, &ten).status, 200, "{path}");
    }
    let a = post(
        &srv.addr,
        "/v1/dry-run",
        &serde_json::to_vec(&json!({ "overrides": {}, "accounts": book(11) })).unwrap(),
    );
    assert_eq!((a.status, a.code().as_str()), (413, "too_many_accounts"), "{}", a.text());
}

/// A panic while answering is that request's 500 `internal` (the JSON error shape), counted
/// in the metrics, and the server answers the next request: through the real layers
/// (`http::with_layers`) around routes that panic, directly or in a blocking task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_a_500_and_the_server_keeps_answering() {
    use axum::body::Body;
    use axum::http::Request;
    use axum::routing::get;
    use tower::ServiceExt;
    let service = Arc::new(tierwise::service::Service::new(
        common::root().join("policies"),
        tierwise::script::Limits::default(),
        None,
    ));
    let app = tierwise::http::App::new(
        service,
        tierwise::http::Config::default(),
        tierwise::decision_log::DecisionLog::off(),
    );
    let routes = axum::Router::new()
        .route("/boom", get(boom))
        .route(
            "/boom-blocking",
            get(|| async {
                match tokio::task::spawn_blocking(|| panic!("blocking boom")).await {
                    Ok(()) => "fine",
                    Err(e) => std::panic::resume_unwind(e.into_panic()),
                }
            }),
        )
        .route("/fine", get(|| async { "fine" }));
    let router = tierwise::http::with_layers(routes, app.clone());
    for path in ["/boom", "/boom-blocking", "/boom"] {
        let res =
            router.clone().oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(res.status(), 500, "{path}");
        let body = http_body_util::BodyExt::collect(res.into_body()).await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], "internal", "{v}");
        assert!(
            !v["message"].as_str().unwrap().contains("boom"),
            "the panic's text is not for clients: {v}"
        );
    }
    let res =
        router.clone().oneshot(Request::get("/fine").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(res.status(), 200);
    let text = app.metrics.render(&app.service, &app.cache.stats(), 0, 0);
    assert!(text.contains("tierwise_http_errors_total{code=\"internal\"} 3"), "{text}");
}

async fn boom() -> &'static str {
    panic!("boom")
}

/// Release builds keep panics catchable: `panic = "abort"` would turn the 500 above into
/// the death of the process.
#[test]
fn panics_unwind_in_every_profile() {
    const { assert!(cfg!(panic = "unwind"), "this build aborts on panic") };
    let manifest: toml::Table =
        std::fs::read_to_string(common::root().join("Cargo.toml")).unwrap().parse().unwrap();
    let profiles = manifest.get("profile").and_then(|p| p.as_table()).cloned().unwrap_or_default();
    for (name, p) in &profiles {
        assert_ne!(
            p.get("panic").and_then(|v| v.as_str()),
            Some("abort"),
            "profile `{name}` sets panic = \"abort\""
        );
    }
}

// ---------------------------------------------------------------------------------------
// The drill: `scripts/drill-hostile` runs this on a release build and prints the figures.

struct Line {
    what: String,
    pass: bool,
}

fn line(lines: &mut Vec<Line>, pass: bool, what: String) {
    println!("  [{}] {what}", if pass { "pass" } else { "FAIL" });
    lines.push(Line { what, pass });
}

#[test]
#[ignore = "the drill: scripts/drill-hostile runs it on a release build"]
fn drill() {
    let mut lines = Vec::new();
    let accounts = book(300);

    println!("\n== item 1: hostile dry-run candidates (time), {} accounts each", accounts.len());
    let srv = serve(&[]);
    let base = {
        let stop = Arc::new(AtomicBool::new(false));
        let t = traffic(&srv.addr, 2, stop.clone());
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let during_t = traffic(&srv.addr, 2, stop.clone());
    let t0 = Instant::now();
    let mut refusals = Vec::new();
    while t0.elapsed() < Duration::from_secs(3) {
        refusals.extend(run_time_attacks(&srv.addr, &accounts));
    }
    stop.store(true, Ordering::Relaxed);
    let during = during_t.join().unwrap();
    for (name, _) in time_attacks() {
        let mine: Vec<&Refusal> = refusals.iter().filter(|r| r.name == name).collect();
        let mut took: Vec<Duration> = mine.iter().map(|r| r.took).collect();
        took.sort();
        let r = mine[0];
        let all_refused = mine.iter().all(|r| {
            r.status == 422
                && r.code == "candidate_sandbox_limit"
                && LIMITS.contains(&r.named.as_str())
        });
        let worst = took.last().copied().unwrap_or_default();
        line(
            &mut lines,
            all_refused && worst <= Duration::from_millis(200),
            format!(
                "{name}: {} {} naming `{}` ({}), {} runs, refusal p50 {:.1} ms, max {:.1} ms (pass: <= 200 ms)",
                r.status,
                r.code,
                r.named,
                r.message,
                mine.len(),
                pct(&took, 0.5).as_secs_f64() * 1e3,
                worst.as_secs_f64() * 1e3
            ),
        );
    }
    let (b50, b99) = (pct(&base.0, 0.5), pct(&base.0, 0.99));
    let (d50, d99) = (pct(&during.0, 0.5), pct(&during.0, 0.99));
    println!(
        "  evaluate baseline: {} requests, p50 {:.2} ms, p99 {:.2} ms, {} errors",
        base.0.len(),
        b50.as_secs_f64() * 1e3,
        b99.as_secs_f64() * 1e3,
        base.1
    );
    println!(
        "  evaluate during hostile dry runs: {} requests, p50 {:.2} ms, p99 {:.2} ms",
        during.0.len(),
        d50.as_secs_f64() * 1e3,
        d99.as_secs_f64() * 1e3
    );
    line(
        &mut lines,
        during.1 == 0,
        format!("evaluate errors during hostile dry runs: {} (pass: 0)", during.1),
    );
    line(
        &mut lines,
        d99 <= b99 * 2,
        format!(
            "evaluate p99 during / baseline: {:.2} / {:.2} ms = {:.2}x (pass: <= 2x)",
            d99.as_secs_f64() * 1e3,
            b99.as_secs_f64() * 1e3,
            d99.as_secs_f64() / b99.as_secs_f64().max(1e-9)
        ),
    );
    drop(srv);

    println!(
        "\n== item 1: the request timeout stops blocking work (timeout 300 ms, 6,000 accounts of ~1 ms)"
    );
    let tmp = slow_policies();
    let srv = serve_with(tmp.path(), &["--request-timeout-ms", "300"]);
    for path in ["/v1/portfolio", "/v1/evaluate"] {
        let a = post(&srv.addr, path, &slow_book(6000));
        std::thread::sleep(Duration::from_millis(50));
        let cpu = srv.cpu();
        std::thread::sleep(Duration::from_millis(1000));
        let spent = srv.cpu().saturating_sub(cpu);
        line(
            &mut lines,
            a.status == 503 && spent < Duration::from_millis(100),
            format!(
                "{path}: {} {} after {:.0} ms; CPU used in the next second: {} ms (pass: < 100 ms)",
                a.status,
                a.code(),
                a.took.as_secs_f64() * 1e3,
                spent.as_millis()
            ),
        );
    }
    drop(srv);

    println!("\n== item 2: hostile dry-run candidates (memory), 50 accounts each");
    let srv = serve(&[]);
    let small = book(50);
    for _ in 0..2 {
        let _ = dry_run(&srv.addr, "fn hostile(a) { 1 }", &small);
    }
    let rss0 = srv.status_kb("VmRSS");
    let (one, refusals) = memory_growth(&srv, &small, 1);
    for r in &refusals {
        let ok = matches!(r.code.as_str(), "candidate_sandbox_limit" | "candidate_invalid");
        line(
            &mut lines,
            ok,
            format!(
                "{}: {} {} naming `{}` in {:.1} ms: {}",
                r.name,
                r.status,
                r.code,
                r.named,
                r.took.as_secs_f64() * 1e3,
                r.message.chars().take(120).collect::<String>()
            ),
        );
    }
    line(
        &mut lines,
        one <= 64 * 1024,
        format!(
            "peak RSS growth, one attack at a time: {:.1} MiB (RSS at start {:.1} MiB; pass: <= 64 MiB)",
            one as f64 / 1024.0,
            rss0 as f64 / 1024.0
        ),
    );
    let (sixteen, refusals) = memory_growth(&srv, &small, 16);
    let overloaded = refusals.iter().filter(|r| r.code == "overloaded").count();
    let refused = refusals
        .iter()
        .filter(|r| matches!(r.code.as_str(), "candidate_sandbox_limit" | "candidate_invalid"))
        .count();
    line(
        &mut lines,
        refused + overloaded == refusals.len(),
        format!(
            "16 at once: {refused} refused by the sandbox, {overloaded} overloaded (503), {} other",
            refusals.len() - refused - overloaded
        ),
    );
    line(
        &mut lines,
        one + sixteen <= 256 * 1024,
        format!(
            "peak RSS growth, 16 at once: {:.1} MiB over the start (pass: <= 256 MiB)",
            (one + sixteen) as f64 / 1024.0
        ),
    );
    drop(srv);

    println!("\n== item 3: sandbox escapes (canary watched with inotify)");
    let srv = serve(&[]);
    let r = run_escapes(&srv, &book(20), 20);
    for a in &r.answers {
        line(
            &mut lines,
            escape_answered(a),
            format!(
                "{}: {} {} ({}) in {:.1} ms: {}",
                a.name,
                a.status,
                a.code,
                a.named,
                a.took.as_secs_f64() * 1e3,
                a.message.chars().take(140).collect::<String>()
            ),
        );
    }
    line(&mut lines, !r.canary_opened, format!("canary opened: {} (pass: false)", r.canary_opened));
    line(
        &mut lines,
        r.stderr_lines <= 3,
        format!(
            "stderr after {} hostile requests: {} lines, longest {} bytes (pass: <= 3 lines)",
            20 * r.answers.len(),
            r.stderr_lines,
            r.longest_line
        ),
    );
    drop(srv);

    println!("\n== item 4: deep nesting over HTTP (real server threads)");
    let mut srv = serve(&[]);
    for (name, path, body) in nested_requests() {
        let a = post(&srv.addr, path, &body);
        let ok = ((400..500).contains(&a.status)
            || (a.status == 200 && a.json()["accounts"][0]["error"]["code"].is_string()))
            && srv.alive();
        line(
            &mut lines,
            ok,
            format!("{name}: {} {} in {:.1} ms", a.status, a.code(), a.took.as_secs_f64() * 1e3),
        );
    }
    drop(srv);

    println!("\n== item 9: size limits (body limit 8 MiB, 50,000 accounts, 64 files)");
    let srv = serve(&[]);
    warm_up(&srv.addr);
    let mut grew = 0;
    for (name, status, code, took, peak) in size_limit_requests(&srv, 8 * 1024 * 1024) {
        line(
            &mut lines,
            status == 413 && took < Duration::from_millis(100),
            format!(
                "{name}: {status} {code} in {:.1} ms, peak RSS +{:.1} MiB (pass: 413 within 100 ms)",
                took.as_secs_f64() * 1e3,
                peak as f64 / 1024.0
            ),
        );
        grew = grew.max(peak);
    }
    line(
        &mut lines,
        grew <= 16 * 1024,
        format!(
            "largest peak RSS growth of one request: {:.1} MiB (pass: <= 16 MiB, twice the limit)",
            grew as f64 / 1024.0
        ),
    );
    drop(srv);

    let failed: Vec<&Line> = lines.iter().filter(|l| !l.pass).collect();
    println!("\n== summary (hostile): {} pass, {} fail", lines.len() - failed.len(), failed.len());
    for l in &failed {
        println!("  FAIL: {}", l.what);
    }
    assert!(failed.is_empty(), "{} drill lines failed", failed.len());
}

/// Dry runs are compiled and evaluated on their own threads at `SCHED_IDLE`, so a hostile
/// candidate cannot take the cores from live requests; `--dry-run-priority normal` opts out.
#[test]
fn dry_runs_run_on_idle_priority_threads() {
    // /proc/PID/task/TID/stat: (2) comm in parentheses, then field 41 is the policy (5 = SCHED_IDLE).
    fn dry_run_policies(pid: u32) -> Vec<u32> {
        let mut out = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
            let Some((head, rest)) = stat.rsplit_once(')') else { continue };
            if !head.contains("tierwise-dry-r") {
                continue;
            }
            // After ")": field 3 is the first; the policy is field 41.
            out.push(rest.split_whitespace().nth(41 - 3).unwrap().parse().unwrap());
        }
        out
    }
    for (flag, want) in [("idle", 5), ("normal", 0)] {
        let srv = serve(&["--dry-run-priority", flag]);
        let a = dry_run(&srv.addr, "fn hostile(a) { 5 }\n", &book(5));
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        let policies = dry_run_policies(srv.pid());
        assert!(!policies.is_empty(), "no tierwise-dry-run threads");
        assert!(
            policies.iter().all(|p| *p == want),
            "--dry-run-priority {flag}: scheduling policies {policies:?}, want {want}"
        );
    }
}
