//! tierwise: a rules engine for key-account management.
//!
//! Crate map, top to bottom (arrows point down; docs/architecture.md):
//! - [`policy`]: a policy folder (TOML + rhai) → a validated, compiled [`policy::Policy`];
//!   every problem reported at once with file:line:column.
//! - [`script`]: the one hardened rhai engine (limits, deadline, sandboxed imports).
//! - [`snapshot`]: account snapshots in (JSON, JSON lines, CSV) and their validation.
//! - [`engine`]: the pure evaluation — account level, portfolio level, policy test cases.
//! - [`service`]: the active policies (one atomic swap per reload, checks and test cases
//!   before), the one door to the engine for the server.
//! - [`watch`]: hot reload — the policies folder watched, debounced, handed to the service.
//! - [`http`]: the axum server (routes, hardening, errors, OpenAPI); [`metrics`] and
//!   [`decision_log`] beside it.
//! - [`cache`]: the decision cache trait, in-process (moka) and Redis; keys, digests and
//!   value format. Async (tokio), used by the service, never by the engine.
//! - `cli` (in the binary): thin commands over the above.
//!
//! Domain modules (`policy`, `script`, `snapshot`, `engine`) know nothing of HTTP, tokio,
//! Redis or watched files.
#![forbid(unsafe_code)]
// An account error is an ordinary per-account answer, not a rare failure: boxing it would
// add an allocation to every error path for no gain.
#![allow(clippy::result_large_err)]

pub mod cache;
pub mod date;
pub mod decision_log;
pub mod engine;
pub mod events;
pub mod http;
pub mod jsonmap;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod redis_conn;
pub mod schema;
pub mod script;
pub mod service;
pub mod snapshot;
pub mod watch;
pub mod whatif;
