//! Helpers shared by the integration tests: policy folders in tempdirs, snapshots as JSON.
#![allow(
    dead_code,
    clippy::result_large_err,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::path::{Path, PathBuf};
use tierwise::policy::{self, LoadError, Policy, Report};
use tierwise::script::Limits;

/// The repository root (where `policies/` lives).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Copies a folder recursively.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
}

/// Writes `files` (relative path, text) into `<tempdir>/<name>/` and returns both.
pub fn write_policy(name: &str, files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    for (path, text) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    (tmp, dir)
}

/// Loads a policy from an inline `policy.toml` (and optional other files), default limits.
pub fn load_inline(toml: &str, extra: &[(&str, &str)]) -> Policy {
    load_inline_with(toml, extra, &Limits::default())
}

pub fn load_inline_with(toml: &str, extra: &[(&str, &str)], limits: &Limits) -> Policy {
    let mut files = vec![("policy.toml", toml)];
    files.extend_from_slice(extra);
    let (_tmp, dir) = write_policy("inline", &files);
    match policy::load_dir(&dir, limits) {
        Ok(p) => p,
        Err(LoadError::Invalid(r)) => panic!("policy did not load:\n{r}"),
        Err(e) => panic!("policy did not load: {e}"),
    }
}

/// Loads a policy that must fail with diagnostics; returns the report.
pub fn load_report(dir: &Path) -> Report {
    match policy::load_dir(dir, &Limits::default()) {
        Ok(_) => panic!("policy `{}` loaded, expected errors", dir.display()),
        Err(LoadError::Invalid(r)) => *r,
        Err(e) => panic!("expected diagnostics, got a read error: {e}"),
    }
}

/// Loads a policy shipped in `policies/`.
pub fn shipped(name: &str) -> Policy {
    match policy::load_dir(&root().join("policies").join(name), &Limits::default()) {
        Ok(p) => p,
        Err(e) => panic!("shipped policy `{name}` did not load: {e}"),
    }
}

/// Snapshots as records, from JSON values.
pub fn records(values: &[serde_json::Value]) -> Vec<tierwise::snapshot::Record> {
    values.iter().map(|v| Ok(serde_json::from_value(v.clone()).unwrap())).collect()
}

/// A decision log that tests can read (the service writes it like a file).
#[derive(Clone, Default)]
pub struct Captured(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Every line written so far, as JSON.
    pub fn lines(&self) -> Vec<serde_json::Value> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

/// Waits (up to 30 s) for `tierwise serve`'s `listening on http://ADDR` line on the child's
/// piped stderr; returns the address and the rest of its stderr, a line at a time.
/// A served `tierwise` process: its address and stderr lines; killed and waited for on drop.
pub struct Running {
    pub child: std::process::Child,
    pub addr: String,
    pub stderr: std::sync::mpsc::Receiver<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn listening(child: &mut std::process::Child) -> (String, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let err = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let t = std::time::Instant::now();
    loop {
        let line =
            rx.recv_timeout(std::time::Duration::from_secs(30)).expect("no `listening` line");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            return (rest.split_whitespace().next().unwrap().to_string(), rx);
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(30), "no `listening` line");
    }
}
