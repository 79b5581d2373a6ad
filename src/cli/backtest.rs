//! `tierwise backtest`: a policy replayed over a book's history, before it goes live.
//!
//! Reading is two passes so memory stays near one period's, however long the history: the
//! first only finds which `as_of` dates each file holds (a light scan), the second reads the
//! files period by period, ascending, and hands each period to the library's replay
//! ([`tierwise::engine::backtest::Replay`]). A file holding one date is parsed when its
//! period comes and dropped after; a file holding several is parsed once and its other
//! periods kept until their turn.

use indicatif::{ProgressBar, ProgressStyle};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tierwise::engine::backtest::{self, Level, Options, Replay};
use tierwise::policy::{self, Files, Policy, overrides};
use tierwise::script::Limits;
use tierwise::snapshot::{self, AccountError, Format, Record};
use tierwise::whatif::backtest as render;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BacktestFormat {
    /// A summary for a terminal.
    Table,
    /// Ready to paste into a pull-request comment.
    Markdown,
    /// The whole report (schemas/backtest.schema.json).
    Json,
    /// One line per (period, account): tier, change and events, or the error.
    Jsonl,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LevelArg {
    /// The whole book at once: caps, manager capacity, portfolio alerts.
    Portfolio,
    /// Each account on its own (as `/v1/evaluate`).
    Account,
}

#[derive(clap::Args)]
#[command(
    after_help = "Each distinct `as_of` among the snapshots is one period, replayed in ascending order; after the \
first, an account already decided takes its current_tier and tier_since from the replay itself.\n\n\
Exit codes: 0 the replay ran; 1 accounts were answered with an error, or the candidate policy does not load; \
2 usage or unreadable input.\n\n\
Examples:\n  tierwise backtest --policy policies/enterprise --history samples/history\n  \
tierwise backtest --policy policies/enterprise --history samples/history --set movement.min_tenure_days=0 --format markdown"
)]
pub struct BacktestArgs {
    /// The policy folder to replay.
    #[arg(long)]
    policy: PathBuf,
    /// Snapshot files (`.json`, `.jsonl`/`.ndjson`, `.csv`, `-` for standard input) or folders
    /// of them (searched recursively, in path order). Repeatable; formats may be mixed.
    #[arg(long, required = true, num_args = 1..)]
    history: Vec<String>,
    /// A changed policy folder to replay beside it (with `--set`: those overrides on top).
    #[arg(long)]
    candidate: Option<PathBuf>,
    /// Change one value of the candidate's policy.toml (the policy's own without
    /// `--candidate`), e.g. `tiers.key.min_score=7.0`. Repeatable.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    set: Vec<String>,
    #[arg(long, value_enum, default_value = "portfolio")]
    level: LevelArg,
    /// A return to a tier left at most this many periods before is a flip-flop.
    #[arg(long, default_value_t = backtest::DEFAULT_FLIP_WINDOW, value_parser = clap::value_parser!(u32).range(2..))]
    flip_window: u32,
    #[arg(long, value_enum, default_value = "table")]
    format: BacktestFormat,
    /// The format of files whose extension does not say (standard input: default jsonl).
    #[arg(long, value_enum)]
    input_format: Option<Format>,
    /// How many accounts and managers the table and markdown list (JSON lists all).
    #[arg(long, default_value_t = 10)]
    top: usize,
}

/// One input: a file (read when needed) or standard input (read once, kept).
struct Source {
    name: String,
    path: Option<PathBuf>,
    format: Format,
    text: Option<String>,
    /// The days it holds (from the scan) and whether it has records in no period.
    days: BTreeSet<i64>,
    loaded: bool,
}

fn usage(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(2)
}

fn hidden(p: &Path) -> bool {
    p.file_name().and_then(|n| n.to_str()).is_some_and(tierwise::policy::is_ignored)
}

/// Every snapshot file under `dir`, in path order; files of other kinds are skipped.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    entries.sort();
    for p in entries {
        if hidden(&p) {
            continue;
        }
        if p.is_dir() {
            walk(&p, out)?;
        } else if Format::from_path(&p.to_string_lossy()).is_some() {
            out.push(p);
        }
    }
    Ok(())
}

fn sources(args: &BacktestArgs) -> Result<Vec<Source>, ExitCode> {
    let mut out = Vec::new();
    let mut stdin_used = false;
    for h in &args.history {
        if h == "-" {
            if stdin_used {
                return Err(usage("standard input (`-`) can be read only once"));
            }
            stdin_used = true;
            let mut text = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut text) {
                return Err(usage(format_args!("cannot read standard input: {e}")));
            }
            out.push(Source {
                name: "-".into(),
                path: None,
                format: args.input_format.unwrap_or(Format::Jsonl),
                text: Some(text),
                days: BTreeSet::new(),
                loaded: false,
            });
            continue;
        }
        let path = PathBuf::from(h);
        let files = if path.is_dir() {
            let mut files = Vec::new();
            walk(&path, &mut files).map_err(|e| usage(format_args!("cannot read `{h}`: {e}")))?;
            if files.is_empty() {
                return Err(usage(format_args!(
                    "`{h}` holds no snapshot file (.json, .jsonl, .ndjson, .csv)"
                )));
            }
            files
        } else if path.exists() {
            vec![path]
        } else {
            return Err(usage(format_args!("cannot read `{h}`: no such file or folder")));
        };
        for f in files {
            let name = f.display().to_string();
            let Some(format) = Format::from_path(&name).or(args.input_format) else {
                return Err(usage(format_args!(
                    "cannot tell the format of `{name}`: use .json, .jsonl, .ndjson or .csv, or --input-format"
                )));
            };
            out.push(Source {
                name,
                path: Some(f),
                format,
                text: None,
                days: BTreeSet::new(),
                loaded: false,
            });
        }
    }
    Ok(out)
}

fn text_of(s: &Source) -> Result<std::borrow::Cow<'_, str>, ExitCode> {
    if let Some(t) = &s.text {
        return Ok(std::borrow::Cow::Borrowed(t));
    }
    let path = s.path.as_deref().unwrap_or(Path::new(""));
    std::fs::read_to_string(path)
        .map(std::borrow::Cow::Owned)
        .map_err(|e| usage(format_args!("cannot read `{}`: {e}", s.name)))
}

/// The first pass: which days a file holds, without building its snapshots.
fn scan(s: &mut Source) -> Result<(), ExitCode> {
    #[derive(serde::Deserialize)]
    struct AsOf<'a> {
        #[serde(borrow, default)]
        as_of: Option<std::borrow::Cow<'a, str>>,
    }
    let text = text_of(s)?;
    let mut days = BTreeSet::new();
    let mut add = |v: Option<&str>| {
        if let Some(d) = v.and_then(tierwise::date::parse_days) {
            days.insert(d);
        }
    };
    match s.format {
        Format::Jsonl => {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                add(serde_json::from_str::<AsOf<'_>>(line).ok().and_then(|a| a.as_of).as_deref());
            }
        }
        Format::Json => {
            let items: Vec<&serde_json::value::RawValue> =
                serde_json::from_str(&text).map_err(|e| {
                    usage(format_args!("`{}`: not a JSON array of snapshots: {e}", s.name))
                })?;
            for raw in items {
                add(serde_json::from_str::<AsOf<'_>>(raw.get())
                    .ok()
                    .and_then(|a| a.as_of)
                    .as_deref());
            }
        }
        Format::Csv => {
            let mut rdr = csv::ReaderBuilder::new().flexible(true).from_reader(text.as_bytes());
            let headers = rdr
                .headers()
                .map_err(|e| usage(format_args!("`{}`: cannot read CSV: {e}", s.name)))?;
            if !headers.iter().any(|h| h == "id") {
                return Err(usage(format_args!(
                    "`{}`: cannot read CSV: the header has no `id` column",
                    s.name
                )));
            }
            let col = headers.iter().position(|h| h == "as_of");
            for row in rdr.records().flatten() {
                add(col.and_then(|c| row.get(c)).map(str::trim));
            }
        }
    }
    drop(text);
    s.days = days;
    Ok(())
}

/// The candidate: a folder or the policy's own files, then the overrides, compiled like any
/// policy (what `diff` does).
fn candidate(args: &BacktestArgs, limits: &Limits) -> Result<Option<Policy>, ExitCode> {
    if args.candidate.is_none() && args.set.is_empty() {
        return Ok(None);
    }
    let dir = args.candidate.as_deref().unwrap_or(&args.policy);
    let mut files: Files = policy::read_dir(dir).map_err(|e| usage(format_args!("{e}")))?;
    if !args.set.is_empty() {
        let list = super::sets::parse(&args.set)?;
        match overrides::apply_files(&files, &list) {
            Ok(f) => files = f,
            Err(errors) => {
                for e in errors {
                    eprintln!("error: {e}");
                }
                return Err(ExitCode::from(2));
            }
        }
    }
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| dir.display().to_string());
    policy::load_files(&name, &files, limits).map(Some).map_err(|report| {
        eprint!("{}", super::render(&report));
        let n = report.errors().count();
        let with = if args.set.is_empty() { "" } else { " (with the overrides)" };
        eprintln!(
            "error: candidate policy `{}`{with} has {n} problem{}",
            report.policy,
            if n == 1 { "" } else { "s" }
        );
        ExitCode::from(1)
    })
}

/// Records waiting for their period: (day, source index) → records, one list per policy.
type Pending = BTreeMap<(i64, usize), Vec<Record>>;

/// One side of the replay: its policy, the records it waits for, its replay.
struct Side<'p> {
    policy: &'p Policy,
    pending: Pending,
    replay: Replay<'p>,
    unplaced: Vec<AccountError>,
}

impl Side<'_> {
    fn take(&mut self, text: &str, src: &Source, i: usize) -> Result<(), ExitCode> {
        let records = snapshot::read(text, src.format, self.policy)
            .map_err(|e| usage(format_args!("`{}`: {e}", src.name)))?;
        for (n, r) in records.into_iter().enumerate() {
            let day = r.as_ref().ok().map(|s| (tierwise::date::parse_days(&s.as_of), s));
            match day {
                Some((Some(d), _)) => self.pending.entry((d, i)).or_default().push(r),
                Some((None, s)) => {
                    let mut e = backtest::bad_as_of(&s.id, &s.as_of);
                    // The line for JSON lines and CSV, the element for a JSON array.
                    e.record = Some(if src.format == Format::Csv { n + 2 } else { n + 1 });
                    self.unplaced.push(e);
                }
                None => {
                    if let Err(e) = r {
                        self.unplaced.push(e);
                    }
                }
            }
        }
        Ok(())
    }

    fn period_records(&mut self, day: i64) -> Vec<Record> {
        let keys: Vec<(i64, usize)> =
            self.pending.range((day, 0)..=(day, usize::MAX)).map(|(k, _)| *k).collect();
        let mut out = Vec::new();
        for k in keys {
            if let Some(v) = self.pending.remove(&k) {
                if out.is_empty() {
                    out = v;
                } else {
                    out.extend(v);
                }
            }
        }
        out
    }
}

pub fn run(args: &BacktestArgs, limits: &Limits) -> ExitCode {
    match run_inner(args, limits) {
        Ok(code) | Err(code) => code,
    }
}

fn run_inner(args: &BacktestArgs, limits: &Limits) -> Result<ExitCode, ExitCode> {
    if args.format == BacktestFormat::Jsonl && (args.candidate.is_some() || !args.set.is_empty()) {
        return Err(usage(
            "`--format jsonl` is one policy's replay: drop `--candidate`/`--set`, or use table, markdown or json",
        ));
    }
    let Some(base) = super::load(&args.policy, limits) else { return Err(ExitCode::from(1)) };
    let cand = candidate(args, limits)?;
    let mut srcs = sources(args)?;
    for s in srcs.iter_mut() {
        scan(s)?;
    }
    let days: BTreeSet<i64> = srcs.iter().flat_map(|s| s.days.iter().copied()).collect();
    let opts = Options {
        level: match args.level {
            LevelArg::Portfolio => Level::Portfolio,
            LevelArg::Account => Level::Account,
        },
        flip_window: args.flip_window,
    };
    let mut sides: Vec<Side<'_>> = std::iter::once(&base)
        .chain(cand.as_ref())
        .map(|p| Side {
            policy: p,
            pending: Pending::new(),
            replay: Replay::new(p, opts),
            unplaced: Vec::new(),
        })
        .collect();
    // CSV cells are typed by the policy's `[inputs]`, which the candidate may change; JSON
    // does not depend on the policy, so it is parsed once and copied.
    let load = |srcs: &mut [Source], i: usize, sides: &mut [Side<'_>]| -> Result<(), ExitCode> {
        let src = &srcs[i];
        let text = text_of(src)?;
        match sides {
            [b, c] if src.format != Format::Csv => {
                let before = b.unplaced.len();
                b.take(&text, src, i)?;
                for (k, v) in &b.pending {
                    if k.1 == i {
                        c.pending.insert(*k, v.clone());
                    }
                }
                c.unplaced.extend(b.unplaced.iter().skip(before).cloned());
            }
            _ => {
                for s in sides.iter_mut() {
                    s.take(&text, src, i)?;
                }
            }
        }
        drop(text);
        srcs[i].loaded = true;
        srcs[i].text = None;
        Ok(())
    };
    // Files with no period at all still have their records reported.
    for i in 0..srcs.len() {
        if srcs[i].days.is_empty() {
            load(&mut srcs, i, &mut sides)?;
        }
    }

    let bar = super::stderr_is_terminal().then(|| {
        let bar = ProgressBar::new(days.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} replaying {msg} [{bar:40}] {pos}/{len} periods ({eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        bar
    });
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let mut write_failed = None;
    for &day in &days {
        let as_of = tierwise::date::format_days(day);
        if let Some(b) = &bar {
            b.set_message(as_of.clone());
        }
        for i in 0..srcs.len() {
            if !srcs[i].loaded && srcs[i].days.contains(&day) {
                load(&mut srcs, i, &mut sides)?;
            }
        }
        let per_side: Vec<Vec<Record>> = sides.iter_mut().map(|s| s.period_records(day)).collect();
        let outputs: Vec<backtest::PeriodOutput> = match (sides.as_mut_slice(), per_side) {
            ([b, c], mut v) => {
                let rc = v.pop().unwrap_or_default();
                let rb = v.pop().unwrap_or_default();
                let (ob, oc) = rayon::join(
                    || b.replay.period(&as_of, day, rb),
                    || c.replay.period(&as_of, day, rc),
                );
                vec![ob, oc]
            }
            (sides, v) => {
                sides.iter_mut().zip(v).map(|(s, r)| s.replay.period(&as_of, day, r)).collect()
            }
        };
        if args.format == BacktestFormat::Jsonl
            && write_failed.is_none()
            && let Some(o) = outputs.first()
            && let Err(e) = backtest::write_jsonl(&mut out, &o.as_of, &o.lines)
        {
            write_failed = Some(e);
        }
        if let Some(b) = &bar {
            b.inc(1);
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let mut reports = Vec::new();
    for mut s in sides {
        let unplaced = std::mem::take(&mut s.unplaced);
        s.replay.unplaced(unplaced);
        reports.push(s.replay.finish());
    }
    if args.format == BacktestFormat::Jsonl
        && write_failed.is_none()
        && let Some(r) = reports.first()
    {
        // Records in no period come last: they have no `as_of` to sort by.
        if let Err(e) = backtest::write_unplaced_jsonl(&mut out, &r.unplaced) {
            write_failed = Some(e);
        }
    }
    let errors: Vec<u64> = reports.iter().map(|r| r.overall.errors).collect();
    let text = match (args.format, reports.len()) {
        (BacktestFormat::Jsonl, _) => String::new(),
        (f, 2) => {
            let mut it = reports.into_iter();
            let (Some(b), Some(c)) = (it.next(), it.next()) else { return Err(ExitCode::from(2)) };
            let cmp = backtest::compare(b, c);
            let ctx = render::Context {
                overrides: args.set.iter().map(|s| s.trim().to_string()).collect(),
                candidate_dir: args.candidate.as_ref().map(|d| d.display().to_string()),
            };
            match f {
                BacktestFormat::Table => render::comparison_table(&cmp, &ctx, args.top),
                BacktestFormat::Markdown => render::comparison_markdown(&cmp, &ctx, args.top),
                _ => serde_json::to_string_pretty(&cmp).map(|s| s + "\n").unwrap_or_default(),
            }
        }
        (f, _) => {
            let Some(r) = reports.first() else { return Err(ExitCode::from(2)) };
            match f {
                BacktestFormat::Table => render::table(r, args.top),
                BacktestFormat::Markdown => render::markdown(r, args.top),
                _ => serde_json::to_string_pretty(r).map(|s| s + "\n").unwrap_or_default(),
            }
        }
    };
    let written = out.write_all(text.as_bytes()).and_then(|_| out.flush());
    if let Some(e) = write_failed.map(Err).unwrap_or(written).err()
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("error: cannot write the output: {e}");
        return Err(ExitCode::from(2));
    }
    if days.is_empty() {
        eprintln!("note: no snapshot with a valid `as_of`: nothing to replay");
    }
    for (which, n) in ["policy", "candidate"].iter().zip(&errors) {
        if *n > 0 {
            eprintln!("note: {n} snapshot(s) answered with an error under the {which}");
        }
    }
    Ok(if errors.iter().any(|&n| n > 0) { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
