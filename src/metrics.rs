//! Prometheus metrics of the service (prometheus-client; no HTTP here, the server renders
//! [`Metrics::render`] at `/metrics`).
//!
//! Label values are `&'static str` wherever they come from a closed set (routes, methods,
//! error codes), so recording a request allocates nothing.

use crate::cache::CacheStats;
use crate::service::Service;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LevelLabels {
    /// `account` (`/v1/evaluate`) or `portfolio`.
    pub level: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    /// `memory` or `redis`.
    pub backend: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub policy: String,
    pub hash: String,
    /// The policy's own `version`: with `hash`, what a rollout
    /// across replicas is converging to.
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabels {
    pub policy: String,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. 10 s: single accounts sit at the bottom, 10k-account portfolios near 0.1 s.
    Histogram::new([
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ])
}

fn batch_histogram() -> Histogram {
    Histogram::new([1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0])
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The figures of one evaluation level, looked up once (a request touches no map).
pub struct LevelMetrics {
    pub evaluations: Counter,
    pub accounts: Counter,
    pub errors: Counter,
    pub batch: Histogram,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: HistogramFamily<RouteLabels>,
    pub errors: Family<CodeLabels, Counter>,
    /// Evaluation requests answered.
    pub evaluations: Family<LevelLabels, Counter>,
    /// Accounts decided, and accounts answered with an error.
    pub accounts: Family<LevelLabels, Counter>,
    pub account_errors: Family<LevelLabels, Counter>,
    pub batch_size: HistogramFamily<LevelLabels>,
    pub in_flight: Gauge,
    /// Requests turned away with 503 because the concurrency limit was reached.
    pub overloaded: Counter,
    /// Decision cache lookups by result, copied from the cache's counters at each scrape:
    /// `hit`, `miss`, `skipped` (not looked up: Redis breaker not closed), `gated` (not
    /// looked up: the cost gate judged a read would not pay).
    pub cache: Family<ResultLabels, Counter>,
    cache_calls: Family<ResultLabels, Counter>,
    cache_writes: Family<ResultLabels, Counter>,
    cache_queued: Gauge,
    cache_breaker: Gauge,
    cache_breaker_opened: Counter,
    cache_backend: Family<BackendLabels, Gauge>,
    /// Reload results per policy, filled from the service at each scrape.
    reloads: Family<ResultLabels, Gauge>,
    policy_info: Family<PolicyLabels, Gauge>,
    policy_error: Family<NameLabels, Gauge>,
    policy_loaded_at: Family<NameLabels, Gauge>,
    pub account: LevelMetrics,
    pub portfolio: LevelMetrics,
    log_dropped: Counter,
    log_write_errors: Counter,
}

fn placeholder() -> LevelMetrics {
    LevelMetrics {
        evaluations: Counter::default(),
        accounts: Counter::default(),
        errors: Counter::default(),
        batch: batch_histogram(),
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tierwise");
        let m = Metrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            errors: Family::default(),
            evaluations: Family::default(),
            accounts: Family::default(),
            account_errors: Family::default(),
            batch_size: Family::new_with_constructor(batch_histogram as fn() -> Histogram),
            in_flight: Gauge::default(),
            overloaded: Counter::default(),
            cache: Family::default(),
            cache_calls: Family::default(),
            cache_writes: Family::default(),
            cache_queued: Gauge::default(),
            cache_breaker: Gauge::default(),
            cache_breaker_opened: Counter::default(),
            cache_backend: Family::default(),
            reloads: Family::default(),
            policy_info: Family::default(),
            policy_error: Family::default(),
            policy_loaded_at: Family::default(),
            registry: Registry::default(),
            account: placeholder(),
            portfolio: placeholder(),
            log_dropped: Counter::default(),
            log_write_errors: Counter::default(),
        };
        registry.register(
            "http_requests",
            "HTTP requests answered, by route, method and status",
            m.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer a request, by route",
            m.latency.clone(),
        );
        registry.register("http_errors", "Error answers, by error code", m.errors.clone());
        registry.register(
            "http_in_flight_requests",
            "Requests being answered now",
            m.in_flight.clone(),
        );
        registry.register(
            "http_overloaded",
            "Requests refused with 503 at the concurrency limit",
            m.overloaded.clone(),
        );
        registry.register(
            "evaluations",
            "Evaluation requests answered, by level",
            m.evaluations.clone(),
        );
        registry.register(
            "accounts_evaluated",
            "Accounts answered (decision or error), by level",
            m.accounts.clone(),
        );
        registry.register(
            "account_errors",
            "Accounts answered with an error, by level",
            m.account_errors.clone(),
        );
        registry.register(
            "evaluation_batch_accounts",
            "Accounts per evaluation request",
            m.batch_size.clone(),
        );
        registry.register("cache_lookups", "Decision cache lookups by result: hit, miss, skipped (breaker not closed), gated (the cost gate skipped the read)", m.cache.clone());
        registry.register(
            "cache_call_failures",
            "Cache calls that failed, by result: error, timeout",
            m.cache_calls.clone(),
        );
        registry.register(
            "cache_writes",
            "Cache entries by result: written, dropped (queue full, breaker open or write failed)",
            m.cache_writes.clone(),
        );
        registry.register(
            "cache_queued_writes",
            "Write batches waiting in the Redis write queue",
            m.cache_queued.clone(),
        );
        registry.register(
            "cache_breaker_state",
            "Redis circuit breaker: 0 closed, 1 open, 2 half-open",
            m.cache_breaker.clone(),
        );
        registry.register(
            "cache_breaker_opened",
            "Times the Redis circuit breaker opened",
            m.cache_breaker_opened.clone(),
        );
        registry.register(
            "cache_backend",
            "The cache backend in use (always 1)",
            m.cache_backend.clone(),
        );
        registry.register(
            "policy_reloads",
            "Policy reload results since start (applied, rejected, removed, runs)",
            m.reloads.clone(),
        );
        registry.register(
            "policy_info",
            "The policy version serving, by name and hash (always 1)",
            m.policy_info.clone(),
        );
        registry.register("policy_reload_failing", "1 when the policy's files on disk failed their checks and an older version (or none) serves", m.policy_error.clone());
        registry.register(
            "policy_loaded_at_seconds",
            "Unix time the serving version went live",
            m.policy_loaded_at.clone(),
        );
        registry.register("decision_log_dropped", "Decision log lines dropped because its queue was full (a slow or stalled sink); requests never wait for the log", m.log_dropped.clone());
        registry.register(
            "decision_log_write_errors",
            "Decision log lines lost because writing them failed (full disk, closed pipe)",
            m.log_write_errors.clone(),
        );
        let level = |level: &'static str| {
            let l = LevelLabels { level };
            LevelMetrics {
                evaluations: m.evaluations.get_or_create_owned(&l),
                accounts: m.accounts.get_or_create_owned(&l),
                errors: m.account_errors.get_or_create_owned(&l),
                batch: m.batch_size.get_or_create_owned(&l),
            }
        };
        let (account, portfolio) = (level("account"), level("portfolio"));
        Metrics { registry, account, portfolio, ..m }
    }

    /// Copies the decision log's loss counters, to be rendered next.
    pub fn observe_log(&self, log: &crate::decision_log::LogStats) {
        use std::sync::atomic::Ordering::Relaxed;
        self.log_dropped.inner().store(log.dropped.load(Relaxed), Relaxed);
        self.log_write_errors.inner().store(log.write_errors.load(Relaxed), Relaxed);
    }

    /// The OpenMetrics text, with the policy and cache figures read now.
    /// `gated` and `unavailable`: accounts the service did not look up (the cost gate, a
    /// Redis breaker not closed).
    pub fn render(
        &self,
        service: &Service,
        c: &CacheStats,
        gated: u64,
        unavailable: u64,
    ) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let set = |f: &Family<ResultLabels, Counter>, result: &'static str, v: u64| {
            f.get_or_create(&ResultLabels { result }).inner().store(v, Relaxed)
        };
        set(&self.cache, "hit", c.hits);
        set(&self.cache, "miss", c.misses);
        set(&self.cache, "skipped", c.skipped + unavailable);
        set(&self.cache, "gated", gated);
        set(&self.cache_calls, "error", c.errors);
        set(&self.cache_calls, "timeout", c.timeouts);
        set(&self.cache_writes, "written", c.written);
        set(&self.cache_writes, "dropped", c.dropped_writes);
        self.cache_queued.set(i64::try_from(c.queued).unwrap_or(i64::MAX));
        self.cache_breaker.set(c.breaker.as_gauge());
        self.cache_breaker_opened.inner().store(c.breaker_opened, Relaxed);
        self.cache_backend.get_or_create(&BackendLabels { backend: c.backend }).set(1);
        let s = &service.stats;
        for (result, v) in [
            ("applied", &s.applied),
            ("rejected", &s.rejected),
            ("removed", &s.removed),
            ("runs", &s.runs),
        ] {
            self.reloads.get_or_create(&ResultLabels { result }).set(v.load(Relaxed) as i64);
        }
        self.policy_info.clear();
        self.policy_error.clear();
        self.policy_loaded_at.clear();
        let reg = service.registry();
        for (name, e) in &reg.entries {
            if let Some(l) = &e.active {
                self.policy_info
                    .get_or_create(&PolicyLabels {
                        policy: name.clone(),
                        hash: l.policy.hash.clone(),
                        version: l.policy.version.clone(),
                    })
                    .set(1);
                let at = l
                    .loaded_at
                    .duration_since(std::time::SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                self.policy_loaded_at.get_or_create(&NameLabels { policy: name.clone() }).set(at);
            }
            self.policy_error
                .get_or_create(&NameLabels { policy: name.clone() })
                .set(i64::from(e.last_error.is_some()));
        }
        let mut out = String::with_capacity(8192);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
