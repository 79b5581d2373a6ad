//! The whole `tierwise eval --portfolio --format jsonl` job for `policies/enterprise`, written
//! by hand: the lower bound for the CLI's whole-process time.
//!
//! ```text
//! cargo build --release --example handwritten
//! target/release/examples/handwritten accounts.jsonl [--threads N] [--policy DIR] > decisions.jsonl
//! ```
//! Reads the JSON-lines file, parses each line with serde_json into typed structs (strings
//! borrowed from the input), validates, decides at portfolio level (caps, `total_max`, manager
//! capacity, alerts, summary; benches/handwritten/mod.rs) and writes the same JSON lines as the
//! CLI: one outcome per account in input order, then the policy + summary line. On the
//! generated accounts the output is byte-identical to the CLI's (benches/cli.sh checks it).
//!
//! `--timings` prints the time of each phase on stderr.
//!
//! Single-threaded by default; `--threads N` parses and serializes on N threads (the decision
//! itself stays on one). The policy is compiled in; only its content hash is read from
//! `--policy` (default `policies/enterprise`), for the `policy` field of each decision.

#[path = "../benches/handwritten/mod.rs"]
mod handwritten;

use handwritten as hw;
use std::borrow::Cow;
use std::io::Write;
use std::process::ExitCode;

/// The same allocator as the `tierwise` binary, so the comparison is of code, not allocators.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A line after parsing, before validation (`Loose` is rare: no need to box the common case).
#[allow(clippy::large_enum_variant)]
enum Parsed<'a> {
    /// The fast path: typed fields, strings borrowed.
    Typed(hw::RawSnapshot<'a>, &'a str),
    /// A value of the wrong type somewhere: the engine-shaped snapshot names it.
    Loose(hw::LooseSnapshot),
}

impl Parsed<'_> {
    fn id(&self) -> &str {
        match self {
            Parsed::Typed(r, _) => &r.id,
            Parsed::Loose(l) => &l.id,
        }
    }
}

fn parse_line(line: &str, line_no: usize) -> Result<Parsed<'_>, hw::HwError> {
    match serde_json::from_str::<hw::RawSnapshot>(line) {
        Ok(r) => Ok(Parsed::Typed(r, line)),
        Err(_) => serde_json::from_str::<hw::LooseSnapshot>(line)
            .map(Parsed::Loose)
            .map_err(|e| hw::bad_record(line, &e, line_no)),
    }
}

fn loose(l: hw::LooseSnapshot) -> Result<hw::Account<'static>, hw::HwError> {
    let ident = hw::Identity {
        id: Cow::Owned(l.id),
        manager: l.manager.map(Cow::Owned),
        current_tier: l.current_tier.map(Cow::Owned),
        tier_since: l.tier_since.map(Cow::Owned),
        as_of: Cow::Owned(l.as_of),
    };
    hw::validate_map(ident, &l.fields)
}

fn validate(p: Parsed<'_>) -> Result<hw::Account<'_>, hw::HwError> {
    match p {
        Parsed::Typed(r, line) => match hw::validate_raw(r) {
            Ok(result) => result,
            // A type the typed struct took but cannot judge (e.g. `strategic_fit: 3.5`).
            Err(()) => match serde_json::from_str::<hw::LooseSnapshot>(line) {
                Ok(l) => loose(l),
                Err(e) => {
                    let mut err = hw::bad_record(line, &e, 0);
                    err.record = None; // numbered by position, as the engine does
                    Err(err)
                }
            },
        },
        Parsed::Loose(l) => loose(l),
    }
}

/// Runs `f` over `items` in `threads` contiguous chunks, keeping order.
fn chunked<T: Sync, U: Send>(items: &[T], threads: usize, f: impl Fn(&[T]) -> U + Sync) -> Vec<U> {
    if threads <= 1 || items.len() < 1024 {
        return vec![f(items)];
    }
    let size = items.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = items.chunks(size).map(|c| s.spawn(|| f(c))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| std::process::abort())).collect()
    })
}

fn main() -> ExitCode {
    let mut file = None;
    let mut threads = 1usize;
    let mut policy_dir = String::from("policies/enterprise");
    let mut timings = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--threads" => threads = args.next().and_then(|t| t.parse().ok()).unwrap_or(1),
            "--policy" => policy_dir = args.next().unwrap_or(policy_dir),
            "--timings" => timings = true,
            _ => file = Some(a),
        }
    }
    let Some(file) = file else {
        eprintln!("usage: handwritten ACCOUNTS.jsonl [--threads N] [--policy DIR]");
        return ExitCode::from(2);
    };
    let t0 = std::time::Instant::now();
    let mut marks: Vec<(&str, std::time::Instant)> = Vec::new();
    let hash = match tierwise::policy::read_dir(std::path::Path::new(&policy_dir)) {
        Ok(files) => tierwise::policy::content_hash(&files),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let pref = hw::PolicyRef { name: hw::POLICY_NAME.into(), version: "2026.1".into(), hash };
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read `{file}`: {e}");
            return ExitCode::from(2);
        }
    };

    marks.push(("read file", std::time::Instant::now()));
    // Parse (on `threads` threads), then validate with duplicate ids refused.
    let lines: Vec<(usize, &str)> =
        text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).collect();
    let parsed: Vec<Result<Parsed<'_>, hw::HwError>> = chunked(&lines, threads, |c| {
        c.iter().map(|&(i, l)| parse_line(l, i + 1)).collect::<Vec<_>>()
    })
    .into_iter()
    .flatten()
    .collect();
    marks.push(("parse", std::time::Instant::now()));
    let accounts = hw::validate_all(parsed, Parsed::id, validate);
    marks.push(("validate", std::time::Instant::now()));

    // Decide the book.
    let (outcomes, summary) = hw::evaluate_portfolio(accounts, &pref);
    marks.push(("decide (portfolio)", std::time::Instant::now()));

    // Serialize (on `threads` threads) and write.
    let parts = chunked(&outcomes, threads, |c| {
        let mut buf = Vec::with_capacity(c.len() * 850);
        for o in c {
            if serde_json::to_writer(&mut buf, o).is_ok() {
                buf.push(b'\n');
            }
        }
        buf
    });
    marks.push(("serialize", std::time::Instant::now()));
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let written = (|| -> std::io::Result<()> {
        for p in &parts {
            out.write_all(p)?;
        }
        out.write_all(&hw::summary_line(&pref, &summary).map_err(std::io::Error::other)?)?;
        out.write_all(b"\n")?;
        out.flush()
    })();
    marks.push(("write", std::time::Instant::now()));
    drop(parts);
    drop(outcomes);
    drop(text);
    marks.push(("drop", std::time::Instant::now()));
    if timings {
        let mut prev = t0;
        for (name, t) in &marks {
            eprintln!("{name:<20} {:>7.1} ms", (*t - prev).as_secs_f64() * 1000.0);
            prev = *t;
        }
        eprintln!("{:<20} {:>7.1} ms", "total", (prev - t0).as_secs_f64() * 1000.0);
    }
    if let Err(e) = written
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("error: cannot write the output: {e}");
        return ExitCode::from(2);
    }
    if summary.error_count > 0 {
        eprintln!("{} account(s) answered with an error", summary.error_count);
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
