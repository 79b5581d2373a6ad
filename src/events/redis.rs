//! The Redis state store and outbox: shared by replicas, durable with AOF on.
//!
//! Layout: every key carries the hash tag `{tw-ev}` — state `tw:{tw-ev}:st:<policy>\0<level>\0
//! <subject>` and the outbox stream `tw:{tw-ev}:out` — so one script touches keys of one slot
//! and runs on a single Redis and on a Cluster alike. (One tag for all accounts keeps a
//! global order and cursor for `GET /v1/events`; partitioning the outbox over several tags is
//! the step that spreads it over a Cluster's shards.)
//!
//! A batch costs two round trips whatever its size: one `MGET` of the states, then one
//! `EVALSHA` per changed account, sent together (redis-rs's multiplexed connection pipelines
//! concurrent commands). The script compares the stored state with the one the transition
//! started from and, only if they are equal, writes the new state and `XADD`s the events
//! (trimming by length and age): one atomic step per account, so two replicas deciding one
//! account at once never both emit. A replica that loses the race gets the current state
//! back in the same answer and runs its transition again (no events when the other replica
//! already told them).

use super::{EventStore, Filter, Page, Retention, StoreError, Stored, now_ms, store_form};
use crate::engine::transition::{
    self, AccountInput, AccountState, AlertRule, BookInput, BookState, Event, EventType, Level,
};
use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::ConnectionLike;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

const SCRIPT: &str = r#"
local cur = redis.call('GET', KEYS[1])
if not cur then cur = '' end
if cur ~= ARGV[1] then return {0, cur} end
redis.call('SET', KEYS[1], ARGV[2])
for i = 5, #ARGV, 3 do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'id', ARGV[i], 'm', ARGV[i+1], 'e', ARGV[i+2])
end
if #ARGV >= 5 then redis.call('XTRIM', KEYS[2], 'MINID', '~', ARGV[4]) end
return {1, ''}
"#;

const OUTBOX: &str = "tw:{tw-ev}:out";

/// Grants the lease to `ARGV[1]` for `ARGV[2]` ms when it is free or already theirs.
const LEASE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not cur then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"#;

/// Moves the handled mark forward only: a replica that lost its lease late cannot rewind it.
const HANDLED: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"#;

fn webhook_key(name: &str, what: &str) -> String {
    format!("tw:{{tw-ev}}:wh:{name}:{what}")
}
/// Compare-and-set attempts per account before the batch fails.
const CAS_TRIES: usize = 8;

/// Over any redis-rs async connection (a `ConnectionManager`, a cluster connection).
pub struct RedisStore<C> {
    conn: C,
    sha: std::sync::Mutex<String>,
    retention: Retention,
    last_seq: AtomicU64,
    retained: AtomicU64,
    /// Round trips made, for the bench's figure.
    pub round_trips: AtomicU64,
}

fn err(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn state_key(policy: &str, level: &str, subject: &str) -> String {
    format!("tw:{{tw-ev}}:st:{policy}\0{level}\0{subject}")
}

/// A stream id `ms-n` as one number (ms in the high bits): the pull cursor.
fn seq_of(id: &str) -> u64 {
    let (ms, n) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse::<u64>().unwrap_or(0) << 20) | n.parse::<u64>().unwrap_or(0).min((1 << 20) - 1)
}

fn id_of(seq: u64) -> String {
    format!("{}-{}", seq >> 20, seq & ((1 << 20) - 1))
}

impl<C: ConnectionLike + Clone + Send + Sync + 'static> RedisStore<C> {
    pub async fn new(conn: C, retention: Retention) -> Result<Self, StoreError> {
        let s = RedisStore {
            conn,
            sha: std::sync::Mutex::new(String::new()),
            retention,
            last_seq: AtomicU64::new(0),
            retained: AtomicU64::new(0),
            round_trips: AtomicU64::new(0),
        };
        s.load_script().await?;
        Ok(s)
    }

    async fn load_script(&self) -> Result<String, StoreError> {
        let mut c = self.conn.clone();
        let sha: String =
            redis::cmd("SCRIPT").arg("LOAD").arg(SCRIPT).query_async(&mut c).await.map_err(err)?;
        *self.sha.lock().unwrap_or_else(|p| p.into_inner()) = sha.clone();
        Ok(sha)
    }

    async fn mget(&self, keys: &[String]) -> Result<Vec<Option<String>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.conn.clone();
        self.round_trips.fetch_add(1, Relaxed);
        redis::cmd("MGET").arg(keys).query_async(&mut c).await.map_err(err)
    }

    /// One CAS: `Ok(None)` written, `Ok(Some(current))` lost the race.
    async fn cas(
        &self,
        key: &str,
        expected: &str,
        new: &str,
        events: &[Stored],
    ) -> Result<Option<String>, StoreError> {
        let minid = now_ms() - self.retention.max_age.as_millis() as i64;
        for attempt in 0..2 {
            let sha = self.sha.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(&sha).arg(2).arg(key).arg(OUTBOX);
            cmd.arg(expected).arg(new).arg(self.retention.max_len).arg(minid.max(0));
            for e in events {
                cmd.arg(&*e.id).arg(meta(e)).arg(e.body.as_ref());
            }
            let mut c = self.conn.clone();
            let r: redis::RedisResult<(i64, String)> = cmd.query_async(&mut c).await;
            match r {
                Ok((1, _)) => return Ok(None),
                Ok((_, cur)) => return Ok(Some(cur)),
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
                        && attempt == 0 =>
                {
                    self.load_script().await?; // Redis restarted (scripts are not persisted)
                }
                Err(e) => return Err(err(e)),
            }
        }
        Err(StoreError::Unavailable("the events script could not be loaded".into()))
    }
}

/// What filters need without parsing the body: type, policy, level, subject, time.
fn meta(e: &Stored) -> String {
    format!("{}\t{}\t{}\t{}\t{}", e.kind.as_str(), e.policy, e.level.as_str(), e.subject, e.time_ms)
}

fn parse_meta(seq: u64, id: &str, m: &str, body: Vec<u8>) -> Option<Stored> {
    let mut it = m.split('\t');
    let kind = EventType::parse(it.next()?)?;
    let policy = it.next()?;
    let level = Level::parse(it.next()?)?;
    let subject = it.next()?;
    let time_ms = it.next()?.parse().ok()?;
    Some(Stored {
        seq,
        id: id.into(),
        kind,
        policy: policy.into(),
        level,
        subject: subject.into(),
        time_ms,
        body: Bytes::from(body),
    })
}

fn to_state<T: serde::de::DeserializeOwned>(raw: &Option<String>) -> Option<T> {
    raw.as_deref().and_then(|s| serde_json::from_str(s).ok())
}

#[async_trait]
impl<C: ConnectionLike + Clone + Send + Sync + 'static> EventStore for RedisStore<C> {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn durable(&self) -> bool {
        true
    }

    async fn apply(
        &self,
        items: &[AccountInput<'_>],
        rules: &[AlertRule],
    ) -> Result<Vec<Vec<Event>>, StoreError> {
        let keys: Vec<Option<String>> = items
            .iter()
            .map(|it| {
                it.outcome.decision().map(|d| state_key(&d.policy.name, it.level.as_str(), &d.id))
            })
            .collect();
        let present: Vec<String> = keys.iter().flatten().cloned().collect();
        let raw = self.mget(&present).await?;
        let mut raw = raw.into_iter();
        let mut current: Vec<Option<String>> =
            keys.iter().map(|k| k.as_ref().and_then(|_| raw.next().flatten())).collect();
        let mut out: Vec<Vec<Event>> = vec![Vec::new(); items.len()];
        let mut pending: Vec<usize> = (0..items.len()).filter(|&i| keys[i].is_some()).collect();
        for _ in 0..CAS_TRIES {
            if pending.is_empty() {
                break;
            }
            let now = now_ms();
            let mut jobs = Vec::new();
            for &i in &pending {
                let mut st: Option<AccountState> = to_state(&current[i]);
                let mut events = Vec::new();
                let v = transition::step(&mut st, items[i], rules, &mut events);
                let new = st.as_ref().and_then(|s| serde_json::to_string(s).ok());
                let expected = current[i].clone().unwrap_or_default();
                match (v, new) {
                    (transition::Verdict::Accepted, Some(new))
                        if new != expected || !events.is_empty() =>
                    {
                        let stored: Vec<Stored> =
                            events.iter().map(|e| store_form(e, 0, now)).collect();
                        jobs.push((i, expected, new, stored, events));
                    }
                    _ => {}
                }
            }
            if !jobs.is_empty() {
                self.round_trips.fetch_add(1, Relaxed);
            }
            let results =
                futures_util::future::join_all(jobs.iter().map(|(i, exp, new, stored, _)| {
                    let key = keys[*i].clone().unwrap_or_default();
                    async move { self.cas(&key, exp, new, stored).await }
                }))
                .await;
            let mut again = Vec::new();
            for ((i, _, _, _, events), r) in jobs.into_iter().zip(results) {
                match r? {
                    None => out[i] = events,
                    Some(cur) => {
                        current[i] = (!cur.is_empty()).then_some(cur);
                        again.push(i);
                    }
                }
            }
            pending = again;
        }
        if !pending.is_empty() {
            return Err(StoreError::Unavailable(format!(
                "{} account(s) changed under this request {CAS_TRIES} times in a row",
                pending.len()
            )));
        }
        Ok(out)
    }

    async fn apply_book(
        &self,
        input: BookInput<'_>,
        rules: &[AlertRule],
    ) -> Result<Vec<Event>, StoreError> {
        let key = state_key(&input.policy.name, "book", input.book);
        let mut current = self.mget(std::slice::from_ref(&key)).await?.pop().flatten();
        for _ in 0..CAS_TRIES {
            let mut st: Option<BookState> = to_state(&current);
            let mut events = Vec::new();
            let v = transition::book_step(&mut st, input, rules, &mut events);
            let (transition::Verdict::Accepted, Some(new)) =
                (v, st.as_ref().and_then(|s| serde_json::to_string(s).ok()))
            else {
                return Ok(Vec::new());
            };
            let now = now_ms();
            let stored: Vec<Stored> = events.iter().map(|e| store_form(e, 0, now)).collect();
            let expected = current.clone().unwrap_or_default();
            self.round_trips.fetch_add(1, Relaxed);
            match self.cas(&key, &expected, &new, &stored).await? {
                None => return Ok(events),
                Some(cur) => current = (!cur.is_empty()).then_some(cur),
            }
        }
        Err(StoreError::Unavailable("the book changed under this request too often".into()))
    }

    async fn states(
        &self,
        policy: &str,
        level: Level,
        ids: &[&str],
    ) -> Result<Vec<Option<AccountState>>, StoreError> {
        let keys: Vec<String> =
            ids.iter().map(|id| state_key(policy, level.as_str(), id)).collect();
        Ok(self.mget(&keys).await?.iter().map(to_state).collect())
    }

    async fn book_state(&self, policy: &str, book: &str) -> Result<Option<BookState>, StoreError> {
        let key = state_key(policy, "book", book);
        Ok(self.mget(std::slice::from_ref(&key)).await?.first().and_then(to_state))
    }

    async fn page(&self, after: u64, limit: usize, filter: &Filter) -> Result<Page, StoreError> {
        let mut c = self.conn.clone();
        let start = if after == 0 { "-".to_string() } else { format!("({}", id_of(after)) };
        type Entry = (String, Vec<(String, Vec<u8>)>);
        let entries: Vec<Entry> = redis::cmd("XRANGE")
            .arg(OUTBOX)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(limit.max(1) * 4)
            .query_async(&mut c)
            .await
            .map_err(err)?;
        let first: Vec<Entry> = redis::cmd("XRANGE")
            .arg(OUTBOX)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut c)
            .await
            .map_err(err)?;
        let mut page = Page {
            events: Vec::new(),
            next: after,
            first: first.first().map_or(after + 1, |(id, _)| seq_of(id)),
        };
        for (sid, fields) in entries {
            let seq = seq_of(&sid);
            page.next = seq;
            self.last_seq.fetch_max(seq, Relaxed);
            let mut id = String::new();
            let mut m = String::new();
            let mut body = Vec::new();
            for (k, v) in fields {
                match k.as_str() {
                    "id" => id = String::from_utf8_lossy(&v).into_owned(),
                    "m" => m = String::from_utf8_lossy(&v).into_owned(),
                    "e" => body = v,
                    _ => {}
                }
            }
            if let Some(e) = parse_meta(seq, &id, &m, body)
                && filter.matches(&e)
            {
                page.events.push(e);
                if page.events.len() >= limit {
                    break;
                }
            }
        }
        Ok(page)
    }

    async fn wait_after(&self, _seq: u64) {
        // Polling: another replica may append at any time (no notification crosses replicas).
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let mut c = self.conn.clone();
        if let Ok(n) = redis::cmd("XLEN").arg(OUTBOX).query_async::<u64>(&mut c).await {
            self.retained.store(n, Relaxed);
        }
    }

    fn depth(&self) -> (usize, u64) {
        (self.retained.load(Relaxed) as usize, self.last_seq.load(Relaxed))
    }

    async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut c = self.conn.clone();
        let got: i64 = redis::cmd("EVAL")
            .arg(LEASE)
            .arg(1)
            .arg(webhook_key(name, "lease"))
            .arg(holder)
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut c)
            .await
            .map_err(err)?;
        Ok(got == 1)
    }

    async fn handled(&self, name: &str) -> Result<Option<u64>, StoreError> {
        let mut c = self.conn.clone();
        let v: Option<u64> = redis::cmd("GET")
            .arg(webhook_key(name, "handled"))
            .query_async(&mut c)
            .await
            .map_err(err)?;
        Ok(v)
    }

    async fn set_handled(&self, name: &str, seq: u64) -> Result<(), StoreError> {
        let mut c = self.conn.clone();
        let _: i64 = redis::cmd("EVAL")
            .arg(HANDLED)
            .arg(1)
            .arg(webhook_key(name, "handled"))
            .arg(seq)
            .query_async(&mut c)
            .await
            .map_err(err)?;
        Ok(())
    }
}

/// A store over one Redis at `url` (reconnecting by itself).
pub async fn connect(url: &str, retention: Retention) -> Result<Arc<dyn EventStore>, StoreError> {
    let client = redis::Client::open(url).map_err(err)?;
    let conn = redis::aio::ConnectionManager::new(client).await.map_err(err)?;
    Ok(Arc::new(RedisStore::new(conn, retention).await?))
}
