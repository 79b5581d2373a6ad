//! Where the time of `tierwise eval --portfolio --format jsonl` goes, phase by phase, through
//! the public API (the same calls the CLI makes), on 1 thread and on all cores.
//!
//! ```text
//! cargo run --release --example phases -- bench-data/accounts-100000.jsonl [--runs 5]
//! valgrind --tool=callgrind target/release/examples/phases FILE --runs 1 --threads 1 --account-level
//! ```
//! Prints the median of `--runs` runs per phase (ms): policy load, file read, JSON-lines parse
//! (`snapshot::read_jsonl`), `evaluate_portfolio`, serialization of the outcomes as JSON lines,
//! and dropping the results. `--account-level` also times `engine::evaluate` one account per
//! call (what a `/v1/evaluate` call per account costs).

use std::time::Instant;

/// The `tierwise` binary's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut file = None;
    let mut runs = 5usize;
    let mut only_threads: Option<usize> = None;
    let mut account_level = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|x| x.parse().ok()).unwrap_or(5),
            "--threads" => only_threads = args.next().and_then(|x| x.parse().ok()),
            "--account-level" => account_level = true,
            _ => file = Some(a),
        }
    }
    let Some(file) = file else {
        eprintln!("usage: phases ACCOUNTS.jsonl [--runs N] [--threads N] [--account-level]");
        std::process::exit(2);
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/enterprise");
    let threads: Vec<usize> = match only_threads {
        Some(t) => vec![t],
        None => vec![1, std::thread::available_parallelism().map_or(2, |n| n.get())],
    };
    for t in threads {
        let pool = match rayon::ThreadPoolBuilder::new().num_threads(t).build() {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(2);
            }
        };
        let mut ph: Vec<(&str, Vec<f64>)> = [
            "load policy",
            "read file",
            "parse (read_jsonl)",
            "evaluate_portfolio",
            "serialize jsonl",
            "drop",
            "total",
        ]
        .iter()
        .map(|n| (*n, Vec::new()))
        .collect();
        let mut one_per_call = Vec::new();
        let mut n_records = 0;
        let mut out_bytes = 0;
        for _ in 0..runs {
            pool.install(|| {
                let t0 = Instant::now();
                let policy =
                    match tierwise::policy::load_dir(&dir, &tierwise::script::Limits::default()) {
                        Ok(p) => p,
                        Err(e) => {
                            eprintln!("{e}");
                            std::process::exit(2);
                        }
                    };
                let t1 = Instant::now();
                let text = std::fs::read_to_string(&file).unwrap_or_default();
                let t2 = Instant::now();
                let records = tierwise::snapshot::read_jsonl(&text);
                drop(text);
                let t3 = Instant::now();
                let result = tierwise::engine::evaluate_portfolio(&policy, &records);
                let t4 = Instant::now();
                // As the CLI does: chunks of 2048 outcomes on every core, then the summary line.
                use rayon::prelude::*;
                let parts: Vec<Vec<u8>> = result
                    .accounts
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
                    .collect();
                let mut bytes = parts.concat();
                let _ = serde_json::to_writer(
                    &mut bytes,
                    &serde_json::json!({ "policy": result.policy, "summary": result.summary }),
                );
                let t5 = Instant::now();
                n_records = records.len();
                out_bytes = bytes.len();
                let mut lone = None;
                if account_level {
                    let s = Instant::now();
                    for r in &records {
                        std::hint::black_box(tierwise::engine::evaluate(
                            &policy,
                            std::slice::from_ref(r),
                        ));
                    }
                    lone = Some(s.elapsed().as_secs_f64());
                }
                let t6 = Instant::now();
                drop(bytes);
                drop(parts);
                drop(result);
                drop(records);
                drop(policy);
                let t7 = Instant::now();
                let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1000.0;
                for (k, v) in [
                    ms(t0, t1),
                    ms(t1, t2),
                    ms(t2, t3),
                    ms(t3, t4),
                    ms(t4, t5),
                    ms(t6, t7),
                    ms(t0, t7) - ms(t5, t6),
                ]
                .into_iter()
                .enumerate()
                {
                    ph[k].1.push(v);
                }
                if let Some(l) = lone {
                    one_per_call.push(l);
                }
            });
        }
        println!(
            "{t} thread(s), {n_records} records, {} MB out, median of {runs} run(s):",
            out_bytes / 1_000_000
        );
        for (name, v) in ph {
            let m = median(v);
            println!(
                "  {name:<22} {m:>8.1} ms  {:>6.2} µs/account",
                m * 1000.0 / n_records.max(1) as f64
            );
        }
        if !one_per_call.is_empty() {
            let m = median(one_per_call);
            println!(
                "  {:<22} {:>8.1} ms  {:>6.2} µs/account",
                "evaluate, 1 per call",
                m * 1000.0,
                m * 1e6 / n_records.max(1) as f64
            );
        }
    }
}
