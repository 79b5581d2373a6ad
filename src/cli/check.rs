//! `tierwise check`: load and validate policies; list every problem.

use std::path::Path;
use std::process::ExitCode;
use tierwise::script::Limits;

pub fn run(dir: &Path, limits: &Limits, explain_speed: bool) -> ExitCode {
    let dirs = match super::policy_dirs(dir) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let mut failed = 0;
    for d in &dirs {
        match super::load(d, limits) {
            Some(p) => {
                super::print_warnings(&p);
                println!(
                    "ok    {:<16} {}  {} inputs, {} criteria, {} tiers, {} alerts, {} test cases",
                    p.name,
                    p.short_hash(),
                    p.inputs.len(),
                    p.criteria.len(),
                    p.tiers.len(),
                    p.alerts.len() + p.portfolio_alerts.len(),
                    p.cases.len()
                );
                if explain_speed {
                    explain(&p);
                }
            }
            None => {
                failed += 1;
                println!("FAIL  {}", d.display());
            }
        }
    }
    if failed > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS }
}

/// `--explain-speed`: what runs through rhai, and why (everything else runs natively).
fn explain(p: &tierwise::policy::Policy) {
    let all = p.speed();
    let slow: Vec<_> = all.iter().filter(|s| s.rhai.is_some()).collect();
    println!(
        "      speed: {} of {} rules and templates run natively, {} through rhai",
        all.len() - slow.len(),
        all.len(),
        slow.len()
    );
    for s in slow {
        println!(
            "      rhai  {} {} `{}` at {}:{}:{}: {}",
            s.kind,
            s.rule,
            s.source,
            s.place.file,
            s.place.line,
            s.place.column,
            s.rhai.as_deref().unwrap_or_default()
        );
    }
}
