//! Events with state and outbox in a real `redis-server` (the test starts its own): two
//! replicas racing one account, and a Redis restart with the append-only file on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "../examples/gen_portfolio.rs"]
#[allow(dead_code)]
mod gen_portfolio;
#[path = "common/live.rs"]
mod live;
#[path = "common/redis_server.rs"]
mod redis_server;

use live::{Answer, get, metric, post};
use serde_json::{Value, json};
use std::process::{Command, Stdio};

const POLICY: &str = r#"
[policy]
version = "1"

[inputs]
revenue = { type = "number", min = 0 }
nps = { type = "integer", optional = true }
nps_prev = { type = "integer", optional = true }

[score]
[[score.criteria]]
id = "revenue"
weight = 1.0
steps = { input = "revenue", at = [100.0, 200.0] }

[[tiers]]
id = "key"
min_score = 5.0

[[tiers]]
id = "other"

[[alerts]]
id = "nps_drop"
severity = "high"
when = "nps != () && nps_prev != () && nps_prev - nps >= 20"
message = "NPS fell {nps_prev - nps} points"
cooldown_days = 3
renotify_days = 5
"#;

fn policies() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("ev")).unwrap();
    std::fs::write(dir.path().join("ev/policy.toml"), POLICY).unwrap();
    dir
}

// The child is waited for in `Running::drop`, which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn serve(policies: &std::path::Path, redis: Option<&str>) -> common::Running {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tierwise"));
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--no-watch",
        "--decision-log",
        "off",
        "--events",
    ])
    .arg("--policies")
    .arg(policies);
    if let Some(url) = redis {
        cmd.args(["--redis", url]);
    }
    let mut child = cmd
        .env_remove("TIERWISE_ADMIN_TOKEN")
        .env_remove("TIERWISE_REDIS_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (addr, stderr) = common::listening(&mut child);
    common::Running { child, addr, stderr }
}

/// Round `d` of one account's life: the tier flips every other pair of days, the alert
/// comes and goes on a 3-day rhythm (so cooldowns and repeats both happen).
fn snapshot(d: u32) -> Value {
    let day = format!("2026-{:02}-{:02}", 1 + d / 28, 1 + d % 28);
    let revenue = if d % 4 < 2 { 250.0 } else { 50.0 };
    let mut fields = json!({ "revenue": revenue });
    if d % 3 != 1 {
        fields["nps"] = json!(0);
        fields["nps_prev"] = json!(40);
    }
    json!({ "id": "acct-1", "as_of": day, "fields": fields })
}

fn ids(a: &Answer) -> Vec<String> {
    a.json()["accounts"][0]["events"]
        .as_array()
        .map(|e| e.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn evaluate(addr: &str, s: &Value) -> Answer {
    let a = post(addr, "/v1/evaluate", json!({ "accounts": [s] }).to_string().as_bytes());
    assert_eq!(a.status, 200, "{}", a.text());
    a
}

/// Every event id in the outbox, oldest first (through the pull API).
fn outbox(addr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let p = get(addr, &format!("/v1/events?limit=500&after={after}")).json();
        let page = p["events"].as_array().unwrap().clone();
        if page.is_empty() {
            return out;
        }
        out.extend(page.iter().map(|e| e["id"].as_str().unwrap().to_string()));
        after = p["next"].as_str().unwrap().to_string();
    }
}

#[test]
fn two_replicas_racing_one_account_make_one_transition_per_snapshot() {
    let redis = redis_server::RedisServer::start();
    let dir = policies();
    let a = serve(dir.path(), Some(&redis.url()));
    let b = serve(dir.path(), Some(&redis.url()));
    let reference = serve(dir.path(), None); // memory, fed once, in order
    let rounds = 200;
    let mut want = Vec::new();
    let mut reported = Vec::new();
    for d in 0..rounds {
        let s = snapshot(d);
        want.extend(ids(&evaluate(&reference.addr, &s)));
        let (sa, sb) = (s.clone(), s);
        let (aa, ba) = (a.addr.clone(), b.addr.clone());
        let ta = std::thread::spawn(move || ids(&evaluate(&aa, &sa)));
        let tb = std::thread::spawn(move || ids(&evaluate(&ba, &sb)));
        let (ea, eb) = (ta.join().unwrap(), tb.join().unwrap());
        assert!(ea.is_empty() || eb.is_empty(), "round {d}: both replicas emitted {ea:?} {eb:?}");
        reported.extend(ea);
        reported.extend(eb);
    }
    assert!(want.len() > rounds as usize / 2, "the sequence emits events: {}", want.len());
    let stream = outbox(&a.addr);
    let mut unique = stream.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), stream.len(), "no duplicate ids in the stream");
    assert_eq!(stream, want, "exactly the events of one in-order pass, in order");
    assert_eq!(reported, want, "each told by exactly one replica's answer");
    assert_eq!(outbox(&b.addr), stream, "both replicas read the same outbox");
    assert_eq!(get(&a.addr, "/readyz").json()["details"]["events"]["state"], "durable");
}

#[test]
fn a_redis_restart_with_aof_loses_no_accepted_event() {
    let mut redis = redis_server::RedisServer::start_aof();
    let dir = policies();
    let s = serve(dir.path(), Some(&redis.url()));
    let mut emitted = Vec::new();
    for d in 0..20 {
        emitted.extend(ids(&evaluate(&s.addr, &snapshot(d))));
    }
    assert_eq!(outbox(&s.addr), emitted);
    redis.kill(); // SIGKILL: no shutdown save; only the append-only file remains
    redis.restart();
    // The service reconnects by itself; the state survived, so an old snapshot is stale
    // and the next one continues the sequence (the script is loaded again on NOSCRIPT).
    let t = std::time::Instant::now();
    let stream = loop {
        let a = get(&s.addr, "/v1/events?limit=500");
        if a.status == 200 {
            break a.json();
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(15), "{}", a.text());
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let got: Vec<String> = stream["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, emitted, "every event accepted before the restart is still there");
    assert!(ids(&evaluate(&s.addr, &snapshot(5))).is_empty(), "a replayed snapshot is stale");
    let next = ids(&evaluate(&s.addr, &snapshot(20)));
    let all = outbox(&s.addr);
    assert_eq!(all.len(), emitted.len() + next.len());
}

/// A webhook receiver for the failover test: answers every POST after `delay`, and keeps
/// the event ids in the order they arrived (a batch's in its order).
struct Receiver {
    url: String,
    ids: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Receiver {
    fn start(delay: std::time::Duration) -> Receiver {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let ids = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = ids.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(conn.try_clone().unwrap());
                    let mut conn = conn;
                    loop {
                        let mut len = 0usize;
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        loop {
                            line.clear();
                            if r.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            let l = line.trim_end();
                            if l.is_empty() {
                                break;
                            }
                            if let Some((k, v)) = l.split_once(':')
                                && k.eq_ignore_ascii_case("content-length")
                            {
                                len = v.trim().parse().unwrap();
                            }
                        }
                        let mut body = vec![0; len];
                        if r.read_exact(&mut body).is_err() {
                            return;
                        }
                        std::thread::sleep(delay);
                        let v: Value = serde_json::from_slice(&body).unwrap();
                        let events = v.as_array().cloned().unwrap_or_else(|| vec![v]);
                        seen.lock()
                            .unwrap()
                            .extend(events.iter().map(|e| e["id"].as_str().unwrap().to_string()));
                        if conn
                            .write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        Receiver { url, ids }
    }

    fn ids(&self) -> Vec<String> {
        self.ids.lock().unwrap().clone()
    }
}

// The child is waited for in `Running::drop`, which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn serve_hooked(policies: &std::path::Path, redis: &str, hook: &str) -> common::Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tierwise"))
        .args(["serve", "--listen", "127.0.0.1:0", "--no-watch", "--decision-log", "off"])
        .arg("--policies")
        .arg(policies)
        .args(["--redis", redis, "--webhook", hook])
        .args(["--webhook-secret", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])
        .args(["--webhook-lease-ms", "1500"])
        .env_remove("TIERWISE_ADMIN_TOKEN")
        .env_remove("TIERWISE_REDIS_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (addr, stderr) = common::listening(&mut child);
    common::Running { child, addr, stderr }
}

/// Two replicas on one Redis share a webhook: one delivers, the other waits; the one
/// delivering is killed with SIGKILL mid-way, and the other delivers everything it left, in
/// order, from where it stopped (the POST in flight may come twice, with the same id).
#[test]
fn a_replica_killed_while_delivering_leaves_its_events_to_the_other() {
    use std::time::{Duration, Instant};
    let redis = redis_server::RedisServer::start();
    let dir = policies();
    let hook = Receiver::start(Duration::from_millis(150));
    let a = serve_hooked(dir.path(), &redis.url(), &hook.url);
    let b = serve_hooked(dir.path(), &redis.url(), &hook.url);
    for d in 0..30 {
        evaluate(&a.addr, &snapshot(d));
    }
    let want = outbox(&b.addr);
    assert!(want.len() >= 20, "{} events", want.len());
    // Delivery under way: one replica at a time.
    let t = Instant::now();
    while hook.ids().len() < 4 {
        assert!(t.elapsed() < Duration::from_secs(20), "nothing delivered");
        std::thread::sleep(Duration::from_millis(20));
    }
    let delivered = |s: &common::Running| metric(&s.addr, "tierwise_webhook_delivered_total");
    let (da, db) = loop {
        let (da, db) = (delivered(&a), delivered(&b));
        if da + db > 0.0 {
            break (da, db);
        }
        assert!(t.elapsed() < Duration::from_secs(20), "no acknowledgement counted");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(da == 0.0 || db == 0.0, "both replicas deliver: {da} and {db}");
    let (mut leader, other) = if da > 0.0 { (a, b) } else { (b, a) };
    assert!(hook.ids().len() < want.len(), "delivered everything before the kill");
    let _ = leader.child.kill(); // SIGKILL
    let _ = leader.child.wait();
    let t = Instant::now();
    loop {
        let got = hook.ids();
        let mut unique: Vec<String> = Vec::new();
        for id in got {
            if !unique.contains(&id) {
                unique.push(id);
            }
        }
        if unique.len() == want.len() {
            assert_eq!(unique, want, "every event, in the outbox's order");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{} of {} delivered after the kill",
            unique.len(),
            want.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(delivered(&other) > 0.0, "the other took over");
}
