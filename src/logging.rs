//! The service's own log: structured (`tracing`), one line per event on standard error, as
//! text for people or JSON lines for a log pipeline (`--log-format`).
//!
//! The level comes from `TIERWISE_LOG`, else `RUST_LOG`, in `tracing-subscriber`'s filter
//! syntax (`info`, `warn,tierwise::access=off`, ...); `info` when neither is set. At `info`
//! every request writes one access line (target `tierwise::access`); each line of a request
//! carries its `request_id` (the `request` span). The decision log is another stream (see
//! [`crate::decision_log`]), written on standard output or to a file.

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// `2026-12-03T18:00:00.123456Z  INFO request{request_id=..}: tierwise::access: request method="POST" ..`
    #[default]
    Text,
    /// One JSON object a line: `timestamp`, `level`, `target`, the event's fields
    /// (`message` included) at the top level, and `span` (`request_id`) when in a request.
    Json,
}

/// The filter `TIERWISE_LOG` or `RUST_LOG` asks for, and why it fell back to `info` when
/// the value cannot be read.
pub fn filter() -> (EnvFilter, Option<String>) {
    for var in ["TIERWISE_LOG", "RUST_LOG"] {
        if let Ok(v) = std::env::var(var)
            && !v.trim().is_empty()
        {
            return match EnvFilter::try_new(&v) {
                Ok(f) => (f, None),
                Err(e) => (EnvFilter::new("info"), Some(format!("{var}=`{v}` ignored: {e}"))),
            };
        }
    }
    (EnvFilter::new("info"), None)
}

/// Installs the global subscriber (once per process; later calls change nothing).
pub fn init(format: LogFormat) {
    let (filter, problem) = filter();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let done = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    if done.is_ok()
        && let Some(p) = problem
    {
        tracing::warn!("{p}");
    }
}
