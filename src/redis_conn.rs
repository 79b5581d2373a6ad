//! One Redis connection for every part of tierwise that talks to Redis (the decision cache,
//! and the account state and event outbox beside it), over a single server or a Cluster.
//!
//! [`RedisConn`] is an enum over redis-rs's reconnecting single-node
//! [`ConnectionManager`] and its async [`ClusterConnection`]; both implement
//! [`redis::aio::ConnectionLike`], and so does [`RedisConn`], so any `redis::cmd(..)` or
//! `redis::pipe()` runs on it as on either. What differs on a Cluster, and what this module
//! takes care of:
//! - **Keys of one atomic step must share a slot.** A `MULTI`/`EXEC` pipeline or a script
//!   whose keys hash to two slots fails with `CROSSSLOT`. Keys laid out with
//!   [`account_tag`] (everything about one account under one hash tag) keep an account's
//!   step in one slot; see "Key layout" below.
//! - **A batch must cost one round trip per shard, not one per key.** redis-rs splits a
//!   multi-key `MGET` per *slot* (a 1,000-key `MGET` becomes hundreds of sub-commands) and
//!   does not split pipelines at all (a pipeline whose keys span slots is refused
//!   client-side). [`RedisConn::get_many`] and [`RedisConn::run_by_shard`] group commands
//!   by the shard (master) that owns their slot, from a slot map of their own
//!   (`CLUSTER SLOTS`, refreshed by [`RedisConn::ping`] and after an error), and send one
//!   pipeline per shard, all shards at once.
//! - **Errors are errors.** A `Value::ServerError` inside a pipeline's answers (`CROSSSLOT`,
//!   `OOM`, `CLUSTERDOWN`, a `MOVED` the client could not follow) is returned as `Err`, so a
//!   caller's circuit breaker counts it; `MOVED`/`ASK` on single commands are followed by
//!   redis-rs.
//!
//! Connections are made lazily: a Redis (or every seed node) being down at start is not an
//! error here, only a malformed URL is. redis-rs reconnects both kinds by itself.
//!
//! # Key layout (shared by every replica, so part of the contract)
//! Every key starts with [`KEY_PREFIX`] (`tierwise:v2:`). Parts taken from names and ids are
//! escaped by [`key_part`] (`%`, `:`, `{` and `}` percent-encoded), so a key reads back
//! unambiguously and a name can never open a hash tag of its own. Keys that belong to one
//! account carry the tag `{<policy name>:<account id>}` ([`account_tag`]): Redis Cluster
//! hashes only what is between the braces, so the latest decision of an account, its state
//! at each level and anything else keyed by [`account_key`] land in one slot, and one
//! `MULTI`/`EXEC` (or one script) can update them together. Content-addressed entries (a
//! decision by snapshot digest) carry no tag: their whole key is hashed, which spreads them
//! evenly over the shards. A tag per account, not per policy, keeps one policy's traffic
//! from landing on one hot slot.

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Every key starts with this: the project, then the key layout's version (v2: hash tags).
pub const KEY_PREFIX: &str = "tierwise:v2:";

/// Slots in a Redis Cluster.
pub const SLOTS: usize = 16384;

/// Where Redis is: one server (`--redis`) or a Cluster's seed nodes (`--redis-cluster`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `redis://host:port/db`, `rediss://`, `redis+unix://`, `valkey://`.
    Single(String),
    /// Seed nodes (any reachable one is enough to learn the rest).
    Cluster(Vec<String>),
}

impl Target {
    /// `--redis-cluster a,b,c`: the comma-separated seeds, blanks dropped.
    pub fn cluster(seeds: &str) -> Target {
        Target::Cluster(
            seeds.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
        )
    }

    /// For logs and errors: every URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Target::Single(u) => format!("Redis at {}", redact(u)),
            Target::Cluster(seeds) => format!(
                "Redis Cluster (seeds {})",
                seeds.iter().map(|s| redact(s)).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

/// `redis://user:secret@host` without the secret, for logs and error messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// Why a connection could not even be set up (Redis being down is not one of them).
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("invalid Redis URL `{url}`: {message}")]
    BadUrl { url: String, message: String },
    #[error("--redis-cluster needs at least one seed node URL")]
    NoSeeds,
}

/// How long connecting may take, per node (reconnects happen in the background).
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub connect_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options { connect_timeout: Duration::from_millis(500) }
    }
}

/// A connection to a single Redis or a Cluster. Cheap to clone (handles to shared
/// background tasks); safe to use from many tasks at once.
#[derive(Clone)]
pub struct RedisConn {
    inner: Inner,
    /// The Cluster's slot map as last seen (`None` on a single server, or before the first
    /// `CLUSTER SLOTS` answer). A std Mutex: held only to clone or replace the `Arc`.
    topology: Arc<Mutex<Option<Arc<Topology>>>>,
    /// Batches sent (one per shard and call): what "one round trip per shard" is checked by.
    round_trips: Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Clone)]
enum Inner {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisConn {
    /// Sets up a lazy connection: nothing is dialled until the first command. Needs a tokio
    /// runtime (redis-rs spawns its connection tasks on it).
    pub fn connect(target: &Target, opts: &Options) -> Result<RedisConn, ConnError> {
        let bad = |url: &str, e: RedisError| ConnError::BadUrl {
            url: redact(url),
            message: e.to_string(),
        };
        let inner = match target {
            Target::Single(url) => {
                let client = redis::Client::open(url.as_str()).map_err(|e| bad(url, e))?;
                // Short reconnect backoff: a caller's deadline, not a long wait inside
                // redis-rs, is what bounds a request, and a probe should find a fresh
                // connection attempt under way when Redis comes back.
                let cfg = ConnectionManagerConfig::new()
                    .set_number_of_retries(2)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_millis(500))
                    .set_connection_timeout(Some(opts.connect_timeout))
                    .set_response_timeout(None);
                Inner::Single(
                    ConnectionManager::new_lazy_with_config(client, cfg)
                        .map_err(|e| bad(url, e))?,
                )
            }
            Target::Cluster(seeds) => {
                if seeds.is_empty() {
                    return Err(ConnError::NoSeeds);
                }
                for s in seeds {
                    redis::IntoConnectionInfo::into_connection_info(s.as_str())
                        .map_err(|e| bad(s, e))?;
                }
                let client = redis::cluster::ClusterClientBuilder::new(seeds.clone())
                    .retries(2)
                    .min_retry_wait(20)
                    .max_retry_wait(200)
                    .build()
                    .map_err(|e| bad(&seeds.join(","), e))?;
                let cfg = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(opts.connect_timeout)
                    .set_response_timeout(opts.connect_timeout);
                Inner::Cluster(client.get_pending_async_connection_with_config(cfg))
            }
        };
        Ok(RedisConn { inner, topology: Arc::new(Mutex::new(None)), round_trips: Arc::default() })
    }

    /// Pipelines and commands sent by [`RedisConn::get_many`] and [`RedisConn::run_by_shard`]
    /// since the connection was made (one per shard a call touches).
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn sent(&self, n: usize) {
        self.round_trips.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.inner, Inner::Cluster(_))
    }

    /// `PING`; on a Cluster every master is asked (an `EXISTS` of a probe key in a slot each
    /// master owns, all at once; every one must answer), then the slot map refreshed. What a
    /// health probe asks. (Not `PING`: redis-rs sends a command for a master it cannot reach
    /// to another node, and redis-rs's all-masters routing skips such a master, so a dead
    /// master would not show; a keyed command is redirected to its slot's owner or fails.)
    pub async fn ping(&self) -> RedisResult<()> {
        match &self.inner {
            Inner::Single(c) => {
                let mut c = c.clone();
                redis::cmd("PING").query_async::<Value>(&mut c).await.and_then(check).map(drop)
            }
            Inner::Cluster(c) => {
                let topo = self.known_topology().await?;
                let pings = topo.reps.iter().map(|&slot| {
                    let mut c = c.clone();
                    async move {
                        let mut cmd = redis::cmd("EXISTS");
                        cmd.arg(probe_key(slot));
                        cmd.query_async::<Value>(&mut c).await.and_then(check)
                    }
                });
                for answer in futures_join_all(pings).await {
                    if let Err(e) = answer {
                        self.forget_topology();
                        return Err(e);
                    }
                }
                if topo.owner.contains(&u16::MAX) {
                    self.forget_topology();
                    return Err(RedisError::from((
                        ErrorKind::ClusterConnectionNotFound,
                        "some slots have no master",
                    )));
                }
                self.refresh_topology().await
            }
        }
    }

    /// Reads the Cluster's slot map (`CLUSTER SLOTS`); nothing on a single server.
    pub async fn refresh_topology(&self) -> RedisResult<()> {
        let Inner::Cluster(c) = &self.inner else { return Ok(()) };
        let mut c = c.clone();
        let v = c
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").to_owned(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await
            .and_then(check)?;
        let topo = Topology::parse(&v).ok_or_else(|| {
            RedisError::from((ErrorKind::Parse, "unexpected CLUSTER SLOTS answer"))
        })?;
        *self.topology.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(topo));
        Ok(())
    }

    /// How many shards (masters) the last slot map had; 1 on a single server.
    pub fn shards(&self) -> usize {
        match &self.inner {
            Inner::Single(_) => 1,
            Inner::Cluster(_) => self.topology().map_or(0, |t| t.shards),
        }
    }

    fn topology(&self) -> Option<Arc<Topology>> {
        self.topology.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The slot map, read from the cluster first if none is known (yet, or since it was
    /// forgotten after a redirect).
    async fn known_topology(&self) -> RedisResult<Arc<Topology>> {
        if let Some(t) = self.topology() {
            return Ok(t);
        }
        self.refresh_topology().await?;
        self.topology()
            .ok_or_else(|| RedisError::from((ErrorKind::ClusterConnectionNotFound, "no slot map")))
    }

    fn forget_topology(&self) {
        *self.topology.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// One value per key, in order. A single server: one `MGET`. A Cluster: one pipeline of
    /// `GET`s per shard the keys touch, all shards at once.
    pub async fn get_many(&self, keys: &[&[u8]]) -> RedisResult<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let values = match &self.inner {
            Inner::Single(c) => {
                let mut c = c.clone();
                let mut cmd = redis::cmd("MGET");
                for k in keys {
                    cmd.arg(*k);
                }
                self.sent(1);
                match check(cmd.query_async::<Value>(&mut c).await?)? {
                    Value::Array(v) => v,
                    other => vec![other],
                }
            }
            Inner::Cluster(_) => {
                let cmds: Vec<(&[u8], Cmd)> = keys
                    .iter()
                    .map(|k| {
                        let mut cmd = redis::cmd("GET");
                        cmd.arg(*k);
                        (*k, cmd)
                    })
                    .collect();
                self.run_by_shard(&cmds, false).await?
            }
        };
        if values.len() != keys.len() {
            return Err(RedisError::from((
                ErrorKind::Parse,
                "wrong number of values",
                format!("{} for {} keys", values.len(), keys.len()),
            )));
        }
        values
            .into_iter()
            .map(|v| match v {
                Value::Nil => Ok(None),
                other => redis::from_redis_value::<Vec<u8>>(other).map(Some).map_err(Into::into),
            })
            .collect()
    }

    /// Runs each command (with the key that routes it) and answers their replies in order.
    /// A single server: one pipeline, in `MULTI`/`EXEC` when `atomic_on_single`. A Cluster:
    /// one pipeline per shard, all at once; not atomic across shards, nor within one (a
    /// transaction there must stay in one slot: use [`account_tag`] keys and a pipeline
    /// of your own). Any error reply fails the whole call (and drops the slot map, so the
    /// next call reads a fresh one): the caller retries or counts it.
    pub async fn run_by_shard(
        &self,
        cmds: &[(&[u8], Cmd)],
        atomic_on_single: bool,
    ) -> RedisResult<Vec<Value>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let cluster = match &self.inner {
            Inner::Single(c) => {
                let mut c = c.clone();
                let mut pipe = redis::pipe();
                if atomic_on_single {
                    pipe.atomic();
                }
                for (_, cmd) in cmds {
                    pipe.add_command(cmd.clone());
                }
                self.sent(1);
                let replies: Vec<Value> = pipe.query_async(&mut c).await?;
                return replies.into_iter().map(check).collect();
            }
            Inner::Cluster(c) => c,
        };
        let topo = self.known_topology().await?;
        // Shard → (a slot it owns, the commands' indices). A slot no master owns is its own
        // group: redis-rs then answers it with the cluster's own error.
        let mut groups: HashMap<u32, (u16, Vec<usize>)> = HashMap::new();
        for (i, (key, _)) in cmds.iter().enumerate() {
            let slot = slot(key);
            let shard = match topo.owner[usize::from(slot)] {
                u16::MAX => u32::from(u16::MAX) + 1 + u32::from(slot),
                s => u32::from(s),
            };
            groups.entry(shard).or_insert_with(|| (slot, Vec::new())).1.push(i);
        }
        self.sent(groups.len());
        let calls = groups.into_values().map(|(slot, idx)| {
            let mut c = cluster.clone();
            let mut pipe = redis::pipe();
            for &i in &idx {
                pipe.add_command(cmds[i].1.clone());
            }
            let n = idx.len();
            async move {
                let route = SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master));
                let replies = c.route_pipeline(pipe, 0, n, route).await?;
                Ok::<_, RedisError>((idx, replies))
            }
        });
        let mut out = vec![Value::Nil; cmds.len()];
        let mut failed: Option<RedisError> = None;
        for answer in futures_join_all(calls).await {
            match answer.and_then(|(idx, replies)| {
                if replies.len() != idx.len() {
                    return Err(RedisError::from((
                        ErrorKind::Parse,
                        "wrong number of pipeline replies",
                    )));
                }
                Ok((idx, replies))
            }) {
                Ok((idx, replies)) => {
                    for (i, v) in idx.into_iter().zip(replies) {
                        match check(v) {
                            Ok(v) => out[i] = v,
                            Err(e) => failed = failed.or(Some(e)),
                        }
                    }
                }
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        match failed {
            Some(e) => {
                self.forget_topology();
                Err(e)
            }
            None => Ok(out),
        }
    }
}

/// Waits for every future (one per shard), answers in order. Small, so no futures crate.
async fn futures_join_all<F: std::future::Future>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let handles: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut slots: Vec<Option<F::Output>> = handles.iter().map(|_| None).collect();
    let mut handles: Vec<Option<std::pin::Pin<Box<F>>>> = handles.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (h, out) in handles.iter_mut().zip(slots.iter_mut()) {
            if let Some(f) = h {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *out = Some(v);
                        *h = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    slots.into_iter().flatten().collect()
}

/// A server's error reply as an `Err`: redis-rs hands pipeline replies back as values.
fn check(v: Value) -> RedisResult<Value> {
    match v {
        Value::ServerError(e) => Err(e.into()),
        other => Ok(other),
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.inner {
            Inner::Single(c) => c.req_packed_command(cmd),
            Inner::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.inner {
            Inner::Single(c) => c.req_packed_commands(cmd, offset, count),
            Inner::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.inner {
            Inner::Single(c) => c.get_db(),
            Inner::Cluster(c) => c.get_db(),
        }
    }
}

/// Which shard owns each slot (`u16::MAX`: none).
struct Topology {
    owner: Box<[u16]>,
    shards: usize,
    /// One slot of each shard, in shard order: where a per-master command is routed.
    reps: Vec<u16>,
}

impl Topology {
    /// `CLUSTER SLOTS`: `[[start, end, [host, port, id, ..], replicas..], ..]`.
    fn parse(v: &Value) -> Option<Topology> {
        let Value::Array(ranges) = v else { return None };
        let mut owner = vec![u16::MAX; SLOTS].into_boxed_slice();
        let mut ids: HashMap<String, u16> = HashMap::new();
        let mut reps: Vec<u16> = Vec::new();
        for r in ranges {
            let Value::Array(parts) = r else { return None };
            let int = |v: Option<&Value>| match v {
                Some(Value::Int(n)) => usize::try_from(*n).ok(),
                _ => None,
            };
            let (start, end) = (int(parts.first())?, int(parts.get(1))?);
            let Some(Value::Array(master)) = parts.get(2) else { return None };
            let text = |v: Option<&Value>| match v {
                Some(Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
                Some(Value::SimpleString(s)) => Some(s.clone()),
                Some(Value::Int(n)) => Some(n.to_string()),
                _ => None,
            };
            // The node id when the server sends one (Redis 4+), else host:port.
            let id = text(master.get(2))
                .unwrap_or_else(|| format!("{:?}:{:?}", text(master.first()), text(master.get(1))));
            let next = u16::try_from(ids.len()).ok()?;
            let shard = *ids.entry(id).or_insert(next);
            if usize::from(shard) == reps.len() {
                reps.push(u16::try_from(start.min(SLOTS - 1)).ok()?);
            }
            for s in start..=end.min(SLOTS - 1) {
                owner[s] = shard;
            }
        }
        Some(Topology { owner, shards: ids.len(), reps })
    }
}

/// `tierwise:v2:probe:{<n>}`, a key (never written) in `slot`: what the health probe asks
/// each master about.
pub fn probe_key(slot: u16) -> String {
    static TAGS: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        // The first number whose decimal form hashes to each slot (~170k tries, once).
        let mut tags = vec![u32::MAX; SLOTS];
        let mut left = SLOTS;
        let mut n: u32 = 0;
        while left > 0 && n < 10_000_000 {
            let s = usize::from(crc16_xmodem(n.to_string().as_bytes()) % SLOTS as u16);
            if tags[s] == u32::MAX {
                tags[s] = n;
                left -= 1;
            }
            n += 1;
        }
        tags
    });
    format!("{KEY_PREFIX}probe:{{{}}}", tags.get(usize::from(slot)).copied().unwrap_or(0))
}

/// The Cluster slot of a key (its hash tag's, when it has one).
pub fn slot(key: &[u8]) -> u16 {
    // redis-rs's `Slot` keeps its number private: computed as Redis does (CRC16/XMODEM of
    // the hash tag, or of the whole key), checked against redis-rs in the tests.
    crc16_xmodem(hashtag(key).unwrap_or(key)) % SLOTS as u16
}

fn hashtag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|b| *b == b'{')?;
    let close = key[open + 1..].iter().position(|b| *b == b'}')?;
    let tag = &key[open + 1..open + 1 + close];
    (!tag.is_empty()).then_some(tag)
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// Appends `s` with `%`, `:`, `{` and `}` percent-encoded: a key's parts read back
/// unambiguously, and no name or id opens a hash tag.
pub fn key_part(out: &mut String, s: &str) {
    if !s.bytes().any(|b| matches!(b, b':' | b'%' | b'{' | b'}')) {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
}

/// `{<policy>:<account id>}`: the hash tag of everything about one account under one policy
/// name, so those keys share a Cluster slot (see the module docs).
pub fn account_tag(policy: &str, account_id: &str) -> String {
    let mut s = String::with_capacity(policy.len() + account_id.len() + 3);
    s.push('{');
    key_part(&mut s, policy);
    s.push(':');
    key_part(&mut s, account_id);
    s.push('}');
    s
}

/// `tierwise:v2:<kind>:{<policy>:<account id>}` and, when `suffix` is not empty,
/// `:<suffix>` (escaped): one account's key of a kind, in its account's slot.
/// E.g. `account_key("latest", "enterprise", "acme")` = `tierwise:v2:latest:{enterprise:acme}`.
pub fn account_key(kind: &str, policy: &str, account_id: &str, suffix: &str) -> String {
    let mut s = String::with_capacity(
        KEY_PREFIX.len() + kind.len() + policy.len() + account_id.len() + suffix.len() + 5,
    );
    s.push_str(KEY_PREFIX);
    s.push_str(kind);
    s.push(':');
    s.push_str(&account_tag(policy, account_id));
    if !suffix.is_empty() {
        s.push(':');
        key_part(&mut s, suffix);
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use redis::cluster_routing::Slot;

    #[test]
    fn slots_follow_redis() {
        // Known answers from the Cluster spec: "123456789" → 0x31C3; slot of `foo` is 12182.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_ne!(slot(b"foo{}{bar}"), slot(b"bar"), "an empty tag hashes the whole key");
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        for k in [&b"a"[..], b"tierwise:v2:latest:{p:a}", b"{x}y", b"foo{}{bar}"] {
            // `Slot` has no number getter; its Debug form is `Slot(n)`.
            assert_eq!(format!("{:?}", Slot::for_key(k)), format!("Slot({})", slot(k)));
        }
    }

    #[test]
    fn probe_keys_land_in_their_slot() {
        for s in [0u16, 1, 5461, 10923, 16383] {
            assert_eq!(slot(probe_key(s).as_bytes()), s);
        }
    }

    #[test]
    fn an_accounts_keys_share_a_slot_and_names_cannot_open_tags() {
        let latest = account_key("latest", "enterprise", "acme:001", "");
        assert_eq!(latest, "tierwise:v2:latest:{enterprise:acme%3A001}");
        let state = account_key("state", "enterprise", "acme:001", "account");
        assert_eq!(state, "tierwise:v2:state:{enterprise:acme%3A001}:account");
        assert_eq!(slot(latest.as_bytes()), slot(state.as_bytes()));
        assert_eq!(account_tag("p", "a}b{c"), "{p:a%7Db%7Bc}");
        assert_ne!(account_tag("a:b", "c"), account_tag("a", "b:c"));
        assert_eq!(account_tag("a%3Ab", "c"), "{a%253Ab:c}");
    }

    #[test]
    fn seeds_and_redaction() {
        assert_eq!(
            Target::cluster(" redis://a:1, ,redis://b:2 "),
            Target::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()])
        );
        assert_eq!(redact("redis://user:secret@host:6379/0"), "redis://***@host:6379/0");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }

    #[test]
    fn cluster_slots_parse_into_shards() {
        let node = |port: i64, id: &str| {
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(port),
                Value::BulkString(id.as_bytes().to_vec()),
            ])
        };
        let v = Value::Array(vec![
            Value::Array(vec![Value::Int(0), Value::Int(5460), node(1, "a")]),
            Value::Array(vec![Value::Int(5461), Value::Int(10922), node(2, "b")]),
            Value::Array(vec![Value::Int(10923), Value::Int(16383), node(3, "c"), node(4, "d")]),
        ]);
        let t = Topology::parse(&v).unwrap();
        assert_eq!(t.shards, 3);
        assert_eq!((t.owner[0], t.owner[5461], t.owner[16383]), (0, 1, 2));
        assert_eq!(t.reps, vec![0, 5461, 10923]);
        let gap =
            Value::Array(vec![Value::Array(vec![Value::Int(0), Value::Int(10), node(1, "a")])]);
        assert_eq!(Topology::parse(&gap).unwrap().owner[11], u16::MAX);
    }
}
