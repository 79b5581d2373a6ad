//! `tierwise serve`: load the policies, watch them, answer HTTP until SIGTERM or ctrl-c.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tierwise::decision_log::DecisionLog;
use tierwise::http::server::{ServerConfig, Stopped};
use tierwise::http::{self, Config};
use tierwise::script::Limits;
use tierwise::service::Service;
use tracing::{error, info, warn};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// A folder of policy folders (or one policy folder); watched and reloaded on change.
    #[arg(long, env = "TIERWISE_POLICIES", default_value = "policies")]
    policies: PathBuf,
    /// Address to listen on (port 0: any free port; the chosen address is printed).
    #[arg(long, env = "TIERWISE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// The policy used when a request names none [default: `enterprise` if there is one,
    /// else the first served policy by name].
    #[arg(long, env = "TIERWISE_DEFAULT_POLICY")]
    default_policy: Option<String>,
    /// Decision log: `-` (standard output), a file to append to, or `off`.
    #[arg(long, env = "TIERWISE_DECISION_LOG", default_value = "-")]
    decision_log: String,
    /// Largest request body in bytes (every route).
    #[arg(long, env = "TIERWISE_BODY_LIMIT", default_value_t = 8 * 1024 * 1024)]
    body_limit: usize,
    /// Milliseconds before a request is answered 503 `timeout`.
    #[arg(long, env = "TIERWISE_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    request_timeout_ms: u64,
    /// Requests in progress at once on /v1/*; more are answered 503 with Retry-After.
    #[arg(long, env = "TIERWISE_MAX_CONCURRENT", default_value_t = 256)]
    max_concurrent: usize,
    /// Milliseconds given to in-flight requests after SIGTERM / ctrl-c; requests still
    /// computing then are answered 503 `shutting_down`, and the process exits at most a
    /// second later whatever its clients do.
    #[arg(long, env = "TIERWISE_SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    shutdown_grace_ms: u64,
    /// Milliseconds for a request's headers to arrive, counted from the connection's start or
    /// the end of its previous response: also how long an idle keep-alive connection is kept
    /// (set a load balancer's idle timeout below it).
    #[arg(long, env = "TIERWISE_HEADER_READ_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 10_000)]
    header_read_timeout_ms: u64,
    /// Milliseconds for a request body to arrive in full after its headers; a slower body
    /// is answered 408 `body_timeout`.
    #[arg(long, env = "TIERWISE_BODY_READ_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 15_000)]
    body_read_timeout_ms: u64,
    /// Milliseconds a response write may make no progress (a client that stopped reading)
    /// before the connection is closed.
    #[arg(long, env = "TIERWISE_WRITE_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(1..), default_value_t = 30_000)]
    write_timeout_ms: u64,
    /// Connections open at once; one more is answered 503 (Retry-After) and closed. Keep it
    /// under the process's open-file limit (`ulimit -n`).
    #[arg(long, env = "TIERWISE_MAX_CONNECTIONS", default_value_t = 4096)]
    max_connections: usize,
    /// Milliseconds of quiet in the policies folder before a reload.
    #[arg(long, env = "TIERWISE_RELOAD_DEBOUNCE_MS", default_value_t = 150)]
    reload_debounce_ms: u64,
    /// Do not watch the policies folder (reload only through POST /v1/policies/reload).
    #[arg(long, env = "TIERWISE_NO_WATCH")]
    no_watch: bool,
    /// CPU priority of dry runs: `idle` (only CPU that live requests leave), `low` (nice 19)
    /// or `normal`.
    #[arg(long, env = "TIERWISE_DRY_RUN_PRIORITY", value_enum, default_value_t = http::DryRunPriority::Idle)]
    dry_run_priority: http::DryRunPriority,
    /// The console under /ui/: `on` or `off` (then /ui/ answers 404; the API is unchanged).
    #[arg(long, env = "TIERWISE_CONSOLE", value_parser = ["on", "off"], default_value = "on")]
    console: String,
    /// Async worker threads [default: one per core].
    #[arg(long, env = "TIERWISE_WORKERS")]
    workers: Option<usize>,
    /// Log lines on standard error as `text` or `json` (one object a line); the level from
    /// `TIERWISE_LOG` or `RUST_LOG` (default `info`: one access line per request).
    #[arg(long, env = "TIERWISE_LOG_FORMAT", value_enum, default_value_t = tierwise::logging::LogFormat::Text)]
    log_format: tierwise::logging::LogFormat,
    #[command(flatten)]
    cache: tierwise::cache::CacheArgs,
    #[command(flatten)]
    events: EventArgs,
}

/// Account state, events and their delivery.
#[derive(clap::Args)]
pub struct EventArgs {
    /// Keep account state and emit events (implied by a webhook): evaluate and portfolio
    /// answers then list each account's events.
    #[arg(long, env = "TIERWISE_EVENTS")]
    events: bool,
    /// POST every event to this http:// URL (CloudEvents, signed per Standard Webhooks).
    #[arg(long, env = "TIERWISE_WEBHOOK_URL", requires = "webhook_secret")]
    webhook: Option<String>,
    /// The webhook's signing secret, `whsec_` + base64 (24 to 64 bytes).
    #[arg(long, env = "TIERWISE_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// A TOML file of `[[webhook]]` tables (url, secret or secret_env, types, levels,
    /// policies, batch, retry_window).
    #[arg(long, env = "TIERWISE_WEBHOOKS")]
    webhooks: Option<PathBuf>,
    /// How much of the outbox is kept: `LEN[,AGE]` (e.g. `100000,7d`); older or more events
    /// are trimmed, delivered or not.
    #[arg(long, env = "TIERWISE_EVENTS_RETENTION", default_value = "100000,7d", value_parser = tierwise::events::Retention::parse)]
    events_retention: tierwise::events::Retention,
    /// Replicas on one Redis share the webhooks: each is walked by one replica at a time,
    /// which renews its lease on it every third of this; a replica that dies leaves its
    /// webhooks to the others after this long (milliseconds).
    #[arg(long, env = "TIERWISE_WEBHOOK_LEASE_MS", default_value_t = 15_000)]
    webhook_lease_ms: u64,
}

/// The webhooks the flags name (none: an empty list); an error names the flag at fault.
fn webhooks(a: &EventArgs) -> Result<Vec<tierwise::events::webhook::Webhook>, String> {
    use tierwise::events::webhook::Webhook;
    let mut out = Vec::new();
    if let (Some(url), Some(secret)) = (&a.webhook, &a.webhook_secret) {
        out.push(Webhook::new(url, secret).map_err(|e| format!("--webhook: {e}"))?);
    }
    if let Some(path) = &a.webhooks {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| format!("--webhooks {shown}: {e}"))?;
        out.extend(Webhook::from_file(&shown, &text, |v| std::env::var(v).ok())?);
    }
    Ok(out)
}

pub fn run(args: &ServeArgs, limits: &Limits) -> ExitCode {
    tierwise::logging::init(args.log_format);
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = args.workers {
        rt.worker_threads(n.max(1));
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = rt.block_on(serve(args, limits));
    // Dropping the runtime would wait for every blocking task (an evaluation cut off by the
    // grace period): the exit must stay bounded.
    rt.shutdown_timeout(Duration::from_millis(100));
    code
}

async fn serve(args: &ServeArgs, limits: &Limits) -> ExitCode {
    if !args.policies.is_dir() {
        error!(
            "`{}` is not a folder of policies (use --policies or TIERWISE_POLICIES)",
            args.policies.display()
        );
        return ExitCode::from(2);
    }
    let service =
        Arc::new(Service::new(&args.policies, limits.clone(), args.default_policy.clone()));
    let outcomes = {
        let svc = service.clone();
        tokio::task::spawn_blocking(move || svc.reload()).await.unwrap_or_default()
    };
    http::log_reload(&outcomes);
    match service.ready() {
        Ok(d) => info!(default_policy = %d, "default policy `{d}`"),
        Err(why) => warn!("not ready: {why} (`{}`)", args.policies.display()),
    }

    let _watcher = if args.no_watch {
        None
    } else {
        match tierwise::watch::spawn(
            service.clone(),
            Duration::from_millis(args.reload_debounce_ms),
            http::log_reload,
        ) {
            Ok(w) => Some(w),
            Err(e) => {
                error!("cannot watch `{}`: {e}", args.policies.display());
                return ExitCode::from(2);
            }
        }
    };

    let log = match DecisionLog::open(&args.decision_log) {
        Ok(l) => l,
        Err(e) => {
            error!("cannot open the decision log `{}`: {e}", args.decision_log);
            return ExitCode::from(2);
        }
    };
    let config = Config {
        body_limit: args.body_limit,
        request_timeout: Duration::from_millis(args.request_timeout_ms),
        max_concurrent: args.max_concurrent,
        admin_token: std::env::var("TIERWISE_ADMIN_TOKEN").ok().filter(|t| !t.is_empty()),
        cache_always: args.cache.cache_always,
        dry_run_priority: args.dry_run_priority,
        console: args.console == "on",
    };
    let cache_config = tierwise::cache::CacheConfig::from(&args.cache);
    let cache = match tierwise::cache::build(&cache_config) {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    match cache_config.target() {
        Some(t) => info!("cache in {}", t.describe()),
        None => info!("cache in memory ({} MiB)", args.cache.cache_memory_mb),
    }
    let admin = config.admin_token.is_some();
    let log_closer = log.closer();
    let hooks = match webhooks(&args.events) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let state = http::App::with_cache(service, config, log, cache.clone());
    if args.events.events || !hooks.is_empty() {
        use tierwise::events::{EventStore, Hub, memory::MemoryStore, webhook::Delivery};
        let retention = args.events.events_retention;
        let store: Arc<dyn EventStore> = match args.cache.redis_url.as_deref() {
            Some(url) if !url.is_empty() => {
                match tierwise::events::redis::connect(url, retention).await {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("error: events need their Redis at start: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            _ => Arc::new(MemoryStore::new(retention)),
        };
        let delivery = (!hooks.is_empty()).then(|| {
            Delivery::start(
                store.clone(),
                hooks,
                Duration::from_millis(args.events.webhook_lease_ms),
            )
        });
        eprintln!(
            "tierwise: events on, state in {}, {} webhook(s)",
            if store.durable() {
                "Redis (durable with AOF on)"
            } else {
                "memory (lost on restart)"
            },
            delivery.as_ref().map_or(0, |d| d.len())
        );
        let _ = state.events.set(Arc::new(Hub::new(store, delivery)));
    }
    let app = http::app(state.clone());

    let listener = match tokio::net::TcpListener::bind(&args.listen).await {
        Ok(l) => l,
        Err(e) => {
            error!("cannot listen on `{}`: {e}", args.listen);
            return ExitCode::from(2);
        }
    };
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    info!(
        "listening on http://{} (admin routes {}; console {})",
        addr.map_or(args.listen.clone(), |a| a.to_string()),
        if admin { "enabled" } else { "disabled: no TIERWISE_ADMIN_TOKEN" },
        if args.console == "on" { "at /ui/" } else { "off" }
    );

    let grace = Duration::from_millis(args.shutdown_grace_ms);
    let server = ServerConfig {
        header_read_timeout: Duration::from_millis(args.header_read_timeout_ms),
        body_read_timeout: Duration::from_millis(args.body_read_timeout_ms),
        write_timeout: Duration::from_millis(args.write_timeout_ms),
        max_connections: args.max_connections,
        body_limit: args.body_limit,
        // Room for 32 bodies at the limit (256 MiB by default) being received at once.
        body_buffer_bytes: args.body_limit.saturating_mul(32),
        grace,
    };
    let overloaded = state.metrics.overloaded.clone();
    let signal = async move {
        shutdown_signal().await;
        state.draining.store(true, std::sync::atomic::Ordering::Relaxed);
        info!("shutting down; in-flight requests have {} ms", grace.as_millis());
    };
    match http::server::serve(listener, app, &server, overloaded, signal).await {
        stopped @ (Stopped::Drained | Stopped::CutShort) => {
            // The router (and with it every sender of the decision log) is gone: wait
            // for the last lines.
            // Decisions queued for Redis get a bounded moment to be written.
            let _ = tokio::time::timeout(Duration::from_secs(1), cache.flush()).await;
            // Evaluations cut short still hold a sender until they end: the grace period
            // is already spent, so wait less for them.
            let wait = if stopped == Stopped::Drained {
                Duration::from_secs(2)
            } else {
                Duration::from_millis(300)
            };
            if !log_closer.wait(wait) {
                warn!("the decision log's last lines may be missing");
            }
            info!("stopped");
        }
        Stopped::Abandoned { connections } => {
            warn!("grace period over; stopping with {connections} connections still open");
        }
    }
    ExitCode::SUCCESS
}

/// ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
