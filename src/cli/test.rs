//! `tierwise test`: run policies' own cases, cargo-test style.

use std::path::Path;
use std::process::ExitCode;
use tierwise::engine::testrun;
use tierwise::script::Limits;

pub fn run(dir: &Path, limits: &Limits, coverage: bool) -> ExitCode {
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
        // A warning is often why a case fails (`integer_division`): said before the cases.
        super::print_warnings(&p);
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
        if coverage {
            print_coverage(&testrun::coverage(&p));
        }
        let failures: Vec<_> = results.iter().filter(|r| !r.passed()).collect();
        if !failures.is_empty() {
            println!("\nfailures:");
            for r in failures {
                println!(
                    "\n---- {} ({}/{}:{}) ----",
                    r.name,
                    d.display(),
                    r.place.file,
                    r.place.line
                );
                for f in &r.failures {
                    println!("  {f}");
                }
                // What the engine decided, beside what the case expected.
                if !r.got.is_empty() {
                    println!("  got:");
                    for g in &r.got {
                        println!("    {g}");
                    }
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

/// One line per kind of rule: how many the cases reach, and the ones they do not.
fn print_coverage(c: &testrun::Coverage) {
    println!("\ncoverage ({} decisions):", c.decisions);
    let kinds: [(&str, &[testrun::Reach], &str); 5] = [
        ("tiers", &c.tiers, "no case ends in"),
        ("criteria", &c.criteria, "always the same score"),
        ("holds", &c.holds, "never applied"),
        ("alerts", &c.alerts, "never raised"),
        ("portfolio alerts", &c.portfolio_alerts, "never raised"),
    ];
    for (kind, list, missing) in kinds {
        if list.is_empty() {
            continue;
        }
        let reached = list.iter().filter(|r| r.reached()).count();
        let gaps: Vec<String> = list
            .iter()
            .filter(|r| !r.reached())
            .map(|r| match r.range {
                Some((lo, _)) if r.hits > 0 => format!("{} ({lo})", r.id),
                _ => r.id.clone(),
            })
            .collect();
        if gaps.is_empty() {
            println!("  {kind:<17} {reached}/{}", list.len());
        } else {
            println!("  {kind:<17} {reached}/{}  {missing}: {}", list.len(), gaps.join(", "));
        }
    }
}
