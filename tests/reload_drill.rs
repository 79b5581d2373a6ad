//! Reload under load (HARDENING item 5), the never-regress part: the real binary, its folder
//! watcher, and rounds of every kind of edit (good edits, syntax errors, failing policy tests,
//! half-written files, an emptied folder, a folder swapped for a file or a dangling symlink)
//! while clients send requests on keep-alive connections. No answer is anything but 200, every
//! answer names one hash for all its accounts, every hash is one of the good versions', every
//! bad edit is reported with its place while the last good version keeps serving.
//! `scripts/drill-reload` is the long, steady-rate version (release build, ~200 reloads).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "../examples/drill/edits.rs"]
mod edits;

use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tierwise::script::Limits;
use tierwise::service::Service;

use common::Running;

#[allow(clippy::zombie_processes)] // waited for in `Running::drop`
fn start(policies: &std::path::Path) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tierwise"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--reload-debounce-ms",
            "20",
            "--decision-log",
            "off",
        ])
        .arg("--policies")
        .arg(policies)
        .env_remove("TIERWISE_ADMIN_TOKEN")
        .env_remove("TIERWISE_REDIS_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (addr, stderr) = common::listening(&mut child);
    Running { child, addr, stderr }
}

/// One keep-alive HTTP/1.1 connection.
struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
    addr: String,
}

impl Client {
    fn new(addr: &str) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        Client { r: BufReader::new(s.try_clone().unwrap()), w: s, addr: addr.to_string() }
    }

    fn send(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
    ) -> (u16, BTreeMap<String, String>, Vec<u8>) {
        write!(self.w, "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", self.addr, body.len()).unwrap();
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        let status = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = BTreeMap::new();
        loop {
            line.clear();
            self.r.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
        let n: usize = headers["content-length"].parse().unwrap();
        let mut body = vec![0; n];
        self.r.read_exact(&mut body).unwrap();
        (status, headers, body)
    }
}

fn get_json(addr: &str, path: &str) -> Option<Value> {
    let mut c = Client::new(addr);
    let (_, _, body) = c.send("GET", path, "");
    serde_json::from_slice(&body).ok()
}

#[derive(Default)]
struct Seen {
    answers: u64,
    hashes: BTreeMap<String, u64>,
    problems: Vec<String>,
}

#[test]
fn every_kind_of_edit_under_requests_keeps_a_good_policy_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policies");
    copy_dir(&root().join("policies"), &dir);
    let srv = start(&dir);
    let book: Vec<String> = std::fs::read_to_string(root().join("samples/portfolio.jsonl"))
        .unwrap()
        .lines()
        .take(200)
        .map(String::from)
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|c| {
            let (addr, stop, book) = (srv.addr.clone(), stop.clone(), book.clone());
            std::thread::spawn(move || {
                let mut seen = Seen::default();
                let mut client = Client::new(&addr);
                let mut i = c * 37;
                while !stop.load(Ordering::Relaxed) {
                    // Single accounts and batches of 5 (distinct ids).
                    let n = if i % 3 == 0 { 5 } else { 1 };
                    let picked: Vec<&str> =
                        (0..n).map(|k| book[(i + k * 41) % book.len()].as_str()).collect();
                    i += 1;
                    let body = format!("{{\"accounts\":[{}]}}", picked.join(","));
                    let (status, headers, bytes) = client.send("POST", "/v1/evaluate", &body);
                    seen.answers += 1;
                    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    if status != 200 {
                        seen.problems.push(format!("HTTP {status}: {v}"));
                        continue;
                    }
                    let Some(hash) = v["policy"]["hash"].as_str() else {
                        seen.problems.push(format!("no policy hash: {v}"));
                        continue;
                    };
                    if headers.get("x-policy-hash").map(String::as_str) != Some(hash) {
                        seen.problems.push(format!(
                            "x-policy-hash {:?} is not the body's {hash}",
                            headers.get("x-policy-hash")
                        ));
                    }
                    let accounts = v["accounts"].as_array().unwrap();
                    assert_eq!(accounts.len(), n);
                    for d in accounts.iter().filter(|d| d.get("policy").is_some()) {
                        if d["policy"]["hash"] != hash {
                            seen.problems
                                .push(format!("mixed answer: {hash} and {}", d["policy"]["hash"]));
                        }
                    }
                    *seen.hashes.entry(hash.to_string()).or_default() += 1;
                }
                seen
            })
        })
        .collect();

    let mut ed = edits::Editor::new(&dir.join("enterprise"), &tmp.path().join("stash")).unwrap();
    let addr = srv.addr.clone();
    let mut get = move || get_json(&addr, "/v1/policies/enterprise");
    let rounds: usize =
        std::env::var("TIERWISE_DRILL_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(10);
    let t = Instant::now();
    let mut outcomes = Vec::new();
    for _ in 0..rounds {
        for kind in edits::ALL {
            outcomes.push(ed.run(kind, &mut get));
        }
    }
    let took = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut seen = Seen::default();
    for c in clients {
        let s = c.join().unwrap();
        seen.answers += s.answers;
        seen.problems.extend(s.problems);
        for (h, n) in s.hashes {
            *seen.hashes.entry(h).or_default() += n;
        }
    }

    let reloads: u32 = outcomes.iter().map(|o| o.reloads).sum();
    let mut places = BTreeMap::new();
    for o in outcomes.iter().filter(|o| !o.detail.is_empty()) {
        places.entry(o.kind.name()).or_insert_with(|| o.detail.clone());
    }
    eprintln!(
        "{} edits, {reloads} reloads in {took:?}; {} answers under {} hashes; places: {places:#?}",
        outcomes.len(),
        seen.answers,
        seen.hashes.len()
    );
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.ok)
        .map(|o| format!("{}: {}", o.kind.name(), o.detail))
        .collect();
    assert!(failed.is_empty(), "edits not seen as expected:\n{}", failed.join("\n"));
    assert!(
        seen.problems.is_empty(),
        "{} bad answers, first: {:?}",
        seen.problems.len(),
        &seen.problems[..seen.problems.len().min(5)]
    );
    let good: BTreeSet<&String> = ed.good.iter().collect();
    let unknown: Vec<&String> = seen.hashes.keys().filter(|h| !good.contains(h)).collect();
    assert!(unknown.is_empty(), "answers under hashes no good version has: {unknown:?}");
    assert!(seen.hashes.len() > 1, "the answers never saw a new version: {:?}", seen.hashes);
    assert!(seen.answers > 50, "only {} answers", seen.answers);
    // Every bad kind named its place (the file and line, the failing case, or the folder).
    for kind in edits::ALL.iter().filter(|k| **k != edits::Kind::Good) {
        assert!(
            places.contains_key(kind.name()),
            "{} never reported a place: {places:?}",
            kind.name()
        );
    }
}

/// The service itself (no process): a policy folder caught emptied, swapped for a file or
/// replaced by a dangling symlink is a failed read that keeps the last good version serving
/// (and the default policy the same); only a folder that is gone is removed.
#[test]
fn a_folder_emptied_or_unreadable_keeps_its_last_good_version() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policies");
    copy_dir(&root().join("policies"), &dir);
    let svc = Service::new(&dir, Limits::default(), None);
    svc.reload();
    let good = svc.policy(None).unwrap().policy.hash.clone();
    let ent = dir.join("enterprise");
    let aside = tmp.path().join("aside");

    let check = |what: &str| {
        let out = svc.reload();
        let o = out
            .iter()
            .find(|o| o.policy == "enterprise")
            .unwrap_or_else(|| panic!("{what}: no outcome for enterprise: {out:?}"));
        assert_eq!(o.result, "rejected", "{what}: {out:?}");
        let e = o.error.as_ref().unwrap();
        assert_eq!(e.code, "read_error", "{what}");
        assert!(
            e.message.contains("enterprise"),
            "{what}: the message names the folder: {}",
            e.message
        );
        assert_eq!(o.hash.as_deref(), Some(good.as_str()), "{what}");
        let p = svc.policy(None).unwrap();
        assert_eq!(
            (p.policy.name.as_str(), p.policy.hash.as_str()),
            ("enterprise", good.as_str()),
            "{what}: the default and its version stay"
        );
        assert!(svc.registry().entries["enterprise"].last_error.is_some());
    };
    let back = || {
        let out = svc.reload();
        assert!(out.is_empty(), "back to the served files: nothing changes: {out:?}");
        assert!(svc.registry().entries["enterprise"].last_error.is_none());
    };

    std::fs::create_dir(&aside).unwrap();
    for e in std::fs::read_dir(&ent).unwrap() {
        let e = e.unwrap();
        std::fs::rename(e.path(), aside.join(e.file_name())).unwrap();
    }
    check("emptied");
    for e in std::fs::read_dir(&aside).unwrap() {
        let e = e.unwrap();
        std::fs::rename(e.path(), ent.join(e.file_name())).unwrap();
    }
    back();
    std::fs::remove_dir(&aside).unwrap();

    std::fs::rename(&ent, &aside).unwrap();
    std::fs::write(&ent, "not a folder").unwrap();
    check("swapped for a file");
    std::fs::remove_file(&ent).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("nothing"), &ent).unwrap();
    check("dangling symlink");
    std::fs::remove_file(&ent).unwrap();
    std::fs::rename(&aside, &ent).unwrap();
    back();

    // Gone for real: removed, and the default moves on.
    std::fs::rename(&ent, &aside).unwrap();
    let out = svc.reload();
    assert_eq!(
        out.iter().map(|o| (o.policy.as_str(), o.result)).collect::<Vec<_>>(),
        [("enterprise", "removed")]
    );
    assert_eq!(svc.policy(None).unwrap().policy.name, "mid-market");
}
