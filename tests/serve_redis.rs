//! `tierwise serve` processes with `--redis` against a `redis-server` the test starts on a
//! free loopback port: two replicas share decisions; Redis killed (SIGKILL) and paused
//! (SIGSTOP) in the middle of a run of requests fails no request, keeps the p99 within the
//! cache deadline plus 10 ms, shows in `/readyz`, and the cache is used again within 10 s of
//! Redis coming back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/mod.rs"]
mod common;
#[path = "common/redis_cluster.rs"]
mod redis_cluster;
#[path = "common/redis_server.rs"]
mod redis_server;

use redis_cluster::RedisCluster;
use redis_server::RedisServer;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The deadline of one cache read given to the servers (`--cache-timeout-ms`).
const DEADLINE_MS: u64 = 25;

struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim())
        })
    }
    fn hits(&self) -> u64 {
        self.header("x-cache-hits").unwrap().parse().unwrap()
    }
    /// The body without its decision id.
    fn without_id(&self) -> String {
        self.body.replacen(self.header("x-decision-id").unwrap(), "", 1)
    }
}

/// One request per connection, HTTP/1.1.
fn request(addr: &str, method: &str, path: &str, body: Option<&Value>) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Reply { status, head: head.to_string(), body: body.to_string() }
}

use common::Running;

fn serve(redis: &RedisServer, extra: &[&str]) -> Running {
    serve_on(&["--redis", &redis.url()], extra)
}

fn serve_cluster(cluster: &RedisCluster, extra: &[&str]) -> Running {
    serve_on(&["--redis-cluster", &cluster.seeds()], extra)
}

#[allow(clippy::zombie_processes)] // waited for in `Running::drop`
fn serve_on(redis: &[&str], extra: &[&str]) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tierwise"))
        .args(["serve", "--listen", "127.0.0.1:0", "--no-watch", "--decision-log", "off"])
        .arg("--policies")
        .arg(common::root().join("policies"))
        .args(redis)
        .args(["--cache-timeout-ms", &DEADLINE_MS.to_string()])
        .args(extra)
        .env_remove("TIERWISE_ADMIN_TOKEN")
        .env_remove("TIERWISE_REDIS_URL")
        .env_remove("TIERWISE_REDIS_CLUSTER")
        .env("TIERWISE_LOG", "warn,tierwise::cli=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (addr, stderr) = common::listening(&mut child);
    let r = Running { child, addr, stderr };
    wait_until(Duration::from_secs(10), "cache ok", || {
        request(&r.addr, "GET", "/readyz", None).json()["cache"] == "ok"
    });
    r
}

fn wait_until(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < limit, "{what}: not seen within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    t.elapsed()
}

fn account(id: &str, revenue: f64) -> Value {
    json!({ "id": id, "manager": "jane", "current_tier": "key", "tier_since": "2025-06-01", "as_of": "2026-11-01",
            "fields": { "revenue_12m": revenue, "potential": 2_000_000.0, "gross_margin": 0.31, "relationship": "cooperative", "strategic_fit": 4 } })
}

/// A metric's value (0 when absent), e.g. `tierwise_cache_queued_writes`.
fn metric(addr: &str, name: &str) -> f64 {
    let text = request(addr, "GET", "/metrics", None).body;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// `tierwise_cache_lookups_total{result=...}` of a server.
fn lookups(addr: &str, result: &str) -> u64 {
    let text = request(addr, "GET", "/metrics", None).body;
    let needle = format!("tierwise_cache_lookups_total{{result=\"{result}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&needle)).map_or(0, |v| v.trim().parse().unwrap())
}

#[test]
fn two_replicas_share_decisions_through_one_redis() {
    let redis = RedisServer::start();
    // Both on the defaults (cost gate and doorkeeper on): a snapshot is written to the shared
    // cache the second time a replica decides it; its latest decision every time.
    let a = serve(&redis, &[]);
    let b = serve(&redis, &[]);
    let body = json!({ "accounts": [account("shared-1", 1_250_000.0)] });
    let first = request(&a.addr, "POST", "/v1/evaluate", Some(&body));
    assert_eq!(first.status, 200, "{}", first.body);
    let latest = {
        let mut con = redis.client();
        wait_until(Duration::from_secs(2), "latest decision in Redis", || {
            redis::cmd("EXISTS")
                .arg("tierwise:v2:latest:{enterprise:shared-1}")
                .query::<u64>(&mut con)
                .unwrap()
                == 1
        });
        request(&b.addr, "GET", "/v1/accounts/shared-1/decision", None)
    };
    assert_eq!(latest.status, 200, "{}", latest.body);
    let l = latest.json();
    assert_eq!(l["stale"], false);
    assert_eq!(
        l["decision"],
        first.json()["accounts"][0],
        "the latest decision through B is the one A made"
    );

    assert_eq!(request(&a.addr, "POST", "/v1/evaluate", Some(&body)).status, 200);
    let mut con = redis.client();
    wait_until(Duration::from_secs(2), "decision in Redis", || {
        !redis::cmd("KEYS")
            .arg("tierwise:v2:acct:enterprise:*")
            .query::<Vec<String>>(&mut con)
            .unwrap()
            .is_empty()
    });
    let through_b = request(&b.addr, "POST", "/v1/evaluate", Some(&body));
    assert_eq!(through_b.status, 200);
    assert_eq!(through_b.hits(), 1, "a decision made through A is a cache hit through B");
    assert_eq!(
        through_b.without_id(),
        first.without_id(),
        "the same bytes as A's fresh evaluation"
    );
    assert_eq!(lookups(&b.addr, "hit"), 2, "the latest decision and the decision");
    let ready = request(&b.addr, "GET", "/readyz", None).json();
    assert_eq!(
        (ready["cache"].clone(), ready["details"]["cache"]["backend"].clone()),
        (json!("ok"), json!("redis"))
    );
}

/// Requests sent one after another from two threads until `stop`; (status, latency) each.
fn load(
    addr: &str,
    body: &Value,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<(u16, Duration)>>> {
    (0..2)
        .map(|_| {
            let (addr, body, stop) = (addr.to_string(), body.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut out = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let r = request(&addr, "POST", "/v1/evaluate", Some(&body));
                    out.push((r.status, t.elapsed()));
                }
                out
            })
        })
        .collect()
}

#[test]
fn redis_killed_and_paused_under_requests_fails_nothing_and_comes_back() {
    let mut redis = RedisServer::start();
    // Every request reads Redis (no cost gate): the worst case for latency when it hangs.
    let srv = serve(&redis, &["--cache-always"]);
    let addr = srv.addr.clone();
    let body = json!({ "accounts": (0..10).map(|i| account(&format!("k{i}"), 100_000.0 * f64::from(i))).collect::<Vec<_>>() });
    let degraded = || request(&addr, "GET", "/readyz", None);
    let hits_again = |what: &str| {
        let before = lookups(&addr, "hit");
        let took =
            wait_until(Duration::from_secs(10), what, || lookups(&addr, "hit") > before + 10);
        println!("{what}: hits again after {took:?}");
        took
    };

    let stop = Arc::new(AtomicBool::new(false));
    let workers = load(&addr, &body, &stop);
    hits_again("warm");

    // SIGKILL: refused connections.
    redis.kill();
    wait_until(Duration::from_secs(3), "degraded after SIGKILL", || {
        let r = degraded();
        r.status == 200 && r.json()["cache"] == "degraded"
    });
    let r = degraded().json();
    println!("readyz with Redis killed: {r}");
    assert!(r["details"]["cache"]["reason"].is_string(), "{r}");
    assert_ne!(r["details"]["cache"]["breaker"], "closed", "{r}");
    // The write queue stays bounded (its capacity, 1024 batches by default) while Redis is away.
    let mut max_queued = metric(&addr, "tierwise_cache_queued_writes");
    std::thread::sleep(Duration::from_secs(1));
    redis.restart();
    let back_after_kill = hits_again("restarted");

    // SIGSTOP: a hang, not a refusal.
    redis.pause();
    wait_until(Duration::from_secs(3), "degraded after SIGSTOP", || {
        max_queued = max_queued.max(metric(&addr, "tierwise_cache_queued_writes"));
        let r = degraded();
        r.status == 200
            && r.json()["cache"] == "degraded"
            && r.json()["details"]["cache"]["breaker"] != "closed"
    });
    std::thread::sleep(Duration::from_secs(1));
    redis.resume();
    let back_after_pause = hits_again("resumed");

    stop.store(true, Ordering::Relaxed);
    let mut results: Vec<(u16, Duration)> =
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    let failed = results.iter().filter(|(s, _)| *s != 200).count();
    results.sort_by_key(|(_, d)| *d);
    let p99 = results[results.len() * 99 / 100].1;
    let max = results.last().unwrap().1;
    let text = request(&addr, "GET", "/metrics", None).body;
    let cache_lines: Vec<&str> =
        text.lines().filter(|l| l.starts_with("tierwise_cache_")).collect();
    println!(
        "{} requests, {failed} failed, p99 {p99:?}, max {max:?}\n{}",
        results.len(),
        cache_lines.join("\n")
    );
    assert_eq!(failed, 0, "no failed request");
    assert!(
        p99 <= Duration::from_millis(DEADLINE_MS + 10),
        "p99 {p99:?} over the cache deadline + 10 ms"
    );
    assert!(
        back_after_kill < Duration::from_secs(10) && back_after_pause < Duration::from_secs(10)
    );
    assert!(
        metric(&addr, "tierwise_cache_breaker_opened_total") >= 2.0,
        "the breaker opened for the kill and the pause: {text}"
    );
    max_queued = max_queued.max(metric(&addr, "tierwise_cache_queued_writes"));
    assert!(max_queued <= 1024.0, "write queue at {max_queued} batches");
}

/// `/readyz`'s `cache` field.
fn cache_state(addr: &str) -> String {
    request(addr, "GET", "/readyz", None).json()["cache"].as_str().unwrap_or("").to_string()
}

#[test]
fn readyz_tells_the_truth_about_redis_without_any_traffic() {
    let mut redis = RedisServer::start();
    let srv = serve(&redis, &[]);
    let addr = srv.addr.clone();
    // Only /readyz is asked from here on: no request reads or writes the cache.
    let limit = Duration::from_secs(2);
    redis.pause();
    let t =
        wait_until(limit, "degraded within 2 s of SIGSTOP", || cache_state(&addr) == "degraded");
    println!("SIGSTOP: degraded after {t:?}");
    redis.resume();
    let t = wait_until(limit, "ok within 2 s of SIGCONT", || cache_state(&addr) == "ok");
    println!("SIGCONT: ok after {t:?}");
    redis.kill();
    let t =
        wait_until(limit, "degraded within 2 s of SIGKILL", || cache_state(&addr) == "degraded");
    println!("SIGKILL: degraded after {t:?}");
    let r = request(&addr, "GET", "/readyz", None);
    assert_eq!(r.status, 200, "a sick cache is no reason to take the replica out: {}", r.body);
    redis.restart();
    let t = wait_until(limit, "ok within 2 s of a restart", || cache_state(&addr) == "ok");
    println!("restart: ok after {t:?}");
}

#[test]
fn two_replicas_on_a_cluster_share_decisions_and_survive_a_killed_master() {
    let mut cluster = RedisCluster::start();
    let a = serve_cluster(&cluster, &["--cache-always"]);
    let b = serve_cluster(&cluster, &["--cache-always"]);
    let body = json!({ "accounts": (0..12).map(|i| account(&format!("c{i}"), 90_000.0 * f64::from(i + 1))).collect::<Vec<_>>() });
    let first = request(&a.addr, "POST", "/v1/evaluate", Some(&body));
    assert_eq!(first.status, 200, "{}", first.body);
    wait_until(Duration::from_secs(3), "a hit through B", || {
        request(&b.addr, "POST", "/v1/evaluate", Some(&body)).hits() == 12
    });
    let latest = request(&b.addr, "GET", "/v1/accounts/c3/decision", None);
    assert_eq!(latest.status, 200, "{}", latest.body);
    assert_eq!(
        latest.json()["decision"],
        first.json()["accounts"][3],
        "the latest decision A made, through B"
    );
    // Twelve accounts spread over the three shards: a batch touched each.
    let owners: std::collections::BTreeSet<usize> =
        cluster.keys().iter().filter(|k| k.contains(":acct:")).map(|k| cluster.owner(k)).collect();
    assert_eq!(owners.len(), 3);

    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = load(&a.addr, &body, &stop);
    workers.extend(load(&b.addr, &body, &stop));
    std::thread::sleep(Duration::from_millis(500));
    cluster.kill(2);
    let t = wait_until(Duration::from_secs(2), "degraded within 2 s of a master killed", || {
        cache_state(&a.addr) == "degraded"
    });
    println!(
        "master killed: degraded after {t:?}: {}",
        request(&a.addr, "GET", "/readyz", None).body
    );
    std::thread::sleep(Duration::from_secs(1));
    cluster.restart(2, &[]);
    cluster.wait_ok(Duration::from_secs(20));
    let t = wait_until(Duration::from_secs(10), "ok after the master is back", || {
        cache_state(&a.addr) == "ok" && cache_state(&b.addr) == "ok"
    });
    println!("master restarted: ok after {t:?}");
    let before = lookups(&a.addr, "hit");
    wait_until(Duration::from_secs(10), "hits again", || lookups(&a.addr, "hit") > before + 12);
    stop.store(true, Ordering::Relaxed);
    let results: Vec<(u16, Duration)> =
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    let failed = results.iter().filter(|(s, _)| *s != 200).count();
    println!("{} requests through a killed master, {failed} failed", results.len());
    assert!(results.len() > 20);
    assert_eq!(failed, 0, "no failed request");
}
