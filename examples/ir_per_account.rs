//! Per-account instruction counts under callgrind: the same work as `benches/engine.rs`'s
//! `account_10k/*_one_per_call` and `handwritten_from_snapshot`, without criterion's adaptive
//! iteration counts (so two runs with different K differ only by K - K' accounts).
//!
//! ```text
//! cargo build --release --example ir_per_account
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/ir_per_account engine policies/enterprise 1000
//! ```
//! Setup (identical whatever K): 20,000 generated accounts (examples/gen_portfolio.rs, fixed
//! seed) parsed with `snapshot::read_jsonl`, the valid ones kept; then the first K valid
//! accounts are decided one call each: `engine` (`engine::evaluate(policy, from_ref(r))`) or
//! `handwritten` (`validate_map` + `decide`, benches/handwritten); or the events transition
//! of benches/transition.rs on their decisions (all of them decided in the setup):
//! `transition-steady` (against the state the same decisions left) or `transition-first`
//! (against no state). Instructions per account =
//! (Ir(K2) - Ir(K1)) / (K2 - K1): setup and process start cancel out.

#![allow(clippy::result_large_err)]

// The module allows its own dead code.
#[path = "../benches/handwritten/mod.rs"]
mod handwritten;

#[path = "../benches/handwritten/check.rs"]
#[allow(dead_code)]
mod check;

#[path = "gen_portfolio.rs"]
#[allow(dead_code)]
mod gen_portfolio;

use handwritten as hw;
use std::hint::black_box;
use std::process::ExitCode;
use tierwise::engine;
use tierwise::snapshot::Record;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(dir), Some(k)) =
        (args.first(), args.get(1), args.get(2).and_then(|k| k.parse::<usize>().ok()))
    else {
        eprintln!("usage: ir_per_account engine|handwritten POLICY_DIR K");
        return ExitCode::from(2);
    };
    let policy = match tierwise::policy::load_dir(
        std::path::Path::new(dir),
        &tierwise::script::Limits::default(),
    ) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cannot load {dir}: {e}");
            return ExitCode::from(2);
        }
    };
    let text = gen_portfolio::jsonl(20_000, gen_portfolio::SEED);
    let records: Vec<Record> = tierwise::snapshot::read_jsonl(&text);
    drop(text);
    let outcomes = engine::evaluate(&policy, &records);
    let valid: Vec<Record> = records
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| o.decision().is_some())
        .map(|(r, _)| r.clone())
        .collect();
    drop(outcomes);
    if k > valid.len() {
        eprintln!("K = {k} > {} valid accounts", valid.len());
        return ExitCode::from(2);
    }
    let pref = check::policy_ref(&policy);
    match mode.as_str() {
        "engine" => {
            for r in &valid[..k] {
                black_box(engine::evaluate(&policy, std::slice::from_ref(black_box(r))));
            }
        }
        "handwritten" => {
            for s in valid[..k].iter().flatten() {
                let s = black_box(s);
                let d = hw::validate_map(check::identity(s), &s.fields)
                    .and_then(|a| hw::decide(a, &pref));
                let _ = black_box(d);
            }
        }
        "transition-steady" | "transition-first" => {
            use tierwise::engine::transition::{self, AccountInput, AccountState, Level};
            let outcomes = engine::evaluate(&policy, &valid);
            let dated: Vec<(i64, Option<i64>)> = valid
                .iter()
                .flatten()
                .map(|s| {
                    (
                        tierwise::date::parse_days(&s.as_of).unwrap_or(0),
                        s.tier_since.as_deref().and_then(tierwise::date::parse_days),
                    )
                })
                .collect();
            let rules = transition::account_rules(&policy);
            let input = |i: usize| AccountInput {
                level: Level::Account,
                outcome: &outcomes[i],
                as_of: dated[i].0,
                tier_since: dated[i].1,
            };
            let mut states: Vec<Option<AccountState>> = vec![None; outcomes.len()];
            let mut sink = Vec::new();
            for (i, s) in states.iter_mut().enumerate() {
                transition::step(s, input(i), &rules, &mut sink);
                sink.clear();
            }
            if mode == "transition-steady" {
                for (i, s) in states.iter_mut().enumerate().take(k) {
                    transition::step(s, input(i), &rules, &mut sink);
                    sink.clear();
                }
            } else {
                for i in 0..k {
                    let mut s = None;
                    transition::step(&mut s, input(i), &rules, &mut sink);
                    black_box(&s);
                    sink.clear();
                }
            }
        }
        _ => {
            eprintln!("mode: engine, handwritten, transition-steady or transition-first");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
