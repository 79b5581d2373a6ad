//! Prometheus metrics of the service (prometheus-client; no HTTP here, the server renders
//! [`Metrics::render`] at `/metrics`).
//!
//! Label values are `&'static str` wherever they come from a closed set (routes, methods,
//! error codes), so recording a request allocates nothing.

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
pub struct PolicyLabels {
    pub policy: String,
    pub hash: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabels {
    pub policy: String,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. 10 s: single accounts sit at the bottom, 10k-account portfolios near 0.1 s.
    Histogram::new([0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
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
    pub cache_miss: Counter,
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
    /// Decision cache lookups (`hit` / `miss`); every lookup is a miss until a cache exists.
    pub cache: Family<ResultLabels, Counter>,
    /// Reload results per policy, filled from the service at each scrape.
    reloads: Family<ResultLabels, Gauge>,
    policy_info: Family<PolicyLabels, Gauge>,
    policy_error: Family<NameLabels, Gauge>,
    policy_loaded_at: Family<NameLabels, Gauge>,
    pub account: LevelMetrics,
    pub portfolio: LevelMetrics,
}

fn placeholder() -> LevelMetrics {
    LevelMetrics { evaluations: Counter::default(), accounts: Counter::default(), errors: Counter::default(), batch: batch_histogram(), cache_miss: Counter::default() }
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
            reloads: Family::default(),
            policy_info: Family::default(),
            policy_error: Family::default(),
            policy_loaded_at: Family::default(),
            registry: Registry::default(),
            account: placeholder(),
            portfolio: placeholder(),
        };
        registry.register("http_requests", "HTTP requests answered, by route, method and status", m.requests.clone());
        registry.register("http_request_duration_seconds", "Time to answer a request, by route", m.latency.clone());
        registry.register("http_errors", "Error answers, by error code", m.errors.clone());
        registry.register("http_in_flight_requests", "Requests being answered now", m.in_flight.clone());
        registry.register("http_overloaded", "Requests refused with 503 at the concurrency limit", m.overloaded.clone());
        registry.register("evaluations", "Evaluation requests answered, by level", m.evaluations.clone());
        registry.register("accounts_evaluated", "Accounts answered (decision or error), by level", m.accounts.clone());
        registry.register("account_errors", "Accounts answered with an error, by level", m.account_errors.clone());
        registry.register("evaluation_batch_accounts", "Accounts per evaluation request", m.batch_size.clone());
        registry.register("cache_lookups", "Decision cache lookups by result (no cache yet: all misses)", m.cache.clone());
        registry.register("policy_reloads", "Policy reload results since start (applied, rejected, removed, runs)", m.reloads.clone());
        registry.register("policy_info", "The policy version serving, by name and hash (always 1)", m.policy_info.clone());
        registry.register("policy_reload_failing", "1 when the policy's files on disk failed their checks and an older version (or none) serves", m.policy_error.clone());
        registry.register("policy_loaded_at_seconds", "Unix time the serving version went live", m.policy_loaded_at.clone());
        let level = |level: &'static str| {
            let l = LevelLabels { level };
            LevelMetrics {
                evaluations: m.evaluations.get_or_create_owned(&l),
                accounts: m.accounts.get_or_create_owned(&l),
                errors: m.account_errors.get_or_create_owned(&l),
                batch: m.batch_size.get_or_create_owned(&l),
                cache_miss: m.cache.get_or_create_owned(&ResultLabels { result: "miss" }),
            }
        };
        let (account, portfolio) = (level("account"), level("portfolio"));
        Metrics { registry, account, portfolio, ..m }
    }

    /// The OpenMetrics text, with the policy figures read from `service` now.
    pub fn render(&self, service: &Service) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &service.stats;
        for (result, v) in [("applied", &s.applied), ("rejected", &s.rejected), ("removed", &s.removed), ("runs", &s.runs)] {
            self.reloads.get_or_create(&ResultLabels { result }).set(v.load(Relaxed) as i64);
        }
        self.policy_info.clear();
        self.policy_error.clear();
        self.policy_loaded_at.clear();
        let reg = service.registry();
        for (name, e) in &reg.entries {
            if let Some(l) = &e.active {
                self.policy_info.get_or_create(&PolicyLabels { policy: name.clone(), hash: l.policy.hash.clone() }).set(1);
                let at = l.loaded_at.duration_since(std::time::SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
                self.policy_loaded_at.get_or_create(&NameLabels { policy: name.clone() }).set(at);
            }
            self.policy_error.get_or_create(&NameLabels { policy: name.clone() }).set(i64::from(e.last_error.is_some()));
        }
        let mut out = String::with_capacity(8192);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
