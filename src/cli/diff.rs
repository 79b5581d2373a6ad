//! `tierwise diff`: what a policy change would do to a book, before it goes live.
//!
//! The candidate is a second policy folder (`--candidate`), the baseline with `--set`
//! overrides, or a folder with overrides on top. Both policies decide the same accounts at
//! portfolio level; the library ([`tierwise::whatif`]) compares, this file only reads and
//! renders.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tierwise::policy::{self, Files, Policy, overrides};
use tierwise::script::Limits;
use tierwise::service::Pipeline;
use tierwise::service::candidate::{self, Candidate, CandidateError};
use tierwise::snapshot::{self, Format, Record};
use tierwise::whatif::render;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DiffFormat {
    /// A summary for a terminal.
    Table,
    /// Ready to paste into a pull-request comment.
    Markdown,
    /// Everything (schemas/diff.schema.json).
    Json,
}

#[derive(clap::Args)]
#[command(
    after_help = "Exit codes: 0 the diff was computed; 1 with --fail-on-moves when an account changes tier (or is \
decided under one policy only), or when the candidate policy does not load; 2 usage or unreadable input.\n\n\
Examples:\n  tierwise diff --baseline policies/enterprise --set tiers.key.min_score=7.0 --accounts book.jsonl\n  \
tierwise diff --baseline main/policies/enterprise --candidate policies/enterprise --accounts book.csv --format markdown"
)]
pub struct DiffArgs {
    /// The policy in force.
    #[arg(long)]
    baseline: PathBuf,
    /// The changed policy folder (default: the baseline, with the --set overrides).
    #[arg(long)]
    candidate: Option<PathBuf>,
    /// Change one value of the candidate's policy.toml, e.g. `tiers.key.min_score=7.0`,
    /// `capacity.per_manager.max=20`, `score.criteria[id=revenue].weight=5`. Repeatable.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    set: Vec<String>,
    /// Snapshots: `.json` (array), `.jsonl`/`.ndjson`, `.csv`, or `-` for standard input.
    #[arg(long)]
    accounts: String,
    /// The input's format when the extension does not say (standard input: default jsonl).
    #[arg(long, value_enum)]
    input_format: Option<Format>,
    #[command(flatten)]
    read: super::ReadArgs,
    #[arg(long, value_enum, default_value = "table")]
    format: DiffFormat,
    /// Exit 1 when any account changes tier or gets a decision under one policy only (1 is
    /// every command's "ran and found a problem" code).
    #[arg(long)]
    fail_on_moves: bool,
    /// How many changed accounts the table and markdown list (JSON lists all), what matters
    /// first: accounts leaving a capacity tier, then demotions, promotions, the rest.
    #[arg(long, default_value_t = 20)]
    top: usize,
}

fn folder_name(dir: &Path) -> String {
    dir.canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| dir.display().to_string())
}

fn read_files(dir: &Path) -> Result<Files, ExitCode> {
    policy::read_dir(dir).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

/// The candidate: a folder or the baseline's files, then the overrides; compiled like any
/// policy, its test cases run (the service's one candidate builder, as the dry run's).
fn candidate(args: &DiffArgs, limits: &Limits) -> Result<Candidate, ExitCode> {
    let dir = args.candidate.as_deref().unwrap_or(&args.baseline);
    let files = read_files(dir)?;
    let mut list = Vec::new();
    let mut bad = false;
    for s in &args.set {
        match overrides::parse_set(s) {
            Ok(o) => list.push(o),
            Err(e) => {
                eprintln!("error: {e}");
                bad = true;
            }
        }
    }
    if bad {
        return Err(ExitCode::from(2));
    }
    let given = (!list.is_empty()).then_some(list.as_slice());
    candidate::build(&folder_name(dir), files, args.candidate.is_some(), given, limits).map_err(
        |e| match e {
            CandidateError::Overrides(errors) => {
                for e in errors {
                    eprintln!("error: {e}");
                }
                ExitCode::from(2)
            }
            CandidateError::Invalid { report, with_overrides } => {
                eprint!("{}", super::render(&report));
                let n = report.errors().count();
                let with = if with_overrides { " (with the overrides)" } else { "" };
                eprintln!(
                    "error: candidate policy `{}`{with} has {n} problem{}",
                    report.policy,
                    if n == 1 { "" } else { "s" }
                );
                ExitCode::from(1)
            }
        },
    )
}

fn read_text(args: &DiffArgs) -> Result<(String, Format), ExitCode> {
    let format = args
        .input_format
        .or_else(|| Format::from_path(&args.accounts))
        .or((args.accounts == "-").then_some(Format::Jsonl));
    let Some(format) = format else {
        eprintln!(
            "error: cannot tell the format of `{}`: use .json, .jsonl, .ndjson or .csv, or --input-format",
            args.accounts
        );
        return Err(ExitCode::from(2));
    };
    let mut text = String::new();
    let read = if args.accounts == "-" {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::File::open(&args.accounts)
            .and_then(|mut f| f.read_to_string(&mut text))
            .map(|_| ())
    };
    if let Err(e) = read {
        eprintln!("error: cannot read `{}`: {e}", args.accounts);
        return Err(ExitCode::from(2));
    }
    Ok((text, format))
}

fn records(
    args: &DiffArgs,
    text: &str,
    format: Format,
    p: &Policy,
    notes: bool,
) -> Result<Vec<Record>, ExitCode> {
    let opts = args.read.options(p)?;
    let read = snapshot::read_with(text, format, p, &opts).map_err(|e| {
        eprintln!("error: `{}`: {e}", args.accounts);
        ExitCode::from(2)
    })?;
    if notes {
        for n in &read.notes {
            eprintln!("note: {n}");
        }
    }
    Ok(read.records)
}

pub fn run(args: &DiffArgs, limits: &Limits) -> ExitCode {
    match run_inner(args, limits) {
        Ok(code) | Err(code) => code,
    }
}

fn run_inner(args: &DiffArgs, limits: &Limits) -> Result<ExitCode, ExitCode> {
    if args.candidate.is_none() && args.set.is_empty() {
        eprintln!("error: nothing to compare: give `--candidate DIR`, `--set PATH=VALUE`, or both");
        return Err(ExitCode::from(2));
    }
    let Some(baseline) = super::load(&args.baseline, limits) else { return Err(ExitCode::from(1)) };
    let cand = candidate(args, limits)?;
    let candidate = &cand.policy;
    let (text, format) = read_text(args)?;
    let before = records(args, &text, format, &baseline, true)?;
    // CSV cells are typed by the policy's `[inputs]`, which the candidate may change; JSON
    // does not depend on the policy, so it is read once.
    let after = if format == Format::Csv {
        Some(records(args, &text, format, candidate, false)?)
    } else {
        None
    };
    drop(text);
    let what_if = Pipeline::offline().what_if(
        &baseline,
        candidate,
        &before,
        after.as_deref(),
        None,
        usize::MAX,
    );
    let diff = what_if.diff;
    // Errors are part of the book, not of the change: say how many, as `eval` does.
    for (which, n) in [("baseline", what_if.errors.0), ("candidate", what_if.errors.1)] {
        if n > 0 {
            eprintln!("note: {n} account(s) answered with an error under the {which}");
        }
    }
    // The process ends right after: freeing 100k records one by one costs time for nothing.
    std::mem::forget((before, after));

    // Not run for a candidate that trips the sandbox: each case would hit the same limit.
    let test_cases = if what_if.tripped.is_empty() { Some(cand.test_cases()) } else { None };
    let ctx = render::Context {
        overrides: args.set.iter().map(|s| s.trim().to_string()).collect(),
        candidate_dir: args.candidate.as_ref().map(|d| d.display().to_string()),
        notes: candidate::header_notes(&baseline, candidate, test_cases.as_ref()),
        capacity_tiers: candidate::capacity_tiers(&baseline),
    };
    let out = match args.format {
        DiffFormat::Table => render::table(&diff, &ctx, args.top),
        DiffFormat::Markdown => render::markdown(&diff, &ctx, args.top),
        DiffFormat::Json => {
            serde_json::to_string_pretty(&diff).map(|s| s + "\n").unwrap_or_default()
        }
    };
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_all(out.as_bytes()).and_then(|_| stdout.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("error: cannot write the output: {e}");
        return Err(ExitCode::from(2));
    }
    if let Some(t) = &test_cases {
        for c in &t.failed {
            eprintln!("candidate test case failed: {} ({}:{})", c.name, c.place.file, c.place.line);
            for f in &c.failures {
                eprintln!("  {f}");
            }
        }
    }
    if !what_if.tripped.is_empty() {
        let (hit, stopped) = candidate::tripped_in_order(&what_if.tripped);
        eprintln!(
            "error: the candidate policy hits a sandbox limit on {} account(s) the baseline decides",
            what_if.tripped.len()
        );
        for f in &hit {
            eprintln!(
                "  {} (record {}): {}: {}",
                f.id.as_deref().unwrap_or("?"),
                f.record,
                f.error.code,
                f.error.message
            );
        }
        if !stopped.is_empty() {
            eprintln!("  and {} account(s) not evaluated after the first limit", stopped.len());
        }
        return Ok(ExitCode::from(1));
    }
    if args.fail_on_moves && diff.has_moves() {
        eprintln!(
            "{} account(s) change tier, {} newly fail (--fail-on-moves)",
            diff.accounts.iter().filter(|a| a.from != a.to).count(),
            diff.newly_failing.len()
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
