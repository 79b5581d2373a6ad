//! Policies: a folder of TOML and rhai in, a validated and compiled [`Policy`] out.
//!
//! Two forms, as in gorules/zen and cedar: [`raw`] is what the files say (serde), the
//! [`Policy`] here is what evaluation accepts (ids resolved to indexes, every expression and
//! script compiled once, every rule checked). [`load_dir`] reads a folder; [`load_files`] takes
//! the same files from memory (a candidate sent over HTTP), so the checks are one code path.

pub mod compile;
pub mod diag;
pub mod limits;
mod lint;
pub mod overrides;
pub mod raw;
mod scalar;

pub use diag::{Diagnostic, Level, Place, Report};
pub use raw::{InputType, Overflow, Priority, Scalar, Severity};
pub use scalar::check_scalar;

use crate::script::Limits;
use rhai::{AST, Engine, ImmutableString};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

/// A compiled expression (`expr`, `when`, a hold, an alert condition, a `{...}` in a message).
pub struct Expr {
    pub source: String,
    pub place: Place,
    pub(crate) ast: AST,
    /// The same expression for [`crate::script::native`], or why it runs through rhai.
    pub(crate) native: Result<crate::script::native::Code, String>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

/// A message template: literal text and `{expr}` parts.
#[derive(Debug)]
pub struct Template {
    pub source: String,
    pub parts: Vec<Part>,
}

#[derive(Debug)]
pub enum Part {
    Text(String),
    Expr(Expr),
}

#[derive(Debug, Clone)]
pub struct Input {
    pub name: String,
    pub ty: InputType,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub one_of: Option<Vec<Scalar>>,
    pub optional: bool,
    pub default: Option<Scalar>,
    pub description: String,
}

#[derive(Debug)]
pub enum Scoring {
    /// Index of the input and the ascending cut points.
    Steps {
        input: usize,
        at: Vec<f64>,
    },
    Expr(Expr),
    /// A function of `scripts/*.rhai` taking the account; `file` defines it.
    Script {
        function: String,
        file: String,
        place: Place,
        /// The call for [`crate::script::native`], or why it runs through rhai.
        native: Result<crate::script::native::Code, String>,
    },
}

#[derive(Debug)]
pub struct Criterion {
    pub id: String,
    /// The id as decisions carry it, built once.
    pub(crate) key: std::sync::Arc<str>,
    pub weight: f64,
    pub scoring: Scoring,
}

#[derive(Debug)]
pub struct Tier {
    pub id: String,
    /// The id as rhai sees it (`tier` in alerts), built once.
    pub(crate) id_str: ImmutableString,
    /// The id and condition source as decisions carry them, built once.
    pub(crate) key: std::sync::Arc<str>,
    pub(crate) when_src: Option<std::sync::Arc<str>>,
    pub label: String,
    pub min_score: f64,
    pub when: Option<Expr>,
    pub max_share: Option<f64>,
    pub max_count: Option<u64>,
    /// Who keeps a seat when the tier is full.
    pub cap_priority: Priority,
}

#[derive(Debug)]
pub struct Hold {
    pub id: String,
    pub when: Expr,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Movement {
    pub promote_margin: f64,
    pub demote_margin: f64,
    pub min_tenure_days: i64,
    pub max_steps: Option<u32>,
    pub holds: Vec<Hold>,
}

#[derive(Debug)]
pub struct Capacity {
    /// `in_book[t]`: tier `t` counts toward a manager's book.
    pub in_book: Vec<bool>,
    pub min: Option<u64>,
    pub max: Option<u64>,
    pub total_max: Option<u64>,
    pub on_overflow: Overflow,
    /// Who keeps a place under `total_max` and `per_manager.max`.
    pub priority: Priority,
    /// The first tier below every capacity tier that is not one itself.
    pub outside: usize,
}

#[derive(Debug)]
pub struct Alert {
    pub id: String,
    pub(crate) key: std::sync::Arc<str>,
    pub severity: Severity,
    /// `applies[t]`: the alert is checked for accounts whose final tier is `t`.
    pub applies: Vec<bool>,
    pub when: Expr,
    pub message: Template,
    /// `cooldown_days` (default 0): how long after a told clearing a return stays silent.
    pub cooldown_days: i64,
    /// `renotify_days`: how often a standing alert is told again (none: never).
    pub renotify_days: Option<i64>,
}

#[derive(Debug)]
pub struct PortfolioAlert {
    pub id: String,
    pub severity: Severity,
    pub when: Expr,
    pub message: Template,
}

/// One `[[case]]` of `tests/*.toml`.
#[derive(Debug, Clone)]
pub struct TestCase {
    pub name: String,
    pub place: Place,
    /// One account (`account = {...}`) or a portfolio (`accounts = [...]`).
    pub accounts: Vec<crate::snapshot::Snapshot>,
    pub portfolio: bool,
    pub expect: raw::RawExpect,
}

/// The policy a decision was made under. The hash, not the version, identifies it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct PolicyRef {
    pub name: String,
    pub version: String,
    /// SHA-256 of the policy folder's files, hex.
    pub hash: String,
}

/// A loaded, validated, compiled policy. Immutable; share it behind an `Arc`.
pub struct Policy {
    /// The folder's name.
    pub name: String,
    pub description: String,
    pub version: String,
    /// SHA-256 of the folder's files (see [`content_hash`]), lowercase hex.
    pub hash: String,
    /// Relative paths of the files the hash covers.
    pub files: Vec<String>,
    pub inputs: Vec<Input>,
    pub scale: (f64, f64),
    pub criteria: Vec<Criterion>,
    pub tiers: Vec<Tier>,
    pub movement: Movement,
    pub capacity: Option<Capacity>,
    pub alerts: Vec<Alert>,
    /// Index of the `[portfolio] revenue` input.
    pub revenue: Option<usize>,
    pub portfolio_alerts: Vec<PortfolioAlert>,
    pub cases: Vec<TestCase>,
    /// Lint findings that did not stop the load.
    pub warnings: Vec<Diagnostic>,
    /// Lint `info`s: criteria that run through rhai instead of the native fast path (same
    /// results, slower), with the construct that keeps them there.
    pub notes: Vec<Diagnostic>,
    pub limits: Limits,
    pub(crate) engine: Engine,
    /// Every function of `scripts/*.rhai`, for `script` criteria.
    pub(crate) lib: AST,
    /// What every decision names as its policy, built once (a `/v1/evaluate` call per
    /// account would otherwise copy the name, version and hash each time).
    pub(crate) pref: std::sync::OnceLock<std::sync::Arc<PolicyRef>>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name)
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

impl Policy {
    /// The first 12 hex characters of the hash, as shown in text.
    pub fn short_hash(&self) -> &str {
        self.hash.get(..12).unwrap_or(&self.hash)
    }

    /// Every account-level expression and script criterion with whether it runs on the
    /// native fast path (`false`: through rhai). For tests: a policy that falls back to rhai
    /// is slower, never different.
    pub fn native_coverage(&self) -> Vec<(String, String, bool)> {
        self.speed().into_iter().map(|s| (s.rule, s.source, s.rhai.is_none())).collect()
    }

    /// Every account-level rule and message template with how it runs: natively, or through
    /// rhai and the construct that kept it there (`tierwise check --explain-speed`). Portfolio
    /// alerts are left out: they run once per book, not once per account.
    pub fn speed(&self) -> Vec<Speed> {
        let mut out = Vec::new();
        let entry = |e: &Expr, kind: &'static str| Speed {
            rule: e.place.rule.clone().unwrap_or_default(),
            kind,
            source: e.source.clone(),
            place: e.place.clone(),
            rhai: e.native.as_ref().err().cloned(),
        };
        for c in &self.criteria {
            match &c.scoring {
                Scoring::Expr(e) => out.push(entry(e, "criterion")),
                Scoring::Script { function, place, native, .. } => out.push(Speed {
                    rule: place.rule.clone().unwrap_or_default(),
                    kind: "criterion",
                    source: format!("{function}(account)"),
                    place: place.clone(),
                    rhai: native.as_ref().err().cloned(),
                }),
                Scoring::Steps { .. } => {}
            }
        }
        let mut push = |e: &Expr, kind| out.push(entry(e, kind));
        for t in &self.tiers {
            if let Some(w) = &t.when {
                push(w, "condition");
            }
        }
        for h in &self.movement.holds {
            push(&h.when, "hold");
        }
        for a in &self.alerts {
            push(&a.when, "condition");
            for p in &a.message.parts {
                if let Part::Expr(e) = p {
                    push(e, "template");
                }
            }
        }
        out
    }

    /// How many of [`Policy::speed`]'s entries run through rhai.
    pub fn rhai_count(&self) -> usize {
        self.speed().iter().filter(|s| s.rhai.is_some()).count()
    }

    pub fn tier_index(&self, id: &str) -> Option<usize> {
        self.tiers.iter().position(|t| t.id == id)
    }

    pub fn input_index(&self, name: &str) -> Option<usize> {
        self.inputs.iter().position(|i| i.name == name)
    }
}

/// How one rule or template runs (see [`Policy::speed`]).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Speed {
    pub rule: String,
    /// `criterion`, `condition`, `hold` or `template`.
    pub kind: &'static str,
    pub source: String,
    pub place: Place,
    /// Why it runs through rhai (the construct the fast path does not cover); `None`: native.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rhai: Option<String>,
}

/// The files of one policy folder, by relative path (`/`-separated).
pub type Files = BTreeMap<String, Vec<u8>>;

/// Hidden files and editor leftovers are not part of a policy.
pub fn is_ignored(name: &str) -> bool {
    name.starts_with('.') || name.ends_with('~') || name.ends_with(".swp") || name.ends_with(".swx")
}

/// SHA-256 over each file's relative path and bytes, in path order: for each file, the
/// path, a NUL byte, the length in decimal, a NUL byte, then the bytes. The lengths make the
/// encoding unambiguous (no two folders hash alike by moving bytes between files).
pub fn content_hash(files: &Files) -> String {
    let mut h = Sha256::new();
    for (path, bytes) in files {
        h.update(path.as_bytes());
        h.update([0]);
        h.update(bytes.len().to_string().as_bytes());
        h.update([0]);
        h.update(bytes);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// An error reading a policy folder from disk (before any content is looked at).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read `{path}`: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("`{0}` has no policy.toml")]
    NoPolicy(String),
    #[error("`{path}` is larger than {limit} bytes")]
    TooLarge { path: String, limit: u64 },
    #[error("cannot follow the link `{path}`: {message}")]
    Link { path: String, message: String },
}

/// Largest file a policy folder may hold; policies are text written by people.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Reads every regular file of a policy folder (recursively, ignored names skipped).
///
/// Symlinks are followed, the way deployments deliver policies: a Kubernetes ConfigMap's
/// entries are links into its `..data` folder (itself a link, skipped as a hidden name, to
/// a timestamped folder), and a sync sidecar links a checkout into place. A link reads as
/// its target, under the link's own name. A link that leads nowhere (dangling) or into a
/// loop (a folder inside itself, or links pointing at each other) is an error: a reload
/// then keeps the last good version serving and says which link.
pub fn read_dir(dir: &Path) -> Result<Files, ReadError> {
    let mut files = Files::new();
    /// The folders being walked, by (device, inode): a folder met again below itself is a loop.
    type Seen = Vec<(u64, u64)>;
    fn id(meta: &std::fs::Metadata) -> (u64, u64) {
        use std::os::unix::fs::MetadataExt;
        (meta.dev(), meta.ino())
    }
    fn walk(
        root: &Path,
        dir: &Path,
        files: &mut Files,
        depth: u32,
        seen: &mut Seen,
    ) -> Result<(), ReadError> {
        let io = |e| ReadError::Io { path: dir.display().to_string(), source: e };
        if depth > 8 {
            return Ok(());
        }
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_ignored(&name) {
                continue;
            }
            let path = entry.path();
            let mut ft = entry.file_type().map_err(io)?;
            let mut meta = None;
            if ft.is_symlink() {
                // The target's own type; ELOOP (links pointing at each other) and ENOENT
                // (dangling) are errors, named after the link.
                let m = std::fs::metadata(&path).map_err(|e| ReadError::Link {
                    path: path.display().to_string(),
                    message: if e.kind() == std::io::ErrorKind::NotFound {
                        "the link's target does not exist".to_string()
                    } else {
                        e.to_string()
                    },
                })?;
                ft = m.file_type();
                meta = Some(m);
            }
            if ft.is_dir() {
                let m = match meta {
                    Some(m) => m,
                    None => std::fs::metadata(&path).map_err(|e| ReadError::Io {
                        path: path.display().to_string(),
                        source: e,
                    })?,
                };
                if seen.contains(&id(&m)) {
                    return Err(ReadError::Link {
                        path: path.display().to_string(),
                        message: "the link leads back into a folder it is in (a loop)".to_string(),
                    });
                }
                seen.push(id(&m));
                walk(root, &path, files, depth + 1, seen)?;
                seen.pop();
            } else if ft.is_file() {
                let meta = match meta {
                    Some(m) => m,
                    None => entry.metadata().map_err(io)?,
                };
                if meta.len() > MAX_FILE_BYTES {
                    return Err(ReadError::TooLarge {
                        path: path.display().to_string(),
                        limit: MAX_FILE_BYTES,
                    });
                }
                let bytes = std::fs::read(&path)
                    .map_err(|e| ReadError::Io { path: path.display().to_string(), source: e })?;
                let rel = path.strip_prefix(root).unwrap_or(&path);
                let rel: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                files.insert(rel.join("/"), bytes);
            }
        }
        Ok(())
    }
    let top = std::fs::metadata(dir)
        .map_err(|e| ReadError::Io { path: dir.display().to_string(), source: e })?;
    walk(dir, dir, &mut files, 0, &mut vec![id(&top)])?;
    if !files.contains_key("policy.toml") {
        return Err(ReadError::NoPolicy(dir.display().to_string()));
    }
    Ok(files)
}

/// The name a policy folder serves under: its own name as given, not its target's (a
/// git-sync link `enterprise -> .worktrees/3f9c..` serves `enterprise`); resolved only for
/// paths that end in `.` or `..`.
pub fn folder_name(dir: &Path) -> Option<String> {
    match dir.file_name() {
        Some(n) => Some(n.to_string_lossy().into_owned()),
        None => dir.canonicalize().ok()?.file_name().map(|n| n.to_string_lossy().into_owned()),
    }
}

/// Why a policy did not load.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("{0}")]
    Invalid(Box<Report>),
}

/// Loads and compiles the policy in `dir`; its name is the folder's name.
pub fn load_dir(dir: &Path, limits: &Limits) -> Result<Policy, LoadError> {
    let name = folder_name(dir).unwrap_or_else(|| dir.display().to_string());
    let files = read_dir(dir)?;
    load_files(&name, &files, limits).map_err(|r| LoadError::Invalid(Box::new(r)))
}

/// Compiles a policy from its files in memory.
pub fn load_files(name: &str, files: &Files, limits: &Limits) -> Result<Policy, Report> {
    compile::compile(name, files, limits)
}

/// Is `dir` one policy (has policy.toml) or a folder of policies?
pub fn policy_dirs(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    if dir.join("policy.toml").is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let mut dirs: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("policy.toml").is_file())
        .filter(|p| p.file_name().is_some_and(|n| !is_ignored(&n.to_string_lossy())))
        .collect();
    dirs.sort();
    Ok(dirs)
}
