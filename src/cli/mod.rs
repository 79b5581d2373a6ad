//! Command-line front end: one file per subcommand, each thin over the library.

mod backtest;
mod check;
mod diff;
mod eval;
mod schema;
mod serve;
mod sets;
mod test;

use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use tierwise::script::Limits;

/// tierwise: key-account tiering rules — policies in, explained decisions out.
#[derive(Parser)]
#[command(name = "tierwise", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    sandbox: SandboxArgs,
}

/// Sandbox limits for policy expressions and scripts (operator settings, not policy ones).
#[derive(clap::Args, Clone)]
pub struct SandboxArgs {
    /// rhai operations per evaluation.
    #[arg(long, global = true, env = "TIERWISE_MAX_OPERATIONS", default_value_t = 100_000)]
    max_operations: u64,
    /// Wall-clock milliseconds per account.
    #[arg(long, global = true, env = "TIERWISE_TIME_PER_ACCOUNT_MS", default_value_t = 50)]
    time_per_account_ms: u64,
    /// Accounts one HTTP request may carry (evaluate, portfolio, dry run); more are refused
    /// with 413 `too_many_accounts` before any is decided.
    #[arg(long, global = true, env = "TIERWISE_MAX_ACCOUNTS", default_value_t = 50_000)]
    max_accounts: usize,
    /// Keys one account's `fields` may hold in an HTTP request (declared inputs or not; the
    /// undeclared ones are skipped, not kept); more are refused with 413 `too_many_fields`.
    #[arg(long, global = true, env = "TIERWISE_MAX_FIELDS", default_value_t = 1_000)]
    max_fields: usize,
    /// Alerts one account may raise; one more makes that account's error `output_limit`.
    #[arg(long, global = true, env = "TIERWISE_MAX_ALERTS_PER_ACCOUNT", default_value_t = 32)]
    max_alerts_per_account: usize,
    /// Bytes of one rendered alert message; a longer one is cut and ends with `… [cut]`.
    #[arg(long, global = true, env = "TIERWISE_MAX_MESSAGE_BYTES", value_parser = clap::value_parser!(u64).range(16..), default_value_t = 1024)]
    max_message_bytes: u64,
    /// Bytes one HTTP answer may hold; a larger one is refused with 413 `response_too_large`
    /// (a dry run's candidate, whose alerts get a quarter of it, with 422
    /// `candidate_output_limit` naming the alert that fans out).
    #[arg(long, global = true, env = "TIERWISE_MAX_RESPONSE_BYTES", default_value_t = 32 * 1024 * 1024)]
    max_response_bytes: usize,
    /// Run every expression through rhai, never the native fast path (same results, slower;
    /// a switch to rule the fast path out when investigating).
    #[arg(long, global = true, env = "TIERWISE_NO_NATIVE")]
    no_native: bool,
}

impl SandboxArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            max_operations: self.max_operations,
            time_per_account: std::time::Duration::from_millis(self.time_per_account_ms),
            native: !self.no_native,
            max_accounts: self.max_accounts,
            max_fields: self.max_fields,
            max_alerts_per_account: self.max_alerts_per_account,
            max_message_bytes: usize::try_from(self.max_message_bytes).unwrap_or(usize::MAX),
            max_response_bytes: self.max_response_bytes,
            ..Limits::default()
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Validate one policy folder or a folder of policies; lists every problem.
    Check {
        /// A policy folder (with policy.toml) or a folder of them.
        #[arg(default_value = "policies")]
        dir: PathBuf,
        /// List every rule and message template that runs through rhai instead of the native
        /// fast path, and the construct that keeps it there.
        #[arg(long)]
        explain_speed: bool,
    },
    /// Run policies' own test cases (tests/*.toml).
    Test {
        #[arg(default_value = "policies")]
        dir: PathBuf,
        /// Also report which tiers, criteria, holds and alerts no test case reaches.
        #[arg(long)]
        coverage: bool,
    },
    /// Evaluate accounts from a file (JSON, JSON lines or CSV; `-` for standard input).
    Eval(eval::EvalArgs),
    /// What-if: decide a book under a baseline and a candidate policy, show what differs.
    Diff(diff::DiffArgs),
    /// Backtest: replay a policy over a book's history (snapshots at several dates) and
    /// report tier moves, flip-flops, alerts and manager load, optionally beside a candidate.
    Backtest(backtest::BacktestArgs),
    /// Write the JSON schemas (policy, test cases, snapshot, decision, portfolio, diff).
    Schema {
        /// Folder to write to.
        #[arg(long, default_value = "schemas")]
        out: PathBuf,
        /// The generated policy reference (markdown).
        #[arg(long, default_value = "docs/policy-reference.md")]
        reference: PathBuf,
        /// Only check that the folder is up to date (exit 1 if not).
        #[arg(long)]
        check: bool,
    },
    /// Run the HTTP service: evaluate over HTTP, reload policies live as they change.
    Serve(Box<serve::ServeArgs>),
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    let limits = cli.sandbox.limits();
    match cli.command {
        Command::Check { dir, explain_speed } => check::run(&dir, &limits, explain_speed),
        Command::Test { dir, coverage } => test::run(&dir, &limits, coverage),
        Command::Eval(args) => eval::run(&args, &limits),
        Command::Diff(args) => diff::run(&args, &limits),
        Command::Backtest(args) => backtest::run(&args, &limits),
        Command::Schema { out, reference, check } => schema::run(&out, &reference, check),
        Command::Serve(args) => serve::run(&args, &limits),
    }
}

/// Colour and graphics only for people at a terminal.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// Policy folders under `dir`, or the exit code for an unusable `dir`.
pub fn policy_dirs(dir: &std::path::Path) -> Result<Vec<PathBuf>, ExitCode> {
    match tierwise::policy::policy_dirs(dir) {
        Ok(d) if d.is_empty() => {
            eprintln!(
                "error: no policy in `{}` (a policy is a folder with a policy.toml)",
                dir.display()
            );
            Err(ExitCode::from(2))
        }
        Ok(d) => Ok(d),
        Err(e) => {
            eprintln!("error: cannot read `{}`: {e}", dir.display());
            Err(ExitCode::from(2))
        }
    }
}

/// Loads a policy, printing its diagnostics; `None` when it did not load.
pub fn load(dir: &std::path::Path, limits: &Limits) -> Option<tierwise::policy::Policy> {
    match tierwise::policy::load_dir(dir, limits) {
        Ok(p) => Some(p),
        Err(tierwise::policy::LoadError::Read(e)) => {
            eprintln!("error: {e}");
            None
        }
        Err(tierwise::policy::LoadError::Invalid(report)) => {
            eprint!("{}", render(&report));
            let n = report.errors().count();
            eprintln!(
                "error: policy `{}` has {n} problem{}",
                report.policy,
                if n == 1 { "" } else { "s" }
            );
            None
        }
    }
}

/// Graphical (miette) at a terminal, one line per problem otherwise (logs, CI, tests).
pub fn render(report: &tierwise::policy::Report) -> String {
    if stderr_is_terminal() { report.render(true) } else { format!("{report}\n") }
}
