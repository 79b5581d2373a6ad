//! The one hardened rhai engine, and what policy expressions and scripts can see.
//!
//! rhai's defaults are unlimited (operations, call depth, sizes) and its default module
//! resolver reads any path, so everything is set explicitly here and nowhere else:
//! [`Engine::new_raw`] plus only the core, logic, math, string, array and map packages;
//! limits from [`Limits`]; `eval`, `print` and `debug` disabled; imports served only from the
//! policy's own `scripts/` (see [`PolicyResolver`]); a wall-clock deadline per account checked
//! from `on_progress`.
//!
//! Inputs reach expressions through an `on_var` resolver that reads the current account from
//! a thread-local [`Ctx`] instead of a `Scope` (measured: pushing ten variables per account
//! costs more than the decision). Each thread evaluates one account at a time, so the
//! thread-local is never shared; [`set_account`] installs an account before its expressions
//! run.

pub mod native;

use rhai::packages::{
    BasicArrayPackage, BasicMapPackage, BasicMathPackage, CorePackage, LogicPackage,
    MoreStringPackage, Package,
};
use rhai::{
    AST, Dynamic, Engine, EvalAltResult, ImmutableString, Module, OptimizationLevel, Position,
    Scope, Shared,
};

type SharedModule = Shared<Module>;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Sandbox limits, set by the operator (flags / environment), never by a policy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Limits {
    /// Operations per evaluation (one expression, condition or script call).
    pub max_operations: u64,
    /// Nested function calls.
    pub max_call_levels: usize,
    /// Expression nesting at the top level of an expression or script.
    pub max_expr_depth: usize,
    /// Expression nesting inside functions.
    pub max_fn_expr_depth: usize,
    /// Bytes in one string.
    pub max_string_size: usize,
    /// Items in one array.
    pub max_array_size: usize,
    /// Entries in one object map.
    pub max_map_size: usize,
    /// Accounts one evaluation request may carry; the service refuses more before deciding
    /// any (the command line reads files of any size and does not apply it).
    pub max_accounts: usize,
    /// Keys one account's `fields` may hold (declared inputs or not); the service refuses
    /// a request with more (413 `too_many_fields`). Undeclared keys are skipped, not kept.
    pub max_fields: usize,
    /// Wall clock for everything one account evaluates.
    pub time_per_account: Duration,
    /// Alerts one account may raise; one more makes that account's error `output_limit`,
    /// naming the alert (a policy that fans out cannot fill memory one account at a time).
    pub max_alerts_per_account: usize,
    /// Bytes of one rendered alert message; a longer one is cut on a character boundary and
    /// ends with [`CUT_MARKER`].
    pub max_message_bytes: usize,
    /// Bytes one answer may hold: counted while alerts are rendered (the part a policy can
    /// fan out) and again when the answer is serialized. Past it the work stops and the
    /// request is refused (413 `response_too_large`; 422 for a dry run's candidate).
    pub max_response_bytes: usize,
    /// Evaluate what fits [`native`]'s subset without rhai (same results; off only to
    /// compare the two paths).
    pub native: bool,
    /// A wall-clock end for everything evaluated under the policy, past which every
    /// evaluation stops with `time_limit`: a dry run's candidate (untrusted code) gets its
    /// request's budget. `None` (served policies): only the per-account limit.
    #[serde(skip)]
    pub until: Option<Instant>,
}

/// What `on_progress` stops an evaluation with when [`Limits::until`] has passed, or the
/// [`Budget`] installed on the thread is spent.
const BUDGET_SPENT: &str = "budget spent";

/// A wall-clock budget for one piece of work (a request) spanning many evaluations, on any
/// thread that [`with_budget`] installs it on. Unlike [`Limits::until`], which is fixed when a
/// policy compiles, it is chosen per call: a served policy's engine is shared by every request,
/// and each request has its own deadline. Once spent (its time passed, or [`Budget::stop`]),
/// every evaluation under it stops at its next progress check with `time_limit`, so blocking
/// work ends when its caller has given up on it, not when it would have finished.
#[derive(Debug)]
pub struct Budget {
    until: Option<Instant>,
    stopped: std::sync::atomic::AtomicBool,
    /// Stop everything at the first account that trips a sandbox limit (a dry run's untrusted
    /// candidate is refused for that anyway), except the accounts named here (those the
    /// baseline fails too, which do not make the candidate worse).
    trip: Option<std::collections::HashSet<String>>,
    tripped: std::sync::atomic::AtomicBool,
    /// Bytes of output (rendered alerts) produced under this budget so far, and the most
    /// allowed ([`Budget::output_limit`]); the work stops once it is passed.
    output: std::sync::atomic::AtomicUsize,
    max_output: usize,
    /// The rule whose output passed `max_output`, once one did.
    over: Mutex<Option<String>>,
}

impl Budget {
    pub fn new(until: Option<Instant>) -> Arc<Self> {
        Self::build(until, None, usize::MAX)
    }

    fn build(
        until: Option<Instant>,
        trip: Option<std::collections::HashSet<String>>,
        max_output: usize,
    ) -> Arc<Self> {
        Arc::new(Budget {
            until,
            stopped: false.into(),
            trip,
            tripped: false.into(),
            output: 0.into(),
            max_output,
            over: Mutex::new(None),
        })
    }

    /// [`Budget::new`] with at most `max_output` bytes of rendered output.
    pub fn with_output(until: Option<Instant>, max_output: usize) -> Arc<Self> {
        Self::build(until, None, max_output)
    }

    /// A budget that also stops at the first sandbox limit tripped by an account not in `except`.
    pub fn tripping(
        until: Option<Instant>,
        except: std::collections::HashSet<String>,
    ) -> Arc<Self> {
        Self::build(until, Some(except), usize::MAX)
    }

    /// [`Budget::tripping`] with at most `max_output` bytes of rendered output.
    pub fn tripping_with_output(
        until: Option<Instant>,
        except: std::collections::HashSet<String>,
        max_output: usize,
    ) -> Arc<Self> {
        Self::build(until, Some(except), max_output)
    }

    /// Counts `bytes` of output from `rule`; `false` (and the work stops) once the total
    /// passes the budget's output limit.
    pub fn add_output(&self, bytes: usize, rule: &str) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let total = self.output.fetch_add(bytes, Relaxed).saturating_add(bytes);
        if total <= self.max_output {
            return true;
        }
        if let Ok(mut over) = self.over.lock() {
            over.get_or_insert_with(|| rule.to_string());
        }
        self.stop();
        false
    }

    /// The rule whose output passed the limit, if the output limit stopped the work.
    pub fn output_over(&self) -> Option<String> {
        self.over.lock().ok().and_then(|o| o.clone())
    }

    /// The most output bytes allowed.
    pub fn output_limit(&self) -> usize {
        self.max_output
    }

    pub fn stop(&self) {
        self.stopped.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn spent(&self) -> bool {
        self.stopped.load(std::sync::atomic::Ordering::Relaxed)
            || self.until.is_some_and(|u| Instant::now() >= u)
    }

    /// Whether a sandbox limit stopped the work early (see [`Budget::tripping`]).
    pub fn tripped(&self) -> bool {
        self.tripped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Called when account `id` hit a sandbox limit.
    pub fn limit_hit(&self, id: &str) {
        if self.trip.as_ref().is_some_and(|except| !except.contains(id)) {
            self.tripped.store(true, std::sync::atomic::Ordering::Relaxed);
            self.stop();
        }
    }
}

/// Runs `f` with `budget` installed on this thread (the previous one is put back after).
pub fn with_budget<R>(budget: Option<Arc<Budget>>, f: impl FnOnce() -> R) -> R {
    let before = BUDGET.with(|b| b.replace(budget));
    let out = f();
    BUDGET.with(|b| *b.borrow_mut() = before);
    out
}

/// The budget installed on this thread, to hand to the threads the work spreads to.
pub fn budget() -> Option<Arc<Budget>> {
    BUDGET.with(|b| b.borrow().clone())
}

/// Whether the budget installed on this thread, if any, is spent.
pub fn budget_spent() -> bool {
    BUDGET.with(|b| b.borrow().as_ref().is_some_and(|b| b.spent()))
}

/// Tells the installed budget, if any, that account `id` hit a sandbox limit.
pub fn note_limit_hit(id: &str) {
    BUDGET.with(|b| {
        if let Some(b) = b.borrow().as_ref() {
            b.limit_hit(id);
        }
    });
}

/// Counts `bytes` of output from `rule` against the installed budget, if any; `false` once
/// the budget's output limit is passed (see [`Budget::add_output`]).
pub fn note_output(bytes: usize, rule: &str) -> bool {
    BUDGET.with(|b| b.borrow().as_ref().is_none_or(|b| b.add_output(bytes, rule)))
}

/// The error codes of the sandbox's limits.
pub const LIMIT_CODES: &[&str] =
    &["time_limit", "operation_limit", "call_depth", "size_limit", "output_limit"];

/// What ends an alert message cut at [`Limits::max_message_bytes`].
pub const CUT_MARKER: &str = "… [cut]";

/// Cuts `s` to at most `max` bytes, on a character boundary, ending with [`CUT_MARKER`].
pub fn cut_message(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut end = max.saturating_sub(CUT_MARKER.len());
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str(CUT_MARKER);
}

/// Whether an account error's `code` says the sandbox stopped a script.
pub fn is_limit_code(code: &str) -> bool {
    LIMIT_CODES.contains(&code)
}

/// The message of an evaluation stopped because its budget was spent.
pub const BUDGET_SPENT_MESSAGE: &str = "stopped: the time budget of the whole evaluation is spent";

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_operations: 100_000,
            max_call_levels: 32,
            max_expr_depth: 64,
            max_fn_expr_depth: 32,
            max_string_size: 64 * 1024,
            max_array_size: 10_000,
            max_map_size: 1_000,
            max_accounts: 50_000,
            max_fields: 1_000,
            max_alerts_per_account: 32,
            max_message_bytes: 1024,
            max_response_bytes: 32 * 1024 * 1024,
            time_per_account: Duration::from_millis(50),
            native: true,
            until: None,
        }
    }
}

/// What a free variable name in an expression stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    Input(usize),
    /// The account's score (alerts only).
    Score,
    /// The final tier's id (alerts only).
    Tier,
    AccountCount,
    TotalRevenue,
    ManagersOver,
    ManagersUnder,
}

/// Portfolio figures that portfolio alert expressions read.
#[derive(Debug, Clone, Default)]
pub struct Aggregates {
    pub account_count: i64,
    pub total_revenue: f64,
    /// Revenues sorted descending, for `top_revenue_share(n)`.
    pub revenues_desc: Vec<f64>,
    /// Tier id → (count, revenue).
    pub tiers: HashMap<String, (i64, f64)>,
    pub managers_over: i64,
    pub managers_under: i64,
}

impl Aggregates {
    pub fn top_revenue_share(&self, n: i64) -> f64 {
        if self.total_revenue == 0.0 {
            return 0.0;
        }
        let n = usize::try_from(n.max(0)).unwrap_or(usize::MAX);
        let top = self.revenues_desc.iter().take(n).fold(0.0, |a, b| a + b);
        top / self.total_revenue
    }
}

/// The evaluation context of the current thread.
struct Ctx {
    values: Arc<[Dynamic]>,
    as_of: i64,
    score: f64,
    tier: ImmutableString,
    budget: Duration,
    /// Set when rhai first runs for the account: natively evaluated accounts never read the
    /// clock.
    deadline: Option<Instant>,
    agg: Option<Arc<Aggregates>>,
}

thread_local! {
    static CTX: RefCell<Ctx> = RefCell::new(Ctx {
        values: Arc::from(Vec::new()),
        as_of: 0,
        score: 0.0,
        tier: ImmutableString::new(),
        budget: Duration::ZERO,
        deadline: None,
        agg: None,
    });
    /// The [`Budget`] of the work this thread is doing, if it has one.
    static BUDGET: RefCell<Option<Arc<Budget>>> = const { RefCell::new(None) };
    /// Depth of module resolution on this thread, so an import cycle is an error.
    static IMPORT_DEPTH: RefCell<u32> = const { RefCell::new(0) };
}

/// Installs an account's input values, its `as_of` day and its wall-clock budget.
pub fn set_account(values: Arc<[Dynamic]>, as_of: i64, budget: Duration) {
    CTX.with(|c| {
        let mut c = c.borrow_mut();
        c.values = values;
        c.as_of = as_of;
        c.budget = budget;
        c.deadline = None;
        c.agg = None;
    });
}

/// [`set_account`] unless this thread already holds this account (the alert phase right after
/// scoring): its values and running deadline stay, so the alert phase shares the account's
/// wall-clock budget instead of starting a new one.
pub fn keep_or_set_account(values: &Arc<[Dynamic]>, as_of: i64, budget: Duration) {
    let same = CTX.with(|c| {
        let c = c.borrow();
        Arc::ptr_eq(&c.values, values) && c.as_of == as_of && c.agg.is_none()
    });
    if !same {
        set_account(values.clone(), as_of, budget);
    }
}

/// Sets what alert expressions read as `score` and `tier`.
pub fn set_outcome(score: f64, tier: &ImmutableString) {
    CTX.with(|c| {
        let mut c = c.borrow_mut();
        c.score = score;
        c.tier = tier.clone();
    });
}

/// Installs portfolio aggregates for portfolio alert expressions.
pub fn set_portfolio(agg: Arc<Aggregates>, budget: Duration) {
    CTX.with(|c| {
        let mut c = c.borrow_mut();
        c.agg = Some(agg);
        c.values = Arc::from(Vec::new());
        c.budget = budget;
        c.deadline = None;
    });
}

/// The account as script functions see it: `account.revenue_12m` reads an input.
#[derive(Clone)]
pub struct AccountView(pub Arc<[Dynamic]>);

/// A failed evaluation, with a stable code.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptError {
    /// `time_limit`, `operation_limit`, `call_depth`, `size_limit` or `script_error`.
    pub code: &'static str,
    pub message: String,
    /// Line and column inside the expression or script, when rhai knows them.
    pub position: Option<(u32, u32)>,
    /// The script file the position is in, when it is in a script.
    pub source: Option<String>,
}

impl ScriptError {
    pub fn from_rhai(err: &EvalAltResult, limits: &Limits) -> Self {
        let pos = err.position();
        let position = (!pos.is_none())
            .then(|| (pos.line().unwrap_or(0) as u32, pos.position().unwrap_or(0) as u32));
        let (code, message) = match innermost(err) {
            EvalAltResult::ErrorTerminated(why, _)
                if why.clone().try_cast::<ImmutableString>().is_some_and(|w| w == BUDGET_SPENT) =>
            {
                ("time_limit", BUDGET_SPENT_MESSAGE.to_string())
            }
            EvalAltResult::ErrorTerminated(..) => (
                "time_limit",
                format!(
                    "stopped after {} ms: the per-account time limit",
                    limits.time_per_account.as_millis()
                ),
            ),
            EvalAltResult::ErrorTooManyOperations(..) => (
                "operation_limit",
                format!(
                    "stopped after {} operations: the per-evaluation operation limit",
                    limits.max_operations
                ),
            ),
            EvalAltResult::ErrorStackOverflow(..) => (
                "call_depth",
                format!(
                    "calls nested deeper than {}: the call depth limit",
                    limits.max_call_levels
                ),
            ),
            EvalAltResult::ErrorDataTooLarge(what, ..) => {
                ("size_limit", format!("{} exceeds its size limit", what.to_lowercase()))
            }
            other => ("script_error", lower_first(&other.to_string())),
        };
        ScriptError { code, message, position, source: source_of(err) }
    }
}

/// rhai wraps errors raised inside functions; the cause is the interesting part.
fn innermost(err: &EvalAltResult) -> &EvalAltResult {
    match err {
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _)
        | EvalAltResult::ErrorInModule(_, inner, _) => innermost(inner),
        other => other,
    }
}

fn source_of(err: &EvalAltResult) -> Option<String> {
    match err {
        EvalAltResult::ErrorInFunctionCall(_, src, inner, _) => {
            source_of(inner).or_else(|| (!src.is_empty()).then(|| src.clone()))
        }
        _ => None,
    }
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect::<String>().trim_end_matches('.').to_string(),
        None => String::new(),
    }
}

/// Serves `import "name"` from the policy's `scripts/` only: no absolute paths, no `..`,
/// nothing read from disk after load.
pub struct PolicyResolver {
    scripts: Arc<BTreeMap<String, String>>,
    cache: Mutex<HashMap<String, SharedModule>>,
}

impl PolicyResolver {
    /// `scripts` maps a module name (`helpers` for `scripts/helpers.rhai`) to its source.
    pub fn new(scripts: Arc<BTreeMap<String, String>>) -> Self {
        PolicyResolver { scripts, cache: Mutex::new(HashMap::new()) }
    }
}

/// Why an import path is refused, if it is.
pub fn check_import_path(path: &str) -> Result<String, String> {
    let name = path.strip_prefix("scripts/").unwrap_or(path);
    let name = name.strip_suffix(".rhai").unwrap_or(name);
    if path.starts_with('/') || path.starts_with('\\') || path.contains(':') {
        return Err(format!(
            "import of `{path}`: an absolute path is not allowed; imports come from the policy's `scripts/` only"
        ));
    }
    if path.split(['/', '\\']).any(|p| p == "..") {
        return Err(format!(
            "import of `{path}`: `..` is not allowed; imports come from the policy's `scripts/` only"
        ));
    }
    if name.is_empty() || name.contains(['/', '\\']) {
        return Err(format!(
            "import of `{path}`: name a file of `scripts/` by its name, e.g. `import \"helpers\" as h`"
        ));
    }
    Ok(name.to_string())
}

impl rhai::ModuleResolver for PolicyResolver {
    fn resolve(
        &self,
        engine: &Engine,
        _source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> Result<SharedModule, Box<EvalAltResult>> {
        let name = check_import_path(path)
            .map_err(|m| Box::new(EvalAltResult::ErrorModuleNotFound(m, pos)))?;
        if let Ok(cache) = self.cache.lock()
            && let Some(m) = cache.get(&name)
        {
            return Ok(m.clone());
        }
        let Some(src) = self.scripts.get(&name) else {
            let known: Vec<&str> = self.scripts.keys().map(String::as_str).collect();
            return Err(Box::new(EvalAltResult::ErrorModuleNotFound(
                format!(
                    "import of `{path}`: no `scripts/{name}.rhai` (scripts: {})",
                    known.join(", ")
                ),
                pos,
            )));
        };
        let depth = IMPORT_DEPTH.with(|d| {
            let mut d = d.borrow_mut();
            *d += 1;
            *d
        });
        let result = if depth > 8 {
            Err(Box::new(EvalAltResult::ErrorModuleNotFound(
                format!("import of `{path}`: imports nested deeper than 8 (a cycle?)"),
                pos,
            )))
        } else {
            engine
                .compile(src)
                .map_err(|e| {
                    Box::new(EvalAltResult::ErrorInModule(path.to_string(), e.into(), pos))
                })
                .and_then(|mut ast| {
                    ast.set_source(format!("scripts/{name}.rhai"));
                    Module::eval_ast_as_new(Scope::new(), &ast, engine).map(Into::into)
                })
        };
        IMPORT_DEPTH.with(|d| *d.borrow_mut() -= 1);
        let module: SharedModule = result?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(name, module.clone());
        }
        Ok(module)
    }
}

fn packages() -> &'static [SharedModule] {
    static PACKAGES: OnceLock<Vec<SharedModule>> = OnceLock::new();
    PACKAGES.get_or_init(|| {
        vec![
            CorePackage::new().as_shared_module(),
            LogicPackage::new().as_shared_module(),
            BasicMathPackage::new().as_shared_module(),
            MoreStringPackage::new().as_shared_module(),
            BasicArrayPackage::new().as_shared_module(),
            BasicMapPackage::new().as_shared_module(),
        ]
    })
}

fn runtime_err(msg: impl Into<String>) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(Dynamic::from(msg.into()), Position::NONE))
}

fn day_of(d: &str) -> Result<i64, Box<EvalAltResult>> {
    crate::date::parse_days(d)
        .ok_or_else(|| runtime_err(format!("`{d}` is not a date (YYYY-MM-DD)")))
}

fn with_agg<T>(f: impl FnOnce(&Aggregates) -> T) -> Result<T, Box<EvalAltResult>> {
    CTX.with(|c| match &c.borrow().agg {
        Some(a) => Ok(f(a)),
        None => Err(runtime_err("portfolio aggregates are only available in portfolio alerts")),
    })
}

/// Builds a policy's engine. `vars` names every free variable any of its expressions may read
/// (expressions are compiled with strict variables against the subset each kind may see);
/// `inputs` maps input names to their slot for `account.NAME` in scripts.
pub fn build_engine(
    limits: &Limits,
    vars: HashMap<String, Var>,
    inputs: HashMap<String, usize>,
    scripts: Arc<BTreeMap<String, String>>,
) -> Engine {
    let mut e = Engine::new_raw();
    for p in packages() {
        e.register_global_module(p.clone());
    }
    e.set_strict_variables(true);
    e.set_optimization_level(OptimizationLevel::Simple);
    e.set_max_operations(limits.max_operations);
    e.set_max_call_levels(limits.max_call_levels);
    e.set_max_expr_depths(limits.max_expr_depth, limits.max_fn_expr_depth);
    e.set_max_string_size(limits.max_string_size);
    e.set_max_array_size(limits.max_array_size);
    e.set_max_map_size(limits.max_map_size);
    e.set_max_modules(16);
    e.set_max_variables(256);
    e.set_max_functions(256);
    e.set_max_strings_interned(0);
    for sym in ["eval", "print", "debug"] {
        e.disable_symbol(sym);
    }
    // Unreachable with the symbols disabled; kept so nothing ever reaches stdout.
    e.on_print(|_| {});
    e.on_debug(|_, _, _| {});
    e.set_module_resolver(PolicyResolver::new(scripts));

    // The clock is read every 256 operations: cheap, and a runaway loop stops within
    // microseconds of its deadline (measured: +2-3 %).
    let until = limits.until;
    e.on_progress(move |ops| {
        if ops & 0xff != 0 {
            return None;
        }
        if until.is_some_and(|u| Instant::now() >= u) || budget_spent() {
            return Some(Dynamic::from(BUDGET_SPENT));
        }
        CTX.with(|c| match c.borrow().deadline {
            Some(d) if Instant::now() >= d => Some(Dynamic::from("time limit")),
            _ => None,
        })
    });

    // A short list compared by length then bytes beats hashing the name (SipHash) on every
    // variable read: policies declare tens of inputs, not thousands.
    let mut var_list: Vec<(String, Var)> = vars.into_iter().collect();
    var_list.sort_by(|a, b| a.0.cmp(&b.0));
    #[allow(deprecated)] // "volatile", not deprecated: see rhai's note on `on_var`.
    e.on_var(move |name, index, _| {
        // index > 0: a local of the script itself, never an input.
        if index != 0 {
            return Ok(None);
        }
        let Some(var) =
            var_list.iter().find(|(n, _)| n.len() == name.len() && n == name).map(|(_, v)| v)
        else {
            return Ok(None);
        };
        CTX.with(|c| {
            let c = c.borrow();
            let v = match *var {
                Var::Input(i) => c.values.get(i).cloned().unwrap_or(Dynamic::UNIT),
                Var::Score => Dynamic::from_float(c.score),
                Var::Tier => Dynamic::from(c.tier.clone()),
                Var::AccountCount => {
                    Dynamic::from_int(c.agg.as_ref().map_or(0, |a| a.account_count))
                }
                Var::TotalRevenue => {
                    Dynamic::from_float(c.agg.as_ref().map_or(0.0, |a| a.total_revenue))
                }
                Var::ManagersOver => {
                    Dynamic::from_int(c.agg.as_ref().map_or(0, |a| a.managers_over))
                }
                Var::ManagersUnder => {
                    Dynamic::from_int(c.agg.as_ref().map_or(0, |a| a.managers_under))
                }
            };
            Ok(Some(v))
        })
    });

    e.register_type_with_name::<AccountView>("Account");
    // One getter per declared input: without it every `account.x` first misses a getter and
    // rhai builds an error message before falling back to the indexer (~25 % of a script call).
    for (name, &i) in &inputs {
        e.register_get(name.as_str(), move |a: &mut AccountView| {
            a.0.get(i).cloned().unwrap_or(Dynamic::UNIT)
        });
    }
    e.register_indexer_get(
        move |a: &mut AccountView, prop: &str| -> Result<Dynamic, Box<EvalAltResult>> {
            match inputs.get(prop) {
                Some(&i) => Ok(a.0.get(i).cloned().unwrap_or(Dynamic::UNIT)),
                None => Err(runtime_err(format!("`account.{prop}` is not a declared input"))),
            }
        },
    );

    e.register_fn("days_since", |d: &str| -> Result<i64, Box<EvalAltResult>> {
        let day = day_of(d)?;
        Ok(CTX.with(|c| c.borrow().as_of) - day)
    });
    e.register_fn("days_until", |d: &str| -> Result<i64, Box<EvalAltResult>> {
        let day = day_of(d)?;
        Ok(day - CTX.with(|c| c.borrow().as_of))
    });
    e.register_fn("top_revenue_share", |n: i64| with_agg(|a| a.top_revenue_share(n)));
    e.register_fn("tier_count", |id: &str| with_agg(|a| a.tiers.get(id).map_or(0, |t| t.0)));
    e.register_fn("tier_revenue", |id: &str| with_agg(|a| a.tiers.get(id).map_or(0.0, |t| t.1)));
    e.register_fn("tier_share", |id: &str| {
        with_agg(|a| {
            if a.account_count == 0 {
                0.0
            } else {
                a.tiers.get(id).map_or(0.0, |t| t.0 as f64 / a.account_count as f64)
            }
        })
    });
    e
}

/// Starts the account's wall-clock budget when rhai first runs for it.
fn arm_deadline() {
    CTX.with(|c| {
        let mut c = c.borrow_mut();
        if c.deadline.is_none() {
            c.deadline = Some(Instant::now().checked_add(c.budget).unwrap_or_else(Instant::now));
        }
    });
}

/// Evaluates a compiled expression for the account installed on this thread.
pub fn eval(engine: &Engine, ast: &AST) -> Result<Dynamic, Box<EvalAltResult>> {
    arm_deadline();
    engine.eval_ast_with_scope::<Dynamic>(&mut Scope::new(), ast)
}

/// Calls a script function with the account as its one argument.
pub fn call(
    engine: &Engine,
    lib: &AST,
    name: &str,
    account: AccountView,
) -> Result<Dynamic, Box<EvalAltResult>> {
    arm_deadline();
    let opts = rhai::CallFnOptions::new().eval_ast(false).rewind_scope(true);
    engine.call_fn_with_options::<Dynamic>(opts, &mut Scope::new(), lib, name, (account,))
}

/// Evaluates translated code for the account installed on this thread; `None` means run rhai.
pub fn eval_native(code: &native::Code) -> Option<Dynamic> {
    CTX.with(|c| {
        let c = c.borrow();
        let env = native::Env { values: &c.values, as_of: c.as_of, score: c.score, tier: &c.tier };
        code.eval(&env).ok().map(native::V::into_dynamic)
    })
}
