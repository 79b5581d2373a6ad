//! The Redis cache against a real `redis-server` that each test starts on its own free
//! loopback port: hits and misses, TTL, policy changes, the key layout, round trips per
//! batch, two replicas sharing one Redis, and Redis killed, restarted, paused and resumed
//! in the middle of a run of calls.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/mod.rs"]
mod common;
#[path = "common/redis_cluster.rs"]
mod redis_cluster;
#[path = "common/redis_server.rs"]
mod redis_server;

use bytes::Bytes;
use redis_cluster::RedisCluster;
use redis_server::RedisServer;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tierwise::cache::{self, BreakerState, Cache, CacheConfig, Key, PolicyId, WriteBatch};
use tierwise::engine::{self, Outcome};
use tierwise::snapshot::Record;

/// Tests that measure latencies run one at a time: two of them side by side on two cores
/// would measure each other.
static TIMING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config(url: &str) -> CacheConfig {
    CacheConfig { redis_url: Some(url.to_string()), ..CacheConfig::default() }
}

fn cluster_config(c: &RedisCluster) -> CacheConfig {
    CacheConfig { redis_cluster: c.urls(), ..CacheConfig::default() }
}

async fn connect(cfg: &CacheConfig) -> Arc<dyn Cache> {
    let c = cache::build(cfg).unwrap();
    wait_for(&*c, Duration::from_secs(5), |c| c.stats().breaker == BreakerState::Closed).await;
    c
}

async fn wait_for(c: &dyn Cache, limit: Duration, ok: impl Fn(&dyn Cache) -> bool) -> Duration {
    let start = Instant::now();
    while !ok(c) {
        assert!(
            start.elapsed() < limit,
            "still {:?} after {limit:?}: {:?}",
            c.stats(),
            c.degraded()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

/// `n` accounts for the shipped enterprise policy, and what a fresh evaluation answers for
/// each: the snapshot records and each outcome's JSON bytes.
fn book(n: usize, salt: &str) -> (tierwise::policy::Policy, Vec<Record>, Vec<Bytes>) {
    let policy = common::shipped("enterprise");
    let rels = ["tactical", "cooperative", "interdependent", "strategic"];
    let values: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "id": format!("{salt}-{i:05}"), "manager": format!("kam-{}", i % 7), "as_of": "2026-11-01",
                "current_tier": if i % 3 == 0 { serde_json::Value::Null } else { "managed".into() },
                "fields": { "revenue_12m": 50_000.0 + 997.0 * i as f64, "potential": 200_000.0, "gross_margin": 0.25,
                            "relationship": rels[i % 4], "strategic_fit": 1 + i % 5, "nps": (i % 50) as i64 - 10 }
            })
        })
        .collect();
    let records = common::records(&values);
    let outcomes = engine::evaluate(&policy, &records);
    assert!(
        outcomes.iter().all(|o| matches!(o, Outcome::Decision(_))),
        "the generated book must be valid"
    );
    let bytes = outcomes.iter().map(|o| Bytes::from(serde_json::to_vec(o).unwrap())).collect();
    (policy, records, bytes)
}

fn keys(p: &PolicyId, records: &[Record]) -> Vec<Key> {
    records.iter().map(|r| p.account_key(&cache::snapshot_digest(r.as_ref().unwrap()))).collect()
}

fn batch(p: &PolicyId, records: &[Record], values: &[Bytes]) -> WriteBatch {
    let mut b = WriteBatch::new();
    for (r, v) in records.iter().zip(values) {
        let s = r.as_ref().unwrap();
        b.put(p.account_key(&cache::snapshot_digest(s)), v.clone());
        b.put_latest(p.latest_key(&s.id), v.clone());
    }
    b
}

fn policy_id(p: &tierwise::policy::Policy) -> PolicyId {
    PolicyId::new("enterprise", p.hash.as_str())
}

fn info(con: &mut redis::Connection, section: &str) -> String {
    redis::cmd("INFO").arg(section).query(con).unwrap()
}

/// `calls=` of `cmdstat_<cmd>` in `INFO commandstats` (0 when never called).
fn calls(info: &str, cmd: &str) -> u64 {
    let prefix = format!("cmdstat_{cmd}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_return_the_bytes_of_a_fresh_evaluation_and_a_policy_change_misses() {
    let redis = RedisServer::start();
    let c = connect(&config(&redis.url())).await;
    let (policy, records, values) = book(20, "hit");
    let p = policy_id(&policy);
    let (first, rest) = records.split_at(10);
    c.put_many(batch(&p, first, &values[..10]));
    c.flush().await;

    let got = c.get_many(&keys(&p, &records)).await;
    assert_eq!(got.len(), 20);
    for (i, g) in got.iter().enumerate() {
        if i < 10 {
            assert_eq!(
                g.as_ref(),
                Some(&values[i]),
                "account {i}: a hit is the fresh evaluation's bytes"
            );
        } else {
            assert_eq!(*g, None, "account {i} was never stored");
        }
    }
    // A fresh evaluation of the same snapshot (another request) gives the same key and bytes.
    let again = engine::evaluate(&policy, &records[3..4]);
    assert_eq!(
        serde_json::to_vec(&again[0]).unwrap(),
        c.get(&keys(&p, &records[3..4])[0]).await.unwrap().to_vec()
    );

    // Another version of the policy (another hash) and another policy name both miss.
    let changed = PolicyId::new("enterprise", "0123456789abcdef");
    assert!(c.get_many(&keys(&changed, first)).await.iter().all(Option::is_none));
    let copy = PolicyId::new("enterprise-staging", p.hash.clone());
    assert!(c.get_many(&keys(&copy, first)).await.iter().all(Option::is_none));

    // Latest decisions, by policy name and account id.
    assert_eq!(c.get_latest("enterprise", "hit-00004").await.as_ref(), Some(&values[4]));
    assert_eq!(c.get_latest("enterprise", rest[0].as_ref().unwrap().id.as_str()).await, None);
    assert_eq!(c.get_latest("mid-market", "hit-00004").await, None);

    let s = c.stats();
    assert_eq!(
        (s.backend, s.written, s.dropped_writes, s.errors, s.timeouts),
        ("redis", 20, 0, 0, 0)
    );
    assert_eq!(s.hits, 10 + 1 + 1);
    assert!(c.degraded().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_layout_ttls_and_value_format() {
    let redis = RedisServer::start();
    let cfg = CacheConfig {
        ttl: Duration::from_secs(600),
        latest_ttl: Duration::from_secs(86_400),
        ..config(&redis.url())
    };
    let c = connect(&cfg).await;
    let (policy, records, values) = book(2, "key");
    let p = policy_id(&policy);
    let mut b = batch(&p, &records, &values);
    let book_digest = cache::book_digest(&records);
    b.put(p.book_key(&book_digest), Bytes::from_static(b"{\"summary\":{}}"));
    c.put_many(b);
    c.flush().await;

    let mut raw = redis.client();
    let mut stored: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut raw).unwrap();
    stored.sort();
    let d = |i: usize| cache::snapshot_digest(records[i].as_ref().unwrap()).hex();
    let mut want = vec![
        format!("tierwise:v2:acct:enterprise:{}:{}", p.hash, d(0)),
        format!("tierwise:v2:acct:enterprise:{}:{}", p.hash, d(1)),
        format!("tierwise:v2:book:enterprise:{}:{}", p.hash, book_digest.hex()),
        "tierwise:v2:latest:{enterprise:key-00000}".to_string(),
        "tierwise:v2:latest:{enterprise:key-00001}".to_string(),
    ];
    want.sort();
    assert_eq!(stored, want, "every key is namespaced tierwise:v2:");

    // Values: the format version, then the decision's JSON.
    let v: Vec<u8> = redis::cmd("GET").arg(&want[0]).query(&mut raw).unwrap();
    assert!(v.starts_with(b"tw1\n{\""), "{:?}", String::from_utf8_lossy(&v[..20]));
    // TTLs: entries `ttl`, latest decisions `latest_ttl`.
    let pttl = |k: &str, raw: &mut redis::Connection| -> i64 {
        redis::cmd("PTTL").arg(k).query(raw).unwrap()
    };
    let t = pttl(&want[0], &mut raw);
    assert!((590_000..=600_000).contains(&t), "entry ttl {t} ms");
    let t = pttl("tierwise:v2:latest:{enterprise:key-00000}", &mut raw);
    assert!((86_390_000..=86_400_000).contains(&t), "latest ttl {t} ms");

    // A value in another format (another tierwise version sharing the Redis) is a miss.
    let k0 = keys(&p, &records[..1]);
    let () =
        redis::cmd("SET").arg(k0[0].as_str()).arg(b"tw9\n{}".as_slice()).query(&mut raw).unwrap();
    assert_eq!(c.get_many(&k0).await, vec![None]);
    assert_eq!(c.get(&p.book_key(&book_digest)).await.as_deref(), Some(&b"{\"summary\":{}}"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_expire_after_their_ttl() {
    let redis = RedisServer::start();
    let cfg = CacheConfig {
        ttl: Duration::from_millis(300),
        latest_ttl: Duration::from_millis(300),
        ..config(&redis.url())
    };
    let c = connect(&cfg).await;
    let (policy, records, values) = book(3, "ttl");
    let p = policy_id(&policy);
    c.put_many(batch(&p, &records, &values));
    c.flush().await;
    assert!(c.get_many(&keys(&p, &records)).await.iter().all(Option::is_some));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        c.get_many(&keys(&p, &records)).await.iter().all(Option::is_none),
        "expired after 300 ms"
    );
    assert_eq!(c.get_latest("enterprise", "ttl-00000").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_1000_accounts_costs_one_read_and_one_write() {
    let _one = TIMING.lock().await;
    let redis = RedisServer::start();
    let c = connect(&config(&redis.url())).await;
    let (policy, records, values) = book(1000, "rt");
    let p = policy_id(&policy);
    let k = keys(&p, &records);
    let mut raw = redis.client();
    let () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut raw).unwrap();

    let t = Instant::now();
    let cold = c.get_many(&k).await;
    let cold_ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(cold.iter().all(Option::is_none));
    let b = batch(&p, &records, &values);
    let t = Instant::now();
    c.put_many(b);
    let put_ms = t.elapsed().as_secs_f64() * 1e3;
    c.flush().await;
    let t = Instant::now();
    let warm = c.get_many(&k).await;
    let warm_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(warm, values.iter().cloned().map(Some).collect::<Vec<_>>());

    let stats = info(&mut raw, "commandstats");
    let (mget, set, multi, exec, get) = (
        calls(&stats, "mget"),
        calls(&stats, "set"),
        calls(&stats, "multi"),
        calls(&stats, "exec"),
        calls(&stats, "get"),
    );
    println!(
        "1000 accounts: reads {mget} mget (cold {cold_ms:.1} ms, warm {warm_ms:.1} ms), writes {set} set in {multi} multi/{exec} exec \
         (put_many returned in {put_ms:.2} ms), get {get}"
    );
    assert_eq!(mget, 2, "one MGET per batch read (a cold and a warm one)");
    assert_eq!(get, 0);
    assert_eq!(set, 2000, "1000 decisions and 1000 latest decisions");
    assert_eq!((multi, exec), (1, 1), "all 2000 SETs in one MULTI/EXEC pipeline");
    let s = c.stats();
    assert_eq!((s.written, s.hits, s.misses), (2000, 1000, 1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_redis() {
    let redis = RedisServer::start();
    let a = connect(&config(&redis.url())).await;
    let b = connect(&config(&redis.url())).await;
    let (policy, records, values) = book(5, "replica");
    let p = policy_id(&policy);
    assert!(b.get_many(&keys(&p, &records)).await.iter().all(Option::is_none));
    a.put_many(batch(&p, &records, &values));
    a.flush().await;
    let got = b.get_many(&keys(&p, &records)).await;
    assert_eq!(
        got,
        values.iter().cloned().map(Some).collect::<Vec<_>>(),
        "decided through a, a hit through b"
    );
    assert_eq!(
        b.get_latest("enterprise", "replica-00002").await.as_ref(),
        Some(&values[2]),
        "latest decision through b"
    );
    assert_eq!((a.stats().written, b.stats().hits), (10, 6));
}

/// What a run of calls saw: every call's latency and whether it was a hit.
#[derive(Default)]
struct Run {
    latencies: Vec<Duration>,
}

impl Run {
    fn p99(&self) -> Duration {
        let mut v = self.latencies.clone();
        v.sort();
        v[(v.len() * 99 / 100).min(v.len() - 1)]
    }
    fn max(&self) -> Duration {
        self.latencies.iter().copied().max().unwrap_or_default()
    }
}

/// One request's worth of cache traffic: read 10 keys, write them back. Returns whether
/// every key was a hit; the read's latency goes into `run`.
async fn request(
    c: &dyn Cache,
    p: &PolicyId,
    records: &[Record],
    values: &[Bytes],
    run: &mut Run,
) -> bool {
    let k = keys(p, records);
    let t = Instant::now();
    let got = c.get_many(&k).await;
    let lat = t.elapsed();
    let l = c.get_latest("enterprise", records[0].as_ref().unwrap().id.as_str()).await;
    run.latencies.push(lat);
    run.latencies.push(t.elapsed() - lat);
    assert_eq!(got.len(), k.len(), "a cache call always answers, one value per key");
    let hit = got.iter().all(Option::is_some) && l.is_some();
    if !hit {
        c.put_many(batch(p, records, values));
    }
    hit
}

/// Calls for `d`, a request every 2 ms.
async fn run_for(
    c: &dyn Cache,
    p: &PolicyId,
    records: &[Record],
    values: &[Bytes],
    d: Duration,
    run: &mut Run,
) -> usize {
    let end = Instant::now() + d;
    let mut hits = 0;
    while Instant::now() < end {
        hits += usize::from(request(c, p, records, values, run).await);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    hits
}

/// Calls until one is a hit; how long that took.
async fn until_hit(
    c: &dyn Cache,
    p: &PolicyId,
    records: &[Record],
    values: &[Bytes],
    limit: Duration,
    run: &mut Run,
) -> Duration {
    let start = Instant::now();
    loop {
        if request(c, p, records, values, run).await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "cache not used again after {limit:?}: {:?} {:?}",
            c.stats(),
            c.degraded()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn check_latency(what: &str, run: &Run, cfg: &CacheConfig) {
    let bound = cfg.read_deadline(10) + Duration::from_millis(10);
    println!(
        "{what}: {} calls, p99 {:.2} ms, max {:.2} ms (bound {:.1} ms)",
        run.latencies.len(),
        ms(run.p99()),
        ms(run.max()),
        ms(bound)
    );
    assert!(run.p99() <= bound, "{what}: p99 {:?} over {bound:?}", run.p99());
    // Not only the 99th: with the breaker open most calls cost nothing, so the p99 alone
    // would hide the calls that waited for their deadline.
    assert!(
        run.max() <= bound + Duration::from_millis(15),
        "{what}: max {:?} over {bound:?} + 15 ms",
        run.max()
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_then_restarted() {
    let _one = TIMING.lock().await;
    let mut redis = RedisServer::start();
    let cfg = config(&redis.url());
    let c = connect(&cfg).await;
    let (policy, records, values) = book(10, "kill");
    let p = policy_id(&policy);
    let mut healthy = Run::default();
    until_hit(&*c, &p, &records, &values, Duration::from_secs(2), &mut healthy).await;
    assert!(
        run_for(&*c, &p, &records, &values, Duration::from_millis(300), &mut healthy).await > 0
    );

    redis.kill();
    let mut down = Run::default();
    let hits = run_for(&*c, &p, &records, &values, Duration::from_millis(1500), &mut down).await;
    assert_eq!(hits, 0);
    let s = c.stats();
    println!("killed: {s:?}");
    assert_ne!(s.breaker, BreakerState::Closed);
    assert!(s.breaker_opened >= 1 && s.errors + s.timeouts >= 1 && s.skipped > 0, "{s:?}");
    assert!(c.degraded().is_some() && !c.available());
    check_latency("redis killed", &down, &cfg);

    redis.restart();
    let back = until_hit(&*c, &p, &records, &values, Duration::from_secs(10), &mut down).await;
    println!("restarted: cache used again after {:.0} ms", ms(back));
    assert!(c.degraded().is_none() && c.available());
    check_latency("healthy", &healthy, &cfg);
    check_latency("redis killed and restarted", &down, &cfg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_then_resumed() {
    let _one = TIMING.lock().await;
    let redis = RedisServer::start();
    let cfg = config(&redis.url());
    let c = connect(&cfg).await;
    let (policy, records, values) = book(10, "pause");
    let p = policy_id(&policy);
    let mut warmup = Run::default();
    until_hit(&*c, &p, &records, &values, Duration::from_secs(2), &mut warmup).await;

    redis.pause();
    let mut down = Run::default();
    let hits = run_for(&*c, &p, &records, &values, Duration::from_millis(1500), &mut down).await;
    let s = c.stats();
    println!("paused: {s:?}");
    assert_eq!(hits, 0);
    assert_ne!(s.breaker, BreakerState::Closed);
    assert!(s.breaker_opened >= 1 && s.timeouts >= 1, "{s:?}");
    assert!(c.degraded().is_some());
    check_latency("redis paused", &down, &cfg);

    redis.resume();
    let back = until_hit(&*c, &p, &records, &values, Duration::from_secs(10), &mut down).await;
    println!("resumed: cache used again after {:.0} ms", ms(back));
    assert!(c.degraded().is_none());
    check_latency("redis paused and resumed", &down, &cfg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_costs_nothing_and_is_picked_up() {
    let _one = TIMING.lock().await;
    let mut redis = RedisServer::start();
    redis.kill();
    let cfg = config(&redis.url());
    let c = cache::build(&cfg).unwrap();
    let (policy, records, values) = book(10, "late");
    let p = policy_id(&policy);
    let mut down = Run::default();
    run_for(&*c, &p, &records, &values, Duration::from_millis(500), &mut down).await;
    assert!(c.degraded().is_some());
    check_latency("redis down at start", &down, &cfg);
    redis.restart();
    let back = until_hit(&*c, &p, &records, &values, Duration::from_secs(10), &mut down).await;
    println!("started late: cache used after {:.0} ms", ms(back));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_write_queue_drops_and_counts_and_never_waits() {
    let redis = RedisServer::start();
    let cfg = CacheConfig { queue_batches: 2, breaker_failures: 1000, ..config(&redis.url()) };
    let c = connect(&cfg).await;
    let (policy, records, values) = book(1, "queue");
    let p = policy_id(&policy);
    redis.pause();
    // The writer takes the first batch and hangs on the paused Redis; two more wait in the
    // queue; the rest are dropped at once.
    c.put_many(batch(&p, &records, &values));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let t = Instant::now();
    for _ in 0..9 {
        c.put_many(batch(&p, &records, &values));
    }
    let took = t.elapsed();
    let s = c.stats();
    println!("9 put_many on a full queue: {:.3} ms, {s:?}", ms(took));
    assert!(took < Duration::from_millis(5), "put_many never waits ({took:?})");
    assert_eq!(
        (s.queued, s.dropped_writes),
        (2, 14),
        "2 batches queued, 7 batches of 2 entries dropped"
    );
    redis.resume();
    c.flush().await;
    assert!(c.stats().written >= 4, "the two queued batches, merged, once Redis answers");
}

#[test]
fn a_malformed_url_is_an_error_and_redis_needs_a_runtime() {
    let bad = CacheConfig { redis_url: Some("http://nope".to_string()), ..CacheConfig::default() };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt.block_on(async { cache::build(&bad).err().unwrap().to_string() });
    assert!(e.contains("invalid Redis URL"), "{e}");
    let ok = CacheConfig {
        redis_url: Some("redis://127.0.0.1:1/".to_string()),
        ..CacheConfig::default()
    };
    assert_eq!(
        cache::build(&ok).err().map(|e| e.to_string()).as_deref(),
        Some("the Redis cache needs a tokio runtime")
    );
    assert_eq!(cache::build(&CacheConfig::default()).unwrap().stats().backend, "memory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_an_account_plan_a_warm_answer_is_the_cold_one_byte_for_byte() {
    let redis = RedisServer::start();
    let c = connect(&config(&redis.url())).await;
    let (policy, mut records, _) = book(50, "plan");
    records.push(Err(tierwise::snapshot::AccountError::new(None, "bad_record", "not a snapshot")));
    let p = policy_id(&policy);
    let fresh = serde_json::to_vec(&engine::evaluate(&policy, &records)).unwrap();
    let mut answers = Vec::new();
    for _ in 0..2 {
        let plan = cache::AccountPlan::new(&p, &records);
        let found = c.get_many(plan.keys()).await;
        let (answer, writes) =
            plan.finish(&records, found, |m| engine::evaluate(&policy, m)).unwrap();
        c.put_many(writes);
        c.flush().await;
        let mut buf = Vec::new();
        answer.write_array(&mut buf);
        answers.push((answer.hits, buf));
    }
    assert_eq!(answers[0].0, 0);
    assert_eq!(answers[1].0, 50, "every decision a hit, the bad record evaluated again");
    assert!(
        answers.iter().all(|(_, b)| *b == fresh),
        "cold and warm answers are the fresh evaluation's bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_refusing_writes_counts_as_failing_and_shows() {
    let redis = RedisServer::start();
    let c = connect(&config(&redis.url())).await;
    let (policy, records, values) = book(4, "oom");
    let p = policy_id(&policy);
    c.put_many(batch(&p, &records[..2], &values[..2]));
    c.flush().await;
    let mut raw = redis.client();
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .query(&mut raw)
        .unwrap();
    let () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("1").query(&mut raw).unwrap();
    for _ in 0..10 {
        c.put_many(batch(&p, &records[2..], &values[2..]));
        c.flush().await;
    }
    let s = c.stats();
    assert!(s.errors >= 5 && s.dropped_writes >= 20, "{s:?}");
    // An OOM reply is Redis answering, but a cache that cannot store is not working: the
    // error counts for the breaker like a lost connection, and shows.
    assert!(s.breaker_opened >= 1, "{s:?}");
    let reason = c.degraded().expect("degraded while writes are refused");
    assert!(reason.contains("OOM"), "{reason}");
    let () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("0").query(&mut raw).unwrap();
    // The probe closes the breaker again within about a second.
    wait_for(&*c, Duration::from_secs(3), |c| c.degraded().is_none()).await;
    let got = c.get_many(&keys(&p, &records)).await;
    assert_eq!(got.iter().map(Option::is_some).collect::<Vec<_>>(), vec![true, true, false, false]);
}

// --- Redis Cluster: three masters on loopback ports --------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_hits_latest_decisions_and_keys_by_hash_tag() {
    let cluster = RedisCluster::start();
    let c = connect(&cluster_config(&cluster)).await;
    let (policy, records, values) = book(60, "cl");
    let p = policy_id(&policy);
    c.put_many(batch(&p, &records[..40], &values[..40]));
    c.flush().await;
    let got = c.get_many(&keys(&p, &records)).await;
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g.as_ref(), (i < 40).then_some(&values[i]), "account {i}");
    }
    assert_eq!(c.get_latest("enterprise", "cl-00007").await.as_ref(), Some(&values[7]));
    assert_eq!(c.get_latest("enterprise", "cl-00050").await, None);
    let s = c.stats();
    assert_eq!((s.written, s.errors, s.timeouts, s.hits), (80, 0, 0, 41), "{s:?}");
    assert!(c.degraded().is_none());

    // The keys landed on every shard (content-addressed ones spread by their whole key), and a
    // latest decision sits in its account's slot (the tag `{policy:account}`).
    let all = cluster.keys();
    assert_eq!(all.len(), 80, "{all:?}");
    let owners: std::collections::BTreeSet<usize> =
        all.iter().filter(|k| k.contains(":acct:")).map(|k| cluster.owner(k)).collect();
    assert_eq!(owners.len(), 3, "decisions on all three shards");
    let latest = "tierwise:v2:latest:{enterprise:cl-00007}";
    assert!(all.iter().any(|k| k == latest), "{all:?}");
    let state_like =
        tierwise::redis_conn::account_key("state", "enterprise", "cl-00007", "account");
    assert_eq!(cluster.owner(latest), cluster.owner(&state_like), "one account, one slot");

    // Another replica on the same cluster: a hit.
    let b = connect(&cluster_config(&cluster)).await;
    assert_eq!(
        b.get_many(&keys(&p, &records[..40])).await,
        values[..40].iter().cloned().map(Some).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_batches_cost_one_round_trip_per_shard() {
    let _one = TIMING.lock().await;
    let cluster = RedisCluster::start();
    let conn = tierwise::redis_conn::RedisConn::connect(
        &tierwise::redis_conn::Target::Cluster(cluster.urls()),
        &tierwise::redis_conn::Options::default(),
    )
    .unwrap();
    conn.ping().await.unwrap();
    assert_eq!(conn.shards(), 3);
    let c = connect(&cluster_config(&cluster)).await;
    let (policy, records, values) = book(1000, "rtc");
    let p = policy_id(&policy);
    let k = keys(&p, &records);
    cluster.reset_stats();
    let before = conn.round_trips();
    let raw: Vec<&[u8]> = k.iter().map(|k| k.as_str().as_bytes()).collect();
    let cold = conn.get_many(&raw).await.unwrap();
    assert!(cold.iter().all(Option::is_none));
    assert_eq!(conn.round_trips() - before, 3, "one pipeline per shard for 1000 keys");
    c.put_many(batch(&p, &records, &values));
    c.flush().await;
    let t = Instant::now();
    let warm = c.get_many(&k).await;
    let warm_ms = ms(t.elapsed());
    assert_eq!(warm, values.iter().cloned().map(Some).collect::<Vec<_>>());
    let (get, mget, set, multi) =
        (cluster.calls("get"), cluster.calls("mget"), cluster.calls("set"), cluster.calls("multi"));
    println!(
        "cluster, 1000 accounts: {get} get, {mget} mget, {set} set, {multi} multi; warm read {warm_ms:.1} ms"
    );
    assert_eq!((get, mget, set, multi), (2000, 0, 2000, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_master_killed_then_restarted() {
    let _one = TIMING.lock().await;
    let mut cluster = RedisCluster::start();
    let cfg = cluster_config(&cluster);
    let c = connect(&cfg).await;
    let (policy, records, values) = book(10, "ckill");
    let p = policy_id(&policy);
    let mut healthy = Run::default();
    until_hit(&*c, &p, &records, &values, Duration::from_secs(3), &mut healthy).await;

    cluster.kill(1);
    let t = Instant::now();
    wait_for(&*c, Duration::from_secs(2), |c| c.degraded().is_some()).await;
    println!("master killed: degraded after {:.0} ms: {:?}", ms(t.elapsed()), c.degraded());
    let mut down = Run::default();
    run_for(&*c, &p, &records, &values, Duration::from_millis(1000), &mut down).await;
    check_latency("cluster master killed", &down, &cfg);

    cluster.restart(1, &[]);
    cluster.wait_ok(Duration::from_secs(20));
    let back = until_hit(&*c, &p, &records, &values, Duration::from_secs(15), &mut down).await;
    println!("master restarted: cache used again after {:.0} ms", ms(back));
    assert!(c.degraded().is_none());
}
