//! `tierwise schema`: write (or check) the generated JSON schemas.

use std::path::Path;
use std::process::ExitCode;

pub fn run(out: &Path, reference: &Path, check: bool) -> ExitCode {
    let mut stale = Vec::new();
    if !check && let Err(e) = std::fs::create_dir_all(out) {
        eprintln!("error: cannot create `{}`: {e}", out.display());
        return ExitCode::from(2);
    }
    let mut files: Vec<(std::path::PathBuf, String)> =
        tierwise::schema::all().into_iter().map(|(name, text)| (out.join(name), text)).collect();
    files.push((reference.to_path_buf(), tierwise::schema::policy_reference()));
    // The codes reference sits beside the policy reference (docs/codes.md).
    let codes = reference.with_file_name("codes.md");
    files.push((codes, tierwise::codes::markdown()));
    for (path, text) in files {
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
        eprintln!("stale schemas or reference (run `tierwise schema`): {}", stale.join(", "));
        ExitCode::from(1)
    }
}
