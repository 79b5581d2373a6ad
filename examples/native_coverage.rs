//! Which expressions of a policy run on the native fast path (`cargo run --example native_coverage -- policies/enterprise`).
fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "policies/enterprise".into());
    match tierwise::policy::load_dir(
        std::path::Path::new(&dir),
        &tierwise::script::Limits::default(),
    ) {
        Ok(p) => {
            for (rule, src, native) in p.native_coverage() {
                println!(
                    "{} {rule}: {}",
                    if native { "native" } else { "rhai  " },
                    src.replace('\n', " ")
                );
            }
        }
        Err(e) => eprintln!("{e}"),
    }
}
