//! Hostile input against the real binary (hardening item 12): admin tokens missing, wrong or
//! malformed; account ids built to escape the Redis key namespace or read another account's
//! entry (checked against a redis-server of the test's own, by SCAN); and errors that must
//! not give away the admin token, a Redis password or the server's absolute paths.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/mod.rs"]
mod common;
#[path = "common/redis_server.rs"]
mod redis_server;

use redis_server::RedisServer;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "adm1n-T0ken-7f3c9a1e5d";

struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim())
        })
    }
    /// Everything the client sees: status line, headers, body.
    fn all(&self) -> String {
        format!("{}\r\n\r\n{}", self.head, self.body)
    }
}

/// One request per connection, written byte for byte (so headers can hold what no HTTP
/// library would send).
fn raw(addr: &str, method: &str, path: &str, headers: &[&[u8]], body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n").into_bytes();
    if !headers.iter().any(|h| h.to_ascii_lowercase().starts_with(b"content-length:")) {
        req.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    for h in headers {
        req.extend_from_slice(h);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    s.write_all(&req).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Reply { status, head: head.to_string(), body: body.to_string() }
}

fn get(addr: &str, path: &str) -> Reply {
    raw(addr, "GET", path, &[], b"")
}

fn post(addr: &str, path: &str, body: &Value) -> Reply {
    raw(addr, "POST", path, &[b"Content-Type: application/json"], body.to_string().as_bytes())
}

use common::Running;

impl Running {
    /// What the server wrote on stderr so far.
    fn log(&self) -> String {
        self.stderr.try_iter().collect::<Vec<_>>().join("\n")
    }
}

/// `tierwise serve` on a free port, the admin token set, over `policies`.
#[allow(clippy::zombie_processes)] // waited for in `Running::drop`
fn serve(policies: &Path, redis_url: Option<&str>, extra: &[&str]) -> Running {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tierwise"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--no-watch", "--decision-log", "off"])
        .arg("--policies")
        .arg(policies)
        .args(extra);
    if let Some(url) = redis_url {
        cmd.args(["--redis", url]);
    }
    let mut child = cmd
        .env("TIERWISE_ADMIN_TOKEN", TOKEN)
        .env_remove("TIERWISE_REDIS_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (addr, stderr) = common::listening(&mut child);
    Running { child, addr, stderr }
}

fn wait_until(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < limit, "{what}: not seen within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Percent-encodes every byte but the unreserved ones: a path segment that decodes to `id`.
fn segment(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn account(id: &str, revenue: f64) -> Value {
    json!({ "id": id, "manager": "jane", "current_tier": "key", "tier_since": "2025-06-01", "as_of": "2026-11-01",
            "fields": { "revenue_12m": revenue, "potential": 2_000_000.0, "gross_margin": 0.31, "relationship": "cooperative", "strategic_fit": 4 } })
}

fn shipped() -> std::path::PathBuf {
    common::root().join("policies")
}

// ---------------------------------------------------------------------------------------
// admin tokens

#[test]
fn admin_tokens_missing_wrong_or_malformed_are_refused_and_never_echoed() {
    let srv = serve(&shipped(), None, &[]);
    let reload = |auth: Option<&[u8]>| {
        let mut line = Vec::new();
        if let Some(a) = auth {
            line.extend_from_slice(b"Authorization: ");
            line.extend_from_slice(a);
        }
        let headers: Vec<&[u8]> = if auth.is_some() { vec![&line] } else { vec![] };
        raw(&srv.addr, "POST", "/v1/policies/reload", &headers, b"")
    };
    let long = format!("Bearer {}", "x".repeat(16 * 1024));
    let cases: Vec<(&str, Option<Vec<u8>>, u16)> = vec![
        ("no header", None, 401),
        ("scheme only", Some(b"Bearer".to_vec()), 401),
        ("empty token", Some(b"Bearer ".to_vec()), 401),
        ("blank token", Some(b"Bearer      ".to_vec()), 401),
        ("no scheme", Some(TOKEN.as_bytes().to_vec()), 401),
        ("other scheme, right token", Some(format!("Token {TOKEN}").into_bytes()), 401),
        ("basic", Some(b"Basic YWRtaW46cGFzc3dvcmQ=".to_vec()), 401),
        (
            "non-ASCII bytes",
            Some([&b"Bearer "[..], "j\u{e9}t\u{f6}n-\u{2603}".as_bytes()].concat()),
            401,
        ),
        ("latin-1 bytes", Some(b"Bearer \xff\xfe\xe9secret-echo".to_vec()), 401),
        ("wrong token", Some(b"Bearer wrong-secret-echo".to_vec()), 403),
        ("token with a suffix", Some(format!("Bearer {TOKEN}x").into_bytes()), 403),
        (
            "a prefix of the token",
            Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]).into_bytes()),
            403,
        ),
        ("other case", Some(format!("Bearer {}", TOKEN.to_uppercase()).into_bytes()), 403),
        ("16 KiB token", Some(long.clone().into_bytes()), 403),
    ];
    for (what, auth, want) in &cases {
        let r = reload(auth.as_deref());
        assert_eq!(r.status, *want, "{what}: {}", r.all());
        assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
        let code = r.json()["code"].clone();
        assert_eq!(code, if *want == 401 { "unauthorized" } else { "forbidden" }, "{what}");
        if *want == 401 {
            assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{what}");
        }
        let all = r.all();
        assert!(
            !all.contains(TOKEN) && !all.contains("secret-echo") && !all.contains("xxxxxxxx"),
            "{what}: the answer repeats the token: {all}"
        );
    }
    // Bytes no HTTP parser accepts in a header (control characters): refused before the
    // service sees them, and not echoed either.
    for (what, bad) in [
        ("NUL", &b"Bearer a\x00b-secret-echo"[..]),
        ("DEL", b"Bearer a\x7fb-secret-echo"),
        ("bare CR", b"Bearer a\rb-secret-echo"),
    ] {
        let r = reload(Some(bad));
        assert!(matches!(r.status, 400 | 401 | 403), "{what}: {}", r.all());
        assert!(!r.all().contains("secret-echo"), "{what}: {}", r.all());
    }
    // The scheme is case-insensitive (RFC 9110); the right token passes.
    for ok in [format!("Bearer {TOKEN}"), format!("bearer {TOKEN}"), format!("BEARER   {TOKEN}  ")]
    {
        let r = reload(Some(ok.as_bytes()));
        assert_eq!(r.status, 200, "{ok:?}: {}", r.all());
    }
}

// ---------------------------------------------------------------------------------------
// account ids and the Redis key namespace

/// Ids built to escape a key's place: path tricks, glob characters (`KEYS`/`SCAN` patterns),
/// the key separator, a whole key of another account, protocol characters, NUL, whitespace,
/// unicode and 10 kB of text.
fn tricky_ids() -> Vec<String> {
    let mut ids: Vec<String> = [
        "ab",
        "a*",
        "*",
        "a?",
        "[a-z]b",
        "a[b]",
        "../ab",
        "../../../etc/passwd",
        "..",
        "a/b",
        "a\\b",
        "a:b",
        "a%3Ab",
        "a%b",
        "enterprise:ab",
        "tierwise:v2:latest:{enterprise:ab}",
        "ab\r\nSET tierwise:v2:latest:{enterprise:ab} pwned\r\n",
        "{enterprise:ab}",
        "a}b{c",
        "ab\n",
        "a\0b",
        "a b",
        " ",
        "\u{fc}n\u{ef}c\u{f8}d\u{e9} \u{2603} \u{1F600} \u{202e}ba",
        "ab\u{200b}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // The longest ids the service takes (256 bytes; longer ones are refused on input).
    ids.push("k".repeat(256));
    ids.push(format!("{}*", "x".repeat(255)));
    ids
}

#[test]
fn account_ids_cannot_escape_the_key_namespace_nor_read_another_account() {
    let redis = RedisServer::start();
    let srv = serve(&shipped(), Some(&redis.url()), &["--cache-always"]);
    wait_until(Duration::from_secs(10), "cache ok", || {
        get(&srv.addr, "/readyz").json()["cache"] == "ok"
    });
    let ids = tricky_ids();
    // Different revenues, so that two accounts' decisions differ beyond their ids.
    let accounts: Vec<Value> =
        ids.iter().enumerate().map(|(i, id)| account(id, 50_000.0 + 97_000.0 * i as f64)).collect();
    let r = post(&srv.addr, "/v1/evaluate", &json!({ "accounts": accounts }));
    assert_eq!(r.status, 200, "{}", r.body);
    let answered = r.json()["accounts"].as_array().unwrap().clone();
    assert_eq!(answered.len(), ids.len());
    for (id, a) in ids.iter().zip(&answered) {
        assert_eq!(a["id"].as_str(), Some(id.as_str()), "decided under its own id");
    }

    // Every latest decision is in Redis (writes are queued: wait for them).
    let mut con = redis.client();
    let scan = |con: &mut redis::Connection| -> Vec<Vec<u8>> {
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<Vec<u8>>) =
                redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(1000).query(con).unwrap();
            keys.extend(batch);
            if next == 0 {
                return keys;
            }
            cursor = next;
        }
    };
    let latest_prefix = b"tierwise:v2:latest:{enterprise:";
    wait_until(Duration::from_secs(5), "every latest decision written", || {
        scan(&mut con).iter().filter(|k| k.starts_with(latest_prefix)).count() >= ids.len()
    });
    let keys = scan(&mut con);
    for k in &keys {
        assert!(
            k.starts_with(b"tierwise:v2:"),
            "a key outside the namespace: {:?}",
            String::from_utf8_lossy(k)
        );
    }
    let latest: Vec<&Vec<u8>> = keys.iter().filter(|k| k.starts_with(latest_prefix)).collect();
    assert_eq!(
        latest.len(),
        ids.len(),
        "one latest key per id: no two ids share one, none was split"
    );
    // The CRLF id wrote no key of its own making (RESP bulk strings are length-prefixed).
    let injected: Option<Vec<u8>> =
        redis::cmd("GET").arg("tierwise:v2:latest:{enterprise:ab}").query(&mut con).unwrap();
    assert!(injected.is_some_and(|v| !v.windows(5).any(|w| w == b"pwned")), "the injected SET ran");

    // Each id reads back its own decision, and only its own.
    for (id, a) in ids.iter().zip(&answered) {
        let r = get(&srv.addr, &format!("/v1/accounts/{}/decision", segment(id)));
        assert_eq!(r.status, 200, "{id:?}: {}", r.body);
        let v = r.json();
        assert_eq!(v["account"].as_str(), Some(id.as_str()));
        assert_eq!(&v["decision"], a, "{id:?} read another account's decision");
    }
    // Patterns and near-misses that were never evaluated find nothing: `*`-like ids are keys,
    // not patterns, and the separator is escaped.
    for probe in [
        "a",
        "b",
        "?b",
        "a?b",
        "[ab]b",
        "a[b]b",
        "*b",
        "a**",
        "ab ",
        "ab\r\n",
        "enterprise",
        "latest:enterprise:ab",
        "ab%00",
        "AB",
        "../../ab",
        "./ab",
        "k",
    ] {
        assert!(!ids.iter().any(|i| i == probe), "{probe:?} is evaluated");
        let r = get(&srv.addr, &format!("/v1/accounts/{}/decision", segment(probe)));
        assert_eq!(r.status, 404, "{probe:?} found another account's decision: {}", r.body);
        assert_eq!(r.json()["code"], "unknown_account", "{probe:?}");
    }
    // Under another policy's name, an account decided under `enterprise` is not found.
    let r = get(&srv.addr, "/v1/accounts/ab/decision?policy=mid-market");
    assert!(matches!(r.status, 404 | 503), "{}", r.body);
    // A path that does not decode to UTF-8 is a JSON 400, not a lookup.
    let r = get(&srv.addr, "/v1/accounts/%FF%FE/decision");
    assert_eq!((r.status, r.header("content-type")), (400, Some("application/json")), "{}", r.body);
}

// ---------------------------------------------------------------------------------------
// what errors give away

/// The shipped policies plus two that fail to load: one with a type error, one with a file
/// over the size limit (its read error names the file).
fn policies_with_failures() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("policies");
    common::copy_dir(&shipped(), &dir);
    let broken = dir.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("policy.toml"),
        "[policy]\nversion = 3\n[inputs]\nx = { type = \"nope\" }\n",
    )
    .unwrap();
    let big = dir.join("toolarge");
    std::fs::create_dir_all(&big).unwrap();
    std::fs::copy(dir.join("enterprise/policy.toml"), big.join("policy.toml")).unwrap();
    std::fs::write(big.join("notes.txt"), vec![b'x'; 4 * 1024 * 1024 + 1]).unwrap();
    (tmp, dir)
}

/// The secrets and places no answer may contain.
struct Secrets {
    needles: Vec<String>,
}

impl Secrets {
    fn check(&self, what: &str, r: &Reply) {
        let all = r.all();
        for n in &self.needles {
            assert!(!all.contains(n.as_str()), "{what} gives away `{n}`:\n{all}");
        }
    }
}

#[test]
fn errors_never_echo_the_token_a_redis_password_or_server_paths() {
    let (_tmp, dir) = policies_with_failures();
    let redis = RedisServer::start();
    let password = "r3dis-Pa55word-91b7e2";
    let mut con = redis.client();
    let _: () =
        redis::cmd("CONFIG").arg("SET").arg("requirepass").arg(password).query(&mut con).unwrap();
    let url = format!("redis://:{password}@127.0.0.1:{}/", redis.port);
    let wrong_url = format!("redis://:wrong-{password}@127.0.0.1:{}/", redis.port);

    let mut needles = vec![
        TOKEN.to_string(),
        password.to_string(),
        dir.display().to_string(),
        "/tmp/".to_string(),
    ];
    if let Ok(canon) = dir.canonicalize() {
        needles.push(canon.display().to_string());
    }
    if let Ok(home) = std::env::var("HOME")
        && home.len() > 1
    {
        needles.push(format!("{home}/"));
    }
    if let Some(tmp) = std::env::temp_dir().to_str().filter(|t| t.len() > 1) {
        needles.push(tmp.trim_end_matches('/').to_string() + "/");
    }
    let secrets = Secrets { needles };

    for (label, redis_url) in [("right password", &url), ("wrong password", &wrong_url)] {
        let srv = serve(&dir, Some(redis_url), &[]);
        if label == "right password" {
            wait_until(Duration::from_secs(10), "cache ok", || {
                get(&srv.addr, "/readyz").json()["cache"] == "ok"
            });
        } else {
            wait_until(Duration::from_secs(10), "cache degraded", || {
                get(&srv.addr, "/readyz").json()["cache"] == "degraded"
            });
        }
        let a = &srv.addr;
        let mut replies: Vec<(String, Reply)> = Vec::new();
        let mut push = |what: &str, r: Reply| replies.push((format!("{label}: {what}"), r));
        push("readyz", get(a, "/readyz"));
        push("policies", get(a, "/v1/policies"));
        push("broken policy", get(a, "/v1/policies/broken"));
        push("too large policy", get(a, "/v1/policies/toolarge"));
        push(
            "reload",
            raw(
                a,
                "POST",
                "/v1/policies/reload",
                &[format!("Authorization: Bearer {TOKEN}").as_bytes()],
                b"",
            ),
        );
        push(
            "reload, wrong token",
            raw(a, "POST", "/v1/policies/reload", &[b"Authorization: Bearer nope"], b""),
        );
        push(
            "evaluate",
            post(
                a,
                "/v1/evaluate",
                &json!({ "accounts": [account("acme", 1e6), { "id": 7 }, [1, 2]] }),
            ),
        );
        push(
            "evaluate, failed policy",
            post(
                a,
                "/v1/evaluate",
                &json!({ "policy": "broken", "accounts": [account("acme", 1e6)] }),
            ),
        );
        push(
            "evaluate, unknown policy",
            post(a, "/v1/evaluate", &json!({ "policy": "../../etc", "accounts": [] })),
        );
        push("portfolio", post(a, "/v1/portfolio", &json!({ "accounts": [account("acme", 1e6)] })));
        push(
            "malformed JSON",
            raw(
                a,
                "POST",
                "/v1/evaluate",
                &[b"Content-Type: application/json"],
                b"{\"accounts\": [}",
            ),
        );
        push("wrong shape", post(a, "/v1/evaluate", &json!({ "accounts": 5 })));
        push("no content type", raw(a, "POST", "/v1/evaluate", &[], b"{}"));
        push(
            "over the body limit",
            raw(
                a,
                "POST",
                "/v1/evaluate",
                &[b"Content-Type: application/json", b"Content-Length: 99999999999"],
                b"",
            ),
        );
        push("unknown route", get(a, "/v2/nothing"));
        push("wrong method", raw(a, "DELETE", "/v1/evaluate", &[], b""));
        push("latest decision", get(a, "/v1/accounts/acme/decision"));
        push("unknown account", get(a, "/v1/accounts/nobody/decision"));
        push("unknown schema", get(a, "/v1/schemas/..%2F..%2Fetc%2Fpasswd"));
        push("undecodable path", get(a, "/v1/policies/%C3%28"));
        push("metrics", get(a, "/metrics"));
        push(
            "dry run, broken candidate",
            post(
                a,
                "/v1/dry-run",
                &json!({ "candidate": { "files": { "policy.toml": "[policy]\nversion = 1\n[[tiers]]\nid = 3\n" } }, "accounts": [] }),
            ),
        );
        push(
            "dry run, refused file name",
            post(
                a,
                "/v1/dry-run",
                &json!({ "candidate": { "files": { "../../x.rhai": "", "scripts/a.rhai": "fn f(" } }, "accounts": [] }),
            ),
        );
        push(
            "dry run, script error",
            post(
                a,
                "/v1/dry-run",
                &json!({ "candidate": { "files": { "policy.toml": "[policy]\nversion='1'\n", "scripts/a.rhai": "fn f( {" } }, "accounts": [] }),
            ),
        );
        push(
            "dry run, bad override",
            post(
                a,
                "/v1/dry-run",
                &json!({ "overrides": { "tiers.nope.min_score": 1 }, "accounts": [] }),
            ),
        );
        push(
            "dry run",
            post(
                a,
                "/v1/dry-run",
                &json!({ "overrides": { "tiers.key.min_score": 7.0 }, "accounts": [account("acme", 1e6)] }),
            ),
        );
        for (what, r) in &replies {
            assert!(r.status != 0, "{what}: no answer");
            secrets.check(what, r);
        }
        // The failures are there, with their places, relative to the policies folder.
        let policies =
            replies.iter().find(|(w, _)| w.ends_with(": policies")).map(|(_, r)| r.json()).unwrap();
        let last_error = |name: &str| {
            policies["policies"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .map(|p| p["last_error"].clone())
                .unwrap()
        };
        assert_eq!(last_error("broken")["code"], "invalid_policy", "{policies}");
        let big = last_error("toolarge");
        assert_eq!(big["code"], "read_error", "{policies}");
        assert!(big["message"].as_str().unwrap().contains("`toolarge/notes.txt`"), "{big}");
        let codes: Vec<(u16, String)> = replies
            .iter()
            .map(|(_, r)| {
                (
                    r.status,
                    serde_json::from_str::<Value>(&r.body)
                        .ok()
                        .and_then(|v| v["code"].as_str().map(String::from))
                        .unwrap_or_default(),
                )
            })
            .collect();
        for want in [
            (503, "policy_unavailable"),
            (404, "unknown_policy"),
            (400, "malformed_json"),
            (422, "invalid_request"),
            (415, "unsupported_media_type"),
            (413, "payload_too_large"),
            (405, "method_not_allowed"),
            (422, "candidate_invalid"),
            (400, "bad_candidate_path"),
            (422, "invalid_override"),
            (403, "forbidden"),
        ] {
            assert!(
                codes.contains(&(want.0, want.1.to_string())),
                "{label}: no {want:?} among {codes:?}"
            );
        }
        if label == "wrong password" {
            let r = get(a, "/v1/accounts/acme/decision");
            assert_eq!(
                (r.status, r.json()["code"].clone()),
                (503, json!("cache_unavailable")),
                "{}",
                r.body
            );
            secrets.check("cache unavailable", &r);
        }
        // The operator's log may name the folder, never the password or the token.
        let log = srv.log();
        assert!(
            !log.contains(password) && !log.contains(TOKEN),
            "stderr gives a secret away:\n{log}"
        );
    }
}
