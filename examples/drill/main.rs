//! Open-loop load drill for `tierwise serve` (HARDENING items 5, 6 and 13).
//!
//! Requests to `/v1/evaluate` (single accounts and small batches from a JSON-lines book) are
//! sent on a fixed schedule, `--rate` a second, whatever the server does: a request waits
//! for a free connection (at most `--conns`) rather than being skipped, and its latency counts
//! from its *scheduled* time, so a stalled server shows as latency, not as a lower rate.
//! Every answer is checked: a 2xx status, a body that names a policy hash (matching the
//! `x-policy-hash` header), and every decided account of the batch under that same hash.
//!
//! Beside the load, optionally:
//! - `--edit-dir DIR`: policy edits (see `edits.rs`) every `--reload-every-ms`, `--reloads`
//!   of them in all; every hash an answer names must be one the edits made good;
//! - `--dry-run-every S`: a hostile dry run (a candidate whose criterion is `loop {}`);
//! - `--redis-pid PID --redis-port P --faults kill@8,restart@14,stop@22,cont@28`: Redis faults
//!   (SIGKILL, a restart with the same command line, SIGSTOP, SIGCONT) at those seconds,
//!   with `/readyz` and `/metrics` sampled every 100 ms;
//! - `--server-pid PID`: the server's RSS from /proc every second.
//!
//! Each second and window also says how late the drill's own 10 ms ticker woke (`client
//! lag`) and how much of the time some task of the machine waited for a CPU (PSI `cpu
//! pressure`): on a shared machine a stall of the client or of the whole box shows there,
//! apart from the server's latency.
//!
//! Prints a line a second (stderr), one per `--window` (default 60 s), the pass lines of
//! `--pass reload|redis|soak`, and a JSON summary (`--json FILE` too). Exits 1 when a pass
//! line fails.
//!
//!   cargo run --release --example drill -- --url http://127.0.0.1:8080 --rate 500 --duration 30

mod edits;

use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::error::Error;
use std::io::{Read as _, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;
/// The edits made and every hash they made good, or why the edits could not start.
type EditResult = Result<(Vec<edits::Outcome>, Vec<String>), String>;

#[derive(Clone)]
struct Args {
    addr: String,
    rate: f64,
    duration: f64,
    accounts: String,
    batch_share: f64,
    batch_max: usize,
    conns: usize,
    timeout: Duration,
    window: u64,
    json: Option<String>,
    policy: Option<String>,
    server_pid: Option<u32>,
    warmup: u64,
    edit_dir: Option<String>,
    stash: Option<String>,
    reloads: u32,
    reload_every: Duration,
    kinds: Vec<edits::Kind>,
    dry_run_every: f64,
    dry_run_accounts: usize,
    redis_pid: Option<u32>,
    redis_port: Option<u16>,
    faults: Vec<(String, f64)>,
    pass: Option<String>,
    deadline_ms: f64,
    queue_max: u64,
}

fn usage() -> ! {
    eprintln!(
        "usage: drill --url http://HOST:PORT [--rate R] [--duration S] [--accounts FILE.jsonl] [--batch-share F] [--batch-max N]\n  \
         [--conns N] [--timeout-ms MS] [--window S] [--json FILE] [--policy NAME] [--server-pid PID] [--warmup S]\n  \
         [--edit-dir DIR --stash DIR [--reloads N] [--reload-every-ms MS] [--kinds good,syntax,tests,half,emptied,file,symlink]]\n  \
         [--dry-run-every S] [--redis-pid PID --redis-port P --faults kill@8,restart@14,stop@22,cont@28]\n  \
         [--pass reload|redis|soak] [--deadline-ms MS] [--queue-max N]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut m: BTreeMap<String, String> = BTreeMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let Some(k) = k.strip_prefix("--") else { usage() };
        let Some(v) = it.next() else { usage() };
        m.insert(k.to_string(), v);
    }
    fn num<T: std::str::FromStr>(m: &BTreeMap<String, String>, k: &str, d: T) -> T {
        match m.get(k) {
            None => d,
            Some(v) => v.parse().unwrap_or_else(|_| {
                eprintln!("--{k}: not a number: {v}");
                usage()
            }),
        }
    }
    let Some(url) = m.get("url") else { usage() };
    let addr = url.trim_start_matches("http://").trim_end_matches('/').to_string();
    let kinds = m
        .get("kinds")
        .map(|k| {
            k.split(',').map(|s| edits::Kind::parse(s.trim()).unwrap_or_else(|| usage())).collect()
        })
        .unwrap_or_else(|| edits::ALL.to_vec());
    let faults = m
        .get("faults")
        .map(|f| {
            f.split(',')
                .map(|p| {
                    let (what, at) = p.split_once('@').unwrap_or_else(|| usage());
                    (what.to_string(), at.parse().unwrap_or_else(|_| usage()))
                })
                .collect()
        })
        .unwrap_or_default();
    Args {
        addr,
        rate: num(&m, "rate", 500.0),
        duration: num(&m, "duration", 30.0),
        accounts: m.get("accounts").cloned().unwrap_or_else(|| "samples/portfolio.jsonl".into()),
        batch_share: num(&m, "batch-share", 0.2),
        batch_max: num(&m, "batch-max", 20usize).max(2),
        conns: num(&m, "conns", 64usize).max(1),
        timeout: Duration::from_millis(num(&m, "timeout-ms", 5000)),
        window: num(&m, "window", 60u64).max(1),
        json: m.get("json").cloned(),
        policy: m.get("policy").cloned(),
        server_pid: m.get("server-pid").and_then(|p| p.parse().ok()),
        warmup: num(&m, "warmup", 30),
        edit_dir: m.get("edit-dir").cloned(),
        stash: m.get("stash").cloned(),
        reloads: num(&m, "reloads", 200),
        reload_every: Duration::from_millis(num(&m, "reload-every-ms", 0)),
        kinds,
        dry_run_every: num(&m, "dry-run-every", 0.0),
        dry_run_accounts: num(&m, "dry-run-accounts", 200),
        redis_pid: m.get("redis-pid").and_then(|p| p.parse().ok()),
        redis_port: m.get("redis-port").and_then(|p| p.parse().ok()),
        faults,
        pass: m.get("pass").cloned(),
        deadline_ms: num(&m, "deadline-ms", 25.0),
        queue_max: num(&m, "queue-max", 1024),
    }
}

// ---------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client with keep-alive (Content-Length or chunked bodies).

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    close: bool,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: &str) -> Res<Conn> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Conn { s, buf: Vec::with_capacity(8192) })
    }

    /// Sends one request and reads its answer. `Err((e, got_any))`: `got_any` says whether a
    /// byte of the answer arrived (a keep-alive connection closed before that may be retried).
    async fn send(
        &mut self,
        method: &str,
        path: &str,
        host: &str,
        extra: &str,
        body: &[u8],
    ) -> Result<Reply, (Box<dyn Error + Send + Sync>, bool)> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n",
            body.len()
        );
        let mut req = Vec::with_capacity(head.len() + body.len());
        req.extend_from_slice(head.as_bytes());
        req.extend_from_slice(body);
        write_all(&self.s, &req).await.map_err(|e| (e.into(), false))?;
        self.buf.clear();
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            let got = self.fill().await.map_err(|e| (e, !self.buf.is_empty()))?;
            if got == 0 {
                return Err(("connection closed before an answer".into(), !self.buf.is_empty()));
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| (format!("bad status line: {head}").into(), true))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let mut reply = Reply { status, headers, body: Vec::new(), close: false };
        reply.close = reply.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let mut rest = self.buf.split_off(end + 4);
        if let Some(n) = reply.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            while rest.len() < n {
                let mut chunk = vec![0u8; (n - rest.len()).min(65536)];
                let got = read(&self.s, &mut chunk).await.map_err(|e| (e.into(), true))?;
                if got == 0 {
                    return Err(("connection closed mid-body".into(), true));
                }
                rest.extend_from_slice(&chunk[..got]);
            }
            reply.body = rest;
        } else if reply
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            self.buf = rest;
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        break i;
                    }
                    if self.fill().await.map_err(|e| (e, true))? == 0 {
                        return Err(("connection closed mid-chunk".into(), true));
                    }
                };
                let size = usize::from_str_radix(
                    String::from_utf8_lossy(&self.buf[..line_end])
                        .split(';')
                        .next()
                        .unwrap_or("")
                        .trim(),
                    16,
                )
                .map_err(|e| (format!("bad chunk size: {e}").into(), true))?;
                while self.buf.len() < line_end + 2 + size + 2 {
                    if self.fill().await.map_err(|e| (e, true))? == 0 {
                        return Err(("connection closed mid-chunk".into(), true));
                    }
                }
                reply.body.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                self.buf.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    break;
                }
            }
        } else {
            // No length: the body runs to the end of the connection.
            reply.close = true;
            loop {
                let mut chunk = [0u8; 65536];
                let got = read(&self.s, &mut chunk).await.map_err(|e| (e.into(), true))?;
                if got == 0 {
                    break;
                }
                rest.extend_from_slice(&chunk[..got]);
            }
            reply.body = rest;
        }
        Ok(reply)
    }

    async fn fill(&mut self) -> Res<usize> {
        let mut chunk = [0u8; 65536];
        let got = read(&self.s, &mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..got]);
        Ok(got)
    }
}

// tokio's readiness API (its `io-util` extension traits are not among the features tierwise
// enables, and a dev-dependency for them would touch Cargo.toml for an example).
async fn write_all(s: &TcpStream, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        s.writable().await?;
        match s.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn read(s: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        s.readable().await?;
        match s.try_read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One request on a new connection (monitors, dry runs).
async fn once(addr: &str, method: &str, path: &str, body: &[u8], timeout: Duration) -> Res<Reply> {
    let fut = async {
        let mut c = Conn::open(addr).await?;
        c.send(method, path, addr, "Connection: close\r\n", body).await.map_err(|(e, _)| e)
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("{method} {path}: no answer within {timeout:?}"))?
}

/// The same, blocking (the edit thread).
fn once_blocking(addr: &str, path: &str) -> Option<Value> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let i = find(&raw, b"\r\n\r\n")?;
    serde_json::from_slice(&raw[i + 4..]).ok()
}

// ---------------------------------------------------------------------------------------
// Load and its figures.

#[derive(Deserialize)]
struct PolicyRef {
    hash: String,
}

#[derive(Deserialize)]
struct Decision {
    policy: Option<PolicyRef>,
}

#[derive(Deserialize)]
struct EvalAnswer {
    policy: Option<PolicyRef>,
    #[serde(default)]
    accounts: Vec<Decision>,
}

#[derive(Default)]
struct Second {
    lat_us: Vec<u32>,
    failed: u64,
    non_2xx: u64,
    mixed: u64,
    no_hash: u64,
    rss_kb: Option<u64>,
    /// How late this client's own 10 ms ticker woke up, at worst (ms): when the client
    /// itself is not scheduled, the latency it measures is not the server's alone.
    client_lag_ms: f64,
    /// Share of this second some task of the machine waited for a CPU (/proc/pressure/cpu).
    cpu_pressure: Option<f64>,
}

#[derive(Default)]
struct Figures {
    seconds: Vec<Second>,
    /// Short hash → answers naming it.
    hashes: BTreeMap<String, u64>,
    statuses: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    retried: u64,
    sent: u64,
}

impl Figures {
    fn second(&mut self, s: usize) -> &mut Second {
        while self.seconds.len() <= s {
            self.seconds.push(Second::default());
        }
        &mut self.seconds[s]
    }
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 1000.0
}

struct Shared {
    args: Args,
    figures: Mutex<Figures>,
    pool: Mutex<Vec<Conn>>,
    slots: tokio::sync::Semaphore,
    start: Instant,
    events: Mutex<Vec<String>>,
    in_flight: AtomicU64,
}

impl Shared {
    fn event(&self, line: String) {
        let line = format!("[{:7.2}s] {line}", self.start.elapsed().as_secs_f64());
        eprintln!("{line}");
        self.events.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }
}

async fn one(sh: Arc<Shared>, at: Instant, body: Arc<Vec<u8>>, batch: usize) {
    sh.in_flight.fetch_add(1, Relaxed);
    let permit = sh.slots.acquire().await;
    let res = tokio::time::timeout(sh.args.timeout, exchange(&sh, &body)).await;
    drop(permit);
    let lat = at.elapsed();
    let sec = at.saturating_duration_since(sh.start).as_secs() as usize;
    let mut f = sh.figures.lock().unwrap_or_else(|p| p.into_inner());
    let s = f.second(sec);
    s.lat_us.push(u32::try_from(lat.as_micros()).unwrap_or(u32::MAX));
    match res {
        Err(_) => {
            s.failed += 1;
            *f.errors.entry("timeout".into()).or_default() += 1;
        }
        Ok(Err(e)) => {
            s.failed += 1;
            *f.errors.entry(e.to_string()).or_default() += 1;
        }
        Ok(Ok((reply, retried))) => {
            f.retried += u64::from(retried);
            *f.statuses.entry(reply.status).or_default() += 1;
            let check = check_answer(&reply, batch);
            let s = f.second(sec);
            match check {
                Check::Ok(hash) => {
                    *f.hashes.entry(hash).or_default() += 1;
                }
                Check::Status => {
                    s.non_2xx += 1;
                    let msg = format!(
                        "HTTP {}: {}",
                        reply.status,
                        String::from_utf8_lossy(&reply.body[..reply.body.len().min(200)])
                    );
                    *f.errors.entry(msg).or_default() += 1;
                }
                Check::NoHash(why) => {
                    s.no_hash += 1;
                    *f.errors.entry(why).or_default() += 1;
                }
                Check::Mixed(hashes) => {
                    s.mixed += 1;
                    *f.errors
                        .entry(format!("mixed hashes in one answer: {hashes}"))
                        .or_default() += 1;
                }
            }
        }
    }
    sh.in_flight.fetch_sub(1, Relaxed);
}

enum Check {
    Ok(String),
    Status,
    NoHash(String),
    Mixed(String),
}

fn check_answer(reply: &Reply, batch: usize) -> Check {
    if !(200..300).contains(&reply.status) {
        return Check::Status;
    }
    let a: EvalAnswer = match serde_json::from_slice(&reply.body) {
        Ok(a) => a,
        Err(e) => return Check::NoHash(format!("answer is not an evaluation: {e}")),
    };
    let Some(top) = a.policy.map(|p| p.hash).filter(|h| h.len() >= 12) else {
        return Check::NoHash("answer names no policy hash".into());
    };
    if reply.header("x-policy-hash") != Some(top.as_str()) {
        return Check::Mixed(format!(
            "x-policy-hash {:?} vs body {top}",
            reply.header("x-policy-hash")
        ));
    }
    if a.accounts.len() != batch {
        return Check::NoHash(format!("{} accounts answered for {batch}", a.accounts.len()));
    }
    // Accounts answered with an error (the book holds a few bad snapshots) name no policy.
    if let Some(other) = a.accounts.iter().filter_map(|d| d.policy.as_ref()).find(|p| p.hash != top)
    {
        return Check::Mixed(format!(
            "{} and {}",
            &top[..12],
            &other.hash[..other.hash.len().min(12)]
        ));
    }
    Check::Ok(top[..12].to_string())
}

/// Sends on a pooled connection; a pooled connection that closed before answering (an idle
/// keep-alive race) is retried once on a new one. `(reply, retried)`.
async fn exchange(sh: &Shared, body: &[u8]) -> Res<(Reply, bool)> {
    let pooled = sh.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
    let reused = pooled.is_some();
    let mut c = match pooled {
        Some(c) => c,
        None => Conn::open(&sh.args.addr).await?,
    };
    let r = match c.send("POST", "/v1/evaluate", &sh.args.addr, "", body).await {
        Ok(r) => (r, false),
        Err((_, false)) if reused => {
            c = Conn::open(&sh.args.addr).await?;
            (
                c.send("POST", "/v1/evaluate", &sh.args.addr, "", body)
                    .await
                    .map_err(|(e, _)| e)?,
                true,
            )
        }
        Err((e, _)) => return Err(e),
    };
    if !r.0.close {
        sh.pool.lock().unwrap_or_else(|p| p.into_inner()).push(c);
    }
    Ok(r)
}

/// A small deterministic generator (xorshift), so runs are repeatable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn body(policy: Option<&str>, lines: &[&str]) -> Vec<u8> {
    let mut b = String::with_capacity(64 + lines.iter().map(|l| l.len() + 1).sum::<usize>());
    b.push('{');
    if let Some(p) = policy {
        b.push_str(&format!("\"policy\":{},", json!(p)));
    }
    b.push_str("\"accounts\":[");
    b.push_str(&lines.join(","));
    b.push_str("]}");
    b.into_bytes()
}

/// Microseconds some task has waited for a CPU since boot (Linux PSI), if available.
fn cpu_stall_us() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/pressure/cpu").ok()?;
    s.lines()
        .find(|l| l.starts_with("some"))?
        .split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

// ---------------------------------------------------------------------------------------
// Redis faults and the /readyz + /metrics monitor.

#[derive(Default, Clone)]
struct Sample {
    t: f64,
    cache: String,
    breaker: String,
    queued: u64,
    hits: u64,
    breaker_state: i64,
    dropped: u64,
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

async fn sample(sh: &Shared) -> Option<Sample> {
    let t = sh.start.elapsed().as_secs_f64();
    let r = once(&sh.args.addr, "GET", "/readyz", b"", Duration::from_secs(2)).await.ok()?;
    let v: Value = serde_json::from_slice(&r.body).ok()?;
    let m = once(&sh.args.addr, "GET", "/metrics", b"", Duration::from_secs(2)).await.ok()?;
    let text = String::from_utf8_lossy(&m.body);
    Some(Sample {
        t,
        cache: v["cache"].as_str().unwrap_or("?").to_string(),
        breaker: v["details"]["cache"]["breaker"].as_str().unwrap_or("?").to_string(),
        queued: metric(&text, "tierwise_cache_queued_writes").unwrap_or(0.0) as u64,
        hits: metric(&text, "tierwise_cache_lookups_total{result=\"hit\"}").unwrap_or(0.0) as u64,
        breaker_state: metric(&text, "tierwise_cache_breaker_state").unwrap_or(-1.0) as i64,
        dropped: metric(&text, "tierwise_cache_writes_total{result=\"dropped\"}").unwrap_or(0.0)
            as u64,
    })
}

fn signal(pid: u32, sig: &str) -> bool {
    std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

fn redis_pings(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect_timeout(
        &([127, 0, 0, 1], port).into(),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// One fault: what was done, when, and when Redis answered again.
#[derive(Clone, Debug)]
struct Fault {
    what: String,
    at: f64,
}

async fn run_faults(
    sh: Arc<Shared>,
    restarted: Arc<Mutex<Option<std::process::Child>>>,
) -> Vec<Fault> {
    let (Some(mut pid), Some(port)) = (sh.args.redis_pid, sh.args.redis_port) else {
        return vec![];
    };
    // Restarted on the same port and in the same folder, without persistence (as the scripts
    // start it). Not from /proc/PID/cmdline: redis-server rewrites its own process title.
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
    let mut done = Vec::new();
    for (what, at) in sh.args.faults.clone() {
        let when = sh.start + Duration::from_secs_f64(at);
        tokio::time::sleep_until(when.into()).await;
        let ok = match what.as_str() {
            "kill" => signal(pid, "-KILL"),
            "stop" => signal(pid, "-STOP"),
            "cont" => signal(pid, "-CONT"),
            "restart" => {
                let mut cmd = std::process::Command::new("redis-server");
                cmd.args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--loglevel",
                    "warning",
                ]);
                if let Some(d) = &cwd {
                    cmd.arg("--dir").arg(d);
                }
                cmd.stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null());
                if let Some(d) = &cwd {
                    cmd.current_dir(d);
                }
                match cmd.spawn() {
                    Ok(child) => {
                        pid = child.id();
                        if let Some(dir) = &sh.args.json {
                            let _ = std::fs::write(format!("{dir}.redis-pid"), pid.to_string());
                        }
                        *restarted.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
                        let t = Instant::now();
                        while !redis_pings(port) && t.elapsed() < Duration::from_secs(5) {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        redis_pings(port)
                    }
                    Err(_) => false,
                }
            }
            _ => false,
        };
        let at = sh.start.elapsed().as_secs_f64();
        sh.event(format!("redis {what} (pid {pid}): {}", if ok { "done" } else { "FAILED" }));
        done.push(Fault { what, at });
    }
    done
}

// ---------------------------------------------------------------------------------------
// Hostile dry runs.

async fn dry_runs(
    sh: Arc<Shared>,
    lines: Arc<Vec<String>>,
    end: Instant,
) -> Vec<(u16, String, f64)> {
    let mut out = Vec::new();
    let every = Duration::from_secs_f64(sh.args.dry_run_every);
    let Some(dir) = sh.args.edit_dir.clone() else { return out };
    let mut next = sh.start + every;
    while next < end {
        tokio::time::sleep_until(next.into()).await;
        next += every;
        // The folder as it is now, plus a criterion that never ends.
        let Ok(mut files) = tierwise::policy::read_dir(std::path::Path::new(&dir)) else {
            continue;
        };
        let toml =
            String::from_utf8_lossy(files.get("policy.toml").map_or(&[][..], |v| v)).into_owned();
        let toml = toml.replacen(
            "[[tiers]]",
            "[[score.criteria]]\nid = \"spin\"\nweight = 1.0\nscript = \"spin\"\n\n[[tiers]]",
            1,
        );
        files.insert("policy.toml".into(), toml.into_bytes());
        files.insert("scripts/spin.rhai".into(), b"fn spin(a) { loop { } }\n".to_vec());
        let files: BTreeMap<String, String> =
            files.into_iter().map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned())).collect();
        let accounts: Vec<Value> = lines
            .iter()
            .take(sh.args.dry_run_accounts)
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let body = json!({ "accounts": accounts, "candidate": { "files": files } }).to_string();
        let t = Instant::now();
        let r =
            once(&sh.args.addr, "POST", "/v1/dry-run", body.as_bytes(), Duration::from_secs(60))
                .await;
        let took = t.elapsed().as_secs_f64() * 1000.0;
        let (status, code) = match r {
            Ok(r) => (
                r.status,
                serde_json::from_slice::<Value>(&r.body)
                    .ok()
                    .and_then(|v| v["code"].as_str().map(String::from))
                    .unwrap_or_default(),
            ),
            Err(e) => (0, e.to_string()),
        };
        sh.event(format!("hostile dry run: HTTP {status} {code} in {took:.0} ms"));
        out.push((status, code, took));
    }
    out
}

// ---------------------------------------------------------------------------------------

#[tokio::main(flavor = "current_thread")]
async fn main() -> Res<()> {
    let args = parse_args();
    let text =
        std::fs::read_to_string(&args.accounts).map_err(|e| format!("{}: {e}", args.accounts))?;
    let lines: Arc<Vec<String>> =
        Arc::new(text.lines().filter(|l| !l.trim().is_empty()).map(String::from).collect());
    if lines.is_empty() {
        return Err(format!("{}: no accounts", args.accounts).into());
    }
    let start = Instant::now() + Duration::from_millis(50);
    let sh = Arc::new(Shared {
        slots: tokio::sync::Semaphore::new(args.conns),
        args: args.clone(),
        figures: Mutex::new(Figures::default()),
        pool: Mutex::new(Vec::new()),
        start,
        events: Mutex::new(Vec::new()),
        in_flight: AtomicU64::new(0),
    });
    let end = start + Duration::from_secs_f64(args.duration);
    let stop = Arc::new(AtomicBool::new(false));
    // When the edits reach `--reloads`, the load runs 2 s more and ends (the reload drill is
    // about the time reloads happen; `--duration` is its cap).
    let edits_done: Arc<Mutex<Option<Instant>>> = Arc::default();

    // Policy edits, on their own thread (blocking file work and polling).
    let editor = args.edit_dir.clone().map(|dir| {
        let (sh, stop, edits_done) = (sh.clone(), stop.clone(), edits_done.clone());
        std::thread::spawn(move || -> EditResult {
            let stash = sh.args.stash.clone().ok_or("--edit-dir needs --stash")?;
            let mut ed =
                edits::Editor::new(std::path::Path::new(&dir), std::path::Path::new(&stash))
                    .map_err(|e| format!("{dir}: {e}"))?;
            let name = std::path::Path::new(&dir)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let addr = sh.args.addr.clone();
            let mut get = move || once_blocking(&addr, &format!("/v1/policies/{name}"));
            let mut out = Vec::new();
            let mut reloads = 0;
            let mut i = 0;
            while reloads < sh.args.reloads && !stop.load(Relaxed) {
                let t = Instant::now();
                let kind = sh.args.kinds[i % sh.args.kinds.len()];
                i += 1;
                let o = ed.run(kind, &mut get);
                reloads += o.reloads.max(1);
                sh.event(format!(
                    "edit #{i} {:<7} {} in {:>5.0} ms{}",
                    kind.name(),
                    if o.ok { "ok  " } else { "FAIL" },
                    o.took.as_secs_f64() * 1000.0,
                    if o.detail.is_empty() { String::new() } else { format!(": {}", o.detail) }
                ));
                out.push(o);
                if let Some(rest) = sh.args.reload_every.checked_sub(t.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            *edits_done.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            Ok((out, ed.good.clone()))
        })
    });
    let restarted = Arc::new(Mutex::new(None));
    let faults = tokio::spawn(run_faults(sh.clone(), restarted.clone()));
    let dry =
        (args.dry_run_every > 0.0).then(|| tokio::spawn(dry_runs(sh.clone(), lines.clone(), end)));
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let monitor = (args.redis_pid.is_some()).then(|| {
        let (sh, samples, stop) = (sh.clone(), samples.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Relaxed) {
                if let Some(s) = sample(&sh).await {
                    samples.lock().unwrap_or_else(|p| p.into_inner()).push(s);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });
    // The client's own scheduling lag.
    let ticker = {
        let (sh, stop) = (sh.clone(), stop.clone());
        tokio::spawn(async move {
            let mut next = sh.start;
            while !stop.load(Relaxed) {
                next += Duration::from_millis(10);
                tokio::time::sleep_until(next.into()).await;
                let lag = next.elapsed().as_secs_f64() * 1000.0;
                let sec = next.saturating_duration_since(sh.start).as_secs() as usize;
                let mut f = sh.figures.lock().unwrap_or_else(|p| p.into_inner());
                let s = f.second(sec);
                s.client_lag_ms = s.client_lag_ms.max(lag);
            }
        })
    };
    // A line a second, with the server's RSS.
    let reporter = {
        let (sh, stop) = (sh.clone(), stop.clone());
        tokio::spawn(async move {
            let mut sec = 0usize;
            let mut stall = cpu_stall_us();
            while !stop.load(Relaxed) {
                tokio::time::sleep_until((sh.start + Duration::from_secs(sec as u64 + 1)).into())
                    .await;
                let rss = sh.args.server_pid.and_then(rss_kb);
                let now = cpu_stall_us();
                let pressure = stall.zip(now).map(|(a, b)| b.saturating_sub(a) as f64 / 1e6);
                stall = now;
                let mut f = sh.figures.lock().unwrap_or_else(|p| p.into_inner());
                let s = f.second(sec);
                s.rss_kb = rss;
                s.cpu_pressure = pressure;
                let mut lat = s.lat_us.clone();
                lat.sort_unstable();
                let line = format!(
                    "[{:4}s] answered {:6} failed {} non-2xx {} mixed {} no-hash {}  p50 {:7.2} ms  p99 {:7.2} ms  max {:7.2} ms{}  in flight {}  client lag {:.0} ms{}",
                    sec + 1,
                    lat.len(),
                    s.failed,
                    s.non_2xx,
                    s.mixed,
                    s.no_hash,
                    pct(&lat, 0.5),
                    pct(&lat, 0.99),
                    pct(&lat, 1.0),
                    rss.map(|r| format!("  rss {:.1} MiB", r as f64 / 1024.0)).unwrap_or_default(),
                    sh.in_flight.load(Relaxed),
                    s.client_lag_ms,
                    pressure
                        .map(|p| format!("  cpu pressure {:.0}%", p * 100.0))
                        .unwrap_or_default()
                );
                drop(f);
                eprintln!("{line}");
                sec += 1;
            }
        })
    };

    // The schedule: request i at start + i / rate.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let interval = 1.0 / args.rate.max(0.001);
    let mut i: u64 = 0;
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let at = start + Duration::from_secs_f64(i as f64 * interval);
        if at >= end
            || edits_done
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some_and(|d| d.elapsed() > Duration::from_secs(2))
        {
            break;
        }
        if at > Instant::now() {
            tokio::time::sleep_until(at.into()).await;
        }
        let n = if rng.unit() < args.batch_share { 2 + rng.below(args.batch_max - 1) } else { 1 };
        let picked: Vec<&str> = (0..n).map(|_| lines[rng.below(lines.len())].as_str()).collect();
        // Ids must be distinct within a request (a repeated id is an error for every copy).
        let mut seen = std::collections::HashSet::new();
        let picked: Vec<&str> = picked.into_iter().filter(|l| seen.insert(*l)).collect();
        let b = Arc::new(body(args.policy.as_deref(), &picked));
        tasks.spawn(one(sh.clone(), at, b, picked.len()));
        sh.figures.lock().unwrap_or_else(|p| p.into_inner()).sent += 1;
        i += 1;
        while tasks.try_join_next().is_some() {}
    }
    // Answers still due get their timeout.
    let drain = tokio::time::timeout(args.timeout + Duration::from_secs(1), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drain.is_err() {
        tasks.abort_all();
    }
    let load_end = sh.start.elapsed().as_secs_f64();
    let fault_list = faults.await.unwrap_or_default();
    let dry_list = match dry {
        Some(d) => d.await.unwrap_or_default(),
        None => vec![],
    };
    // The edits stop with the load (the one in progress finishes).
    stop.store(true, Relaxed);
    let edit_result =
        editor.map(|h| h.join().unwrap_or_else(|_| Err("edit thread panicked".into())));
    if let Some(m) = monitor {
        let _ = m.await;
    }
    let _ = reporter.await;
    let _ = ticker.await;
    // One last sample, after the faults: the breaker must be closed again.
    let final_sample = if args.redis_pid.is_some() { sample(&sh).await } else { None };
    if let Some(mut child) = restarted.lock().unwrap_or_else(|p| p.into_inner()).take() {
        let _ = child.kill();
        let _ = child.wait();
    }

    report(
        &sh,
        load_end,
        edit_result,
        &fault_list,
        &samples.lock().unwrap_or_else(|p| p.into_inner()),
        final_sample,
        &dry_list,
    )
}

#[allow(clippy::too_many_lines)]
fn report(
    sh: &Shared,
    load_end: f64,
    edit_result: Option<EditResult>,
    faults: &[Fault],
    samples: &[Sample],
    final_sample: Option<Sample>,
    dry: &[(u16, String, f64)],
) -> Res<()> {
    let a = &sh.args;
    let mut f = sh.figures.lock().unwrap_or_else(|p| p.into_inner());
    // The reporter runs a moment past the load: seconds after the last answer are no window.
    let used = f.seconds.iter().rposition(|s| !s.lat_us.is_empty()).map_or(0, |i| i + 1);
    f.seconds.truncate(used);
    let mut all: Vec<u32> = f.seconds.iter().flat_map(|s| s.lat_us.iter().copied()).collect();
    all.sort_unstable();
    let sum = |g: fn(&Second) -> u64| f.seconds.iter().map(g).sum::<u64>();
    let (failed, non_2xx, mixed, no_hash) =
        (sum(|s| s.failed), sum(|s| s.non_2xx), sum(|s| s.mixed), sum(|s| s.no_hash));
    let answered = all.len() as u64;

    // Windows (minutes by default).
    let w = a.window as usize;
    let mut windows = Vec::new();
    for (k, chunk) in f.seconds.chunks(w).enumerate() {
        let mut lat: Vec<u32> = chunk.iter().flat_map(|s| s.lat_us.iter().copied()).collect();
        lat.sort_unstable();
        let rss = chunk.iter().rev().find_map(|s| s.rss_kb);
        let fails: u64 = chunk.iter().map(|s| s.failed + s.non_2xx + s.mixed + s.no_hash).sum();
        let lag = chunk.iter().map(|s| s.client_lag_ms).fold(0.0, f64::max);
        let pressures: Vec<f64> = chunk.iter().filter_map(|s| s.cpu_pressure).collect();
        let pressure =
            (!pressures.is_empty()).then(|| pressures.iter().sum::<f64>() / pressures.len() as f64);
        println!(
            "window {k} ({}-{} s): {} answers ({:.0}/s), {fails} bad, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms{}; client lag max {lag:.0} ms{}",
            k * w,
            k * w + chunk.len(),
            lat.len(),
            lat.len() as f64 / chunk.len().max(1) as f64,
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            pct(&lat, 1.0),
            rss.map(|r| format!(", rss {:.1} MiB", r as f64 / 1024.0)).unwrap_or_default(),
            pressure
                .map(|p| format!(", machine cpu pressure {:.0}%", p * 100.0))
                .unwrap_or_default()
        );
        windows.push(json!({ "from_s": k * w, "answers": lat.len(), "bad": fails, "p50_ms": pct(&lat, 0.5), "p99_ms": pct(&lat, 0.99), "max_ms": pct(&lat, 1.0), "rss_kb": rss,
            "client_lag_max_ms": lag, "cpu_pressure": pressure }));
    }

    let mut checks: Vec<(String, bool)> = Vec::new();
    let mut check = |what: String, ok: bool| checks.push((what, ok));
    check(format!("0 failed requests (timeouts, connection errors): {failed}"), failed == 0);
    check(format!("0 non-2xx answers: {non_2xx}"), non_2xx == 0);
    check(format!("every answer names a policy hash: {no_hash} without"), no_hash == 0);
    check(format!("no answer mixes two hashes: {mixed} mixed"), mixed == 0);
    let achieved = answered as f64 / load_end.max(0.001);
    println!(
        "rate asked {:.0}/s, answered {:.0}/s over {load_end:.1} s ({} sent, {} retried on a new connection)",
        a.rate, achieved, f.sent, f.retried
    );
    let mut summary = json!({
        "rate": a.rate, "duration_s": a.duration, "sent": f.sent, "answered": answered, "answered_per_s": achieved,
        "failed": failed, "non_2xx": non_2xx, "mixed_hash": mixed, "no_hash": no_hash, "retried": f.retried,
        "p50_ms": pct(&all, 0.5), "p99_ms": pct(&all, 0.99), "p999_ms": pct(&all, 0.999), "max_ms": pct(&all, 1.0),
        "statuses": f.statuses, "errors": f.errors.iter().take(20).collect::<BTreeMap<_, _>>(), "hashes": f.hashes, "windows": windows,
    });

    if let Some(r) = edit_result {
        match r {
            Err(e) => check(format!("policy edits ran: {e}"), false),
            Ok((outcomes, good)) => {
                let short: std::collections::BTreeSet<String> =
                    good.iter().map(|h| h[..12].to_string()).collect();
                let unknown: Vec<&String> =
                    f.hashes.keys().filter(|h| !short.contains(*h)).collect();
                let reloads: u32 = outcomes.iter().map(|o| o.reloads).sum();
                let bad: Vec<&edits::Outcome> = outcomes.iter().filter(|o| !o.ok).collect();
                let mut by_kind: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
                for o in &outcomes {
                    let e = by_kind.entry(o.kind.name()).or_default();
                    e.0 += 1;
                    e.1 += u32::from(o.ok);
                }
                println!("edits by kind (made, ok): {by_kind:?}");
                for (k, o) in outcomes.iter().filter(|o| o.ok && !o.detail.is_empty()).fold(
                    BTreeMap::new(),
                    |mut m, o| {
                        m.entry(o.kind.name()).or_insert(o);
                        m
                    },
                ) {
                    println!("  {k:<8} reported at {}", o.detail);
                }
                let mut took: Vec<f64> =
                    outcomes.iter().map(|o| o.took.as_secs_f64() * 1000.0).collect();
                took.sort_by(f64::total_cmp);
                // A reload drill must reach the reloads it asked for within the load's time.
                let enough = a.pass.as_deref() != Some("reload") || reloads >= a.reloads;
                check(
                    format!(
                        "{reloads} reloads (asked {}) from {} edits, every one seen as expected: {} not",
                        a.reloads,
                        outcomes.len(),
                        bad.len()
                    ),
                    bad.is_empty() && reloads > 0 && enough,
                );
                for o in bad.iter().take(5) {
                    println!("  edit {} failed: {}", o.kind.name(), o.detail);
                }
                check(
                    format!(
                        "every answer names a last-good hash ({} hashes seen, {} good versions): {} unknown {:?}",
                        f.hashes.len(),
                        good.len(),
                        unknown.len(),
                        unknown
                    ),
                    unknown.is_empty(),
                );
                let places =
                    outcomes.iter().filter(|o| o.ok && o.kind != edits::Kind::Good).count();
                check(
                    format!(
                        "each failure reported with its place: {places} of {} bad edits",
                        outcomes.iter().filter(|o| o.kind != edits::Kind::Good).count()
                    ),
                    bad.is_empty(),
                );
                summary["edits"] = json!({ "edits": outcomes.len(), "reloads": reloads, "not_ok": bad.len(), "by_kind": by_kind,
                    "good_versions": good.len(), "unknown_hashes": unknown, "edit_ms_p50": took.get(took.len() / 2), "edit_ms_max": took.last(),
                    "failures": bad.iter().map(|o| format!("{}: {}", o.kind.name(), o.detail)).collect::<Vec<_>>() });
            }
        }
    }

    if !dry.is_empty() {
        // The hostile candidate must be refused (422) or stopped at the request timeout /
        // turned away (503), never answered 200 nor a 500.
        let refused = dry.iter().filter(|(s, _, _)| matches!(s, 422 | 503)).count();
        let worst = dry.iter().map(|d| d.2).fold(0.0, f64::max);
        check(
            format!("hostile dry runs refused: {refused} of {} (slowest {worst:.0} ms)", dry.len()),
            refused == dry.len(),
        );
        summary["dry_runs"] = json!(
            dry.iter()
                .map(|(s, c, t)| json!({ "status": s, "code": c, "ms": t }))
                .collect::<Vec<_>>()
        );
    }

    if !faults.is_empty() {
        let deadline = a.deadline_ms + 10.0;
        check(
            format!("p99 {:.2} ms <= cache deadline + 10 ms ({deadline:.0} ms)", pct(&all, 0.99)),
            pct(&all, 0.99) <= deadline,
        );
        // Per outage (kill→restart, stop→cont): degraded seen while down, recovered after.
        let mut outages = Vec::new();
        for pair in faults.windows(2) {
            let (down, up) = (&pair[0], &pair[1]);
            if !matches!(
                (down.what.as_str(), up.what.as_str()),
                ("kill", "restart") | ("stop", "cont")
            ) {
                continue;
            }
            let during: Vec<&Sample> =
                samples.iter().filter(|s| s.t > down.at && s.t <= up.at).collect();
            let degraded = during.iter().find(|s| s.cache == "degraded").map(|s| s.t - down.at);
            let opened = during.iter().any(|s| s.breaker == "open" || s.breaker_state == 1);
            let hits_at_up = samples.iter().rev().find(|s| s.t <= up.at).map_or(0, |s| s.hits);
            let back = samples
                .iter()
                .find(|s| {
                    s.t > up.at && s.cache == "ok" && s.breaker == "closed" && s.hits > hits_at_up
                })
                .map(|s| s.t - up.at);
            let mut lat: Vec<u32> = f
                .seconds
                .iter()
                .enumerate()
                .filter(|(i, _)| (*i as f64) >= down.at && (*i as f64) < up.at + 2.0)
                .flat_map(|(_, s)| s.lat_us.iter().copied())
                .collect();
            lat.sort_unstable();
            let name = format!("{}→{}", down.what, up.what);
            check(
                format!(
                    "{name}: breaker open and /readyz degraded ({})",
                    degraded.map_or("never".into(), |d| format!("after {:.2} s", d))
                ),
                opened && degraded.is_some(),
            );
            check(
                format!(
                    "{name}: cache used again <= 10 s after Redis returned ({})",
                    back.map_or("never".into(), |b| format!("{b:.2} s"))
                ),
                back.is_some_and(|b| b <= 10.0),
            );
            println!(
                "  {name}: p99 {:.2} ms, max {:.2} ms over the outage and 2 s after",
                pct(&lat, 0.99),
                pct(&lat, 1.0)
            );
            outages.push(json!({ "fault": name, "degraded_after_s": degraded, "breaker_open_seen": opened, "recovered_after_s": back, "p99_ms": pct(&lat, 0.99), "max_ms": pct(&lat, 1.0) }));
        }
        let max_q = samples.iter().map(|s| s.queued).max().unwrap_or(0);
        check(
            format!(
                "write queue bounded: at most {max_q} batches queued (capacity {})",
                a.queue_max
            ),
            max_q <= a.queue_max,
        );
        if let Some(s) = &final_sample {
            check(
                format!("after the drill: /readyz cache {} breaker {}", s.cache, s.breaker),
                s.cache == "ok" && s.breaker == "closed",
            );
        }
        summary["redis"] = json!({ "outages": outages, "max_queued": max_q, "dropped_writes": samples.last().map(|s| s.dropped), "samples": samples.len(),
            "faults": faults.iter().map(|x| json!({ "what": x.what, "at_s": x.at })).collect::<Vec<_>>() });
    }

    if a.pass.as_deref() == Some("soak") {
        let n = f.seconds.len();
        let w = a.window as usize;
        let lat_of = |r: std::ops::Range<usize>| {
            let mut l: Vec<u32> =
                f.seconds[r].iter().flat_map(|s| s.lat_us.iter().copied()).collect();
            l.sort_unstable();
            pct(&l, 0.99)
        };
        if n >= 2 * w {
            let (first, last) = (lat_of(0..w), lat_of(n - w..n));
            check(
                format!(
                    "last window p99 {last:.2} ms <= 1.2 x first window p99 {first:.2} ms ({:.2} x)",
                    last / first.max(0.001)
                ),
                last <= 1.2 * first,
            );
        } else {
            check(format!("run of {n} s too short for two {w} s windows"), false);
        }
        let warm = f.seconds.get(a.warmup as usize).and_then(|s| s.rss_kb);
        let fin = f.seconds.iter().rev().find_map(|s| s.rss_kb);
        match (warm, fin) {
            (Some(w0), Some(w1)) => check(
                format!(
                    "final RSS {:.1} MiB <= post-warm-up RSS {:.1} MiB + 10% ({:+.1}%)",
                    w1 as f64 / 1024.0,
                    w0 as f64 / 1024.0,
                    100.0 * (w1 as f64 / w0 as f64 - 1.0)
                ),
                w1 as f64 <= w0 as f64 * 1.10,
            ),
            _ => check("RSS sampled (--server-pid)".into(), false),
        }
        summary["rss_kb"] = json!({ "post_warmup": warm, "final": fin, "warmup_s": a.warmup });
    }

    let ok = checks.iter().all(|(_, ok)| *ok);
    println!("---");
    for (what, ok) in &checks {
        println!("{} {what}", if *ok { "PASS" } else { "FAIL" });
    }
    println!(
        "p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms over {answered} answers",
        pct(&all, 0.5),
        pct(&all, 0.99),
        pct(&all, 0.999),
        pct(&all, 1.0)
    );
    summary["pass"] = json!(ok);
    summary["checks"] =
        json!(checks.iter().map(|(w, ok)| json!({ "check": w, "pass": ok })).collect::<Vec<_>>());
    let text = serde_json::to_string_pretty(&summary)?;
    if let Some(path) = &a.json {
        std::fs::write(path, &text)?;
    }
    println!("{}", serde_json::to_string(&summary)?);
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
