//! How the cache is set up: [`CacheConfig`] (what the library takes) and [`CacheArgs`] (the
//! `serve` flags and `TIERWISE_*` variables that fill it, for `#[command(flatten)]`).

use std::time::Duration;

/// The most a big batch adds to a call's deadline.
pub const MAX_PER_KEY_ALLOWANCE: Duration = Duration::from_millis(200);

/// The cache's settings. `Default` is the embedded in-process cache.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheConfig {
    /// `redis://host:port/db` (or `rediss://`, `redis+unix://`, `valkey://`); `None` and no
    /// `redis_cluster`: in-process memory.
    pub redis_url: Option<String>,
    /// A Redis (or Valkey) Cluster's seed nodes; used when not empty (`redis_url` is then
    /// ignored: the CLI refuses both at once).
    pub redis_cluster: Vec<String>,
    /// How long a decision or portfolio answer is kept. Entries are content-addressed and
    /// never stale; the TTL only bounds what Redis holds for snapshots nobody sends again.
    pub ttl: Duration,
    /// How long the latest decision of an account is kept (`/v1/accounts/{id}/decision`).
    pub latest_ttl: Duration,
    /// The deadline of one Redis read (`MGET`, `GET`): past it the request evaluates. Short on
    /// purpose: redis-rs's connection manager would otherwise make the caller wait out its
    /// reconnect backoff.
    pub timeout: Duration,
    /// Added to a call's deadline per key (a 1,000-key `MGET` moves ~1 MB).
    pub timeout_per_key: Duration,
    /// The deadline of one write pipeline, in the background writer (nobody waits for it).
    pub write_timeout: Duration,
    /// Consecutive failed or timed-out calls that open the breaker.
    pub breaker_failures: u32,
    /// How often the health probe (`PING`, on a Cluster to every master, under `timeout`)
    /// asks Redis, with or without traffic: a failed probe opens the breaker and shows in
    /// `/readyz`; an answer closes it. So an open breaker lasts about this long.
    pub breaker_cooldown: Duration,
    /// How long connecting to a node may take (in the background: nobody waits for it).
    pub probe_timeout: Duration,
    /// Batches the write queue holds; a batch beyond is dropped and counted.
    pub queue_batches: usize,
    /// A value larger than this is not cached (a 100k-account portfolio answer is ~80 MB).
    pub max_value_bytes: usize,
    /// The in-process cache's bound for decisions and portfolio answers (keys + values).
    pub memory_max_bytes: u64,
    /// The in-process cache's bound for latest decisions (keys + values).
    pub memory_latest_max_bytes: u64,
    /// The service reads the cache on every request and writes every decision (no
    /// [`super::CostGate`], no doorkeeper). The cache implementations do not look at it.
    pub always: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            redis_url: None,
            redis_cluster: Vec::new(),
            ttl: Duration::from_secs(3600),
            latest_ttl: Duration::from_secs(7 * 86_400),
            timeout: Duration::from_millis(25),
            timeout_per_key: Duration::from_micros(20),
            write_timeout: Duration::from_millis(250),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            queue_batches: 1024,
            max_value_bytes: 8 << 20,
            memory_max_bytes: 256 << 20,
            memory_latest_max_bytes: 64 << 20,
            always: false,
        }
    }
}

impl CacheConfig {
    /// Where the shared cache lives, if anywhere.
    pub fn target(&self) -> Option<crate::redis_conn::Target> {
        use crate::redis_conn::Target;
        if !self.redis_cluster.is_empty() {
            return Some(Target::Cluster(self.redis_cluster.clone()));
        }
        self.redis_url.clone().map(Target::Single)
    }

    /// The deadline of a read of `keys` keys: `timeout`, plus `timeout_per_key` a key up to
    /// [`MAX_PER_KEY_ALLOWANCE`] (a 100k-account batch must not wait seconds on a hung Redis).
    pub fn read_deadline(&self, keys: usize) -> Duration {
        self.timeout + self.allowance(keys)
    }
    /// The deadline of a write pipeline of `keys` keys.
    pub fn write_deadline(&self, keys: usize) -> Duration {
        self.write_timeout + self.allowance(keys)
    }
    fn allowance(&self, keys: usize) -> Duration {
        self.timeout_per_key
            .saturating_mul(u32::try_from(keys).unwrap_or(u32::MAX))
            .min(MAX_PER_KEY_ALLOWANCE)
    }
}

/// The cache flags of `tierwise serve`, each with its `TIERWISE_*` variable.
#[derive(Clone, Debug, clap::Args)]
pub struct CacheArgs {
    /// Share decisions through this Redis (`redis://127.0.0.1:6379/0`); without it each
    /// replica caches in its own memory.
    #[arg(long = "redis", env = "TIERWISE_REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,
    /// Share decisions through this Redis (or Valkey) Cluster, given by seed nodes
    /// (`redis://10.0.0.1:6379,redis://10.0.0.2:6379`; one reachable seed is enough).
    #[arg(
        long = "redis-cluster",
        env = "TIERWISE_REDIS_CLUSTER",
        value_name = "URL[,URL...]",
        conflicts_with = "redis_url"
    )]
    pub redis_cluster: Option<String>,
    /// Seconds a decision or portfolio answer stays cached.
    #[arg(long, env = "TIERWISE_CACHE_TTL", value_name = "SECONDS", default_value_t = 3600)]
    pub cache_ttl: u64,
    /// Seconds the latest decision of an account is kept.
    #[arg(long, env = "TIERWISE_CACHE_LATEST_TTL", value_name = "SECONDS", default_value_t = 7 * 86_400)]
    pub cache_latest_ttl: u64,
    /// Deadline of one Redis read, in milliseconds; past it the request evaluates.
    #[arg(long, env = "TIERWISE_CACHE_TIMEOUT_MS", value_name = "MS", default_value_t = 25)]
    pub cache_timeout_ms: u64,
    /// Size of the in-process cache, in MiB (without `--redis`).
    #[arg(long, env = "TIERWISE_CACHE_MEMORY_MB", value_name = "MIB", default_value_t = 256)]
    pub cache_memory_mb: u64,
    /// Read the cache on every request and write every decision: no cost gate, no
    /// doorkeeper (for expensive policies, and for predictable hits in tests).
    #[arg(long, env = "TIERWISE_CACHE_ALWAYS")]
    pub cache_always: bool,
}

impl From<&CacheArgs> for CacheConfig {
    fn from(a: &CacheArgs) -> Self {
        CacheConfig {
            redis_url: a.redis_url.clone().filter(|u| !u.is_empty()),
            redis_cluster: match a.redis_cluster.as_deref().map(crate::redis_conn::Target::cluster)
            {
                Some(crate::redis_conn::Target::Cluster(seeds)) => seeds,
                _ => Vec::new(),
            },
            ttl: Duration::from_secs(a.cache_ttl.max(1)),
            latest_ttl: Duration::from_secs(a.cache_latest_ttl.max(1)),
            timeout: Duration::from_millis(a.cache_timeout_ms.max(1)),
            memory_max_bytes: a.cache_memory_mb.saturating_mul(1 << 20),
            always: a.cache_always,
            ..CacheConfig::default()
        }
    }
}
