//! `tierwise schema`: write (or check) the generated JSON schemas.

use std::path::Path;
use std::process::ExitCode;

pub fn run(out: &Path, check: bool) -> ExitCode {
    let mut stale = Vec::new();
    if !check && let Err(e) = std::fs::create_dir_all(out) {
        eprintln!("error: cannot create `{}`: {e}", out.display());
        return ExitCode::from(2);
    }
    for (name, text) in tierwise::schema::all() {
        let path = out.join(name);
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                stale.push(path.display().to_string());
            }
        } else if let Err(e) = std::fs::write(&path, text) {
            eprintln!("error: cannot write `{}`: {e}", path.display());
            return ExitCode::from(2);
        } else {
            println!("wrote {}", path.display());
        }
    }
    if stale.is_empty() {
        if check {
            println!("schemas in `{}` are up to date", out.display());
        }
        ExitCode::SUCCESS
    } else {
        eprintln!("stale schemas (run `tierwise schema`): {}", stale.join(", "));
        ExitCode::from(1)
    }
}
