//! `tierwise serve` as a process: listens on a free port, answers, sees an edit on disk within
//! a second, logs decisions to a file, and stops cleanly on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A minimal HTTP/1.1 client: one request per connection.
fn request(addr: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

use common::Running;

// The child is waited for in `Running::drop`, which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn start(policies: &std::path::Path, log: &std::path::Path) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tierwise"))
        // The slow policy's ~1-2 ms accounts must not trip the 50 ms per-account wall clock
        // when the test runs beside others on 2 busy cores (what is tested is the shutdown).
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--reload-debounce-ms",
            "100",
            "--time-per-account-ms",
            "5000",
        ])
        .arg("--policies")
        .arg(policies)
        .arg("--decision-log")
        .arg(log)
        .env_remove("TIERWISE_ADMIN_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (addr, stderr) = common::listening(&mut child);
    Running { child, addr, stderr }
}

#[test]
fn serves_reloads_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policies");
    copy_dir(&root().join("policies"), &dir);
    let log = tmp.path().join("decisions.jsonl");
    let mut srv = start(&dir, &log);
    let addr = srv.addr.clone();

    assert_eq!(request(&addr, "GET", "/healthz", None), (200, json!({ "status": "ok" })));
    assert_eq!(request(&addr, "GET", "/readyz", None).0, 200);
    let acct = json!({ "id": "a1", "as_of": "2026-11-01", "fields": { "revenue_12m": 6_000_000.0, "potential": 4_000_000.0, "gross_margin": 0.4, "relationship": "strategic", "strategic_fit": 5 } });
    let (status, v) = request(&addr, "POST", "/v1/evaluate", Some(&json!({ "accounts": [acct] })));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["accounts"][0]["tier"], "strategic");
    let first_hash = v["policy"]["hash"].clone();
    let (status, v) = request(
        &addr,
        "POST",
        "/v1/portfolio",
        Some(&json!({ "policy": "mid-market", "accounts": [] })),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        request(&addr, "POST", "/v1/policies/reload", None).0,
        404,
        "admin disabled without a token"
    );

    // Edit on disk: served within a second.
    let file = dir.join("enterprise/policy.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replacen("version = \"2026.1\"", "version = \"live\"", 1)).unwrap();
    let t = Instant::now();
    loop {
        let (_, p) = request(&addr, "GET", "/v1/policies/enterprise", None);
        if p["version"] == "live" {
            assert_ne!(p["hash"], first_hash);
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(1), "edit not served after 1 s");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The decision log file has one line per evaluation request.
    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["outcomes"][0]["id"], "a1");
    assert_eq!(lines[1]["level"], "portfolio");

    // SIGTERM: a clean stop.
    let pid = srv.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let t = Instant::now();
    let status = loop {
        if let Some(s) = srv.child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let rest: Vec<String> = srv.stderr.try_iter().collect();
    assert!(rest.iter().any(|l| l.contains("policy `enterprise` applied")), "{rest:?}");
    assert!(rest.iter().any(|l| l.ends_with(" stopped")), "{rest:?}");
}

/// SIGTERM while a request is in flight: the request is still answered, then the process
/// exits 0; new connections are refused meanwhile.
#[test]
fn sigterm_lets_in_flight_requests_finish() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policies");
    let toml = "[policy]\nversion = \"slow\"\n[inputs]\nx = { type = \"number\" }\n[[score.criteria]]\nid = \"spin\"\nweight = 1.0\nscript = \"spin\"\n[[tiers]]\nid = \"a\"\nlabel = \"A\"\nmin_score = 5.0\n[[tiers]]\nid = \"b\"\nlabel = \"B\"\n";
    std::fs::create_dir_all(dir.join("slow/scripts")).unwrap();
    std::fs::write(dir.join("slow/policy.toml"), toml).unwrap();
    std::fs::write(
        dir.join("slow/scripts/spin.rhai"),
        "fn spin(a) { let i = 0; while i < 12000 { i += 1; } a.x }",
    )
    .unwrap();
    let mut srv = start(&dir, &tmp.path().join("log.jsonl"));
    let addr = srv.addr.clone();

    let n = 400; // ~1-2 ms each
    let body = json!({ "accounts": (0..n).map(|i| json!({ "id": format!("s{i}"), "as_of": "2026-11-01", "fields": { "x": 5.0 } })).collect::<Vec<_>>() });
    let a2 = addr.clone();
    let t = Instant::now();
    let inflight = std::thread::spawn(move || request(&a2, "POST", "/v1/portfolio", Some(&body)));
    std::thread::sleep(Duration::from_millis(100));
    let pid = srv.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let (status, v) = inflight.join().unwrap();
    let took = t.elapsed();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["summary"]["account_count"], n, "{}", v["accounts"][0]);
    assert!(
        took > Duration::from_millis(100),
        "the request ended before SIGTERM ({took:?}): make it slower"
    );
    let t = Instant::now();
    let exit = loop {
        if let Some(s) = srv.child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success());
    assert!(TcpStream::connect(&addr).is_err(), "still accepting after shutdown");
}
