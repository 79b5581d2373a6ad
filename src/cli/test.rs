//! `tierwise test`: run policies' own cases, cargo-test style.

use std::path::Path;
use std::process::ExitCode;
use tierwise::engine::testrun;
use tierwise::script::Limits;

pub fn run(dir: &Path, limits: &Limits) -> ExitCode {
    let dirs = match super::policy_dirs(dir) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let (mut passed, mut failed, mut broken) = (0, 0, 0);
    for d in &dirs {
        let Some(p) = super::load(d, limits) else {
            broken += 1;
            continue;
        };
        println!("\nrunning {} cases of policy `{}` ({})", p.cases.len(), p.name, p.short_hash());
        let results = testrun::run_cases(&p);
        for r in &results {
            if r.passed() {
                passed += 1;
                println!("case {}:{} {} ... ok", r.place.file, r.place.line, r.name);
            } else {
                failed += 1;
                println!("case {}:{} {} ... FAILED", r.place.file, r.place.line, r.name);
            }
        }
        let failures: Vec<_> = results.iter().filter(|r| !r.passed()).collect();
        if !failures.is_empty() {
            println!("\nfailures:");
            for r in failures {
                println!("\n---- {} ({}/{}:{}) ----", r.name, d.display(), r.place.file, r.place.line);
                for f in &r.failures {
                    println!("  {f}");
                }
            }
        }
    }
    let ok = failed == 0 && broken == 0;
    println!(
        "\ntest result: {}. {passed} passed; {failed} failed{}",
        if ok { "ok" } else { "FAILED" },
        if broken > 0 { format!("; {broken} policies did not load") } else { String::new() }
    );
    if ok { ExitCode::SUCCESS } else { ExitCode::from(1) }
}
