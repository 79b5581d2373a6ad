//! The running service's state: which policies are active, and how they are replaced.
//!
//! The active set is one immutable [`Registry`] behind an [`ArcSwap`]: a request loads it
//! once and takes one `Arc<Loaded>`, so it sees the old policy or the new one, never a mix,
//! and a reload never waits for requests nor requests for a reload.
//!
//! A reload ([`Service::reload`]) reads every policy folder, hashes its files and compares the
//! hash with the active one: an unchanged policy keeps its compiled form (no recompile, no
//! new `loaded_at`). A changed one is compiled, checked and its own test cases run; only if
//! all pass does it go live. Otherwise the last good one keeps serving and the failure is
//! kept beside it (`last_error`) for `/v1/policies`, the log and the metrics.
//!
//! Evaluation goes through the [`Pipeline`] (`service/pipeline.rs`): one function per level,
//! the cache plan, the decision log and the place where state and events are derived; the
//! what-if candidate is built once, for the command line and the server alike
//! (`service/candidate.rs`). Each policy version carries what the decision cache needs (its
//! [`PolicyId`] for keys and its own [`CostGate`]). Nothing here knows HTTP: the watcher, the
//! server and the command line call it.

pub mod candidate;
pub mod encode;
pub mod events;
pub mod explain;
pub mod pipeline;

pub use pipeline::{Answer, CacheCounters, Input, Level, Pipeline, PipelineError, Request};

use crate::cache::{CostGate, PolicyId};
use crate::engine::{self, PolicyRef, testrun};
use crate::policy::{self, Diagnostic, Place, Policy};
use crate::script::Limits;
use arc_swap::ArcSwap;
use schemars::JsonSchema;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The policy chosen when a request names none and `--default-policy` is not set.
pub const PREFERRED_DEFAULT: &str = "enterprise";

/// A policy that passed every check, ready to evaluate.
pub struct Loaded {
    pub policy: Policy,
    /// Shared by every decision made under this policy (serialized, never rebuilt).
    pub pref: Arc<PolicyRef>,
    pub loaded_at: SystemTime,
    /// The files this version was compiled from (the bytes its hash covers), so a dry run
    /// applies its overrides to exactly what is live, without reading the folder again.
    pub files: Arc<policy::Files>,
    /// This version in cache keys (name and content hash): a new version misses every entry.
    pub cache_id: PolicyId,
    /// Whether reading the cache pays for this version (its own evaluation cost).
    pub gate: CostGate,
}

impl Loaded {
    /// A compiled policy ready to serve, with the files it was compiled from.
    pub fn new(policy: Policy, files: policy::Files) -> Self {
        let pref = engine::policy_ref(&policy);
        let cache_id = PolicyId::new(policy.name.as_str(), policy.hash.as_str());
        Loaded {
            policy,
            pref,
            loaded_at: SystemTime::now(),
            files: Arc::new(files),
            cache_id,
            gate: CostGate::new(),
        }
    }
}

/// Why a policy (or a new version of it) is not serving.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ReloadError {
    /// `read_error` (the folder could not be read), `invalid_policy` (load or compile
    /// problems, see `diagnostics`) or `tests_failed` (see `failed_cases`).
    pub code: &'static str,
    pub message: String,
    /// When the failure was seen (RFC 3339, UTC).
    pub at: String,
    /// Hash of the rejected files, when they could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub diagnostics: Vec<Diagnostic>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed_cases: Vec<FailedCase>,
}

/// A policy test case that did not pass.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FailedCase {
    pub name: String,
    pub place: Place,
    pub failures: Vec<String>,
}

/// One policy folder as the service knows it.
#[derive(Clone)]
pub struct Entry {
    /// The version serving requests; `None` when no version of it ever passed.
    pub active: Option<Arc<Loaded>>,
    /// The last failed load of this folder, cleared when a good version goes live or the
    /// files return to the active version.
    pub last_error: Option<ReloadError>,
}

/// Every policy folder, by name. Immutable: a reload builds a new one and swaps it in.
#[derive(Clone, Default)]
pub struct Registry {
    pub entries: BTreeMap<String, Entry>,
    /// The policy used when a request names none.
    pub default: Option<String>,
}

impl Registry {
    pub fn active(&self, name: &str) -> Option<&Arc<Loaded>> {
        self.entries.get(name).and_then(|e| e.active.as_ref())
    }
}

/// What one reload did to one policy.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ReloadOutcome {
    pub policy: String,
    /// `applied` (a new version went live), `unchanged` (same hash, compiled form kept),
    /// `rejected` (the active version, if any, keeps serving), `removed` (its folder is gone).
    pub result: &'static str,
    /// The hash now serving, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ReloadError>,
}

/// Why a request's policy cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// No folder of that name; `known` lists the served names.
    Unknown { name: String, known: Vec<String> },
    /// The folder exists but no version of it ever passed its checks.
    NotLoaded { name: String },
    /// The request named none and there is no default.
    NoDefault,
}

/// The service: a folder of policies, the active set and the sandbox limits.
pub struct Service {
    root: PathBuf,
    limits: Limits,
    configured_default: Option<String>,
    active: ArcSwap<Registry>,
    /// One reload at a time (the watcher and the admin endpoint may ask together).
    reloading: Mutex<()>,
    /// Counts of reload results, for metrics: (applied, rejected, unchanged, removed).
    pub stats: ReloadStats,
}

#[derive(Default)]
pub struct ReloadStats {
    pub applied: std::sync::atomic::AtomicU64,
    pub rejected: std::sync::atomic::AtomicU64,
    pub removed: std::sync::atomic::AtomicU64,
    pub runs: std::sync::atomic::AtomicU64,
}

impl Service {
    /// A service over `root` (a folder of policy folders, or one policy folder). Nothing is
    /// loaded until [`Service::reload`].
    pub fn new(root: impl Into<PathBuf>, limits: Limits, default: Option<String>) -> Self {
        Service {
            root: root.into(),
            limits,
            configured_default: default,
            active: ArcSwap::from_pointee(Registry::default()),
            reloading: Mutex::new(()),
            stats: ReloadStats::default(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The sandbox limits every policy is compiled with (a dry run's candidate too).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The current registry; cheap, lock-free.
    pub fn registry(&self) -> Arc<Registry> {
        self.active.load_full()
    }

    /// The policy a request asked for, or the default.
    pub fn policy(&self, name: Option<&str>) -> Result<Arc<Loaded>, Lookup> {
        let reg = self.active.load();
        let name = match name {
            Some(n) => n,
            None => reg.default.as_deref().ok_or(Lookup::NoDefault)?,
        };
        match reg.entries.get(name) {
            Some(Entry { active: Some(l), .. }) => Ok(l.clone()),
            Some(_) => Err(Lookup::NotLoaded { name: name.to_string() }),
            None => Err(Lookup::Unknown {
                name: name.to_string(),
                known: reg.entries.keys().cloned().collect(),
            }),
        }
    }

    /// Ready when the default policy is serving.
    pub fn ready(&self) -> Result<String, String> {
        let reg = self.active.load();
        match &reg.default {
            Some(d) if reg.active(d).is_some() => Ok(d.clone()),
            Some(d) => Err(format!("the default policy `{d}` is not loaded")),
            // Not the folder's path: this text is served (`/readyz`), and the server's
            // paths are nobody's business but the operator's (the start-up log has it).
            None => Err("no policy loaded from the policies folder".to_string()),
        }
    }

    /// Reads the policies folder again and swaps in every policy that changed and passes
    /// its checks. Blocking (reads files, compiles, runs test cases): call it off async threads.
    pub fn reload(&self) -> Vec<ReloadOutcome> {
        use std::sync::atomic::Ordering::Relaxed;
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        self.stats.runs.fetch_add(1, Relaxed);
        let current = self.active.load_full();
        let dirs = match policy::policy_dirs(&self.root) {
            Ok(d) => d,
            Err(e) => {
                // The folder itself is unreadable (mid-rename?): keep everything serving.
                let err = ReloadError {
                    code: "read_error",
                    message: format!("cannot read the policies folder: {e}"),
                    at: timestamp(SystemTime::now()),
                    hash: None,
                    diagnostics: vec![],
                    failed_cases: vec![],
                };
                self.stats.rejected.fetch_add(1, Relaxed);
                return vec![ReloadOutcome {
                    policy: String::new(),
                    result: "rejected",
                    hash: None,
                    error: Some(err),
                }];
            }
        };
        let mut next = BTreeMap::new();
        let mut outcomes = Vec::new();
        for dir in dirs {
            let Some(name) = folder_name(&dir) else { continue };
            let prev = current
                .entries
                .get(&name)
                .cloned()
                .unwrap_or(Entry { active: None, last_error: None });
            let (entry, outcome) = self.load_one(&name, &dir, prev);
            self.count(&outcome);
            if outcome.result != "unchanged" {
                outcomes.push(outcome);
            }
            next.insert(name, entry);
        }
        let gone: Vec<(&String, &Entry)> =
            current.entries.iter().filter(|(n, _)| !next.contains_key(*n)).collect();
        for (name, prev) in gone {
            // `policy_dirs` only lists folders holding a policy.toml, so a folder caught
            // emptied, swapped for a file or left as a dangling symlink (a checkout, a sync
            // tool mid-way) would read as removed: its policy would stop serving and the
            // default could switch to another policy. Only a name with nothing left at its
            // path is removed; anything else is a failed read and the last good version stays.
            let path = self.root.join(name);
            if path.symlink_metadata().is_ok() {
                let (entry, outcome) = self.load_one(name, &path, prev.clone());
                self.count(&outcome);
                if outcome.result != "unchanged" {
                    outcomes.push(outcome);
                }
                next.insert(name.clone(), entry);
                continue;
            }
            self.stats.removed.fetch_add(1, Relaxed);
            outcomes.push(ReloadOutcome {
                policy: name.clone(),
                result: "removed",
                hash: None,
                error: None,
            });
        }
        let default = match &self.configured_default {
            Some(d) => Some(d.clone()),
            None if next.contains_key(PREFERRED_DEFAULT) => Some(PREFERRED_DEFAULT.to_string()),
            None => next.iter().find(|(_, e)| e.active.is_some()).map(|(n, _)| n.clone()),
        };
        self.active.store(Arc::new(Registry { entries: next, default }));
        outcomes
    }

    fn count(&self, outcome: &ReloadOutcome) {
        use std::sync::atomic::Ordering::Relaxed;
        match outcome.result {
            "applied" => self.stats.applied.fetch_add(1, Relaxed),
            "rejected" => self.stats.rejected.fetch_add(1, Relaxed),
            _ => 0,
        };
    }

    fn load_one(&self, name: &str, dir: &Path, prev: Entry) -> (Entry, ReloadOutcome) {
        let served = |e: &Entry| e.active.as_ref().map(|l| l.policy.hash.clone());
        let reject = |prev: Entry, err: ReloadError| {
            let hash = served(&prev);
            let entry = Entry { active: prev.active, last_error: Some(err.clone()) };
            (
                entry,
                ReloadOutcome {
                    policy: name.to_string(),
                    result: "rejected",
                    hash,
                    error: Some(err),
                },
            )
        };
        let files = match policy::read_dir(dir) {
            Ok(f) => f,
            Err(e) => return reject(prev, self.error("read_error", self.relative(&e), None)),
        };
        let hash = policy::content_hash(&files);
        if served(&prev).as_deref() == Some(hash.as_str()) {
            // Back to (or still) the active version: nothing to compile, nothing failing.
            let entry = Entry { active: prev.active, last_error: None };
            return (
                entry,
                ReloadOutcome {
                    policy: name.to_string(),
                    result: "unchanged",
                    hash: Some(hash),
                    error: None,
                },
            );
        }
        if prev.last_error.as_ref().and_then(|e| e.hash.as_deref()) == Some(hash.as_str()) {
            // Already rejected these very files: do not run the checks again.
            let out = ReloadOutcome {
                policy: name.to_string(),
                result: "unchanged",
                hash: served(&prev),
                error: prev.last_error.clone(),
            };
            return (prev, out);
        }
        let policy = match policy::load_files(name, &files, &self.limits) {
            Ok(p) => p,
            Err(report) => {
                let n = report.errors().count();
                let msg = format!(
                    "policy `{name}` has {n} problem{}: {}",
                    if n == 1 { "" } else { "s" },
                    first_line(&report.to_string())
                );
                let mut err = self.error("invalid_policy", msg, Some(hash));
                err.diagnostics = report.diagnostics;
                return reject(prev, err);
            }
        };
        let failed: Vec<FailedCase> = testrun::run_cases(&policy)
            .into_iter()
            .filter(|r| !r.passed())
            .map(|r| FailedCase { name: r.name, place: r.place, failures: r.failures })
            .collect();
        if !failed.is_empty() {
            let msg = format!(
                "{} of {} test cases of policy `{name}` failed; first: {}",
                failed.len(),
                policy.cases.len(),
                failed[0].name
            );
            let mut err = self.error("tests_failed", msg, Some(hash));
            err.failed_cases = failed;
            return reject(prev, err);
        }
        let loaded = Arc::new(Loaded::new(policy, files));
        let out = ReloadOutcome {
            policy: name.to_string(),
            result: "applied",
            hash: Some(hash),
            error: None,
        };
        (Entry { active: Some(loaded), last_error: None }, out)
    }

    /// A read error with its path relative to the policies folder: reload errors are served
    /// (`/v1/policies`, the reload answer), the server's absolute paths are not.
    fn relative(&self, e: &policy::ReadError) -> String {
        let rel = |path: &str| {
            let p = Path::new(path);
            match p.strip_prefix(&self.root) {
                Ok(r) if r.as_os_str().is_empty() => ".".to_string(),
                Ok(r) => r.display().to_string(),
                Err(_) => p
                    .file_name()
                    .map_or_else(|| "?".to_string(), |n| n.to_string_lossy().into_owned()),
            }
        };
        match e {
            policy::ReadError::Io { path, source } => {
                format!("cannot read `{}`: {source}", rel(path))
            }
            policy::ReadError::NoPolicy(path) => format!("`{}` has no policy.toml", rel(path)),
            policy::ReadError::TooLarge { path, limit } => {
                format!("`{}` is larger than {limit} bytes", rel(path))
            }
            policy::ReadError::Link { path, message } => {
                format!("cannot follow the link `{}`: {message}", rel(path))
            }
        }
    }

    fn error(&self, code: &'static str, message: String, hash: Option<String>) -> ReloadError {
        ReloadError {
            code,
            message,
            at: timestamp(SystemTime::now()),
            hash,
            diagnostics: vec![],
            failed_cases: vec![],
        }
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

fn folder_name(dir: &Path) -> Option<String> {
    policy::folder_name(dir)
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-11-26T03:30:00.123Z`.
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, day) = crate::date::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_795_663_800_123);
        assert_eq!(timestamp(t), "2026-11-26T03:30:00.123Z");
        assert_eq!(timestamp(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(timestamp(leap), "2000-02-29T00:00:00.000Z");
    }
}
