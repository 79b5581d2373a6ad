//! Events end to end: `tierwise serve --events` with webhooks pointing at a real receiver
//! (an HTTP server this test starts on a free port) that checks every signature with the
//! Standard Webhooks algorithm, written here independently of the service's code.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "../examples/gen_portfolio.rs"]
#[allow(dead_code)]
mod gen_portfolio;
#[path = "common/live.rs"]
mod live;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use live::{Answer, get, post};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SECRET_BYTES: &[u8; 32] = b"tierwise-events-test-secret-32b!";
const TOKEN: &str = "events-admin-token";

fn secret() -> String {
    format!("whsec_{}", B64.encode(SECRET_BYTES))
}

/// HMAC-SHA256 (RFC 2104), the receiver's own.
fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    k[..key.len()].copy_from_slice(key);
    let inner = Sha256::new().chain_update(k.map(|b| b ^ 0x36)).chain_update(msg).finalize();
    Sha256::new().chain_update(k.map(|b| b ^ 0x5c)).chain_update(inner).finalize().into()
}

#[derive(Debug, Clone)]
struct Got {
    id: String,
    content_type: String,
    body: Value,
}

#[derive(Default)]
struct Recv {
    /// What to answer (200 unless a test says otherwise).
    status: u16,
    got: Vec<Got>,
    /// Requests whose signature or timestamp did not check out.
    bad: Vec<String>,
    attempts: usize,
}

struct Receiver {
    url: String,
    state: Arc<Mutex<Recv>>,
}

impl Receiver {
    fn start() -> Receiver {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        let state = Arc::new(Mutex::new(Recv { status: 200, ..Default::default() }));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in l.incoming().map_while(Result::ok) {
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = handle(conn, &st);
                });
            }
        });
        Receiver { url, state }
    }

    fn set_status(&self, s: u16) {
        self.state.lock().unwrap().status = s;
    }

    fn got(&self) -> Vec<Got> {
        self.state.lock().unwrap().got.clone()
    }

    /// Every CloudEvent received (batches unpacked), in arrival order.
    fn events(&self) -> Vec<Value> {
        self.got()
            .into_iter()
            .flat_map(|g| match g.body {
                Value::Array(a) => a,
                one => vec![one],
            })
            .collect()
    }

    fn wait_for(&self, n: usize, within: Duration) -> Vec<Value> {
        let t = Instant::now();
        loop {
            let ev = self.events();
            if ev.len() >= n || t.elapsed() > within {
                return ev;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn bad(&self) -> Vec<String> {
        self.state.lock().unwrap().bad.clone()
    }
}

fn handle(conn: TcpStream, st: &Mutex<Recv>) -> std::io::Result<()> {
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut headers = std::collections::HashMap::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        let h = |k: &str| headers.get(k).cloned().unwrap_or_default();
        let (id, ts, sig) = (h("webhook-id"), h("webhook-timestamp"), h("webhook-signature"));
        let mut signed = format!("{id}.{ts}.").into_bytes();
        signed.extend_from_slice(&body);
        let want = format!("v1,{}", B64.encode(hmac(SECRET_BYTES, &signed)));
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
                as i64;
        let fresh = ts.parse::<i64>().is_ok_and(|t| (now - t).abs() <= 300);
        let status = {
            let mut s = st.lock().unwrap();
            s.attempts += 1;
            if !fresh || !sig.split(' ').any(|x| x == want) {
                s.bad.push(format!("{id}: signature {sig:?}, timestamp {ts}"));
            }
            if (200..300).contains(&s.status) {
                s.got.push(Got {
                    id,
                    content_type: h("content-type"),
                    body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                });
            }
            s.status
        };
        let conn = r.get_mut();
        write!(conn, "HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n")?;
        conn.flush()?;
    }
}

const POLICY: &str = r#"
[policy]
description = "events test"
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
cooldown_days = 14
renotify_days = 30

[[portfolio.alerts]]
id = "few_keys"
severity = "medium"
when = "tier_count(\"key\") < 2"
message = "only {tier_count(\"key\")} key accounts"
"#;

struct Served {
    live: common::Running,
    _dir: tempfile::TempDir,
}

// The child is waited for in `Running::drop`, which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn serve(hooks_toml: &str) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let pol = dir.path().join("policies/ev");
    std::fs::create_dir_all(&pol).unwrap();
    std::fs::write(pol.join("policy.toml"), POLICY).unwrap();
    let hooks = dir.path().join("webhooks.toml");
    std::fs::write(&hooks, hooks_toml).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tierwise"))
        .args(["serve", "--listen", "127.0.0.1:0", "--no-watch", "--decision-log", "off"])
        .arg("--policies")
        .arg(dir.path().join("policies"))
        .arg("--events")
        .arg("--webhooks")
        .arg(&hooks)
        .env("TIERWISE_ADMIN_TOKEN", TOKEN)
        .env("EVENTS_TEST_SECRET", secret())
        .env_remove("TIERWISE_WEBHOOK_URL")
        .env_remove("TIERWISE_WEBHOOK_SECRET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (addr, stderr) = common::listening(&mut child);
    Served { live: common::Running { child, addr, stderr }, _dir: dir }
}

fn hook(url: &str, extra: &str) -> String {
    format!("[[webhook]]\nurl = \"{url}\"\nsecret_env = \"EVENTS_TEST_SECRET\"\n{extra}\n")
}

fn snap(id: &str, as_of: &str, revenue: f64, nps: Option<(i64, i64)>) -> Value {
    let mut fields = json!({ "revenue": revenue });
    if let Some((now, prev)) = nps {
        fields["nps"] = json!(now);
        fields["nps_prev"] = json!(prev);
    }
    json!({ "id": id, "as_of": as_of, "fields": fields })
}

fn evaluate(addr: &str, accounts: &[Value]) -> Answer {
    let a = post(addr, "/v1/evaluate", json!({ "accounts": accounts }).to_string().as_bytes());
    assert_eq!(a.status, 200, "{}", a.text());
    a
}

/// The `(account, type)` of every event an answer lists.
fn listed(a: &Answer) -> Vec<(String, String, String)> {
    let v = a.json();
    let mut out = Vec::new();
    for acc in v["accounts"].as_array().unwrap() {
        for e in acc["events"].as_array().into_iter().flatten() {
            out.push((
                acc["id"].as_str().unwrap().to_string(),
                e["type"].as_str().unwrap().to_string(),
                e["id"].as_str().unwrap().to_string(),
            ));
        }
    }
    for e in v["book"]["events"].as_array().into_iter().flatten() {
        out.push((
            format!("book:{}", v["book"]["name"].as_str().unwrap()),
            e["type"].as_str().unwrap().to_string(),
            e["id"].as_str().unwrap().to_string(),
        ));
    }
    out
}

/// The NPS timeline of the docs: raised, quiet, repeated, cleared, a flap inside the
/// cooldown, raised again once the cooldown has passed; a tier change; a late snapshot.
fn timeline() -> Vec<(&'static str, Vec<Value>)> {
    let drop = Some((10, 40));
    let calm = Some((40, 40));
    vec![
        (
            "2026-01-01",
            vec![snap("a1", "2026-01-01", 250.0, drop), {
                let mut a2 = snap("a2", "2026-01-01", 250.0, None);
                a2["current_tier"] = json!("key");
                a2["tier_since"] = json!("2025-06-01");
                a2
            }],
        ),
        ("2026-01-08", vec![snap("a1", "2026-01-08", 250.0, drop)]),
        ("2026-01-31", vec![snap("a1", "2026-01-31", 250.0, drop)]),
        (
            "2026-02-10",
            vec![snap("a1", "2026-02-10", 250.0, calm), snap("a2", "2026-02-10", 150.0, None)],
        ),
        ("2026-02-15", vec![snap("a1", "2026-02-15", 250.0, drop)]),
        ("2026-02-20", vec![snap("a1", "2026-02-20", 250.0, calm)]),
        ("2026-02-26", vec![snap("a1", "2026-02-26", 250.0, drop)]),
        (
            "2026-03-01",
            vec![snap("a1", "2026-03-01", 50.0, drop), snap("a2", "2026-03-01", 50.0, None)],
        ),
        // late: older than what a1 and a2 have had accepted
        (
            "late",
            vec![snap("a1", "2026-02-01", 250.0, calm), snap("a2", "2026-02-01", 250.0, None)],
        ),
    ]
}

/// Replaces what changes from run to run (times, the policy hash) for the snapshot.
fn redact(mut e: Value) -> Value {
    e["time"] = json!("[time]");
    e["data"]["policy"]["hash"] = json!("[hash]");
    e
}

#[test]
fn a_dated_sequence_gives_exactly_the_rules_events_each_signed() {
    let rx = Receiver::start();
    let s = serve(&hook(&rx.url, ""));
    let addr = &s.live.addr;
    let mut emitted = Vec::new();
    for (_, accounts) in timeline() {
        emitted.extend(listed(&evaluate(addr, &accounts)));
    }
    let types: Vec<String> = emitted.iter().map(|(a, t, _)| format!("{a} {t}")).collect();
    assert_eq!(
        types,
        [
            "a1 tier.changed",
            "a1 alert.raised",
            "a1 alert.repeated",
            "a1 alert.cleared",
            // 02-15: back 5 days after the clearing, inside the 14-day cooldown: silent
            // 02-20: the silent one ends: nothing
            "a1 alert.raised", // 02-26: 16 days after the told clearing
            "a1 tier.changed", // 03-01: key -> other (the alert stands: nothing)
            "a2 tier.changed", // 03-01: key -> other
        ]
    );
    // Portfolio level has its own state, and the book its alert.
    let book = json!({
        "book": "emea",
        "accounts": [
            { "id": "a1", "as_of": "2026-03-01", "current_tier": "key", "fields": { "revenue": 50.0 } },
            { "id": "a2", "as_of": "2026-03-01", "current_tier": "key", "fields": { "revenue": 250.0 } },
        ]
    });
    let a = post(addr, "/v1/portfolio", book.to_string().as_bytes());
    assert_eq!(a.status, 200, "{}", a.text());
    let pe = listed(&a);
    assert_eq!(
        pe.iter().map(|(a, t, _)| format!("{a} {t}")).collect::<Vec<_>>(),
        ["a1 tier.changed", "book:emea portfolio_alert.raised"]
    );
    emitted.extend(pe);

    let got = rx.wait_for(emitted.len(), Duration::from_secs(20));
    assert_eq!(rx.bad(), Vec::<String>::new(), "every signature checks out");
    let ids: Vec<&str> = got.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let want: Vec<&str> = emitted.iter().map(|(_, _, id)| id.as_str()).collect();
    assert_eq!(ids, want, "delivered once each, in emission order");
    for g in rx.got() {
        assert_eq!(g.content_type, "application/cloudevents+json");
        assert_eq!(g.body["id"].as_str(), Some(g.id.as_str()), "webhook-id is the event id");
    }
    insta::assert_json_snapshot!(
        "sequence_events",
        got.into_iter().map(redact).collect::<Vec<_>>()
    );

    // Pull: the same events, cursor-paged, filtered.
    let mut pulled = Vec::new();
    let mut after = String::new();
    loop {
        let p = get(addr, &format!("/v1/events?limit=3&after={after}")).json();
        let page = p["events"].as_array().unwrap().clone();
        if page.is_empty() {
            break;
        }
        pulled.extend(page);
        after = p["next"].as_str().unwrap().to_string();
    }
    assert_eq!(pulled.iter().map(|e| e["id"].as_str().unwrap()).collect::<Vec<_>>(), want);
    let raised = get(addr, "/v1/events?type=alert.raised&level=account").json();
    assert_eq!(raised["events"].as_array().unwrap().len(), 2);
    let bad = get(addr, "/v1/events?type=tier.moved");
    assert_eq!((bad.status, bad.code()), (400, "bad_query".to_string()));

    // History: tier periods with dates and reasons, active alerts with their dates.
    let h = get(addr, "/v1/accounts/a1/history").json();
    insta::assert_json_snapshot!("a1_history", h);

    // Readiness says the state is memory-only.
    let r = get(addr, "/readyz").json();
    assert_eq!(r["details"]["events"]["state"], "memory-only", "{r}");
    assert_eq!(live::metric(addr, "tierwise_events_emitted_total{type=\"alert.raised\"}"), 2.0);
}

#[test]
fn a_receiver_down_for_a_while_gets_everything_in_order_once_back() {
    let rx = Receiver::start();
    rx.set_status(503);
    let s = serve(&hook(&rx.url, "first_retry = \"100ms\""));
    let addr = &s.live.addr;
    let mut emitted = Vec::new();
    for day in 1..=6 {
        let accounts: Vec<Value> = (0..5)
            .map(|i| {
                // every other day the tier flips and the alert toggles
                let up = (day + i) % 2 == 0;
                snap(
                    &format!("acct-{i}"),
                    &format!("2026-01-{day:02}"),
                    if up { 250.0 } else { 50.0 },
                    up.then_some((0, 40)),
                )
            })
            .collect();
        emitted.extend(listed(&evaluate(addr, &accounts)));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert!(rx.events().is_empty());
    rx.set_status(200);
    let got = rx.wait_for(emitted.len(), Duration::from_secs(30));
    assert_eq!(rx.bad(), Vec::<String>::new());
    let ids: Vec<&str> = got.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "none twice");
    assert_eq!(ids, emitted.iter().map(|(_, _, id)| id.as_str()).collect::<Vec<_>>());
    // per account, in `as_of` order
    for i in 0..5 {
        let days: Vec<&str> = got
            .iter()
            .filter(|e| e["subject"] == format!("acct-{i}"))
            .map(|e| e["data"]["as_of"].as_str().unwrap())
            .collect();
        assert!(days.windows(2).all(|w| w[0] <= w[1]), "{days:?}");
    }
    assert!(live::metric(addr, "tierwise_webhook_retried_total") >= 1.0);
}

#[test]
fn a_410_disables_the_webhook() {
    let rx = Receiver::start();
    rx.set_status(410);
    let s = serve(&hook(&rx.url, ""));
    let addr = &s.live.addr;
    evaluate(addr, &[snap("a1", "2026-01-01", 250.0, None)]);
    let t = Instant::now();
    while live::metric(addr, "tierwise_webhook_disabled") < 1.0 {
        assert!(t.elapsed() < Duration::from_secs(10), "not disabled");
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = rx.state.lock().unwrap().attempts;
    rx.set_status(200);
    evaluate(addr, &[snap("a1", "2026-01-02", 50.0, None)]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rx.state.lock().unwrap().attempts, before, "nothing more is sent");
    assert_eq!(get(addr, "/readyz").json()["details"]["events"]["webhooks_disabled"], 1);
}

fn admin(addr: &str, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let (status, body) = live::read_answer(&mut BufReader::new(s)).unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[test]
fn past_the_retry_window_events_are_dead_lettered_and_replay_delivers_them() {
    let rx = Receiver::start();
    rx.set_status(500);
    let s = serve(&hook(&rx.url, "first_retry = \"100ms\"\nretry_window = \"1s\""));
    let addr = &s.live.addr;
    let emitted = listed(&evaluate(addr, &[snap("a1", "2026-01-01", 250.0, Some((0, 40)))]));
    assert_eq!(emitted.len(), 2);
    let t = Instant::now();
    let dead = loop {
        let (status, v) = admin(addr, "GET", "/v1/events/dead", "");
        assert_eq!(status, 200, "{v}");
        if v["dead"].as_array().unwrap().len() == 2 {
            break v;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "not dead-lettered: {v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(dead["dead"][0]["id"].as_str(), Some(emitted[0].2.as_str()));
    assert_eq!(dead["dead"][0]["last_error"], "answered 500");
    assert_eq!(live::metric(addr, "tierwise_webhook_dead_lettered_total"), 2.0);
    // Without the token: refused.
    assert_eq!(get(addr, "/v1/events/dead").status, 401);
    rx.set_status(200);
    let (status, v) = admin(addr, "POST", "/v1/events/dead/replay", "{}");
    assert_eq!((status, v["replayed"].as_u64()), (200, Some(2)), "{v}");
    let got = rx.wait_for(2, Duration::from_secs(10));
    assert_eq!(
        got.iter().map(|e| e["id"].as_str().unwrap()).collect::<Vec<_>>(),
        emitted.iter().map(|e| e.2.as_str()).collect::<Vec<_>>()
    );
    assert_eq!(admin(addr, "GET", "/v1/events/dead", "").1["dead"], json!([]));
}
