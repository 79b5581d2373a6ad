//! `--set path=value` flags, as the commands that build a candidate take them (`diff`,
//! `backtest`).

use std::process::ExitCode;
use tierwise::policy::overrides::{self, Override};

/// The overrides of `--set` flags, in their order; every flag that does not read is said
/// (`error: …` on standard error) before the usage exit (2).
pub fn parse(set: &[String]) -> Result<Vec<Override>, ExitCode> {
    let mut list = Vec::with_capacity(set.len());
    let mut bad = false;
    for s in set {
        match overrides::parse_set(s) {
            Ok(o) => list.push(o),
            Err(e) => {
                eprintln!("error: {e}");
                bad = true;
            }
        }
    }
    if bad { Err(ExitCode::from(2)) } else { Ok(list) }
}
