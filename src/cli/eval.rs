//! `tierwise eval`: decide the accounts of a file, at account or portfolio level.

use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use tierwise::engine::{self, Outcome, PortfolioResult};
use tierwise::policy::Policy;
use tierwise::script::Limits;
use tierwise::service::{Loaded, Pipeline, encode};
use tierwise::snapshot::{self, Format, Record};
use tierwise::whatif::text::plain;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutFormat {
    Json,
    Jsonl,
    Table,
    Csv,
    /// A report for a pull request or a wiki page.
    Markdown,
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

/// Accounts decided and written at a time, at account level.
const CHUNK: usize = 8192;

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
    let loaded = Loaded::new(policy, Default::default());
    let pipeline = Pipeline::offline();

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
        let result = pipeline.decide_portfolio(&loaded, &records);
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
        // In chunks, each written before the next is decided (the bar moves, memory stays
        // flat); each chunk still uses every core.
        let mut errors = 0;
        let mut written = Ok(());
        let mut stream = Stream::new(args.format);
        for (k, chunk) in records.chunks(CHUNK).enumerate() {
            let outcomes = pipeline.decide_accounts(&loaded, chunk, k * CHUNK);
            errors += outcomes.iter().filter(|o| o.decision().is_none()).count() as u64;
            written = stream.write(&mut out, &outcomes);
            if let Some(b) = &bar {
                b.inc(chunk.len() as u64);
            }
            if written.is_err() {
                break;
            }
        }
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        let written = written.and_then(|_| stream.end(&mut out));
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

/// Account-level output written chunk by chunk, in any of the formats.
struct Stream {
    format: OutFormat,
    /// Nothing written yet (JSON's `[`, the table's and CSV's header come first).
    first: bool,
}

impl Stream {
    fn new(format: OutFormat) -> Self {
        Stream { format, first: true }
    }

    fn write(&mut self, out: &mut impl Write, outcomes: &[Outcome]) -> std::io::Result<()> {
        let first = std::mem::replace(&mut self.first, false);
        match self.format {
            OutFormat::Jsonl => lines(outcomes)?.iter().try_for_each(|p| out.write_all(p)),
            OutFormat::Json => {
                let parts = lines(outcomes)?;
                let each = parts.iter().flat_map(|p| p.split(|&b| b == b'\n'));
                for (i, line) in each.filter(|l| !l.is_empty()).enumerate() {
                    out.write_all(if first && i == 0 { b"[" } else { b",\n" })?;
                    out.write_all(line)?;
                }
                if first && outcomes.is_empty() {
                    self.first = true;
                }
                Ok(())
            }
            OutFormat::Table => write_table(out, outcomes, first),
            OutFormat::Csv => write_csv(out, outcomes, first),
            OutFormat::Markdown => write_markdown_accounts(out, outcomes, first),
        }
    }

    fn end(self, out: &mut impl Write) -> std::io::Result<()> {
        match self.format {
            OutFormat::Json if self.first => out.write_all(b"[]\n"),
            OutFormat::Json => out.write_all(b"]\n"),
            OutFormat::Table | OutFormat::Csv | OutFormat::Markdown if self.first => {
                // No account at all: the header alone.
                match self.format {
                    OutFormat::Table => write_table(out, &[], true),
                    OutFormat::Csv => write_csv(out, &[], true),
                    _ => write_markdown_accounts(out, &[], true),
                }
            }
            _ => Ok(()),
        }
    }
}

/// One JSON line per outcome, encoded on every core.
fn lines(outcomes: &[Outcome]) -> std::io::Result<Vec<Vec<u8>>> {
    encode::encode_lines(outcomes).map_err(std::io::Error::other)
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
            lines(&r.accounts)?.iter().try_for_each(|p| out.write_all(p))?;
            #[derive(serde::Serialize)]
            struct Tail<'a> {
                policy: &'a tierwise::engine::PolicyRef,
                summary: &'a tierwise::engine::Summary,
            }
            serde_json::to_writer(&mut *out, &Tail { policy: &r.policy, summary: &r.summary })
                .map_err(std::io::Error::other)?;
            out.write_all(b"\n")
        }
        OutFormat::Csv => write_csv(out, &r.accounts, true),
        OutFormat::Table => {
            write_table(out, &r.accounts, true)?;
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
            for o in &s.over_cap {
                writeln!(
                    out,
                    "over cap: {} holds {}, its limit is {} (accounts that may not go lower: see cap_protected)",
                    o.tier, o.count, o.limit
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
        OutFormat::Markdown => write_markdown_portfolio(out, r),
    }
}

/// Reasons that come from the book-wide steps (caps, `total_max`, capacity): what a reader of
/// a portfolio needs beside the tier, since movement alone would have decided otherwise.
const SEAT_CODES: [&str; 4] = ["cap", "cap_protected", "total_max", "capacity"];

fn seat_reasons(d: &engine::Decision) -> impl Iterator<Item = &engine::Reason> {
    d.reasons.iter().filter(|r| SEAT_CODES.contains(&r.code))
}

/// Escapes what would break a markdown table cell.
fn md(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// A reason in a markdown cell: its code, then its sentence.
fn md_reason(r: &engine::Reason) -> String {
    format!("`{}` {}", r.code, md(&r.message))
}

/// The cells every markdown row of a decision starts with: account, score, tier, was, change.
fn md_decision_cells(d: &engine::Decision) -> String {
    format!(
        "| `{}` | {:.2} | {} | {} | {} |",
        md(&d.id),
        d.score,
        d.tier,
        d.previous_tier.as_deref().map_or("-".to_string(), md),
        d.change.as_str()
    )
}

fn write_markdown_accounts(
    out: &mut impl Write,
    outcomes: &[Outcome],
    header: bool,
) -> std::io::Result<()> {
    if header {
        writeln!(out, "| account | score | tier | was | change | alerts | why |")?;
        writeln!(out, "|---|--:|---|---|---|---|---|")?;
    }
    for o in outcomes {
        match o {
            Outcome::Decision(d) => {
                let alerts: Vec<String> = d.alerts.iter().map(|a| format!("`{}`", a.id)).collect();
                // The last reason that says more than "stays <tier>".
                let why = d
                    .reasons
                    .iter()
                    .rev()
                    .find(|r| r.code != "stay")
                    .map(md_reason)
                    .unwrap_or_default();
                writeln!(out, "{} {} | {} |", md_decision_cells(d), alerts.join(" "), why)?;
            }
            Outcome::Error { id, error } => writeln!(
                out,
                "| `{}` | - | - | - | - | error `{}` | {} |",
                md(id.as_deref().unwrap_or("?")),
                error.code,
                md(&error.message)
            )?,
        }
    }
    Ok(())
}

fn write_markdown_portfolio(out: &mut impl Write, r: &PortfolioResult) -> std::io::Result<()> {
    let s = &r.summary;
    writeln!(
        out,
        "### Portfolio under `{}` `{}`\n\n{} accounts decided, {} errors.\n",
        r.policy.name,
        &r.policy.hash[..12.min(r.policy.hash.len())],
        s.account_count,
        s.error_count
    )?;
    writeln!(out, "| tier | accounts | share | revenue |")?;
    writeln!(out, "|---|--:|--:|--:|")?;
    for t in &s.tiers {
        writeln!(
            out,
            "| {} | {} | {:.1}% | {:.0} |",
            md(&t.id),
            t.count,
            t.share * 100.0,
            t.revenue
        )?;
    }
    if !s.over_cap.is_empty() {
        writeln!(out, "\n**Over cap** (accounts that may not go lower keep their seats):\n")?;
        for o in &s.over_cap {
            writeln!(out, "- `{}` holds {}, its limit is {}", md(&o.tier), o.count, o.limit)?;
        }
    }
    let c = &s.changes;
    writeln!(
        out,
        "\nChanges: {} promote, {} demote, {} hold, {} none, {} new.",
        c.promote, c.demote, c.hold, c.none, c.new
    )?;
    let managers: Vec<_> =
        s.managers.iter().filter(|m| m.status != tierwise::engine::Load::Ok).collect();
    if !managers.is_empty() {
        writeln!(out, "\n| manager | accounts | load |\n|---|--:|---|")?;
        for m in managers {
            writeln!(out, "| `{}` | {} | {} |", md(&m.manager), m.count, m.status.as_str())?;
        }
    }
    if !s.portfolio_alerts.is_empty() {
        writeln!(out)?;
        for a in &s.portfolio_alerts {
            writeln!(out, "- portfolio alert `{}` ({:?}): {}", a.id, a.severity, md(&a.message))?;
        }
    }
    // The accounts that caps, `total_max` or capacity moved or protected, with their reasons.
    let seated: Vec<&engine::Decision> = r
        .accounts
        .iter()
        .filter_map(Outcome::decision)
        .filter(|d| seat_reasons(d).next().is_some())
        .collect();
    if !seated.is_empty() {
        writeln!(out, "\n**Caps and capacity** ({} accounts)\n", seated.len())?;
        writeln!(out, "| account | score | tier | was | change | reasons |")?;
        writeln!(out, "|---|--:|---|---|---|---|")?;
        for d in seated {
            let why: Vec<String> = seat_reasons(d).map(md_reason).collect();
            writeln!(out, "{} {} |", md_decision_cells(d), why.join("<br>"))?;
        }
    }
    writeln!(out, "\n<details><summary>All accounts</summary>\n")?;
    write_markdown_accounts(out, &r.accounts, true)?;
    writeln!(out, "\n</details>")
}

fn write_table(out: &mut impl Write, outcomes: &[Outcome], header: bool) -> std::io::Result<()> {
    if header {
        writeln!(
            out,
            "{:<20} {:>6}  {:<12} {:<12} {:<8} alerts / error",
            "account", "score", "tier", "was", "change"
        )?;
    }
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
                for r in seat_reasons(d) {
                    writeln!(out, "{:<22}{}: {}", "", r.code, r.message)?;
                }
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

fn write_csv(out: &mut impl Write, outcomes: &[Outcome], header: bool) -> std::io::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    let io = |e: csv::Error| std::io::Error::other(e);
    if header {
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
    }
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
