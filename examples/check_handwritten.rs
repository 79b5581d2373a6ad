//! Checks the hand-written decision (benches/handwritten) against the engine over generated
//! accounts (or a JSON-lines file), at account and portfolio level.
//!
//! ```text
//! cargo run --release --example check_handwritten -- [N=100000 | FILE.jsonl]
//! ```
//! Prints the mismatch counts; exits 1 if there is any.

#[path = "../benches/handwritten/mod.rs"]
mod handwritten;

#[path = "../benches/handwritten/check.rs"]
mod check;

#[path = "gen_portfolio.rs"]
#[allow(dead_code)]
mod gen_portfolio;

fn main() -> std::process::ExitCode {
    let arg = std::env::args().nth(1).unwrap_or_else(|| "100000".into());
    let text = match arg.parse::<usize>() {
        Ok(n) => gen_portfolio::jsonl(n, gen_portfolio::SEED),
        Err(_) => match std::fs::read_to_string(&arg) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("cannot read {arg}: {e}");
                return std::process::ExitCode::from(2);
            }
        },
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/enterprise");
    let policy = match tierwise::policy::load_dir(&dir, &tierwise::script::Limits::default()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cannot load {}: {e}", dir.display());
            return std::process::ExitCode::from(2);
        }
    };
    let records = tierwise::snapshot::read_jsonl(&text);
    let mismatches = check::run(&policy, &records);
    println!("mismatches: {mismatches}");
    if mismatches == 0 { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::from(1) }
}
