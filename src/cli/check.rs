//! `tierwise check`: load and validate policies; list every problem.

use std::path::Path;
use std::process::ExitCode;
use tierwise::script::Limits;

pub fn run(dir: &Path, limits: &Limits) -> ExitCode {
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
            }
            None => {
                failed += 1;
                println!("FAIL  {}", d.display());
            }
        }
    }
    if failed > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS }
}
