//! `tierwise eval`: decide the accounts of a file, at account or portfolio level.

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use tierwise::engine::{self, Outcome, PortfolioResult};
use tierwise::policy::Policy;
use tierwise::script::Limits;
use tierwise::snapshot::{self, Format, Record};
use tierwise::whatif::text::plain;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutFormat {
    Json,
    Jsonl,
    Table,
    Csv,
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// The policy folder.
    #[arg(long)]
    policy: PathBuf,
    /// Snapshots: `.json` (array), `.jsonl`/`.ndjson`, `.csv`, or `-` for standard input.
    #[arg(long)]
    accounts: String,
    /// Evaluate the whole book: caps, manager capacity, portfolio alerts, summary.
    #[arg(long)]
    portfolio: bool,
    #[arg(long, value_enum, default_value = "json")]
    format: OutFormat,
    /// The input's format when the extension does not say (standard input: default jsonl).
    #[arg(long, value_enum)]
    input_format: Option<Format>,
}

/// Files with more records than this get a progress bar (at a terminal).
const PROGRESS_MIN: usize = 20_000;

pub fn run(args: &EvalArgs, limits: &Limits) -> ExitCode {
    let Some(policy) = super::load(&args.policy, limits) else { return ExitCode::from(1) };
    let format = args
        .input_format
        .or_else(|| Format::from_path(&args.accounts))
        .or((args.accounts == "-").then_some(Format::Jsonl));
    let Some(format) = format else {
        eprintln!(
            "error: cannot tell the format of `{}`: use .json, .jsonl, .ndjson or .csv, or --input-format",
            args.accounts
        );
        return ExitCode::from(2);
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
        return ExitCode::from(2);
    }
    let records = match snapshot::read(&text, format, &policy) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: `{}`: {e}", args.accounts);
            return ExitCode::from(2);
        }
    };
    drop(text);
    note_undeclared(&policy, &records);

    let bar = (super::stderr_is_terminal() && records.len() > PROGRESS_MIN).then(|| {
        let bar = ProgressBar::new(records.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} [{bar:40}] {pos}/{len} accounts ({eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message("evaluating");
        bar
    });
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let (errors, written) = if args.portfolio {
        if let Some(b) = &bar {
            b.set_message("evaluating the portfolio");
            b.enable_steady_tick(std::time::Duration::from_millis(120));
        }
        let result = engine::evaluate_portfolio(&policy, &records);
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        let errors = result.summary.error_count;
        let written = write_portfolio(&mut out, &result, args.format);
        // The process ends right after: freeing 100k decisions one by one costs a quarter
        // of a second for nothing.
        std::mem::forget(result);
        (errors, written)
    } else {
        // In chunks, so the bar moves; each chunk still uses every core.
        let mut outcomes = Vec::with_capacity(records.len());
        for chunk in records.chunks(8192) {
            outcomes.extend(engine::evaluate(&policy, chunk));
            if let Some(b) = &bar {
                b.inc(chunk.len() as u64);
            }
        }
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        let errors = outcomes.iter().filter(|o| o.decision().is_none()).count() as u64;
        let written = write_outcomes(&mut out, &outcomes, args.format);
        std::mem::forget(outcomes);
        (errors, written)
    };
    if let Err(e) = written.and_then(|_| out.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("error: cannot write the output: {e}");
        return ExitCode::from(2);
    }
    std::mem::forget(records);
    if errors > 0 {
        eprintln!("{errors} account(s) answered with an error");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// CRM exports carry many fields the policy does not read: name them once.
fn note_undeclared(policy: &Policy, records: &[Record]) {
    let mut extra = BTreeSet::new();
    for s in records.iter().flatten().take(1000) {
        for k in s.fields.keys() {
            if policy.input_index(k).is_none() {
                extra.insert(k.clone());
            }
        }
    }
    if !extra.is_empty() {
        let list: Vec<_> = extra.into_iter().collect();
        eprintln!(
            "note: fields not declared in policy `{}` are ignored: {}",
            policy.name,
            list.join(", ")
        );
    }
}

/// Serializes on every core, in order: JSON encoding is a large part of a big run.
fn encode_parts(outcomes: &[Outcome]) -> Vec<Vec<u8>> {
    outcomes
        .par_chunks(2048)
        .map(|chunk| {
            let mut buf = Vec::with_capacity(chunk.len() * 600);
            for o in chunk {
                if serde_json::to_writer(&mut buf, o).is_ok() {
                    buf.push(b'\n');
                }
            }
            buf
        })
        .collect()
}

fn write_outcomes(
    out: &mut impl Write,
    outcomes: &[Outcome],
    format: OutFormat,
) -> std::io::Result<()> {
    match format {
        OutFormat::Jsonl => encode_parts(outcomes).iter().try_for_each(|p| out.write_all(p)),
        OutFormat::Json => {
            let parts = encode_parts(outcomes);
            out.write_all(b"[")?;
            let mut first = true;
            for line in
                parts.iter().flat_map(|p| p.split(|&b| b == b'\n')).filter(|l| !l.is_empty())
            {
                if !first {
                    out.write_all(b",\n")?;
                }
                first = false;
                out.write_all(line)?;
            }
            out.write_all(b"]\n")
        }
        OutFormat::Table => write_table(out, outcomes),
        OutFormat::Csv => write_csv(out, outcomes),
    }
}

fn write_portfolio(
    out: &mut impl Write,
    r: &PortfolioResult,
    format: OutFormat,
) -> std::io::Result<()> {
    match format {
        OutFormat::Json => {
            serde_json::to_writer(&mut *out, r).map_err(std::io::Error::other)?;
            out.write_all(b"\n")
        }
        OutFormat::Jsonl => {
            encode_parts(&r.accounts).iter().try_for_each(|p| out.write_all(p))?;
            #[derive(serde::Serialize)]
            struct Tail<'a> {
                policy: &'a tierwise::engine::PolicyRef,
                summary: &'a tierwise::engine::Summary,
            }
            serde_json::to_writer(&mut *out, &Tail { policy: &r.policy, summary: &r.summary })
                .map_err(std::io::Error::other)?;
            out.write_all(b"\n")
        }
        OutFormat::Csv => write_csv(out, &r.accounts),
        OutFormat::Table => {
            write_table(out, &r.accounts)?;
            let s = &r.summary;
            writeln!(
                out,
                "\npolicy {} {} ({} accounts decided, {} errors)",
                r.policy.name,
                &r.policy.hash[..12.min(r.policy.hash.len())],
                s.account_count,
                s.error_count
            )?;
            writeln!(out, "{:<14} {:>8} {:>7} {:>16}", "tier", "accounts", "share", "revenue")?;
            for t in &s.tiers {
                writeln!(
                    out,
                    "{:<14} {:>8} {:>6.1}% {:>16.0}",
                    plain(&t.id),
                    t.count,
                    t.share * 100.0,
                    t.revenue
                )?;
            }
            let c = &s.changes;
            writeln!(
                out,
                "changes: {} promote, {} demote, {} hold, {} none, {} new",
                c.promote, c.demote, c.hold, c.none, c.new
            )?;
            for m in s.managers.iter().filter(|m| m.status != tierwise::engine::Load::Ok) {
                writeln!(
                    out,
                    "manager {:<20} {:>4} accounts  {}",
                    plain(&m.manager),
                    m.count,
                    m.status.as_str()
                )?;
            }
            for a in &s.portfolio_alerts {
                writeln!(
                    out,
                    "portfolio alert [{:?}] {}: {}",
                    a.severity,
                    plain(&a.id),
                    plain(&a.message)
                )?;
            }
            Ok(())
        }
    }
}

fn write_table(out: &mut impl Write, outcomes: &[Outcome]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<20} {:>6}  {:<12} {:<12} {:<8} alerts / error",
        "account", "score", "tier", "was", "change"
    )?;
    for o in outcomes {
        match o {
            Outcome::Decision(d) => {
                let alerts: Vec<&str> = d.alerts.iter().map(|a| &*a.id).collect();
                writeln!(
                    out,
                    "{:<20} {:>6.2}  {:<12} {:<12} {:<8} {}",
                    plain(&d.id),
                    d.score,
                    plain(&d.tier),
                    plain(d.previous_tier.as_deref().unwrap_or("-")),
                    d.change.as_str(),
                    plain(&alerts.join(","))
                )?;
            }
            Outcome::Error { id, error } => {
                writeln!(
                    out,
                    "{:<20} {:>6}  {:<12} {:<12} {:<8} error {}: {}",
                    plain(id.as_deref().unwrap_or("?")),
                    "-",
                    "-",
                    "-",
                    "-",
                    error.code,
                    plain(&error.message)
                )?;
            }
        }
    }
    Ok(())
}

fn write_csv(out: &mut impl Write, outcomes: &[Outcome]) -> std::io::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    let io = |e: csv::Error| std::io::Error::other(e);
    w.write_record([
        "id",
        "score",
        "qualified_tier",
        "previous_tier",
        "tier",
        "change",
        "alerts",
        "error_code",
        "error",
    ])
    .map_err(io)?;
    for o in outcomes {
        match o {
            Outcome::Decision(d) => {
                let alerts: Vec<&str> = d.alerts.iter().map(|a| &*a.id).collect();
                w.write_record([
                    &*plain(&d.id),
                    &d.score.to_string(),
                    &plain(&d.qualified_tier),
                    &plain(d.previous_tier.as_deref().unwrap_or("")),
                    &plain(&d.tier),
                    d.change.as_str(),
                    &plain(&alerts.join(";")),
                    "",
                    "",
                ])
                .map_err(io)?;
            }
            Outcome::Error { id, error } => {
                w.write_record([
                    &*plain(id.as_deref().unwrap_or("")),
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    error.code,
                    &plain(&error.message),
                ])
                .map_err(io)?;
            }
        }
    }
    w.flush()
}
