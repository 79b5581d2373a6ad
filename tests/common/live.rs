//! `tierwise serve` as a process, for the hostile-input tests and drills: start it, talk
//! HTTP/1.1 to it over plain sockets (keep-alive or one-shot), read its RSS and CPU time
//! from /proc, and build hostile dry-run candidates.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The served process ([`crate::common::Running`]), with the probes these tests need.
pub type Live = crate::common::Running;

impl Live {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`: the peak so far).
    pub fn status_kb(&self, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = text.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Resets the peak RSS (`VmHWM`) to the current RSS (Linux `clear_refs` value 5) and
    /// returns that RSS in KiB: `VmHWM` minus it is then one request's own peak, not memory an
    /// allocator kept from earlier requests on other threads.
    pub fn reset_peak(&self) -> u64 {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").unwrap();
        self.status_kb("VmRSS")
    }

    /// User + system CPU time of the process so far.
    pub fn cpu(&self) -> Duration {
        let text = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name (which may hold spaces) start at `) `.
        let rest = &text[text.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// The lines the process wrote to stderr since the last call.
    pub fn drain_stderr(&self) -> Vec<String> {
        self.stderr.try_iter().collect()
    }
}

/// `tierwise serve` on the shipped policies (no watcher, no decision log unless `args` say),
/// on a free port.
// The child is waited for in `Live::drop`, which clippy cannot see.
#[allow(clippy::zombie_processes)]
pub fn serve(args: &[&str]) -> Live {
    serve_with(&crate::common::root().join("policies"), args)
}

#[allow(clippy::zombie_processes)]
pub fn serve_with(policies: &std::path::Path, args: &[&str]) -> Live {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tierwise"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--no-watch"]).arg("--policies").arg(policies);
    if !args.contains(&"--decision-log") {
        cmd.args(["--decision-log", "off"]);
    }
    let mut child = cmd
        .args(args)
        .env_remove("TIERWISE_ADMIN_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (addr, stderr) = crate::common::listening(&mut child);
    Live { child, addr, stderr }
}

/// An answer: status, body, and how long it took from the first byte sent.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    pub took: Duration,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or("").to_string()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).chars().take(2000).collect()
    }
}

/// A keep-alive HTTP/1.1 connection (answers with a Content-Length, as the service sends).
pub struct Conn {
    r: BufReader<TcpStream>,
    addr: String,
}

impl Conn {
    pub fn open(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.set_nodelay(true).unwrap();
        Conn { r: BufReader::new(s), addr: addr.to_string() }
    }

    pub fn post(&mut self, path: &str, body: &[u8]) -> std::io::Result<Answer> {
        let t = Instant::now();
        let s = self.r.get_mut();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        )?;
        // The server may answer (413) and stop reading before the body is all sent.
        let _ = s.write_all(body);
        let (status, body) = read_answer(&mut self.r)?;
        Ok(Answer { status, body, took: t.elapsed() })
    }
}

/// Reads one answer: the status line, headers, and a Content-Length body (or to EOF).
pub fn read_answer(r: &mut BufReader<TcpStream>) -> std::io::Result<(u16, Vec<u8>)> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut len = None;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse::<usize>().ok();
        }
    }
    let mut body = Vec::new();
    match len {
        Some(n) => {
            body.resize(n, 0);
            r.read_exact(&mut body)?;
        }
        None => {
            r.read_to_end(&mut body)?;
        }
    }
    Ok((status, body))
}

/// One request on a connection of its own.
pub fn post(addr: &str, path: &str, body: &[u8]) -> Answer {
    Conn::open(addr).post(path, body).unwrap()
}

pub fn get(addr: &str, path: &str) -> Answer {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let (status, body) = read_answer(&mut BufReader::new(s)).unwrap();
    Answer { status, body, took: t.elapsed() }
}

/// A counter's value in `/metrics` (0 when absent).
pub fn metric(addr: &str, name: &str) -> f64 {
    let text = String::from_utf8(get(addr, "/metrics").body).unwrap();
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// `n` accounts of the generated enterprise book.
pub fn book(n: usize) -> Vec<Value> {
    crate::gen_portfolio::jsonl(n, crate::gen_portfolio::SEED)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The shipped enterprise policy's files with one more criterion, `hostile`, scored by the
/// script function `hostile(a)` of `scripts/hostile.rhai` (`script`'s text).
pub fn candidate(script: &str) -> Value {
    let dir = crate::common::root().join("policies/enterprise");
    let mut files = serde_json::Map::new();
    for (path, text) in tierwise::policy::read_dir(&dir).unwrap() {
        files.insert(path, json!(String::from_utf8(text).unwrap()));
    }
    let toml = files["policy.toml"].as_str().unwrap().to_string();
    let anchor = "script = \"account_health\"\n";
    assert!(toml.contains(anchor));
    let toml = toml.replacen(
        anchor,
        &format!(
            "{anchor}\n[[score.criteria]]\nid = \"hostile\"\nweight = 1.0\nscript = \"hostile\"\n"
        ),
        1,
    );
    files.insert("policy.toml".into(), json!(toml));
    files.insert("scripts/hostile.rhai".into(), json!(script));
    json!({ "files": files })
}

/// A dry run of `candidate` over `accounts`.
pub fn dry_run_body(candidate: &Value, accounts: &[Value]) -> Vec<u8> {
    serde_json::to_vec(&json!({ "candidate": candidate, "accounts": accounts })).unwrap()
}

/// Percentile of sorted durations.
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Evaluate traffic from `conns` keep-alive connections until `stop` is set: latencies and
/// the number of answers that were not 200 (or failed).
pub fn traffic(
    addr: &str,
    conns: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(Vec<Duration>, usize)> {
    let addr = addr.to_string();
    std::thread::spawn(move || {
        let body = serde_json::to_vec(&json!({ "accounts": book(5) })).unwrap();
        let workers: Vec<_> = (0..conns)
            .map(|_| {
                let (addr, body, stop) = (addr.clone(), body.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut c = Conn::open(&addr);
                    let (mut lat, mut errors) = (Vec::new(), 0);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        match c.post("/v1/evaluate", &body) {
                            Ok(a) if a.status == 200 => lat.push(a.took),
                            _ => {
                                errors += 1;
                                c = Conn::open(&addr);
                            }
                        }
                    }
                    (lat, errors)
                })
            })
            .collect();
        let (mut all, mut errors) = (Vec::new(), 0);
        for w in workers {
            let (l, e) = w.join().unwrap();
            all.extend(l);
            errors += e;
        }
        all.sort();
        (all, errors)
    })
}
