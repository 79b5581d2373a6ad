//! `tierwise serve` against hostile or unlucky clients (hardening items 10 and 11): SIGTERM
//! during a large answer, clients that stop reading, dribble headers or bodies, or open too
//! many connections. Each test runs the real binary with short timeouts set by flags.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use serde_json::{Value, json};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Running {
    child: Child,
    addr: String,
    stderr: mpsc::Receiver<String>,
    _tmp: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn sigterm(&self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    }

    /// Waits for the exit; panics if it takes longer than `bound`.
    fn exit_within(&mut self, bound: Duration) -> (ExitStatus, Duration) {
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return (s, t.elapsed());
            }
            assert!(t.elapsed() < bound, "still running {bound:?} after SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Policies: the shipped ones, plus `slow` (a criterion that spins) for answers that take a while.
// The child is waited for in `Running::drop`, which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn start(flags: &[&str]) -> Running {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policies");
    common::copy_dir(&common::root().join("policies"), &dir);
    let toml = "[policy]\nversion = \"slow\"\n[inputs]\nx = { type = \"number\" }\n[[score.criteria]]\nid = \"spin\"\nweight = 1.0\nscript = \"spin\"\n[[tiers]]\nid = \"a\"\nlabel = \"A\"\nmin_score = 5.0\n[[tiers]]\nid = \"b\"\nlabel = \"B\"\n";
    std::fs::create_dir_all(dir.join("slow/scripts")).unwrap();
    std::fs::write(dir.join("slow/policy.toml"), toml).unwrap();
    std::fs::write(
        dir.join("slow/scripts/spin.rhai"),
        "fn spin(a) { let i = 0; while i < 20000 { i += 1; } a.x }",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tierwise"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-watch",
            "--decision-log",
            "off",
            "--default-policy",
            "enterprise",
        ])
        .arg("--policies")
        .arg(&dir)
        .args(flags)
        .env_remove("TIERWISE_ADMIN_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (addr, stderr) = common::listening(&mut child);
    Running { child, addr, stderr, _tmp: tmp }
}

fn account(i: usize) -> Value {
    json!({ "id": format!("a{i}"), "as_of": "2026-11-01", "fields": { "revenue_12m": 1000.0 * i as f64, "potential": 500.0 * i as f64, "gross_margin": 0.3, "relationship": "strategic", "strategic_fit": 3 } })
}

fn post_bytes(path: &str, addr: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// An answer read to EOF and checked: a status line, headers, and a body of exactly the
/// declared length (a truncated answer fails here).
struct Answer {
    status: u16,
    head: String,
    body: Value,
}

fn read_answer(s: &mut TcpStream) -> Answer {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete head in {} bytes", raw.len()));
    let head = String::from_utf8(raw[..at].to_vec()).unwrap();
    let body = &raw[at + 4..];
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let declared: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no content-length in {head}"));
    assert_eq!(body.len(), declared, "a truncated answer ({status})");
    Answer { status, head, body: serde_json::from_slice(body).unwrap() }
}

fn request(addr: &str, method: &str, path: &str, body: Option<&Value>) -> Answer {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    read_answer(&mut s)
}

/// True once the server has closed `s` (EOF or reset); `s` must be non-blocking.
fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// (a) SIGTERM while a 10,000-account portfolio is in flight: the answer is a complete 200
/// with every account (or a clean 503); new connections are refused; the exit is 0 and prompt.
#[test]
fn sigterm_during_a_10k_portfolio_answers_it_whole() {
    let mut srv = start(&["--shutdown-grace-ms", "20000"]);
    let body = json!({ "accounts": (0..10_000).map(account).collect::<Vec<_>>() }).to_string();
    let mut s = TcpStream::connect(&srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(post_bytes("/v1/portfolio", &srv.addr, &body).as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(150));
    srv.sigterm();
    let t = Instant::now();
    while TcpStream::connect(&srv.addr).is_ok() {
        assert!(t.elapsed() < Duration::from_secs(2), "still accepting connections after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
    let a = read_answer(&mut s);
    match a.status {
        200 => assert_eq!(
            a.body["accounts"].as_array().map(Vec::len),
            Some(10_000),
            "{}",
            a.body["summary"]
        ),
        503 => assert!(a.body["code"].is_string(), "{}", a.body),
        other => panic!("status {other}: {}", a.body),
    }
    let (status, _) = srv.exit_within(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    let said: Vec<String> = srv.stderr.try_iter().collect();
    assert!(said.iter().any(|l| l.ends_with(" stopped")), "{said:?}");
}

/// (a') The grace period runs out while the portfolio is still computing: a complete 503
/// `shutting_down` with Retry-After, and the exit comes within grace + the margin.
#[test]
fn a_request_outliving_the_grace_period_gets_a_clean_503() {
    let mut srv = start(&["--shutdown-grace-ms", "300"]);
    let accounts: Vec<Value> = (0..10_000)
        .map(|i| json!({ "id": format!("s{i}"), "as_of": "2026-11-01", "fields": { "x": 5.0 } }))
        .collect();
    let body = json!({ "policy": "slow", "accounts": accounts }).to_string();
    let mut s = TcpStream::connect(&srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(post_bytes("/v1/portfolio", &srv.addr, &body).as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    srv.sigterm();
    let a = read_answer(&mut s);
    assert_eq!((a.status, a.body["code"].as_str()), (503, Some("shutting_down")), "{}", a.body);
    assert!(a.head.to_ascii_lowercase().contains("retry-after: 1"), "{}", a.head);
    let (status, took) = srv.exit_within(Duration::from_secs(3));
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_millis(300 + 1000 + 1000), "{took:?}");
}

/// (b) Clients that stop reading, hold an idle keep-alive connection, or dribble do not keep
/// the process past grace + margin; and a stalled write closes its connection by itself.
#[test]
fn stuck_clients_do_not_hold_the_exit() {
    let mut srv = start(&[
        "--shutdown-grace-ms",
        "300",
        "--write-timeout-ms",
        "60000",
        "--header-read-timeout-ms",
        "60000",
    ]);
    // Pipelined requests whose answers (~75 KB each, ~30 MB in all) are never read: the
    // server's writes block once the socket buffers are full.
    let mut deaf = TcpStream::connect(&srv.addr).unwrap();
    let one = format!("GET /openapi.json HTTP/1.1\r\nHost: {}\r\n\r\n", srv.addr);
    deaf.write_all(one.repeat(400).as_bytes()).unwrap();
    let _idle = TcpStream::connect(&srv.addr).unwrap();
    let mut dribbler = TcpStream::connect(&srv.addr).unwrap();
    dribbler.write_all(b"GET /healthz HTTP/1.1\r\nHo").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    srv.sigterm();
    let (status, took) = srv.exit_within(Duration::from_secs(4));
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_millis(300 + 1000 + 1500), "{took:?}");
    let said: Vec<String> = srv.stderr.try_iter().collect();
    assert!(
        said.iter().any(|l| l.contains("connections still open")),
        "the clients were not stuck: {said:?}"
    );
}

/// (b') Without SIGTERM, a client that stops reading loses its connection after the write
/// timeout: with room for one connection, the next client is served once it is gone.
#[test]
fn a_client_that_stops_reading_is_closed_by_the_write_timeout() {
    let srv = start(&["--max-connections", "1", "--write-timeout-ms", "300"]);
    let mut deaf = TcpStream::connect(&srv.addr).unwrap();
    let one = format!("GET /openapi.json HTTP/1.1\r\nHost: {}\r\n\r\n", srv.addr);
    deaf.write_all(one.repeat(400).as_bytes()).unwrap();
    let t = Instant::now();
    loop {
        let mut s = TcpStream::connect(&srv.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(
            format!("GET /healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", srv.addr)
                .as_bytes(),
        );
        let mut raw = String::new();
        let _ = s.read_to_string(&mut raw);
        if raw.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(raw.is_empty() || raw.starts_with("HTTP/1.1 503"), "{raw}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the deaf client still holds the only connection"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "served before the write timeout: was the client really stuck? ({:?})",
        t.elapsed()
    );
}

/// (c) 200 connections dribbling headers are closed after the header timeout, while a normal
/// client's requests keep being answered quickly.
#[test]
fn header_dribblers_are_closed_and_normal_traffic_goes_on() {
    let srv = start(&["--header-read-timeout-ms", "1000"]);
    let mut slow: Vec<TcpStream> = (0..200)
        .map(|_| {
            let s = TcpStream::connect(&srv.addr).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let opened = Instant::now();
    let head = b"POST /v1/evaluate HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let addr = srv.addr.clone();
    let normal = std::thread::spawn(move || {
        let body = json!({ "accounts": [account(1)] });
        let mut worst = Duration::ZERO;
        let t = Instant::now();
        let mut n = 0;
        while t.elapsed() < Duration::from_millis(1800) {
            let one = Instant::now();
            let a = request(&addr, "POST", "/v1/evaluate", Some(&body));
            assert_eq!(a.status, 200, "{}", a.body);
            worst = worst.max(one.elapsed());
            n += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        (n, worst)
    });
    let mut open: Vec<usize> = (0..slow.len()).collect();
    let mut sent = 0;
    while !open.is_empty() && opened.elapsed() < Duration::from_secs(4) {
        // One more byte each, every 100 ms: they are active, only too slow.
        open.retain(|&i| {
            let s = &mut slow[i];
            if closed(s) {
                return false;
            }
            !matches!(s.write(&head[sent % head.len()..sent % head.len() + 1]), Err(e) if e.kind() != ErrorKind::WouldBlock)
        });
        sent += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = opened.elapsed();
    assert!(open.is_empty(), "{} dribblers still open after {took:?}", open.len());
    assert!(took >= Duration::from_millis(900), "closed before the header timeout ({took:?})");
    let (n, worst) = normal.join().unwrap();
    assert!(n >= 10, "only {n} normal requests");
    assert!(worst < Duration::from_millis(1000), "a normal request took {worst:?}");
}

/// (d) A body dribbled slower than the body timeout gets 408 `body_timeout`, and the
/// connection is closed.
#[test]
fn a_dribbled_body_gets_408() {
    let srv = start(&["--body-read-timeout-ms", "400"]);
    let mut s = TcpStream::connect(&srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let body = json!({ "accounts": [account(1)] }).to_string();
    write!(s, "POST /v1/evaluate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len()).unwrap();
    let t = Instant::now();
    s.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    for b in body.as_bytes() {
        let _ = s.write(&[*b]);
        std::thread::sleep(Duration::from_millis(50));
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
        if got.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(3), "no answer to a dribbled body");
    }
    s.set_nonblocking(false).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    got.extend(rest);
    let text = String::from_utf8_lossy(&got).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no answer: {text:?}"));
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["code"], "body_timeout", "{v}");
    assert!(v["message"].as_str().unwrap().contains("400 ms"), "{v}");
    assert_eq!(v["details"]["timeout_ms"], 400);
    assert!(t.elapsed() >= Duration::from_millis(350), "{:?}", t.elapsed());
}

/// (e) Connections over the cap get a quick 503 (or are closed), and the server stays healthy.
#[test]
fn connections_over_the_cap_are_refused_quickly() {
    let srv = start(&["--max-connections", "20", "--header-read-timeout-ms", "30000"]);
    let held: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(&srv.addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..5 {
        let t = Instant::now();
        let mut s = TcpStream::connect(&srv.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut raw = String::new();
        let _ = s.read_to_string(&mut raw);
        assert!(t.elapsed() < Duration::from_millis(500), "took {:?}", t.elapsed());
        assert!(raw.starts_with("HTTP/1.1 503"), "{raw:?}");
        assert!(raw.to_ascii_lowercase().contains("retry-after: 1"), "{raw}");
        let v: Value = serde_json::from_str(raw.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(v["code"], "overloaded");
    }
    drop(held);
    let t = Instant::now();
    loop {
        let mut s = TcpStream::connect(&srv.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut raw = String::new();
        let _ = s.read_to_string(&mut raw);
        if raw.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "not serving after the held connections closed: {raw:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(request(&srv.addr, "GET", "/readyz", None).status, 200);
}

/// (d') Clients dribbling bodies do not hold the `/v1` concurrency permits: with room for 2
/// requests at once and 20 dribblers, normal requests are still answered 200.
#[test]
fn body_dribblers_do_not_starve_the_concurrency_limit() {
    let srv = start(&["--max-concurrent", "2", "--body-read-timeout-ms", "3000"]);
    let slow: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(&srv.addr).unwrap();
            s.write_all(b"POST /v1/evaluate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"acc").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let body = json!({ "accounts": [account(1)] });
    for _ in 0..10 {
        let a = request(&srv.addr, "POST", "/v1/evaluate", Some(&body));
        assert_eq!(a.status, 200, "{}", a.body);
    }
    drop(slow);
}
